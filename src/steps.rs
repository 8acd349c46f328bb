//! The pipeline steps as the command line runs them: each returns the metrics it reports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use datafusion::arrow::array::{Array, Float64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;
use paylake_bronze::{run_bronze, BronzeOptions, BronzeSummary};
use paylake_jobs::{export_table, run_layer, ExportFormat, LayerSummary, RunOptions};
use paylake_lake::layout::Layer;
use paylake_lake::table::TableName;
use paylake_lake::Lake;
use paylake_quality::metrics::{RuleMetric, StepState, TableMetrics};
use paylake_quality::{evaluate_suite, load_suites, GateVerdict, RuleResult};

use crate::{job_failure, print_json, run_id, usage, Failure, JobArgs, EXIT_GATE_FAILED};

/// What a successful step reports to monitoring; a failed gate is reported, then exits 3.
#[derive(Debug, Default)]
pub struct StepMetrics {
    pub tables: Vec<TableMetrics>,
    pub rules: Vec<RuleMetric>,
    pub gate_failure: Option<String>,
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

pub async fn bronze(
    lake: &Lake,
    landing: PathBuf,
    batch_rows: u64,
    now: DateTime<Utc>,
    json: bool,
) -> Result<StepMetrics, Failure> {
    if !landing.is_dir() {
        return Err(usage(anyhow::anyhow!(
            "landing folder {} does not exist",
            landing.display()
        )));
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
        progress: !json,
    };
    let summary = run_bronze(lake, &options)
        .await
        .with_context(|| format!("bronze run into {}", lake.display()))?;
    if json {
        print_json(&summary)?;
    } else {
        print_bronze(&summary);
    }
    let tables = summary
        .sources
        .iter()
        .map(|s| TableMetrics {
            table: format!("bronze.{}", s.source),
            rows_read: s.lines_read,
            rows_written: s.rows_landed,
            rows_dead_lettered: s.rows_dead_lettered,
            files_processed: s.files_landed + s.files_rejected,
            files_skipped: s.files_skipped,
            ..Default::default()
        })
        .collect();
    Ok(StepMetrics {
        tables,
        ..Default::default()
    })
}

fn run_options(job: JobArgs, now: DateTime<Utc>) -> RunOptions {
    RunOptions {
        as_of: job.as_of,
        sql_dir: job.sql_dir,
        label_maturity_days: job.label_maturity_days,
        ..RunOptions::new(run_id(now), now)
    }
}

/// Newest value of a time column, as Unix seconds.
async fn newest_event(ctx: &SessionContext, table: &str, column: &str) -> Option<f64> {
    let sql = format!("SELECT date_part('epoch', max(\"{column}\")) AS newest FROM {table}");
    let batches = ctx.sql(&sql).await.ok()?.collect().await.ok()?;
    let batch = batches.first()?;
    let values = cast(batch.column(0), &DataType::Float64).ok()?;
    let values = values.as_any().downcast_ref::<Float64Array>()?;
    (!values.is_empty() && !values.is_null(0)).then(|| values.value(0))
}

/// Evaluates the Silver expectations, stores results and report, and writes the gate verdict.
async fn silver_gate(
    lake: &Lake,
    ctx: &SessionContext,
    options: &RunOptions,
    expectations_dir: Option<&Path>,
) -> Result<(Vec<RuleResult>, GateVerdict), Failure> {
    let suites = load_suites("silver", expectations_dir).map_err(usage)?;
    let evaluated_at = options.now;
    let mut all = Vec::new();
    for suite in &suites {
        let results = evaluate_suite(ctx, suite, options.effective_as_of()).await?;
        paylake_quality::results::append_results(
            lake,
            &options.run_id,
            evaluated_at,
            &suite.table,
            &results,
        )
        .await?;
        all.extend(results);
    }
    eprint!("{}", paylake_quality::results::render_text(&all));
    let report = paylake_quality::report::write_report(lake, &options.run_id, &all).await?;
    eprintln!("quality report: {report}");
    let verdict = GateVerdict {
        layer: "silver".into(),
        run_id: options.run_id.clone(),
        evaluated_at: evaluated_at.to_rfc3339(),
        passed: !all.iter().any(RuleResult::blocks),
        blocking_rules: all
            .iter()
            .filter(|r| r.blocks())
            .map(|r| format!("{}.{}", r.table, r.rule))
            .collect(),
        warnings: all
            .iter()
            .filter(|r| !r.passed && !r.blocks())
            .map(|r| format!("{}.{}", r.table, r.rule))
            .collect(),
    };
    paylake_quality::write_gate(lake, Layer::Silver, &verdict).await?;
    Ok((all, verdict))
}

async fn silver_metrics(
    ctx: &SessionContext,
    summary: &LayerSummary,
    results: &[RuleResult],
) -> Result<StepMetrics, Failure> {
    let mut tables = Vec::new();
    for s in &summary.sources {
        let newest = match s.source.as_str() {
            "payments" => newest_event(ctx, "silver.payments", "timestamp").await,
            "accounts" => newest_event(ctx, "silver.accounts", "known_at").await,
            "risk_feed" => newest_event(ctx, "silver.risk_feed", "known_at").await,
            _ => newest_event(ctx, "silver.fraud_labels", "known_at").await,
        };
        tables.push(TableMetrics {
            table: format!("silver.{}", s.source),
            rows_read: s.bronze_rows,
            rows_written: s.kept,
            rows_quarantined: s.quarantined,
            newest_event_seconds: newest,
            ..Default::default()
        });
    }
    let rules = results
        .iter()
        .map(|r| RuleMetric {
            table: r.table.clone(),
            rule: r.rule.clone(),
            failed: r.failed,
            passed: r.passed,
        })
        .collect();
    Ok(StepMetrics {
        tables,
        rules,
        gate_failure: None,
    })
}

pub async fn silver(
    lake: &Lake,
    job: JobArgs,
    expectations_dir: Option<PathBuf>,
    now: DateTime<Utc>,
    json: bool,
) -> Result<StepMetrics, Failure> {
    let options = run_options(job, now);
    let summary = run_layer(lake, Layer::Silver, &options)
        .await
        .map_err(job_failure)?;
    // One session over the freshly published Silver serves the gate and the metrics.
    let ctx = paylake_jobs::lake_session(lake)
        .await
        .map_err(job_failure)?;
    let (results, verdict) = silver_gate(lake, &ctx, &options, expectations_dir.as_deref()).await?;
    if json {
        print_json(&serde_json::json!({
            "layer": summary.layer,
            "run_id": summary.run_id,
            "as_of": summary.as_of,
            "tables": summary.tables,
            "sources": summary.sources,
            "quality": { "gate": verdict, "results": results },
        }))?;
    } else {
        print_layer(&summary);
    }
    let mut metrics = silver_metrics(&ctx, &summary, &results).await?;
    if !verdict.passed {
        metrics.gate_failure = Some(format!(
            "data quality gate failed: {} (Gold will not be rebuilt)",
            verdict.blocking_rules.join(", ")
        ));
    }
    Ok(metrics)
}

pub async fn gold(
    lake: &Lake,
    job: JobArgs,
    now: DateTime<Utc>,
    json: bool,
) -> Result<StepMetrics, Failure> {
    if let Some(verdict) = paylake_quality::read_gate(lake, Layer::Silver).await? {
        if !verdict.passed {
            return Err(Failure {
                code: EXIT_GATE_FAILED,
                error: anyhow::anyhow!(
                    "data quality gate failed: Silver run {} broke {}; Gold was not rebuilt",
                    verdict.run_id,
                    verdict.blocking_rules.join(", ")
                ),
            });
        }
    }
    let options = run_options(job, now);
    let summary = run_layer(lake, Layer::Gold, &options)
        .await
        .map_err(job_failure)?;
    if json {
        print_json(&summary)?;
    } else {
        print_layer(&summary);
    }
    let ctx = paylake_jobs::lake_session(lake)
        .await
        .map_err(job_failure)?;
    let mut tables = Vec::new();
    for t in &summary.tables {
        tables.push(TableMetrics {
            table: t.table.clone(),
            rows_written: t.rows,
            newest_event_seconds: newest_event(&ctx, &t.table, "timestamp").await,
            ..Default::default()
        });
    }
    Ok(StepMetrics {
        tables,
        ..Default::default()
    })
}

pub async fn export(
    lake: &Lake,
    table: &str,
    format: &str,
    output: &Path,
    all_columns: bool,
    json: bool,
) -> Result<(), Failure> {
    let name = TableName::parse(table).ok_or_else(|| {
        usage(anyhow::anyhow!(
            "'{table}' is not a table name (expected silver.<name> or gold.<name>)"
        ))
    })?;
    let format = ExportFormat::parse(format)
        .ok_or_else(|| usage(anyhow::anyhow!("unknown format {format}")))?;
    let rows = export_table(lake, &name, format, output, all_columns)
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

/// Every table of the lake, plus `quality.results`, for ad-hoc queries.
async fn query_session(lake: &Lake) -> Result<SessionContext, Failure> {
    let ctx = paylake_jobs::lake_session(lake)
        .await
        .map_err(job_failure)?;
    let catalog = ctx
        .catalog("datafusion")
        .ok_or_else(|| anyhow::anyhow!("the default catalog is missing"))?;
    catalog.register_schema(
        "quality",
        std::sync::Arc::new(datafusion::catalog::MemorySchemaProvider::new()),
    )?;
    let results = paylake_lake::table::folder_provider(
        lake,
        &paylake_lake::layout::quality_results_folder(),
        paylake_quality::results::results_schema(),
    )
    .await?;
    ctx.register_table(
        datafusion::common::TableReference::partial("quality", "results"),
        results,
    )?;
    Ok(ctx)
}

pub async fn sql(lake: &Lake, query: &str, json: bool) -> Result<(), Failure> {
    let ctx = query_session(lake).await?;
    let frame = ctx
        .sql(query)
        .await
        .map_err(|e| usage(anyhow::anyhow!("query: {e}")))?;
    if json {
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
    Ok(())
}

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
    let job = JobArgs {
        as_of: None,
        sql_dir,
        label_maturity_days: 60,
    };
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
