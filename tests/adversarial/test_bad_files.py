"""Case 1: the bad-file corpus (tests/adversarial/corpus). Each file lands alone into its own
lake, and then all of them at once beside the sample; for each the run exits 0 (Bronze never
blocks), the file's `bronze._file_log` entry has the expected outcome and counts, every line is
accounted (`lines_read = rows_landed + rows_dead_lettered + blank_lines`, and those counts match
the rows really in the Bronze table and the dead letter), nothing panics, and output stays small.
"""


import re
import pytest

import chaos
import corpus

# The expected file-log entry of each case:
# (outcome, lines_read, rows_landed, rows_dead_lettered, blank_lines, words in the reason).
# Lines are counted after the header; a quoted value spanning lines is one line.
EXPECTED = {
    "empty": ("rejected", 0, 0, 0, 0, "empty"),
    "header_only": ("landed", 0, 0, 0, 0, None),
    "bom_crlf": ("landed", 3, 3, 0, 0, None),
    "wrong_delimiter": ("rejected", 2, 0, 2, 0, "missing required column"),
    "unbalanced_quote": ("landed_with_errors", 6, 5, 1, 0, "dead-lettered"),
    "invalid_utf8": ("landed_with_errors", 3, 2, 1, 0, "dead-lettered"),
    "nul_bytes": ("landed", 4, 4, 0, 0, None),
    "long_line": ("landed_with_errors", 3, 2, 1, 0, "dead-lettered"),
    "extra_columns": ("landed", 2, 2, 0, 0, None),
    "missing_required_column": ("rejected", 2, 0, 2, 0, "missing required column(s): amount"),
    "missing_optional_column": ("landed", 2, 2, 0, 0, None),
    "ragged_rows": ("landed_with_errors", 4, 2, 2, 0, "dead-lettered"),
    "duplicate_header": ("rejected", 1, 0, 1, 0, "named more than once"),
    # good, cut off, an array, not JSON, good, trailing garbage, blank, good without newline
    "jsonl_broken_lines": ("landed_with_errors", 8, 3, 4, 1, "dead-lettered"),
    # gzip bytes hold no newline: the whole file is one (unusable) header line
    "gzip_named_csv": ("rejected", 0, 0, 0, 0, "not valid UTF-8"),
    "unknown_folder": ("rejected", 2, 0, 2, 0, "is not a source"),
    "unknown_extension": ("rejected", 2, 0, 2, 0, "unsupported file type"),
    "blank_lines": ("landed", 7, 2, 0, 5, None),
    "multiline_quoted_value": ("landed", 3, 3, 0, 0, None),
    "no_final_newline": ("landed", 2, 2, 0, 0, None),
    # lines end with \n only: a file with CR line ends is one header line
    "cr_only_line_ends": ("rejected", 0, 0, 0, 0, "missing required column"),
    "random_bytes": ("rejected", 87, 0, 86, 1, "not valid UTF-8"),
    "hidden_file": ("refused", 0, 0, 0, 0, "hidden"),
    "fifo": ("refused", 0, 0, 0, 0, "FIFO"),
    "symlink_inside": ("landed", 2, 2, 0, 0, None),
    "symlink_outside": ("refused", 0, 0, 0, 0, "leaves the landing folder"),
    "symlink_dangling": ("refused", 0, 0, 0, 0, "dangling"),
    "symlink_loop": ("refused", 0, 0, 0, 0, "loop"),
}

# The dead letter's reason for the first bad line of some cases (line numbers count the header).
DEAD_LETTER_REASON = {
    "unbalanced_quote": (2, "unclosed quote starting at line 2"),
    "invalid_utf8": (3, "invalid UTF-8"),
    "long_line": (3, "bytes 134.."),
    "ragged_rows": (3, "expected 6 fields"),
    "missing_required_column": (2, "missing"),
}

# Nothing a bad file holds may make the output large (issue 13 item 4: a 50 MB line was echoed).
MAX_OUTPUT = 64 * 1024

FILE_LOG = (
    "SELECT source_file, source, outcome, reason, file_sha256, lines_read, rows_landed, "
    "rows_dead_lettered, {blank} AS blank_lines FROM bronze._file_log"
)


def file_log(paylake, lake):
    columns = {r["column_name"] for r in paylake.sql(lake, "DESCRIBE bronze._file_log")}
    # A binary from before issue 13 item 3 has no blank_lines column: count them as 0.
    blank = "coalesce(blank_lines, 0)" if "blank_lines" in columns else "0"
    return paylake.sql(lake, FILE_LOG.format(blank=blank))


def landing_file(source_file):
    """The landing file a Bronze row came from: a workbook's rows name `path#Sheet`."""
    return re.sub(r"(\.xlsx?)#[^/]*$", r"\1", source_file)


def assert_every_line_accounted(paylake, lake, entries):
    for e in entries:
        assert e["lines_read"] == e["rows_landed"] + e["rows_dead_lettered"] + e["blank_lines"], e
    landed = {}
    for table in chaos.tables(lake, "bronze"):
        if table.startswith("_"):
            continue
        for row in chaos.read(lake, f"bronze.{table}").select(["_source_file"]).to_pylist():
            name = landing_file(row["_source_file"])
            landed[name] = landed.get(name, 0) + 1
    dead = {}
    if "_dead_letter" in chaos.tables(lake, "bronze"):
        table = chaos.read(lake, "bronze._dead_letter").select(["_source_file", "is_header"])
        for row in table.to_pylist():
            if not row["is_header"]:
                name = landing_file(row["_source_file"])
                dead[name] = dead.get(name, 0) + 1
    for e in entries:
        if e["outcome"] == "skipped_duplicate":
            continue
        assert landed.get(e["source_file"], 0) == e["rows_landed"], (e, "rows in Bronze")
        assert dead.get(e["source_file"], 0) == e["rows_dead_lettered"], (e, "dead letters")


def land(paylake, tmp_path, names=None, with_sample=False):
    landing = tmp_path / "landing"
    if with_sample:
        chaos.copy_tree(chaos.SAMPLE, landing)
    cases = corpus.write(landing, names, outside=tmp_path / "outside")
    lake = tmp_path / "lake"
    # A FIFO must never be opened: a reader that blocks on it fails this bounded run.
    result = paylake.run(lake, "bronze", "--landing", landing, timeout=60)
    return cases, lake, landing, result


@pytest.mark.parametrize("name", list(EXPECTED))
def test_bad_file_lands_with_every_line_accounted(paylake, tmp_path, name):
    cases, lake, landing, result = land(paylake, tmp_path, [name])
    assert result.returncode == 0, result.describe()
    assert len(result.stdout) + len(result.stderr) < MAX_OUTPUT, len(result.stderr)
    case = cases[0]
    entries = file_log(paylake, lake)
    mine = [e for e in entries if e["source_file"] == case.path]
    assert len(mine) == 1, (case.path, entries)
    entry = mine[0]
    outcome, lines, landed, dead, blank, reason = EXPECTED[name]
    got = (entry["outcome"], entry["lines_read"], entry["rows_landed"], entry["rows_dead_lettered"],
           entry["blank_lines"])
    assert got == (outcome, lines, landed, dead, blank), entry
    if reason:
        assert reason in (entry["reason"] or ""), entry
    assert len(entry["reason"] or "") <= 1024, "the file log quotes a bounded part of a file"
    if outcome == "refused":
        assert entry["file_sha256"] == "", "a refused path is never opened"
    assert_every_line_accounted(paylake, lake, entries)

    if name in DEAD_LETTER_REASON:
        line, words = DEAD_LETTER_REASON[name]
        dead = chaos.read(lake, "bronze._dead_letter").to_pylist()
        first = min((r for r in dead if not r["is_header"]), key=lambda r: r["_source_line"])
        assert first["_source_line"] == line and words in first["reason"], first["reason"]
        if name == "long_line":
            assert len(first["raw_bytes"]) == 1024, "a line over 1 MiB keeps its first 1 KiB"
            assert case.data[134 : 134 + 1024] == first["raw_bytes"]
        if name == "invalid_utf8":
            # The dead letter is lossless: the raw bytes of the line, line end included.
            assert first["raw_bytes"] == case.data.split(b"\n")[2] + b"\n"
    if name == "nul_bytes":
        # Bronze keeps the text as received, NUL included.
        ids = {r["payment_id"] for r in paylake.sql(lake, "SELECT payment_id FROM bronze.payments")}
        assert "PAY\x006032" in ids, ids
    if name == "extra_columns":
        rescued = paylake.sql(lake, "SELECT _rescued FROM bronze.payments ORDER BY payment_id")
        assert '"channel":"web"' in rescued[0]["_rescued"].replace(" ", ""), rescued
    if name == "gzip_named_csv":
        assert b"\n" not in case.data, "the premise of the expected counts"

    # A second run lands nothing and logs nothing again, whatever the file was.
    again = paylake.run(lake, "bronze", "--landing", landing, timeout=60)
    assert again.returncode == 0, again.describe()
    assert sorted(map(str, file_log(paylake, lake))) == sorted(map(str, entries))


def test_long_line_output_stays_small_in_every_command(paylake, tmp_path):
    """Issue 13 item 4: a multi-megabyte line is never echoed whole by any command."""
    _, lake, _, result = land(paylake, tmp_path, ["long_line"])
    assert result.returncode == 0, result.describe()
    for command, json_output in [("schema", False), ("status", False), ("status", True)]:
        out = paylake.run(lake, command, json_output=json_output)
        assert out.returncode == 0, out.describe()
        assert len(out.stdout) + len(out.stderr) < MAX_OUTPUT, (command, len(out.stdout))
    total = sum(f.stat().st_size for f in lake.rglob("*") if f.is_file())
    assert total < 2 * 1024 * 1024, f"the lake grew {total} bytes for one 3 MiB line"


def test_whole_corpus_beside_the_sample_lands_once_with_every_line_accounted(paylake, tmp_path):
    cases, lake, landing, result = land(paylake, tmp_path, with_sample=True)
    assert result.returncode == 0, result.describe()
    entries = file_log(paylake, lake)
    logged = [e["source_file"] for e in entries]
    for case in cases:
        assert logged.count(case.path) == 1, (case.name, case.path)
    # Every regular file and symlink in the landing folder has an entry (none skipped silently).
    for path in landing.rglob("*"):
        if path.is_file() or path.is_symlink() or path.is_fifo():
            relative = path.relative_to(landing).as_posix()
            assert relative in logged, f"{relative} is not in the file log"
    assert_every_line_accounted(paylake, lake, entries)
    again = paylake.run(lake, "bronze", "--landing", landing, timeout=60)
    assert again.returncode == 0, again.describe()
    assert len(file_log(paylake, lake)) == len(entries)


def test_id_with_a_control_character_is_quarantined_not_published(paylake, tmp_path):
    _, lake, _, result = land(paylake, tmp_path, ["nul_bytes"], with_sample=True)
    assert result.returncode == 0, result.describe()
    silver = paylake.run(lake, "silver", "--as-of", chaos.AS_OF)
    assert silver.returncode in (0, 3), silver.describe()
    kept = {r["payment_id"] for r in paylake.sql(lake, "SELECT payment_id FROM silver.payments")}
    assert "PAY\x006032" not in kept, "an id with a NUL reached silver.payments"
    quarantined = paylake.sql(
        lake, "SELECT payment_id, failed_rules FROM silver.payments_quarantine"
    )
    rules = [r["failed_rules"] for r in quarantined if r["payment_id"] == "PAY\x006032"]
    assert rules and rules[0], f"not quarantined with a named rule: {quarantined}"
