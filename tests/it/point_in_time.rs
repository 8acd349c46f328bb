//! gold.payment_training against a naive reference: nested loops in Rust over the same facts,
//! on random histories with ties, empty histories, late batches, downgrades and labels on both
//! sides of the as-of time. Plus the leakage, as-of and label-maturity boundaries.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::{Workspace, PAYMENT_HEADER};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H-%M-%S").to_string()
}

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 11, 15, 0, 0, 0).unwrap()
}

#[derive(Debug, Clone)]
struct Payment {
    id: String,
    src: String,
    dest: String,
    amount: i64,
    ts: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct Snapshot {
    file: String,
    known_at: DateTime<Utc>,
    rows: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
struct RiskBatch {
    file: String,
    known_at: DateTime<Utc>,
    rows: Vec<(String, i64)>,
}

#[derive(Debug, Clone)]
struct Label {
    file: String,
    line: usize,
    known_at: DateTime<Utc>,
    payment: String,
    fraud_type: String,
    reported: String,
}

#[derive(Debug, Default)]
struct History {
    payments: Vec<Payment>,
    payments_known_at: DateTime<Utc>,
    snapshots: Vec<Snapshot>,
    risk: Vec<RiskBatch>,
    labels: Vec<Label>,
}

impl History {
    fn random(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let accounts: Vec<String> = (1..=5).map(|i| format!("A{i}")).collect();
        // A coarse 30-minute grid over four days makes equal timestamps common.
        let slot = |rng: &mut StdRng| base() + Duration::minutes(30 * rng.gen_range(0..192));
        let mut history = History {
            payments_known_at: base(),
            ..Default::default()
        };
        for i in 0..rng.gen_range(5..40) {
            let src = accounts[rng.gen_range(0..accounts.len())].clone();
            let dest = accounts[rng.gen_range(0..accounts.len())].clone();
            history.payments.push(Payment {
                id: format!("P{i:03}"),
                src,
                dest,
                amount: rng.gen_range(1..500),
                ts: slot(&mut rng),
            });
        }
        // Some accounts never appear in a snapshot or a risk batch. An account keeps its
        // opening date over several snapshots, is missing from some, and sometimes changes;
        // two snapshots may share a knowledge time (the later file name wins): the runs of
        // unchanged snapshots Gold passes as one row each, and every way they end.
        let mut opened: Vec<String> = accounts.iter().map(|_| String::new()).collect();
        for f in 0..rng.gen_range(0..9) {
            let known_at = if f > 0 && rng.gen_bool(0.25) {
                history.snapshots[f - 1].known_at
            } else {
                slot(&mut rng)
            };
            let mut rows = Vec::new();
            for (account, opened) in accounts.iter().zip(&mut opened) {
                if opened.is_empty() || rng.gen_bool(0.2) {
                    *opened = format!("2020-0{}-1{}", rng.gen_range(1..10), rng.gen_range(0..10));
                }
                if rng.gen_bool(0.75) {
                    rows.push((account.clone(), opened.clone()));
                }
            }
            history.snapshots.push(Snapshot {
                file: format!("accounts/snap{f}_{}.csv", stamp(known_at)),
                known_at,
                rows,
            });
        }
        for f in 0..rng.gen_range(0..5) {
            // Two batches may share a knowledge time: the later file name wins.
            let known_at = if f > 0 && rng.gen_bool(0.3) {
                history.risk[0].known_at
            } else {
                slot(&mut rng)
            };
            let mut rows = Vec::new();
            for account in &accounts {
                if rng.gen_bool(0.5) {
                    rows.push((account.clone(), rng.gen_range(0..3)));
                }
            }
            history.risk.push(RiskBatch {
                file: format!("risk_feed/batch{f}_{}.csv", stamp(known_at)),
                known_at,
                rows,
            });
        }
        for f in 0..rng.gen_range(0..3) {
            let known_at = base() + Duration::days(rng.gen_range(20..90));
            let file = format!("fraud_labels/labels{f}_{}.csv", stamp(known_at));
            for line in 0..rng.gen_range(1..6) {
                let payment = format!("P{:03}", rng.gen_range(0..45));
                history.labels.push(Label {
                    file: file.clone(),
                    line: line + 2,
                    known_at,
                    payment,
                    fraud_type: ["mule", "app", "ato"][rng.gen_range(0..3)].to_string(),
                    reported: format!("2025-01-{:02}", rng.gen_range(1..4)),
                });
            }
        }
        history
    }

    fn land(&self, ws: &Workspace) {
        let mut text = PAYMENT_HEADER.to_string();
        for p in &self.payments {
            text.push_str(&format!(
                "{},{},{},R,{}.00,{}\n",
                p.id,
                p.src,
                p.dest,
                p.amount,
                p.ts.format("%Y-%m-%d %H:%M:%S")
            ));
        }
        ws.land(
            &format!("payments/batch_{}.csv", stamp(self.payments_known_at)),
            text,
        );
        // A file with the content of one landed before lands nothing (exactly once by
        // content): a different number of blank lines (counted, never stored) at the end of
        // each file keeps two files of the same rows two facts, as the reference has them.
        for (f, s) in self.snapshots.iter().enumerate() {
            let mut text = "account_id,opening_date\n".to_string();
            for (a, d) in &s.rows {
                text.push_str(&format!("{a},{d}\n"));
            }
            text.push_str(&"\n".repeat(f));
            ws.land(&s.file, text);
        }
        for (f, b) in self.risk.iter().enumerate() {
            let mut text = "account_id,risk_flag\n".to_string();
            for (a, f) in &b.rows {
                text.push_str(&format!("{a},{f}\n"));
            }
            text.push_str(&"\n".repeat(f));
            ws.land(&b.file, text);
        }
        let mut files: BTreeMap<&str, String> = BTreeMap::new();
        for l in &self.labels {
            files
                .entry(&l.file)
                .or_insert_with(|| "payment_id,fraud_type,fraud_reported_date\n".to_string())
                .push_str(&format!("{},{},{}\n", l.payment, l.fraud_type, l.reported));
        }
        for (file, text) in files {
            ws.land(file, text);
        }
    }

    /// The expected training row of each payment, by nested loops over the facts.
    fn reference(
        &self,
        as_of: DateTime<Utc>,
        maturity_days: i64,
    ) -> BTreeMap<String, BTreeMap<&'static str, String>> {
        let mut rows = BTreeMap::new();
        let null = || "null".to_string();
        for p in self.payments.iter().filter(|p| p.ts <= as_of) {
            let mut row = BTreeMap::new();
            for (role, account) in [("src", &p.src), ("dest", &p.dest)] {
                let snapshot = self
                    .snapshots
                    .iter()
                    .filter(|s| s.known_at <= p.ts && s.known_at <= as_of)
                    .filter_map(|s| {
                        s.rows
                            .iter()
                            .rev()
                            .find(|(a, _)| a == account)
                            .map(|(_, d)| (s.known_at, &s.file, d))
                    })
                    .max_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
                let (opened, known) = snapshot
                    .map(|(k, _, d)| {
                        (
                            d.clone(),
                            k.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        )
                    })
                    .unwrap_or_else(|| (null(), null()));
                row.insert(
                    if role == "src" {
                        "src_opening_date"
                    } else {
                        "dest_opening_date"
                    },
                    opened,
                );
                row.insert(
                    if role == "src" {
                        "src_account_known_at"
                    } else {
                        "dest_account_known_at"
                    },
                    known,
                );
                let risk = self
                    .risk
                    .iter()
                    .filter(|b| b.known_at <= p.ts && b.known_at <= as_of)
                    .filter_map(|b| {
                        b.rows
                            .iter()
                            .filter(|(a, _)| a == account)
                            .map(|(_, f)| *f)
                            .max()
                            .map(|f| (b.known_at, &b.file, f))
                    })
                    .max_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
                let (flag, known) = risk
                    .map(|(k, _, f)| {
                        (
                            f.to_string(),
                            k.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        )
                    })
                    .unwrap_or_else(|| ("0".to_string(), null()));
                row.insert(
                    if role == "src" {
                        "src_risk_flag"
                    } else {
                        "dest_risk_flag"
                    },
                    flag,
                );
                row.insert(
                    if role == "src" {
                        "src_risk_known_at"
                    } else {
                        "dest_risk_known_at"
                    },
                    known,
                );
            }
            let before: Vec<&Payment> = self
                .payments
                .iter()
                .filter(|q| q.ts < p.ts && q.ts <= as_of)
                .collect();
            for (name_count, name_sum, window) in [
                ("src_count_1h", "src_amount_1h", Duration::hours(1)),
                ("src_count_24h", "src_amount_24h", Duration::hours(24)),
                ("src_count_7d", "src_amount_7d", Duration::days(7)),
            ] {
                let in_window: Vec<&&Payment> = before
                    .iter()
                    .filter(|q| q.src == p.src && q.ts >= p.ts - window)
                    .collect();
                row.insert(name_count, in_window.len().to_string());
                row.insert(
                    name_sum,
                    in_window.iter().map(|q| q.amount).sum::<i64>().to_string(),
                );
            }
            let senders: BTreeSet<&String> = before
                .iter()
                .filter(|q| q.dest == p.dest && q.ts >= p.ts - Duration::hours(24))
                .map(|q| &q.src)
                .collect();
            row.insert("dest_distinct_senders_24h", senders.len().to_string());
            let seen = before.iter().any(|q| q.src == p.src && q.dest == p.dest);
            row.insert("pair_seen_before", seen.to_string());
            let label = self
                .labels
                .iter()
                .filter(|l| l.payment == p.id && l.known_at <= as_of)
                .max_by(|a, b| {
                    (&a.reported, a.known_at, &a.file, a.line).cmp(&(
                        &b.reported,
                        b.known_at,
                        &b.file,
                        b.line,
                    ))
                });
            let mature = p.ts <= as_of - Duration::days(maturity_days);
            let (status, flag) = match (label, mature) {
                (Some(_), _) => ("fraud", "true"),
                (None, true) => ("legit_mature", "false"),
                (None, false) => ("unknown_immature", "null"),
            };
            row.insert("label_status", status.to_string());
            row.insert("fraud_flag", flag.to_string());
            row.insert(
                "fraud_type",
                label.map(|l| l.fraud_type.clone()).unwrap_or_else(null),
            );
            rows.insert(p.id.clone(), row);
        }
        rows
    }
}

const COLUMNS: &str = "payment_id, CAST(src_opening_date AS VARCHAR) AS src_opening_date, \
    CAST(dest_opening_date AS VARCHAR) AS dest_opening_date, \
    CAST(src_account_known_at AS VARCHAR) AS src_account_known_at, \
    CAST(dest_account_known_at AS VARCHAR) AS dest_account_known_at, \
    CAST(src_risk_flag AS VARCHAR) AS src_risk_flag, CAST(dest_risk_flag AS VARCHAR) AS dest_risk_flag, \
    CAST(src_risk_known_at AS VARCHAR) AS src_risk_known_at, \
    CAST(dest_risk_known_at AS VARCHAR) AS dest_risk_known_at, \
    CAST(src_count_1h AS VARCHAR) AS src_count_1h, CAST(CAST(src_amount_1h AS BIGINT) AS VARCHAR) AS src_amount_1h, \
    CAST(src_count_24h AS VARCHAR) AS src_count_24h, CAST(CAST(src_amount_24h AS BIGINT) AS VARCHAR) AS src_amount_24h, \
    CAST(src_count_7d AS VARCHAR) AS src_count_7d, CAST(CAST(src_amount_7d AS BIGINT) AS VARCHAR) AS src_amount_7d, \
    CAST(dest_distinct_senders_24h AS VARCHAR) AS dest_distinct_senders_24h, \
    CAST(pair_seen_before AS VARCHAR) AS pair_seen_before, label_status, \
    CAST(fraud_flag AS VARCHAR) AS fraud_flag, fraud_type";

fn built_rows(ws: &Workspace) -> BTreeMap<String, BTreeMap<String, String>> {
    ws.query(&format!("SELECT {COLUMNS} FROM gold.payment_training"))
        .into_iter()
        .map(|row| {
            let object = row.as_object().unwrap();
            let id = object["payment_id"].as_str().unwrap().to_string();
            let values = object
                .iter()
                .filter(|(k, _)| *k != "payment_id")
                .map(|(k, v)| {
                    let text = match v {
                        Value::Null => "null".to_string(),
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), text)
                })
                .collect();
            (id, values)
        })
        .collect()
}

fn build(ws: &Workspace, as_of: DateTime<Utc>, maturity_days: i64) {
    let landing = ws.landing();
    std::fs::create_dir_all(&landing).unwrap();
    ws.ok(&["bronze", "--landing", landing.to_str().unwrap()]);
    let at = as_of.to_rfc3339();
    let days = maturity_days.to_string();
    // These histories leave accounts unknown on purpose: no expectations, no gate.
    let no_expectations = ws.no_expectations();
    let no_expectations = no_expectations.to_str().unwrap();
    ws.ok(&[
        "silver",
        "--as-of",
        &at,
        "--expectations-dir",
        no_expectations,
    ]);
    ws.ok(&[
        "gold",
        "--as-of",
        &at,
        "--label-maturity-days",
        &days,
        "--expectations-dir",
        no_expectations,
    ]);
}

/// Builds `history` as of `as_of` and compares every training row with the reference.
fn assert_agrees_with_the_reference(case: &str, history: &History, as_of: DateTime<Utc>) {
    let ws = Workspace::new();
    history.land(&ws);
    assert_built_agrees(case, &ws, history, as_of);
}

/// Builds the lake of `ws` (landed with `history`) and compares every training row with the
/// reference.
fn assert_built_agrees(case: &str, ws: &Workspace, history: &History, as_of: DateTime<Utc>) {
    build(ws, as_of, 60);
    let expected = history.reference(as_of, 60);
    let built = built_rows(ws);
    assert_eq!(
        built.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{case}: one row per payment with timestamp <= as_of"
    );
    for (id, want) in &expected {
        let got = &built[id];
        for (column, value) in want {
            let got_value = got.get(*column).map(String::as_str).unwrap_or("<missing>");
            let got_normalised = got_value.trim_end_matches(":00Z").trim_end_matches('Z');
            let want_normalised = value.trim_end_matches(":00Z").trim_end_matches('Z');
            assert_eq!(
                got_normalised, want_normalised,
                "{case}, payment {id}, column {column}\nhistory: {history:#?}"
            );
        }
    }
}

#[test]
fn sql_point_in_time_joins_agree_with_the_naive_reference() {
    for seed in 0..16u64 {
        let as_of = base() + Duration::days(if seed % 3 == 0 { 2 } else { 70 });
        assert_agrees_with_the_reference(&format!("seed {seed}"), &History::random(seed), as_of);
    }
}

/// Snapshot file `f`, known `hours` after the base, listing `accounts` opened 2020-01-15.
fn hourly_snapshot(f: usize, hours: i64, accounts: &[&str]) -> Snapshot {
    let known_at = base() + Duration::hours(hours);
    Snapshot {
        file: format!("accounts/snap{f}_{}.csv", stamp(known_at)),
        known_at,
        rows: accounts
            .iter()
            .map(|a| (a.to_string(), "2020-01-15".to_string()))
            .collect(),
    }
}

/// Gold passes an account's unchanged snapshots in a row as their first row, and one row per
/// snapshot instant: when no account changes at an instant, that row is what moves every
/// account's knowledge time on.
#[test]
fn unchanged_snapshots_in_a_row_are_known_as_of_the_latest() {
    let at = |hours: i64| base() + Duration::hours(hours);
    let payment = |i: usize, hours: i64, src: &str| Payment {
        id: format!("P{i:03}"),
        src: src.to_string(),
        dest: "A2".to_string(),
        amount: 10,
        ts: at(hours),
    };
    let history = History {
        payments: vec![
            payment(0, 1, "A1"),
            payment(1, 11, "A1"),
            payment(2, 21, "A1"),
            payment(3, 31, "A1"),
            payment(4, 41, "A1"),
            payment(5, 51, "A3"),
        ],
        payments_known_at: base(),
        snapshots: vec![
            hourly_snapshot(0, 0, &["A1", "A2"]),
            // Nothing changes at hour 10: every row of it is in the middle of a run.
            hourly_snapshot(1, 10, &["A1", "A2"]),
            hourly_snapshot(2, 20, &["A1", "A2"]),
            // A1 is missing at hour 30 and back at 40; A2 stops at 30.
            hourly_snapshot(3, 30, &["A2", "A3"]),
            hourly_snapshot(4, 40, &["A1", "A3"]),
            hourly_snapshot(5, 50, &["A1", "A3"]),
        ],
        ..Default::default()
    };
    assert_agrees_with_the_reference("runs of snapshots", &history, at(24 * 70));
}

/// A snapshot resent at its path with other content lands again, and an account on the same
/// line of both versions is kept twice, at one instant in one file: the run that landed each
/// orders them, the same in Silver and Gold, so the account's later snapshots still move its
/// knowledge time on.
#[test]
fn a_snapshot_resent_with_other_content_keeps_the_runs_of_its_accounts() {
    let at = |hours: i64| base() + Duration::hours(hours);
    let payments = [1, 11, 21, 31, 41]
        .iter()
        .enumerate()
        .map(|(i, hours)| Payment {
            id: format!("P{i:03}"),
            src: "A1".to_string(),
            dest: "A2".to_string(),
            amount: 10,
            ts: at(*hours),
        })
        .collect();
    let first = History {
        payments,
        payments_known_at: base(),
        snapshots: vec![
            hourly_snapshot(0, 0, &["A1"]),
            hourly_snapshot(1, 10, &["A1", "A2"]),
            hourly_snapshot(2, 20, &["A1"]),
            hourly_snapshot(3, 30, &["A1"]),
        ],
        ..Default::default()
    };
    let ws = Workspace::new();
    first.land(&ws);
    ws.ok(&["bronze", "--landing", ws.landing().to_str().unwrap()]);
    let resent = hourly_snapshot(1, 10, &["A1", "A3"]);
    ws.land(
        &resent.file,
        "account_id,opening_date\nA1,2020-01-15\nA3,2020-01-15\n",
    );
    let mut history = first;
    history.snapshots.insert(2, resent);
    assert_built_agrees("resent snapshot", &ws, &history, at(24 * 70));
}

fn one_payment_at(ws: &Workspace, ts: DateTime<Utc>) {
    ws.land(
        "payments/batch_2024-11-15T00-00.csv",
        format!(
            "{PAYMENT_HEADER}P1,A1,A2,R,10.00,{}\n",
            ts.format("%Y-%m-%d %H:%M:%S")
        ),
    );
}

#[test]
fn a_flag_landed_one_second_after_the_payment_is_not_used() {
    let payment_time = base() + Duration::hours(10);
    for (offset, expected_flag) in [(-1i64, 2i64), (0, 2), (1, 0)] {
        let ws = Workspace::new();
        one_payment_at(&ws, payment_time);
        let known = payment_time + Duration::seconds(offset);
        ws.land(
            &format!("risk_feed/batch_{}.csv", stamp(known)),
            "account_id,risk_flag\nA1,2\n",
        );
        build(&ws, base() + Duration::days(3), 60);
        let row = &ws.query("SELECT src_risk_flag FROM gold.payment_training")[0];
        assert_eq!(
            row["src_risk_flag"], expected_flag,
            "risk known {offset}s from the payment"
        );
        ws.ok(&["gold"]);
        let unified = &ws.query("SELECT src_risk_flag FROM gold.unified_payments")[0];
        assert_eq!(
            unified["src_risk_flag"], 2,
            "the latest-knowledge view shows it either way"
        );
    }
}

#[test]
fn training_built_as_of_t1_ignores_everything_known_later() {
    let t1 = base() + Duration::days(1) + Duration::hours(12);
    let early = |ws: &Workspace| {
        one_payment_at(ws, base() + Duration::hours(9));
        ws.land(
            "accounts/snap_2024-11-15T06-00.csv",
            "account_id,opening_date\nA1,2020-01-01\n",
        );
        ws.land(
            "risk_feed/batch_2024-11-15T08-00.csv",
            "account_id,risk_flag\nA2,1\n",
        );
    };
    let only_early = Workspace::new();
    early(&only_early);
    build(&only_early, t1, 60);

    let with_later = Workspace::new();
    early(&with_later);
    with_later.land(
        "payments/batch_2024-11-16T13-00.csv",
        format!("{PAYMENT_HEADER}P2,A1,A2,R,5.00,2024-11-16 11:00:00\nP3,A1,A2,R,5.00,2024-11-16 12:30:00\n"),
    );
    with_later.land(
        "accounts/snap_2024-11-17T06-00.csv",
        "account_id,opening_date\nA1,2021-01-01\nA2,2020-05-05\n",
    );
    with_later.land(
        "risk_feed/batch_2024-11-16T12-00-01.csv",
        "account_id,risk_flag\nA2,0\nA1,2\n",
    );
    with_later.land(
        "fraud_labels/labels_2024-11-16T12-00-01.csv",
        "payment_id,fraud_type,fraud_reported_date\nP1,mule,2024-11-16\n",
    );
    build(&with_later, t1, 60);

    let everything =
        "SELECT * EXCLUDE (payment_date) FROM gold.payment_training ORDER BY payment_id";
    assert_eq!(only_early.query(everything), with_later.query(everything));
    assert_eq!(with_later.count("gold.payment_training"), 1);
}

#[test]
fn label_status_at_the_maturity_boundary() {
    let payment_time = base() + Duration::hours(10);
    let cases = [
        (Duration::days(60), None, "legit_mature", Value::Bool(false)),
        (
            Duration::days(60) - Duration::seconds(1),
            None,
            "unknown_immature",
            Value::Null,
        ),
        (
            Duration::days(30),
            Some(Duration::days(30)),
            "fraud",
            Value::Bool(true),
        ),
        (
            Duration::days(30),
            Some(Duration::days(30) + Duration::seconds(1)),
            "unknown_immature",
            Value::Null,
        ),
        (
            Duration::days(90),
            Some(Duration::days(90) + Duration::seconds(1)),
            "legit_mature",
            Value::Bool(false),
        ),
    ];
    for (age_at_t, label_known_after_payment, status, flag) in cases {
        let ws = Workspace::new();
        one_payment_at(&ws, payment_time);
        if let Some(delay) = label_known_after_payment {
            ws.land(
                &format!("fraud_labels/labels_{}.csv", stamp(payment_time + delay)),
                "payment_id,fraud_type,fraud_reported_date\nP1,mule,2024-12-01\n",
            );
        }
        build(&ws, payment_time + age_at_t, 60);
        let row = &ws
            .query("SELECT label_status, fraud_flag, label_delay_days FROM gold.payment_training")
            [0];
        assert_eq!(
            row["label_status"], status,
            "{age_at_t:?} {label_known_after_payment:?}"
        );
        assert_eq!(
            row["fraud_flag"], flag,
            "{age_at_t:?} {label_known_after_payment:?}"
        );
        if status == "fraud" {
            assert_eq!(row["label_delay_days"], 30);
        }
    }
}

#[test]
fn broken_invariant_fails_the_build_and_keeps_the_published_table() {
    let ws = Workspace::new();
    one_payment_at(&ws, base() + Duration::hours(10));
    ws.land(
        "risk_feed/batch_2024-11-15T08-00.csv",
        "account_id,risk_flag\nA1,1\n",
    );
    build(&ws, base() + Duration::days(3), 60);
    let before = ws.query("SELECT * FROM gold.payment_training");

    // A model that leaks a risk flag from the future must not be published.
    let sql_dir = ws.dir.path().join("sql");
    common::copy_tree(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql"),
        &sql_dir,
    );
    let model = sql_dir.join("gold/payment_training.sql");
    let original = std::fs::read_to_string(&model).unwrap();
    let text = original.replace(
        "arrow_cast(p.src_risk_known_at,",
        "arrow_cast(p.src_risk_known_at + INTERVAL '400 days',",
    );
    assert_ne!(
        text, original,
        "the model no longer has the line this test breaks"
    );
    std::fs::write(&model, text).unwrap();
    let output = ws.run(&[
        "gold",
        "--as-of",
        "2024-11-18",
        "--sql-dir",
        sql_dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("features_known_by_payment_time"),
        "{stderr}"
    );
    assert_eq!(ws.query("SELECT * FROM gold.payment_training"), before);
}
