//! The Silver and Gold steps as one write-audit-publish pipeline each:
//! **build** every model of the layer into staged versions (invisible to readers), **audit** the
//! staged tables (invariant checks while building, then the layer's expectations), **commit**
//! them with the audit recorded in each commit, and write the gate verdict that names the
//! audited versions. Gold reads exactly the Silver versions the last passing Silver gate names.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::prelude::SessionContext;
use paylake_lake::delta::{self, CommitFacts};
use paylake_lake::layout::{Layer, TableName};
use paylake_lake::Lake;
use paylake_quality::{evaluate_suite, load_suites, GateVerdict, RuleResult, Suite};
use serde::Serialize;

use crate::engine::{ModelProfile, ProfiledWork};
use crate::incremental::{self, BuildMode, BuildPlan, BuildSummary, FullReason, Watermark};
use crate::models::load_models;
use crate::runner::{
    build_layer, commit_layer, discard_all, explain_model, remove_cluster_scratch, BuiltLayer,
    RunOptions,
};
use crate::{JobError, PublishedTable, SourceOutcome};

/// What one Silver or Gold run did: the typed result the command line renders.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub layer: String,
    pub run_id: String,
    pub as_of: Option<String>,
    /// The tables committed by this run (empty when the audit stopped the commit).
    pub tables: Vec<PublishedTable>,
    /// How each source's Bronze rows were classified (Silver only).
    pub sources: Vec<SourceOutcome>,
    /// Every expectation evaluated in the audit.
    pub results: Vec<RuleResult>,
    pub verdict: GateVerdict,
    /// The table versions this run read from the layer below (Gold: the audited Silver).
    pub read_versions: BTreeMap<String, u64>,
    /// Where the HTML data-quality report of this run was written.
    pub report: String,
    /// Newest event time per table built, as Unix seconds, for freshness monitoring.
    pub newest_event_seconds: BTreeMap<String, f64>,
    /// What each model, check and the audit cost, in run order.
    pub profile: Vec<ModelProfile>,
    /// Full, incremental (which keys) or nothing new, and the watermark committed.
    pub build: BuildSummary,
}

impl StepReport {
    /// Whether the run found nothing new to build (and committed nothing).
    pub fn nothing_new(&self) -> bool {
        self.build.mode == BuildMode::NothingNew
    }
}

impl StepReport {
    pub fn gate_passed(&self) -> bool {
        self.verdict.passed
    }
}

/// Newest value of a time column, as Unix seconds.
async fn newest_event(ctx: &SessionContext, table: &str, column: &str) -> Option<f64> {
    let sql = format!("SELECT date_part('epoch', max(\"{column}\")) AS newest FROM {table}");
    let batches = ctx.sql(&sql).await.ok()?.collect().await.ok()?;
    let batch = batches.first()?;
    let values = cast(batch.column(0), &DataType::Float64).ok()?;
    let values = values.as_primitive::<Float64Type>();
    (!values.is_empty() && values.is_valid(0)).then(|| values.value(0))
}

/// The time column that says how fresh a table is.
fn event_column(table: &TableName) -> &'static str {
    match (table.layer, table.name.as_str()) {
        (Layer::Silver, "payments") | (Layer::Gold, _) => "timestamp",
        _ => "known_at",
    }
}

/// Evaluates every suite of `layer` against the session (which holds the staged tables),
/// stores the results and the HTML report.
async fn audit(
    lake: &Lake,
    ctx: &SessionContext,
    suites: &[Suite],
    options: &RunOptions,
) -> Result<(Vec<RuleResult>, String), JobError> {
    let mut results = Vec::new();
    for suite in suites {
        results.extend(evaluate_suite(ctx, suite, options.effective_as_of()).await?);
    }
    paylake_quality::results::append_results(lake, &options.run_id, options.now, &results).await?;
    let report = paylake_quality::report::write_report(lake, &options.run_id, &results).await?;
    Ok((results, report))
}

/// Audits a built layer; an audit that cannot run discards everything staged.
async fn audit_or_discard(
    lake: &Lake,
    built: &mut BuiltLayer,
    suites: &[Suite],
    options: &RunOptions,
) -> Result<(Vec<RuleResult>, String), JobError> {
    let started = std::time::Instant::now();
    built.engine.pool.take_peak();
    let audited = audit(lake, &built.ctx, suites, options).await;
    if audited.is_err() {
        discard_all(lake, &built.staged).await;
    }
    let rules = audited.as_ref().map(|(r, _)| r.len()).unwrap_or(0);
    built.profile.push(ModelProfile {
        model: "expectations".into(),
        materialization: ProfiledWork::Audit,
        seconds: started.elapsed().as_secs_f64(),
        rows_in: 0,
        rows_out: rules as u64,
        peak_memory_bytes: built.engine.pool.take_peak() as u64,
        spilled_bytes: 0,
    });
    audited
}

/// Table → Delta version of what a run committed.
fn versions_of(tables: &[PublishedTable]) -> BTreeMap<String, u64> {
    tables
        .iter()
        .map(|t| (t.table.clone(), t.version))
        .collect()
}

fn verdict(layer: Layer, options: &RunOptions, results: &[RuleResult]) -> GateVerdict {
    let names = |keep: &dyn Fn(&RuleResult) -> bool| {
        results
            .iter()
            .filter(|r| keep(r))
            .map(|r| format!("{}.{}", r.table, r.rule))
            .collect::<Vec<_>>()
    };
    let blocking_rules = names(&|r| r.blocks());
    GateVerdict {
        layer: layer.name().into(),
        run_id: options.run_id.clone(),
        evaluated_at: options.now.to_rfc3339(),
        passed: blocking_rules.is_empty(),
        blocking_rules,
        warnings: names(&|r| !r.passed && !r.blocks()),
        versions: BTreeMap::new(),
    }
}

fn commit_facts(
    options: &RunOptions,
    passed: bool,
    read_versions: &BTreeMap<String, u64>,
    build: &BuildSummary,
) -> CommitFacts {
    let mut facts = CommitFacts::new();
    facts.insert(delta::INFO_RUN_ID.into(), options.run_id.clone().into());
    facts.insert(
        delta::INFO_AS_OF.into(),
        options
            .effective_as_of()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            .into(),
    );
    facts.insert(
        delta::INFO_AUDIT.into(),
        if passed { "passed" } else { "failed" }.into(),
    );
    if !read_versions.is_empty() {
        facts.insert(
            "paylake.read_versions".into(),
            serde_json::to_value(read_versions).unwrap_or_default(),
        );
    }
    facts.insert(delta::INFO_BUILD.into(), build.mode.name().into());
    facts.insert(
        delta::INFO_DEFINITIONS.into(),
        build.definitions.clone().into(),
    );
    // An --as-of build records no watermark: the next run rebuilds in full.
    if !build.watermark.is_empty() {
        facts.insert(
            delta::INFO_WATERMARK.into(),
            serde_json::to_value(&build.watermark).unwrap_or_default(),
        );
    }
    facts
}

/// The watermark a run commits: what it read, unless it is an --as-of build.
fn watermark_of(options: &RunOptions, read: &Watermark) -> Watermark {
    if options.as_of.is_some() {
        Watermark::new()
    } else {
        read.clone()
    }
}

/// The report of a run that found nothing new: nothing is built or committed, and the gate
/// keeps the verdict of the run that built the current tables.
fn nothing_new(
    layer: Layer,
    options: &RunOptions,
    gate: GateVerdict,
    build: BuildSummary,
) -> StepReport {
    StepReport {
        layer: layer.name().into(),
        run_id: options.run_id.clone(),
        as_of: None,
        tables: vec![],
        sources: vec![],
        results: vec![],
        verdict: gate,
        // Gold names the audited Silver versions its tables still hold.
        read_versions: if layer == Layer::Gold {
            build.watermark.clone()
        } else {
            BTreeMap::new()
        },
        report: String::new(),
        newest_event_seconds: BTreeMap::new(),
        profile: vec![],
        build,
    }
}

/// Plans a run: a layer whose gate was never written is built in full.
async fn plan_layer(
    lake: &Lake,
    layer: Layer,
    options: &RunOptions,
    read: &Watermark,
    suites: &[Suite],
) -> Result<(BuildPlan, BuildSummary, Option<GateVerdict>), JobError> {
    let models = load_models(layer, options.sql_dir.as_deref())?;
    let definitions = incremental::definitions_fingerprint(&models, suites);
    let gate = paylake_quality::read_gate(lake, layer).await?;
    let forced = match gate {
        None => Some(
            options
                .forced_full_build()
                .unwrap_or(FullReason::NoWatermark),
        ),
        Some(_) => options.forced_full_build(),
    };
    let plan = match layer {
        Layer::Gold => incremental::plan_gold(lake, &models, &definitions, read, forced).await?,
        _ => incremental::plan_silver(lake, &models, &definitions, read, forced).await?,
    };
    let summary = BuildSummary::new(&plan, &watermark_of(options, read), &definitions);
    Ok((plan, summary, gate))
}

async fn freshness(built: &BuiltLayer) -> BTreeMap<String, f64> {
    let mut newest = BTreeMap::new();
    for version in &built.staged {
        let table = version.table.to_string();
        let column = event_column(&version.table);
        if let Some(seconds) = newest_event(&built.ctx, &table, column).await {
            newest.insert(table, seconds);
        }
    }
    newest
}

/// Builds Silver, audits it, and commits it with the verdict. Silver is committed even when
/// an error-severity rule fails (so its quarantine can be inspected), but the gate then names
/// no versions for Gold to read; an audit that cannot run commits nothing.
pub async fn run_silver(
    lake: &Lake,
    options: &RunOptions,
    expectations_dir: Option<&Path>,
) -> Result<StepReport, JobError> {
    removing_cluster_scratch(lake, options, silver_step(lake, options, expectations_dir)).await
}

/// Runs `step`, then removes what it wrote to the lake's scratch on a cluster.
async fn removing_cluster_scratch<T>(
    lake: &Lake,
    options: &RunOptions,
    step: impl std::future::Future<Output = Result<T, JobError>>,
) -> Result<T, JobError> {
    let result = step.await;
    if !options.engine.query_engine.is_local() {
        remove_cluster_scratch(lake, &options.run_id).await;
    }
    result
}

async fn silver_step(
    lake: &Lake,
    options: &RunOptions,
    expectations_dir: Option<&Path>,
) -> Result<StepReport, JobError> {
    // Unreadable expectations are a configuration error: find out before building anything.
    let suites = load_suites(Layer::Silver.name(), expectations_dir)?;
    let bronze = incremental::bronze_versions(lake).await?;
    let (plan, build, gate) = plan_layer(lake, Layer::Silver, options, &bronze, &suites).await?;
    if let (BuildPlan::NothingNew, Some(gate)) = (&plan, gate) {
        return Ok(nothing_new(Layer::Silver, options, gate, build));
    }
    // Bronze is read at the versions the plan looked at.
    let pinned = bronze
        .iter()
        .filter_map(|(table, version)| Some((TableName::parse(table)?, *version)))
        .collect();
    let mut built = build_layer(lake, Layer::Silver, options, &pinned, &plan).await?;
    if matches!(plan, BuildPlan::Incremental(_)) {
        // The session may be a cluster's: hand Bronze back as the engine reads it.
        let lake = options.engine.lake_for_engine(lake);
        incremental::restore_bronze(&built.ctx, &lake, &bronze).await?;
    }
    let (results, report) = audit_or_discard(lake, &mut built, &suites, options).await?;
    let mut verdict = verdict(Layer::Silver, options, &results);
    let newest_event_seconds = freshness(&built).await;
    let facts = commit_facts(options, verdict.passed, &BTreeMap::new(), &build);
    let tables = commit_layer(lake, &built.staged, &facts).await?;
    if verdict.passed {
        verdict.versions = versions_of(&tables);
    }
    paylake_quality::write_gate(lake, Layer::Silver, &verdict).await?;
    Ok(StepReport {
        layer: Layer::Silver.name().into(),
        run_id: options.run_id.clone(),
        as_of: options.as_of.map(|t| t.to_rfc3339()),
        tables,
        sources: built.sources,
        results,
        verdict,
        read_versions: BTreeMap::new(),
        report,
        newest_event_seconds,
        profile: built.profile,
        build,
    })
}

/// The Silver versions the last passing Silver gate audited.
pub async fn audited_silver(lake: &Lake) -> Result<HashMap<TableName, u64>, JobError> {
    let Some(gate) = paylake_quality::read_gate(lake, Layer::Silver).await? else {
        return Err(JobError::NotBuilt {
            what: "silver".into(),
            hint: "run `paylake silver` first".into(),
        });
    };
    if !gate.passed {
        return Err(JobError::GateClosed {
            run_id: gate.run_id,
            blocking_rules: gate.blocking_rules,
        });
    }
    let mut versions = HashMap::new();
    for (name, version) in &gate.versions {
        let table = TableName::parse(name)
            .ok_or_else(|| JobError::Internal(format!("the Silver gate names '{name}'")))?;
        versions.insert(table, *version);
    }
    if versions.is_empty() {
        return Err(JobError::NotBuilt {
            what: "an audited silver".into(),
            hint: "run `paylake silver` again: the last gate names no table versions".into(),
        });
    }
    Ok(versions)
}

/// Builds Gold from the audited Silver versions, audits it (invariants and Gold
/// expectations) and commits it only when the audit passes.
pub async fn run_gold(
    lake: &Lake,
    options: &RunOptions,
    expectations_dir: Option<&Path>,
) -> Result<StepReport, JobError> {
    removing_cluster_scratch(lake, options, gold_step(lake, options, expectations_dir)).await
}

async fn gold_step(
    lake: &Lake,
    options: &RunOptions,
    expectations_dir: Option<&Path>,
) -> Result<StepReport, JobError> {
    let suites = load_suites(Layer::Gold.name(), expectations_dir)?;
    let silver = audited_silver(lake).await?;
    let read_versions: BTreeMap<String, u64> =
        silver.iter().map(|(t, v)| (t.to_string(), *v)).collect();
    tracing::info!("gold reads silver versions {read_versions:?}");
    let (plan, build, gate) =
        plan_layer(lake, Layer::Gold, options, &read_versions, &suites).await?;
    if let (BuildPlan::NothingNew, Some(gate)) = (&plan, gate) {
        return Ok(nothing_new(Layer::Gold, options, gate, build));
    }
    let mut built = build_layer(lake, Layer::Gold, options, &silver, &plan).await?;
    let (results, report) = audit_or_discard(lake, &mut built, &suites, options).await?;
    let mut verdict = verdict(Layer::Gold, options, &results);
    let newest_event_seconds = freshness(&built).await;
    let tables = if verdict.passed {
        let facts = commit_facts(options, true, &read_versions, &build);
        let tables = commit_layer(lake, &built.staged, &facts).await?;
        verdict.versions = versions_of(&tables);
        tables
    } else {
        discard_all(lake, &built.staged).await;
        vec![]
    };
    paylake_quality::write_gate(lake, Layer::Gold, &verdict).await?;
    Ok(StepReport {
        layer: Layer::Gold.name().into(),
        run_id: options.run_id.clone(),
        as_of: options.as_of.map(|t| t.to_rfc3339()),
        tables,
        sources: vec![],
        results,
        verdict,
        read_versions,
        report,
        newest_event_seconds,
        profile: built.profile,
        build,
    })
}

/// `EXPLAIN ANALYZE` of one model of `layer`, built on what a real run would read (Gold: the
/// audited Silver versions); nothing is committed.
pub async fn explain(
    lake: &Lake,
    layer: Layer,
    options: &RunOptions,
    model: &str,
) -> Result<String, JobError> {
    let pinned = match layer {
        Layer::Gold => audited_silver(lake).await?,
        _ => HashMap::new(),
    };
    removing_cluster_scratch(
        lake,
        options,
        explain_model(lake, layer, options, &pinned, model),
    )
    .await
}
