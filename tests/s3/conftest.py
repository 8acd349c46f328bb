"""What the S3 and cluster tests share: the paylake binary, moto's bucket with the sample's
landing files, each lake's tables exported as sorted rows without the columns that name the run,
and the local run every other run must equal.

Each lake is exported table by table with `paylake export --all-columns`; a table's rows are
compared as a sorted multiset without the columns that name the run or its moment.
"""

import csv
import json
import os
import subprocess
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
