//! The pipeline steps as the command line runs them: each returns the metrics it reports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use datafusion::arrow::array::{Array, Float64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;
use paylake_bronze::{run_bronze, BronzeOptions, BronzeSummary, Landing};
use paylake_jobs::engine::format_bytes;
use paylake_jobs::incremental::BuildMode;
use paylake_jobs::{
    export_table, run_gold, run_silver, EngineSettings, ExportFormat, ModelProfile, RunOptions,
    SourceOutcome, StepReport,
};
use paylake_lake::delta;
use paylake_lake::layout::{Layer, TableName};
use paylake_lake::Lake;
use paylake_quality::metrics::{RuleMetric, StepState, TableMetrics};

use crate::{job_failure, print_json, run_id, usage, Failure, JobArgs, EXIT_GATE_FAILED};

/// What a successful step reports to monitoring; a failed gate is reported, then exits 3.
#[derive(Debug, Default)]
pub struct StepMetrics {
    pub tables: Vec<TableMetrics>,
    pub rules: Vec<RuleMetric>,
    pub gate_failure: Option<String>,
    /// The step found nothing new (Bronze: no row landed), for `--nothing-new-exit-code`.
    pub nothing_new: bool,
}

impl StepMetrics {
    pub fn none() -> Self {
        Self::default()
    }
}

/// Records the run for `paylake status` and the metrics file; a failed gate becomes exit 3.
pub async fn record_run(
    lake: &Lake,
    step: &str,
    started_at: DateTime<Utc>,
    elapsed: Duration,
    outcome: &Result<StepMetrics, Failure>,
) -> anyhow::Result<()> {
    let (success, label, tables, rules) = match outcome {
        Ok(m) if m.gate_failure.is_some() => {
            (false, "gate_failed", m.tables.clone(), m.rules.clone())
        }
        Ok(m) => (true, "ok", m.tables.clone(), m.rules.clone()),
        Err(f) if f.code == EXIT_GATE_FAILED => (false, "gate_failed", vec![], vec![]),
        Err(_) => (false, "failed", vec![], vec![]),
    };
    let state = StepState {
        step: step.to_string(),
        last_run_seconds: started_at.timestamp_micros() as f64 / 1e6,
        last_success_seconds: None,
        last_run_success: success,
        outcome: label.to_string(),
        duration_seconds: elapsed.as_secs_f64(),
        tables,
        rules,
    };
    paylake_quality::metrics::record_step(lake, state).await?;
    Ok(())
}

fn print_bronze(summary: &BronzeSummary) {
    for s in &summary.sources {
        println!(
            "bronze  {:<13} files {:>3} (landed {}, rejected {}, refused {}, skipped {})  lines read {:>6}  landed {:>6}  dead-lettered {:>4}  blank {:>3}  schema changes {}",
            s.source,
            s.files_seen,
            s.files_landed,
            s.files_rejected,
            s.files_refused,
            s.files_skipped,
            s.lines_read,
            s.rows_landed,
            s.rows_dead_lettered,
            s.blank_lines,
            s.schema_changes
        );
    }
    if summary.nothing_new() {
        println!("bronze  nothing new to land");
    }
}

fn print_sources(layer: &str, sources: &[SourceOutcome]) {
    for s in sources {
        let orphans = s
            .orphan_labels
            .map(|n| format!(", orphan labels {n}"))
            .unwrap_or_default();
        println!(
            "{}  {:<13} bronze rows {:>6} -> kept {}, quarantined {}, duplicates dropped {}, superseded {}{}",
            layer,
            s.source,
            s.bronze_rows,
            s.kept,
            s.quarantined,
            s.duplicates_dropped,
            s.superseded,
            orphans
        );
    }
}

/// What `paylake bronze` was asked to do.
pub struct BronzeSettings {
    /// A folder or `s3://bucket/prefix`.
    pub landing: String,
    pub batch_rows: u64,
    pub compact_after_files: usize,
    /// Rows known after this time count as new too (`--new-since`).
    pub new_since: Option<DateTime<Utc>>,
}

pub async fn bronze(
    lake: &Lake,
    settings: BronzeSettings,
    now: DateTime<Utc>,
    json: bool,
) -> Result<StepMetrics, Failure> {
    let BronzeSettings {
        landing,
        batch_rows,
        compact_after_files,
        new_since,
    } = settings;
    let landing = Landing::parse(&landing).map_err(usage)?;
    // A key prefix exists as soon as an object is put under it: only a folder can be missing.
    if let Landing::Folder(folder) = &landing {
        if !folder.is_dir() {
            return Err(usage(anyhow::anyhow!(
                "landing folder {} does not exist",
                folder.display()
            )));
        }
    }
    let abort_after_rows = match std::env::var("PAYLAKE_ABORT_AFTER_ROWS") {
        Ok(v) => Some(
            v.parse::<u64>()
                .map_err(|e| usage(anyhow::anyhow!("PAYLAKE_ABORT_AFTER_ROWS='{v}': {e}")))?,
        ),
        Err(_) => None,
    };
    let options = BronzeOptions {
        landing,
        batch_rows: usize::try_from(batch_rows).map_err(usage)?,
        ingested_at: now,
        batch_id: run_id(now),
        abort_after_rows,
        abort_before_file_log: std::env::var_os("PAYLAKE_ABORT_BEFORE_FILE_LOG").is_some(),
        progress: !json,
    };
    let summary = run_bronze(lake, &options)
        .await
        .with_context(|| format!("bronze run into {}", lake.display()))?;
    let compacted = paylake_bronze::compact::compact_fragmented_tables(lake, compact_after_files)
        .await
        .with_context(|| format!("compacting Bronze in {}", lake.display()))?;
    if json {
        print_json(&summary)?;
    } else {
        print_bronze(&summary);
    }
    for compaction in &compacted {
        eprintln!(
            "bronze  compacted {}: files {} -> {}",
            compaction.table, compaction.files_before, compaction.files_after
        );
    }
    let tables = summary
        .sources
        .iter()
        .map(|s| TableMetrics {
            table: format!("bronze.{}", s.source),
            rows_read: s.lines_read,
            rows_written: s.rows_landed,
            rows_dead_lettered: s.rows_dead_lettered,
            files_processed: s.files_landed + s.files_rejected + s.files_refused,
            files_skipped: s.files_skipped,
            ..Default::default()
        })
        .collect();
    let nothing_new = match new_since {
        _ if !summary.nothing_new() => false,
        Some(since) => paylake_bronze::filelog::rows_known_after(lake, since).await? == 0,
        None => true,
    };
    Ok(StepMetrics {
        tables,
        nothing_new,
        ..Default::default()
    })
}

fn run_options(job: &JobArgs, now: DateTime<Utc>) -> RunOptions {
    RunOptions {
        as_of: job.as_of,
        sql_dir: job.sql_dir.clone(),
        engine: EngineSettings {
            memory_limit: job.memory_limit.0,
            spill_dir: job.spill_dir.clone(),
            target_partitions: None,
            query_engine: job.engine.clone(),
        },
        full_refresh: job.full_refresh,
        ..RunOptions::new(run_id(now), now)
    }
}

/// The per-model cost table of `--profile`, like dbt's timing summary.
fn print_profile(profile: &[ModelProfile]) {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header([
            "model",
            "kind",
            "seconds",
            "rows in",
            "rows out",
            "peak memory",
            "spilled",
        ]);
    for p in profile {
        table.add_row([
            p.model.clone(),
            p.materialization.to_string(),
            format!("{:.2}", p.seconds),
            p.rows_in.to_string(),
            p.rows_out.to_string(),
            format_bytes(p.peak_memory_bytes),
            format_bytes(p.spilled_bytes),
        ]);
    }
    for index in 2..7 {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    let total: f64 = profile.iter().map(|p| p.seconds).sum();
    eprintln!("{table}\ntotal {total:.2}s");
}

/// `--explain MODEL`: the model's plan with metrics on stdout; nothing is committed.
async fn explain(
    lake: &Lake,
    layer: Layer,
    options: &RunOptions,
    model: &str,
) -> Result<StepMetrics, Failure> {
    let plan = paylake_jobs::explain(lake, layer, options, model)
        .await
        .map_err(job_failure)?;
    print!("{plan}");
    Ok(StepMetrics::none())
}

fn print_report(report: &StepReport) {
    let build = &report.build;
    match (build.mode, &build.reason) {
        (BuildMode::NothingNew, _) => eprintln!(
            "{}  nothing new since the last run: nothing built, nothing committed",
            report.layer
        ),
        (_, Some(reason)) => eprintln!("{}  full build: {reason}", report.layer),
        _ => {
            let keys: Vec<String> = build
                .changed_keys
                .iter()
                .map(|(column, n)| format!("{n} {column}"))
                .collect();
            eprintln!("{}  incremental build of {}", report.layer, keys.join(", "));
        }
    }
    if !report.results.is_empty() {
        eprint!("{}", paylake_quality::results::render_text(&report.results));
        eprintln!("quality report: {}", report.report);
    }
    if !report.read_versions.is_empty() {
        let read: Vec<String> = report
            .read_versions
            .iter()
            .map(|(table, version)| format!("{table}@{version}"))
            .collect();
        eprintln!("{}  read audited {}", report.layer, read.join(" "));
    }
    print_sources(&report.layer, &report.sources);
    for t in &report.tables {
        println!(
            "{}  {:<32} {:>8} rows  version {}",
            report.layer, t.table, t.rows, t.version
        );
    }
}

/// The metrics a Silver or Gold run reports, and its gate as exit 3 when it failed.
fn step_metrics(report: &StepReport) -> StepMetrics {
    let mut tables: Vec<TableMetrics> = report
        .sources
        .iter()
        .map(|s| {
            let table = format!("silver.{}", s.source);
            TableMetrics {
                newest_event_seconds: report.newest_event_seconds.get(&table).copied(),
                table,
                rows_read: s.bronze_rows,
                rows_written: s.kept,
                rows_quarantined: s.quarantined,
                ..Default::default()
            }
        })
        .collect();
    if report.sources.is_empty() {
        tables.extend(report.tables.iter().map(|t| TableMetrics {
            table: t.table.clone(),
            rows_written: t.rows,
            newest_event_seconds: report.newest_event_seconds.get(&t.table).copied(),
            ..Default::default()
        }));
    }
    let rules = report
        .results
        .iter()
        .map(|r| RuleMetric {
            table: r.table.clone(),
            rule: r.rule.clone(),
            failed: r.failed,
            passed: r.passed,
        })
        .collect();
    let gate_failure = (!report.gate_passed()).then(|| {
        let consequence = if report.layer == "silver" {
            "Gold will not be rebuilt"
        } else {
            "Gold was not committed; readers keep the previous version"
        };
        format!(
            "data quality gate failed: {} ({consequence})",
            report.verdict.blocking_rules.join(", ")
        )
    });
    StepMetrics {
        tables,
        rules,
        gate_failure,
        nothing_new: report.nothing_new(),
    }
}

pub async fn silver(
    lake: &Lake,
    job: JobArgs,
    expectations_dir: Option<PathBuf>,
    now: DateTime<Utc>,
    json: bool,
) -> Result<StepMetrics, Failure> {
    let options = run_options(&job, now);
    if let Some(model) = &job.explain {
        return explain(lake, Layer::Silver, &options, model).await;
    }
    let report = run_silver(lake, &options, expectations_dir.as_deref())
        .await
        .map_err(job_failure)?;
    if json {
        print_json(&report)?;
    } else {
        print_report(&report);
    }
    if job.profile {
        print_profile(&report.profile);
    }
    Ok(step_metrics(&report))
}

pub async fn gold(
    lake: &Lake,
    job: JobArgs,
    label_maturity_days: u32,
    expectations_dir: Option<PathBuf>,
    now: DateTime<Utc>,
    json: bool,
) -> Result<StepMetrics, Failure> {
    let options = RunOptions {
        label_maturity_days,
        ..run_options(&job, now)
    };
    if let Some(model) = &job.explain {
        return explain(lake, Layer::Gold, &options, model).await;
    }
    let report = run_gold(lake, &options, expectations_dir.as_deref())
        .await
        .map_err(job_failure)?;
    if json {
        print_json(&report)?;
    } else {
        print_report(&report);
    }
    if job.profile {
        print_profile(&report.profile);
    }
    Ok(step_metrics(&report))
}

/// `paylake pull`: fetches the API's pages into the landing folder.
pub async fn pull(
    lake: &Lake,
    mut options: paylake_pull::PullOptions,
    json: bool,
) -> Result<(), Failure> {
    if !options.landing.is_dir() {
        return Err(usage(anyhow::anyhow!(
            "landing folder {} does not exist",
            options.landing.display()
        )));
    }
    options.abort_after_pages = match std::env::var("PAYLAKE_PULL_ABORT_AFTER_PAGES") {
        Ok(v) => Some(
            v.parse::<u64>()
                .map_err(|e| usage(anyhow::anyhow!("PAYLAKE_PULL_ABORT_AFTER_PAGES='{v}': {e}")))?,
        ),
        Err(_) => None,
    };
    let report = match paylake_pull::pull(lake, &options).await {
        Ok(report) => report,
        Err(e) if e.is_refusal() => return Err(usage(e)),
        Err(e) => return Err(e.into()),
    };
    if json {
        return print_json(&report);
    }
    for file in &report.files {
        println!("pull  wrote {file}");
    }
    let resumed = report
        .resumed_from
        .as_deref()
        .map(|cursor| format!("  resumed at cursor {cursor}"))
        .unwrap_or_default();
    let since = report
        .since
        .as_deref()
        .map(|since| format!("  since {since}"))
        .unwrap_or_default();
    println!(
        "pull  {}  pages {} ({} written, {} empty)  items {}  retries {}{since}{resumed}",
        report.source,
        report.pages,
        report.pages - report.empty_pages,
        report.empty_pages,
        report.items,
        report.retries
    );
    Ok(())
}

pub async fn export(
    lake: &Lake,
    table: &str,
    version: Option<u64>,
    format: ExportFormat,
    output: &Path,
    all_columns: bool,
    json: bool,
) -> Result<(), Failure> {
    let name = TableName::parse(table).ok_or_else(|| {
        usage(anyhow::anyhow!(
            "'{table}' is not a table name (expected layer.table, e.g. gold.unified_payments)"
        ))
    })?;
    let rows = export_table(lake, &name, version, format, output, all_columns)
        .await
        .map_err(job_failure)?;
    if json {
        print_json(&serde_json::json!({
            "table": name.to_string(),
            "rows": rows,
            "output": output.display().to_string(),
        }))?;
    } else {
        println!("export  {name}  {rows} rows -> {}", output.display());
    }
    Ok(())
}

/// `paylake sql`: read-only queries on an engine with a memory limit, under a timeout.
/// Where each source's accepted rows live, and the column naming their file.
fn accepted_table(source: &str) -> Option<(&'static str, &'static str)> {
    match source {
        "payments" => Some(("silver.payments", "_source_file")),
        "accounts" => Some(("silver.accounts_history", "snapshot_file")),
        "risk_feed" => Some(("silver.risk_feed_history", "batch_file")),
        "fraud_labels" => Some(("silver.fraud_labels_history", "_source_file")),
        _ => None,
    }
}

async fn count(ctx: &SessionContext, sql: &str) -> Result<u64, Failure> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let batch = batches
        .first()
        .ok_or_else(|| anyhow::anyhow!("no count returned"))?;
    let values = cast(batch.column(0), &DataType::Float64)?;
    let values = values
        .as_any()
        .downcast_ref::<Float64Array>()
        .ok_or_else(|| anyhow::anyhow!("count is not numeric"))?;
    Ok(values.value(0) as u64)
}

/// Re-validates quarantined rows: rebuilds Silver with the current rules and contracts and
/// reports which of the previously quarantined rows now pass.
pub async fn replay(
    lake: &Lake,
    source: &str,
    sql_dir: Option<PathBuf>,
    now: DateTime<Utc>,
    json: bool,
) -> Result<StepMetrics, Failure> {
    let (accepted, file_column) = accepted_table(source).ok_or_else(|| {
        usage(anyhow::anyhow!(
            "unknown table '{source}' (payments, accounts, risk_feed or fraud_labels)"
        ))
    })?;
    let quarantine = format!("silver.{source}_quarantine");
    let before_ctx = paylake_jobs::lake_session(lake)
        .await
        .map_err(job_failure)?;
    let previous: Vec<(String, i64)> = {
        let sql = format!("SELECT _source_file, _source_line FROM {quarantine}");
        let frame = before_ctx.sql(&sql).await.map_err(|_| {
            usage(anyhow::anyhow!(
                "{quarantine} has not been built yet: run `paylake silver` first"
            ))
        })?;
        let mut rows = Vec::new();
        for batch in frame.collect().await? {
            let files = cast(batch.column(0), &DataType::Utf8)?;
            let lines = cast(batch.column(1), &DataType::Int64)?;
            let files = files
                .as_any()
                .downcast_ref::<datafusion::arrow::array::StringArray>()
                .ok_or_else(|| anyhow::anyhow!("file names are not text"))?;
            let lines = lines
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .ok_or_else(|| anyhow::anyhow!("line numbers are not integers"))?;
            for i in 0..batch.num_rows() {
                rows.push((files.value(i).to_string(), lines.value(i)));
            }
        }
        rows
    };
    let job = JobArgs::with_sql_dir(sql_dir);
    let metrics = silver(lake, job, None, now, json).await?;
    let ctx = paylake_jobs::lake_session(lake)
        .await
        .map_err(job_failure)?;
    let mut moved = 0u64;
    for (file, line) in &previous {
        let escaped = file.replace('\'', "''");
        moved += count(
            &ctx,
            &format!(
                "SELECT count(*) FROM {accepted} WHERE {file_column} = '{escaped}' AND _source_line = {line}"
            ),
        )
        .await?;
    }
    let still = count(&ctx, &format!("SELECT count(*) FROM {quarantine}")).await?;
    let line = format!(
        "replay  {source}: {} quarantined before, {moved} now pass and moved into {accepted}, {still} still quarantined",
        previous.len()
    );
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    Ok(metrics)
}

fn table_name(table: &str) -> Result<TableName, Failure> {
    TableName::parse(table).ok_or_else(|| {
        usage(anyhow::anyhow!(
            "'{table}' is not a table name (expected layer.table, e.g. gold.unified_payments)"
        ))
    })
}

/// Every table of the lake, or the one named.
async fn tables_or_all(lake: &Lake, table: Option<&str>) -> Result<Vec<TableName>, Failure> {
    match table {
        Some(table) => Ok(vec![table_name(table)?]),
        None => Ok(paylake_lake::catalog::all_tables(lake).await?),
    }
}

fn lake_failure(error: paylake_lake::LakeError) -> Failure {
    match error {
        paylake_lake::LakeError::NoSuchTable { .. } => usage(error),
        other => Failure::from(other),
    }
}

pub async fn history(lake: &Lake, table: &str, json: bool) -> Result<(), Failure> {
    let name = table_name(table)?;
    let entries = delta::history(lake, &name).await.map_err(lake_failure)?;
    if json {
        return print_json(&entries);
    }
    let mut rendered = text_table(&[
        "version",
        "time",
        "operation",
        "run",
        "as of",
        "rows",
        "audit",
    ]);
    for e in &entries {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        rendered.add_row(vec![
            e.version.to_string(),
            text(&e.timestamp),
            text(&e.operation),
            text(&e.run_id),
            text(&e.as_of),
            e.rows.map(|r| r.to_string()).unwrap_or_default(),
            text(&e.audit),
        ]);
    }
    println!("{name}\n{rendered}");
    Ok(())
}

pub async fn vacuum(
    lake: &Lake,
    table: Option<&str>,
    retain: chrono::Duration,
    json: bool,
) -> Result<(), Failure> {
    let mut deleted = Vec::new();
    for name in tables_or_all(lake, table).await? {
        let files = delta::vacuum(lake, &name, retain)
            .await
            .map_err(lake_failure)?;
        deleted.push((name.to_string(), files));
    }
    if json {
        let map: std::collections::BTreeMap<_, _> = deleted.into_iter().collect();
        return print_json(&serde_json::json!({ "files_deleted": map }));
    }
    for (name, files) in deleted {
        println!(
            "vacuum  {name:<32} {files} unreferenced file(s) older than {}h deleted",
            retain.num_hours()
        );
    }
    Ok(())
}

pub async fn optimize(lake: &Lake, table: Option<&str>, json: bool) -> Result<(), Failure> {
    let mut done = Vec::new();
    for name in tables_or_all(lake, table).await? {
        done.push(delta::optimize(lake, &name).await.map_err(lake_failure)?);
    }
    if json {
        return print_json(&done);
    }
    for c in &done {
        println!(
            "optimize  {:<32} files {} -> {}{}",
            c.table,
            c.files_before,
            c.files_after,
            c.version
                .map(|v| format!("  (version {v})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// A plain text table: columns sized to their content, no borders.
fn text_table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(header.to_vec());
    table
}
