#!/usr/bin/env python3
"""DuckDB's one-shot unified table: runs bench/unified_duckdb.sql over a flat landing folder
(the four CSVs) and writes the result to one Snappy Parquet file (DuckDB's default codec), as
paylake's Gold writes its tables. Default DuckDB settings: the yardstick is the engine as it comes.

usage: unified_duckdb.py LANDING_DIR OUT.parquet
Prints the number of rows written."""

import pathlib
import sys

import duckdb

QUERY = pathlib.Path(__file__).with_name("unified_duckdb.sql")


def write_unified(landing: str, out: str) -> int:
    """Builds the unified table from LANDING's four CSVs into OUT; returns its row count."""
    con = duckdb.connect()
    # paylake reads naive timestamps as UTC; so does DuckDB in a UTC session.
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET VARIABLE landing = ?", [str(pathlib.Path(landing).resolve())])
    target = str(out).replace("'", "''")
    copy = f"COPY ({QUERY.read_text()}) TO '{target}' (FORMAT parquet, COMPRESSION snappy)"
    return con.execute(copy).fetchone()[0]


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    rows = write_unified(sys.argv[1], sys.argv[2])
    print(f"duckdb  unified_payments  {rows} rows")


if __name__ == "__main__":
    main()
