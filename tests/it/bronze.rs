//! Bronze end to end: exactly-once landing, dead-letters, schema drift, crash recovery.

use crate::common;

use common::{payments, source, Workspace};
use serde_json::Value;

#[test]
fn second_run_and_renamed_copy_land_nothing() {
    let ws = Workspace::new();
    let content = payments(&["P1,A1,A2,R1,10.00,2024-11-15 09:00:00"]);
    ws.land("payments/2024-11-15/batch_2024-11-15T09-15.csv", &content);
    let first = ws.bronze();
    assert_eq!(source(&first, "payments")["rows_landed"], 1);

    let second = ws.bronze();
    assert_eq!(source(&second, "payments")["rows_landed"], 0);
    assert_eq!(source(&second, "payments")["files_skipped"], 1);
    let text = ws.ok(&["bronze", "--landing", ws.landing().to_str().unwrap()]);
    assert!(text.contains("nothing new to land"), "{text}");

    ws.land("payments/2024-11-15/copy_of_batch.csv", &content);
    let third = ws.bronze();
    assert_eq!(source(&third, "payments")["rows_landed"], 0);
    let skipped: Vec<&Value> = third["files"].as_array().unwrap().iter().collect();
    assert_eq!(skipped.len(), 1, "only the new name is logged: {third}");
    assert_eq!(skipped[0]["outcome"], "skipped_duplicate");
    assert_eq!(
        skipped[0]["duplicate_of"],
        "payments/2024-11-15/batch_2024-11-15T09-15.csv"
    );
    assert_eq!(ws.count("bronze.payments"), 1);
}

#[test]
fn identical_files_in_one_run_land_once() {
    let ws = Workspace::new();
    let content = payments(&["P1,A1,A2,R1,10.00,2024-11-15 09:00:00"]);
    ws.land("payments/a.csv", &content);
    ws.land("payments/b.csv", &content);
    let summary = ws.bronze();
    assert_eq!(source(&summary, "payments")["rows_landed"], 1);
    assert_eq!(source(&summary, "payments")["files_skipped"], 1);
}

#[test]
fn missing_required_column_dead_letters_the_whole_file_and_others_go_on() {
    let ws = Workspace::new();
    ws.land(
        "payments/broken.csv",
        "payment_id,src_account_id,dest_account_id,amt,timestamp\nP1,A1,A2,5.00,2024-11-15 09:00:00\nP2,A1,A2,6.00,2024-11-15 09:01:00\n",
    );
    ws.land(
        "payments/good.csv",
        payments(&["P3,A1,A2,R,7.00,2024-11-15 09:02:00"]),
    );
    let summary = ws.bronze();
    let payments_summary = source(&summary, "payments");
    assert_eq!(payments_summary["files_rejected"], 1);
    assert_eq!(payments_summary["rows_landed"], 1);
    assert_eq!(payments_summary["rows_dead_lettered"], 2);

    let log = ws.query(
        "SELECT outcome, reason, lines_read, rows_landed, rows_dead_lettered, missing_columns, added_columns \
         FROM bronze._file_log WHERE source_file = 'payments/broken.csv'",
    );
    assert_eq!(log[0]["outcome"], "rejected");
    let reason = log[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("missing required column(s): amount"),
        "{reason}"
    );
    assert!(reason.contains("unexpected column(s): amt"), "{reason}");
    assert_eq!(log[0]["lines_read"], 2);
    assert_eq!(log[0]["rows_dead_lettered"], 2);
    assert_eq!(log[0]["missing_columns"], "amount");

    let dead = ws.query(
        "SELECT _source_line, is_header, raw_text FROM bronze._dead_letter \
         WHERE _source_file = 'payments/broken.csv' ORDER BY _source_line",
    );
    assert_eq!(dead.len(), 3, "header and both records are kept: {dead:?}");
    assert_eq!(dead[0]["is_header"], true);
    assert_eq!(dead[2]["raw_text"], "P2,A1,A2,6.00,2024-11-15 09:01:00\n");
    assert_lines_add_up(&ws);
}

#[test]
fn extra_column_is_rescued_and_recorded_as_schema_change() {
    let ws = Workspace::new();
    ws.land(
        "risk_feed/batch.csv",
        "Account_ID , RISK_FLAG,reporting_bank\nACC1,2,BANK-A\n",
    );
    let summary = ws.bronze();
    assert_eq!(source(&summary, "risk_feed")["schema_changes"], 1);
    let rows = ws
        .query("SELECT account_id, risk_flag, _rescued, _schema_fingerprint FROM bronze.risk_feed");
    assert_eq!(rows[0]["account_id"], "ACC1");
    assert_eq!(rows[0]["risk_flag"], "2");
    assert_eq!(rows[0]["_rescued"], r#"{"reporting_bank":"BANK-A"}"#);
    let log =
        ws.query("SELECT schema_change, added_columns, schema_fingerprint FROM bronze._file_log");
    assert_eq!(log[0]["schema_change"], true);
    assert_eq!(log[0]["added_columns"], "reporting_bank");
    assert_eq!(log[0]["schema_fingerprint"], rows[0]["_schema_fingerprint"]);
}

#[test]
fn malformed_lines_are_dead_lettered_with_line_number_and_raw_bytes() {
    let ws = Workspace::new();
    let mut content = payments(&[
        "P1,A1,A2,R1,10.00,2024-11-15 09:00:00",
        "P2,A1,A2,R2,11.00,2024-11-15 09:01:00,surplus",
    ]);
    content.push_str("P3,A1,A\u{0}2,R3,12.00,2024-11-15 09:02:00\n");
    let mut bytes = content.into_bytes();
    bytes.extend_from_slice(b"P4,A1,A2,R\xff4,13.00,2024-11-15 09:03:00\n");
    ws.land("payments/mixed.csv", &bytes);
    let summary = ws.bronze();
    assert_eq!(source(&summary, "payments")["lines_read"], 4);
    assert_eq!(source(&summary, "payments")["rows_landed"], 2);
    assert_eq!(source(&summary, "payments")["rows_dead_lettered"], 2);

    let dead = ws.query(
        "SELECT _source_file, _source_line, reason, raw_bytes FROM bronze._dead_letter ORDER BY _source_line",
    );
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0]["_source_file"], "payments/mixed.csv");
    assert_eq!(dead[0]["_source_line"], 3);
    assert!(dead[0]["reason"].as_str().unwrap().contains("found 7"));
    assert_eq!(dead[1]["_source_line"], 5);
    assert!(dead[1]["reason"]
        .as_str()
        .unwrap()
        .contains("invalid UTF-8 in column 4 ('payment_reference')"));
    // Binary columns come back hex-encoded: the invalid byte is kept as sent.
    let raw = dead[1]["raw_bytes"].as_str().unwrap();
    assert!(raw.contains("52ff34"), "raw bytes kept losslessly: {raw}");
    assert_lines_add_up(&ws);
}

#[test]
fn per_file_counts_add_up_on_the_sample() {
    let ws = Workspace::new();
    common::copy_tree(&common::sample_data(), &ws.landing());
    ws.bronze();
    let files = ws.query(
        "SELECT source_file, lines_read, rows_landed, rows_dead_lettered, blank_lines FROM bronze._file_log",
    );
    assert!(files.len() >= 10);
    for file in &files {
        let read = file["lines_read"].as_i64().unwrap();
        let landed = file["rows_landed"].as_i64().unwrap();
        let dead = file["rows_dead_lettered"].as_i64().unwrap();
        let blank = file["blank_lines"].as_i64().unwrap();
        assert_eq!(read, landed + dead + blank, "{file}");
        let name = file["source_file"].as_str().unwrap();
        // A workbook's rows name their sheet: `path#Sheet`.
        let of_file = format!("(_source_file = '{name}' OR starts_with(_source_file, '{name}#'))");
        let in_bronze = ws.query(&format!(
            "SELECT (SELECT count(*) FROM bronze.payments WHERE {of_file}) + \
                    (SELECT count(*) FROM bronze.accounts WHERE {of_file}) + \
                    (SELECT count(*) FROM bronze.risk_feed WHERE {of_file}) + \
                    (SELECT count(*) FROM bronze.fraud_labels WHERE {of_file}) AS n"
        ));
        assert_eq!(in_bronze[0]["n"].as_i64().unwrap(), landed, "{name}");
        let dead_rows = ws.count(&format!(
            "bronze._dead_letter WHERE {of_file} AND NOT is_header"
        ));
        assert_eq!(dead_rows, dead, "{name}");
    }
}

#[test]
fn run_killed_mid_file_and_rerun_leaves_exactly_one_copy() {
    let ws = Workspace::new();
    ws.land(
        "payments/a_first.csv",
        payments(&["P0,A1,A2,R,1.00,2024-11-15 08:00:00"]),
    );
    let rows: Vec<String> = (1..=50)
        .map(|i| format!("P{i},A1,A2,R,{i}.00,2024-11-15 09:{:02}:00", i % 60))
        .collect();
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    ws.land("payments/b_big.csv", payments(&refs));

    // Abort once 21 rows were buffered: the first file is done, the second is mid-way.
    let landing = ws.landing();
    let crashed = ws.run_with_env(
        &[
            "bronze",
            "--landing",
            landing.to_str().unwrap(),
            "--batch-rows",
            "10",
        ],
        &[("PAYLAKE_ABORT_AFTER_ROWS", "21")],
    );
    assert!(!crashed.status.success(), "the run was meant to die");
    // Files are committed in groups: nothing of the group the crash hit is visible.
    assert_eq!(ws.count("bronze.payments"), 0, "no partial file is visible");

    let summary = ws.bronze();
    assert_eq!(source(&summary, "payments")["rows_landed"], 51);
    assert_eq!(ws.count("bronze.payments"), 51);
    assert_eq!(
        ws.count("(SELECT DISTINCT payment_id FROM bronze.payments)"),
        51,
        "no row twice"
    );
    assert_eq!(ws.bronze()["files"].as_array().unwrap().len(), 0);
}

#[test]
fn flat_layout_and_json_lines_labels_route_to_their_sources() {
    let ws = Workspace::new();
    ws.land(
        "payment_transactions.csv",
        payments(&["P1,A1,A2,R,1.00,2024-11-15 08:00:00"]),
    );
    ws.land(
        "account_details.csv",
        "account_id,opening_date\nA1,2020-01-01\n",
    );
    ws.land("external_risk_feed.csv", "account_id,risk_flag\nA1,1\n");
    ws.land(
        "historical_fraud_cases_api.jsonl",
        "{\"payment_id\":\"P1\",\"fraud_type\":\"mule\",\"fraud_reported_date\":\"2025-01-01\"}\n",
    );
    ws.land("notes.txt", "not a feed\n");
    let summary = ws.bronze();
    for name in ["payments", "accounts", "risk_feed", "fraud_labels"] {
        assert_eq!(source(&summary, name)["rows_landed"], 1, "{name}");
    }
    let unrouted = source(&summary, "(unrouted)");
    assert_eq!(unrouted["files_rejected"], 1);
    let dead = ws
        .query("SELECT reason, raw_text FROM bronze._dead_letter WHERE _source_file = 'notes.txt'");
    assert!(dead[0]["reason"]
        .as_str()
        .unwrap()
        .contains("matches no source"));
    assert_eq!(dead[0]["raw_text"], "not a feed\n");
    assert_lines_add_up(&ws);
}

#[test]
fn knowledge_time_comes_from_the_path_or_the_run() {
    let ws = Workspace::new();
    ws.land(
        "risk_feed/2024-11-15/batch_2024-11-16T07-05.csv",
        "account_id,risk_flag\nA1,1\n",
    );
    ws.land("risk_feed/undated.csv", "account_id,risk_flag\nA2,1\n");
    let summary = ws.bronze();
    let ingested = summary["ingested_at"].as_str().unwrap().to_string();
    let rows = ws.query(
        "SELECT account_id, CAST(_known_at AS VARCHAR) AS known, CAST(_ingested_at AS VARCHAR) AS ingested \
         FROM bronze.risk_feed ORDER BY account_id",
    );
    assert_eq!(rows[0]["known"], "2024-11-16T07:05:00Z");
    assert_eq!(rows[1]["known"], rows[1]["ingested"]);
    assert!(ingested.starts_with(&rows[1]["ingested"].as_str().unwrap()[..19]));
}

#[test]
fn usage_errors_exit_2() {
    let ws = Workspace::new();
    let missing = ws.run(&["bronze", "--landing", "/definitely/not/here"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/definitely/not/here"));
    let unknown = ws.run(&["bronze", "--no-such-flag"]);
    assert_eq!(unknown.status.code(), Some(2));
    let not_built = ws.run(&["export", "gold.unified_payments", "--output", "x.csv"]);
    assert_eq!(not_built.status.code(), Some(2));
}

#[test]
fn a_file_unrouted_under_one_landing_root_still_lands_from_the_right_one() {
    let ws = Workspace::new();
    common::copy_tree(&common::sample_data(), &ws.landing());
    // Pointed one folder too deep: the file names alone route nowhere.
    let too_deep = ws.landing().join("payments/2024-11-17");
    let first =
        common::json(&ws.ok(&["--json", "bronze", "--landing", too_deep.to_str().unwrap()]));
    let files = first["files"].as_array().unwrap();
    assert!(!files.is_empty());
    assert!(files.iter().all(|f| f["outcome"] == "rejected"), "{first}");

    let second = ws.bronze();
    assert_eq!(source(&second, "payments")["files_skipped"], 0, "{second}");
    assert_eq!(ws.count("bronze.payments"), 49, "all sample payments land");
    let third = ws.bronze();
    assert_eq!(source(&third, "payments")["rows_landed"], 0);
    assert_eq!(ws.count("bronze.payments"), 49);
}

#[test]
fn run_killed_between_the_rows_commit_and_the_file_log_adds_nothing_twice() {
    let ws = Workspace::new();
    ws.land(
        "payments/2024-11-15/batch_2024-11-15T09-15.csv",
        payments(&[
            "P1,A1,A2,R,1.00,2024-11-15 09:00:00",
            "P2,A1,A2,R,2.00,2024-11-15 09:01:00",
        ]),
    );
    let landing = ws.landing();
    let crashed = ws.run_with_env(
        &["bronze", "--landing", landing.to_str().unwrap()],
        &[("PAYLAKE_ABORT_BEFORE_FILE_LOG", "1")],
    );
    assert!(!crashed.status.success(), "the run was meant to die");
    assert_eq!(ws.count("bronze.payments"), 2, "the rows were committed");
    assert_eq!(ws.count("bronze._file_log"), 0, "but not logged");

    // The re-run processes the file again; the Delta transaction id keeps its rows single.
    let summary = ws.bronze();
    assert_eq!(summary["files"].as_array().unwrap().len(), 1);
    assert_eq!(ws.count("bronze.payments"), 2, "no row twice");
    assert_eq!(ws.count("bronze._file_log"), 1);
    assert_eq!(ws.bronze()["files"].as_array().unwrap().len(), 0);
}

/// Every line of every file in the log is a landed row, a dead-lettered line or a blank line.
fn assert_lines_add_up(ws: &Workspace) {
    for file in ws.query(
        "SELECT source_file, lines_read, rows_landed, rows_dead_lettered, blank_lines FROM bronze._file_log",
    ) {
        let n = |k: &str| file[k].as_i64().unwrap_or_else(|| panic!("{k} in {file}"));
        assert_eq!(
            n("lines_read"),
            n("rows_landed") + n("rows_dead_lettered") + n("blank_lines"),
            "{file}"
        );
    }
}

#[test]
fn an_unclosed_quote_dead_letters_one_line_and_the_good_lines_after_it_land() {
    let ws = Workspace::new();
    ws.land(
        "payments/open_quote.csv",
        payments(&[
            "PAY5042,ACC101,ACC201,\"REF open,10.00,2024-11-18 10:00:00",
            "PAY5043,ACC101,ACC201,R1,11.00,2024-11-18 10:01:00",
            "PAY5044,ACC101,ACC201,R2,12.00,2024-11-18 10:02:00",
            "PAY5045,ACC101,ACC201,R3,13.00,2024-11-18 10:03:00",
            "PAY5046,ACC101,ACC201,R4,14.00,2024-11-18 10:04:00",
            "PAY5047,ACC101,ACC201,R5,15.00,2024-11-18 10:05:00",
        ]),
    );
    ws.bronze();
    let log = ws.query(
        "SELECT lines_read, rows_landed, rows_dead_lettered, blank_lines FROM bronze._file_log",
    );
    assert_eq!(log[0]["lines_read"], 6, "{log:?}");
    assert_eq!(log[0]["rows_landed"], 5, "{log:?}");
    assert_eq!(log[0]["rows_dead_lettered"], 1, "{log:?}");
    let dead = ws.query("SELECT _source_line, reason, raw_text FROM bronze._dead_letter");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["_source_line"], 2);
    let reason = dead[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("unclosed quote starting at line 2, column 23"),
        "{reason}"
    );
    assert_eq!(
        dead[0]["raw_text"],
        "PAY5042,ACC101,ACC201,\"REF open,10.00,2024-11-18 10:00:00\n"
    );
    assert_eq!(ws.count("bronze.payments"), 5);
}

#[test]
fn blank_lines_are_counted_in_the_file_log() {
    let ws = Workspace::new();
    ws.land(
        "payments/blanks.csv",
        format!(
            "{}\r\nP1,A1,A2,R,1.00,2024-11-15 09:00:00\r\n\r\n   \nP2,A1,A2,R,2.00,2024-11-15 09:01:00\n\n",
            common::PAYMENT_HEADER.trim_end()
        ),
    );
    ws.land(
        "fraud_labels/labels.jsonl",
        "\n{\"payment_id\":\"P1\",\"fraud_type\":\"mule\",\"fraud_reported_date\":\"2025-01-01\"}\n\n",
    );
    let summary = ws.bronze();
    assert_eq!(source(&summary, "payments")["blank_lines"], 3, "{summary}");
    assert_eq!(source(&summary, "payments")["lines_read"], 5, "{summary}");
    let log = ws.query(
        "SELECT source_file, lines_read, rows_landed, blank_lines FROM bronze._file_log ORDER BY source_file",
    );
    assert_eq!(log[0]["source_file"], "fraud_labels/labels.jsonl");
    assert_eq!(log[0]["blank_lines"], 2);
    assert_eq!(log[0]["lines_read"], 3);
    assert_eq!(log[1]["blank_lines"], 3);
    assert_eq!(log[1]["rows_landed"], 2);
    assert_lines_add_up(&ws);
}

#[test]
fn a_50_mb_line_is_capped_in_logs_and_kept_as_a_pointer_in_the_dead_letter() {
    let ws = Workspace::new();
    let huge = 50 * 1024 * 1024;
    let mut header_only = vec![b'x'; huge];
    header_only[..8].copy_from_slice(b"payment,");
    ws.land("payments/one_line.csv", &header_only);
    drop(header_only);
    let mut body = common::PAYMENT_HEADER.as_bytes().to_vec();
    body.extend_from_slice(b"P1,A1,A2,R,1.00,2024-11-15 09:00:00\n");
    let start = body.len();
    body.resize(start + huge, b'y');
    ws.land("payments/long_row.csv", &body);
    drop(body);

    let landing = ws.landing();
    let output = ws.run(&["bronze", "--landing", landing.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    assert!(
        output.stderr.len() < 16 * 1024,
        "stderr is capped: {} bytes",
        output.stderr.len()
    );
    let log = ws.query(
        "SELECT source_file, outcome, length(reason) AS reason_len, reason, \
         coalesce(length(added_columns), 0) AS added_len FROM bronze._file_log ORDER BY source_file",
    );
    for entry in &log {
        assert!(entry["reason_len"].as_i64().unwrap() <= 4096, "{entry}");
        assert!(entry["added_len"].as_i64().unwrap() <= 4096, "{entry}");
    }
    assert_eq!(log[1]["source_file"], "payments/one_line.csv");
    assert_eq!(log[1]["outcome"], "rejected");
    let dead = ws.query(
        "SELECT _source_file, _source_line, reason, raw_bytes, \
         length(raw_text) AS text_len FROM bronze._dead_letter ORDER BY _source_file",
    );
    assert_eq!(dead.len(), 2, "{dead:?}");
    for row in &dead {
        // Hex-encoded: the first KiB of each line is kept.
        assert_eq!(
            row["raw_bytes"].as_str().unwrap().len(),
            2 * 1024,
            "{}",
            row["reason"]
        );
        assert!(
            row["text_len"].as_i64().unwrap() <= 1024,
            "{}",
            row["reason"]
        );
    }
    let reason = dead[0]["reason"].as_str().unwrap();
    assert_eq!(dead[0]["_source_line"], 3);
    assert!(
        reason.contains(&format!("bytes {start}..{}", start + huge)),
        "{reason}"
    );
    assert_eq!(ws.count("bronze.payments"), 1);
    let schema = ws.ok(&["schema"]);
    assert!(
        schema.len() < 64 * 1024,
        "schema prints {} bytes",
        schema.len()
    );
    assert_lines_add_up(&ws);
}

#[cfg(unix)]
#[test]
fn symlinks_special_files_and_hidden_names_are_followed_or_refused_and_logged() {
    use std::os::unix::fs::symlink;
    use std::time::{Duration, Instant};

    let ws = Workspace::new();
    let landing = ws.landing();
    let row = |id: &str| payments(&[&format!("{id},A1,A2,R,1.00,2024-11-15 09:00:00")]);
    ws.land("payments/a_target.csv", row("P1"));
    // Inside the landing folder: followed (same content: a duplicate of its target).
    symlink("a_target.csv", landing.join("payments/b_link.csv")).unwrap();
    // A folder symlink inside the root: its files land under the link's name.
    ws.land("staging/batch/c.csv", row("P2"));
    symlink("../staging/batch", landing.join("payments/c_dir")).unwrap();
    // Leaving the root: refused.
    let outside = ws.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.csv"), row("P3")).unwrap();
    symlink(
        outside.join("secret.csv"),
        landing.join("payments/d_out.csv"),
    )
    .unwrap();
    symlink(&outside, landing.join("payments/e_out_dir")).unwrap();
    // Dangling, a loop, a folder loop.
    symlink("nowhere.csv", landing.join("payments/f_dangling.csv")).unwrap();
    symlink("g_loop.csv", landing.join("payments/g_loop.csv")).unwrap();
    symlink("..", landing.join("payments/h_up")).unwrap();
    // A FIFO and a socket: never opened.
    let fifo = landing.join("payments/i_pipe.csv");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let _socket =
        std::os::unix::net::UnixListener::bind(landing.join("payments/j_socket.csv")).unwrap();
    // Hidden names.
    ws.land("payments/..evil.csv", row("P4"));
    ws.land("payments/.hidden.csv", row("P5"));
    ws.land(".DS_Store", "\0\0\0\x01Bud1");
    ws.land("payments/.git/objects/x.csv", row("P6"));

    // Run with a deadline: opening the FIFO would block for ever.
    let run = || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_paylake"))
            .args([
                "--lake",
                ws.lake().to_str().unwrap(),
                "--json",
                "bronze",
                "--landing",
            ])
            .arg(&landing)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("bronze hung (it opened the FIFO?)");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        common::json(&String::from_utf8(output.stdout).unwrap())
    };
    let first = run();
    let log =
        ws.query("SELECT source_file, outcome, reason FROM bronze._file_log ORDER BY source_file");
    let outcome = |name: &str| {
        log.iter()
            .find(|e| e["source_file"] == name)
            .unwrap_or_else(|| panic!("{name} is not in the file log: {log:?}"))
            .clone()
    };
    assert_eq!(outcome("payments/a_target.csv")["outcome"], "landed");
    assert_eq!(
        outcome("payments/b_link.csv")["outcome"],
        "skipped_duplicate"
    );
    assert_eq!(outcome("payments/c_dir/c.csv")["outcome"], "landed");
    let refused = [
        ("payments/d_out.csv", "leaves the landing folder"),
        ("payments/e_out_dir", "leaves the landing folder"),
        ("payments/f_dangling.csv", "dangling symlink"),
        ("payments/g_loop.csv", "symlink loop"),
        ("payments/h_up", "symlink loop"),
        ("payments/i_pipe.csv", "FIFO"),
        ("payments/j_socket.csv", "socket"),
        ("payments/..evil.csv", "hidden file"),
        ("payments/.hidden.csv", "hidden file"),
        ("payments/.git", "hidden folder"),
        (".DS_Store", "hidden file"),
    ];
    for (name, why) in refused {
        let entry = outcome(name);
        assert_eq!(entry["outcome"], "refused", "{entry}");
        let reason = entry["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{name}: {reason}");
    }
    assert_eq!(source(&first, "payments")["files_refused"], 10, "{first}");
    assert_eq!(source(&first, "(unrouted)")["files_refused"], 1, "{first}");
    let rows = ws.query("SELECT payment_id FROM bronze.payments ORDER BY payment_id");
    assert_eq!(rows.len(), 2, "only P1 and P2 land: {rows:?}");

    // A second run refuses them again but does not log them again.
    let entries = ws.count("bronze._file_log");
    let second = run();
    assert_eq!(ws.count("bronze._file_log"), entries, "no re-logging");
    assert_eq!(source(&second, "payments")["files_refused"], 10, "{second}");
    // A dangling link whose target appears lands on the next run.
    std::fs::write(landing.join("payments/nowhere.csv"), row("P7")).unwrap();
    run();
    assert_eq!(
        ws.count(
            "bronze._file_log WHERE source_file = 'payments/f_dangling.csv' AND outcome = 'landed'"
        ) + ws.count(
            "bronze._file_log WHERE source_file = 'payments/nowhere.csv' AND outcome = 'landed'"
        ),
        1
    );
    assert_eq!(ws.count("bronze.payments WHERE payment_id = 'P7'"), 1);
}

#[test]
fn two_bronze_runs_at_once_keep_one_file_log_entry_per_file() {
    let ws = Workspace::new();
    land_tiny_payment_files(&ws, FILES_IN_TWO_COMMIT_GROUPS);
    let landing = ws.landing();
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_paylake"))
            .args(["--lake", ws.lake().to_str().unwrap(), "bronze", "--landing"])
            .arg(&landing)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for output in [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        match output.status.code() {
            Some(0) => {}
            // The other run holds the writer lease: a clear refusal naming it.
            Some(1) => assert!(stderr.contains("is being written by run"), "{stderr}"),
            other => panic!("exit {other:?}: {stderr}"),
        }
    }
    // Whatever happened, a further run completes the landing.
    ws.bronze();
    let files = FILES_IN_TWO_COMMIT_GROUPS as i64;
    assert_eq!(ws.count("bronze._file_log"), files);
    assert_eq!(
        ws.count("(SELECT DISTINCT source_file, file_sha256 FROM bronze._file_log)"),
        files
    );
    assert_eq!(ws.count("bronze.payments"), files);
    assert_eq!(
        ws.count("(SELECT DISTINCT payment_id FROM bronze.payments)"),
        files
    );
    assert_lines_add_up(&ws);
}

#[test]
fn a_run_of_many_files_builds_each_commit_on_the_one_before() {
    // Two commit groups: the second must be built on the first one's version. Built on the
    // version read at the start instead, every later commit had Delta check it against all the
    // commits since, which made a run of thousands of micro-batches slow down with every group.
    let ws = Workspace::new();
    land_tiny_payment_files(&ws, FILES_IN_TWO_COMMIT_GROUPS);
    // delta-rs warns of each commit it checks against later ones.
    let output = ws.run_with_env(
        &["bronze", "--landing", ws.landing().to_str().unwrap()],
        &[("PAYLAKE_LOG", "warn")],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        !stderr.contains("checking for conflicts"),
        "a commit was built on a stale version: {stderr}"
    );
    assert_eq!(
        ws.count("bronze.payments"),
        FILES_IN_TWO_COMMIT_GROUPS as i64
    );
    assert_lines_add_up(&ws);
}

/// Tiny landing files enough for two of Bronze's commit groups (of at most 1,024 files).
const FILES_IN_TWO_COMMIT_GROUPS: usize = 1100;

/// Lands `count` payment files of one payment each, `P0` to `P<count - 1>`.
fn land_tiny_payment_files(ws: &Workspace, count: usize) {
    for i in 0..count {
        ws.land(
            &format!("payments/2024-11-15/p_{i:04}.csv"),
            payments(&[&format!("P{i},A1,A2,R,{i}.00,2024-11-15 09:00:00")]),
        );
    }
}
