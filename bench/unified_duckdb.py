#!/usr/bin/env python3
"""DuckDB's one-shot unified table: runs bench/unified_duckdb.sql over a landing folder in
either layout and writes the result to one Snappy Parquet file (DuckDB's default codec), as
paylake's Gold writes its tables. Default DuckDB settings: the yardstick is the engine as it comes.

A folder holding payment_transactions.csv is the flat layout (the four CSVs side by side);
any other is the folder layout bench/generate.py writes (a folder per source, file names
carrying their knowledge time).

usage: unified_duckdb.py LANDING_DIR OUT.parquet
Prints the number of rows written."""

import pathlib
import sys

import duckdb

QUERY = pathlib.Path(__file__).with_name("unified_duckdb.sql")

# Each source's files, relative to the landing folder, by layout.
FLAT = {
    "payments_files": "payment_transactions.csv",
    "accounts_files": "account_details.csv",
    "risk_files": "external_risk_feed.csv",
    "labels_files": "historical_fraud_cases.csv",
}
FOLDER = {
    "payments_files": "payments/*/*.csv",
    "accounts_files": "accounts/*.csv",
    "risk_files": "risk_feed/*.csv",
    "labels_files": "fraud_labels/*.csv",
}


def source_files(landing: pathlib.Path) -> dict:
    """The path or glob of each source's files in LANDING, by its layout."""
    layout = FLAT if (landing / FLAT["payments_files"]).is_file() else FOLDER
    return {variable: str(landing / files) for variable, files in layout.items()}


def write_unified(landing: str, out: str) -> int:
    """Builds the unified table from LANDING's files into OUT; returns its row count."""
    con = duckdb.connect()
    # paylake reads naive timestamps as UTC; so does DuckDB in a UTC session.
    con.execute("SET TimeZone = 'UTC'")
    for variable, files in source_files(pathlib.Path(landing).resolve()).items():
        con.execute(f"SET VARIABLE {variable} = ?", [files])
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
