"""The pipeline with its landing and its lake on S3 (moto's server on loopback, started by
tests/s3/run.sh), compared table by table with the same pipeline on local folders.

Each lake is exported table by table with `paylake export --all-columns`; a table's rows are
compared as a sorted multiset without the columns that name the run or its moment.
"""

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import boto3
import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data"
BIN = os.environ["PAYLAKE_BIN"]
BUCKET = "paylake-s3-test"
AS_OF = "2025-03-01"
RUN_TIMEOUT = 300
# Columns that name the run or the moment that built a row: they differ between two runs.
VOLATILE = {"_batch_id", "_ingested_at", "batch_id", "ingested_at", "payment_ingested_at", "run_id"}
LAYERS = ("silver", "gold")
# What Bronze recorded of each landing file: names relative to the landing, hashes, counts.
FILE_LOG = (
    "SELECT source_file, source, file_sha256, size_bytes, outcome, lines_read, rows_landed, "
    "rows_dead_lettered FROM bronze._file_log ORDER BY source_file, outcome"
)
PAYMENT_ROWS = "SELECT _source_file, count(*) AS n FROM bronze.payments GROUP BY 1 ORDER BY 1"


def paylake(lake, *args, env=None, check=True):
    done = subprocess.run(
        [BIN, "--lake", str(lake), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=RUN_TIMEOUT,
    )
    if check:
        assert done.returncode == 0, f"paylake {' '.join(map(str, args))}: {done.stderr[-3000:]}"
    return done


def pipeline(lake, landing):
    paylake(lake, "bronze", "--landing", landing)
    paylake(lake, "silver", "--as-of", AS_OF)
    paylake(lake, "gold", "--as-of", AS_OF)


@pytest.fixture(scope="session")
def s3():
    client = boto3.client("s3")  # endpoint, region and keys from the AWS_* variables
    client.create_bucket(Bucket=BUCKET)
    for path in sorted(SAMPLE.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"landing/{path.relative_to(SAMPLE).as_posix()}")
    return client


def s3_tables(client, prefix, layer):
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=f"{prefix}/{layer}/", Delimiter="/"
    )
    names = [p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for page in pages for p in page.get("CommonPrefixes", [])]
    return sorted(
        n for n in names
        if client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/{layer}/{n}/_delta_log/", MaxKeys=1).get("KeyCount")
    )


def local_tables(lake, layer):
    folder = Path(lake) / layer
    return sorted(p.name for p in folder.iterdir() if (p / "_delta_log").is_dir()) if folder.is_dir() else []


def contents(lake, names, out):
    """Every named table as (its columns, its sorted rows), without the volatile columns."""
    tables = {}
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = out / f"{name}.csv"
        paylake(lake, "export", name, "--all-columns", "--format", "csv", "--output", target)
        with open(target, newline="") as f:
            rows = list(csv.reader(f))
        # An empty table exports as an empty file.
        header, body = (rows[0], rows[1:]) if rows else ([], [])
        keep = [i for i, column in enumerate(header) if column not in VOLATILE]
        tables[name] = ([header[i] for i in keep], sorted(tuple(r[i] for i in keep) for r in body))
    return tables


def query(lake, sql):
    return json.loads(paylake(lake, "sql", "--json", sql).stdout)


def bronze_record(lake):
    return query(lake, FILE_LOG), query(lake, PAYMENT_ROWS)


def table_names(lister):
    return [f"{layer}.{name}" for layer in LAYERS for name in lister(layer)]


def assert_same(actual, expected):
    assert sorted(actual) == sorted(expected), "the two lakes hold different tables"
    for name, (columns, rows) in expected.items():
        got_columns, got_rows = actual[name]
        assert got_columns == columns, f"{name}: columns differ"
        assert got_rows == rows, f"{name}: {len(got_rows)} rows on S3, {len(rows)} locally, or rows differ"


@pytest.fixture(scope="session")
def local_run(tmp_path_factory):
    """The pipeline on the local sample into a local lake: what every S3 run must equal."""
    work = tmp_path_factory.mktemp("local")
    lake = work / "lake"
    pipeline(lake, SAMPLE)
    names = table_names(lambda layer: local_tables(lake, layer))
    assert any(n.startswith("gold.") for n in names) and any(n.startswith("silver.") for n in names)
    return names, contents(lake, names, work / "export"), bronze_record(lake)


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
