//! The seed sample from the original pandas pipeline: the exported unified table must match its
//! output value by value. The sample lives in ../shared/seed-sample (or PAYLAKE_SEED_SAMPLE).

use crate::common;

use std::path::PathBuf;

use common::Workspace;

fn seed_sample() -> PathBuf {
    let path = std::env::var_os("PAYLAKE_SEED_SAMPLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/seed-sample"));
    assert!(
        path.join("data").is_dir() && path.join("expected_unified_table.csv").is_file(),
        "the seed sample is missing at {} (set PAYLAKE_SEED_SAMPLE): the conformance test needs it",
        path.display()
    );
    path
}

/// A cell compared as the pandas output means it: numbers as numbers, booleans as booleans,
/// empty as NULL, everything else as text.
#[derive(Debug, PartialEq)]
enum Cell {
    Null,
    Number(f64),
    Bool(bool),
    Text(String),
}

fn cell(raw: &str) -> Cell {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Cell::Null;
    }
    match trimmed.to_ascii_lowercase().as_str() {
        "true" => return Cell::Bool(true),
        "false" => return Cell::Bool(false),
        _ => {}
    }
    match trimmed.parse::<f64>() {
        Ok(number) => Cell::Number(number),
        Err(_) => Cell::Text(trimmed.to_string()),
    }
}

fn read_table(path: &std::path::Path) -> (Vec<String>, Vec<Vec<Cell>>) {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(cell).collect())
        .collect();
    (header, rows)
}

#[test]
fn unified_table_matches_the_original_pipeline() {
    let seed = seed_sample();
    let workspace = Workspace::new();
    let landing = seed.join("data");
    workspace.ok(&["bronze", "--landing", landing.to_str().unwrap()]);
    workspace.ok(&["silver"]);
    workspace.ok(&["gold"]);
    let output = workspace.dir.path().join("unified_table.csv");
    workspace.ok(&[
        "export",
        "gold.unified_payments",
        "--format",
        "csv",
        "--output",
        output.to_str().unwrap(),
    ]);

    let (expected_header, expected_rows) = read_table(&seed.join("expected_unified_table.csv"));
    let (header, rows) = read_table(&output);
    assert_eq!(header, expected_header, "columns and their order");
    assert_eq!(rows.len(), 15);
    assert_eq!(rows.len(), expected_rows.len());
    let key = |row: &Vec<Cell>| format!("{:?}", row[0]);
    let mut sorted = rows;
    sorted.sort_by_key(key);
    let mut expected_sorted = expected_rows;
    expected_sorted.sort_by_key(key);
    for (got, want) in sorted.iter().zip(&expected_sorted) {
        for (column, (g, w)) in header.iter().zip(got.iter().zip(want)) {
            assert_eq!(g, w, "payment {:?}, column {column}", got[0]);
        }
    }
}
