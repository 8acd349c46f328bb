"""paylake on Airflow 3: Bronze -> Silver -> Gold every 15 minutes, and daily maintenance.

Where things are (each read on the worker when the task runs):
  - binary: $PAYLAKE_BIN, else `paylake` on PATH;
  - lake and landing folder: the Airflow Variables `paylake_lake` / `paylake_landing` when set,
    else the environment variables PAYLAKE_LAKE / PAYLAKE_LANDING. With neither, paylake exits
    2 ("no lake given") and the task fails without retries: there is no default lake.

Exit codes (see `paylake --help`):
  0   success; the last stdout line is the step's one-line `--json` summary, pushed to XCom;
  99  Silver or Gold found nothing new since its watermark (`--nothing-new-exit-code 99`):
      the task is skipped and so is what follows;
  3   a data-quality gate failed, 2 a usage or configuration error: the task fails at once,
      retrying cannot change the data or the configuration;
  1   a runtime failure (storage, engine, another writer holding the lake): retried.

The data interval: every 15 minutes Bronze lands what arrived, then Silver and Gold build
incrementally from their watermarks (the Bronze and Silver versions each last consumed,
recorded in the same commit as the data). They take no `--as-of {{ data_interval_end }}`: the
watermark, not the interval, says what is new, so a file that arrives late, or a run that
failed and is retried, is built by the next run and never skipped; an `--as-of` build is a
full rebuild of what was known at that time, which is what a backfill or a training snapshot
wants, not a 15-minute step. Bronze takes no as-of either: it records when the lake first
knew each file (the time in its name, else the moment Bronze read it); stamping the interval's
end instead would claim knowledge before the file arrived whenever a run starts late. Bronze
always runs Silver after it: Silver itself decides, from its watermark, whether anything is
new, so rows landed by a run whose Silver failed are built by the next run.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, CronDataIntervalTimetable
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

# paylake's exit codes that a retry cannot fix.
NOT_RETRIED = {
    2: "usage or configuration error",
    3: "data quality gate failed",
}
NOTHING_NEW = 99

# Each command runs in bash on the worker: the Variables arrive through the task's environment
# (rendered by Airflow, so no shell quoting of their values), the environment is the fallback.
PAYLAKE = """\
export PAYLAKE_LAKE="${PAYLAKE_VARIABLE_LAKE:-${PAYLAKE_LAKE:-}}"
export PAYLAKE_LANDING="${PAYLAKE_VARIABLE_LANDING:-${PAYLAKE_LANDING:-}}"
exec "${PAYLAKE_BIN:-paylake}" --json"""

VARIABLES = {
    "PAYLAKE_VARIABLE_LAKE": "{{ var.value.get('paylake_lake', '') }}",
    "PAYLAKE_VARIABLE_LANDING": "{{ var.value.get('paylake_landing', '') }}",
}


class PaylakeStep(BashOperator):
    """One paylake command. Exit 99 skips; exits 2 and 3 fail without retries; others retry."""

    def __init__(self, *, command: str, **kwargs):
        super().__init__(
            bash_command=f"{PAYLAKE} {command}",
            env=VARIABLES,
            append_env=True,
            skip_on_exit_code=NOTHING_NEW,
            **kwargs,
        )

    def execute(self, context):
        try:
            return super().execute(context)
        except AirflowSkipException:
            raise
        except AirflowException as failure:
            process = self.subprocess_hook.sub_process
            code = process.returncode if process is not None else None
            if code in NOT_RETRIED:
                raise AirflowFailException(
                    f"paylake exited {code} ({NOT_RETRIED[code]}): not retried"
                ) from failure
            raise


DEFAULT_ARGS = {
    "owner": "paylake",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
}

with DAG(
    dag_id="paylake",
    description="Land new files into Bronze, then rebuild Silver and Gold as of the interval end",
    schedule=CronDataIntervalTimetable("*/15 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["paylake"],
) as pipeline:
    bronze = PaylakeStep(task_id="bronze", command="bronze")
    silver = PaylakeStep(task_id="silver", command=f"silver --nothing-new-exit-code {NOTHING_NEW}")
    gold = PaylakeStep(task_id="gold", command=f"gold --nothing-new-exit-code {NOTHING_NEW}")
    bronze >> silver >> gold

# Once a day, when few 15-minute runs are due: compact small files, then delete files no version
# within the 7-day retention needs. Both take the lake's writer lease; a 15-minute step holding
# it makes them exit 1, which is retried.
with DAG(
    dag_id="paylake_maintenance",
    description="Compact small files, then vacuum files older versions no longer need",
    schedule=CronDataIntervalTimetable("30 3 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "retry_delay": timedelta(minutes=5)},
    tags=["paylake"],
) as maintenance:
    optimize = PaylakeStep(task_id="optimize", command="optimize")
    vacuum = PaylakeStep(task_id="vacuum", command="vacuum --retain 7d")
    optimize >> vacuum
