//! The command line as a scheduler and a newcomer meet it: where the lake comes from, exit
//! codes, one-line JSON summaries, help texts, logging settings.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use common::Workspace;
use serde_json::Value;

/// The binary with no PAYLAKE_* variable inherited from the caller's environment.
fn paylake(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_paylake"));
    command.current_dir(dir);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PAYLAKE_") {
            command.env_remove(key);
        }
    }
    command
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The run exited 2 (a usage error) and its stderr says every one of `says`.
fn assert_usage_error(output: &Output, args: &[&str], says: &[&str]) {
    let stderr = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    for text in says {
        assert!(
            stderr.contains(text),
            "{args:?} does not say {text:?}: {stderr}"
        );
    }
}

fn with_sample(ws: &Workspace) {
    common::copy_tree(&common::sample_data(), &ws.landing());
}

#[test]
fn no_lake_given_is_a_usage_error_and_nothing_is_created() {
    let ws = Workspace::new();
    with_sample(&ws);
    for args in [
        vec!["bronze", "--landing", ws.landing().to_str().unwrap()],
        vec!["status"],
        vec!["silver"],
    ] {
        let output = paylake(ws.dir.path()).args(&args).output().unwrap();
        assert_usage_error(&output, &args, &["no lake given", "PAYLAKE_LAKE"]);
    }
    // Before: the default `lake/` was created in the working folder.
    assert!(!ws.dir.path().join("lake").exists());
}

#[test]
fn the_lake_and_every_place_come_from_environment_variables() {
    let ws = Workspace::new();
    with_sample(&ws);
    let no_rules = ws.no_expectations();
    let metrics = ws.dir.path().join("paylake.prom");
    let env = |command: &mut Command| {
        command
            .env("PAYLAKE_LAKE", ws.lake())
            .env("PAYLAKE_LANDING", ws.landing())
            .env("PAYLAKE_EXPECTATIONS_DIR", &no_rules)
            .env("PAYLAKE_SQL_DIR", common::sample_data().join("../sql"))
            .env("PAYLAKE_METRICS_FILE", &metrics);
    };
    for step in ["bronze", "silver", "gold"] {
        let mut command = paylake(ws.dir.path());
        env(&mut command);
        let output = command.args(["--json", step]).output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{step}: {}", stderr(&output));
        // No rule table: PAYLAKE_EXPECTATIONS_DIR named the folder without rules.
        assert!(!stderr(&output).contains("payment_id_not_null"), "{step}");
    }
    assert!(ws.count("silver.payments") > 0);
    let prom = std::fs::read_to_string(&metrics).expect("PAYLAKE_METRICS_FILE was written");
    assert!(prom.contains("step=\"gold\""), "{prom}");
    // A flag still wins over its variable.
    let elsewhere = ws.dir.path().join("elsewhere");
    let mut command = paylake(ws.dir.path());
    env(&mut command);
    let output = command
        .args(["--lake", elsewhere.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no lake at"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn only_bronze_creates_a_lake_every_other_command_says_there_is_none() {
    let ws = Workspace::new();
    let out = ws.dir.path().join("out.csv");
    let out = out.to_str().unwrap();
    let empty = ws.dir.path().join("empty-folder");
    std::fs::create_dir(&empty).unwrap();
    for lake in [ws.dir.path().join("typo"), empty.clone()] {
        for args in [
            vec!["status"],
            vec!["--json", "status"],
            vec!["schema"],
            vec!["history", "gold.unified_payments"],
            vec!["sql", "SELECT 1"],
            vec!["export", "gold.unified_payments", "--output", out],
            vec!["silver"],
            vec!["gold"],
            vec!["vacuum"],
            vec!["optimize"],
        ] {
            let output = paylake(ws.dir.path())
                .arg("--lake")
                .arg(&lake)
                .args(&args)
                .output()
                .unwrap();
            assert_usage_error(&output, &args, &[&format!("no lake at {}", lake.display())]);
        }
    }
    assert!(
        !ws.dir.path().join("typo").exists(),
        "a reader created the lake"
    );
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    // Bronze creates one; then readers answer.
    with_sample(&ws);
    ws.bronze();
    ws.ok(&["status"]);
}

#[test]
fn export_of_an_unknown_table_lists_the_tables_the_lake_holds() {
    let ws = Workspace::new();
    with_sample(&ws);
    ws.bronze();
    let out = ws.dir.path().join("out.csv");
    let output = ws.run(&[
        "export",
        "gold.unified_payment",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("no table gold.unified_payment")
            && message.contains("bronze.payments")
            && message.contains("bronze._file_log"),
        "{message}"
    );
    // A table paylake builds but has not yet says which step builds it.
    let output = ws.run(&[
        "export",
        "gold.unified_payments",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("run `paylake gold` first"),
        "{}",
        stderr(&output)
    );
}

/// The subcommands `paylake --help` lists.
fn subcommands(dir: &Path) -> Vec<String> {
    let help = stdout(&paylake(dir).arg("--help").output().unwrap());
    let listed = help
        .split("Commands:")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("a Commands: section");
    listed
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn every_command_help_shows_an_example() {
    let ws = Workspace::new();
    let commands = subcommands(ws.dir.path());
    assert!(commands.len() >= 11, "{commands:?}");
    let mut helps = vec![vec![], vec!["quarantine".to_string(), "replay".to_string()]];
    helps.extend(commands.into_iter().map(|c| vec![c]));
    for words in helps {
        let output = paylake(ws.dir.path())
            .args(&words)
            .arg("--help")
            .output()
            .unwrap();
        let help = stdout(&output);
        assert!(
            help.contains("Example") && help.contains("paylake --lake lake/"),
            "{words:?} --help has no example:\n{help}"
        );
    }
}

#[test]
fn flags_that_do_not_apply_to_a_command_are_not_shown_on_it() {
    let ws = Workspace::new();
    let help = |words: &[&str]| {
        stdout(
            &paylake(ws.dir.path())
                .args(words)
                .arg("--help")
                .output()
                .unwrap(),
        )
    };
    let bronze = help(&["bronze"]);
    for flag in [
        "--landing",
        "--nothing-new-exit-code",
        "--metrics-file",
        "PAYLAKE_LANDING",
    ] {
        assert!(bronze.contains(flag), "bronze --help lacks {flag}");
    }
    for (command, absent) in [
        (
            vec!["status"],
            vec!["--metrics-file", "--nothing-new-exit-code", "--landing"],
        ),
        (vec!["export", "x"], vec!["--metrics-file", "--as-of"]),
        (
            vec!["silver"],
            vec!["--label-maturity-days", "--landing", "--new-since"],
        ),
        (vec!["history", "x"], vec!["--metrics-file"]),
    ] {
        let text = help(&command);
        for flag in absent {
            assert!(!text.contains(flag), "{command:?} --help shows {flag}");
        }
    }
    assert!(help(&["gold"]).contains("--label-maturity-days"));
    assert!(help(&["silver"]).contains("PAYLAKE_EXPECTATIONS_DIR"));
}

#[test]
fn an_invalid_log_filter_is_a_usage_error() {
    let ws = Workspace::new();
    with_sample(&ws);
    let landing = ws.landing();
    let output = ws.run_with_env(
        &["bronze", "--landing", landing.to_str().unwrap()],
        &[("PAYLAKE_LOG", "paylake=loud")],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("PAYLAKE_LOG='paylake=loud'"),
        "{}",
        stderr(&output)
    );
    assert!(!ws.lake().exists(), "the step ran with a broken log filter");
}

#[test]
fn log_format_json_writes_one_json_object_per_log_line() {
    let ws = Workspace::new();
    with_sample(&ws);
    let landing = ws.landing();
    let output = ws.run_with_env(
        &[
            "--log-format",
            "json",
            "--json",
            "bronze",
            "--landing",
            landing.to_str().unwrap(),
        ],
        &[("PAYLAKE_LOG", "info")],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let logs: Vec<Value> = stderr(&output)
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    // The sample has a payments line with a field too many: a warning, as JSON.
    assert!(
        logs.iter()
            .any(|log| log["level"] == "WARN" && log["fields"]["message"].is_string()),
        "{}",
        stderr(&output)
    );
    let output = ws.run(&["--log-format", "yaml", "status"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn every_json_summary_is_one_line_and_the_last_on_stdout() {
    let ws = Workspace::new();
    with_sample(&ws);
    let landing = ws.landing();
    let out = ws.dir.path().join("unified.csv");
    let commands: Vec<Vec<&str>> = vec![
        vec!["bronze", "--landing", landing.to_str().unwrap()],
        vec!["silver"],
        vec!["gold"],
        vec!["status"],
        vec!["schema"],
        vec!["history", "gold.unified_payments"],
        vec![
            "export",
            "gold.unified_payments",
            "--output",
            out.to_str().unwrap(),
        ],
        vec!["sql", "SELECT count(*) AS n FROM gold.unified_payments"],
        vec!["optimize"],
        vec!["vacuum"],
        vec!["quarantine", "replay", "--table", "payments"],
    ];
    for args in commands {
        let output = ws.run(&[&["--json"], args.as_slice()].concat());
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {}",
            stderr(&output)
        );
        let text = stdout(&output);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "{args:?} printed more than the summary:\n{text}"
        );
        let summary: Value = serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("{args:?}: the last line is not JSON ({e}): {text}"));
        assert!(
            summary.is_object() || summary.is_array(),
            "{args:?}: {summary}"
        );
    }
}

fn bronze_exit(ws: &Workspace, extra: &[&str], env: &[(&str, &str)]) -> (Option<i32>, Value) {
    let landing = ws.landing();
    let args = [
        &["--json", "bronze", "--landing", landing.to_str().unwrap()],
        extra,
    ]
    .concat();
    let output = ws.run_with_env(&args, env);
    let summary = common::json(stdout(&output).lines().last().unwrap_or_default());
    (output.status.code(), summary)
}

#[test]
fn bronze_exits_with_the_nothing_new_code_only_when_asked() {
    let ws = Workspace::new();
    ws.land(
        "payments/2024-11-15/payments_2024-11-15T09-15.csv",
        common::payments(&["P1,A1,A2,R1,10.00,2024-11-15 09:00:00"]),
    );
    let ask = ["--nothing-new-exit-code", "99"];
    // Something landed: 0 even when asked.
    let (code, summary) = bronze_exit(&ws, &ask, &[]);
    assert_eq!(code, Some(0), "{summary}");
    assert_eq!(common::source(&summary, "payments")["rows_landed"], 1);
    // Nothing new: the code asked for, with the summary still on stdout.
    let (code, summary) = bronze_exit(&ws, &ask, &[]);
    assert_eq!(code, Some(99));
    assert_eq!(common::source(&summary, "payments")["rows_landed"], 0);
    // Not asked (make bronze): 0.
    assert_eq!(bronze_exit(&ws, &[], &[]).0, Some(0));
    // The variable asks too.
    let env = [("PAYLAKE_NOTHING_NEW_EXIT_CODE", "42")];
    assert_eq!(bronze_exit(&ws, &[], &env).0, Some(42));
    // Codes that mean something else are refused.
    let landing = ws.landing();
    for code in ["0", "1", "3", "256"] {
        let output = ws.run(&[
            "bronze",
            "--landing",
            landing.to_str().unwrap(),
            "--nothing-new-exit-code",
            code,
        ]);
        assert_eq!(output.status.code(), Some(2), "code {code}");
    }
}

#[test]
fn rows_known_after_new_since_count_as_new_though_this_run_landed_none() {
    let ws = Workspace::new();
    ws.land(
        "payments/2024-11-15/payments_2024-11-15T09-15.csv",
        common::payments(&["P1,A1,A2,R1,10.00,2024-11-15 09:00:00"]),
    );
    assert_eq!(bronze_exit(&ws, &[], &[]).0, Some(0));
    let ask = |since: &'static str| {
        let (code, _) = bronze_exit(
            &ws,
            &["--nothing-new-exit-code", "99", "--new-since", since],
            &[],
        );
        code
    };
    // The file is known at 09:15: a downstream build as of 09:00 has not seen it.
    assert_eq!(ask("2024-11-15T09:00:00Z"), Some(0));
    assert_eq!(ask("2024-11-15T09:15:00+00:00"), Some(99));
    assert_eq!(ask("2024-11-16"), Some(99));
    // Without --nothing-new-exit-code the flag means nothing: refused.
    let landing = ws.landing();
    let output = ws.run(&[
        "bronze",
        "--landing",
        landing.to_str().unwrap(),
        "--new-since",
        "2024-11-16",
    ]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn an_engine_other_than_local_or_a_ballista_scheduler_is_a_usage_error() {
    let ws = Workspace::new();
    for (args, env) in [
        (vec!["silver", "--engine", "spark://h:7077"], None),
        (vec!["gold"], Some("ballista://h:port")),
    ] {
        let mut command = paylake(ws.dir.path());
        command.args(["--lake", "lake"]).args(&args);
        if let Some(value) = env {
            command.env("PAYLAKE_ENGINE", value);
        }
        let output = command.output().unwrap();
        assert_usage_error(&output, &args, &["invalid --engine"]);
    }
    assert!(!ws.lake().exists());
}
