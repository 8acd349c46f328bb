//! `paylake`: the command line of the payment lakehouse.

mod cluster;
mod inspect;
mod sql;
mod steps;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use paylake_jobs::JobError;
use paylake_lake::lease::WriterLease;
use paylake_lake::Lake;
use sql::OutputFormat;

/// How long a writer lease lasts at most: longer than any step, short enough that a crashed
/// run on another host does not block the lake for long.
const LEASE_HOURS: i64 = 6;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the run failed (engine or storage error, broken invariant); nothing half-published
  2  usage or configuration error (unknown flag, no --lake or no lake there, missing landing
     folder, bad time, invalid PAYLAKE_LOG, an API that refuses the request with a 4xx, a table
     that was not built yet, a statement `paylake sql` refuses, an export target that is not a
     regular file, is inside the lake or has no folder)
  3  data quality gate failed: an error-severity expectation failed in Silver (Gold is not
     rebuilt) or in Gold (Gold is not committed)
  N  only with --nothing-new-exit-code N: the step found nothing new (e.g. 99 for Airflow)

Every flag that names a place also reads an environment variable (shown in each command's
--help), e.g. PAYLAKE_LAKE, PAYLAKE_LANDING. Logging: PAYLAKE_LOG (a tracing filter such as
`info` or `warn,paylake_bronze=debug`), PAYLAKE_LOG_FORMAT (text or json).

Example:
  paylake --lake lake/ bronze --landing data/ && paylake --lake lake/ silver && paylake --lake lake/ gold";

const BRONZE_EXAMPLE: &str = "\
Examples:
  paylake --lake lake/ bronze --landing data/
  PAYLAKE_LAKE=/srv/lake PAYLAKE_LANDING=/srv/landing paylake bronze --json --nothing-new-exit-code 99
  AWS_REGION=eu-west-1 paylake --lake s3://bank-lake/lake bronze --landing s3://bank-landing/incoming";
const PULL_EXAMPLE: &str = "\
Examples:
  paylake --lake lake/ pull fraud_labels --url https://labels.example/api/v1/labels --landing data/
  PAYLAKE_API_TOKEN=… paylake --lake lake/ pull fraud_labels --url $LABELS_URL --landing data/ --json";
const SILVER_EXAMPLE: &str = "\
Examples:
  paylake --lake lake/ silver
  paylake --lake lake/ silver --as-of '2024-11-17 00:00:00' --profile";
const GOLD_EXAMPLE: &str = "\
Examples:
  paylake --lake lake/ gold
  paylake --lake lake/ gold --as-of 2024-12-31 --label-maturity-days 30 --json";
const EXPORT_EXAMPLE: &str = "\
Examples:
  paylake --lake lake/ export gold.unified_payments --format csv --output unified_table.csv
  paylake --lake lake/ export gold.unified_payments --version 1 --format parquet --output v1.parquet";
const HISTORY_EXAMPLE: &str = "\
Example:
  paylake --lake lake/ history gold.unified_payments";
const VACUUM_EXAMPLE: &str = "\
Examples:
  paylake --lake lake/ vacuum
  paylake --lake lake/ vacuum gold.unified_payments --retain 36h";
const OPTIMIZE_EXAMPLE: &str = "\
Examples:
  paylake --lake lake/ optimize
  paylake --lake lake/ optimize bronze.payments";
const STATUS_EXAMPLE: &str = "\
Examples:
  paylake --lake lake/ status
  paylake --lake lake/ status --json";
const SCHEMA_EXAMPLE: &str = "\
Example:
  paylake --lake lake/ schema";
const QUARANTINE_EXAMPLE: &str = "\
Example:
  paylake --lake lake/ quarantine replay --table payments --sql-dir fixed-sql/";

const SQL_EXAMPLE: &str = "\
Examples:
  paylake --lake lake/ sql \"SELECT count(*) FROM gold.unified_payments\"
  paylake --lake lake/ sql --format csv --output fraud.csv \"SELECT * FROM gold.unified_payments WHERE fraud_flag\"
  paylake --lake lake/ sql -f checks.sql --format ndjson
  echo 'SHOW TABLES;' | paylake --lake lake/ sql
  paylake --lake lake/ sql         (interactive: .tables, \\d gold.unified_payments, .help)";

const SERVE_EXAMPLE: &str = "\
Examples:
  PAYLAKE_TOKEN=s3cret paylake --lake lake/ serve --bind 127.0.0.1:50051
  Python:  adbc_driver_flightsql.dbapi.connect(\"grpc://127.0.0.1:50051\",
             db_kwargs={\"adbc.flight.sql.authorization_header\": \"Bearer s3cret\"})
  JDBC:    jdbc:arrow-flight-sql://127.0.0.1:50051?useEncryption=false&token=s3cret";

const CLUSTER_EXAMPLE: &str = "\
Examples (every node must reach the lake at the same URL: s3://…, or one shared folder):
  paylake cluster scheduler --bind 0.0.0.0:50050 --external-host sched.internal
  paylake cluster executor --scheduler sched.internal:50050 --bind-host 0.0.0.0 \\
      --external-host worker1.internal --work-dir /mnt/scratch
  paylake --lake lake/ silver --engine ballista://sched.internal:50050";

#[derive(Parser, Debug)]
#[command(
    name = "paylake",
    version,
    about = "Medallion lakehouse for account-to-account payment fraud data",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// The lake: a folder, file:///absolute/path or s3://bucket/prefix (S3 settings from the
    /// AWS_* variables). Required; only `bronze` creates a lake, every other command needs one
    /// that exists.
    #[arg(long, global = true, env = "PAYLAKE_LAKE", value_name = "DIR|URI")]
    lake: Option<String>,
    /// Print the summary as one line of JSON, the last line on stdout (e.g. for Airflow XCom).
    #[arg(long, global = true)]
    json: bool,
    /// More logging on stderr (-v info, -vv debug); PAYLAKE_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// How log lines on stderr look: text, or one JSON object per line for log collectors.
    #[arg(long, global = true, env = "PAYLAKE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Land new files from a landing folder into Bronze (raw text + lineage, exactly once).
    #[command(after_help = BRONZE_EXAMPLE)]
    Bronze {
        /// Landing folder (flat take-home layout or one folder per source): a path or
        /// s3://bucket/prefix.
        #[arg(long, env = "PAYLAKE_LANDING", value_name = "DIR|URI")]
        landing: String,
        /// Rows per Parquet record batch (bounds memory).
        #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..))]
        batch_rows: u64,
        /// Compact a source's Bronze table once it holds more objects than this (0: never).
        #[arg(long, default_value_t = paylake_bronze::compact::DEFAULT_COMPACTION_THRESHOLD)]
        compact_after_files: usize,
        #[command(flatten)]
        nothing_new: NothingNewArgs,
        /// Also count as new the rows already in Bronze that became known after TIME (with
        /// --nothing-new-exit-code): for a scheduler whose downstream builds run --as-of, pass
        /// the as-of of the last successful one, so rows known after it are never left unbuilt.
        #[arg(long, value_name = "TIME", value_parser = parse_time, requires = "nothing_new_exit_code")]
        new_since: Option<DateTime<Utc>>,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
    /// Fetch a source's paginated JSON HTTP API into the landing zone, one JSON-lines file per
    /// page (named with its fetch time), resuming from the cursor saved in the lake.
    #[command(after_help = PULL_EXAMPLE)]
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
    #[command(after_help = SILVER_EXAMPLE)]
    Silver {
        #[command(flatten)]
        job: JobArgs,
        /// Read expectations from DIR/silver/*.toml instead of the built-in ones.
        #[arg(long, env = "PAYLAKE_EXPECTATIONS_DIR", value_name = "DIR")]
        expectations_dir: Option<PathBuf>,
        #[command(flatten)]
        nothing_new: NothingNewArgs,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
    /// Rebuild Gold from the Silver versions the last Silver gate audited, audit it with its
    /// invariants and expectations, and commit it only if the audit passes.
    #[command(after_help = GOLD_EXAMPLE)]
    Gold {
        #[command(flatten)]
        job: JobArgs,
        /// Days after which a payment with no known fraud label counts as legitimate (0-36500).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(0..=36_500))]
        label_maturity_days: u32,
        /// Read expectations from DIR/gold/*.toml instead of the built-in ones.
        #[arg(long, env = "PAYLAKE_EXPECTATIONS_DIR", value_name = "DIR")]
        expectations_dir: Option<PathBuf>,
        #[command(flatten)]
        nothing_new: NothingNewArgs,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
    /// Write a table (its latest version, or --version N) to a file.
    #[command(after_help = EXPORT_EXAMPLE)]
    Export {
        /// Table to export, e.g. gold.unified_payments.
        table: String,
        /// The Delta version to export (see `paylake history TABLE`).
        #[arg(long)]
        version: Option<u64>,
        #[arg(long, value_enum, default_value_t = ExportFormatArg::Csv)]
        format: ExportFormatArg,
        /// The file to write (outside the lake).
        #[arg(long, env = "PAYLAKE_EXPORT_OUTPUT", value_name = "FILE")]
        output: PathBuf,
        /// Export every column, not only the table's primary ones.
        #[arg(long)]
        all_columns: bool,
    },
    /// Run SQL over every table of the lake (bronze.*, silver.*, gold.*, quality.*):
    /// `table_version('gold.unified_payments', 3)` reads an older version. With no query and
    /// no --file it reads statements from stdin, or opens an interactive shell on a terminal
    /// (history, statements over several lines, `.tables`, `\d TABLE`, `.help`).
    /// Read-only: only SELECT, WITH, VALUES, EXPLAIN, SHOW and DESCRIBE run; anything else
    /// exits 2 unless --allow-writes.
    #[command(after_help = SQL_EXAMPLE)]
    Sql {
        /// Statements to run, separated by `;` (or use --file, or stdin).
        query: Option<String>,
        /// Run the statements of this file in order; the first failure stops it (exit 2 or 1,
        /// naming the file and line).
        #[arg(short = 'f', long, conflicts_with = "query")]
        file: Option<PathBuf>,
        /// How to write results (default: table, or from --output's extension; --json means
        /// json).
        #[arg(long, value_enum)]
        format: Option<OutputFormat>,
        /// Write results to this file (outside the lake; replaced only once complete).
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        /// Show at most N rows of each result in the table format, then "(M more rows …)".
        #[arg(long, value_name = "N")]
        max_rows: Option<usize>,
        /// Also allow session objects (CREATE EXTERNAL TABLE, CREATE VIEW, CREATE TABLE … AS,
        /// in memory and in this session only; DROP of them; SET) and COPY … TO a file outside
        /// the lake. The lake's tables and folder are never written.
        #[arg(long)]
        allow_writes: bool,
        /// The interactive shell's history (default: ~/.paylake_history).
        #[arg(long, env = "PAYLAKE_HISTORY_FILE")]
        history_file: Option<PathBuf>,
        #[command(flatten)]
        limits: QueryLimits,
    },
    /// Serve the lake over Arrow Flight SQL (read-only, like `paylake sql`) for notebooks
    /// (ADBC, e.g. Python's adbc-driver-flightsql) and BI tools (the Arrow Flight SQL JDBC or
    /// ODBC driver). Stops on Ctrl-C or SIGTERM after the calls in flight.
    #[command(after_help = SERVE_EXAMPLE)]
    Serve {
        /// Address to listen on; the default is this machine only. Listening on other
        /// interfaces without --token lets anyone there read the lake.
        #[arg(long, env = "PAYLAKE_BIND", default_value = paylake_serve::DEFAULT_BIND)]
        bind: std::net::SocketAddr,
        /// Require `authorization: Bearer TOKEN` on every call (prefer the environment
        /// variable: command lines are visible to other users).
        #[arg(long, env = "PAYLAKE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(flatten)]
        limits: QueryLimits,
    },
    /// Run a node of a Ballista cluster: `silver`/`gold --engine ballista://HOST:PORT` plan
    /// their models on it.
    #[command(subcommand, after_help = CLUSTER_EXAMPLE)]
    Cluster(cluster::ClusterCommand),
    /// The versions of a table: time, operation, run, as-of, rows, audit verdict.
    #[command(after_help = HISTORY_EXAMPLE)]
    History {
        /// e.g. gold.unified_payments
        table: String,
    },
    /// Delete files that no version within the retention needs (all tables, or one).
    #[command(after_help = VACUUM_EXAMPLE)]
    Vacuum {
        table: Option<String>,
        /// Keep files older versions need for this long: e.g. 7d, 36h, 0h (default 7d).
        #[arg(long, default_value = "7d", value_parser = parse_retention)]
        retain: chrono::Duration,
    },
    /// Compact small files into larger ones (all tables, or one).
    #[command(after_help = OPTIMIZE_EXAMPLE)]
    Optimize { table: Option<String> },
    /// One screen per lake: each table's update time, rows, freshness, runs, rules, rejects.
    #[command(after_help = STATUS_EXAMPLE)]
    Status,
    /// Per source: the contract version and every schema drift seen in landed files.
    #[command(after_help = SCHEMA_EXAMPLE)]
    Schema,
    /// Quarantined rows.
    #[command(after_help = QUARANTINE_EXAMPLE)]
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
    #[command(after_help = QUARANTINE_EXAMPLE)]
    Replay {
        /// Source table: payments, accounts, risk_feed or fraud_labels.
        #[arg(long)]
        table: String,
        /// Read models from DIR/silver/*.sql instead of the built-in ones (a rule fix).
        #[arg(long, env = "PAYLAKE_SQL_DIR", value_name = "DIR")]
        sql_dir: Option<PathBuf>,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
}

impl Command {
    /// Only Bronze and Pull create a lake (the steps that bring data in: Pull keeps its
    /// cursor there); every other command opens an existing lake, so a mistyped --lake is an
    /// error, never a new lake.
    fn creates_lake(&self) -> bool {
        matches!(self, Command::Bronze { .. } | Command::Pull { .. })
    }

    fn metrics_file(&self) -> Option<&std::path::Path> {
        match self {
            Command::Bronze { metrics, .. }
            | Command::Silver { metrics, .. }
            | Command::Gold { metrics, .. }
            | Command::Quarantine {
                action: QuarantineAction::Replay { metrics, .. },
            } => metrics.metrics_file.as_deref(),
            _ => None,
        }
    }

    /// The exit code asked for when the step finds nothing new (steps that can tell).
    fn nothing_new_exit_code(&self) -> Option<u8> {
        match self {
            Command::Bronze { nothing_new, .. }
            | Command::Silver { nothing_new, .. }
            | Command::Gold { nothing_new, .. } => nothing_new.nothing_new_exit_code,
            _ => None,
        }
    }
}

/// `--metrics-file`, on the steps that record a run.
#[derive(clap::Args, Debug, Clone)]
pub struct MetricsArgs {
    /// Write Prometheus metrics of every step here (node_exporter textfile collector format).
    #[arg(long, env = "PAYLAKE_METRICS_FILE", value_name = "PATH")]
    metrics_file: Option<PathBuf>,
}

/// `--nothing-new-exit-code`: for the steps that know whether their run found anything new,
/// so a scheduler can skip what follows (Airflow's BashOperator skips a task that exits 99).
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct NothingNewArgs {
    /// Exit with CODE (4-255) instead of 0 when the run found nothing new; e.g. 99 for
    /// Airflow, which then skips the downstream tasks. Off by default.
    #[arg(
        long,
        env = "PAYLAKE_NOTHING_NEW_EXIT_CODE",
        value_name = "CODE",
        value_parser = clap::value_parser!(u8).range(4..)
    )]
    pub nothing_new_exit_code: Option<u8>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ExportFormatArg {
    Csv,
    Parquet,
}

impl From<ExportFormatArg> for paylake_jobs::ExportFormat {
    fn from(format: ExportFormatArg) -> Self {
        match format {
            ExportFormatArg::Csv => Self::Csv,
            ExportFormatArg::Parquet => Self::Parquet,
        }
    }
}

/// What one ad-hoc query may take, in `paylake sql` and `paylake serve`.
#[derive(clap::Args, Debug)]
pub struct QueryLimits {
    /// Stop a statement after this long (e.g. 30s, 5m, 1h; 0 = no timeout): exit 1, or the
    /// call fails.
    #[arg(long, default_value = "5m", value_parser = parse_timeout)]
    timeout: Timeout,
    /// Memory a query may hold (e.g. 1GiB, 512MiB, or unlimited); sorts and aggregations spill
    /// beyond it, and a query that still cannot fit fails.
    #[arg(long, env = "PAYLAKE_MEMORY_LIMIT", default_value = "1GiB", value_parser = parse_memory_limit)]
    memory_limit: MemoryLimit,
    /// Folder for spill files (default: the system temp folder).
    #[arg(long, env = "PAYLAKE_SPILL_DIR")]
    spill_dir: Option<PathBuf>,
}

impl QueryLimits {
    fn engine(&self) -> paylake_jobs::EngineSettings {
        paylake_jobs::EngineSettings {
            memory_limit: self.memory_limit.0,
            spill_dir: self.spill_dir.clone(),
            ..paylake_jobs::EngineSettings::default()
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct JobArgs {
    /// Build only from facts known at or before this UTC time (RFC 3339 or YYYY-MM-DD[ HH:MM:SS]).
    #[arg(long, value_parser = parse_time)]
    as_of: Option<DateTime<Utc>>,
    /// Read models from DIR/<layer>/*.sql instead of the built-in ones.
    #[arg(long, env = "PAYLAKE_SQL_DIR", value_name = "DIR")]
    sql_dir: Option<PathBuf>,
    /// Memory the query engine may hold (e.g. 1GiB, 512MiB, or unlimited); sorts and
    /// aggregations spill to --spill-dir beyond it.
    #[arg(long, env = "PAYLAKE_MEMORY_LIMIT", default_value = "1GiB", value_parser = parse_memory_limit)]
    memory_limit: MemoryLimit,
    /// Folder for spill files and temporary models (default: the system temp folder).
    #[arg(long, env = "PAYLAKE_SPILL_DIR", value_name = "DIR")]
    spill_dir: Option<PathBuf>,
    /// Print what each model cost: seconds, rows in and out, peak engine memory, spilled bytes.
    #[arg(long)]
    profile: bool,
    /// Run one model under EXPLAIN ANALYZE (after the models it reads) and print the plan with
    /// its metrics; nothing is committed.
    #[arg(long, value_name = "MODEL")]
    explain: Option<String>,
    /// Rebuild every table of the layer from the layer below, ignoring the watermarks (by
    /// default a run rebuilds only the keys whose inputs changed since the last run).
    #[arg(long)]
    full_refresh: bool,
    /// Where the models run: `local` (this process) or `ballista://HOST:PORT`, a Ballista
    /// scheduler whose executors see the lake at the same URL (S3, or one shared folder).
    #[arg(
        long,
        env = "PAYLAKE_ENGINE",
        default_value = "local",
        value_name = "local|ballista://HOST:PORT"
    )]
    engine: paylake_cluster::QueryEngine,
}

impl JobArgs {
    /// A run with the defaults of every flag but the models folder.
    pub fn with_sql_dir(sql_dir: Option<PathBuf>) -> Self {
        Self {
            as_of: None,
            sql_dir,
            memory_limit: MemoryLimit(Some(paylake_jobs::engine::DEFAULT_MEMORY_LIMIT)),
            spill_dir: None,
            profile: false,
            explain: None,
            full_refresh: false,
            engine: paylake_cluster::QueryEngine::Local,
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

/// Opening an existing lake: a bad URI or no lake there is a usage error; a store that cannot
/// be reached (network, credentials refused) is a runtime failure.
fn open_failure(error: paylake_lake::LakeError) -> Failure {
    match error {
        paylake_lake::LakeError::Store { .. } => Failure {
            code: 1,
            error: error.into(),
        },
        other => usage(other),
    }
}

pub fn job_failure(error: JobError) -> Failure {
    use paylake_quality::QualityError;
    let code = match error {
        JobError::NotBuilt { .. }
        | JobError::Model { .. }
        | JobError::Io { .. }
        | JobError::Write { .. }
        | JobError::Output { .. }
        | JobError::ReadOnly { .. }
        | JobError::WriteRefused { .. }
        | JobError::Query(_)
        | JobError::NoSuchTable { .. }
        | JobError::Quality(QualityError::Expectations { .. })
        | JobError::Lake(paylake_lake::LakeError::NoSuchTable { .. })
        | JobError::Lake(paylake_lake::LakeError::NoLake { .. })
        | JobError::Cluster(paylake_cluster::ClusterError::Unsupported { .. }) => 2,
        JobError::GateClosed { .. } => EXIT_GATE_FAILED,
        _ => 1,
    };
    Failure {
        code,
        error: error.into(),
    }
}

/// Logging on stderr: PAYLAKE_LOG (a tracing filter) when set, else a level from -v. A filter
/// that does not parse is a configuration error: silently logging less hides problems.
fn init_logging(verbose: u8, format: LogFormat) -> Result<(), Failure> {
    let default = match verbose {
        0 => "warn",
        1 => "warn,paylake=info,paylake_bronze=info,paylake_jobs=info,paylake_lake=info,paylake_quality=info",
        _ => "info,paylake=debug,paylake_bronze=debug,paylake_jobs=debug,paylake_lake=debug,paylake_quality=debug",
    };
    let filter = match std::env::var("PAYLAKE_LOG") {
        Ok(text) if !text.trim().is_empty() => tracing_subscriber::EnvFilter::builder()
            .parse(&text)
            .map_err(|e| {
                usage(anyhow::anyhow!(
                    "PAYLAKE_LOG='{text}' is not a log filter ({e}); use e.g. info, debug or \
                     warn,paylake_bronze=debug"
                ))
            })?,
        Ok(_) | Err(std::env::VarError::NotPresent) => tracing_subscriber::EnvFilter::new(default),
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(usage(anyhow::anyhow!("PAYLAKE_LOG is not valid UTF-8")))
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
    Ok(())
}

pub fn run_id(now: DateTime<Utc>) -> String {
    format!(
        "{}-{:04x}",
        now.format("%Y%m%dT%H%M%SZ"),
        now.timestamp_subsec_micros() % 0x10000
    )
}

/// A `--json` summary: one line, so that the last line of stdout is the whole summary (what
/// Airflow's BashOperator pushes to XCom).
pub fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    println!("{}", serde_json::to_string(value)?);
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

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let metrics_file = cli.command.metrics_file().map(std::path::Path::to_path_buf);
    if let Some(path) = &metrics_file {
        check_metrics_path(path)?;
    }
    // A cluster node serves whatever lake its clients name: it opens none itself.
    let command = match cli.command {
        Command::Cluster(node) => return cluster::run(node).await.map(|()| ExitCode::SUCCESS),
        command => command,
    };
    let Some(uri) = cli.lake.as_deref() else {
        return Err(usage(anyhow::anyhow!(
            "no lake given: pass --lake DIR (e.g. --lake lake/) or set PAYLAKE_LAKE"
        )));
    };
    let lake = if command.creates_lake() {
        Lake::open(uri).map_err(usage)?
    } else {
        Lake::open_existing(uri).await.map_err(open_failure)?
    };
    let nothing_new_exit_code = command.nothing_new_exit_code();
    let now = Utc::now();
    let json = cli.json;
    let step = match &command {
        Command::Bronze { .. } => Some("bronze"),
        Command::Silver { job, .. } | Command::Gold { job, .. } if job.explain.is_some() => None,
        Command::Silver { .. } | Command::Quarantine { .. } => Some("silver"),
        Command::Gold { .. } => Some("gold"),
        _ => None,
    };
    let writes =
        step.is_some() || matches!(command, Command::Vacuum { .. } | Command::Optimize { .. });
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
    let outcome = match command {
        Command::Bronze {
            landing,
            batch_rows,
            compact_after_files,
            new_since,
            ..
        } => {
            let settings = steps::BronzeSettings {
                landing,
                batch_rows,
                compact_after_files,
                new_since,
            };
            steps::bronze(&lake, settings, now, json).await
        }
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
            ..
        } => steps::silver(&lake, job, expectations_dir, now, json).await,
        Command::Gold {
            job,
            label_maturity_days,
            expectations_dir,
            ..
        } => steps::gold(&lake, job, label_maturity_days, expectations_dir, now, json).await,
        Command::Export {
            table,
            version,
            format,
            output,
            all_columns,
        } => steps::export(
            &lake,
            &table,
            version,
            format.into(),
            &output,
            all_columns,
            json,
        )
        .await
        .map(|()| steps::StepMetrics::none()),
        Command::Sql {
            query,
            file,
            format,
            output,
            max_rows,
            allow_writes,
            history_file,
            limits,
        } => {
            let args = sql::SqlArgs {
                query,
                file,
                format,
                output,
                max_rows,
                history_file,
                options: paylake_jobs::shell::ShellOptions {
                    timeout: limits.timeout.0,
                    allow_writes,
                },
                engine: limits.engine(),
            };
            sql::sql(&lake, args, json)
                .await
                .map(|()| steps::StepMetrics::none())
        }
        // Dispatched above, before a lake is opened.
        Command::Cluster(node) => cluster::run(node)
            .await
            .map(|()| steps::StepMetrics::none()),
        Command::Serve {
            bind,
            token,
            limits,
        } => {
            let options = paylake_serve::ServeOptions {
                bind,
                token,
                engine: limits.engine(),
                timeout: limits.timeout.0,
            };
            serve(lake.clone(), options)
                .await
                .map(|()| steps::StepMetrics::none())
        }
        Command::Status => inspect::status(&lake, now, json)
            .await
            .map(|()| steps::StepMetrics::none()),
        Command::Schema => inspect::schema(&lake, json)
            .await
            .map(|()| steps::StepMetrics::none()),
        Command::Quarantine {
            action: QuarantineAction::Replay { table, sql_dir, .. },
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
    let metrics = outcome?;
    if let Some(message) = metrics.gate_failure {
        return Err(Failure {
            code: EXIT_GATE_FAILED,
            error: anyhow::anyhow!(message),
        });
    }
    match nothing_new_exit_code {
        Some(code) if metrics.nothing_new => {
            eprintln!("nothing new: exit {code} (--nothing-new-exit-code)");
            Ok(ExitCode::from(code))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `paylake serve`: binds (a busy port is a usage error), says where, serves until stopped.
async fn serve(lake: Lake, options: paylake_serve::ServeOptions) -> Result<(), Failure> {
    let listener = paylake_serve::bind(options.bind).await.map_err(usage)?;
    let secured = if options.token.is_some() {
        "bearer token required"
    } else {
        "no token"
    };
    if options.token.is_none() && !listener.address.ip().is_loopback() {
        tracing::warn!(
            "listening on {} without --token: anyone who reaches it can read the lake",
            listener.address
        );
    }
    // One line on stdout, for people and for scripts waiting for the server.
    let mut stdout = std::io::stdout();
    let _ = writeln!(
        stdout,
        "paylake serve: Arrow Flight SQL on grpc://{} (read-only, {secured}); Ctrl-C or SIGTERM \
         stops it",
        listener.address
    )
    .and_then(|()| stdout.flush());
    paylake_serve::serve(lake, listener, options, paylake_serve::stop_signal()).await?;
    Ok(())
}

/// Stack of each runtime thread (see `main`).
const PLANNER_STACK_BYTES: usize = 64 * 1024 * 1024;

/// jemalloc, not the system allocator: Arrow allocates and frees buffers by the million.
/// glibc spent a fifth of Bronze's time in malloc and free, and with its mmap threshold pinned
/// low (so that freed buffers went back to the system) Gold spent a quarter of its CPU time in
/// the kernel mapping and faulting pages. Measured at 10M payments, same machine and lake: Bronze
/// 23.0 s to 13.1 s, Silver 49.1 s to 39.3 s, Gold 94.5 s to 75.1 s; Gold's peak RSS 935 to
/// 1005 MiB. (mimalloc was faster still, but Gold peaked at 1.6 GiB under the 1 GiB pool.)
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts (`_RJEM_MALLOC_CONF` in the environment overrides
/// them).
/// - `dirty_decay_ms:2000`: freed pages go back to the system after two seconds instead of
///   10 s. With the default, Gold peaked at 1149 MiB of RSS at 10M payments. Against 500 ms
///   (measured with 21f8494's binary, one lake, back to back): Gold at 1M spent 1.3-1.7 s in the
///   kernel instead of 2.1-2.5 s, refaulting fewer freed pages; at 10M it took 52.7 s and
///   peaked at 858 MiB, against 56.5 s and 794 MiB.
/// - `thp:always` (and for jemalloc's own metadata): its memory in 2 MiB pages where the system
///   allows them on request (THP `madvise`). Arrow's all-NULL and zeroed buffers are read but
///   never written; once freed and reused, each 4 KiB page of them took a copy-on-write fault
///   and a TLB flush on every core. That was 7-11% of Gold's CPU time in flushes alone (perf); in
///   2 MiB pages it happens 512 times less often. Measured at 10M payments, same lake, back to
///   back: Gold 64.3 to 55.5 s (kernel time 25.6 to 16.3 s) and peak RSS 874 to 968 MiB;
///   Silver 36.3 to 33.0 s and 645 to 739 MiB.
#[export_name = "_rjem_malloc_conf"]
static ALLOCATOR_SETTINGS: &[u8; 51] = b"dirty_decay_ms:2000,thp:always,metadata_thp:always\0";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(Failure { code, error }) = init_logging(cli.verbose, cli.log_format) {
        eprintln!("error: {error:#}");
        return ExitCode::from(code);
    }
    // The query planner recurses over expressions: an incremental run's list of changed keys
    // can be long, so planning threads get more stack than the 2 MiB default.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(PLANNER_STACK_BYTES)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // The run itself is a task on the runtime's workers (their stack), not on the main thread.
    let outcome = match runtime.block_on(async { tokio::spawn(run(cli)).await }) {
        Ok(outcome) => outcome,
        Err(e) => Err(Failure {
            code: 1,
            error: anyhow::anyhow!("the run stopped unexpectedly: {e}"),
        }),
    };
    // Work a stopped query left behind (e.g. after --timeout) must not keep the process alive.
    runtime.shutdown_background();
    match outcome {
        Ok(code) => code,
        Err(Failure { code, error }) => {
            eprintln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}
