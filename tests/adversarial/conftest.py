"""Fixtures of the adversarial suite (`make chaos`) and its closing summary line.

The binary is `$PAYLAKE_BIN` (the Makefile passes the release build), copied once per session
into a temp folder so that a rebuild while the suite runs changes nothing.
"""

import os
import shutil
import stat
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chaos  # noqa: E402


@pytest.fixture(scope="session")
def paylake(tmp_path_factory):
    source = Path(os.environ.get("PAYLAKE_BIN", chaos.ROOT / "target/release/paylake"))
    if not source.is_file():
        pytest.exit(f"chaos: no paylake binary at {source} (run `make build` or set PAYLAKE_BIN)", 2)
    private = tmp_path_factory.mktemp("bin") / "paylake"
    shutil.copy2(source, private)
    private.chmod(private.stat().st_mode | stat.S_IXUSR)
    return chaos.Paylake(private)


class Dataset:
    """A generated landing zone large enough that each step takes about a second, its clean
    run, and snapshots of that run after each step (copied, never written to, by the tests)."""

    def __init__(self, paylake, root):
        self.root = Path(root)
        self.landing = chaos.generate(self.root / "landing", payments=15000, days=4)
        # The first day only: a lake that already holds it gets real work from every step.
        self.subset = chaos.copy_tree(self.landing, self.root / "subset")
        for day in sorted((self.subset / "payments").iterdir())[1:]:
            shutil.rmtree(day)
        self.after = {}
        self.seconds = {}
        lake = self.root / "clean"
        for step in ["bronze", "silver", "gold"]:
            started = time.monotonic()
            paylake.pipeline(lake, self.landing, [step])
            self.seconds[step] = time.monotonic() - started
            self.after[step] = chaos.copy_tree(lake, self.root / f"after-{step}")
        self.clean = lake
        self.bronze_rows = sum(
            chaos.read(lake, f"bronze.{t}").num_rows
            for t in chaos.tables(lake, "bronze")
            if not t.startswith("_")
        )
        self.contents = chaos.contents(lake, ["silver", "gold"])
        # The first day built through Gold: the starting point of the two-writer cases.
        self.subset_built = self.root / "subset-built"
        paylake.pipeline(self.subset_built, self.subset)


@pytest.fixture(scope="session")
def dataset(paylake, tmp_path_factory):
    return Dataset(paylake, tmp_path_factory.mktemp("dataset"))


# ---------------------------------------------------------------------------------------------
# Mounting (full disk and read-only cases): only as root, skipped with the reason otherwise.


@pytest.fixture
def mounts():
    """Unmounts, at the end of the test, every mount point the test appended."""
    points = []
    yield points
    for point in reversed(points):
        chaos.unmount(point)


# ---------------------------------------------------------------------------------------------
# The closing line: "chaos: N cases, P passed, F failed, X xfailed, S skipped (reasons)".


def pytest_terminal_summary(terminalreporter):
    stats = terminalreporter.stats
    counts = {k: len(stats.get(k, [])) for k in ["passed", "failed", "error", "xfailed", "xpassed", "skipped"]}
    total = sum(counts.values())
    write = terminalreporter.write_line
    by_reason = defaultdict(list)
    for report in stats.get("xfailed", []):
        by_reason[getattr(report, "wasxfail", "") or "xfail"].append(report.nodeid.split("::")[-1])
    for reason, names in sorted(by_reason.items()):
        write(f"chaos: expected failure ({reason}): {', '.join(sorted(names))}")
    for report in stats.get("xpassed", []):
        write(f"chaos: now passes, remove its xfail mark: {report.nodeid.split('::')[-1]}")
    skip_reasons = []
    for report in stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        skip_reasons.append(f"{report.nodeid.split('::')[-1]}: {reason}")
    if chaos.KILLS["cases"]:
        write(f"chaos: kill cases: {chaos.KILLS['hit']} of {chaos.KILLS['cases']} runs killed mid-step")
    extra = f" ({'; '.join(skip_reasons)})" if skip_reasons else ""
    write(
        f"chaos: {total} cases, {counts['passed']} passed, {counts['failed'] + counts['error']} failed, "
        f"{counts['xfailed']} xfailed, {counts['xpassed']} xpassed, {counts['skipped']} skipped{extra}"
    )
