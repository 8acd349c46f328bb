//! Runs the models of one layer: registers what they read, plans each SELECT with DataFusion and
//! publishes every materialized result as a new table version.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::AsArray;
use datafusion::arrow::array::{Array, Int64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::{MemorySchemaProvider, TableProvider};
use datafusion::common::{ScalarValue, TableReference};
use datafusion::execution::{SessionStateBuilder, TaskContext};
use datafusion::logical_expr::{EmptyRelation, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{col, lit, ParquetReadOptions, SessionConfig, SessionContext};
use paylake_lake::delta::{self, Replaces, StagedVersion};
use paylake_lake::layout::{self, Layer, TableName};
use paylake_lake::{catalog, Lake};
use serde::Serialize;

use crate::incremental::{self, BuildPlan, ChangedKeys, FullReason};

use crate::engine::{
    format_bytes, is_out_of_memory, plan_totals, Engine, EngineSettings, ModelProfile, ProfiledWork,
};
use crate::models::{load_models, Materialization, Model};
use crate::JobError;

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Build only from facts known at or before this time (default: everything landed).
    pub as_of: Option<DateTime<Utc>>,
    /// Read models from this folder instead of the built-in ones.
    pub sql_dir: Option<PathBuf>,
    pub run_id: String,
    /// The run's clock: `as_of` when given, else the start of the run.
    pub now: DateTime<Utc>,
    /// A payment older than this (at the as-of time) without a known fraud label is legit.
    pub label_maturity_days: u32,
    /// Memory limit, spill folder and parallelism of the query engine.
    pub engine: EngineSettings,
    /// Rebuild the layer from everything below it, whatever the watermarks say.
    pub full_refresh: bool,
}

impl RunOptions {
    pub fn new(run_id: impl Into<String>, now: DateTime<Utc>) -> Self {
        Self {
            as_of: None,
            sql_dir: None,
            run_id: run_id.into(),
            now,
            label_maturity_days: 60,
            engine: EngineSettings::default(),
            full_refresh: false,
        }
    }

    pub fn effective_as_of(&self) -> DateTime<Utc> {
        self.as_of.unwrap_or(self.now)
    }

    /// Why this run must be a full build whatever the watermarks say, if it must.
    pub fn forced_full_build(&self) -> Option<FullReason> {
        if self.as_of.is_some() {
            Some(FullReason::AsOf)
        } else if self.full_refresh {
            Some(FullReason::Requested)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PublishedTable {
    pub table: String,
    /// Rows of the table's new version.
    pub rows: u64,
    /// Rows this run wrote: all of them on a full build; on an incremental one the rebuilt
    /// keys' rows and the other rows of the files it replaced.
    pub rows_written: u64,
    /// The Delta version the commit made.
    pub version: u64,
}

/// How the Bronze rows of one source were classified by its staging model.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SourceOutcome {
    pub source: String,
    pub bronze_rows: u64,
    pub kept: u64,
    pub quarantined: u64,
    pub duplicates_dropped: u64,
    pub superseded: u64,
    pub conflicting_duplicates: u64,
    pub orphan_labels: Option<u64>,
}

/// A session over the lake's catalog (`bronze`, `silver`, `gold`, `quality`) with the
/// `params` schema, on the run's engine; `pinned` names table versions to read instead of the
/// latest.
pub async fn new_session(
    lake: &Lake,
    pinned: &HashMap<TableName, u64>,
    engine: &Engine,
) -> Result<SessionContext, JobError> {
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(engine.session_config())
        .with_runtime_env(Arc::clone(&engine.runtime))
        // Last, once sorts are placed: windows evaluated a few partitions at a time. A cluster
        // session plans on the scheduler, where this rule does not run.
        .with_physical_optimizer_rule(Arc::new(paylake_functions::ChunkedWindows))
        // The time-ordered point-in-time window: by day instead of one global sort.
        .with_physical_optimizer_rule(Arc::new(paylake_functions::TimeBucketedWindows))
        // `params.run` joins become literals (the optimizer makes several passes, so the
        // filters this leaves are pushed into the scans on the next one).
        .with_optimizer_rule(Arc::new(crate::constant_row::InlineConstantRow))
        .build();
    let mut ctx = paylake_cluster::session_on(&engine.settings.query_engine, state).await?;
    // After `session_on`: a cluster session's window functions are replaced by Ballista's.
    paylake_functions::register(&mut ctx)?;
    register_catalog(&ctx, lake, pinned).await?;
    Ok(ctx)
}

async fn register_catalog(
    ctx: &SessionContext,
    lake: &Lake,
    pinned: &HashMap<TableName, u64>,
) -> Result<(), JobError> {
    catalog::register_lake(ctx, lake, pinned).await?;
    let catalog = ctx
        .catalog("datafusion")
        .ok_or_else(|| JobError::Internal("the default catalog is missing".into()))?;
    catalog.register_schema(PARAMS_SCHEMA, Arc::new(MemorySchemaProvider::new()))?;
    Ok(())
}

/// Models read the run's parameters from `params.run`, a one-row table, so that the SQL stays
/// plain SELECTs: `as_of`, `label_maturity_days`, `maturity_cutoff` (as_of minus the maturity).
pub const PARAMS_SCHEMA: &str = "params";

pub fn register_params(ctx: &SessionContext, options: &RunOptions) -> Result<(), JobError> {
    let as_of = options.effective_as_of();
    let cutoff = chrono::Duration::try_days(i64::from(options.label_maturity_days))
        .and_then(|maturity| as_of.checked_sub_signed(maturity))
        .ok_or_else(|| JobError::Model {
            model: "params.run".into(),
            message: format!(
                "a label maturity of {} days before {as_of} is out of range",
                options.label_maturity_days
            ),
        })?;
    // A view of literals, not an in-memory table: a cluster cannot be sent one, and the local
    // optimizer turns a join with it into literals (`constant_row`).
    let values = vec![
        lit(timestamp_literal(as_of)).alias("as_of"),
        lit(i64::from(options.label_maturity_days)).alias("label_maturity_days"),
        lit(timestamp_literal(cutoff)).alias("maturity_cutoff"),
        lit(options.run_id.as_str()).alias("run_id"),
    ];
    let row = LogicalPlanBuilder::empty(true).project(values)?.build()?;
    let table = paylake_lake::files_scan::view(row);
    let reference = TableReference::partial(PARAMS_SCHEMA, "run");
    ctx.deregister_table(reference.clone())?;
    ctx.register_table(reference, table)?;
    Ok(())
}

/// Registers a provider under `layer.name` for this session only (it shadows the lake's table).
pub fn register(
    ctx: &SessionContext,
    layer: Layer,
    name: &str,
    provider: Arc<dyn TableProvider>,
) -> Result<(), JobError> {
    let reference = TableReference::partial(layer.name(), name);
    ctx.deregister_table(reference.clone())?;
    ctx.register_table(reference, provider)?;
    Ok(())
}

fn timestamp_literal(at: DateTime<Utc>) -> ScalarValue {
    ScalarValue::TimestampMicrosecond(Some(at.timestamp_micros()), Some("UTC".into()))
}

/// With `as_of`, hides the Bronze rows of every source known after it from this session.
pub async fn restrict_bronze(
    ctx: &SessionContext,
    as_of: Option<DateTime<Utc>>,
) -> Result<(), JobError> {
    let Some(at) = as_of else {
        return Ok(());
    };
    for contract in paylake_contracts::all_contracts()? {
        let table = layout::bronze_table(&contract.source);
        let frame = ctx
            .table(table.to_string())
            .await
            .map_err(|_| JobError::NotBuilt {
                what: table.to_string(),
                hint: "run `paylake bronze` first".into(),
            })?;
        let visible = frame
            .filter(col(paylake_bronze::schema::KNOWN_AT).lt_eq(lit(timestamp_literal(at))))?
            .into_view();
        register(ctx, Layer::Bronze, &contract.source, visible)?;
    }
    Ok(())
}

/// A layer built and checked but not committed: its tables' next versions are staged.
pub struct BuiltLayer {
    pub ctx: SessionContext,
    pub staged: Vec<StagedVersion>,
    pub sources: Vec<SourceOutcome>,
    pub models: Vec<Model>,
    /// What each model and check cost, in build order.
    pub profile: Vec<ModelProfile>,
    /// Holds the run's scratch folder (temporary models, spills) until the layer is dropped.
    pub engine: Engine,
    /// The keys this run rebuilds, when it is incremental.
    pub changes: Option<ChangedKeys>,
}

/// Builds every model of `layer`: views are planned inline, temporary models are computed once
/// into scratch files, materialized models are staged (written, not committed); each is
/// registered in the session so later models, invariant checks and expectations read it. A
/// broken invariant discards everything staged.
pub async fn build_layer(
    lake: &Lake,
    layer: Layer,
    options: &RunOptions,
    pinned: &HashMap<TableName, u64>,
    plan: &BuildPlan,
) -> Result<BuiltLayer, JobError> {
    let lake = &options.engine.lake_for_engine(lake);
    let mut built = start_layer(lake, layer, options, pinned).await?;
    if let BuildPlan::Incremental(changes) = plan {
        if layer == Layer::Silver {
            let versions = pinned.iter().map(|(t, v)| (t.to_string(), *v)).collect();
            incremental::restrict_bronze_to_keys(&built.ctx, lake, &versions, changes).await?;
        }
        built.changes = Some(changes.clone());
    }
    let models = std::mem::take(&mut built.models);
    let result = stage_models(lake, &mut built, layer, options, &models, None).await;
    built.models = models;
    if let Err(failure) = result {
        discard_all(lake, &built.staged).await;
        return Err(failure);
    }
    if layer == Layer::Silver {
        let started = std::time::Instant::now();
        built.engine.pool.take_peak();
        built.sources = source_outcomes(&built.ctx, &built.models).await?;
        built.profile.push(ModelProfile {
            model: "silver classification counts".into(),
            materialization: ProfiledWork::Query,
            seconds: started.elapsed().as_secs_f64(),
            rows_in: 0,
            rows_out: built.sources.len() as u64,
            peak_memory_bytes: built.engine.pool.take_peak() as u64,
            spilled_bytes: 0,
        });
    }
    Ok(built)
}

async fn start_layer(
    lake: &Lake,
    layer: Layer,
    options: &RunOptions,
    pinned: &HashMap<TableName, u64>,
) -> Result<BuiltLayer, JobError> {
    let models = load_models(layer, options.sql_dir.as_deref())?;
    let engine = Engine::new(&options.engine)?;
    let ctx = new_session(lake, pinned, &engine).await?;
    register_params(&ctx, options)?;
    restrict_bronze(&ctx, options.as_of).await?;
    Ok(BuiltLayer {
        ctx,
        staged: vec![],
        sources: vec![],
        models,
        profile: vec![],
        engine,
        changes: None,
    })
}

/// Builds the models `model` depends on, then runs it under `EXPLAIN ANALYZE` and returns
/// DataFusion's plan with metrics; nothing is committed.
pub async fn explain_model(
    lake: &Lake,
    layer: Layer,
    options: &RunOptions,
    pinned: &HashMap<TableName, u64>,
    model: &str,
) -> Result<String, JobError> {
    let lake = &options.engine.lake_for_engine(lake);
    let mut built = start_layer(lake, layer, options, pinned).await?;
    let models = std::mem::take(&mut built.models);
    let name = model
        .strip_prefix(&format!("{}.", layer.name()))
        .unwrap_or(model);
    let Some(target) = models.iter().find(|m| m.name == name) else {
        let known: Vec<String> = models.iter().map(Model::qualified).collect();
        return Err(JobError::Model {
            model: model.to_string(),
            message: format!(
                "no such {} model; known: {}",
                layer.name(),
                known.join(", ")
            ),
        });
    };
    let result = async {
        stage_models(lake, &mut built, layer, options, &models, Some(name)).await?;
        let sql = format!("EXPLAIN ANALYZE {}", strip_comments(&target.sql));
        let batches = plan_model(&built.ctx, target, &sql)
            .await
            .map_err(|source| engine_error(target, &options.engine, source))?
            .collect()
            .await
            .map_err(|source| engine_error(target, &options.engine, source))?;
        let mut text = String::new();
        for batch in &batches {
            let plans = batch.column(1).as_string::<i32>();
            for plan in plans.iter().flatten() {
                text.push_str(plan);
                text.push('\n');
            }
        }
        Ok(text)
    }
    .await;
    discard_all(lake, &built.staged).await;
    result
}

/// Plans `sql` (a model's, or a statement about it) with the model's own DataFusion settings;
/// the session's settings are restored afterwards (the frame keeps the state it was planned with).
async fn plan_model(
    ctx: &SessionContext,
    model: &Model,
    sql: &str,
) -> datafusion::error::Result<datafusion::prelude::DataFrame> {
    let state = ctx.state_ref();
    let mut previous = Vec::new();
    {
        let mut state = state.write();
        for (key, value) in &model.engine_settings {
            let before = state
                .config()
                .options()
                .entries()
                .into_iter()
                .find(|entry| &entry.key == key)
                .and_then(|entry| entry.value);
            state.config_mut().options_mut().set(key, value)?;
            previous.push((key.clone(), before));
        }
    }
    let planned = ctx.sql(sql).await;
    let mut state = state.write();
    for (key, before) in previous {
        if let Some(value) = before {
            state.config_mut().options_mut().set(&key, &value)?;
        }
    }
    planned
}

/// A model's SQL without its `--` comment lines (so it can follow `EXPLAIN ANALYZE`).
fn strip_comments(sql: &str) -> String {
    sql.lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Deletes the files of staged versions that will not be committed (best effort: `vacuum`
/// removes anything left).
pub async fn discard_all(lake: &Lake, staged: &[StagedVersion]) {
    for version in staged {
        if let Err(e) = delta::discard(lake, version).await {
            tracing::warn!(
                "could not remove the staged files of {}: {e}",
                version.table
            );
        }
    }
}

/// An engine failure while running `model`; running out of memory names the setting to raise.
fn engine_error(
    model: &Model,
    settings: &EngineSettings,
    source: datafusion::error::DataFusionError,
) -> JobError {
    if is_out_of_memory(&source) {
        JobError::OutOfMemory {
            model: model.qualified(),
            limit: settings
                .memory_limit
                .map(format_bytes)
                .unwrap_or_else(|| "unlimited".into()),
            reason: source.find_root().to_string(),
        }
    } else {
        JobError::Sql {
            model: model.origin.clone(),
            source,
        }
    }
}

/// Builds `models` in order into `built`; with `stop_before`, stops when that model is next.
async fn stage_models(
    lake: &Lake,
    built: &mut BuiltLayer,
    layer: Layer,
    options: &RunOptions,
    models: &[Model],
    stop_before: Option<&str>,
) -> Result<(), JobError> {
    for model in models {
        if stop_before == Some(model.name.as_str()) {
            return Ok(());
        }
        let ctx = &built.ctx;
        let started = std::time::Instant::now();
        let failed = |source| engine_error(model, &options.engine, source);
        // An engine error inside a lake write is the model failing (or running out of memory).
        let write_failed = |error| match error {
            paylake_lake::LakeError::Engine { source, .. } => failed(source),
            other => JobError::Lake(other),
        };
        let frame = plan_model(ctx, model, &model.sql).await.map_err(failed)?;
        if model.materialization == Materialization::View {
            register(ctx, layer, &model.name, frame.into_view())?;
            continue;
        }
        built.engine.pool.take_peak();
        // An incremental run builds a table's changed keys and the survivors of the files
        // holding them; everything else in the table stays as it is.
        let (frame, replaces) = match (&built.changes, &model.incremental_key) {
            (Some(changes), Some(key)) if model.materialization == Materialization::Table => {
                let keys = changes.keys.get(key).map(Vec::as_slice).unwrap_or(&[]);
                let name = TableName::new(layer, model.name.clone());
                incremental::rebuild_keys(ctx, lake, &name, frame, key, keys)
                    .await
                    .map_err(|e| match e {
                        JobError::Engine(source) => failed(source),
                        other => other,
                    })?
            }
            _ => (frame, Replaces::Everything),
        };
        // Views are checked inside the models that read them. Ballista plans a query that folds
        // to an empty relation as a result with no columns: such a model (it reads nothing) is
        // planned here, with its own schema.
        let mut known_empty = false;
        if !options.engine.query_engine.is_local() {
            let plan = frame.clone().into_optimized_plan().map_err(failed)?;
            paylake_cluster::check_plan(&model.qualified(), &plan)?;
            known_empty = matches!(
                plan,
                LogicalPlan::EmptyRelation(EmptyRelation {
                    produce_one_row: false,
                    ..
                })
            );
        }
        let task = Arc::new(frame.task_ctx());
        let plan: Arc<dyn ExecutionPlan> = if known_empty {
            Arc::new(EmptyExec::new(Arc::clone(frame.schema().inner())))
        } else {
            frame.create_physical_plan().await.map_err(failed)?
        };
        let rows_out = match model.materialization {
            Materialization::Temporary => {
                let (rows, location) = if options.engine.query_engine.is_local() {
                    let dir = built.engine.temporary_model_dir(&model.qualified());
                    let rows = write_temporary(Arc::clone(&plan), task, &dir)
                        .await
                        .map_err(failed)?;
                    (rows, format!("{}/", dir.display()))
                } else {
                    // Executors read it next: it goes where all of them can see it.
                    let dir = layout::cluster_model(&options.run_id, &model.qualified());
                    let rows = write_temporary_to_lake(Arc::clone(&plan), task, lake, &dir)
                        .await
                        .map_err(write_failed)?;
                    (rows, lake.folder_url(&dir))
                };
                let table = ctx
                    .read_parquet(location, ParquetReadOptions::default())
                    .await
                    .map_err(failed)?;
                register(ctx, layer, &model.name, table.into_view())?;
                rows
            }
            Materialization::Table | Materialization::View => {
                let name = TableName::new(layer, model.name.clone());
                // A partitioned table reaches its writers through bucket files in scratch
                // (see `delta::stage_plan`); a cluster session has no local folder it shares.
                let buckets = (!model.partition_by.is_empty()
                    && options.engine.query_engine.is_local())
                .then(|| {
                    built
                        .engine
                        .temporary_model_dir(&format!("{}.buckets", model.qualified()))
                });
                let version = delta::stage_plan(
                    lake,
                    &name,
                    Arc::clone(&plan),
                    task,
                    &model.partition_by,
                    &options.run_id,
                    buckets.as_deref(),
                )
                .await
                .map_err(write_failed)?;
                let version = StagedVersion {
                    replaces,
                    ..version
                };
                // Later models, checks and the audit read the table as it will be.
                let state = incremental::table_after_commit(ctx, lake, &version).await?;
                register(ctx, layer, &model.name, state)?;
                let rows = version.rows;
                built.staged.push(version);
                rows
            }
        };
        let (rows_in, spilled_bytes) = plan_totals(&plan);
        let profile = ModelProfile {
            model: model.qualified(),
            materialization: match model.materialization {
                Materialization::Temporary => ProfiledWork::Temporary,
                _ => ProfiledWork::Table,
            },
            seconds: started.elapsed().as_secs_f64(),
            rows_in,
            rows_out,
            peak_memory_bytes: built.engine.pool.take_peak() as u64,
            spilled_bytes,
        };
        tracing::info!(
            "built {} ({}): {} rows in {:.2}s, peak {} , spilled {}",
            profile.model,
            profile.materialization,
            profile.rows_out,
            profile.seconds,
            format_bytes(profile.peak_memory_bytes),
            format_bytes(profile.spilled_bytes)
        );
        built.profile.push(profile);
        if !model.checks.is_empty() {
            let started = std::time::Instant::now();
            run_checks(&built.ctx, model, &options.engine).await?;
            built.profile.push(ModelProfile {
                model: format!("{} checks", model.qualified()),
                materialization: ProfiledWork::Query,
                seconds: started.elapsed().as_secs_f64(),
                rows_in: 0,
                rows_out: 0,
                peak_memory_bytes: built.engine.pool.take_peak() as u64,
                spilled_bytes: 0,
            });
        }
    }
    Ok(())
}

/// Writes a temporary model's result as one Parquet file per output partition, each in its
/// own task; small row groups keep the writers' buffers (outside the memory pool) small.
async fn write_temporary(
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    dir: &std::path::Path,
) -> datafusion::error::Result<u64> {
    use datafusion::parquet::arrow::ArrowWriter;
    use futures::StreamExt;

    std::fs::create_dir_all(dir)?;
    let schema = plan.schema();
    let streams = datafusion::physical_plan::execute_stream_partitioned(plan, task)?;
    let mut writers = tokio::task::JoinSet::new();
    for (index, mut stream) in streams.into_iter().enumerate() {
        let path = dir.join(format!("part-{index:04}.parquet"));
        let schema = Arc::clone(&schema);
        writers.spawn(async move {
            let properties = paylake_lake::delta::scratch_writer_properties();
            let file = std::fs::File::create(&path)?;
            let mut writer = ArrowWriter::try_new(file, schema, Some(properties))?;
            let mut rows = 0u64;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                writer.write(&batch)?;
            }
            writer.close()?;
            Ok::<_, datafusion::error::DataFusionError>(rows)
        });
    }
    let mut rows = 0u64;
    while let Some(joined) = writers.join_next().await {
        rows += joined.map_err(|e| {
            datafusion::error::DataFusionError::Execution(format!("a writer task failed: {e}"))
        })??;
    }
    Ok(rows)
}

/// A temporary model of a cluster run, written into the lake's scratch for this run (one
/// Parquet object per output partition) so that every executor can read it.
async fn write_temporary_to_lake(
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    lake: &Lake,
    dir: &object_store::path::Path,
) -> paylake_lake::Result<u64> {
    use futures::StreamExt;
    let engine = |source| paylake_lake::LakeError::Engine {
        doing: format!("writing {dir}"),
        source,
    };
    let schema = plan.schema();
    let streams =
        datafusion::physical_plan::execute_stream_partitioned(plan, task).map_err(engine)?;
    let mut rows = 0u64;
    for (index, mut stream) in streams.into_iter().enumerate() {
        let path = dir.clone().join(format!("part-{index:04}.parquet"));
        let mut sink = paylake_lake::sink::ParquetObjectSink::create(
            lake,
            &path,
            Arc::clone(&schema),
            paylake_lake::delta::scratch_writer_properties(),
        )?;
        while let Some(batch) = stream.next().await {
            sink.write(&batch.map_err(engine)?).await?;
        }
        rows += sink.finish().await?.0;
    }
    Ok(rows)
}

/// Removes what a cluster run wrote to the lake's scratch (best effort: a leftover folder
/// holds nothing any table names).
pub async fn remove_cluster_scratch(lake: &Lake, run_id: &str) {
    let scratch = layout::cluster_scratch(run_id);
    let removed = async {
        for object in lake.list(&scratch).await? {
            lake.delete(&lake.relative(&object.location)).await?;
        }
        lake.prune_empty_folders(&scratch);
        Ok::<_, paylake_lake::LakeError>(())
    };
    if let Err(e) = removed.await {
        tracing::warn!("could not remove the run's scratch {scratch} from the lake: {e}");
    }
}

/// Commits every staged version of a layer, each with the run's facts; returns what was
/// published.
pub async fn commit_layer(
    lake: &Lake,
    staged: &[StagedVersion],
    facts: &delta::CommitFacts,
) -> Result<Vec<PublishedTable>, JobError> {
    let mut published = Vec::new();
    for version in staged {
        let committed = delta::commit_overwrite(lake, version, facts).await?;
        let rows = match version.replaces {
            Replaces::Everything => version.rows,
            Replaces::Files { .. } => delta::row_count(lake, &version.table, committed).await?,
        };
        published.push(PublishedTable {
            table: version.table.to_string(),
            rows,
            rows_written: version.rows,
            version: committed,
        });
    }
    Ok(published)
}

/// Runs a model's invariants against its staged result; the first broken one fails the build.
async fn run_checks(
    ctx: &SessionContext,
    model: &Model,
    settings: &EngineSettings,
) -> Result<(), JobError> {
    for check in &model.checks {
        let sql_error = |source| match engine_error(model, settings, source) {
            JobError::Sql { source, .. } => JobError::Sql {
                model: format!("{} check {}", model.origin, check.name),
                source,
            },
            other => other,
        };
        let frame = ctx.sql(&check.sql).await.map_err(sql_error)?;
        let batches = frame.collect().await.map_err(sql_error)?;
        let violations: usize = batches.iter().map(|b| b.num_rows()).sum();
        if violations > 0 {
            let sample = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                .map(|t| t.to_string())
                .unwrap_or_default();
            let sample: String = sample.lines().take(12).collect::<Vec<_>>().join("\n");
            return Err(JobError::CheckFailed {
                table: model.qualified(),
                check: check.name.clone(),
                violations,
                sample,
            });
        }
        tracing::info!("{}: check {} passed", model.qualified(), check.name);
    }
    Ok(())
}

/// Counts how each staging model classified its Bronze rows.
async fn source_outcomes(
    ctx: &SessionContext,
    models: &[Model],
) -> Result<Vec<SourceOutcome>, JobError> {
    let mut outcomes = Vec::new();
    for model in models {
        let Some(source) = model.name.strip_prefix("stg_") else {
            continue;
        };
        let counts = grouped_counts(
            ctx,
            &format!(
                "SELECT outcome, count(*) AS n FROM silver.{} GROUP BY outcome",
                model.name
            ),
        )
        .await?;
        let get = |k: &str| counts.get(k).copied().unwrap_or(0);
        let orphan_labels = if source == "fraud_labels" {
            let orphans = grouped_counts(
                ctx,
                "SELECT 'orphans' AS k, count(*) AS n FROM silver.fraud_labels WHERE is_orphan",
            )
            .await?;
            Some(orphans.get("orphans").copied().unwrap_or(0))
        } else {
            None
        };
        outcomes.push(SourceOutcome {
            source: source.to_string(),
            bronze_rows: counts.values().sum(),
            kept: get("kept"),
            quarantined: get("quarantined") + get("conflicting_duplicate"),
            duplicates_dropped: get("identical_duplicate"),
            superseded: get("superseded"),
            conflicting_duplicates: get("conflicting_duplicate"),
            orphan_labels,
        });
    }
    Ok(outcomes)
}

/// Runs a `SELECT key, count` query into a map.
pub async fn grouped_counts(
    ctx: &SessionContext,
    sql: &str,
) -> Result<BTreeMap<String, u64>, JobError> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let mut counts = BTreeMap::new();
    for batch in batches {
        let keys = cast(batch.column(0), &DataType::Utf8)?;
        let values = cast(batch.column(1), &DataType::Int64)?;
        let keys = keys
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| JobError::Internal("count keys are not text".into()))?;
        let values = values
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| JobError::Internal("counts are not integers".into()))?;
        for i in 0..batch.num_rows() {
            if keys.is_null(i) {
                continue;
            }
            counts.insert(keys.value(i).to_string(), values.value(i).max(0) as u64);
        }
    }
    Ok(counts)
}

/// A session over the lake's latest versions, for ad-hoc reads.
pub async fn lake_session(lake: &Lake) -> Result<SessionContext, JobError> {
    let config = SessionConfig::new()
        .with_information_schema(true)
        .set_str("datafusion.sql_parser.enable_ident_normalization", "true");
    let ctx = SessionContext::new_with_config(config);
    register_catalog(&ctx, lake, &HashMap::new()).await?;
    register_params(&ctx, &RunOptions::new("ad-hoc", Utc::now()))?;
    Ok(ctx)
}

/// A session over the lake's latest versions on `engine` (its memory pool and spill folder),
/// for ad-hoc reads such as `paylake sql` and `paylake export`.
pub async fn lake_session_on(lake: &Lake, engine: &Engine) -> Result<SessionContext, JobError> {
    let ctx = new_session(lake, &HashMap::new(), engine).await?;
    register_params(&ctx, &RunOptions::new("ad-hoc", Utc::now()))?;
    Ok(ctx)
}
