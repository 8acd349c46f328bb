//! The generator of the sample's binary landing files: the analysts' workbook and the gzip
//! payments batch in `data/`. The test fails when a committed file differs from what this code
//! makes; `PAYLAKE_REGENERATE_SAMPLE=1 cargo test --release --workspace -- sample_` rewrites them.

use crate::common;

use std::io::{Read, Write};
use std::path::PathBuf;

use common::workbook::{date, text, xlsx};

const WORKBOOK: &str = "fraud_labels/analysts_2025-01-14.xlsx";
const GZIP_BATCH: &str = "payments/2024-11-18/payments_2024-11-18T09-00.csv.gz";

/// Two confirmed cases an analyst adds, both for payments in the sample; a notes sheet after
/// the cases sheet (the first sheet is the one read).
fn analysts_workbook() -> Vec<u8> {
    let cases = vec![
        vec![
            text("payment_id"),
            text("fraud_type"),
            text("fraud_reported_date"),
        ],
        vec![text("PAY1002"), text("money_mule"), date(2025, 1, 13)],
        vec![text("PAY1013"), text("account_takeover"), date(2025, 1, 9)],
    ];
    let notes = vec![vec![text("Confirmed by the fraud operations team, week 2")]];
    xlsx(&[("Cases", cases), ("Notes", notes)])
}

/// Three new payments between known accounts, on the morning after the CSV batches.
fn gzip_batch_text() -> String {
    common::payments(&[
        "PAY1046,ACC104,ACC203,REF-1046,780.00,2024-11-18 08:12:40",
        "PAY1047,ACC108,ACC211,REF-1047,1499.99,2024-11-18 08:35:02",
        "PAY1048,ACC102,ACC206,REF-1048,60.00,2024-11-18 08:51:27",
    ])
}

fn sample(relative: &str) -> PathBuf {
    common::sample_data().join(relative)
}

fn regenerate() -> bool {
    std::env::var_os("PAYLAKE_REGENERATE_SAMPLE").is_some()
}

#[test]
fn sample_workbook_matches_its_generator() {
    let expected = analysts_workbook();
    let path = sample(WORKBOOK);
    if regenerate() {
        std::fs::write(&path, &expected).unwrap();
    }
    let committed = std::fs::read(&path).unwrap();
    assert!(
        committed == expected,
        "{} differs from tests/it/sample_formats.rs: regenerate it with \
         PAYLAKE_REGENERATE_SAMPLE=1 cargo test --release --workspace -- sample_",
        path.display()
    );
}

#[test]
fn sample_gzip_batch_matches_its_generator() {
    let expected = gzip_batch_text();
    let path = sample(GZIP_BATCH);
    if regenerate() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(expected.as_bytes()).unwrap();
        std::fs::write(&path, encoder.finish().unwrap()).unwrap();
    }
    let mut committed = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
        .read_to_string(&mut committed)
        .unwrap();
    assert_eq!(
        committed, expected,
        "regenerate with PAYLAKE_REGENERATE_SAMPLE=1 cargo test --release --workspace -- sample_"
    );
}
