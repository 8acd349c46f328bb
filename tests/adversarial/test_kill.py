"""Case 2: a run killed at 24 fixed points across bronze, silver and gold, then re-run, gives
the clean run's lake: Bronze holds every landed row, dead letter and file-log entry exactly once,
and every Silver and Gold table (volatile run columns aside, one fixed --as-of) equals the clean
run's. A kill never leaves a duplicate behind, and a killed rebuild leaves the previous version.

Kill points are deterministic: the crash hooks at fixed row counts, and SIGKILL after a fixed
fraction of the time the same step took in the session's clean run (so the point moves with the
machine's speed, not with chance). When a run finishes before its kill, the case starts again
from the same state with half the delay (up to 4 times) so that every case kills a running step.
"""

import shutil
import signal
import time

import pytest

import chaos
from chaos import KILLS

# Crash hooks of the binary (bronze only): rows buffered before it aborts, as a share of the
# dataset's Bronze rows; and an abort between a group's row commit and its file-log commit.
ROW_HOOKS = {"rows-1": None, "rows-25%": 0.25, "rows-50%": 0.5, "rows-90%": 0.9}
BRONZE_KILLS = [0.1, 0.3, 0.5, 0.7, 0.9]
SILVER_GOLD_KILLS = [0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95]


def step_args(step, dataset):
    if step == "bronze":
        return ["bronze", "--landing", dataset.landing]
    return [step, "--as-of", chaos.AS_OF]


def bronze_at_most_once(lake, dataset):
    """Whatever moment the kill hit, Bronze holds no row twice and nothing the clean run lacks."""
    actual, expected = chaos.bronze_keys(lake), chaos.bronze_keys(dataset.clean)
    for name, keys in actual.items():
        assert len(keys) == len(set(keys)), f"bronze.{name}: a row landed twice"
        assert set(keys) <= set(expected.get(name, [])), f"bronze.{name}: rows no clean run has"


def finish_and_compare(paylake, lake, dataset, steps):
    for step in steps:
        result = paylake.run(lake, *step_args(step, dataset))
        assert result.returncode == 0, result.describe()
    chaos.assert_bronze_exactly_once(lake, dataset.clean)
    chaos.assert_same(chaos.contents(lake), dataset.contents, "Silver and Gold after the re-run")


def sigkill_case(paylake, dataset, tmp_path, step, fraction, start_from):
    """Starts `step` on a copy of `start_from`, kills it after `fraction` of its clean time."""
    delay = fraction * dataset.seconds[step]
    for attempt in range(4):
        lake = tmp_path / "lake"
        shutil.rmtree(lake, ignore_errors=True)
        if start_from is not None:
            chaos.copy_tree(start_from, lake)
        run = paylake.start(lake, *step_args(step, dataset), out=tmp_path / f"run{attempt}")
        time.sleep(delay)
        killed = run.kill()
        result = run.wait()
        if killed:
            assert result.returncode == -signal.SIGKILL
            return lake, delay
        assert result.returncode == 0, result.describe()
        delay /= 2
    pytest.fail(f"{step} always finished before its kill (last delay {delay:.3f} s)")


@pytest.mark.parametrize("hook", [*ROW_HOOKS, "before-file-log"])
def test_bronze_crash_hook_then_rerun_equals_a_clean_run(paylake, dataset, tmp_path, hook):
    if hook == "before-file-log":
        env, message = {"PAYLAKE_ABORT_BEFORE_FILE_LOG": "1"}, "PAYLAKE_ABORT_BEFORE_FILE_LOG"
    else:
        share = ROW_HOOKS[hook]
        rows = 1 if share is None else int(share * dataset.bronze_rows)
        env, message = {"PAYLAKE_ABORT_AFTER_ROWS": str(rows)}, "PAYLAKE_ABORT_AFTER_ROWS"
    lake = tmp_path / "lake"
    result = paylake.run(lake, "bronze", "--landing", dataset.landing, env=env)
    KILLS["cases"] += 1
    assert result.returncode == -signal.SIGABRT, f"the hook did not fire: {result.describe()}"
    KILLS["hit"] += 1
    assert message in result.stderr
    bronze_at_most_once(lake, dataset)
    finish_and_compare(paylake, lake, dataset, ["bronze", "silver", "gold"])


@pytest.mark.parametrize("fraction", BRONZE_KILLS, ids=lambda f: f"{int(f * 100)}%")
def test_bronze_sigkill_then_rerun_equals_a_clean_run(paylake, dataset, tmp_path, fraction):
    KILLS["cases"] += 1
    lake, _ = sigkill_case(paylake, dataset, tmp_path, "bronze", fraction, None)
    KILLS["hit"] += 1
    bronze_at_most_once(lake, dataset)
    finish_and_compare(paylake, lake, dataset, ["bronze", "silver", "gold"])


@pytest.mark.parametrize("table", ["_file_log", "payments"])
def test_a_table_whose_creation_was_killed_is_created_by_the_rerun(
    paylake, dataset, tmp_path, table
):
    """A kill while Bronze created its tables leaves a log holding only the store's staging file
    of version 0 (stop 34's CI hit it at 10%): no table for any reader, and the re-run creates
    it and lands everything once."""
    lake = tmp_path / "lake"
    log = lake / "bronze" / table / "_delta_log"
    log.mkdir(parents=True)
    (log / "00000000000000000000.json#1").write_text('{"commitInfo":{}}\n')
    assert chaos.tables(lake, "bronze") == []
    finish_and_compare(paylake, lake, dataset, ["bronze", "silver", "gold"])


@pytest.mark.parametrize("step", ["silver", "gold"])
@pytest.mark.parametrize("fraction", SILVER_GOLD_KILLS, ids=lambda f: f"{int(f * 100)}%")
def test_silver_gold_sigkill_then_rerun_equals_a_clean_run(
    paylake, dataset, tmp_path, step, fraction
):
    # Alternate points kill the first build of the step and a rebuild over the clean lake.
    rebuild = SILVER_GOLD_KILLS.index(fraction) % 2 == 1
    before = "gold" if rebuild else {"silver": "bronze", "gold": "silver"}[step]
    KILLS["cases"] += 1
    lake, _ = sigkill_case(paylake, dataset, tmp_path, step, fraction, dataset.after[before])
    KILLS["hit"] += 1
    bronze_at_most_once(lake, dataset)
    if rebuild:
        # A killed rebuild leaves every table at its previous version: the clean one.
        chaos.assert_same(chaos.contents(lake), dataset.contents, "the lake after a killed rebuild")
    steps = ["silver", "gold"] if step == "silver" else ["gold"]
    finish_and_compare(paylake, lake, dataset, steps)
