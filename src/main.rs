//! `paylake`: the command line of the payment lakehouse.

mod inspect;
mod steps;

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use paylake_jobs::JobError;
use paylake_lake::lease::WriterLease;
use paylake_lake::Lake;

/// How long a writer lease lasts at most: longer than any step, short enough that a crashed
/// run on another host does not block the lake for long.
const LEASE_HOURS: i64 = 6;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the run failed (engine or storage error, broken invariant); nothing half-published
  2  usage or configuration error (unknown flag, bad --lake, missing landing folder, bad time,
     an API that refuses the request with a 4xx,
     a table that was not built yet, a statement `paylake sql` refuses, an export target that
     is not a regular file, is inside the lake or has no folder)
  3  data quality gate failed: an error-severity expectation failed in Silver (Gold is not
     rebuilt) or in Gold (Gold is not committed)";

#[derive(Parser, Debug)]
#[command(
    name = "paylake",
    version,
    about = "Medallion lakehouse for account-to-account payment fraud data",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// The lake: a folder (created if missing) or file:///absolute/path.
    #[arg(long, global = true, default_value = "lake/")]
    lake: String,
    /// Print the run summary as JSON on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Write Prometheus metrics of every step here (node_exporter textfile collector format).
    #[arg(long, global = true)]
    metrics_file: Option<PathBuf>,
    /// More logging on stderr (-v info, -vv debug); PAYLAKE_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Land new files from a landing folder into Bronze (raw text + lineage, exactly once).
    Bronze {
        /// Landing folder: flat take-home layout or one folder per source.
        #[arg(long)]
        landing: PathBuf,
        /// Rows per Parquet record batch (bounds memory).
        #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..))]
        batch_rows: u64,
        /// Compact a source's Bronze table once it holds more objects than this (0: never).
        #[arg(long, default_value_t = paylake_bronze::compact::DEFAULT_COMPACTION_THRESHOLD)]
        compact_after_files: usize,
    },
    /// Fetch a source's paginated JSON HTTP API into the landing zone, one JSON-lines file per
    /// page (named with its fetch time), resuming from the cursor saved in the lake.
    Pull {
        source: PullSourceArg,
        /// The API: `GET URL?since=T&cursor=C` answers `{"items": [...], "next_cursor": ...}`.
        #[arg(long, env = "PAYLAKE_PULL_URL")]
        url: url::Url,
        /// Only items the API learned at or after this UTC time (default: from the start of the
        /// last complete pull; everything the first time).
        #[arg(long, value_parser = parse_time)]
        since: Option<DateTime<Utc>>,
        /// Bearer token sent as `Authorization: Bearer …`; never printed.
        #[arg(long, env = "PAYLAKE_API_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Landing folder the pages are written into (the one `paylake bronze` reads).
        #[arg(long, env = "PAYLAKE_LANDING")]
        landing: PathBuf,
        /// Attempts per page before giving up (5xx, 408, 429, timeouts, broken pages).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
        attempts: u32,
        /// Wait before the first retry, doubled for each further one (e.g. 1s, 500ms).
        #[arg(long, default_value = "1s", value_parser = parse_timeout)]
        backoff: Timeout,
        /// Limit on one request (e.g. 30s, 2m; 0 = none).
        #[arg(long, default_value = "30s", value_parser = parse_timeout)]
        timeout: Timeout,
    },
    /// Rebuild Silver from Bronze with sql/silver, then evaluate its expectations (the gate).
    Silver {
        #[command(flatten)]
        job: JobArgs,
        /// Read expectations from DIR/silver/*.toml instead of the built-in ones.
        #[arg(long)]
        expectations_dir: Option<PathBuf>,
    },
    /// Rebuild Gold from the Silver versions the last Silver gate audited, audit it with its
    /// invariants and expectations, and commit it only if the audit passes.
    Gold {
        #[command(flatten)]
        job: JobArgs,
        /// Read expectations from DIR/gold/*.toml instead of the built-in ones.
        #[arg(long)]
        expectations_dir: Option<PathBuf>,
    },
    /// Write a table (its latest version, or --version N) to a file.
    Export {
        /// Table to export, e.g. gold.unified_payments.
        table: String,
        /// The Delta version to export (see `paylake history TABLE`).
        #[arg(long)]
        version: Option<u64>,
        #[arg(long, default_value = "csv", value_parser = ["csv", "parquet"])]
        format: String,
        #[arg(long)]
        output: PathBuf,
        /// Export every column, not only the table's primary ones.
        #[arg(long)]
        all_columns: bool,
    },
    /// Run ad-hoc SQL queries over every table of the lake (bronze.*, silver.*, gold.*,
    /// quality.*); `table_version('gold.unified_payments', 3)` reads an older version.
    /// Read-only: only SELECT, WITH, VALUES, EXPLAIN, SHOW and DESCRIBE run (several
    /// statements separated by `;` must all be queries); anything else exits 2.
    Sql {
        query: String,
        /// Stop the query after this long (e.g. 30s, 5m, 1h; 0 = no timeout): exit 1.
        #[arg(long, default_value = "5m", value_parser = parse_timeout)]
        timeout: Timeout,
        /// Memory the query may hold (e.g. 1GiB, 512MiB, or unlimited); sorts and
        /// aggregations spill beyond it, a query that still cannot fit exits 1.
        #[arg(long, env = "PAYLAKE_MEMORY_LIMIT", default_value = "1GiB", value_parser = parse_memory_limit)]
        memory_limit: MemoryLimit,
        /// Folder for spill files (default: the system temp folder).
        #[arg(long, env = "PAYLAKE_SPILL_DIR")]
        spill_dir: Option<PathBuf>,
    },
    /// The versions of a table: time, operation, run, as-of, rows, audit verdict.
    History {
        /// e.g. gold.unified_payments
        table: String,
    },
    /// Delete files that no version within the retention needs (all tables, or one).
    Vacuum {
        table: Option<String>,
        /// Keep files older versions need for this long: e.g. 7d, 36h, 0h (default 7d).
        #[arg(long, default_value = "7d", value_parser = parse_retention)]
        retain: chrono::Duration,
    },
    /// Compact small files into larger ones (all tables, or one).
    Optimize { table: Option<String> },
    /// One screen per lake: each table's update time, rows, freshness, runs, rules, rejects.
    Status,
    /// Per source: the contract version and every schema drift seen in landed files.
    Schema,
    /// Quarantined rows.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
}

/// A source with an API `paylake pull` can fetch.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PullSourceArg {
    #[value(name = "fraud_labels")]
    FraudLabels,
}

impl From<PullSourceArg> for paylake_pull::PullSource {
    fn from(source: PullSourceArg) -> Self {
        match source {
            PullSourceArg::FraudLabels => Self::FraudLabels,
        }
    }
}

#[derive(Subcommand, Debug)]
enum QuarantineAction {
    /// Re-validate a table's quarantined rows with the current rules and contracts: rows that
    /// now pass move into Silver. Idempotent.
    Replay {
        /// Source table: payments, accounts, risk_feed or fraud_labels.
        #[arg(long)]
        table: String,
        /// Read models from DIR/silver/*.sql instead of the built-in ones (a rule fix).
        #[arg(long)]
        sql_dir: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
pub struct JobArgs {
    /// Build only from facts known at or before this UTC time (RFC 3339 or YYYY-MM-DD[ HH:MM:SS]).
    #[arg(long, value_parser = parse_time)]
    as_of: Option<DateTime<Utc>>,
    /// Read models from DIR/<layer>/*.sql instead of the built-in ones.
    #[arg(long)]
    sql_dir: Option<PathBuf>,
    /// Days after which a payment with no known fraud label counts as legitimate (0-36500).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(0..=36_500))]
    label_maturity_days: u32,
    /// Memory the query engine may hold (e.g. 1GiB, 512MiB, or unlimited); sorts and
    /// aggregations spill to --spill-dir beyond it.
    #[arg(long, env = "PAYLAKE_MEMORY_LIMIT", default_value = "1GiB", value_parser = parse_memory_limit)]
    memory_limit: MemoryLimit,
    /// Folder for spill files and temporary models (default: the system temp folder).
    #[arg(long, env = "PAYLAKE_SPILL_DIR")]
    spill_dir: Option<PathBuf>,
    /// Print what each model cost: seconds, rows in and out, peak engine memory, spilled bytes.
    #[arg(long)]
    profile: bool,
    /// Run one model under EXPLAIN ANALYZE (after the models it reads) and print the plan with
    /// its metrics; nothing is committed.
    #[arg(long, value_name = "MODEL")]
    explain: Option<String>,
}

impl JobArgs {
    /// A run with the defaults of every flag but the models folder.
    pub fn with_sql_dir(sql_dir: Option<PathBuf>) -> Self {
        Self {
            as_of: None,
            sql_dir,
            label_maturity_days: 60,
            memory_limit: MemoryLimit(Some(paylake_jobs::engine::DEFAULT_MEMORY_LIMIT)),
            spill_dir: None,
            profile: false,
            explain: None,
        }
    }
}

/// `--memory-limit`: bytes, or `None` for unlimited.
#[derive(Debug, Clone, Copy)]
pub struct MemoryLimit(pub Option<u64>);

fn parse_memory_limit(text: &str) -> Result<MemoryLimit, String> {
    paylake_jobs::engine::parse_memory_limit(text).map(MemoryLimit)
}

/// `--timeout`: how long a query may run, `None` for no limit.
#[derive(Debug, Clone, Copy)]
pub struct Timeout(pub Option<std::time::Duration>);

fn parse_timeout(text: &str) -> Result<Timeout, String> {
    paylake_jobs::shell::parse_timeout(text).map(Timeout)
}

fn parse_retention(text: &str) -> Result<chrono::Duration, String> {
    let text = text.trim();
    let split = text.len().saturating_sub(1);
    let (number, unit) = text.split_at(split);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a retention (use e.g. 7d, 36h or 90m)"))?;
    match unit {
        "d" => Ok(chrono::Duration::days(number)),
        "h" => Ok(chrono::Duration::hours(number)),
        "m" => Ok(chrono::Duration::minutes(number)),
        _ => Err(format!("'{text}': the unit must be d, h or m")),
    }
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    Err(format!(
        "'{text}' is not a time (use RFC 3339, 'YYYY-MM-DD HH:MM:SS' or 'YYYY-MM-DD', UTC)"
    ))
}

/// An error with the exit code it maps to.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure {
            code: 1,
            error: error.into(),
        }
    }
}

pub fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: error.into(),
    }
}

pub const EXIT_GATE_FAILED: u8 = 3;

pub fn job_failure(error: JobError) -> Failure {
    use paylake_quality::QualityError;
    let code = match error {
        JobError::NotBuilt { .. }
        | JobError::Model { .. }
        | JobError::Io { .. }
        | JobError::Write { .. }
        | JobError::Output { .. }
        | JobError::ReadOnly { .. }
        | JobError::Query(_)
        | JobError::Quality(QualityError::Expectations { .. })
        | JobError::Lake(paylake_lake::LakeError::NoSuchTable { .. }) => 2,
        JobError::GateClosed { .. } => EXIT_GATE_FAILED,
        _ => 1,
    };
    Failure {
        code,
        error: error.into(),
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "warn,paylake=info,paylake_bronze=info,paylake_jobs=info,paylake_lake=info,paylake_quality=info",
        _ => "info,paylake=debug,paylake_bronze=debug,paylake_jobs=debug,paylake_lake=debug,paylake_quality=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PAYLAKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

pub fn run_id(now: DateTime<Utc>) -> String {
    format!(
        "{}-{:04x}",
        now.format("%Y%m%dT%H%M%SZ"),
        now.timestamp_subsec_micros() % 0x10000
    )
}

pub fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Checks before a step runs that its metrics file can be written, so that a bad path is a
/// configuration error and not a failure after the step already published.
fn check_metrics_path(path: &std::path::Path) -> Result<(), Failure> {
    let cannot = |reason: String| {
        usage(anyhow::anyhow!(
            "cannot write the metrics file {}: {reason}",
            path.display()
        ))
    };
    if path.is_dir() {
        return Err(cannot("it is a folder".into()));
    }
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !folder.is_dir() {
        return Err(cannot(format!(
            "the folder {} does not exist",
            folder.display()
        )));
    }
    let probe = folder.join(format!(".paylake-metrics-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| cannot(e.to_string()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if let Some(path) = &cli.metrics_file {
        check_metrics_path(path)?;
    }
    let lake = Lake::open(&cli.lake).map_err(usage)?;
    let now = Utc::now();
    let json = cli.json;
    let metrics_file = cli.metrics_file.clone();
    let step = match &cli.command {
        Command::Bronze { .. } => Some("bronze"),
        Command::Silver { job, .. } | Command::Gold { job, .. } if job.explain.is_some() => None,
        Command::Silver { .. } | Command::Quarantine { .. } => Some("silver"),
        Command::Gold { .. } => Some("gold"),
        _ => None,
    };
    let writes = step.is_some()
        || matches!(
            cli.command,
            Command::Vacuum { .. } | Command::Optimize { .. }
        );
    // One writing step at a time per lake; readers never wait.
    let lease = if writes {
        let what = step.unwrap_or("maintenance");
        Some(
            WriterLease::acquire(
                &lake,
                &run_id(now),
                what,
                chrono::Duration::hours(LEASE_HOURS),
            )
            .await?,
        )
    } else {
        None
    };
    let started = std::time::Instant::now();
    let outcome = match cli.command {
        Command::Bronze {
            landing,
            batch_rows,
            compact_after_files,
        } => steps::bronze(&lake, landing, batch_rows, compact_after_files, now, json).await,
        Command::Pull {
            source,
            url,
            since,
            token,
            landing,
            attempts,
            backoff,
            timeout,
        } => {
            let options = paylake_pull::PullOptions {
                source: source.into(),
                url,
                since,
                token: token.map(paylake_pull::Token::new),
                landing,
                retry: paylake_pull::RetryPolicy {
                    attempts,
                    backoff: backoff.0.unwrap_or_default(),
                    timeout: timeout.0,
                },
                abort_after_pages: None,
            };
            steps::pull(&lake, options, json)
                .await
                .map(|()| steps::StepMetrics::none())
        }
        Command::Silver {
            job,
            expectations_dir,
        } => steps::silver(&lake, job, expectations_dir, now, json).await,
        Command::Gold {
            job,
            expectations_dir,
        } => steps::gold(&lake, job, expectations_dir, now, json).await,
        Command::Export {
            table,
            version,
            format,
            output,
            all_columns,
        } => steps::export(&lake, &table, version, &format, &output, all_columns, json)
            .await
            .map(|()| steps::StepMetrics::none()),
        Command::Sql {
            query,
            timeout,
            memory_limit,
            spill_dir,
        } => steps::sql(&lake, &query, timeout.0, memory_limit.0, spill_dir, json)
            .await
            .map(|()| steps::StepMetrics::none()),
        Command::Status => inspect::status(&lake, now, json)
            .await
            .map(|()| steps::StepMetrics::none()),
        Command::Schema => inspect::schema(&lake, json)
            .await
            .map(|()| steps::StepMetrics::none()),
        Command::Quarantine {
            action: QuarantineAction::Replay { table, sql_dir },
        } => steps::replay(&lake, &table, sql_dir, now, json).await,
        Command::History { table } => steps::history(&lake, &table, json)
            .await
            .map(|()| steps::StepMetrics::none()),
        Command::Vacuum { table, retain } => steps::vacuum(&lake, table.as_deref(), retain, json)
            .await
            .map(|()| steps::StepMetrics::none()),
        Command::Optimize { table } => steps::optimize(&lake, table.as_deref(), json)
            .await
            .map(|()| steps::StepMetrics::none()),
    };
    if let Some(lease) = lease {
        if let Err(e) = lease.release().await {
            tracing::warn!("could not release the writer lease: {e}");
        }
    }
    if let Some(step) = step {
        let record = steps::record_run(&lake, step, now, started.elapsed(), &outcome).await;
        if let Err(e) = record {
            tracing::warn!("could not record monitoring state: {e:#}");
        }
        if let Some(path) = &metrics_file {
            let written = paylake_quality::metrics::write_metrics_file(&lake, path).await;
            if let Err(e) = written {
                let error =
                    anyhow::anyhow!("cannot write the metrics file {}: {e}", path.display());
                // A failed run keeps its own exit code; the metrics problem is only reported.
                if outcome.is_err() || matches!(&outcome, Ok(m) if m.gate_failure.is_some()) {
                    eprintln!("error: {error:#}");
                } else {
                    return Err(usage(error));
                }
            }
        }
    }
    match outcome? {
        steps::StepMetrics {
            gate_failure: Some(message),
            ..
        } => Err(Failure {
            code: EXIT_GATE_FAILED,
            error: anyhow::anyhow!(message),
        }),
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(run(cli));
    // Work a stopped query left behind (e.g. after --timeout) must not keep the process alive.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            eprintln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}
