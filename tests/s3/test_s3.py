"""The pipeline with its landing and its lake on S3 (moto's server on loopback, started by
tests/s3/run.sh), compared table by table with the same pipeline on local folders."""

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import (
    AS_OF,
    BIN,
    BUCKET,
    RUN_TIMEOUT,
    assert_same,
    bronze_record,
    contents,
    paylake,
    pipeline,
    s3_tables,
    table_names,
)


def test_the_pipeline_on_s3_equals_the_local_run(s3, local_run, tmp_path):
    names, expected, bronze = local_run
    lake = f"s3://{BUCKET}/clean/lake"
    started = time.monotonic()
    pipeline(lake, f"s3://{BUCKET}/landing")
    print(f"s3-test: bronze+silver+gold on S3 in {time.monotonic() - started:.1f} s")
    assert table_names(lambda layer: s3_tables(s3, "clean/lake", layer)) == names
    assert_same(contents(lake, names, tmp_path), expected)
    # The file log and `_source_file` name each object relative to the landing prefix, as a
    # local landing folder names its files.
    assert bronze_record(lake) == bronze

    # Landing again lands nothing: the file log's content hashes hold on S3 as well.
    again = paylake(lake, "--json", "bronze", "--landing", f"s3://{BUCKET}/landing")
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["landing"] == f"s3://{BUCKET}/landing"
    assert sum(s["rows_landed"] for s in summary["sources"]) == 0, summary
    assert bronze_record(lake) == bronze


def test_killed_runs_on_s3_rerun_to_the_local_result(s3, local_run, tmp_path):
    names, expected, bronze = local_run
    lake = f"s3://{BUCKET}/killed/lake"
    landing = f"s3://{BUCKET}/landing"

    # Bronze dies between a file's rows commit and its file-log commit; the re-run adds nothing twice.
    aborted = paylake(lake, "bronze", "--landing", landing, env={"PAYLAKE_ABORT_BEFORE_FILE_LOG": "1"}, check=False)
    assert aborted.returncode == -signal.SIGABRT, aborted.stderr[-2000:]
    paylake(lake, "bronze", "--landing", landing)
    paylake(lake, "silver", "--as-of", AS_OF)

    assert bronze_record(lake) == bronze

    # Gold is killed (SIGKILL) part-way, as early as needed to catch it before its commit.
    paylake(f"s3://{BUCKET}/timing/lake", "bronze", "--landing", landing)
    paylake(f"s3://{BUCKET}/timing/lake", "silver", "--as-of", AS_OF)
    started = time.monotonic()
    paylake(f"s3://{BUCKET}/timing/lake", "gold", "--as-of", AS_OF)
    delay = (time.monotonic() - started) * 0.6
    for _ in range(5):
        run = subprocess.Popen(
            [BIN, "--lake", lake, "gold", "--as-of", AS_OF],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        run.kill()
        if run.wait(timeout=RUN_TIMEOUT) == -signal.SIGKILL:
            break
        delay /= 2
    else:
        pytest.fail("gold always finished before it could be killed")
    # The writer lease of the killed run names this host and a dead pid: the re-run takes it over.
    paylake(lake, "gold", "--as-of", AS_OF)
    assert_same(contents(lake, names, tmp_path), expected)


def test_s3_errors_name_the_bucket_and_never_the_secret(s3):
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    missing = paylake(f"s3://{BUCKET}/no/lake/here", "status", check=False)
    assert missing.returncode == 2, missing.stderr
    assert f"s3://{BUCKET}/no/lake/here" in missing.stderr
    assert "holds none of the lake's folders" in missing.stderr

    no_bucket = paylake("s3://paylake-no-such-bucket/lake", "status", check=False)
    assert no_bucket.returncode == 1, no_bucket.stderr
    assert "paylake-no-such-bucket" in no_bucket.stderr

    for result in (missing, no_bucket):
        assert secret not in result.stderr + result.stdout

    refused = paylake("gs://bucket/lake", "status", check=False)
    assert refused.returncode == 2
    assert "scheme 'gs' is not supported" in refused.stderr
