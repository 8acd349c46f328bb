"""Case 3: two writers at once, for every pair of steps (the first one holding the lake's writer
lease when the second starts). The first finishes; the second either finishes too or exits 1
with "being written by run <the first's run>"; nothing panics. Afterwards a clean re-run of
bronze, silver and gold gives exactly the tables of a single clean run, with no duplicated row.

Each case starts from a lake that already holds the first day (built through Gold), with the
whole dataset in the landing folder, so every step has real work to do.

The last cases go further than the lease allows: the lease file is deleted under the first run,
so both really write at once (issue 13 item 6: the file log doubled). Either may then lose a
commit race (exit 1 saying so), but the lake stays whole.
"""

import json
import time

import pytest

import chaos

STEPS = ["bronze", "silver", "gold"]
# How a run that lost a commit race says so (exit 1).
CONFLICT_WORDS = ["being written by run", "another writer", "conflict"]
PAIRS = [(a, b) for a in STEPS for b in STEPS]


def args(step, dataset):
    if step == "bronze":
        return ["bronze", "--landing", dataset.landing]
    return [step, "--as-of", chaos.AS_OF]


def wait_for_lease(lake, first, timeout=30):
    """The lease the first run took (its JSON), once it is on disk."""
    lease = lake / "_locks" / "writer.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            holder = json.loads(lease.read_text())
            if holder.get("pid") == first.process.pid:
                return holder
        except (OSError, ValueError):
            pass
        if not first.running():
            return None
        time.sleep(0.002)
    pytest.fail("the first run never took the writer lease")


def rerun_and_compare(paylake, lake, dataset):
    for step in STEPS:
        result = paylake.run(lake, *args(step, dataset))
        assert result.returncode == 0, result.describe()
    chaos.assert_bronze_exactly_once(lake, dataset.clean)
    chaos.assert_same(chaos.contents(lake), dataset.contents, "Silver and Gold after both writers")


@pytest.mark.parametrize("first,second", PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_second_writer_waits_or_exits_1_naming_the_first(
    paylake, dataset, tmp_path, first, second
):
    lake = chaos.copy_tree(dataset.subset_built, tmp_path / "lake")
    one = paylake.start(lake, *args(first, dataset), out=tmp_path / "first")
    holder = wait_for_lease(lake, one)
    if holder is None:
        pytest.fail(f"{first} finished before it could be seen holding the lease: {one.wait().describe()}")
    two = paylake.start(lake, *args(second, dataset), out=tmp_path / "second")
    r2 = two.wait()
    r1 = one.wait()
    assert r1.returncode == 0, r1.describe()
    if r2.returncode != 0:
        assert r2.returncode == 1, r2.describe()
        assert "being written by run" in r2.stderr, r2.describe()
        assert holder["owner"] in r2.stderr, (holder, r2.stderr)
    rerun_and_compare(paylake, lake, dataset)


# Two bronze runs past the lease used to land the same files twice (both committed their groups);
# each group commit is now checked against every commit since its table was read.
@pytest.mark.parametrize("step", ["bronze", "silver", "gold"])
def test_two_writers_past_a_deleted_lease_leave_a_whole_lake(paylake, dataset, tmp_path, step):
    lake = chaos.copy_tree(dataset.subset_built, tmp_path / "lake")
    one = paylake.start(lake, *args(step, dataset), out=tmp_path / "first")
    if wait_for_lease(lake, one) is None:
        pytest.fail(f"{step} finished before it could be seen holding the lease")
    (lake / "_locks" / "writer.json").unlink()
    two = paylake.start(lake, *args(step, dataset), out=tmp_path / "second")
    for r in [two.wait(), one.wait()]:
        if r.returncode != 0:
            assert r.returncode == 1, r.describe()
            assert any(w in r.stderr for w in CONFLICT_WORDS), r.describe()
    # Whatever interleaving happened, no row and no file-log entry is in Bronze twice.
    keys = chaos.bronze_keys(lake)
    for name, rows in keys.items():
        assert len(rows) == len(set(rows)), f"bronze.{name}: {len(rows) - len(set(rows))} duplicates"
    rerun_and_compare(paylake, lake, dataset)
