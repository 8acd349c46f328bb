//! `paylake`: the command line of the payment lakehouse.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use paylake_bronze::{run_bronze, BronzeOptions, BronzeSummary};
use paylake_jobs::{export_table, run_layer, ExportFormat, JobError, LayerSummary, RunOptions};
use paylake_lake::layout::Layer;
use paylake_lake::table::TableName;
use paylake_lake::Lake;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the run failed (bad lake data, engine or storage error); nothing half-published
  2  usage or configuration error (unknown flag, bad --lake, missing landing folder, bad time)";

#[derive(Parser, Debug)]
#[command(
    name = "paylake",
    version,
    about = "Medallion lakehouse for account-to-account payment fraud data",
    after_help = EXIT_CODES
)]
struct Cli {
    /// The lake: a folder (created if missing) or file:///absolute/path.
    #[arg(long, global = true, default_value = "lake/")]
    lake: String,
    /// Print the run summary as JSON on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
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
    },
    /// Rebuild the Silver tables from Bronze with the SQL models in sql/silver.
    Silver {
        #[command(flatten)]
        job: JobArgs,
    },
    /// Rebuild the Gold tables from Silver with the SQL models in sql/gold.
    Gold {
        #[command(flatten)]
        job: JobArgs,
    },
    /// Write a published table to a file.
    Export {
        /// Table to export, e.g. gold.unified_payments.
        table: String,
        #[arg(long, default_value = "csv", value_parser = ["csv", "parquet"])]
        format: String,
        #[arg(long)]
        output: PathBuf,
        /// Export every column, not only the table's primary ones.
        #[arg(long)]
        all_columns: bool,
    },
    /// Run an ad-hoc SQL query over every table of the lake (bronze.*, silver.*, gold.*).
    Sql { query: String },
}

#[derive(clap::Args, Debug)]
struct JobArgs {
    /// Build only from facts known at or before this UTC time (RFC 3339 or YYYY-MM-DD[ HH:MM:SS]).
    #[arg(long, value_parser = parse_time)]
    as_of: Option<DateTime<Utc>>,
    /// Read models from DIR/<layer>/*.sql instead of the built-in ones.
    #[arg(long)]
    sql_dir: Option<PathBuf>,
    /// Days after which a payment with no known fraud label counts as legitimate.
    #[arg(long, default_value_t = 60)]
    label_maturity_days: u32,
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
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure {
            code: 1,
            error: error.into(),
        }
    }
}

fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: error.into(),
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "warn,paylake=info,paylake_bronze=info,paylake_jobs=info,paylake_lake=info",
        _ => "info,paylake=debug,paylake_bronze=debug,paylake_jobs=debug,paylake_lake=debug",
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

fn run_id(now: DateTime<Utc>) -> String {
    format!(
        "{}-{:04x}",
        now.format("%Y%m%dT%H%M%SZ"),
        now.timestamp_subsec_micros() % 0x10000
    )
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_bronze(summary: &BronzeSummary) {
    for s in &summary.sources {
        println!(
            "bronze  {:<13} files {:>3} (landed {}, rejected {}, skipped {})  lines read {:>6}  landed {:>6}  dead-lettered {:>4}  schema changes {}",
            s.source,
            s.files_seen,
            s.files_landed,
            s.files_rejected,
            s.files_skipped,
            s.lines_read,
            s.rows_landed,
            s.rows_dead_lettered,
            s.schema_changes
        );
    }
    if summary.rows_landed() == 0 {
        println!("bronze  nothing new to land");
    }
}

fn print_layer(summary: &LayerSummary) {
    for s in &summary.sources {
        let orphans = s
            .orphan_labels
            .map(|n| format!(", orphan labels {n}"))
            .unwrap_or_default();
        println!(
            "{}  {:<13} bronze rows {:>6} -> kept {}, quarantined {}, duplicates dropped {}, superseded {}{}",
            summary.layer,
            s.source,
            s.bronze_rows,
            s.kept,
            s.quarantined,
            s.duplicates_dropped,
            s.superseded,
            orphans
        );
    }
    for t in &summary.tables {
        println!("{}  {:<32} {:>8} rows", summary.layer, t.table, t.rows);
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let lake = Lake::open(&cli.lake).map_err(usage)?;
    let now = Utc::now();
    match cli.command {
        Command::Bronze {
            landing,
            batch_rows,
        } => {
            if !landing.is_dir() {
                return Err(usage(anyhow::anyhow!(
                    "landing folder {} does not exist",
                    landing.display()
                )));
            }
            let abort_after_rows =
                match std::env::var("PAYLAKE_ABORT_AFTER_ROWS") {
                    Ok(v) => Some(v.parse::<u64>().map_err(|e| {
                        usage(anyhow::anyhow!("PAYLAKE_ABORT_AFTER_ROWS='{v}': {e}"))
                    })?),
                    Err(_) => None,
                };
            let options = BronzeOptions {
                landing,
                batch_rows: usize::try_from(batch_rows).map_err(usage)?,
                ingested_at: now,
                batch_id: run_id(now),
                abort_after_rows,
                progress: !cli.json,
            };
            let summary = run_bronze(&lake, &options)
                .await
                .with_context(|| format!("bronze run into {}", lake.display()))?;
            if cli.json {
                print_json(&summary)?;
            } else {
                print_bronze(&summary);
            }
        }
        Command::Silver { job } => run_job(&lake, Layer::Silver, job, now, cli.json).await?,
        Command::Gold { job } => run_job(&lake, Layer::Gold, job, now, cli.json).await?,
        Command::Export {
            table,
            format,
            output,
            all_columns,
        } => {
            let name = TableName::parse(&table).ok_or_else(|| {
                usage(anyhow::anyhow!(
                    "'{table}' is not a table name (expected silver.<name> or gold.<name>)"
                ))
            })?;
            let format = ExportFormat::parse(&format)
                .ok_or_else(|| usage(anyhow::anyhow!("unknown format {format}")))?;
            let rows = export_table(&lake, &name, format, &output, all_columns)
                .await
                .map_err(job_failure)?;
            if cli.json {
                print_json(&serde_json::json!({
                    "table": name.to_string(),
                    "rows": rows,
                    "output": output.display().to_string(),
                }))?;
            } else {
                println!("export  {name}  {rows} rows -> {}", output.display());
            }
        }
        Command::Sql { query } => {
            let ctx = paylake_jobs::lake_session(&lake).await?;
            let frame = ctx
                .sql(&query)
                .await
                .map_err(|e| usage(anyhow::anyhow!("query: {e}")))?;
            if cli.json {
                let batches = frame.collect().await?;
                // Explicit nulls: a NULL column is still present in every object.
                let mut writer = datafusion::arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, datafusion::arrow::json::writer::JsonArray>(Vec::new());
                for batch in &batches {
                    writer.write(batch)?;
                }
                writer.finish()?;
                let text = String::from_utf8(writer.into_inner())?;
                println!("{}", if text.is_empty() { "[]" } else { &text });
            } else {
                frame.show().await?;
            }
        }
    }
    Ok(())
}

fn job_failure(error: JobError) -> Failure {
    let code = match error {
        JobError::NotBuilt { .. } | JobError::Model { .. } => 2,
        _ => 1,
    };
    Failure {
        code,
        error: error.into(),
    }
}

async fn run_job(
    lake: &Lake,
    layer: Layer,
    job: JobArgs,
    now: DateTime<Utc>,
    json: bool,
) -> Result<(), Failure> {
    let options = RunOptions {
        as_of: job.as_of,
        sql_dir: job.sql_dir,
        label_maturity_days: job.label_maturity_days,
        ..RunOptions::new(run_id(now), now)
    };
    let summary = run_layer(lake, layer, &options)
        .await
        .map_err(job_failure)?;
    if json {
        print_json(&summary)?;
    } else {
        print_layer(&summary);
    }
    Ok(())
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
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            eprintln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}
