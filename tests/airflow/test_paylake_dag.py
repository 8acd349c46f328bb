"""The DAGs in airflow/dags/paylake.py under real Airflow 3, on temporary lakes.

`airflow dags test` runs every task of one DAG run in this process's Airflow (sqlite metadata
database in a temporary AIRFLOW_HOME, no scheduler): a clean run, a run with nothing new, a run
whose Silver gate fails, and the daily maintenance DAG. Task states come from
`airflow tasks states-for-dag-run ... -o json`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "airflow" / "dags"
SAMPLE = REPO / "data"
PAYLAKE_BIN = os.environ["PAYLAKE_BIN"]
AIRFLOW = str(Path(sys.executable).parent / "airflow")
PAYMENT_HEADER = "payment_id,src_account_id,dest_account_id,payment_reference,amount,timestamp\n"


class Airflow:
    def __init__(self, home: Path):
        self.home = home
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PAYLAKE_", "AIRFLOW_", "AIRFLOW__"))
        }
        self.env.update(
            AIRFLOW_HOME=str(home),
            AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            PYTHONWARNINGS="ignore",
            PAYLAKE_BIN=PAYLAKE_BIN,
        )

    def run(self, *args: str, env: dict | None = None, check: bool = True):
        result = subprocess.run(
            [AIRFLOW, *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=600,
        )
        if check and result.returncode != 0:
            pytest.fail(f"airflow {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def dags_test(self, dag_id: str, logical_date: str, env: dict):
        """Runs one DAG run; returns (airflow's exit code, run id, its log)."""
        result = self.run("dags", "test", dag_id, logical_date, env=env, check=False)
        log = result.stdout + result.stderr
        finished = re.search(rf"DagRun Finished: dag_id={dag_id}, .*?run_id=([^,\s]+),", log)
        assert finished, f"no finished DAG run in:\n{log[-5000:]}"
        return result.returncode, finished.group(1), log

    def states(self, dag_id: str, run_id: str) -> dict[str, str]:
        result = self.run("tasks", "states-for-dag-run", dag_id, run_id, "-o", "json")
        return {task["task_id"]: task["state"] for task in json.loads(result.stdout.strip().splitlines()[-1])}

    def return_value(self, dag_id: str, run_id: str, task_id: str):
        """The XCom a task pushed (BashOperator: the last line of stdout), as JSON."""
        with sqlite3.connect(self.home / "airflow.db") as db:
            row = db.execute(
                "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = 'return_value'",
                (dag_id, run_id, task_id),
            ).fetchone()
        assert row, f"{task_id} pushed no XCom"
        value = json.loads(row[0])
        return json.loads(value) if isinstance(value, str) else value


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-home")
    airflow = Airflow(home)
    airflow.run("db", "migrate")
    return airflow


def paylake(lake: Path, *args: str):
    result = subprocess.run(
        [PAYLAKE_BIN, "--lake", str(lake), *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def gold_history(env: dict) -> list:
    """gold.unified_payments' versions, newest first."""
    return paylake(Path(env["PAYLAKE_LAKE"]), "--json", "history", "gold.unified_payments")


@pytest.fixture(scope="module")
def clean_lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    landing = root / "landing"
    shutil.copytree(SAMPLE, landing)
    return {"PAYLAKE_LAKE": str(root / "lake"), "PAYLAKE_LANDING": str(landing)}


def test_a_clean_run_lands_builds_and_pushes_one_line_summaries(airflow, clean_lake):
    code, run_id, log = airflow.dags_test("paylake", "2026-11-28T03:00:00+00:00", clean_lake)
    assert code == 0, log[-5000:]
    assert airflow.states("paylake", run_id) == {"bronze": "success", "silver": "success", "gold": "success"}
    # XCom holds each step's whole --json summary.
    bronze = airflow.return_value("paylake", run_id, "bronze")
    assert sum(source["rows_landed"] for source in bronze["sources"]) == 111
    gold = airflow.return_value("paylake", run_id, "gold")
    assert {table["table"]: table["rows"] for table in gold["tables"]}["gold.unified_payments"] == 46
    # Silver and Gold were built from everything landed (version 0 is the empty table).
    assert gold["build"]["mode"] == "full", gold["build"]
    assert gold_history(clean_lake)[0]["version"] == 1


def test_a_run_with_nothing_new_skips_silver_and_gold(airflow, clean_lake):
    code, run_id, log = airflow.dags_test("paylake", "2026-11-28T03:15:00+00:00", clean_lake)
    assert code == 0, log[-5000:]
    # Bronze lands nothing; Silver's watermark says nothing is new, so it and Gold are skipped.
    assert airflow.states("paylake", run_id) == {"bronze": "success", "silver": "skipped", "gold": "skipped"}
    assert gold_history(clean_lake)[0]["version"] == 1, "Gold was rebuilt although nothing was new"


def test_a_failed_silver_gate_fails_the_run_without_retries_and_gold_does_not_run(
    airflow, clean_lake, tmp_path
):
    landing = tmp_path / "landing"
    shutil.copytree(SAMPLE, landing)
    # Every amount broken: far more than 5% of payments quarantined, an error-severity rule.
    bad = landing / "payments" / "2024-11-19" / "payments_2024-11-19T09-15.csv"
    bad.parent.mkdir(exist_ok=True)
    bad.write_text(PAYMENT_HEADER + "".join(f"B{i},ACC101,ACC201,R,n/a,2024-11-18 09:00:00\n" for i in range(10)))
    lake = tmp_path / "lake"
    # Airflow Variables (here from AIRFLOW_VAR_*) win over the environment, which still names
    # the clean lake: that lake must stay untouched.
    env = {**clean_lake, "AIRFLOW_VAR_PAYLAKE_LAKE": str(lake), "AIRFLOW_VAR_PAYLAKE_LANDING": str(landing)}
    code, run_id, log = airflow.dags_test("paylake", "2026-11-28T03:30:00+00:00", env)
    assert code != 0, "the DAG run must fail"
    # "failed", not "up_for_retry": exit 3 is not retried although the task has retries.
    assert airflow.states("paylake", run_id) == {"bronze": "success", "silver": "failed", "gold": "upstream_failed"}
    assert "paylake exited 3 (data quality gate failed): not retried" in log
    gold = subprocess.run(
        [PAYLAKE_BIN, "--lake", str(lake), "history", "gold.unified_payments"], capture_output=True, text=True
    )
    assert gold.returncode == 2 and "has not been built" in gold.stderr, gold.stderr
    assert gold_history(clean_lake)[0]["version"] == 1, "the lake the environment names was written"


def test_the_maintenance_dag_optimizes_then_vacuums(airflow, clean_lake):
    code, run_id, log = airflow.dags_test("paylake_maintenance", "2026-11-28T03:30:00+00:00", clean_lake)
    assert code == 0, log[-5000:]
    assert airflow.states("paylake_maintenance", run_id) == {"optimize": "success", "vacuum": "success"}
    vacuumed = airflow.return_value("paylake_maintenance", run_id, "vacuum")
    assert "gold.unified_payments" in vacuumed["files_deleted"]


def test_exit_codes_map_to_skip_fail_fast_or_retry(airflow, tmp_path, monkeypatch):
    """PaylakeStep on a stand-in binary: 99 skips, 2 and 3 fail without retries, 1 retries."""
    fake = tmp_path / "paylake"
    fake.write_text('#!/bin/sh\necho \'{"step":"fake"}\'\nexit "$FAKE_EXIT"\n')
    fake.chmod(0o755)
    for key, value in airflow.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PAYLAKE_BIN", str(fake))
    monkeypatch.syspath_prepend(str(DAGS))
    import paylake as dags
    from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

    assert dags.pipeline.max_active_runs == 1 and not dags.pipeline.catchup
    assert dags.pipeline.default_args["retries"] > 0
    expected = {0: None, 1: AirflowException, 2: AirflowFailException, 3: AirflowFailException, 99: AirflowSkipException}
    for code, error in expected.items():
        monkeypatch.setenv("FAKE_EXIT", str(code))
        step = dags.PaylakeStep(task_id=f"exit_{code}", command="status")
        if error is None:
            assert step.execute({}) == '{"step":"fake"}'
            continue
        with pytest.raises(error) as raised:
            step.execute({})
        # A plain failure (retried) is not the fail-fast kind.
        if code == 1:
            assert not isinstance(raised.value, (AirflowFailException, AirflowSkipException))
