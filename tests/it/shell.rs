//! The SQL shell and export cannot change or escape the lake (issue 13, items 7–9): `paylake
//! sql` runs only queries, under a timeout and the engine's memory limit; `paylake export`
//! writes only regular files outside the lake, through a temporary file.

use crate::common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::Workspace;

/// A lake with Bronze landed from the sample (enough for the shell's tests).
fn bronze_lake() -> Workspace {
    let ws = Workspace::new();
    common::copy_tree(&common::sample_data(), &ws.landing());
    ws.bronze();
    ws
}

/// A lake with Bronze, Silver and Gold built from the sample.
fn gold_lake() -> Workspace {
    let ws = bronze_lake();
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

/// Every file below `dir` with its size: what a refused statement must leave as it was.
fn snapshot(dir: &Path) -> Vec<(String, u64)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                files.push((entry.path().display().to_string(), meta.len()));
            }
        }
    }
    files.sort();
    files
}

fn assert_refused(ws: &Workspace, sql: &str, kind: &str) {
    let output = ws.run(&["sql", sql]);
    let message = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{sql}: expected exit 2\nstdout:\n{}\nstderr:\n{message}",
        stdout(&output)
    );
    assert!(
        message.contains(kind) && message.contains("read-only"),
        "{sql}: the error should name {kind} and say the shell is read-only: {message}"
    );
}

#[test]
fn the_shell_refuses_every_statement_that_is_not_a_query() {
    let ws = bronze_lake();
    let before = snapshot(&ws.lake());
    let rows = ws.count("bronze.payments");
    let outside = ws.dir.path().join("copied");
    let copy = format!("COPY (SELECT 1) TO '{}'", outside.display());
    let copy_table = format!(
        "COPY bronze.payments TO '{}' STORED AS CSV",
        outside.display()
    );
    let external = format!(
        "CREATE EXTERNAL TABLE evil STORED AS CSV LOCATION '{}'",
        ws.landing().join("accounts").display()
    );
    let cases: Vec<(&str, &str)> = vec![
        (
            "INSERT INTO bronze.payments (payment_id) VALUES ('PAY_FORGED')",
            "INSERT",
        ),
        (
            "INSERT INTO bronze.payments SELECT * FROM bronze.payments",
            "INSERT",
        ),
        ("UPDATE bronze.payments SET payment_id = 'x'", "UPDATE"),
        ("DELETE FROM bronze.payments", "DELETE"),
        ("TRUNCATE bronze.payments", "TRUNCATE"),
        (&copy, "COPY"),
        (&copy_table, "COPY"),
        (&external, "CREATE EXTERNAL TABLE"),
        ("CREATE TABLE t AS SELECT 1 AS x", "CREATE TABLE"),
        ("CREATE VIEW v AS SELECT 1 AS x", "CREATE VIEW"),
        ("CREATE SCHEMA evil", "CREATE SCHEMA"),
        ("DROP TABLE bronze.payments", "DROP TABLE"),
        ("SET datafusion.execution.batch_size = 1", "SET"),
        ("SELECT 1 AS x INTO t", "SELECT INTO"),
        (
            "EXPLAIN ANALYZE INSERT INTO bronze.payments (payment_id) VALUES ('PAY_FORGED')",
            "INSERT",
        ),
        // Every statement of a string must be a query.
        (
            "SELECT 1; INSERT INTO bronze.payments (payment_id) VALUES ('PAY_FORGED')",
            "INSERT",
        ),
    ];
    for (sql, kind) in &cases {
        assert_refused(&ws, sql, kind);
    }
    assert!(!outside.exists(), "COPY wrote {}", outside.display());
    assert_eq!(ws.count("bronze.payments"), rows);
    assert_eq!(
        ws.count("bronze.payments WHERE payment_id = 'PAY_FORGED'"),
        0
    );
    assert_eq!(
        snapshot(&ws.lake()),
        before,
        "a refused statement changed the lake"
    );
}

#[test]
fn the_shell_runs_queries_of_every_read_only_kind() {
    let ws = bronze_lake();
    let rows =
        ws.query("WITH p AS (SELECT payment_id FROM bronze.payments) SELECT count(*) AS n FROM p");
    assert!(rows[0]["n"].as_i64().unwrap() > 0);
    assert_eq!(ws.query("VALUES (1), (2)").len(), 2);
    for sql in [
        "EXPLAIN SELECT * FROM bronze.payments",
        "SHOW TABLES",
        "SHOW COLUMNS FROM bronze.payments",
        "DESCRIBE bronze.payments",
        "SHOW datafusion.execution.batch_size",
    ] {
        let output = ws.run(&["sql", sql]);
        assert_eq!(output.status.code(), Some(0), "{sql}: {}", stderr(&output));
    }
    // Several queries in one string run one after the other.
    let two = ws.run(&["sql", "SELECT 1 AS first; SELECT 2 AS second"]);
    assert_eq!(two.status.code(), Some(0), "{}", stderr(&two));
    let out = stdout(&two);
    assert!(out.contains("first") && out.contains("second"), "{out}");
    // A syntax error is a usage error naming the problem.
    let broken = ws.run(&["sql", "SELEC 1"]);
    assert_eq!(broken.status.code(), Some(2));
    assert!(stderr(&broken).contains("SELEC"), "{}", stderr(&broken));
    let empty = ws.run(&["sql", "  ;  "]);
    assert_eq!(empty.status.code(), Some(2), "{}", stderr(&empty));
}

#[test]
fn a_query_past_its_timeout_stops_with_exit_1_naming_the_flag() {
    let ws = Workspace::new();
    ws.bronze(); // an empty lake: the shell never creates one
    let started = Instant::now();
    let output = ws.run(&[
        "sql",
        "--timeout",
        "2s",
        "SELECT count(*) FROM generate_series(1, 100000000000)",
    ]);
    let elapsed = started.elapsed();
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    assert!(
        message.contains("2s") && message.contains("--timeout"),
        "{message}"
    );
    // Timeouts are validated; 0 means none.
    let bad = ws.run(&["sql", "--timeout", "soon", "SELECT 1"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    let none = ws.run(&["sql", "--timeout", "0", "SELECT 1 AS one"]);
    assert_eq!(none.status.code(), Some(0), "{}", stderr(&none));
    let minutes = ws.run(&["sql", "--timeout", "5m", "SELECT 1 AS one"]);
    assert_eq!(minutes.status.code(), Some(0), "{}", stderr(&minutes));
}

#[test]
fn a_query_past_the_memory_limit_is_a_clear_error_not_an_abort() {
    let ws = Workspace::new();
    ws.bronze(); // an empty lake: the shell never creates one
    for (args, env) in [
        (
            vec![
                "sql",
                "--memory-limit",
                "64MiB",
                "SELECT repeat('x', 2000000000) AS big",
            ],
            vec![],
        ),
        (
            vec!["sql", "SELECT length(lpad('x', 2000000000)) AS big"],
            vec![("PAYLAKE_MEMORY_LIMIT", "64MiB")],
        ),
        (
            vec![
                "sql",
                "--memory-limit",
                "64MiB",
                "SELECT length(replace(repeat('x', 100000), 'x', repeat('y', 100000))) AS big",
            ],
            vec![],
        ),
    ] {
        let output = ws.run_with_env(&args, &env);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {message}");
        assert!(
            message.contains("--memory-limit") && message.contains("64.0 MiB"),
            "{args:?}: {message}"
        );
        assert!(!message.contains("panicked"), "{message}");
    }
    // Sorting more than the limit holds spills or fails with the same clear message.
    let sort = ws.run(&[
        "sql",
        "--memory-limit",
        "16MiB",
        "SELECT count(DISTINCT value) AS n FROM generate_series(1, 5000000)",
    ]);
    assert!(
        sort.status.code() == Some(0)
            || (sort.status.code() == Some(1) && stderr(&sort).contains("--memory-limit")),
        "{}",
        stderr(&sort)
    );
    let bad = ws.run(&["sql", "--memory-limit", "lots", "SELECT 1"]);
    assert_eq!(bad.status.code(), Some(2));
}

fn export(ws: &Workspace, output: &Path) -> Output {
    ws.run(&[
        "export",
        "gold.unified_payments",
        "--format",
        "csv",
        "--output",
        output.to_str().unwrap(),
    ])
}

#[test]
fn export_writes_only_regular_files_outside_the_lake() {
    let ws = gold_lake();
    let dir = ws.dir.path().join("out");
    std::fs::create_dir_all(&dir).unwrap();

    // A new file, then over a regular file: replaced whole, nothing left beside it.
    let target = dir.join("unified.csv");
    let first = export(&ws, &target);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let text = std::fs::read_to_string(&target).unwrap();
    assert!(text.starts_with("payment_id,"), "{text}");
    assert_eq!(text.lines().count(), 47, "header and 46 payments");
    std::fs::write(&target, "old").unwrap();
    let again = export(&ws, &target);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), text);
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["unified.csv".to_string()],
        "temporary files left"
    );

    // A FIFO is never opened nor replaced.
    let fifo = dir.join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let started = Instant::now();
    let refused = export(&ws, &fifo);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        stderr(&refused).contains(fifo.to_str().unwrap()),
        "{}",
        stderr(&refused)
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());

    // A folder is refused.
    let folder = dir.join("folder");
    std::fs::create_dir(&folder).unwrap();
    let refused = export(&ws, &folder);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(folder.is_dir());

    // A symlink is refused, wherever it points, and what it points to is untouched.
    let elsewhere = ws.dir.path().join("elsewhere.txt");
    std::fs::write(&elsewhere, "keep me").unwrap();
    let link = dir.join("link.csv");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let refused = export(&ws, &link);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains(link.to_str().unwrap()),
        "{}",
        stderr(&refused)
    );
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "keep me");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());

    // Nothing may be written inside the lake, under any spelling of its path.
    let before = snapshot(&ws.lake());
    for inside in [
        ws.lake().join("silver/payments/_current.json"),
        ws.lake()
            .join("gold/unified_payments/_delta_log/00000000000000000099.json"),
        ws.lake().join("export.csv"),
        dir.join("../lake/silver/x.csv"),
    ] {
        let refused = export(&ws, &inside);
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{}: {}",
            inside.display(),
            stderr(&refused)
        );
        assert!(stderr(&refused).contains("lake"), "{}", stderr(&refused));
    }
    assert_eq!(
        snapshot(&ws.lake()),
        before,
        "an export wrote into the lake"
    );

    // A missing folder is a write problem, named as such.
    let missing = ws.dir.path().join("no/such/folder/out.csv");
    let refused = export(&ws, &missing);
    let message = stderr(&refused);
    assert_eq!(refused.status.code(), Some(2), "{message}");
    assert!(
        message.contains("cannot write") && !message.contains("cannot read"),
        "{message}"
    );
    assert!(message.contains("no/such/folder"), "{message}");
}

#[test]
fn export_parquet_is_a_whole_parquet_file() {
    let ws = gold_lake();
    let target = ws.dir.path().join("unified.parquet");
    let output = ws.run(&[
        "export",
        "gold.unified_payments",
        "--format",
        "parquet",
        "--output",
        target.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rows = runtime.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        let frame = ctx
            .read_parquet(
                target.to_str().unwrap(),
                datafusion::prelude::ParquetReadOptions::default(),
            )
            .await
            .unwrap();
        frame.count().await.unwrap()
    });
    assert_eq!(rows, 46);
}
