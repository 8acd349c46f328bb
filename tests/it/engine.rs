//! The query engine under a memory limit: Silver and Gold spill to disk and build exactly the
//! tables an unlimited run builds; a limit too small for a model is a clear error that names
//! the model and the setting to raise, never a crash.

use crate::common;

use std::fmt::Write as _;

use common::{json, Workspace, PAYMENT_HEADER};
use serde_json::Value;

const PAYMENTS: usize = 200_000;
const ACCOUNTS: usize = 3_000;
/// Fixed so that the `as_of` column of `gold.payment_training` is the same in every run.
const AS_OF: &str = "2026-01-01";

/// A deterministic pseudo-random sequence (a linear congruential generator).
struct Sequence(u64);

impl Sequence {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Payments over four days (with resent and conflicting duplicates), one account snapshot,
/// two risk batches (the second downgrades flags) and late fraud labels.
fn land_generated_sources(ws: &Workspace) {
    let mut random = Sequence(7);
    let per_day = PAYMENTS / 4;
    for day in 0..4 {
        let mut text = PAYMENT_HEADER.to_string();
        for i in day * per_day..(day + 1) * per_day {
            let src = random.below(ACCOUNTS as u64);
            let dest = random.below(ACCOUNTS as u64);
            let cents = 100 + random.below(500_000);
            let second = random.below(86_400);
            let row = format!(
                "PAY{i:07},ACC{src:05},ACC{dest:05},REF{i},{}.{:02},2024-11-{:02} {:02}:{:02}:{:02}\n",
                cents / 100,
                cents % 100,
                10 + day,
                second / 3600,
                second / 60 % 60,
                second % 60
            );
            text.push_str(&row);
            if i % 400 == 0 {
                text.push_str(&row);
            }
            if i % 900 == 0 {
                let _ = writeln!(
                    text,
                    "PAY{i:07},ACC{src:05},ACC{dest:05},REF{i},1.00,2024-11-{:02} 00:00:00",
                    10 + day
                );
            }
        }
        ws.land(
            &format!("payments/batch_2024-11-{:02}T23-59.csv", 10 + day),
            text,
        );
    }
    let mut accounts = String::from("account_id,opening_date\n");
    for a in 0..ACCOUNTS {
        let _ = writeln!(
            accounts,
            "ACC{a:05},20{:02}-{:02}-{:02}",
            10 + random.below(14),
            1 + random.below(12),
            1 + random.below(28)
        );
    }
    ws.land("accounts/account_details_2024-11-11T06-00.csv", accounts);
    for (file, flag_of) in [
        ("risk_feed/risk_2024-11-11T12-00.csv", 2u64),
        ("risk_feed/risk_2024-11-12T12-00.csv", 1u64),
    ] {
        let mut risk = String::from("account_id,risk_flag\n");
        for a in (0..ACCOUNTS).step_by(7) {
            let _ = writeln!(risk, "ACC{a:05},{}", random.below(flag_of + 1));
        }
        ws.land(file, risk);
    }
    let mut labels = String::from("payment_id,fraud_type,fraud_reported_date\n");
    for i in (0..PAYMENTS).step_by(997) {
        let _ = writeln!(labels, "PAY{i:07},account_takeover,2024-12-20");
    }
    ws.land("fraud_labels/analyst_cases_2025-01-10.csv", labels);
}

/// Runs a Silver or Gold step at a memory limit; returns its exit code, JSON stdout, stderr.
fn step(ws: &Workspace, layer: &str, limit: &str) -> (Option<i32>, String, String) {
    let expectations = ws.no_expectations();
    let output = ws.run(&[
        "--json",
        layer,
        "--as-of",
        AS_OF,
        "--memory-limit",
        limit,
        "--expectations-dir",
        expectations.to_str().unwrap(),
    ]);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn step_ok(ws: &Workspace, layer: &str, limit: &str) -> Value {
    let (code, stdout, stderr) = step(ws, layer, limit);
    assert_eq!(code, Some(0), "{layer} at {limit} failed:\n{stderr}");
    json(&stdout)
}

fn spilled_bytes(report: &Value) -> u64 {
    report["profile"]
        .as_array()
        .expect("a profile")
        .iter()
        .map(|model| model["spilled_bytes"].as_u64().unwrap_or(0))
        .sum()
}

/// Row count and a digest of every row of a table (order-independent), to compare builds.
fn fingerprint(ws: &Workspace, table: &str) -> (i64, String) {
    let (schema, name) = table.split_once('.').unwrap();
    let columns = ws.query(&format!(
        "SELECT column_name, data_type FROM information_schema.columns \
         WHERE table_schema = '{schema}' AND table_name = '{name}' ORDER BY ordinal_position"
    ));
    assert!(!columns.is_empty(), "{table} has no columns");
    let values: Vec<String> = columns
        .iter()
        .map(|c| {
            let column = c["column_name"].as_str().unwrap();
            let text = if c["data_type"].as_str().unwrap().contains("List") {
                format!("array_to_string(\"{column}\", ',')")
            } else {
                format!("CAST(\"{column}\" AS VARCHAR)")
            };
            format!("COALESCE({text}, '<null>')")
        })
        .collect();
    let rows = ws.query(&format!(
        "SELECT count(*) AS n, md5(string_agg(line, '\n' ORDER BY line)) AS digest \
         FROM (SELECT concat_ws('|', {}) AS line FROM {table})",
        values.join(", ")
    ));
    (
        rows[0]["n"].as_i64().unwrap(),
        rows[0]["digest"].as_str().unwrap_or_default().to_string(),
    )
}

fn fingerprints(ws: &Workspace, tables: &[&str]) -> Vec<(String, i64, String)> {
    tables
        .iter()
        .map(|t| {
            let (rows, digest) = fingerprint(ws, t);
            (t.to_string(), rows, digest)
        })
        .collect()
}

const SILVER_TABLES: &[&str] = &[
    "silver.payments",
    "silver.payments_quarantine",
    "silver.accounts",
    "silver.accounts_history",
    "silver.risk_feed",
    "silver.risk_feed_history",
    "silver.fraud_labels",
    "silver.fraud_labels_history",
];
const GOLD_TABLES: &[&str] = &["gold.unified_payments", "gold.payment_training"];

#[test]
fn small_memory_limits_spill_and_build_the_same_tables_or_name_the_setting() {
    let ws = Workspace::new();
    land_generated_sources(&ws);
    ws.bronze();

    step_ok(&ws, "silver", "unlimited");
    let silver = fingerprints(&ws, SILVER_TABLES);
    assert!(silver[0].1 >= PAYMENTS as i64, "{silver:?}");
    assert!(silver[1].1 > 0, "conflicting duplicates are quarantined");
    step_ok(&ws, "gold", "unlimited");
    let gold = fingerprints(&ws, GOLD_TABLES);
    assert_eq!(gold[1].1, silver[0].1, "one training row per payment");

    // Silver fits in 64 MiB: the same tables.
    step_ok(&ws, "silver", "64MiB");
    assert_eq!(fingerprints(&ws, SILVER_TABLES), silver);

    // Gold spills to disk in 64 MiB and builds the same tables.
    let report = step_ok(&ws, "gold", "64MiB");
    assert!(spilled_bytes(&report) > 0, "{}", report["profile"]);
    assert_eq!(fingerprints(&ws, GOLD_TABLES), gold);

    // Below what its sorts need to seat a few batches each, the error says which model and
    // which setting, and nothing is committed.
    let versions_before = ws.history("gold.payment_training").len();
    let (code, _, stderr) = step(&ws, "gold", "4MiB");
    assert_eq!(code, Some(1), "{stderr}");
    let model = stderr
        .split_whitespace()
        .find(|word| word.starts_with("gold."))
        .unwrap_or_default();
    assert!(
        stderr.contains(&format!(
            "{model} needs more memory than the engine's limit of 4.0 MiB"
        )) && !model.is_empty()
            && stderr.contains("--memory-limit")
            && stderr.contains("PAYLAKE_MEMORY_LIMIT")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert_eq!(ws.history("gold.payment_training").len(), versions_before);
}

#[test]
fn memory_limits_are_validated_and_taken_from_the_environment() {
    let ws = Workspace::new();
    ws.land("payments/batch_2024-11-10T23-59.csv", PAYMENT_HEADER);
    ws.bronze();
    let output = ws.run(&["silver", "--memory-limit", "lots"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("'lots' is not a size"), "{stderr}");
    let output = ws.run_with_env(&["silver"], &[("PAYLAKE_MEMORY_LIMIT", "12 parsecs")]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown unit"), "{stderr}");
}
