//! `paylake sql` as a shell (issue 10, item 2): statements from stdin and `-f FILE`, several
//! per input, output formats and files, `--max-rows`, helper commands, "did you mean", a
//! closed pipe, and what `--allow-writes` allows and still refuses. The interactive shell on a
//! pseudo-terminal is tested by tests/repl (pytest).

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::Workspace;
use serde_json::Value;

/// A lake with nothing landed: Bronze over an empty landing folder (read-only commands never
/// create a lake).
fn empty_lake() -> Workspace {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.landing()).expect("landing folder");
    ws.bronze();
    ws
}

fn gold_lake() -> Workspace {
    let ws = Workspace::new();
    common::copy_tree(&common::sample_data(), &ws.landing());
    ws.bronze();
    ws.silver();
    ws.gold();
    ws
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn paylake(ws: &Workspace, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_paylake"));
    command.arg("--lake").arg(ws.lake()).args(args);
    command
}

/// Runs `paylake sql ARGS` with `input` on its stdin (a pipe, not a terminal).
fn with_stdin(ws: &Workspace, args: &[&str], input: &str) -> Output {
    let mut child = paylake(ws, &[&["sql"], args].concat())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("paylake starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("stdin written");
    child.wait_with_output().expect("paylake ends")
}

fn succeeded(output: &Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

const TWO_ROWS: &str =
    "SELECT * FROM (VALUES (1, 'a', 2.5), (2, NULL, 3.0)) AS t(id, name, score) ORDER BY id";

#[test]
fn every_output_format_writes_the_same_rows() {
    let ws = empty_lake();
    let run = |format: &str| succeeded(&ws.run(&["sql", "--format", format, TWO_ROWS]));

    let table = run("table");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[1].contains("id") && lines[1].contains("name"),
        "{table}"
    );
    assert!(table.contains("| NULL "), "NULL is spelled out: {table}");
    assert!(table.contains("2.5"), "{table}");

    assert_eq!(run("csv"), "id,name,score\n1,a,2.5\n2,,3.0\n");

    let json: Value = serde_json::from_str(&run("json")).unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            {"id": 1, "name": "a", "score": 2.5},
            {"id": 2, "name": null, "score": 3.0}
        ])
    );
    // --json (the global flag) is the json format.
    let global: Value =
        serde_json::from_str(&succeeded(&ws.run(&["--json", "sql", TWO_ROWS]))).unwrap();
    assert_eq!(global, json);

    let ndjson = run("ndjson");
    let rows: Vec<Value> = ndjson
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(Value::Array(rows), json);

    // No rows: a table with its header, a CSV header, an empty array, nothing.
    let none = "SELECT 1 AS id WHERE false";
    assert!(succeeded(&ws.run(&["sql", none])).contains("id"));
    assert_eq!(
        succeeded(&ws.run(&["sql", "--format", "csv", none])),
        "id\n"
    );
    assert_eq!(
        succeeded(&ws.run(&["sql", "--format", "json", none])),
        "[]\n"
    );
    assert_eq!(succeeded(&ws.run(&["sql", "--format", "ndjson", none])), "");

    // Parquet only goes to a file.
    let refused = ws.run(&["sql", "--format", "parquet", TWO_ROWS]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("--output"),
        "{}",
        stderr(&refused)
    );
    let bad = ws.run(&["sql", "--format", "xml", TWO_ROWS]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn output_files_take_their_format_from_the_extension() {
    let ws = gold_lake();
    let dir = ws.dir.path();
    let csv = dir.join("fraud.csv");
    let query = "SELECT payment_id, amount FROM gold.unified_payments ORDER BY payment_id";
    succeeded(&ws.run(&["sql", "--output", csv.to_str().unwrap(), query]));
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("payment_id,amount\n"), "{text}");
    assert_eq!(text.lines().count(), 47, "header and 46 payments");

    let parquet = dir.join("fraud.parquet");
    succeeded(&ws.run(&["sql", "-o", parquet.to_str().unwrap(), query]));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rows = runtime.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.read_parquet(
            parquet.to_str().unwrap(),
            datafusion::prelude::ParquetReadOptions::default(),
        )
        .await
        .unwrap()
        .count()
        .await
        .unwrap()
    });
    assert_eq!(rows, 46);

    // Two results of different columns do not make one Parquet file; nothing is left behind.
    let mixed = dir.join("mixed.parquet");
    let refused = ws.run(&[
        "sql",
        "-o",
        mixed.to_str().unwrap(),
        "SELECT 1 AS a; SELECT 'x' AS b",
    ]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(!mixed.exists());
    // Output files stay out of the lake, like exports.
    let inside = ws.lake().join("out.csv");
    let refused = ws.run(&["sql", "-o", inside.to_str().unwrap(), "SELECT 1"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(!inside.exists());
}

#[test]
fn max_rows_cuts_the_table_and_says_how_many_are_left() {
    let ws = empty_lake();
    let query = "SELECT value FROM generate_series(1, 25) ORDER BY value";
    let cut = succeeded(&ws.run(&["sql", "--max-rows", "10", query]));
    assert!(cut.contains(" 10 |"), "{cut}");
    assert!(!cut.contains(" 11 |"), "{cut}");
    assert!(
        cut.contains("(15 more rows; --max-rows 25 shows them)"),
        "{cut}"
    );
    let all = succeeded(&ws.run(&["sql", query]));
    assert!(all.contains(" 25 |") && !all.contains("more rows"), "{all}");
    // Other formats are never cut.
    let csv = succeeded(&ws.run(&["sql", "--max-rows", "10", "--format", "csv", query]));
    assert_eq!(csv.lines().count(), 26);
}

#[test]
fn a_file_runs_its_statements_and_commands_in_order() {
    let ws = gold_lake();
    let script = ws.dir.path().join("checks.sql");
    std::fs::write(
        &script,
        "-- the lake at a glance\n\
         .tables\n\
         SELECT count(*) AS payments\n  FROM gold.unified_payments;\n\
         \\d gold.unified_payments\n\
         SELECT 'first' AS a; SELECT 'second' AS b;\n\
         SELECT 'last' AS c\n",
    )
    .unwrap();
    let out = succeeded(&ws.run(&["sql", "-f", script.to_str().unwrap(), "--format", "ndjson"]));
    let rows: Vec<Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let position = |wanted: &Value| rows.iter().position(|row| row == wanted);
    let tables = position(&serde_json::json!({
        "table_name": "gold.unified_payments", "table_type": "BASE TABLE"
    }))
    .expect(".tables lists gold.unified_payments");
    let count = position(&serde_json::json!({"payments": 46})).expect("the count");
    let column = rows
        .iter()
        .position(|row| row["column_name"] == "payment_id")
        .expect("\\d lists the columns");
    let first = position(&serde_json::json!({"a": "first"})).unwrap();
    let second = position(&serde_json::json!({"b": "second"})).unwrap();
    let last = position(&serde_json::json!({"c": "last"})).unwrap();
    assert!(tables < count && count < column && column < first && first < second && second < last);

    // The first failing statement stops the file, named with its line.
    std::fs::write(
        &script,
        "SELECT 1 AS ok;\n\nSELECT *\nFROM gold.nope;\nSELECT 2 AS never;\n",
    )
    .unwrap();
    let failed = ws.run(&["sql", "-f", script.to_str().unwrap()]);
    assert_eq!(failed.status.code(), Some(2), "{}", stderr(&failed));
    assert!(
        stderr(&failed).contains(&format!("{}:3", script.display())),
        "{}",
        stderr(&failed)
    );
    assert!(stdout(&failed).contains("ok") && !stdout(&failed).contains("never"));
    let missing = ws.run(&["sql", "-f", "no/such.sql"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("no/such.sql"));
}

#[test]
fn piped_stdin_is_read_like_a_file() {
    let ws = gold_lake();
    let out = succeeded(&with_stdin(
        &ws,
        &["--format", "csv"],
        "SELECT count(*) AS n\nFROM gold.unified_payments;\n\n.tables\nSELECT 'end' AS done",
    ));
    assert!(out.starts_with("n\n46\n"), "{out}");
    assert!(out.contains("gold.unified_payments,BASE TABLE"), "{out}");
    assert!(out.ends_with("done\nend\n"), "{out}");
    // An unknown helper command is a usage error listing the commands.
    let unknown = with_stdin(&ws, &[], ".tabels\n");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains(".tables"), "{}", stderr(&unknown));
}

#[test]
fn unknown_tables_and_columns_get_a_suggestion() {
    let ws = gold_lake();
    for (query, hint) in [
        (
            "SELECT * FROM gold.unified_payment",
            "did you mean gold.unified_payments?",
        ),
        (
            "SELECT count(*) FROM unified_paymnts",
            "did you mean gold.unified_payments?",
        ),
        (
            "SELECT * FROM sliver.payments",
            "did you mean silver.payments?",
        ),
        (
            "SELECT amout FROM gold.unified_payments",
            "Did you mean 'gold.unified_payments.amount'?",
        ),
    ] {
        let output = ws.run(&["sql", query]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{query}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(hint),
            "{query}: {}",
            stderr(&output)
        );
    }
    let far = ws.run(&["sql", "SELECT * FROM gold.customers"]);
    assert!(stderr(&far).contains(".tables"), "{}", stderr(&far));
}

/// A reader that stops after the first line must not turn into a panic or an error.
#[test]
fn a_closed_pipe_ends_the_shell_quietly() {
    let ws = empty_lake();
    for format in ["table", "csv", "ndjson"] {
        let mut child = paylake(
            &ws,
            &[
                "sql",
                "--format",
                format,
                "SELECT value, repeat('x', 50) AS pad FROM generate_series(1, 200000)",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty());
        // stdout is closed here, like `| head -1`.
        let output = child.wait_with_output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{format}: {}",
            stderr(&output)
        );
        assert_eq!(stderr(&output), "", "{format}");
    }
}

/// Every file below `dir` with its size.
fn snapshot(dir: &Path) -> Vec<(String, u64)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let entry = entry.unwrap();
            if entry.metadata().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                files.push((
                    entry.path().display().to_string(),
                    entry.metadata().unwrap().len(),
                ));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn allow_writes_permits_session_objects_and_copies_outside_the_lake_only() {
    let ws = gold_lake();
    let before = snapshot(&ws.lake());
    let copied = ws.dir.path().join("fraud-copy.csv");
    let script = format!(
        "CREATE VIEW fraud AS SELECT payment_id FROM gold.unified_payments WHERE fraud_flag;\n\
         CREATE TABLE ids AS SELECT payment_id FROM fraud;\n\
         CREATE EXTERNAL TABLE accounts_raw STORED AS CSV LOCATION '{}' \
           OPTIONS ('format.has_header' 'true');\n\
         SET datafusion.execution.batch_size = 1024;\n\
         COPY (SELECT * FROM ids) TO '{}' STORED AS CSV;\n\
         SELECT count(*) AS n FROM ids;\n\
         SELECT count(*) > 0 AS some FROM accounts_raw;\n\
         DROP VIEW fraud;",
        ws.landing().join("accounts").display(),
        copied.display()
    );
    let out = succeeded(&with_stdin(
        &ws,
        &["--allow-writes", "--format", "ndjson"],
        &script,
    ));
    let fraud = ws.count("gold.unified_payments WHERE fraud_flag");
    assert!(out.contains(&format!("{{\"n\":{fraud}}}")), "{out}");
    assert!(out.contains("{\"some\":true}"), "{out}");
    assert!(copied.exists(), "COPY wrote {}", copied.display());

    // Still refused with --allow-writes: the lake's tables, schemas and folder.
    let inside = ws.lake().join("gold").join("copy.csv");
    for (sql, named) in [
        ("CREATE TABLE gold.forged AS SELECT 1 AS x", "gold.forged"),
        ("CREATE VIEW silver.v AS SELECT 1 AS x", "silver.v"),
        ("DROP TABLE gold.unified_payments", "gold.unified_payments"),
        (
            "INSERT INTO gold.unified_payments (payment_id) VALUES ('PAY_FORGED')",
            "INSERT",
        ),
        ("DELETE FROM gold.unified_payments", "DELETE"),
        ("CREATE SCHEMA extra", "CREATE SCHEMA"),
        (
            &format!(
                "COPY (SELECT 1 AS x) TO '{}' STORED AS CSV",
                inside.display()
            ),
            "inside the lake",
        ),
        (
            &format!(
                "COPY (SELECT 1 AS x) TO '{}/../lake/gold/x.csv' STORED AS CSV",
                ws.dir.path().display()
            ),
            "'..'",
        ),
    ] {
        let output = ws.run(&["sql", "--allow-writes", sql]);
        assert_eq!(output.status.code(), Some(2), "{sql}: {}", stderr(&output));
        let message = stderr(&output);
        assert!(
            message.contains(named) && message.contains("--allow-writes allows only"),
            "{sql}: {message}"
        );
    }
    // Without the flag, a COPY is refused, saying what the flag would allow.
    let refused = ws.run(&[
        "sql",
        &format!("COPY (SELECT 1 AS x) TO '{}'", copied.display()),
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("--allow-writes"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(snapshot(&ws.lake()), before, "the lake changed");
}
