//! Landing formats beyond plain CSV and JSON lines: Excel workbooks and compressed files.

use crate::common;

use std::io::Write;

use common::workbook::{date, formula, text, xlsx, Cell};
use common::{payments, source, Workspace};
use sha2::{Digest, Sha256};

fn label_header() -> Vec<Cell> {
    vec![
        text("Payment_ID"),
        text("fraud_type"),
        text("fraud_reported_date"),
        text("amount"),
    ]
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn workbook_cells_land_as_the_text_a_user_sees() {
    let ws = Workspace::new();
    let rows = vec![
        label_header(),
        vec![
            text("PAY1"),
            text("money_mule"),
            date(2025, 1, 10),
            Cell::Number(1250.0),
        ],
        vec![
            text("PAY2"),
            formula("\"account_\"&\"takeover\"", Some(text("account_takeover"))),
            formula("DATE(2025,1,3)", Some(date(2025, 1, 3))),
            Cell::Number(220.5),
        ],
        vec![Cell::Empty, Cell::Empty, Cell::Empty, Cell::Empty],
        vec![
            text("PAY3"),
            text("money_mule"),
            date(2025, 1, 4),
            formula("B9*2", None),
        ],
        vec![
            Cell::Number(42.0),
            text("account_takeover"),
            date(2024, 12, 31),
            formula("D2/1000", Some(Cell::Number(1.25))),
        ],
    ];
    // The sheet named after the source is read, not the first one.
    let notes = vec![vec![text("read me first")]];
    ws.land(
        "fraud_labels/analysts_2025-01-14.xlsx",
        xlsx(&[("Notes", notes), ("fraud_labels", rows)]),
    );
    let summary = ws.bronze();
    let labels = source(&summary, "fraud_labels");
    assert_eq!(labels["rows_landed"], 3, "{summary}");
    assert_eq!(labels["rows_dead_lettered"], 1, "{summary}");
    assert_eq!(labels["blank_lines"], 1, "{summary}");

    let landed = ws.query(
        "SELECT payment_id, fraud_type, fraud_reported_date, _rescued, _source_file, _source_line, \
         CAST(_known_at AS VARCHAR) AS known FROM bronze.fraud_labels ORDER BY _source_line",
    );
    let file = "fraud_labels/analysts_2025-01-14.xlsx#fraud_labels";
    let expected = [
        (
            "PAY1",
            "money_mule",
            "2025-01-10",
            r#"{"amount":"1250"}"#,
            2,
        ),
        (
            "PAY2",
            "account_takeover",
            "2025-01-03",
            r#"{"amount":"220.5"}"#,
            3,
        ),
        (
            "42",
            "account_takeover",
            "2024-12-31",
            r#"{"amount":"1.25"}"#,
            6,
        ),
    ];
    assert_eq!(landed.len(), expected.len(), "{landed:?}");
    for (row, (id, kind, day, rescued, line)) in landed.iter().zip(expected) {
        assert_eq!(row["payment_id"], id, "{row}");
        assert_eq!(row["fraud_type"], kind, "{row}");
        assert_eq!(row["fraud_reported_date"], day, "{row}");
        assert_eq!(row["_rescued"], rescued, "{row}");
        assert_eq!(row["_source_file"], file, "{row}");
        assert_eq!(row["_source_line"], line, "{row}");
        assert!(
            row["known"].as_str().unwrap().starts_with("2025-01-14"),
            "{row}"
        );
    }

    let dead =
        ws.query("SELECT _source_file, _source_line, reason, raw_text FROM bronze._dead_letter");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["_source_file"], file);
    assert_eq!(dead[0]["_source_line"], 5);
    let reason = dead[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("cell D5 holds the formula =B9*2 saved without its value"),
        "{reason}"
    );
    assert_eq!(dead[0]["raw_text"], "PAY3,money_mule,2025-01-04,\n");

    let log = ws.query(
        "SELECT source_file, format, outcome, lines_read, rows_landed, rows_dead_lettered, \
         blank_lines FROM bronze._file_log",
    );
    assert_eq!(
        log[0]["source_file"],
        "fraud_labels/analysts_2025-01-14.xlsx"
    );
    assert_eq!(log[0]["format"], "xlsx");
    assert_eq!(log[0]["outcome"], "landed_with_errors");
    assert_eq!(log[0]["lines_read"], 5, "rows 2 to 6 of the sheet: {log:?}");
    assert_eq!(log[0]["rows_landed"], 3);
    assert_eq!(log[0]["rows_dead_lettered"], 1);
    assert_eq!(log[0]["blank_lines"], 1);

    // A workbook lands once, like any file.
    assert_eq!(source(&ws.bronze(), "fraud_labels")["rows_landed"], 0);
    assert_eq!(ws.count("bronze.fraud_labels"), 3);
}

#[test]
fn the_first_sheet_is_read_when_none_is_named_after_the_source() {
    let ws = Workspace::new();
    let rows = vec![
        label_header(),
        vec![
            text("PAY7"),
            text("money_mule"),
            date(2025, 2, 1),
            Cell::Number(3.0),
        ],
    ];
    let other = vec![label_header(), vec![text("NOT_THIS_ONE")]];
    ws.land(
        "fraud_labels/cases.xlsx",
        xlsx(&[("Cases", rows), ("Archive", other)]),
    );
    ws.bronze();
    let landed = ws.query("SELECT payment_id, _source_file FROM bronze.fraud_labels");
    assert_eq!(landed.len(), 1, "{landed:?}");
    assert_eq!(landed[0]["payment_id"], "PAY7");
    assert_eq!(landed[0]["_source_file"], "fraud_labels/cases.xlsx#Cases");
}

#[test]
fn a_workbook_that_cannot_be_opened_or_lacks_a_column_is_rejected_with_a_reason() {
    let ws = Workspace::new();
    ws.land(
        "fraud_labels/not_really.xlsx",
        b"payment_id,fraud_type\nP1,x\n",
    );
    let whole = xlsx(&[("fraud_labels", vec![label_header()])]);
    ws.land("fraud_labels/cut_short.xlsx", &whole[..whole.len() / 2]);
    ws.land("fraud_labels/legacy.xls", b"not a BIFF workbook either");
    let missing = vec![
        vec![text("payment_id"), text("fraud_type")],
        vec![text("PAY1"), text("money_mule")],
    ];
    ws.land(
        "fraud_labels/missing_column.xlsx",
        xlsx(&[("fraud_labels", missing)]),
    );
    let summary = ws.bronze();
    assert_eq!(source(&summary, "fraud_labels")["files_rejected"], 4);
    let log = ws.query(
        "SELECT source_file, outcome, reason, lines_read, rows_dead_lettered FROM bronze._file_log \
         ORDER BY source_file",
    );
    let by_name = |name: &str| {
        log.iter()
            .find(|e| e["source_file"] == format!("fraud_labels/{name}"))
            .unwrap_or_else(|| panic!("{name} not in {log:?}"))
    };
    for name in ["not_really.xlsx", "cut_short.xlsx", "legacy.xls"] {
        let entry = by_name(name);
        assert_eq!(entry["outcome"], "rejected", "{entry}");
        let reason = entry["reason"].as_str().unwrap();
        assert!(reason.contains("workbook cannot be opened"), "{reason}");
        assert_eq!(entry["lines_read"], 0, "{entry}");
    }
    let entry = by_name("missing_column.xlsx");
    assert_eq!(entry["outcome"], "rejected");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("missing required column(s): fraud_reported_date"),
        "{entry}"
    );
    assert_eq!(entry["lines_read"], 1);
    assert_eq!(entry["rows_dead_lettered"], 1);
    let dead = ws.query(
        "SELECT _source_line, is_header, raw_text FROM bronze._dead_letter \
         WHERE _source_file = 'fraud_labels/missing_column.xlsx#fraud_labels' ORDER BY _source_line",
    );
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0]["is_header"], true);
    assert_eq!(dead[1]["raw_text"], "PAY1,money_mule\n");
    assert_eq!(ws.count("bronze.fraud_labels"), 0);
}

#[test]
fn gzip_and_zstd_files_land_with_decompressed_line_numbers_and_the_hash_of_what_was_sent() {
    let ws = Workspace::new();
    let csv = payments(&[
        "P1,A1,A2,R1,10.00,2024-11-18 09:00:00",
        "P2,A1,A2,R2,11.00,2024-11-18 09:01:00,one field too many",
        "",
        "P3,A1,A2,R3,12.00,2024-11-18 09:02:00",
    ]);
    let packed = gzip(csv.as_bytes());
    ws.land(
        "payments/2024-11-18/payments_2024-11-18T09-00.csv.gz",
        &packed,
    );
    let labels = "{\"payment_id\": \"P1\", \"fraud_type\": \"money_mule\", \"fraud_reported_date\": \"2025-01-02\"}\nnot json\n";
    ws.land(
        "fraud_labels/api/labels_2025-01-12T09-30.jsonl.zst",
        zstd::encode_all(labels.as_bytes(), 3).unwrap(),
    );
    let summary = ws.bronze();
    assert_eq!(source(&summary, "payments")["rows_landed"], 2, "{summary}");
    assert_eq!(source(&summary, "payments")["blank_lines"], 1);
    assert_eq!(source(&summary, "fraud_labels")["rows_landed"], 1);

    let rows = ws.query(
        "SELECT payment_id, _source_line, _file_sha256, CAST(_known_at AS VARCHAR) AS known \
         FROM bronze.payments ORDER BY _source_line",
    );
    assert_eq!(rows[0]["_source_line"], 2);
    assert_eq!(rows[1]["payment_id"], "P3");
    assert_eq!(rows[1]["_source_line"], 5, "lines of the decompressed text");
    assert_eq!(rows[0]["_file_sha256"], sha256_hex(&packed));
    let known = rows[0]["known"].as_str().unwrap_or_default();
    assert!(known.starts_with("2024-11-18"), "{known}");
    let dead = ws.query(
        "SELECT _source_file, _source_line, raw_text FROM bronze._dead_letter ORDER BY _source_file",
    );
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0]["_source_line"], 2, "{dead:?}");
    assert_eq!(dead[0]["raw_text"], "not json\n");
    assert_eq!(dead[1]["_source_line"], 3);
    assert_eq!(
        dead[1]["raw_text"],
        "P2,A1,A2,R2,11.00,2024-11-18 09:01:00,one field too many\n"
    );
    let log =
        ws.query("SELECT format, lines_read, file_sha256 FROM bronze._file_log ORDER BY format");
    assert_eq!(log[0]["format"], "csv.gz");
    assert_eq!(log[0]["lines_read"], 4);
    assert_eq!(log[0]["file_sha256"], sha256_hex(&packed));
    assert_eq!(log[1]["format"], "jsonl.zst");

    // The same archive again, under another name, and a second run: nothing lands twice.
    ws.land("payments/again/copy.csv.gz", &packed);
    let again = ws.bronze();
    assert_eq!(source(&again, "payments")["rows_landed"], 0);
    // Skipped: the archive seen before, and its copy (same bytes, already landed).
    assert_eq!(source(&again, "payments")["files_skipped"], 2, "{again}");
    assert_eq!(ws.count("bronze.payments"), 2);
    // The same text uncompressed is other bytes as received: it is another file.
    ws.land("payments/plain.csv", &csv);
    assert_eq!(source(&ws.bronze(), "payments")["rows_landed"], 2);
}

#[test]
fn a_corrupt_archive_is_rejected_and_nothing_of_it_lands() {
    let ws = Workspace::new();
    let rows: Vec<String> = (0..2000)
        .map(|i| format!("P{i},A1,A2,R{i},{i}.00,2024-11-18 09:00:00"))
        .collect();
    let row_refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    let whole = gzip(payments(&row_refs).as_bytes());
    // Cut near the end: most rows decompress (and are flushed in batches) before the error.
    ws.land("payments/truncated.csv.gz", &whole[..whole.len() - 20]);
    let mut flipped = gzip(payments(&row_refs).as_bytes());
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    ws.land("payments/damaged.csv.gz", &flipped);
    ws.land(
        "payments/good.csv.gz",
        gzip(payments(&["P1,A1,A2,R,1.00,2024-11-18 09:00:00"]).as_bytes()),
    );
    let landing = ws.landing();
    let output = ws.ok(&[
        "--json",
        "bronze",
        "--landing",
        landing.to_str().unwrap(),
        "--batch-rows",
        "100",
    ]);
    let summary = common::json(&output);
    assert_eq!(
        source(&summary, "payments")["files_rejected"],
        2,
        "{summary}"
    );
    assert_eq!(source(&summary, "payments")["rows_landed"], 1);
    let log = ws.query(
        "SELECT source_file, outcome, reason, lines_read, rows_landed FROM bronze._file_log \
         WHERE outcome = 'rejected' ORDER BY source_file",
    );
    assert_eq!(log.len(), 2, "{log:?}");
    for entry in &log {
        let reason = entry["reason"].as_str().unwrap();
        assert!(
            reason.contains("corrupt or truncated gzip archive"),
            "{reason}"
        );
        assert!(reason.contains("nothing of it landed"), "{reason}");
        assert_eq!(entry["lines_read"], 0);
        assert_eq!(entry["rows_landed"], 0);
    }
    assert_eq!(ws.count("bronze.payments"), 1);
    assert_eq!(ws.count("bronze._dead_letter"), 0);
}
