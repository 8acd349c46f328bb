//! Runs the models of one layer: registers what they read, plans each SELECT with DataFusion and
//! publishes every materialized result as a new table version.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{Array, Int64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::{MemorySchemaProvider, TableProvider};
use datafusion::common::{ScalarValue, TableReference};
use datafusion::prelude::{col, lit, SessionConfig, SessionContext};
use paylake_lake::delta::{self, StagedVersion};
use paylake_lake::layout::{self, Layer, TableName};
use paylake_lake::{catalog, Lake};
use serde::Serialize;

use crate::models::load_models;
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
}

impl RunOptions {
    pub fn new(run_id: impl Into<String>, now: DateTime<Utc>) -> Self {
        Self {
            as_of: None,
            sql_dir: None,
            run_id: run_id.into(),
            now,
            label_maturity_days: 60,
        }
    }

    pub fn effective_as_of(&self) -> DateTime<Utc> {
        self.as_of.unwrap_or(self.now)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PublishedTable {
    pub table: String,
    pub rows: u64,
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
/// `params` schema; `pinned` names table versions to read instead of the latest.
pub async fn new_session(
    lake: &Lake,
    pinned: &HashMap<TableName, u64>,
) -> Result<SessionContext, JobError> {
    let config = SessionConfig::new()
        .with_information_schema(true)
        .set_str("datafusion.sql_parser.enable_ident_normalization", "true");
    let ctx = SessionContext::new_with_config(config);
    catalog::register_lake(&ctx, lake, pinned).await?;
    let catalog = ctx
        .catalog("datafusion")
        .ok_or_else(|| JobError::Internal("the default catalog is missing".into()))?;
    catalog.register_schema(PARAMS_SCHEMA, Arc::new(MemorySchemaProvider::new()))?;
    Ok(ctx)
}

/// Models read the run's parameters from `params.run`, a one-row table, so that the SQL stays
/// plain SELECTs: `as_of`, `label_maturity_days`, `maturity_cutoff` (as_of minus the maturity).
pub const PARAMS_SCHEMA: &str = "params";

pub fn register_params(ctx: &SessionContext, options: &RunOptions) -> Result<(), JobError> {
    use datafusion::arrow::array::{ArrayRef, Int64Array, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};
    use datafusion::arrow::record_batch::RecordBatch;
    let as_of = options.effective_as_of();
    let cutoff = as_of - chrono::Duration::days(i64::from(options.label_maturity_days));
    let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("as_of", utc.clone(), false),
        Field::new("label_maturity_days", DataType::Int64, false),
        Field::new("maturity_cutoff", utc, false),
        Field::new("run_id", DataType::Utf8, false),
    ]));
    let timestamp = |t: DateTime<Utc>| {
        Arc::new(TimestampMicrosecondArray::from(vec![t.timestamp_micros()]).with_timezone("UTC"))
            as ArrayRef
    };
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            timestamp(as_of),
            Arc::new(Int64Array::from(vec![i64::from(
                options.label_maturity_days,
            )])),
            timestamp(cutoff),
            Arc::new(StringArray::from(vec![options.run_id.as_str()])),
        ],
    )?;
    let table = datafusion::datasource::MemTable::try_new(schema, vec![vec![batch]])?;
    let reference = TableReference::partial(PARAMS_SCHEMA, "run");
    ctx.deregister_table(reference.clone())?;
    ctx.register_table(reference, Arc::new(table))?;
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
    pub models: Vec<crate::models::Model>,
}

/// Builds every model of `layer`: views are planned inline, materialized models are staged
/// (written, not committed) and registered in the session so later models, invariant checks
/// and expectations read the new versions. A broken invariant discards everything staged.
pub async fn build_layer(
    lake: &Lake,
    layer: Layer,
    options: &RunOptions,
    pinned: &HashMap<TableName, u64>,
) -> Result<BuiltLayer, JobError> {
    let models = load_models(layer, options.sql_dir.as_deref())?;
    let ctx = new_session(lake, pinned).await?;
    register_params(&ctx, options)?;
    restrict_bronze(&ctx, options.as_of).await?;

    let mut staged: Vec<StagedVersion> = Vec::new();
    let result = stage_models(lake, &ctx, layer, options, &models, &mut staged).await;
    if let Err(failure) = result {
        discard_all(lake, &staged).await;
        return Err(failure);
    }
    let sources = if layer == Layer::Silver {
        source_outcomes(&ctx, &models).await?
    } else {
        vec![]
    };
    Ok(BuiltLayer {
        ctx,
        staged,
        sources,
        models,
    })
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

async fn stage_models(
    lake: &Lake,
    ctx: &SessionContext,
    layer: Layer,
    options: &RunOptions,
    models: &[crate::models::Model],
    staged: &mut Vec<StagedVersion>,
) -> Result<(), JobError> {
    for model in models {
        let started = std::time::Instant::now();
        let frame = ctx.sql(&model.sql).await.map_err(|source| JobError::Sql {
            model: model.origin.clone(),
            source,
        })?;
        if !model.materialized {
            register(ctx, layer, &model.name, frame.into_view())?;
            continue;
        }
        let name = TableName::new(layer, model.name.clone());
        let sql_error = |e: paylake_lake::LakeError| match e {
            paylake_lake::LakeError::Engine { source, .. } => JobError::Sql {
                model: model.origin.clone(),
                source,
            },
            other => JobError::Lake(other),
        };
        let version = delta::stage(lake, &name, frame, &model.partition_by, &options.run_id)
            .await
            .map_err(sql_error)?;
        tracing::info!(
            "staged {name}: {} rows in {:.2}s",
            version.rows,
            started.elapsed().as_secs_f64()
        );
        register(
            ctx,
            layer,
            &model.name,
            delta::staged_provider(lake, &version)?,
        )?;
        staged.push(version);
        run_checks(ctx, model).await?;
    }
    Ok(())
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
        published.push(PublishedTable {
            table: version.table.to_string(),
            rows: version.rows,
            version: committed,
        });
    }
    Ok(published)
}

/// Runs a model's invariants against its staged result; the first broken one fails the build.
async fn run_checks(ctx: &SessionContext, model: &crate::models::Model) -> Result<(), JobError> {
    for check in &model.checks {
        let sql_error = |source| JobError::Sql {
            model: format!("{} check {}", model.origin, check.name),
            source,
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
    models: &[crate::models::Model],
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
    let ctx = new_session(lake, &HashMap::new()).await?;
    register_params(&ctx, &RunOptions::new("ad-hoc", Utc::now()))?;
    Ok(ctx)
}
