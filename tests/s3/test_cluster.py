"""Silver and Gold on a real Ballista cluster on loopback: one `paylake cluster scheduler` and two
`paylake cluster executor` processes, the lake on moto's S3 (started by tests/s3/run.sh), every
table compared with the local engine's run of the same files."""

import json
import os
from collections import namedtuple
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conftest import (
    AS_OF,
    BIN,
    BUCKET,
    ROOT,
    assert_same,
    contents,
    local_tables,
    paylake,
    query,
    s3_tables,
    table_names,
)

Cluster = namedtuple("Cluster", "engine executor_logs")
GENERATED_PAYMENTS = int(os.environ.get("CLUSTER_TEST_PAYMENTS", "200000"))
STARTUP_SECONDS = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, process, log):
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"a cluster node exited with {process.returncode}:\n{Path(log).read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"nothing listens on port {port} after {STARTUP_SECONDS} s:\n{Path(log).read_text()[-3000:]}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and two executors as separate processes; yields the --engine URL and the
    executors' logs (which name every task they run)."""
    work = tmp_path_factory.mktemp("cluster")
    nodes = []
    logging = {**os.environ, "PAYLAKE_LOG": "warn,ballista_executor=info"}

    def start(name, args, port):
        log = work / f"{name}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(
                [BIN, "cluster", *map(str, args)], stdout=out, stderr=subprocess.STDOUT, env=logging
            )
        nodes.append(process)
        wait_for_port(port, process, log)

    scheduler = free_port()
    try:
        start("scheduler", ["scheduler", "--bind", f"127.0.0.1:{scheduler}"], scheduler)
        for n in (1, 2):
            flight, grpc = free_port(), free_port()
            start(
                f"executor{n}",
                [
                    "executor",
                    "--scheduler", f"127.0.0.1:{scheduler}",
                    "--flight-port", flight,
                    "--grpc-port", grpc,
                    "--concurrent-tasks", "2",
                    "--work-dir", work / f"executor{n}",
                ],
                flight,
            )
        yield Cluster(f"ballista://127.0.0.1:{scheduler}", [work / f"executor{n}.log" for n in (1, 2)])
    finally:
        for process in nodes:
            process.terminate()
        for process in nodes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def on_cluster(lake, landing, engine):
    """Bronze as always, then Silver and Gold planned on the cluster."""
    paylake(lake, "bronze", "--landing", landing)
    for step in ("silver", "gold"):
        started = time.monotonic()
        paylake(lake, step, "--as-of", AS_OF, "--engine", engine)
        print(f"cluster-test: {step} on the cluster in {time.monotonic() - started:.1f} s")


def scratch_left(s3, prefix):
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/_scratch/")
    return [o["Key"] for o in listed.get("Contents", [])]


def test_the_sample_on_the_cluster_equals_the_local_engine(s3, local_run, cluster, tmp_path):
    names, expected, _ = local_run
    lake = f"s3://{BUCKET}/cluster/lake"
    on_cluster(lake, f"s3://{BUCKET}/landing", cluster.engine)
    assert_same(contents(lake, names, tmp_path), expected)
    # Both executors ran tasks of it.
    for log in cluster.executor_logs:
        assert "Received task" in log.read_text() or "Execute task" in log.read_text(), log
    # The temporary models the executors read were written to the lake's scratch, then removed.
    assert scratch_left(s3, "cluster/lake") == []


def test_generated_payments_on_the_cluster_equal_the_local_engine(s3, cluster, tmp_path):
    landing = tmp_path / "landing"
    subprocess.run(
        [sys.executable, ROOT / "bench" / "generate.py", str(GENERATED_PAYMENTS), "--flat", landing],
        check=True,
        capture_output=True,
    )
    # One Bronze for both engines: the four CSVs carry no knowledge time in their names, so
    # their rows are known when they land, and two Bronze runs would differ in that time. Both
    # engines build as of one moment after it.
    lake = f"s3://{BUCKET}/generated/lake"
    paylake(lake, "bronze", "--landing", landing)
    time.sleep(1.1)
    as_of = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for step in ("silver", "gold"):
        paylake(lake, step, "--as-of", as_of)
    names = table_names(lambda layer: s3_tables(s3, "generated/lake", layer))
    expected = contents(lake, names, tmp_path / "local-engine")
    payments = len(expected["silver.payments"][1])
    assert payments > GENERATED_PAYMENTS * 0.99, payments

    for step in ("silver", "gold"):
        started = time.monotonic()
        paylake(lake, step, "--as-of", as_of, "--engine", cluster.engine)
        print(f"cluster-test: {step} of {GENERATED_PAYMENTS} payments on the cluster in {time.monotonic() - started:.1f} s")
    assert_same(contents(lake, names, tmp_path / "cluster-engine"), expected)
    assert scratch_left(s3, "generated/lake") == []


def test_incremental_runs_on_the_cluster_equal_the_local_engine(cluster, tmp_path):
    """The second run of each engine rebuilds only the keys a new micro-batch changed: Bronze is
    narrowed to them, the files holding them are found and replaced. Both lakes get the same
    files; the sample's names carry their knowledge times, so the Bronze rows are equal too."""
    landing = tmp_path / "landing"
    shutil.copytree(ROOT / "data", landing)
    local, clustered = tmp_path / "local-lake", tmp_path / "cluster-lake"
    engines = {local: [], clustered: ["--engine", cluster.engine]}

    def run_all():
        builds = {}
        for lake, engine in engines.items():
            paylake(lake, "bronze", "--landing", landing)
            for step in ("silver", "gold"):
                summary = paylake(lake, "--json", step, *engine).stdout.strip().splitlines()[-1]
                builds[(lake, step)] = json.loads(summary)["build"]["mode"]
        return builds

    run_all()
    batch = landing / "payments" / "2024-11-19" / "payments_2024-11-19T09-00.csv"
    batch.parent.mkdir(parents=True)
    batch.write_text(
        "payment_id,src_account_id,dest_account_id,payment_reference,amount,timestamp\n"
        "PAY9001,ACC103,ACC207,REF-9001,120.00,2024-11-19 08:50:00\n"
        "PAY9002,ACC102,ACC209,REF-9002,75.10,2024-11-19 08:55:00\n"
        "PAY1016,ACC103,ACC207,REF-1016,6835.54,2024-11-17 15:22:06\n"
    )
    builds = run_all()
    assert set(builds.values()) == {"incremental"}, builds
    # Without --as-of the training rows carry the moment of their run; the other tables must
    # be equal.
    names = [n for n in table_names(lambda layer: local_tables(local, layer)) if n != "gold.payment_training"]
    assert_same(contents(clustered, names, tmp_path / "cluster"), contents(local, names, tmp_path / "local"))


def test_a_model_the_cluster_would_run_differently_is_refused(s3, cluster, tmp_path):
    lake = f"s3://{BUCKET}/refused/lake"
    paylake(lake, "bronze", "--landing", f"s3://{BUCKET}/landing")
    paylake(lake, "silver", "--as-of", AS_OF)
    models = tmp_path / "sql"
    shutil.copytree(ROOT / "sql", models)
    (models / "gold" / "last_known_flag.sql").write_text(
        "-- paylake: materialized=table\n"
        "SELECT payment_id, last_value(src_risk_flag) IGNORE NULLS OVER (\n"
        "  PARTITION BY src_account_id ORDER BY \"timestamp\"\n"
        "  ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS last_known_flag\n"
        "FROM gold.unified_payments\n"
    )
    refused = paylake(lake, "gold", "--sql-dir", models, "--engine", cluster.engine, check=False)
    assert refused.returncode == 2, refused.stderr
    assert "gold.last_known_flag cannot run on the Ballista cluster" in refused.stderr
    assert "IGNORE NULLS" in refused.stderr and "--engine local" in refused.stderr
    # Nothing was published: Gold holds no row in this lake.
    gold_rows = "SELECT count(*) AS n FROM gold.unified_payments"
    assert query(lake, gold_rows) == [{"n": 0}]
    # The local engine runs the same models.
    paylake(lake, "gold", "--sql-dir", models, "--as-of", AS_OF)
    assert query(lake, gold_rows)[0]["n"] > 0


def test_an_unreachable_scheduler_is_named(s3):
    lake = f"s3://{BUCKET}/unreachable/lake"
    paylake(lake, "bronze", "--landing", f"s3://{BUCKET}/landing")
    port = free_port()
    failed = paylake(lake, "silver", "--engine", f"ballista://127.0.0.1:{port}", check=False)
    assert failed.returncode == 1, failed.stderr
    assert f"cannot reach the Ballista scheduler at ballista://127.0.0.1:{port}" in failed.stderr
