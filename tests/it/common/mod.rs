//! Helpers for end-to-end tests: run the `paylake` binary on temporary lakes and landing zones.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub mod workbook;

pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary folder"),
        }
    }

    pub fn lake(&self) -> PathBuf {
        self.dir.path().join("lake")
    }

    pub fn landing(&self) -> PathBuf {
        self.dir.path().join("landing")
    }

    /// Writes a landing file (relative to the landing folder), creating folders.
    pub fn land(&self, relative: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.landing().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        path
    }

    pub fn remove(&self, relative: &str) {
        std::fs::remove_file(self.landing().join(relative)).unwrap();
    }

    /// Runs `paylake --lake <lake> <args…>`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_env(args, &[])
    }

    pub fn run_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_paylake"));
        command.arg("--lake").arg(self.lake()).args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().expect("paylake runs")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "paylake {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 stdout")
    }

    pub fn bronze(&self) -> Value {
        let landing = self.landing();
        std::fs::create_dir_all(&landing).unwrap();
        json(&self.ok(&["--json", "bronze", "--landing", landing.to_str().unwrap()]))
    }

    /// Rebuilds Silver without the data-quality gate: these tests feed deliberately bad data
    /// to check the Silver rules themselves (tests/it/quality.rs covers the gate).
    pub fn silver(&self) -> Value {
        self.silver_with(&[])
    }

    /// [`Workspace::silver`] with more flags (e.g. `--full-refresh`).
    pub fn silver_with(&self, extra: &[&str]) -> Value {
        let no_expectations = self.no_expectations();
        let mut args = vec![
            "--json",
            "silver",
            "--expectations-dir",
            no_expectations.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        json(&self.ok(&args))
    }

    /// Rebuilds Gold with its invariant checks but without expectations (tests/it/quality.rs
    /// covers the Gold expectations).
    pub fn gold(&self) -> Value {
        self.gold_with(&[])
    }

    /// [`Workspace::gold`] with more flags (e.g. `--full-refresh`).
    pub fn gold_with(&self, extra: &[&str]) -> Value {
        let no_expectations = self.no_expectations();
        let mut args = vec![
            "--json",
            "gold",
            "--expectations-dir",
            no_expectations.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        json(&self.ok(&args))
    }

    /// An expectations folder with no rules for any layer.
    pub fn no_expectations(&self) -> PathBuf {
        let dir = self.dir.path().join("no-expectations");
        for layer in ["silver", "gold"] {
            std::fs::create_dir_all(dir.join(layer)).unwrap();
        }
        dir
    }

    /// The versions of a table, newest first, as `paylake history --json` reports them.
    pub fn history(&self, table: &str) -> Vec<Value> {
        match json(&self.ok(&["--json", "history", table])) {
            Value::Array(entries) => entries,
            other => panic!("expected history entries, got {other}"),
        }
    }

    /// Rows of an ad-hoc query, as JSON objects.
    pub fn query(&self, sql: &str) -> Vec<Value> {
        match json(&self.ok(&["--json", "sql", sql])) {
            Value::Array(rows) => rows,
            other => panic!("expected rows, got {other}"),
        }
    }

    pub fn count(&self, sql_from: &str) -> i64 {
        let rows = self.query(&format!("SELECT count(*) AS n FROM {sql_from}"));
        rows[0]["n"].as_i64().expect("a count")
    }
}

pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The summary entry of one source in a bronze or silver run summary.
pub fn source<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["source"] == name))
        .unwrap_or_else(|| panic!("no source {name} in {summary}"))
}

pub fn text(value: &Value) -> Option<&str> {
    value.as_str()
}

/// The repository's own sample landing zone.
pub fn sample_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

pub fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::create_dir_all(to).unwrap();
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

pub const PAYMENT_HEADER: &str =
    "payment_id,src_account_id,dest_account_id,payment_reference,amount,timestamp\n";

/// A payments CSV with the contract's header and the given rows.
pub fn payments(rows: &[&str]) -> String {
    let mut text = PAYMENT_HEADER.to_string();
    for row in rows {
        text.push_str(row);
        text.push('\n');
    }
    text
}
