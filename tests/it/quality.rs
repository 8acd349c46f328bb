//! Data-quality expectations, the Silver gate, replay, schema drift and monitoring end to end.

use crate::common;

use std::path::{Path, PathBuf};

use common::{Workspace, PAYMENT_HEADER};
use serde_json::Value;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn rule<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["results"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["rule"] == name))
        .unwrap_or_else(|| panic!("no result for {name}"))
}

fn promtool() -> &'static str {
    assert!(
        std::process::Command::new("promtool")
            .arg("--version")
            .output()
            .is_ok(),
        "promtool is needed (Debian package prometheus; `make test` installs it)"
    );
    "promtool"
}

fn assert_promtool_accepts_metrics(metrics: &Path) {
    let check = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(metrics).unwrap())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

fn clean_payments(count: usize) -> String {
    let mut text = PAYMENT_HEADER.to_string();
    for i in 0..count {
        text.push_str(&format!(
            "G{i},A1,A2,R,{}.00,2024-11-15 08:{:02}:00\n",
            i + 1,
            i % 60
        ));
    }
    text
}

#[test]
fn each_rule_kind_catches_violations_and_passes_clean_data() {
    let ws = Workspace::new();
    ws.land(
        "payments/batch_2024-11-15T09-30.csv",
        format!(
            "{PAYMENT_HEADER}P1,A1,A2,R,10.00,2024-11-15 09:00:00\nP2,A1,A9,R,20.00,2024-11-15 09:05:00\n\
             P3,A2,A2,,30.00,2024-11-15 09:10:00\nX4,A3,A1,R,5000.00,2024-11-15 09:15:00\n"
        ),
    );
    ws.land(
        "accounts/snap_2024-11-15T06-00.csv",
        "account_id,opening_date\nA1,2020-01-01\nA2,2020-01-01\nA3,2020-01-01\n",
    );
    let dir = ws.dir.path().join("expectations");
    let rules = [
        (
            "nn_catch",
            r#"kind = "not_null"
column = "payment_reference""#,
        ),
        (
            "nn_clean",
            r#"kind = "not_null"
column = "payment_id""#,
        ),
        (
            "unique_catch",
            r#"kind = "unique"
columns = ["src_account_id"]"#,
        ),
        (
            "unique_clean",
            r#"kind = "unique"
columns = ["payment_id"]"#,
        ),
        (
            "unique_within_max_failures",
            r#"kind = "unique"
columns = ["src_account_id"]
max_failures = 2"#,
        ),
        (
            "accepted_catch",
            r#"kind = "accepted_values"
column = "dest_account_id"
values = ["A1", "A2"]"#,
        ),
        (
            "accepted_clean",
            r#"kind = "accepted_values"
column = "src_account_id"
values = ["A1", "A2", "A3"]"#,
        ),
        (
            "between_catch",
            r#"kind = "between"
column = "amount"
min = 0
max = 1000"#,
        ),
        (
            "between_clean",
            r#"kind = "between"
column = "amount"
min = 0.01"#,
        ),
        (
            "regex_catch",
            r#"kind = "regex"
column = "payment_id"
pattern = "^P[0-9]+$""#,
        ),
        (
            "regex_null_ignore",
            r#"kind = "regex"
column = "payment_reference"
pattern = "^R$""#,
        ),
        (
            "regex_null_fail",
            r#"kind = "regex"
column = "payment_reference"
pattern = "^R$"
null_policy = "fail""#,
        ),
        (
            "regex_null_pass",
            r#"kind = "regex"
column = "payment_reference"
pattern = "^R$"
null_policy = "pass""#,
        ),
        (
            "reference_catch",
            r#"kind = "reference"
column = "dest_account_id"
references = "silver.accounts.account_id""#,
        ),
        (
            "reference_mostly",
            r#"kind = "reference"
column = "dest_account_id"
references = "silver.accounts.account_id"
mostly = 0.7"#,
        ),
        (
            "reference_clean",
            r#"kind = "reference"
column = "src_account_id"
references = "silver.accounts.account_id""#,
        ),
        (
            "custom_catch",
            r#"kind = "custom"
expression = "src_account_id <> dest_account_id""#,
        ),
        (
            "custom_clean",
            r#"kind = "custom"
expression = "amount > 0""#,
        ),
        (
            "rows_catch",
            r#"kind = "row_count_between"
min = 10"#,
        ),
        (
            "rows_clean",
            r#"kind = "row_count_between"
min = 1
max = 10"#,
        ),
        (
            "fresh_catch",
            r#"kind = "freshness"
column = "timestamp"
max_age_hours = 1"#,
        ),
        (
            "fresh_clean",
            r#"kind = "freshness"
column = "timestamp"
max_age_hours = 1000000"#,
        ),
        (
            "schema_catch",
            r#"kind = "schema"
required_columns = ["nope"]
forbidden_columns = ["amount"]"#,
        ),
        (
            "schema_clean",
            r#"kind = "schema"
required_columns = ["payment_id"]
forbidden_columns = ["card_number"]"#,
        ),
        (
            "query_catch",
            r#"kind = "custom_query"
query = "SELECT 10 AS evaluated, 3 AS failed"
mostly = 0.9"#,
        ),
        (
            "query_clean",
            r#"kind = "custom_query"
query = "SELECT count(*) AS evaluated, 0 AS failed FROM silver.payments""#,
        ),
    ];
    let mut suite = "table = \"silver.payments\"\nkey = [\"payment_id\"]\n".to_string();
    for (name, body) in rules {
        suite.push_str(&format!(
            "\n[[rules]]\nname = \"{name}\"\nseverity = \"warn\"\n{body}\n"
        ));
    }
    write(&dir.join("silver/payments.toml"), &suite);
    ws.bronze();
    let summary = common::json(&ws.ok(&[
        "--json",
        "silver",
        "--expectations-dir",
        dir.to_str().unwrap(),
    ]));
    let expect = [
        ("nn_catch", 4, 1, false),
        ("nn_clean", 4, 0, true),
        ("unique_catch", 4, 2, false),
        ("unique_clean", 4, 0, true),
        ("unique_within_max_failures", 4, 2, true),
        ("accepted_catch", 4, 1, false),
        ("accepted_clean", 4, 0, true),
        ("between_catch", 4, 1, false),
        ("between_clean", 4, 0, true),
        ("regex_catch", 4, 1, false),
        ("regex_null_ignore", 3, 0, true),
        ("regex_null_fail", 4, 1, false),
        ("regex_null_pass", 4, 0, true),
        ("reference_catch", 4, 1, false),
        ("reference_mostly", 4, 1, true),
        ("reference_clean", 4, 0, true),
        ("custom_catch", 4, 1, false),
        ("custom_clean", 4, 0, true),
        ("rows_catch", 1, 1, false),
        ("rows_clean", 1, 0, true),
        ("fresh_catch", 1, 1, false),
        ("fresh_clean", 1, 0, true),
        ("schema_catch", 2, 2, false),
        ("schema_clean", 2, 0, true),
        ("query_catch", 10, 3, false),
        ("query_clean", 4, 0, true),
    ];
    for (name, evaluated, failed, passed) in expect {
        let result = rule(&summary, name);
        assert_eq!(result["evaluated"], evaluated, "{name}: {result}");
        assert_eq!(result["failed"], failed, "{name}: {result}");
        assert_eq!(result["passed"], passed, "{name}: {result}");
    }
    assert_eq!(
        rule(&summary, "regex_catch")["samples"],
        serde_json::json!(["X4"])
    );
    assert_eq!(
        rule(&summary, "reference_catch")["samples"],
        serde_json::json!(["P2"])
    );
    assert_eq!(summary["verdict"]["passed"], true, "warnings never block");

    // Results are appended, never replaced (a rerun with nothing new audits nothing).
    ws.ok(&[
        "silver",
        "--full-refresh",
        "--expectations-dir",
        dir.to_str().unwrap(),
    ]);
    let runs =
        ws.query("SELECT count(DISTINCT run_id) AS n, count(*) AS rows FROM quality.results");
    assert_eq!(runs[0]["n"], 2);
    assert_eq!(runs[0]["rows"], 2 * expect.len());
    let report = std::fs::read_to_string(ws.lake().join("quality/reports/latest.html")).unwrap();
    assert!(
        report.contains("reference_catch") && report.contains("<svg"),
        "HTML report with trend"
    );
}

#[test]
fn error_gate_exits_3_and_leaves_gold_untouched_warnings_do_not_block() {
    let ws = Workspace::new();
    common::copy_tree(&common::sample_data(), &ws.landing());
    let metrics = ws.dir.path().join("paylake.prom");
    let metrics_arg = metrics.to_str().unwrap().to_string();
    ws.bronze();
    let silver = ws.run(&["silver", "--metrics-file", &metrics_arg]);
    assert_eq!(
        silver.status.code(),
        Some(0),
        "the sample passes: only warnings fail"
    );
    assert!(String::from_utf8_lossy(&silver.stderr).contains("WARN"));
    ws.ok(&["gold", "--metrics-file", &metrics_arg]);
    let gold_versions = ws.history("gold.unified_payments").len();

    // A batch where every amount is broken: far over 5% of payments quarantined.
    let mut bad = PAYMENT_HEADER.to_string();
    for i in 0..10 {
        bad.push_str(&format!("B{i},ACC101,ACC201,R,n/a,2024-11-18 09:00:00\n"));
    }
    ws.land("payments/2024-11-18/payments_2024-11-18T09-15.csv", bad);
    ws.bronze();
    let silver = ws.run(&["silver", "--metrics-file", &metrics_arg]);
    let stderr = String::from_utf8_lossy(&silver.stderr);
    assert_eq!(silver.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("data quality gate failed"), "{stderr}");
    assert!(stderr.contains("payments_quarantine_rate"), "{stderr}");

    let gold = ws.run(&["gold", "--metrics-file", &metrics_arg]);
    assert_eq!(gold.status.code(), Some(3));
    assert_eq!(
        ws.history("gold.unified_payments").len(),
        gold_versions,
        "gold is not rebuilt"
    );
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains("paylake_last_run_success{step=\"gold\"} 0"),
        "{text}"
    );
    assert!(text.contains(
        "paylake_rule_passed{table=\"silver.payments\",rule=\"payments_quarantine_rate\"} 0"
    ));
    assert_promtool_accepts_metrics(&metrics);

    let status = common::json(&ws.ok(&["--json", "status"]));
    let steps = status["steps"].as_array().unwrap();
    assert!(steps
        .iter()
        .any(|s| s["step"] == "gold" && s["outcome"] == "gate_failed"));
    let payments = status["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "silver.payments")
        .unwrap();
    assert!(payments["failing_rules"]
        .as_array()
        .unwrap()
        .contains(&Value::from("payments_quarantine_rate")));
    assert_eq!(status["quarantine"]["silver.payments_quarantine"], 12);
    assert_eq!(status["dead_letter"]["payments"], 1);
    let screen = ws.ok(&["status"]);
    assert!(
        screen.contains("silver.payments") && screen.contains("dead-lettered lines: payments 1"),
        "{screen}"
    );
}

#[test]
fn replay_moves_rows_fixed_by_a_rule_change_exactly_once() {
    let ws = Workspace::new();
    let mut payments = clean_payments(30);
    payments.push_str("P1,A1,A2,R,\"1,234.50\",2024-11-15 09:00:00\n");
    ws.land("payments/batch_2024-11-15T09-15.csv", payments);
    ws.land(
        "accounts/snap_2024-11-15T06-00.csv",
        "account_id,opening_date\nA1,2020-01-01\nA2,2020-01-01\n",
    );
    ws.bronze();
    ws.ok(&["silver"]);
    assert_eq!(ws.count("silver.payments_quarantine"), 1);

    // The rule fix: thousands separators are accepted.
    let sql_dir: PathBuf = ws.dir.path().join("sql");
    common::copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("sql"), &sql_dir);
    let model = sql_dir.join("silver/int_payments_checked.sql");
    let text = std::fs::read_to_string(&model).unwrap();
    let fixed = text.replace(
        "THEN TRY_CAST(TRIM(amount) AS DECIMAL(18, 2))",
        "THEN TRY_CAST(TRIM(amount) AS DECIMAL(18, 2))\n            WHEN regexp_like(TRIM(amount), '^[0-9]{1,3}(,[0-9]{3})+(\\.[0-9]{1,2})?$')\n            THEN TRY_CAST(replace(TRIM(amount), ',', '') AS DECIMAL(18, 2))",
    );
    assert_ne!(text, fixed);
    std::fs::write(&model, fixed).unwrap();

    let sql_arg = sql_dir.to_str().unwrap().to_string();
    let first = ws.ok(&[
        "quarantine",
        "replay",
        "--table",
        "payments",
        "--sql-dir",
        &sql_arg,
    ]);
    assert!(
        first.contains("1 quarantined before, 1 now pass"),
        "{first}"
    );
    assert_eq!(ws.count("silver.payments"), 31);
    assert_eq!(ws.count("silver.payments_quarantine"), 0);
    let amount = ws
        .query("SELECT CAST(amount AS VARCHAR) AS a FROM silver.payments WHERE payment_id = 'P1'");
    assert_eq!(amount[0]["a"], "1234.50");

    let second = ws.ok(&[
        "quarantine",
        "replay",
        "--table",
        "payments",
        "--sql-dir",
        &sql_arg,
    ]);
    assert!(
        second.contains("0 quarantined before, 0 now pass"),
        "{second}"
    );
    assert_eq!(ws.count("silver.payments"), 31, "replay is idempotent");
    let unknown = ws.run(&["quarantine", "replay", "--table", "nope"]);
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn schema_reports_dropped_and_renamed_required_columns_as_major_drift() {
    let ws = Workspace::new();
    ws.land(
        "risk_feed/batch_2024-11-15T08-00.csv",
        "account_id,risk_flag\nA1,1\n",
    );
    ws.land(
        "risk_feed/batch_2024-11-16T08-00.csv",
        "account_id,reporting_bank\nA1,B\n",
    );
    ws.land(
        "risk_feed/batch_2024-11-17T08-00.csv",
        "acct,risk_flag,source\nA1,2,x\n",
    );
    ws.land(
        "risk_feed/batch_2024-11-18T08-00.csv",
        "account_id,risk_flag,reporting_bank\nA2,0,B\n",
    );
    let metrics = ws.dir.path().join("paylake.prom");
    let landing = ws.landing();
    ws.ok(&[
        "bronze",
        "--metrics-file",
        metrics.to_str().unwrap(),
        "--landing",
        landing.to_str().unwrap(),
    ]);

    let schema = common::json(&ws.ok(&["--json", "schema"]));
    let risk = schema
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "risk_feed")
        .unwrap();
    assert_eq!(risk["contract_version"], "1.0.0");
    let drifts = risk["drifts"].as_array().unwrap();
    let by_file = |name: &str| {
        drifts
            .iter()
            .find(|d| d["file"].as_str().unwrap().contains(name))
            .unwrap_or_else(|| panic!("no drift for {name}: {drifts:?}"))
    };
    let dropped = by_file("2024-11-16");
    assert_eq!(dropped["change"], "major");
    assert_eq!(dropped["missing_columns"], serde_json::json!(["risk_flag"]));
    let renamed = by_file("2024-11-17");
    assert_eq!(renamed["change"], "major");
    assert_eq!(
        renamed["missing_columns"],
        serde_json::json!(["account_id"])
    );
    assert_eq!(
        renamed["added_columns"],
        serde_json::json!(["acct", "source"])
    );
    assert_eq!(by_file("2024-11-18")["change"], "minor");
    let screen = ws.ok(&["schema"]);
    assert!(
        screen.contains("major risk_feed/batch_2024-11-16T08-00.csv"),
        "{screen}"
    );

    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains("paylake_rows_dead_lettered{step=\"bronze\",table=\"bronze.risk_feed\"} 2"),
        "{text}"
    );
    assert!(text.contains("paylake_files_processed{step=\"bronze\",table=\"bronze.risk_feed\"} 4"));
    assert_promtool_accepts_metrics(&metrics);
}

#[test]
fn alert_rules_pass_promtool() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring/alerts.yml");
    let check = std::process::Command::new(promtool())
        .args(["check", "rules", rules.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

/// Payments of 2024-11-14 09:00 on accounts A1 → A2, the last `bad` of them with a broken amount.
fn early_batch(ws: &Workspace, rows: usize, bad: usize) {
    ws.land(
        "accounts/account_details_2024-11-14T06-00.csv",
        "account_id,opening_date\nA1,2020-01-01\nA2,2020-01-01\n",
    );
    let mut text = PAYMENT_HEADER.to_string();
    for i in 0..rows {
        let amount = if i >= rows - bad {
            "n/a".to_string()
        } else {
            format!("{}.00", i + 1)
        };
        text.push_str(&format!("E{i},A1,A2,R,{amount},2024-11-14 09:00:00\n"));
    }
    ws.land("payments/2024-11-14/payments_2024-11-14T09-15.csv", text);
}

#[test]
fn the_silver_gate_judges_the_lake_as_of_the_run_time() {
    let ws = Workspace::new();
    // At 12:00 on the 14th, 1 of 10 payments is quarantined: 10%, over the 5% limit, although
    // it is under 2% of everything landed later.
    early_batch(&ws, 10, 1);
    common::copy_tree(&common::sample_data(), &ws.landing());
    ws.bronze();
    let early = ws.run(&["--json", "silver", "--as-of", "2024-11-14T12:00:00Z"]);
    assert_eq!(
        early.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&early.stderr)
    );
    let summary = common::json(&String::from_utf8_lossy(&early.stdout));
    assert_eq!(rule(&summary, "payments_quarantine_rate")["evaluated"], 10);
    assert_eq!(rule(&summary, "payments_quarantine_rate")["failed"], 1);
    // Freshness is measured from the as-of time: the 09:00 payments are 3 hours old then.
    assert_eq!(rule(&summary, "fresh_payments")["passed"], true);
}

#[test]
fn an_audit_that_cannot_run_commits_nothing_and_gold_keeps_the_audited_silver() {
    let ws = Workspace::new();
    common::copy_tree(&common::sample_data(), &ws.landing());
    ws.bronze();
    ws.ok(&["silver"]);
    let silver_versions = ws.history("silver.payments").len();
    ws.land(
        "payments/2024-11-18/payments_2024-11-18T09-15.csv",
        common::payments(&["P9001,ACC101,ACC201,R,5.00,2024-11-18 09:00:00"]),
    );
    ws.bronze();
    let broken = ws.dir.path().join("broken-expectations");
    write(
        &broken.join("silver/payments.toml"),
        "table = \"silver.payments\"\n\n[[rules]]\nname = \"bad\"\nkind = \"custom_query\"\n\
         query = \"SELECT evaluated FROM no_such_table\"\nseverity = \"error\"\n",
    );
    let failed = ws.run(&["silver", "--expectations-dir", broken.to_str().unwrap()]);
    assert_eq!(
        failed.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    assert_eq!(
        ws.history("silver.payments").len(),
        silver_versions,
        "nothing unaudited is committed"
    );
    let gold = common::json(&ws.ok(&["--json", "gold"]));
    assert_eq!(
        gold["read_versions"]["silver.payments"],
        silver_versions as i64 - 1
    );
    assert_eq!(
        ws.count("gold.unified_payments"),
        46,
        "built from the audited Silver"
    );

    let mistyped = ws.run(&["silver", "--expectations-dir", "/no/such/folder"]);
    assert_eq!(mistyped.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&mistyped.stderr).contains("/no/such/folder/silver"));
}

#[test]
fn gold_expectations_stop_the_commit_and_readers_keep_the_previous_version() {
    let ws = Workspace::new();
    common::copy_tree(&common::sample_data(), &ws.landing());
    ws.bronze();
    ws.ok(&["silver"]);
    let gold = common::json(&ws.ok(&["--json", "gold"]));
    assert_eq!(gold["verdict"]["passed"], true, "{gold}");
    assert!(gold["results"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["rule"] == "one_row_per_silver_payment" && r["passed"] == true));
    let versions = ws.history("gold.unified_payments").len();

    let strict = ws.dir.path().join("strict");
    write(
        &strict.join("gold/unified_payments.toml"),
        "table = \"gold.unified_payments\"\n\n[[rules]]\nname = \"no_fraud_at_all\"\n\
         kind = \"custom\"\nexpression = \"NOT fraud_flag\"\nseverity = \"error\"\n",
    );
    let refused = ws.run(&["gold", "--expectations-dir", strict.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no_fraud_at_all"));
    assert_eq!(ws.history("gold.unified_payments").len(), versions);
    assert_eq!(ws.count("gold.unified_payments"), 46);
}

#[test]
fn a_metrics_file_that_cannot_be_written_is_refused_before_the_step_runs() {
    let ws = Workspace::new();
    let unwritable = ws.dir.path().join("no/such/dir/metrics.prom");
    let unwritable = unwritable.to_str().unwrap();
    ws.land(
        "payments/2024-11-15/payments_2024-11-15T09-15.csv",
        clean_payments(30),
    );
    ws.bronze();
    // Before: Silver ran and published, then the run exited 2 on the metrics file.
    for step in ["silver", "gold"] {
        let output = ws.run(&[step, "--metrics-file", unwritable]);
        assert_eq!(output.status.code(), Some(2), "{step}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("cannot write the metrics file") && stderr.contains("does not exist"),
            "{stderr}"
        );
    }
    let tables =
        ws.query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'silver'");
    let built: Vec<&str> = tables
        .iter()
        .filter_map(|t| t["table_name"].as_str())
        .collect();
    assert!(!built.contains(&"payments"), "silver ran: {built:?}");
    let folder = ws.dir.path().join("metrics-is-a-folder");
    std::fs::create_dir_all(&folder).unwrap();
    let output = ws.run(&["silver", "--metrics-file", folder.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn single_bad_rows_are_quarantined_by_named_rules_and_never_block_gold() {
    let ws = Workspace::new();
    let mut payments = clean_payments(100);
    // Before: this payment failed the error rule amount_positive (max 10,000,000) and Gold
    // exited 3; year 0001 was called not ISO 8601; control characters reached Gold.
    payments.push_str(
        "BIG1,A1,A2,R,10000000.01,2024-11-15 09:00:00
",
    );
    payments.push_str(
        "OLD1,A1,A2,R,5.00,0001-01-01 00:00:00
",
    );
    payments.push_str(
        "NUL\u{0}1,A1,A2,R,5.00,2024-11-15 09:01:00
",
    );
    payments.push_str(
        "CTL1,A1\u{7},A2,R,5.00,2024-11-15 09:02:00
",
    );
    ws.land(
        "payments/2024-11-15/payments_2024-11-15T09-15.csv",
        payments,
    );
    let mut accounts = String::from("account_id,opening_date\nA\u{1b}0,2020-01-01\n");
    for i in 1..=30 {
        accounts.push_str(&format!("A{i},2020-01-01\n"));
    }
    ws.land("accounts/snap_2024-11-15T06-00.csv", accounts);
    ws.bronze();
    ws.ok(&["silver"]);
    ws.ok(&["gold"]);
    let rules = |id: &str| -> Vec<String> {
        let rows = ws.query(&format!(
            "SELECT array_to_string(failed_rules, ',') AS rules \
             FROM silver.payments_quarantine WHERE payment_id LIKE '{id}%'"
        ));
        assert_eq!(rows.len(), 1, "{id}: {rows:?}");
        rows[0]["rules"]
            .as_str()
            .unwrap()
            .split(',')
            .map(str::to_string)
            .collect()
    };
    assert_eq!(rules("BIG1"), ["amount_at_most_10_million"]);
    assert_eq!(rules("OLD1"), ["timestamp_in_range"]);
    assert_eq!(rules("NUL"), ["payment_id_without_control_characters"]);
    assert_eq!(rules("CTL1"), ["src_account_id_without_control_characters"]);
    assert_eq!(ws.count("gold.unified_payments"), 100);
    let accounts = ws.query(
        "SELECT array_to_string(failed_rules, ',') AS rules FROM silver.accounts_quarantine",
    );
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(
        accounts[0]["rules"],
        "account_id_without_control_characters"
    );
}

#[test]
fn out_of_range_settings_are_usage_errors_not_panics() {
    let ws = Workspace::new();
    ws.land(
        "payments/2024-11-15/payments_2024-11-15T09-15.csv",
        clean_payments(30),
    );
    ws.land(
        "accounts/snap_2024-11-15T06-00.csv",
        "account_id,opening_date\nA1,2020-01-01\nA2,2020-01-01\n",
    );
    ws.bronze();
    ws.ok(&["silver"]);
    // Before: "DateTime - TimeDelta overflowed", exit 101.
    let output = ws.run(&["gold", "--label-maturity-days", "100000000"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("100000000") && !stderr.contains("panicked"),
        "{stderr}"
    );
    // Before: exit 1.
    let missing = ws.dir.path().join("no-such-sql");
    let output = ws.run(&["silver", "--sql-dir", missing.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no-such-sql"), "{stderr}");
}
