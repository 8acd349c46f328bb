"""Reads the lake the way data scientists and other engines do: as Delta tables.

Builds the sample lake with the release binary, then checks with the `deltalake` package,
Polars and DuckDB's delta extension that every Silver and Gold table reads back equal to
`paylake export`, that an older version and an empty table read with their schema, that a
reader scanning Gold while it is rebuilt 20 times always sees one whole version, and that
killing silver/gold at random moments 20 times never leaves a table unreadable or different
from a clean run's.

Run by `make interop-test` (part of `make test`) in a venv the Makefile creates.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("PAYLAKE_BIN", ROOT / "target/release/paylake"))
SAMPLE = ROOT / "data"


def paylake(lake, *args, check=True):
    result = subprocess.run(
        [str(BIN), "--lake", str(lake), *args], capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(f"paylake {args} exited {result.returncode}:\n{result.stderr}")
    return result


def build(lake):
    paylake(lake, "bronze", "--landing", str(SAMPLE))
    paylake(lake, "silver")
    paylake(lake, "gold")


def tables(lake, layer):
    folder = Path(lake) / layer
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "_delta_log").is_dir())


def exported(lake, table, tmp, version=None):
    out = Path(tmp) / f"{table}-{version}.parquet"
    args = ["export", table, "--format", "parquet", "--output", str(out), "--all-columns"]
    if version is not None:
        args += ["--version", str(version)]
    paylake(lake, *args)
    return pq.read_table(out)


def canonical(table):
    """Rows as sorted tuples of strings: equal whatever the reader's types and order."""
    columns = sorted(table.column_names)
    rows = table.select(columns).to_pylist()
    return sorted(tuple(str(row[c]) for c in columns) for row in rows)


def duckdb_connection():
    import duckdb_extension_delta

    extension = next(
        Path(duckdb_extension_delta.__file__).parent.rglob("delta.duckdb_extension")
    )
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    con.execute(f"LOAD '{extension}'")
    return con


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    lake = tmp_path_factory.mktemp("interop") / "lake"
    build(lake)
    return lake


def test_every_lake_table_is_a_delta_table(lake):
    for layer in ["bronze", "silver", "gold"]:
        folders = [p for p in (Path(lake) / layer).iterdir() if p.is_dir()]
        assert folders and all((p / "_delta_log").is_dir() for p in folders), folders
    assert (Path(lake) / "quality" / "results" / "_delta_log").is_dir()
    assert set(tables(lake, "gold")) == {"payment_training", "unified_payments"}
    assert "_file_log" in tables(lake, "bronze") and "_dead_letter" in tables(lake, "bronze")


def test_silver_and_gold_read_equal_to_export_in_deltalake_polars_and_duckdb(lake, tmp_path):
    con = duckdb_connection()
    for layer in ["silver", "gold"]:
        for name in tables(lake, layer):
            path = str(Path(lake) / layer / name)
            expected = exported(lake, f"{layer}.{name}", tmp_path)
            via_deltalake = DeltaTable(path).to_pyarrow_table()
            assert canonical(via_deltalake) == canonical(expected), f"{layer}.{name} deltalake"
            via_polars = pl.read_delta(path)
            assert via_polars.height == expected.num_rows, f"{layer}.{name} polars"
            count = con.execute(f"SELECT count(*) FROM delta_scan('{path}')").fetchone()[0]
            assert count == expected.num_rows, f"{layer}.{name} duckdb"


def test_gold_values_match_across_readers(lake):
    path = str(Path(lake) / "gold" / "unified_payments")
    con = duckdb_connection()
    sql = (
        "SELECT payment_id, amount, fraud_flag, src_risk_flag FROM delta_scan('{}') "
        "ORDER BY payment_id"
    ).format(path)
    via_duckdb = con.execute(sql).fetchall()
    via_polars = (
        pl.read_delta(path)
        .select(["payment_id", "amount", "fraud_flag", "src_risk_flag"])
        .sort("payment_id")
        .rows()
    )
    assert [tuple(map(str, r)) for r in via_duckdb] == [tuple(map(str, r)) for r in via_polars]
    assert len(via_duckdb) == 46


def test_an_empty_table_reads_with_its_schema(lake):
    path = str(Path(lake) / "silver" / "accounts_quarantine")
    table = DeltaTable(path).to_pyarrow_table()
    assert table.num_rows == 0
    assert "failed_rules" in table.column_names
    assert pl.read_delta(path).columns == table.column_names
    con = duckdb_connection()
    assert con.execute(f"SELECT count(*) FROM delta_scan('{path}')").fetchone()[0] == 0


def test_an_older_version_stays_readable(lake, tmp_path):
    # A rerun with nothing new commits nothing (incremental); a full refresh makes a version.
    paylake(lake, "gold", "--full-refresh")
    path = str(Path(lake) / "gold" / "unified_payments")
    history = json.loads(paylake(lake, "--json", "history", "gold.unified_payments").stdout)
    assert history[0]["version"] >= 2
    older = history[1]["version"]
    via_deltalake = DeltaTable(path, version=older).to_pyarrow_table()
    expected = exported(lake, "gold.unified_payments", tmp_path, version=older)
    assert canonical(via_deltalake) == canonical(expected)
    assert DeltaTable(path).history()[0]["operation"] == "WRITE"


def test_a_reader_during_20_rebuilds_always_sees_one_whole_version(lake):
    path = str(Path(lake) / "gold" / "unified_payments")
    done = threading.Event()
    failures = []

    def rebuild():
        try:
            for _ in range(20):
                paylake(lake, "gold", "--full-refresh")
        except Exception as e:  # reported by the reader loop's assertion
            failures.append(e)
        finally:
            done.set()

    writer = threading.Thread(target=rebuild)
    writer.start()
    counts = []
    while not done.is_set():
        counts.append(DeltaTable(path).to_pyarrow_table().num_rows)
    writer.join()
    assert not failures, failures
    assert counts, "the reader ran"
    assert set(counts) == {46}, sorted(set(counts))


def comparable(lake, tmp):
    """Every Silver and Gold table, without the columns that name the run that built it."""
    volatile = {"_batch_id", "_ingested_at", "payment_ingested_at", "ingested_at", "run_id"}
    Path(tmp).mkdir(parents=True, exist_ok=True)
    result = {}
    for layer in ["silver", "gold"]:
        for name in tables(lake, layer):
            table = exported(lake, f"{layer}.{name}", tmp)
            keep = [c for c in table.column_names if c not in volatile]
            result[f"{layer}.{name}"] = canonical(table.select(keep))
    return result


def test_killed_runs_leave_readable_tables_equal_to_a_clean_run(tmp_path):
    # One as-of time for both lakes: the training table records it.
    as_of = ["--as-of", "2025-03-01"]
    clean = tmp_path / "clean"
    paylake(clean, "bronze", "--landing", str(SAMPLE))
    paylake(clean, "silver", *as_of)
    paylake(clean, "gold", *as_of)
    lake = tmp_path / "killed"
    paylake(lake, "bronze", "--landing", str(SAMPLE))
    paylake(lake, "silver", *as_of)
    rng = random.Random(7)
    kills = 0
    # A sample run takes well under a second: kill at random moments until 20 runs died.
    for i in range(80):
        if kills >= 20:
            break
        step = "silver" if i % 2 == 0 else "gold"
        process = subprocess.Popen(
            [str(BIN), "--lake", str(lake), step, *as_of],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.02, 0.45))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        # Every table stays readable whatever moment the kill hit.
        for layer in ["silver", "gold"]:
            for name in tables(lake, layer):
                DeltaTable(str(lake / layer / name)).to_pyarrow_table()
    assert kills >= 20, f"only {kills} runs were killed mid-way"
    paylake(lake, "silver", *as_of)
    paylake(lake, "gold", *as_of)
    assert comparable(lake, tmp_path / "k") == comparable(clean, tmp_path / "c")
