"""`paylake serve` read through ADBC's Flight SQL driver, as a notebook would (issue 10).

A lake is built from data/ with the binary; the server runs on a free loopback port with a
bearer token and is stopped (SIGTERM) whatever happens. Results must equal, type for type and
value for value, what `paylake sql --output FILE.parquet` writes for the same query.
"""

import os
import select
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

BIN = os.environ["PAYLAKE_BIN"]
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "flight-test-token"
GOLD_QUERY = "SELECT * FROM gold.unified_payments ORDER BY payment_id"


def paylake(lake, *args, **kwargs):
    return subprocess.run(
        [BIN, "--lake", str(lake), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    base = tmp_path_factory.mktemp("flight")
    landing = base / "landing"
    shutil.copytree(ROOT / "data", landing)
    lake = base / "lake"
    paylake(lake, "bronze", "--landing", str(landing))
    paylake(lake, "silver")
    paylake(lake, "gold")
    return lake


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`paylake serve` on a free port; `stop()` sends SIGTERM and returns the exit code."""

    def __init__(self, lake):
        port = free_port()
        self.uri = f"grpc://127.0.0.1:{port}"
        env = dict(os.environ, PAYLAKE_TOKEN=TOKEN, PAYLAKE_BIND=f"127.0.0.1:{port}")
        self.process = subprocess.Popen(
            [BIN, "--lake", str(lake), "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready, _, _ = select.select([self.process.stdout], [], [], 60)
        line = self.process.stdout.readline() if ready else ""
        if self.uri not in line:
            self.stop()
            raise AssertionError(f"the server did not start: {line!r} {self.process.stderr.read()}")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None
        return self.process.returncode


@pytest.fixture(scope="module")
def server(lake):
    server = Server(lake)
    try:
        yield server
    finally:
        server.stop()


def connect(uri, token=TOKEN):
    options = {}
    if token is not None:
        options[adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value] = f"Bearer {token}"
    return flight_sql.connect(uri, db_kwargs=options)


def wire_type(data_type):
    """What the server sends for a type: strings, not string views, also inside lists, and
    dictionaries (partition columns) as their values."""
    if pa.types.is_dictionary(data_type):
        return wire_type(data_type.value_type)
    if data_type == pa.string_view():
        return pa.string()
    if data_type == pa.binary_view():
        return pa.binary()
    if pa.types.is_list(data_type):
        return pa.list_(data_type.value_field.with_type(wire_type(data_type.value_type)))
    return data_type


def plain(table):
    """The table with the types the server sends."""
    return table.cast(pa.schema([field.with_type(wire_type(field.type)) for field in table.schema]))


def test_tables_are_listed_by_layer(server):
    with connect(server.uri) as conn:
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = {
            f"{schema['db_schema_name']}.{table['table_name']}"
            for catalog in objects
            for schema in catalog["catalog_db_schemas"]
            for table in schema["db_schema_tables"]
        }
        for table in ("bronze.payments", "silver.payments", "gold.unified_payments"):
            assert table in tables, tables
        assert not any(name.startswith(("information_schema.", "params.")) for name in tables)
        gold_only = conn.adbc_get_objects(depth="tables", db_schema_filter="gold").read_all()
        gold_schemas = gold_only.to_pylist()[0]["catalog_db_schemas"]
        assert [s["db_schema_name"] for s in gold_schemas] == ["gold"]
        schema = conn.adbc_get_table_schema("unified_payments", db_schema_filter="gold")
        assert "payment_id" in schema.names and "fraud_flag" in schema.names


def test_gold_comes_back_typed_and_equal_to_the_shell(server, lake, tmp_path):
    with connect(server.uri) as conn, conn.cursor() as cursor:
        cursor.execute(GOLD_QUERY)
        served = cursor.fetch_arrow_table()
    written = tmp_path / "gold.parquet"
    paylake(lake, "sql", "--output", str(written), GOLD_QUERY)
    expected = plain(pq.read_table(written))
    assert served.num_rows == 46
    assert served.schema.names == expected.schema.names
    assert served.schema.types == expected.schema.types
    assert served.to_pylist() == expected.to_pylist()
    # Typed, not text: numbers, times and flags arrive as Arrow types.
    types = dict(zip(served.schema.names, served.schema.types))
    assert pa.types.is_timestamp(types["timestamp"]), types
    assert pa.types.is_boolean(types["fraud_flag"]), types
    assert not pa.types.is_string(types["amount"]), types
    # The shell's JSON says the same.
    shell = paylake(
        lake, "sql", "--format", "json",
        "SELECT count(*) AS n, count(DISTINCT payment_id) AS ids FROM gold.unified_payments",
    )
    assert shell.stdout.strip() == '[{"n":46,"ids":46}]'
    assert len(set(served.column("payment_id").to_pylist())) == 46


def test_queries_with_and_without_rows(server):
    with connect(server.uri) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT fraud_flag, count(*) AS n FROM gold.unified_payments GROUP BY fraud_flag ORDER BY fraud_flag")
        counts = cursor.fetch_arrow_table().to_pylist()
        assert sum(row["n"] for row in counts) == 46
        cursor.execute("SELECT payment_id FROM gold.unified_payments WHERE false")
        assert cursor.fetch_arrow_table().num_rows == 0


def test_writes_are_refused(server, lake):
    before = paylake(lake, "sql", "--format", "csv", "SELECT count(*) AS n FROM gold.unified_payments").stdout
    with connect(server.uri) as conn, conn.cursor() as cursor:
        for statement in (
            "DELETE FROM gold.unified_payments",
            "CREATE TABLE t AS SELECT 1 AS x",
            "COPY (SELECT 1 AS x) TO '/tmp/paylake-flight-copy.csv'",
            "SELECT 1; SELECT 2",
        ):
            with pytest.raises(flight_sql.Error) as refused:
                cursor.execute(statement)
                cursor.fetch_arrow_table()
            assert "read-only" in str(refused.value) or "one statement" in str(refused.value), statement
    assert not Path("/tmp/paylake-flight-copy.csv").exists()
    after = paylake(lake, "sql", "--format", "csv", "SELECT count(*) AS n FROM gold.unified_payments").stdout
    assert before == after


@pytest.mark.parametrize("token", ["not-the-token", None])
def test_a_wrong_or_missing_token_is_refused(server, token):
    with connect(server.uri, token=token) as conn, conn.cursor() as cursor:
        with pytest.raises(flight_sql.Error) as refused:
            cursor.execute("SELECT 1 AS one")
            cursor.fetch_arrow_table()
        assert "nauthenticated" in str(refused.value), refused.value
        with pytest.raises(flight_sql.Error):
            conn.adbc_get_objects(depth="tables").read_all()


def test_sigterm_stops_the_server_cleanly(lake):
    server = Server(lake)
    with connect(server.uri) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT 1 AS one")
        assert cursor.fetch_arrow_table().to_pylist() == [{"one": 1}]
    assert server.stop() == 0
    # The token never appears in what the server prints.
    assert TOKEN not in server.process.stdout.read() + server.process.stderr.read()
