#!/usr/bin/env python3
"""Checks the benchmark's DuckDB query against the original pipeline: run on the seed sample's
four CSVs, its unified table must equal expected_unified_table.csv value by value, compared as
tests/it/conformance.rs compares paylake's export (numbers as numbers, booleans as booleans,
empty as NULL, everything else as text; rows matched by payment_id).

usage: check_duckdb_query.py [SEED_SAMPLE_DIR]
(default: $PAYLAKE_SEED_SAMPLE, else ../shared/seed-sample beside the repository)
Exits 1 naming the differences."""

import csv
import os
import pathlib
import sys
import tempfile

import duckdb

sys.dont_write_bytecode = True  # no __pycache__ beside the benchmark's sources
from unified_duckdb import write_unified  # noqa: E402


def cell(raw: str):
    """A cell as the pandas output means it (the same rules as tests/it/conformance.rs)."""
    text = raw.strip()
    if not text:
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return float(text)
    except ValueError:
        return text


def as_text(value) -> str:
    """A DuckDB value written as paylake's CSV export writes it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def main() -> None:
    default = (
        os.environ.get("PAYLAKE_SEED_SAMPLE")
        or pathlib.Path(__file__).resolve().parent.parent.parent / "shared/seed-sample"
    )
    seed = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else default)
    with open(seed / "expected_unified_table.csv", newline="") as f:
        expected_header, *expected = list(csv.reader(f))

    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/unified.parquet"
        write_unified(str(seed / "data"), out)
        con = duckdb.connect()
        header = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM '{out}'").fetchall()]
        # Timestamps as UTC text: the original pipeline wrote naive UTC times.
        columns = ", ".join(
            f"strftime(timezone('UTC', \"{c}\"), '%Y-%m-%d %H:%M:%S')"
            if c == "timestamp"
            else f'"{c}"'
            for c in header
        )
        got = [
            [as_text(v) for v in row]
            for row in con.execute(f"SELECT {columns} FROM '{out}'").fetchall()
        ]

    failures = []
    if header != expected_header:
        failures.append(f"columns differ:\n  got      {header}\n  expected {expected_header}")
    if len(got) != len(expected):
        failures.append(f"{len(got)} rows, expected {len(expected)}")
    by_id = {row[0]: row for row in got}
    for want in expected:
        row = by_id.get(want[0])
        if row is None:
            failures.append(f"payment {want[0]} missing")
            continue
        for column, g, w in zip(expected_header, row, want):
            if cell(g) != cell(w):
                failures.append(f"payment {want[0]}, column {column}: got {g!r}, expected {w!r}")
    if failures:
        print("DuckDB query differs from the expected unified table:", *failures[:20], sep="\n  ")
        sys.exit(1)
    print(
        f"DuckDB query matches {seed / 'expected_unified_table.csv'}: "
        f"{len(got)} rows x {len(header)} columns equal"
    )


if __name__ == "__main__":
    main()
