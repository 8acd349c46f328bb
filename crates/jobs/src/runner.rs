//! Runs the models of one layer: registers what they read, plans each SELECT with DataFusion and
//! publishes every materialized result as a new table version.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{Array, Int64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::{MemorySchemaProvider, TableProvider};
use datafusion::common::{ScalarValue, TableReference};
use datafusion::prelude::{col, lit, SessionConfig, SessionContext};
use paylake_lake::layout::Layer;
use paylake_lake::table::{self, TableName};
use paylake_lake::Lake;
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
    pub version: String,
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

#[derive(Debug, Clone, Serialize)]
pub struct LayerSummary {
    pub layer: String,
    pub run_id: String,
    pub as_of: Option<String>,
    pub tables: Vec<PublishedTable>,
    pub sources: Vec<SourceOutcome>,
}

/// A session that knows the lake's store and has the `bronze`, `silver` and `gold` schemas.
pub fn new_session(lake: &Lake) -> Result<SessionContext, JobError> {
    let config = SessionConfig::new()
        .with_information_schema(true)
        .set_str("datafusion.sql_parser.enable_ident_normalization", "true");
    let ctx = SessionContext::new_with_config(config);
    lake.register_with(&ctx)?;
    let catalog = ctx
        .catalog("datafusion")
        .ok_or_else(|| JobError::Internal("the default catalog is missing".into()))?;
    for schema in ["bronze", "silver", "gold", PARAMS_SCHEMA] {
        catalog.register_schema(schema, Arc::new(MemorySchemaProvider::new()))?;
    }
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

fn register(
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

/// Registers the Bronze tables; with `as_of`, source rows known later are invisible.
pub async fn register_bronze(
    ctx: &SessionContext,
    lake: &Lake,
    as_of: Option<DateTime<Utc>>,
) -> Result<(), JobError> {
    let sources: Vec<String> = paylake_contracts::all_contracts()?
        .into_iter()
        .map(|c| c.source)
        .collect();
    for (name, provider) in paylake_bronze::tables::bronze_providers(lake).await? {
        let provider = match as_of {
            Some(at) if sources.contains(&name) => ctx
                .read_table(provider)?
                .filter(col(paylake_bronze::schema::KNOWN_AT).lt_eq(lit(timestamp_literal(at))))?
                .into_view(),
            _ => provider,
        };
        register(ctx, Layer::Bronze, &name, provider)?;
    }
    Ok(())
}

/// Registers every published table of a layer under its name.
pub async fn register_published(
    ctx: &SessionContext,
    lake: &Lake,
    layer: Layer,
) -> Result<Vec<String>, JobError> {
    let mut names = Vec::new();
    for object in lake
        .list(&object_store::path::Path::from(layer.name()))
        .await?
    {
        let relative = lake.relative(&object.location);
        let parts: Vec<String> = relative.parts().map(|p| p.as_ref().to_string()).collect();
        if parts.len() != 3 || parts[2] != "_current.json" {
            continue;
        }
        let name = TableName::new(layer, parts[1].clone());
        if let Some(provider) = table::published_provider(lake, &name).await? {
            register(ctx, layer, &name.name, provider)?;
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// Builds every model of `layer` and publishes the materialized ones.
pub async fn run_layer(
    lake: &Lake,
    layer: Layer,
    options: &RunOptions,
) -> Result<LayerSummary, JobError> {
    let models = load_models(layer, options.sql_dir.as_deref())?;
    let ctx = new_session(lake)?;
    register_params(&ctx, options)?;
    register_bronze(&ctx, lake, options.as_of).await?;
    if layer == Layer::Gold {
        let silver = register_published(&ctx, lake, Layer::Silver).await?;
        if silver.is_empty() {
            return Err(JobError::NotBuilt {
                what: "silver".into(),
                hint: "run `paylake silver` first".into(),
            });
        }
    }

    let mut tables = Vec::new();
    for model in &models {
        tracing::info!(model = %model.origin, "building {}", model.qualified());
        let frame = ctx.sql(&model.sql).await.map_err(|source| JobError::Sql {
            model: model.origin.clone(),
            source,
        })?;
        if !model.materialized {
            register(&ctx, layer, &model.name, frame.into_view())?;
            continue;
        }
        let name = TableName::new(layer, model.name.clone());
        let mut properties = serde_json::Map::new();
        properties.insert("run_id".into(), options.run_id.clone().into());
        properties.insert("model".into(), model.origin.clone().into());
        if let Some(at) = options.as_of {
            properties.insert("as_of".into(), at.to_rfc3339().into());
        }
        let partition_by: Vec<&str> = model.partition_by.iter().map(String::as_str).collect();
        let sql_error = |e: paylake_lake::LakeError| match e {
            paylake_lake::LakeError::Engine { source, .. } => JobError::Sql {
                model: model.origin.clone(),
                source,
            },
            other => JobError::Lake(other),
        };
        let staged = table::stage(lake, &name, frame, &partition_by, properties)
            .await
            .map_err(sql_error)?;
        register(
            &ctx,
            layer,
            &model.name,
            table::provider_for(lake, &name, &staged)?,
        )?;
        if let Err(failure) = run_checks(&ctx, model).await {
            table::discard(lake, &name, &staged).await?;
            return Err(failure);
        }
        let pointer = table::commit(lake, &name, staged).await?;
        tables.push(PublishedTable {
            table: name.to_string(),
            rows: pointer.rows,
            version: pointer.version,
        });
    }

    let sources = if layer == Layer::Silver {
        source_outcomes(&ctx, &models).await?
    } else {
        vec![]
    };
    Ok(LayerSummary {
        layer: layer.name().to_string(),
        run_id: options.run_id.clone(),
        as_of: options.as_of.map(|t| t.to_rfc3339()),
        tables,
        sources,
    })
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

/// A session with every Bronze table and every published Silver and Gold table registered.
pub async fn lake_session(lake: &Lake) -> Result<SessionContext, JobError> {
    let ctx = new_session(lake)?;
    register_params(&ctx, &RunOptions::new("ad-hoc", Utc::now()))?;
    register_bronze(&ctx, lake, None).await?;
    register_published(&ctx, lake, Layer::Silver).await?;
    register_published(&ctx, lake, Layer::Gold).await?;
    Ok(ctx)
}
