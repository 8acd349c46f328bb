#!/usr/bin/env python3
"""Checks that the benchmark compares like with like: DuckDB's unified table (a Parquet file)
and each paylake lake's gold.unified_payments hold the same thirteen columns' rows, as
multisets, after typing both sides alike.

usage: compare_unified.py DUCKDB.parquet LAKE_DIR...
Prints one line per lake; exits 1 when any differs."""

import sys

import duckdb
from deltalake import DeltaTable

COLUMNS = (
    "payment_id",
    "src_account_id",
    "dest_account_id",
    "payment_reference",
    "CAST(amount AS DECIMAL(18, 2)) AS amount",
    'CAST("timestamp" AS TIMESTAMPTZ) AS "timestamp"',
    "src_opening_date",
    "dest_opening_date",
    "CAST(src_risk_flag AS INTEGER) AS src_risk_flag",
    "CAST(dest_risk_flag AS INTEGER) AS dest_risk_flag",
    "fraud_flag",
    "fraud_type",
    "fraud_reported_date",
)


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    select = ", ".join(COLUMNS)
    con.execute(f"CREATE TABLE expected AS SELECT {select} FROM read_parquet(?)", [sys.argv[1]])
    differs = False
    for lake in sys.argv[2:]:
        con.register("gold", DeltaTable(f"{lake}/gold/unified_payments").to_pyarrow_dataset())
        con.execute(f"CREATE OR REPLACE TABLE got AS SELECT {select} FROM gold")
        missing, extra, rows = con.execute(
            "SELECT (SELECT count(*) FROM (FROM expected EXCEPT ALL FROM got)),"
            " (SELECT count(*) FROM (FROM got EXCEPT ALL FROM expected)),"
            " (SELECT count(*) FROM got)"
        ).fetchone()
        same = missing == 0 and extra == 0
        differs |= not same
        verdict = (
            "same as DuckDB" if same else f"DIFFERS: {missing} DuckDB rows missing, {extra} extra"
        )
        print(f"{lake}: {rows} rows, {verdict}")
    sys.exit(1 if differs else 0)


if __name__ == "__main__":
    main()
