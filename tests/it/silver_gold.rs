//! Silver rules and Gold joins end to end: each rule has a test that fails if it is dropped.

use crate::common;

use common::{payments, source, Workspace};
use serde_json::Value;

fn rules_of(row: &Value) -> Vec<String> {
    row["failed_rules"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn ids(rows: &[Value], column: &str) -> Vec<String> {
    rows.iter()
        .map(|r| r[column].as_str().unwrap_or("<null>").to_string())
        .collect()
}

/// Failed rules of every quarantined payment, by its raw payment_id.
fn quarantine_rules(ws: &Workspace, table: &str, key: &str) -> Vec<(String, Vec<String>)> {
    ws.query(&format!(
        "SELECT {key}, failed_rules FROM silver.{table} ORDER BY _source_file, _source_line"
    ))
    .iter()
    .map(|r| (r[key].as_str().unwrap_or("").to_string(), rules_of(r)))
    .collect()
}

#[test]
fn payment_rules_type_trim_and_quarantine() {
    let ws = Workspace::new();
    ws.land(
        "payments/2024-11-15T09-15.csv",
        payments(&[
            " P1 , A1 ,A2,R,10.50,2024-11-15 09:00:00",
            "P2,A1,A2,R,abc,2024-11-15 09:01:00",
            "P3,A1,A2,R,-5.00,2024-11-15 09:02:00",
            "P4,A1,A2,R,0,2024-11-15 09:03:00",
            "P5,,A2,R,1.00,2024-11-15 09:04:00",
            "P6,A1,A2,R,1.00,15/11/2024 09:05",
            "P7,A1,A2,R,1.5,2024-11-15T09:06:07.5Z",
            "P8,A1,A2,,2.000,2024-11-15T11:07:00+02:00",
            "P9,A1,A2,R,1e3,",
            ",A1,A2,R,1.00,2024-11-15 09:09:00",
            "P10,A1,A2,R,10.005,2024-11-15 09:10:00",
        ]),
    );
    ws.bronze();
    let summary = ws.silver();
    let counts = source(&summary, "payments");
    assert_eq!(counts["bronze_rows"], 11);
    assert_eq!(counts["kept"], 3);
    assert_eq!(counts["quarantined"], 8);

    let kept = ws.query(
        "SELECT payment_id, src_account_id, payment_reference, CAST(amount AS VARCHAR) AS amount, \
         CAST(\"timestamp\" AS VARCHAR) AS ts, arrow_typeof(\"timestamp\") AS ts_type, \
         arrow_typeof(amount) AS amount_type FROM silver.payments ORDER BY payment_id",
    );
    assert_eq!(ids(&kept, "payment_id"), ["P1", "P7", "P8"]);
    assert_eq!(kept[0]["src_account_id"], "A1", "ids are trimmed");
    assert_eq!(kept[0]["amount"], "10.50");
    assert_eq!(kept[0]["amount_type"], "Decimal128(18, 2)");
    assert!(kept[0]["ts_type"].as_str().unwrap().contains("UTC"));
    assert_eq!(kept[1]["ts"], "2024-11-15T09:06:07.500Z");
    assert_eq!(
        kept[2]["ts"], "2024-11-15T09:07:00Z",
        "offsets convert to UTC"
    );
    assert_eq!(kept[2]["amount"], "2.00");
    assert_eq!(kept[2]["payment_reference"], Value::Null);

    let rules = quarantine_rules(&ws, "payments_quarantine", "payment_id");
    let expect = [
        ("P2", vec!["amount_is_decimal_18_2"]),
        ("P3", vec!["amount_positive"]),
        ("P4", vec!["amount_positive"]),
        ("P5", vec!["src_account_id_required"]),
        ("P6", vec!["timestamp_is_iso8601"]),
        ("P9", vec!["amount_is_decimal_18_2", "timestamp_required"]),
        ("", vec!["payment_id_required"]),
        ("P10", vec!["amount_is_decimal_18_2"]),
    ];
    assert_eq!(rules.len(), expect.len(), "{rules:?}");
    for ((id, got), (want_id, want)) in rules.iter().zip(expect) {
        assert_eq!(id, want_id);
        assert_eq!(got, &want, "{id}");
    }
    let original = ws.query(
        "SELECT amount, _source_line FROM silver.payments_quarantine WHERE payment_id = 'P2'",
    );
    assert_eq!(
        original[0]["amount"], "abc",
        "quarantine keeps the original text"
    );
    assert_eq!(original[0]["_source_line"], 3);
}

#[test]
fn first_known_payment_wins_duplicates_dropped_or_quarantined() {
    let ws = Workspace::new();
    ws.land(
        "payments/batch_2024-11-15T10-00.csv",
        payments(&[
            "P1,A1,A2,R,10.00,2024-11-15 09:00:00",
            "P2,A1,A2,R,20.00,2024-11-15 09:01:00",
        ]),
    );
    // Landed earlier by its path although it sorts later by name.
    ws.land(
        "payments/z_batch_2024-11-15T09-45.csv",
        payments(&["P3,A1,A2,R,30.00,2024-11-15 09:02:00"]),
    );
    ws.land(
        "payments/batch_2024-11-15T10-15.csv",
        payments(&[
            "P1,A1,A2,R,10.0,2024-11-15T09:00:00Z",
            "P2,A1,A2,R,25.00,2024-11-15 09:01:00",
            "P3,A9,A2,R,30.00,2024-11-15 09:02:00",
        ]),
    );
    ws.bronze();
    let summary = ws.silver();
    let counts = source(&summary, "payments");
    assert_eq!(counts["kept"], 3);
    assert_eq!(counts["duplicates_dropped"], 1, "P1 again, same content");
    assert_eq!(
        counts["conflicting_duplicates"], 2,
        "P2 and P3 with other content"
    );
    let kept = ws.query("SELECT payment_id, CAST(amount AS VARCHAR) AS amount, src_account_id, _source_file FROM silver.payments ORDER BY payment_id");
    assert_eq!(kept[1]["amount"], "20.00", "the first known P2 wins");
    assert_eq!(
        kept[2]["src_account_id"], "A1",
        "P3 known at 09:45 wins over 10:15"
    );
    let rules = quarantine_rules(&ws, "payments_quarantine", "payment_id");
    assert_eq!(
        rules,
        vec![
            ("P2".to_string(), vec!["conflicting_duplicate".to_string()]),
            ("P3".to_string(), vec!["conflicting_duplicate".to_string()]),
        ]
    );
}

#[test]
fn account_snapshots_keep_history_and_the_latest_wins() {
    let ws = Workspace::new();
    ws.land(
        "accounts/account_details_2024-11-15T06-00.csv",
        "account_id,opening_date\nA1,2020-01-01\nA2,2021-01-01\nA2,2021-02-02\nA3,not-a-date\n",
    );
    ws.land(
        "accounts/account_details_2024-11-16T06-00.csv",
        "account_id,opening_date\nA1,2020-01-05\nA4,2024-11-15\n",
    );
    ws.bronze();
    let summary = ws.silver();
    let counts = source(&summary, "accounts");
    assert_eq!(counts["bronze_rows"], 6);
    assert_eq!(counts["kept"], 4);
    assert_eq!(counts["superseded"], 1);
    assert_eq!(counts["quarantined"], 1);

    let history = ws.query(
        "SELECT account_id, CAST(opening_date AS VARCHAR) AS opened, CAST(valid_from AS VARCHAR) AS valid_from, \
         CAST(valid_to AS VARCHAR) AS valid_to FROM silver.accounts_history ORDER BY account_id, valid_from",
    );
    assert_eq!(history.len(), 4);
    assert_eq!(history[0]["valid_from"], "2024-11-15T06:00:00Z");
    assert_eq!(history[0]["valid_to"], "2024-11-16T06:00:00Z");
    assert_eq!(
        history[2]["opened"], "2021-02-02",
        "within a snapshot the last row wins"
    );

    let current = ws.query(
        "SELECT account_id, CAST(opening_date AS VARCHAR) AS opened, arrow_typeof(opening_date) AS t \
         FROM silver.accounts ORDER BY account_id",
    );
    assert_eq!(ids(&current, "account_id"), ["A1", "A2", "A4"]);
    assert_eq!(current[0]["opened"], "2020-01-05", "latest snapshot wins");
    assert_eq!(current[0]["t"], "Date32");
    assert_eq!(
        current[1]["opened"], "2021-02-02",
        "absent from the latest snapshot: its own latest"
    );
    let rules = quarantine_rules(&ws, "accounts_quarantine", "account_id");
    assert_eq!(
        rules,
        vec![("A3".to_string(), vec!["opening_date_is_date".to_string()])]
    );
}

#[test]
fn risk_flags_highest_in_batch_latest_batch_wins() {
    let ws = Workspace::new();
    ws.land(
        "risk_feed/batch_2024-11-15T12-00.csv",
        "account_id,risk_flag\nA1,1\nA1,2\nA2,1\nA3,3\nA4,\n",
    );
    ws.land(
        "risk_feed/batch_2024-11-16T12-00.csv",
        "account_id,risk_flag\nA1,0\nA5, 2 \n",
    );
    ws.bronze();
    let summary = ws.silver();
    let counts = source(&summary, "risk_feed");
    assert_eq!(counts["bronze_rows"], 7);
    assert_eq!(counts["kept"], 4);
    assert_eq!(counts["superseded"], 1);
    assert_eq!(counts["quarantined"], 2);

    let history = ws.query(
        "SELECT account_id, risk_flag FROM silver.risk_feed_history ORDER BY known_at, account_id",
    );
    assert_eq!(history[0]["account_id"], "A1");
    assert_eq!(history[0]["risk_flag"], 2, "highest flag within a batch");
    let current =
        ws.query("SELECT account_id, risk_flag FROM silver.risk_feed ORDER BY account_id");
    assert_eq!(ids(&current, "account_id"), ["A1", "A2", "A5"]);
    assert_eq!(current[0]["risk_flag"], 0, "a later 0 clears the flag");
    assert_eq!(current[1]["risk_flag"], 1);
    assert_eq!(current[2]["risk_flag"], 2);
    let rules = quarantine_rules(&ws, "risk_feed_quarantine", "account_id");
    assert_eq!(
        rules,
        vec![
            ("A3".to_string(), vec!["risk_flag_in_0_1_2".to_string()]),
            ("A4".to_string(), vec!["risk_flag_required".to_string()]),
        ]
    );
}

#[test]
fn one_current_label_per_payment_with_source_and_orphans() {
    let ws = Workspace::new();
    ws.land(
        "payments/p.csv",
        payments(&[
            "P1,A1,A2,R,10.00,2024-11-15 09:00:00",
            "P2,A1,A2,R,10.00,2024-11-15 09:00:00",
        ]),
    );
    ws.land(
        "fraud_labels/cases_2025-01-10.csv",
        "payment_id,fraud_type,fraud_reported_date\nP1,mule,2025-01-05\nP2,ato,2025-01-07\nP3,mule,\n",
    );
    ws.land(
        "fraud_labels/api/labels_2025-01-12T08-00.jsonl",
        "{\"payment_id\":\"P1\",\"fraud_type\":\"app\",\"fraud_reported_date\":\"2025-01-09\"}\n\
         {\"payment_id\":\"P2\",\"fraud_type\":\"app\",\"fraud_reported_date\":\"2025-01-07\"}\n\
         {\"payment_id\":\"P9\",\"fraud_type\":\"mule\",\"fraud_reported_date\":\"2025-01-01\"}\n",
    );
    ws.bronze();
    let summary = ws.silver();
    let counts = source(&summary, "fraud_labels");
    assert_eq!(counts["kept"], 5);
    assert_eq!(counts["quarantined"], 1);
    assert_eq!(counts["orphan_labels"], 1);
    let labels = ws.query(
        "SELECT payment_id, fraud_type, label_source, is_orphan FROM silver.fraud_labels ORDER BY payment_id",
    );
    assert_eq!(ids(&labels, "payment_id"), ["P1", "P2", "P9"]);
    assert_eq!(labels[0]["fraud_type"], "app", "latest reported date wins");
    assert_eq!(labels[0]["label_source"], "api");
    assert_eq!(
        labels[1]["fraud_type"], "app",
        "same date: latest known wins"
    );
    assert_eq!(labels[2]["is_orphan"], true);
    assert_eq!(labels[0]["is_orphan"], false);
    let rules = quarantine_rules(&ws, "fraud_labels_quarantine", "payment_id");
    assert_eq!(
        rules,
        vec![(
            "P3".to_string(),
            vec!["fraud_reported_date_required".to_string()]
        )]
    );
}

#[test]
fn counts_add_up_on_the_sample_and_reruns_replace() {
    let ws = Workspace::new();
    common::copy_tree(&common::sample_data(), &ws.landing());
    ws.bronze();
    let first = ws.silver();
    // A rerun with nothing new builds nothing; a full refresh rebuilds every table.
    assert_eq!(ws.silver()["build"]["mode"], "nothing_new");
    let second = ws.silver_with(&["--full-refresh"]);
    assert_eq!(
        first["tables"].as_array().unwrap().len(),
        second["tables"].as_array().unwrap().len()
    );
    for (source_name, table, history) in [
        ("payments", "payments", "payments"),
        ("accounts", "accounts", "accounts_history"),
        ("risk_feed", "risk_feed", "risk_feed_history"),
        ("fraud_labels", "fraud_labels", "fraud_labels_history"),
    ] {
        let bronze = ws.count(&format!("bronze.{source_name}"));
        let kept = ws.count(&format!("silver.{history}"));
        let quarantined = ws.count(&format!("silver.{table}_quarantine"));
        let counts = source(&second, source_name);
        let dropped =
            counts["duplicates_dropped"].as_i64().unwrap() + counts["superseded"].as_i64().unwrap();
        assert_eq!(bronze, kept + quarantined + dropped, "{source_name}");
        assert!(bronze > 0, "{source_name}");
    }
    // The sample has one identical repeat, one malformed line, two bad amounts, one bad flag.
    let payments = source(&second, "payments");
    assert_eq!(payments["duplicates_dropped"], 1);
    assert_eq!(payments["quarantined"], 2);
    assert_eq!(source(&second, "risk_feed")["quarantined"], 1);
    assert_eq!(ws.count("silver.payments"), 46);

    ws.gold();
    ws.gold_with(&["--full-refresh"]);
    assert_eq!(
        ws.count("gold.unified_payments"),
        46,
        "gold re-runs replace"
    );
    // Each rebuild is one overwrite commit on top of the table's creation.
    let history = ws.history("gold.unified_payments");
    let versions: Vec<i64> = history
        .iter()
        .map(|h| h["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, vec![2, 1, 0]);
    assert_eq!(history[0]["operation"], "WRITE");
    assert_eq!(history[0]["rows"], 46);
    assert_eq!(history[0]["audit"], "passed");
    // Every version stays readable until vacuum: the first build is still there.
    let first = ws.query("SELECT count(*) AS n FROM table_version('gold.unified_payments', 1)");
    assert_eq!(first[0]["n"], 46);
}

#[test]
fn gold_joins_accounts_risk_and_labels_with_defaults() {
    let ws = Workspace::new();
    common::copy_tree(&common::sample_data(), &ws.landing());
    ws.bronze();
    ws.silver();
    ws.gold();
    let row = |id: &str| {
        ws.query(&format!(
            "SELECT *, CAST(src_opening_date AS VARCHAR) AS src_opened, \
             CAST(fraud_reported_date AS VARCHAR) AS reported FROM gold.unified_payments WHERE payment_id = '{id}'"
        ))
        .remove(0)
    };
    let unknown_source = row("PAY1006");
    assert_eq!(unknown_source["src_opened"], Value::Null);
    assert_eq!(
        unknown_source["data_quality_flags"],
        serde_json::json!(["missing_src_account"])
    );
    assert_eq!(
        unknown_source["src_risk_flag"], 0,
        "missing risk flags are 0"
    );
    assert_eq!(unknown_source["fraud_flag"], false);
    assert_eq!(unknown_source["fraud_type"], Value::Null);

    let downgraded = row("PAY1001");
    assert_eq!(
        downgraded["dest_risk_flag"], 0,
        "ACC201 was cleared by the second batch"
    );
    assert_eq!(downgraded["data_quality_flags"], serde_json::json!([]));

    let labelled_twice = row("PAY1007");
    assert_eq!(labelled_twice["fraud_flag"], true);
    assert_eq!(labelled_twice["reported"], "2025-01-11");
    assert_eq!(labelled_twice["label_source"], "api");
    let from_the_workbook = row("PAY1002");
    assert_eq!(from_the_workbook["fraud_flag"], true);
    assert_eq!(from_the_workbook["reported"], "2025-01-13");
    assert_eq!(from_the_workbook["label_source"], "workbook");
    assert_eq!(
        row("PAY1047")["src_account_id"],
        "ACC108",
        "from the gzip batch"
    );
    assert_eq!(labelled_twice["src_risk_flag"], 2);
    assert_eq!(labelled_twice["src_account_age_days"], 27);

    let second_snapshot_only = row("PAY1012");
    assert_eq!(second_snapshot_only["src_opened"], "2024-11-15");

    let partitions: Vec<String> = std::fs::read_dir(ws.lake().join("gold/unified_payments"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().unwrap().is_dir())
        .flat_map(|v| std::fs::read_dir(v.path()).unwrap())
        .map(|p| p.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        partitions.contains(&"payment_date=2024-11-16".to_string()),
        "{partitions:?}"
    );
}

#[test]
fn gold_before_silver_is_a_usage_error() {
    let ws = Workspace::new();
    ws.bronze();
    let output = ws.run(&["gold"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("paylake silver"));
}

#[test]
fn a_second_writer_is_refused_while_a_run_holds_the_lake_and_readers_go_on() {
    let ws = Workspace::new();
    common::copy_tree(&common::sample_data(), &ws.landing());
    ws.bronze();
    ws.silver();
    ws.gold();
    // A live run of this host (this test process) holds the lease.
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let lease = serde_json::json!({
        "owner": "20261127T000000Z-abcd",
        "step": "silver",
        "host": hostname.trim(),
        "pid": std::process::id(),
        "acquired_at": "2026-11-27T00:00:00Z",
        "expires_at": "2999-01-01T00:00:00Z",
    });
    std::fs::create_dir_all(ws.lake().join("_locks")).unwrap();
    std::fs::write(ws.lake().join("_locks/writer.json"), lease.to_string()).unwrap();
    let refused = ws.run(&["gold"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("20261127T000000Z-abcd") && stderr.contains("silver"),
        "{stderr}"
    );
    assert_eq!(
        ws.history("gold.unified_payments").len(),
        2,
        "nothing was written"
    );
    assert_eq!(ws.count("gold.unified_payments"), 46, "readers never wait");

    // When the holder is gone, the next run takes the lake over.
    let gone = serde_json::json!({
        "owner": "crashed", "step": "gold", "host": hostname.trim(), "pid": u32::MAX,
        "acquired_at": "2026-11-27T00:00:00Z", "expires_at": "2999-01-01T00:00:00Z",
    });
    std::fs::write(ws.lake().join("_locks/writer.json"), gone.to_string()).unwrap();
    ws.gold();
    assert!(!ws.lake().join("_locks/writer.json").exists(), "released");
}
