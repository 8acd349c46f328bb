"""Helpers of the adversarial suite: run the binary, build lakes, compare them.

Every run of the binary goes through `Paylake.run` / `Paylake.start`, which bound its time and
check the two things that must hold whatever the input: it never panics (no "panicked" on
stderr, never exit code 101) and it exits with a documented code.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from deltalake import DeltaTable

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data"
GENERATOR = ROOT / "bench" / "generate.py"
# One as-of time for every Silver and Gold run, so two lakes built at different moments compare.
AS_OF = "2025-03-01"
# No single run of the binary may take longer than this (the whole suite is bounded by it).
RUN_TIMEOUT = float(os.environ.get("CHAOS_RUN_TIMEOUT", "120"))
# Exit codes the README documents; a killed run is negative (the signal) and checked apart.
DOCUMENTED_EXITS = {0, 1, 2, 3}
# Columns that name the run or the moment that built a row: they differ between two runs of the
# same input and are left out of every comparison. (Knowledge times are compared: every file the
# suite lands carries its time in its name.)
VOLATILE = {
    "_batch_id",
    "_ingested_at",
    "batch_id",
    "ingested_at",
    "payment_ingested_at",
    "run_id",
}

# Kill cases count here how many of their runs were really killed mid-step (for the summary).
KILLS = {"hit": 0, "cases": 0}


@dataclass
class Result:
    args: tuple
    returncode: int
    stdout: str
    stderr: str

    def describe(self):
        tail = self.stderr[-2000:]
        return f"paylake {' '.join(map(str, self.args))} exited {self.returncode}:\n{tail}"


def assert_no_panic(result):
    assert "panicked" not in result.stderr, result.describe()
    assert result.returncode != 101, result.describe()
    if result.returncode >= 0:
        assert result.returncode in DOCUMENTED_EXITS, result.describe()


def environment(extra):
    """The caller's environment without the crash-test hooks, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYLAKE_ABORT_")}
    env.update(extra or {})
    return env


class Paylake:
    """The binary under test: a private copy, so a rebuild during the session changes nothing."""

    def __init__(self, binary):
        self.binary = str(binary)

    def command(self, lake, *args, json_output=False):
        head = [self.binary, "--lake", str(lake)]
        if json_output:
            head.append("--json")
        return head + [str(a) for a in args]

    def run(self, lake, *args, env=None, json_output=False, check=False, timeout=RUN_TIMEOUT):
        full_env = environment(env)
        try:
            done = subprocess.run(
                self.command(lake, *args, json_output=json_output),
                capture_output=True,
                env=full_env,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"paylake {args} ran longer than {timeout} s") from e
        result = Result(
            args,
            done.returncode,
            done.stdout.decode("utf-8", "replace"),
            done.stderr.decode("utf-8", "replace"),
        )
        assert_no_panic(result)
        if check and result.returncode != 0:
            raise AssertionError(result.describe())
        return result

    def ok(self, lake, *args, **kwargs):
        return self.run(lake, *args, check=True, **kwargs)

    def sql(self, lake, query):
        result = self.ok(lake, "sql", query, json_output=True)
        return json.loads(result.stdout) if result.stdout.strip() else []

    def start(self, lake, *args, env=None, out=None):
        """Starts a run in the background; `out` is a folder for its stdout and stderr."""
        full_env = environment(env)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        stdout = open(out / "stdout", "wb")
        stderr = open(out / "stderr", "wb")
        process = subprocess.Popen(
            self.command(lake, *args), stdout=stdout, stderr=stderr, env=full_env
        )
        stdout.close()
        stderr.close()
        return Background(process, args, out)

    def pipeline(self, lake, landing, steps=("bronze", "silver", "gold")):
        for step in steps:
            if step == "bronze":
                self.ok(lake, "bronze", "--landing", landing)
            else:
                self.ok(lake, step, "--as-of", AS_OF)


class Background:
    def __init__(self, process, args, out):
        self.process, self.args, self.out = process, args, Path(out)

    def running(self):
        return self.process.poll() is None

    def kill(self):
        """SIGKILL if still running; returns True when the kill is what ended the process.

        The process can exit on its own between the poll and the signal (a zombie ignores
        SIGKILL), so the exit status, not the poll, says whether the kill hit it.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        return self.process.returncode == -signal.SIGKILL

    def wait(self, timeout=RUN_TIMEOUT):
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            self.process.kill()
            raise AssertionError(f"paylake {self.args} ran longer than {timeout} s") from e
        result = Result(
            self.args,
            self.process.returncode,
            (self.out / "stdout").read_bytes().decode("utf-8", "replace"),
            (self.out / "stderr").read_bytes().decode("utf-8", "replace"),
        )
        assert_no_panic(result)
        return result


# ---------------------------------------------------------------------------------------------
# Mounting (full disk and read-only cases): only as root; the callers skip with the reason.


def try_mount(*args):
    """Runs `mount ARGS`; returns None on success, else why it could not."""
    if os.geteuid() != 0:
        return "not root: cannot mount"
    if shutil.which("mount") is None:
        return "no mount command"
    done = subprocess.run(["mount", *map(str, args)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return f"mount {' '.join(map(str, args))} failed: {done.stderr.strip()}"
    return None


def unmount(path):
    subprocess.run(["umount", str(path)], capture_output=True, timeout=30)
    if os.path.ismount(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


# ---------------------------------------------------------------------------------------------
# Landing data


def generate(folder, payments, days=4, seed=13):
    """A synthetic landing zone in the folder layout (bench/generate.py: deterministic, with
    duplicates, conflicting resends, broken rows and late labels)."""
    subprocess.run(
        [sys.executable, str(GENERATOR), str(payments), "--folder", str(folder),
         "--days", str(days), "--seed", str(seed)],
        check=True,
        capture_output=True,
        timeout=RUN_TIMEOUT,
    )
    return Path(folder)


def copy_tree(source, destination):
    shutil.copytree(source, destination, symlinks=True)
    return Path(destination)


# ---------------------------------------------------------------------------------------------
# Reading and comparing lakes (with the deltalake package: an independent reader)


LOG_VERSION = re.compile(r"\d{20}\.(json|checkpoint\.(.*\.)?(parquet|json))")


def is_table(folder):
    """A Delta table's log holds a commit or a checkpoint. A run killed while it created a table
    can leave the log with only the store's staging file (`00000000000000000000.json#1`): no
    version, so no table (as for paylake and every Delta reader)."""
    log = folder / "_delta_log"
    return log.is_dir() and any(LOG_VERSION.fullmatch(f.name) for f in log.iterdir())


def tables(lake, layer):
    folder = Path(lake) / layer
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if is_table(p))


def read(lake, name):
    layer, table = name.split(".", 1)
    return DeltaTable(str(Path(lake) / layer / table)).to_pyarrow_table()


def canonical(table, drop=VOLATILE):
    """A table as (its columns and types, the sorted hashes of its rows), without the volatile
    columns: equal whatever the order of rows, files and columns, and quick to compare."""
    columns = sorted(c for c in table.column_names if c not in drop)
    frame = pl.from_arrow(table.select(columns))
    if isinstance(frame, pl.Series):
        frame = frame.to_frame()
    schema = tuple((c, str(t)) for c, t in zip(frame.columns, frame.dtypes))
    hashes = frame.hash_rows(seed=0).sort().to_list()
    return schema, hashes


def contents(lake, layers=("silver", "gold")):
    """Every table of the layers, canonical."""
    return {
        f"{layer}.{name}": canonical(read(lake, f"{layer}.{name}"))
        for layer in layers
        for name in tables(lake, layer)
    }


def diff(actual, expected):
    """A short description of how two `contents` differ ('' when equal)."""
    lines = []
    for name in sorted(set(actual) | set(expected)):
        if name not in actual:
            lines.append(f"{name}: missing")
        elif name not in expected:
            lines.append(f"{name}: unexpected table")
        elif actual[name] != expected[name]:
            (ca, ra), (ce, re_) = actual[name], expected[name]
            if ca != ce:
                lines.append(f"{name}: columns {ca} != {ce}")
                continue
            got, want = Counter(ra), Counter(re_)
            lines.append(
                f"{name}: {len(ra)} rows vs {len(re_)} expected "
                f"({sum((got - want).values())} unexpected, {sum((want - got).values())} missing)"
            )
    return "\n".join(lines)


def assert_same(actual, expected, what):
    difference = diff(actual, expected)
    assert not difference, f"{what} differs from a clean run:\n{difference}"


def bronze_keys(lake):
    """Per Bronze table, the identity of each row: (file hash, line) for rows and dead letters,
    (file hash, path) for file-log entries."""
    keys = {}
    for name in tables(lake, "bronze"):
        t = read(lake, f"bronze.{name}")
        if name == "_file_log":
            rows = t.select(["file_sha256", "source_file"]).to_pylist()
            keys[name] = [(r["file_sha256"], r["source_file"]) for r in rows]
        else:
            rows = t.select(["_file_sha256", "_source_line"]).to_pylist()
            keys[name] = [(r["_file_sha256"], r["_source_line"]) for r in rows]
    return keys


def assert_bronze_exactly_once(lake, clean_lake):
    """Every Bronze row, dead letter and file-log entry of the clean run is in `lake` exactly
    once, and nothing else is."""
    actual, expected = bronze_keys(lake), bronze_keys(clean_lake)
    assert sorted(actual) == sorted(expected), (sorted(actual), sorted(expected))
    for name in expected:
        duplicates = len(actual[name]) - len(set(actual[name]))
        assert duplicates == 0, f"bronze.{name}: {duplicates} rows landed twice"
        missing = set(expected[name]) - set(actual[name])
        extra = set(actual[name]) - set(expected[name])
        assert not missing and not extra, (
            f"bronze.{name}: {len(missing)} rows missing, {len(extra)} unexpected"
        )
    assert_same(contents(lake, ["bronze"]), contents(clean_lake, ["bronze"]), "Bronze")
