"""Case 6: hostile SQL and paths. The SQL shell is read-only: any statement but a query exits 2
naming it and changes nothing (issue 13 item 7). `export` never writes through a FIFO or a device
node, never inside the lake, and names a missing folder as "cannot write" (item 9). An absurd
`--label-maturity-days` is a usage error, not a panic (item 10). Every case gets its own lake.

Every case here failed against the binary of the time the suite was written (items 7 and 9).
"""

import os
import stat

import pytest

import chaos


@pytest.fixture
def lake(paylake, tmp_path):
    lake = tmp_path / "lake"
    paylake.pipeline(lake, chaos.SAMPLE)
    return lake


def snapshot(lake):
    """Every table's content and the lake's files (name, size), to show nothing changed."""
    files = sorted(
        (str(p.relative_to(lake)), p.stat().st_size)
        for p in lake.rglob("*")
        if p.is_file() and "_monitoring" not in p.parts
    )
    return chaos.contents(lake, ["bronze", "silver", "gold"]), files


def assert_refused(result, words=()):
    assert result.returncode == 2, result.describe()
    assert result.stderr.startswith("error:") or "\nerror:" in result.stderr, result.describe()
    for word in words:
        assert word.lower() in result.stderr.lower(), result.describe()


STATEMENTS = {
    "insert-bronze": ("INSERT INTO bronze.payments SELECT * FROM bronze.payments LIMIT 1", "INSERT"),
    "insert-gold": ("INSERT INTO gold.unified_payments SELECT * FROM gold.unified_payments", "INSERT"),
    "copy-to-file": ("COPY (SELECT 1 AS a) TO '{target}'", "COPY"),
    "create-external-table": (
        "CREATE EXTERNAL TABLE x (a VARCHAR) STORED AS CSV LOCATION '{target}'",
        "CREATE",
    ),
    "create-table-as": ("CREATE TABLE t AS SELECT 1 AS a", "CREATE"),
    "delete": ("DELETE FROM bronze.payments", "DELETE"),
    "drop": ("DROP TABLE bronze.payments", "DROP"),
}


@pytest.mark.parametrize("name", list(STATEMENTS))
def test_sql_shell_refuses_every_statement_but_a_query(paylake, lake, tmp_path, name):
    statement, kind = STATEMENTS[name]
    target = tmp_path / "written-by-sql.csv"
    if name == "create-external-table":
        target.write_text("a\n1\n")
    before = snapshot(lake)
    result = paylake.run(lake, "sql", statement.format(target=target))
    after = snapshot(lake)
    assert after == before, "the statement changed the lake"
    if name == "copy-to-file":
        assert not target.exists(), "COPY wrote outside the lake"
    assert_refused(result, [kind])


def test_sql_shell_still_answers_queries(paylake, lake):
    for query in [
        "SELECT count(*) AS n FROM gold.unified_payments",
        "WITH p AS (SELECT * FROM silver.payments) SELECT count(*) AS n FROM p",
        "EXPLAIN SELECT count(*) FROM bronze.payments",
        "DESCRIBE bronze._file_log",
        "SHOW TABLES",
    ]:
        result = paylake.run(lake, "sql", query)
        assert result.returncode == 0, result.describe()


def export(paylake, lake, output):
    return paylake.run(
        lake, "export", "gold.unified_payments", "--format", "csv", "--output", output, timeout=60
    )


def test_export_refuses_a_fifo(paylake, lake, tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    result = export(paylake, lake, fifo)
    assert stat.S_ISFIFO(fifo.lstat().st_mode), "the FIFO was replaced"
    assert_refused(result)


def test_export_refuses_a_device_node(paylake, lake, tmp_path):
    device = tmp_path / "null"
    try:
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    except PermissionError as e:
        pytest.skip(f"cannot make a device node here: {e}")
    result = export(paylake, lake, device)
    assert stat.S_ISCHR(device.lstat().st_mode), "the device node was replaced"
    assert_refused(result)


@pytest.mark.parametrize(
    "inside", ["silver/payments/_current.json", "gold/unified_payments/export.csv", "export.csv"]
)
def test_export_refuses_a_path_inside_the_lake(paylake, lake, inside):
    before = snapshot(lake)
    result = export(paylake, lake, lake / inside)
    assert snapshot(lake) == before, "the export wrote into the lake"
    assert_refused(result)


def test_export_to_a_missing_folder_says_cannot_write(paylake, lake, tmp_path):
    result = export(paylake, lake, tmp_path / "missing" / "out.csv")
    assert_refused(result, ["cannot write"])


def test_absurd_label_maturity_days_is_a_usage_error(paylake, lake):
    before = snapshot(lake)
    result = paylake.run(lake, "gold", "--as-of", chaos.AS_OF, "--label-maturity-days", "100000000")
    assert_refused(result)
    assert snapshot(lake) == before
