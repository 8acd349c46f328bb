"""`paylake sql` with no query on a terminal: the interactive shell, driven through a
pseudo-terminal like a person would (multi-line statements, helper commands, errors that keep
the session, history recalled with the up arrow and saved on exit)."""

import os
import pty
import select
import subprocess
import time

BIN = os.environ["PAYLAKE_BIN"]
UP = "\x1b[A"


class Terminal:
    def __init__(self, args, env):
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.seen = ""

    def expect(self, text, timeout=60):
        """Reads until `text` has appeared since the last expectation."""
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"waited for {text!r}, got:\n{self.seen}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096).decode(errors="replace")
                except OSError:  # the shell ended
                    chunk = ""
                assert chunk, f"the shell ended while waiting for {text!r}:\n{self.seen}"
                self.seen += chunk
        found = self.seen
        self.seen = self.seen[self.seen.index(text) + len(text):]
        return found

    def send(self, keys):
        os.write(self.master, keys.encode())

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        os.close(self.master)


def test_the_interactive_shell(tmp_path):
    history = tmp_path / "history"
    env = dict(os.environ, TERM="xterm", PAYLAKE_HISTORY_FILE=str(history))
    # A lake with nothing landed: the shell never creates one.
    (tmp_path / "landing").mkdir()
    subprocess.run(
        [BIN, "--lake", str(tmp_path / "lake"), "bronze", "--landing", str(tmp_path / "landing")],
        check=True, capture_output=True, env=env,
    )
    terminal = Terminal([BIN, "--lake", str(tmp_path / "lake"), "sql"], env)
    try:
        terminal.expect("read-only")
        terminal.expect("paylake> ")
        # A statement over two lines: the second prompt says it continues.
        terminal.send("SELECT 40 + 2 AS answer,\r")
        terminal.expect("..> ")
        terminal.send("'multi' AS line;\r")
        result = terminal.expect("paylake> ")
        assert "answer" in result and "42" in result and "multi" in result, result
        # Helper commands.
        terminal.send(".tables\r")
        assert "table_name" in terminal.expect("paylake> ")
        terminal.send(".help\r")
        assert "\\d TABLE" in terminal.expect("paylake> ")
        # Errors are shown and the session goes on.
        terminal.send("SELEC 1;\r")
        assert "error" in terminal.expect("paylake> ")
        terminal.send("DROP TABLE gold.unified_payments;\r")
        assert "read-only" in terminal.expect("paylake> ")
        # The up arrow recalls the previous statements.
        terminal.send(UP + UP + UP + UP + "\r")
        # The prompt is redrawn for each recalled line: wait for the recalled command's output.
        terminal.expect("table_name")
        terminal.expect("paylake> ")
        # Ctrl-D leaves with exit 0 and saves the history.
        terminal.send("\x04")
        assert terminal.process.wait(timeout=30) == 0
        saved = history.read_text()
        assert "AS answer" in saved and ".tables" in saved, saved
    finally:
        terminal.close()
