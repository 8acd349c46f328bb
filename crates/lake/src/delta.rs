//! Delta Lake tables: every lake table is one, rooted at the path [`layout::table_root`] gives.
//!
//! Two ways in:
//! - rebuilt tables (Silver, Gold) are written **write-audit-publish**: [`stage`] writes the new
//!   version's files under `stage-<id>/` inside the table (no reader sees them: the log does not
//!   name them), the caller audits them through [`staged_provider`], and [`commit_overwrite`]
//!   makes them the table's next version in one atomic log entry carrying the audit in its
//!   commit info. A build that dies before its commit leaves only unreferenced files, which
//!   `vacuum` removes;
//! - append-only tables (Bronze, dead letter, file log, quality results) get whole Parquet
//!   objects added by [`append_objects`] or rows by [`append_batches`]; an application
//!   transaction id (`txn`) makes an append happen at most once per landing file.
//!
//! Readers resolve a table through its log ([`provider`]), so they see one whole version, and
//! files of older versions stay until `vacuum` removes them after the retention period.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU64;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{provider_as_source, MemTable};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::properties::{WriterProperties, WriterPropertiesBuilder};
use datafusion::parquet::schema::types::ColumnPath;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::DataFrame;
use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake_core::kernel::scalars::ScalarExt;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake_core::kernel::{Action, Add, MetadataExt, StructType, Transaction};
use deltalake_core::logstore::{
    default_logstore, logstore_factories, LogStore, LogStoreFactory, ObjectStoreRef, StorageConfig,
};
use deltalake_core::operations::vacuum::VacuumMode;
use deltalake_core::operations::write::writer::{DeltaWriter, WriterConfig};
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::table::config::TablePropertiesExt;
use deltalake_core::{DeltaTable, DeltaTableBuilder, DeltaTableError, TableProperty};
use futures::{StreamExt, TryStreamExt};
use indexmap::IndexMap;
use object_store::path::Path;
use serde::Serialize;
use url::Url;

use crate::files_scan::{self, VersionFiles};
use crate::layout::{self, Layer, TableName};
use crate::{Lake, LakeError, Result, TableScans};

/// Commit-info keys paylake writes into every commit it makes (beside Delta's own).
pub const INFO_RUN_ID: &str = "paylake.run_id";
pub const INFO_AS_OF: &str = "paylake.as_of";
pub const INFO_ROWS: &str = "paylake.rows";
pub const INFO_AUDIT: &str = "paylake.audit";
/// What a Silver or Gold commit consumed from the layer below: table name → version read.
pub const INFO_WATERMARK: &str = "paylake.watermark";
/// A fingerprint of the models and expectations a Silver or Gold commit was built and audited
/// with: when they change, the next run rebuilds the layer in full.
pub const INFO_DEFINITIONS: &str = "paylake.definitions";
/// How a Silver or Gold commit was built: `full` (from everything below) or `incremental`.
pub const INFO_BUILD: &str = "paylake.build";

/// Facts a commit records about the run that made it (run id, as-of, audit verdict, …).
pub type CommitFacts = serde_json::Map<String, serde_json::Value>;

fn delta_error(table: &TableName, doing: &str) -> impl FnOnce(DeltaTableError) -> LakeError {
    let context = format!("{doing} {table}");
    move |source| LakeError::Delta {
        doing: context,
        source: Box::new(source),
    }
}

/// The URL of a table's root folder (ends with `/`).
pub fn table_url(lake: &Lake, table: &TableName) -> Result<Url> {
    let text = lake.folder_url(&layout::table_root(table));
    Url::parse(&text).map_err(|e| LakeError::InvalidUri {
        uri: text,
        reason: e.to_string(),
    })
}

/// Makes deltalake commit to `s3://` tables through its default log store: the next
/// `_delta_log/<version>.json` is written with `PutMode::Create`, which object_store sends to S3
/// as a conditional put (`If-None-Match: *`), so of two writers racing for a version exactly one
/// wins and the other gets a conflict. deltalake-core knows only `file://` and `memory://` unless
/// its `s3` feature (the AWS SDK, and a DynamoDB lock for stores without conditional puts) is
/// built; paylake hands deltalake its own S3 store and needs only this mapping.
fn register_s3_log_store() {
    #[derive(Debug)]
    struct ConditionalPutLogStores;

    impl LogStoreFactory for ConditionalPutLogStores {
        fn with_options(
            &self,
            prefixed_store: ObjectStoreRef,
            root_store: ObjectStoreRef,
            location: &Url,
            options: &StorageConfig,
        ) -> deltalake_core::DeltaResult<Arc<dyn LogStore>> {
            Ok(default_logstore(
                prefixed_store,
                root_store,
                location,
                options,
            ))
        }
    }

    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        let factories = logstore_factories();
        for scheme in ["s3://", "s3a://"] {
            if let Ok(key) = Url::parse(scheme) {
                factories
                    .entry(key)
                    .or_insert_with(|| Arc::new(ConditionalPutLogStores));
            }
        }
    });
}

fn builder(lake: &Lake, table: &TableName) -> Result<DeltaTableBuilder> {
    register_s3_log_store();
    let url = table_url(lake, table)?;
    DeltaTableBuilder::from_url(url.clone())
        .map(|b| b.with_storage_backend(lake.store(), url))
        .map_err(delta_error(table, "opening"))
}

/// Whether a Delta table exists at the table's path: its log holds a commit or a checkpoint,
/// not merely a file of another kind (a writer's temporary commit, `_last_checkpoint`), which
/// no Delta reader counts as a version. (A local store's staging file,
/// `00000000000000000000.json#1`, left by a writer killed while creating the table, is not
/// even listed.)
pub async fn exists(lake: &Lake, table: &TableName) -> Result<bool> {
    let log = layout::table_root(table).join("_delta_log");
    let mut entries = lake.store().list(Some(&lake.path(&log)));
    while let Some(entry) = entries
        .try_next()
        .await
        .map_err(|source| LakeError::Store {
            path: format!("{}/{log}", lake.display()),
            source,
        })?
    {
        if entry.location.filename().is_some_and(is_log_version) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether a file of `_delta_log` is a version of the table: a commit (`<20 digits>.json`) or
/// a checkpoint (`<20 digits>.checkpoint[...].parquet|json`).
fn is_log_version(name: &str) -> bool {
    let version = match name.split_once('.') {
        Some((version, "json")) => version,
        Some((version, rest))
            if rest.starts_with("checkpoint.")
                && (rest.ends_with(".parquet") || rest.ends_with(".json")) =>
        {
            version
        }
        _ => return false,
    };
    version.len() == 20 && version.bytes().all(|b| b.is_ascii_digit())
}

/// Opens the latest version of a table; `None` when no table exists at its path yet.
pub async fn open(lake: &Lake, table: &TableName) -> Result<Option<DeltaTable>> {
    if !exists(lake, table).await? {
        return Ok(None);
    }
    let mut delta = builder(lake, table)?
        .build()
        .map_err(delta_error(table, "opening"))?;
    match delta.load().await {
        Ok(()) => Ok(Some(delta)),
        Err(DeltaTableError::NotATable(_)) => Ok(None),
        Err(e) => Err(delta_error(table, "reading the log of")(e)),
    }
}

/// Opens one version of a table (time travel).
pub async fn open_version(lake: &Lake, table: &TableName, version: u64) -> Result<DeltaTable> {
    builder(lake, table)?
        .with_version(version)
        .load()
        .await
        .map_err(|e| match e {
            DeltaTableError::NotATable(_) => LakeError::NoSuchTable {
                table: table.to_string(),
            },
            other => delta_error(table, &format!("reading version {version} of"))(other),
        })
}

/// The schema a Delta table stores for `schema`: Delta has one string, one binary and one
/// timestamp precision (microseconds), and no unsigned integers.
pub fn delta_schema(schema: &Schema) -> SchemaRef {
    fn field(f: &FieldRef) -> Field {
        f.as_ref().clone().with_data_type(data_type(f.data_type()))
    }
    fn data_type(t: &DataType) -> DataType {
        match t {
            DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
            DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
            DataType::UInt8 => DataType::Int16,
            DataType::UInt16 => DataType::Int32,
            DataType::UInt32 | DataType::UInt64 => DataType::Int64,
            DataType::Float16 => DataType::Float32,
            DataType::Date64 => DataType::Date32,
            DataType::Timestamp(_, zone) => {
                DataType::Timestamp(TimeUnit::Microsecond, zone.as_ref().map(|_| "UTC".into()))
            }
            DataType::List(item) | DataType::LargeList(item) | DataType::ListView(item) => {
                DataType::List(Arc::new(field(item)))
            }
            DataType::Struct(fields) => DataType::Struct(fields.iter().map(field).collect()),
            other => other.clone(),
        }
    }
    Arc::new(Schema::new(
        schema.fields().iter().map(field).collect::<Vec<_>>(),
    ))
}

/// Casts a batch to the Delta schema of its table.
pub fn to_delta_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    cast_batch(batch, schema).map_err(|e| LakeError::Arrow(e.to_string()))
}

/// Casts each column of a batch whose type differs from `schema`'s (same columns, in order).
pub fn cast_batch(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> std::result::Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                cast(column, field.data_type())
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns)
}

/// Parquet for `layer`'s codec, every column with its dictionary: Bronze's shared objects and
/// dead letters. A table's writer and compaction take [`table_writer_properties`].
/// - Bronze, the raw archive kept forever and written once: zstd at level 1, whose files were
///   smaller than level 3's once dictionaries stay small (below) and cost less CPU to write.
/// - Silver and Gold, rebuilt by every run and read by every model after them: Snappy, Spark's
///   and DuckDB's default, which every Parquet reader has. zstd creates a compressor and a
///   decompressor for every column chunk it writes, 36 columns × 90 date partitions of a Gold
///   table. Measured at 1M payments, fresh lakes with every layer in one codec, three runs
///   each: Silver and Gold took 11.5 s
///   on average with zstd and 10.3 s with Snappy (Gold 7.1 to 6.1 s; CPU 12.9 to 11.1 s), for
///   files about twice as large (Silver 19 to 39 MB, Gold 60 to 88 MB).
pub fn writer_properties(layer: Layer) -> WriterProperties {
    base_writer_properties()
        .set_compression(codec(layer))
        .build()
}

fn codec(layer: Layer) -> Compression {
    match layer {
        Layer::Bronze | Layer::Quality => {
            Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default())
        }
        Layer::Silver | Layer::Gold => Compression::SNAPPY,
    }
}

/// Parquet as a table of `layer` with `schema` writes it: [`writer_properties`], and in Silver
/// and Gold no dictionary for numbers, dates, times and flags. Those columns are amounts,
/// instants, counts and days: most values in a file differ, and the writer hashed every one
/// into a dictionary before falling back (or kept a dictionary for a handful of repeated
/// values that Snappy compresses as well). Interning was the writers' largest cost in Gold's
/// profile. Measured at 1M payments, folder lake, four runs alternated: `unified_payments`
/// 0.94 -> 0.88 s and `payment_training` 1.79 -> 1.62 s, files 7% and 3% larger. Text keeps
/// its dictionary (account ids, labels, statuses repeat and are long).
pub fn table_writer_properties(layer: Layer, schema: &Schema) -> WriterProperties {
    let mut properties = base_writer_properties().set_compression(codec(layer));
    if matches!(layer, Layer::Silver | Layer::Gold) {
        for field in schema.fields() {
            let data_type = field.data_type();
            let plain = data_type.is_numeric()
                || data_type.is_temporal()
                || matches!(data_type, DataType::Boolean);
            if plain {
                properties = properties
                    .set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), false);
            }
        }
    }
    properties.build()
}

/// Parquet for a run's scratch files, read once or twice and deleted: LZ4, fast both ways.
pub fn scratch_writer_properties() -> WriterProperties {
    base_writer_properties()
        .set_compression(Compression::LZ4_RAW)
        .build()
}

/// What lake and scratch files share.
/// - Row groups of 64k rows: an open file holds at most one row group in memory, so a build
///   writing many date partitions at once stays bounded instead of buffering whole files.
/// - Dictionaries of at most 64 KiB per column chunk: ids, references and raw text are nearly
///   unique, and interning them into a dictionary of up to 1 MiB (the default) before falling
///   back to plain encoding cost a third of Bronze's and Silver's time at 1M payments, for
///   larger files. Columns of few values still get their dictionary (in Silver and Gold, text
///   columns only: see [`table_writer_properties`]).
fn base_writer_properties() -> WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_max_row_group_row_count(Some(64 * 1024))
        .set_dictionary_page_size_limit(64 * 1024)
}

fn kernel_schema(table: &TableName, schema: &Schema) -> Result<StructType> {
    schema.try_into_kernel().map_err(|e| LakeError::Corrupt {
        path: table.to_string(),
        reason: format!("schema cannot be stored in Delta: {e}"),
    })
}

/// How a table is written: rebuilt as whole versions, or only ever appended to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    Rebuilt,
    /// Marked `delta.appendOnly`: no writer may remove or change its rows.
    AppendOnly,
}

/// Opens a table, creating it empty with `schema` when it does not exist yet, so that an empty
/// table still has its full schema for every reader.
pub async fn ensure(
    lake: &Lake,
    table: &TableName,
    schema: &Schema,
    partition_by: &[String],
    kind: TableKind,
) -> Result<DeltaTable> {
    if let Some(existing) = open(lake, table).await? {
        return Ok(existing);
    }
    let delta = builder(lake, table)?
        .build()
        .map_err(delta_error(table, "opening"))?;
    let columns = kernel_schema(table, &delta_schema(schema))?;
    let created = delta
        .create()
        .with_table_name(table.to_string())
        .with_columns(columns.fields().cloned())
        .with_partition_columns(partition_by.iter().cloned())
        .with_configuration_property(
            TableProperty::AppendOnly,
            Some(if kind == TableKind::AppendOnly {
                "true"
            } else {
                "false"
            }),
        )
        .with_save_mode(SaveMode::Ignore)
        .await;
    match created {
        Ok(table) => Ok(table),
        // Another writer created it at the same moment: use theirs.
        Err(e) => match open(lake, table).await? {
            Some(theirs) => Ok(theirs),
            None => Err(delta_error(table, "creating")(e)),
        },
    }
}

/// A DataFusion provider for a table's latest version (or `version`); `None` when the table
/// does not exist.
pub async fn provider(
    lake: &Lake,
    table: &TableName,
    version: Option<u64>,
) -> Result<Option<Arc<dyn TableProvider>>> {
    let delta = match version {
        Some(v) => open_version(lake, table, v).await?,
        None => match open(lake, table).await? {
            Some(delta) => delta,
            None => return Ok(None),
        },
    };
    provider_of(lake, table, &delta).await.map(Some)
}

/// The provider of an opened table version: read-only (an `INSERT` planned on it is refused;
/// Delta's own provider would append). A lake that hands out files scans gives a view over the
/// version's Parquet files instead.
pub async fn provider_of(
    lake: &Lake,
    table: &TableName,
    delta: &DeltaTable,
) -> Result<Arc<dyn TableProvider>> {
    if lake.table_scans() == TableScans::ParquetFiles {
        return files_scan::provider(lake, table, &VersionFiles::of(table, delta)?, None);
    }
    let provider = delta
        .table_provider()
        .await
        .map_err(|source| LakeError::Engine {
            doing: format!("scanning {table}"),
            source,
        })?;
    Ok(crate::catalog::ReadOnlyTable::wrap(
        table.to_string(),
        provider,
    ))
}

/// A rebuilt table's next version, written but not committed: readers still see the current one.
#[derive(Debug, Clone)]
pub struct StagedVersion {
    pub table: TableName,
    /// The folder inside the table root that holds this version's files.
    pub stage: String,
    pub adds: Vec<Add>,
    pub rows: u64,
    pub schema: SchemaRef,
    pub partition_by: Vec<String>,
    /// What the staged files replace when committed.
    pub replaces: Replaces,
}

/// What a staged version replaces in its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replaces {
    /// Every file of the table: a full rebuild.
    Everything,
    /// Only these data files of `version` (an incremental build rewrote them); any other
    /// commit since `version` makes the commit fail.
    Files { version: u64, paths: Vec<String> },
}

fn commit_builder(facts: &CommitFacts, txns: Vec<Transaction>) -> CommitBuilder {
    CommitBuilder::from(
        CommitProperties::default()
            .with_metadata(facts.iter().map(|(k, v)| (k.clone(), v.clone())))
            .with_application_transactions(txns),
    )
}

/// Commits `actions` on top of the version `delta` holds: one atomic log entry recording
/// `facts` and `txns`. Appends that raced another writer are retried (they commute); an
/// overwrite that lost a race fails, with the table named.
async fn commit(
    delta: &DeltaTable,
    table: &TableName,
    actions: Vec<Action>,
    operation: DeltaOperation,
    facts: &CommitFacts,
    txns: Vec<Transaction>,
) -> Result<u64> {
    let snapshot = delta.snapshot().map_err(delta_error(table, "reading"))?;
    let appends = matches!(
        operation,
        DeltaOperation::Write {
            mode: SaveMode::Append,
            ..
        }
    );
    // Transactions go in as actions, not commit properties: the conflict checker only treats
    // app ids found among the actions as read, so only then two commits carrying the same
    // txn id conflict instead of both landing.
    let mut actions = actions;
    actions.extend(txns.into_iter().map(Action::Txn));
    let committed = commit_builder(facts, vec![])
        .with_actions(actions)
        .with_max_retries(if appends { APPEND_RETRIES } else { 0 })
        .build(Some(snapshot), delta.log_store(), operation)
        .await
        .map_err(|e| LakeError::CommitConflict {
            table: table.to_string(),
            reason: e.to_string(),
        })?;
    Ok(committed.version())
}

const APPEND_RETRIES: usize = 15;

const APPEND: DeltaOperation = DeltaOperation::Write {
    mode: SaveMode::Append,
    partition_by: None,
    predicate: None,
};

/// How data files of `delta` are written: zstd Parquet, files of at most 256 MiB, statistics
/// for the columns the table indexes.
fn writer_config(
    delta: &DeltaTable,
    table: &TableName,
    schema: &SchemaRef,
    partition_by: &[String],
) -> Result<WriterConfig> {
    let num_indexed_cols = delta
        .snapshot()
        .map_err(delta_error(table, "reading"))?
        .table_config()
        .num_indexed_cols();
    Ok(WriterConfig::new(
        Arc::clone(schema),
        partition_by.to_vec(),
        Some(table_writer_properties(table.layer, schema)),
        NonZeroU64::new(256 * 1024 * 1024),
        None,
        num_indexed_cols,
        None,
    ))
}

/// Writes `frame` as the files of a new version of `table`, under `stage-<stage_id>/`.
pub async fn stage(
    lake: &Lake,
    table: &TableName,
    frame: DataFrame,
    partition_by: &[String],
    stage_id: &str,
) -> Result<StagedVersion> {
    let task = Arc::new(frame.task_ctx());
    let plan = frame
        .create_physical_plan()
        .await
        .map_err(|source| LakeError::Engine {
            doing: format!("planning {table}"),
            source,
        })?;
    stage_plan(lake, table, plan, task, partition_by, stage_id, None).await
}

/// [`stage`] for a plan the caller made, so it can read the plan's metrics afterwards.
///
/// A partitioned table gets one file per partition value (per stream, for a stream written
/// as it arrives), written by one open writer at a time. With `scratch` (a local folder of the
/// run), rows reach their value's writer straight from a stream that arrives grouped by value,
/// or else through bucket files there ([`crate::buckets`]); without it, through a sort by
/// partition value that spills under the pool ([`grouped_by_partition`]), which also runs
/// where no local folder is shared, on a cluster.
pub async fn stage_plan(
    lake: &Lake,
    table: &TableName,
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    partition_by: &[String],
    stage_id: &str,
    scratch: Option<&std::path::Path>,
) -> Result<StagedVersion> {
    let schema = delta_schema(&plan.schema());
    let delta = ensure(lake, table, &schema, partition_by, TableKind::Rebuilt).await?;
    let stage = format!("stage-{stage_id}");
    let store: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::prefix::PrefixStore::new(
            lake.store_at(&layout::table_root(table)),
            Path::from(stage.as_str()),
        ));
    let config = writer_config(&delta, table, &schema, partition_by)?;
    let target = StageTarget {
        store: &store,
        config: &config,
        schema: &schema,
        partition_by,
        table,
    };
    let (rows, mut adds) = match scratch {
        Some(dir) if !partition_by.is_empty() => {
            let written = write_bucketed(plan, task, dir, &target).await;
            // Best effort: the folder is in the run's scratch, removed with it at the latest.
            let _ = std::fs::remove_dir_all(dir);
            written?
        }
        _ => write_sorted(plan, task, &target).await?,
    };
    for add in &mut adds {
        add.path = format!("{stage}/{}", add.path);
    }
    Ok(StagedVersion {
        table: table.clone(),
        stage,
        adds,
        rows,
        schema,
        partition_by: partition_by.to_vec(),
        replaces: Replaces::Everything,
    })
}

/// Where and how the files of a staged version are written.
#[derive(Clone, Copy)]
struct StageTarget<'a> {
    /// The store under the version's stage folder.
    store: &'a ObjectStoreRef,
    config: &'a WriterConfig,
    schema: &'a SchemaRef,
    partition_by: &'a [String],
    table: &'a TableName,
}

/// Writes `plan`'s streams, each in its own task (encoding and compressing Parquet is the
/// expensive part of a build, and it then uses every core), a partitioned table's grouped by
/// partition value first. Returns the rows written and the files added.
async fn write_sorted(
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    target: &StageTarget<'_>,
) -> Result<(u64, Vec<Add>)> {
    let StageTarget {
        store,
        config,
        schema,
        partition_by,
        table,
    } = *target;
    let engine = |doing: &str, source| LakeError::Engine {
        doing: format!("{doing} {table}"),
        source,
    };
    let plan = grouped_by_partition(
        plan,
        partition_by,
        task.session_config().target_partitions(),
    )
    .map_err(|source| engine("planning", source))?;
    let streams = datafusion::physical_plan::execute_stream_partitioned(plan, task)
        .map_err(|source| engine("building", source))?;
    let mut tasks = tokio::task::JoinSet::new();
    for stream in streams {
        tasks.spawn(write_stream(
            stream,
            Arc::clone(store),
            config.clone(),
            Arc::clone(schema),
            partition_by.to_vec(),
            table.clone(),
        ));
    }
    let mut rows = 0u64;
    let mut adds = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (written, files) = joined.map_err(|e| writer_task_failed(table, e))??;
        rows += written;
        adds.extend(files);
    }
    Ok((rows, adds))
}

fn writer_task_failed(table: &TableName, error: tokio::task::JoinError) -> LakeError {
    LakeError::Corrupt {
        path: table.to_string(),
        reason: format!("a writer task failed: {error}"),
    }
}

/// Writes a partitioned table through bucket files under `dir`: every stream of `plan` splits
/// its rows by partition value into files (one task per stream), then each value's files are
/// read back into one Delta writer, the values shared among as many tasks as the session has
/// partitions. One file per value and version, one open writer per task. A stream whose rows
/// arrive grouped by value (a time-ordered build's, by date) is written straight to Delta
/// instead, one file per value and stream ([`GroupedRunWriter`]), until a batch breaks the
/// grouping; from there on it is bucketed.
async fn write_bucketed(
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    dir: &std::path::Path,
    target: &StageTarget<'_>,
) -> Result<(u64, Vec<Add>)> {
    let StageTarget {
        store,
        config,
        schema,
        partition_by,
        table,
    } = *target;
    use crate::buckets::{read_bucket, PartitionBuckets, PartitionKey};

    let engine = building(table);
    let key_columns = partition_columns(schema, partition_by, table)?;
    let plan = cast_to_delta(plan).map_err(engine)?;
    let pool = Arc::clone(task.memory_pool());
    let writers = task.session_config().target_partitions().max(1);
    let streams =
        datafusion::physical_plan::execute_stream_partitioned(plan, task).map_err(engine)?;
    let mut bucketing = tokio::task::JoinSet::new();
    for (index, mut stream) in streams.into_iter().enumerate() {
        let mut buckets = PartitionBuckets::try_new(
            &dir.join(format!("stream-{index:04}")),
            Arc::clone(schema),
            key_columns.clone(),
            &pool,
            format!("partition buckets of {table}[{index}]"),
        )
        .map_err(engine)?;
        let schema = Arc::clone(schema);
        let table = table.clone();
        let mut grouped = Some(GroupedRunWriter::new(
            Arc::clone(store),
            config.clone(),
            key_columns.clone(),
            table.clone(),
        ));
        bucketing.spawn(async move {
            let engine = building(&table);
            let mut rows = 0u64;
            let mut adds = Vec::new();
            while let Some(batch) = stream.next().await {
                let batch = to_delta_batch(&batch.map_err(engine)?, &schema)?;
                rows += batch.num_rows() as u64;
                if let Some(writer) = grouped.as_mut() {
                    if writer.write(&batch).await? {
                        continue;
                    }
                    // Not grouped after all: this batch and every later one are bucketed.
                    if let Some(writer) = grouped.take() {
                        adds.extend(writer.close().await?);
                    }
                }
                buckets.push(&batch).map_err(engine)?;
            }
            if let Some(writer) = grouped.take() {
                adds.extend(writer.close().await?);
            }
            Ok::<_, LakeError>((rows, adds, buckets.finish().map_err(engine)?))
        });
    }
    let mut rows = 0u64;
    let mut adds = Vec::new();
    let mut files_by_value: HashMap<PartitionKey, Vec<std::path::PathBuf>> = HashMap::new();
    while let Some(joined) = bucketing.join_next().await {
        let (bucketed, written, files) = joined.map_err(|e| writer_task_failed(table, e))??;
        rows += bucketed;
        adds.extend(written);
        for (value, files) in files {
            files_by_value.entry(value).or_default().extend(files);
        }
    }
    // Values in order, dealt round-robin: each task writes every `writers`-th value.
    let mut values: Vec<_> = files_by_value.into_iter().collect();
    values.sort_by(|(a, _), (b, _)| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let mut shares: Vec<Vec<Vec<std::path::PathBuf>>> = vec![Vec::new(); writers];
    for (i, (_, files)) in values.into_iter().enumerate() {
        shares[i % writers].push(files);
    }
    let mut writing = tokio::task::JoinSet::new();
    for share in shares {
        let store = Arc::clone(store);
        let config = config.clone();
        let table = table.clone();
        let key_columns = key_columns.clone();
        writing.spawn(async move {
            let mut adds = Vec::new();
            for files in share {
                let mut writer = DeltaWriter::new(Arc::clone(&store), config.clone());
                // One value per bucket: its batches go to the writer as they are, where
                // `DeltaWriter::write` would group every batch's rows by value again (a hash
                // of the key and a copy of every column).
                let mut values = None;
                for file in &files {
                    for batch in read_bucket(file).map_err(building(&table))? {
                        let batch = batch.map_err(|source| LakeError::Engine {
                            doing: format!("reading back {}", file.display()),
                            source,
                        })?;
                        if batch.num_rows() == 0 {
                            continue;
                        }
                        let values = match &values {
                            Some(values) => values,
                            None => values.insert(partition_values(&batch, &key_columns, &table)?),
                        };
                        writer
                            .write_partition(batch, values)
                            .await
                            .map_err(delta_error(&table, "writing"))?;
                    }
                    // Read: its rows are in the writer now.
                    let _ = std::fs::remove_file(file);
                }
                adds.extend(
                    writer
                        .close()
                        .await
                        .map_err(delta_error(&table, "writing"))?,
                );
            }
            Ok::<_, LakeError>(adds)
        });
    }
    while let Some(joined) = writing.join_next().await {
        adds.extend(joined.map_err(|e| writer_task_failed(table, e))??);
    }
    Ok((rows, adds))
}

/// Writes one stream's rows straight to Delta for as long as they arrive grouped by partition
/// value, each value in one run: a time-ordered build's rows arrive date after date, and
/// bucketing them would write every row to scratch and read it back for nothing (at 10M
/// payments, a fifth of `gold.payment_training`'s CPU time). One open writer, for the value of
/// the current run; it is closed when the run ends.
struct GroupedRunWriter {
    store: ObjectStoreRef,
    config: WriterConfig,
    key_columns: Vec<usize>,
    table: TableName,
    current: Option<(crate::buckets::PartitionKey, DeltaWriter)>,
    /// Values whose run has ended: one more row of them and the stream is not grouped.
    ended: std::collections::HashSet<crate::buckets::PartitionKey>,
    adds: Vec<Add>,
}

impl GroupedRunWriter {
    /// Values one batch may hold and still count as grouped: the end of one value and the
    /// start of the next. A batch of many values (rows in no particular order) is bucketed
    /// whole, rather than leave a small file per value behind.
    const MAX_VALUES_PER_BATCH: usize = 2;
    /// Runs one batch may hold: a value can come in two runs (a right hash join puts a batch's
    /// matched rows before its other ones, so a batch across two days holds both twice).
    const MAX_RUNS_PER_BATCH: usize = 2 * Self::MAX_VALUES_PER_BATCH;

    fn new(
        store: ObjectStoreRef,
        config: WriterConfig,
        key_columns: Vec<usize>,
        table: TableName,
    ) -> Self {
        Self {
            store,
            config,
            key_columns,
            table,
            current: None,
            ended: Default::default(),
            adds: Vec::new(),
        }
    }

    /// Writes `batch` if the stream stays grouped with it and returns true; returns false,
    /// writing nothing, if not.
    async fn write(&mut self, batch: &RecordBatch) -> Result<bool> {
        if batch.num_rows() == 0 {
            return Ok(true);
        }
        let runs = value_runs(batch, &self.key_columns, &self.table)?;
        if runs.len() > Self::MAX_RUNS_PER_BATCH {
            tracing::debug!(table = %self.table, runs = runs.len(), rows = batch.num_rows(),
                "a batch holds many runs of partition values: the stream is bucketed");
            return Ok(false);
        }
        let values = group_runs(runs);
        if values.len() > Self::MAX_VALUES_PER_BATCH {
            tracing::debug!(table = %self.table, values = values.len(), rows = batch.num_rows(),
                "a batch holds many partition values: the stream is bucketed");
            return Ok(false);
        }
        // Every value continues the current one or starts one never seen; the current one is
        // written first.
        let current = self.current.as_ref().map(|(value, _)| value);
        if values.iter().any(|(value, _)| self.ended.contains(value)) {
            tracing::debug!(table = %self.table,
                "a partition value comes back after its run ended: the stream is bucketed");
            return Ok(false);
        }
        let (mut continuing, starting): (Vec<_>, Vec<_>) = values
            .into_iter()
            .partition(|(value, _)| Some(value) == current);
        continuing.extend(starting);
        for (value, ranges) in continuing {
            if self.current.as_ref().map(|(current, _)| current) != Some(&value) {
                self.end_run().await?;
                let writer = DeltaWriter::new(Arc::clone(&self.store), self.config.clone());
                self.current = Some((value, writer));
            }
            let slices: Vec<RecordBatch> = ranges
                .iter()
                .map(|run| batch.slice(run.start, run.end - run.start))
                .collect();
            let rows = match slices.as_slice() {
                [one] => one.clone(),
                _ => datafusion::arrow::compute::concat_batches(&batch.schema(), &slices)
                    .map_err(|e| building(&self.table)(e.into()))?,
            };
            let values = partition_values(&rows, &self.key_columns, &self.table)?;
            if let Some((_, writer)) = self.current.as_mut() {
                writer
                    .write_partition(rows, &values)
                    .await
                    .map_err(delta_error(&self.table, "writing"))?;
            }
        }
        Ok(true)
    }

    /// Closes the current value's writer: its run has ended.
    async fn end_run(&mut self) -> Result<()> {
        if let Some((value, writer)) = self.current.take() {
            self.adds.extend(
                writer
                    .close()
                    .await
                    .map_err(delta_error(&self.table, "writing"))?,
            );
            self.ended.insert(value);
        }
        Ok(())
    }

    /// The files written.
    async fn close(mut self) -> Result<Vec<Add>> {
        self.end_run().await?;
        Ok(self.adds)
    }
}

/// The runs of `runs` grouped by value, the values in the order of their last run: a right
/// hash join puts a batch's matched rows (a few) before the others, which keep their order.
/// A batch whose last run is matched rows of an earlier value (`a b a`, no current value)
/// gets the order wrong; the next batch's rows of `b` then send the stream to buckets, at a
/// cost in time only.
fn group_runs(
    runs: Vec<(std::ops::Range<usize>, crate::buckets::PartitionKey)>,
) -> Vec<(crate::buckets::PartitionKey, Vec<std::ops::Range<usize>>)> {
    let mut values: Vec<(crate::buckets::PartitionKey, Vec<std::ops::Range<usize>>)> = Vec::new();
    for (run, value) in runs {
        match values.iter().position(|(seen, _)| *seen == value) {
            Some(index) => {
                let (value, mut ranges) = values.remove(index);
                ranges.push(run);
                values.push((value, ranges));
            }
            None => values.push((value, vec![run])),
        }
    }
    values
}

/// The runs of rows of one partition value in `batch`, in order, each with its value.
fn value_runs(
    batch: &RecordBatch,
    key_columns: &[usize],
    table: &TableName,
) -> Result<Vec<(std::ops::Range<usize>, crate::buckets::PartitionKey)>> {
    let engine = building(table);
    let keys: Vec<_> = key_columns
        .iter()
        .map(|&i| Arc::clone(batch.column(i)))
        .collect();
    let runs = datafusion::arrow::compute::partition(&keys)
        .map_err(|e| engine(e.into()))?
        .ranges();
    runs.into_iter()
        .map(|run| {
            let value = keys
                .iter()
                .map(|column| datafusion::scalar::ScalarValue::try_from_array(column, run.start))
                .collect::<datafusion::error::Result<Vec<_>>>()
                .map_err(engine)?;
            Ok((run, value))
        })
        .collect()
}

/// The partition values of `batch`'s first row, by partition column name, as Delta's writer
/// takes them (`S` is the kernel's scalar).
fn partition_values<S: ScalarExt>(
    batch: &RecordBatch,
    key_columns: &[usize],
    table: &TableName,
) -> Result<IndexMap<String, S>> {
    let schema = batch.schema();
    key_columns
        .iter()
        .map(|&index| {
            let name = schema.field(index).name().clone();
            let value = S::from_array(batch.column(index).as_ref(), 0).ok_or_else(|| {
                LakeError::Corrupt {
                    path: table.to_string(),
                    reason: format!("partition column {name} holds a value Delta cannot store"),
                }
            })?;
            Ok((name, value))
        })
        .collect()
}

/// The error of an engine failure while building `table`.
fn building(
    table: &TableName,
) -> impl Fn(datafusion::error::DataFusionError) -> LakeError + Copy + '_ {
    move |source| LakeError::Engine {
        doing: format!("building {table}"),
        source,
    }
}

/// The positions of `table`'s partition columns in `schema`.
fn partition_columns(
    schema: &Schema,
    partition_by: &[String],
    table: &TableName,
) -> Result<Vec<usize>> {
    partition_by
        .iter()
        .map(|name| schema.index_of(name))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| building(table)(e.into()))
}

/// `plan` with every column cast to the table's Delta type (`delta_schema`), as the writer
/// would cast it anyway: string views out of a join share large buffers, and a sort or a
/// bucket would hold each batch as if it owned them (measured: 25 MiB for one 8k-row batch).
fn cast_to_delta(
    plan: Arc<dyn ExecutionPlan>,
) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
    use datafusion::physical_expr::expressions::{cast, col};
    use datafusion::physical_plan::projection::ProjectionExec;

    let input_schema = plan.schema();
    let target = delta_schema(&input_schema);
    let casts = input_schema
        .fields()
        .iter()
        .zip(target.fields())
        .map(|(field, delta)| {
            let column = col(field.name(), &input_schema)?;
            Ok((
                cast(column, &input_schema, delta.data_type().clone())?,
                field.name().clone(),
            ))
        })
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    Ok(Arc::new(ProjectionExec::try_new(casts, plan)?))
}

/// `plan` with its rows hashed by the table's partition columns over `streams` streams and
/// sorted by them within each stream, so that every partition value arrives in one run and on
/// one stream. A writer then holds one open file at a time instead of one per partition value:
/// an open Parquet file keeps a compressor, a dictionary and a row group per column, outside the
/// engine's memory pool (measured: ~400 MiB of zstd contexts for 90 dates × 40 columns × 2
/// streams at 300k rows). The sort spills under the pool; an unpartitioned plan is unchanged.
/// Columns are cast to the table's Delta types before the sort ([`cast_to_delta`]).
fn grouped_by_partition(
    plan: Arc<dyn ExecutionPlan>,
    partition_by: &[String],
    streams: usize,
) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
    use datafusion::physical_expr::expressions::col;
    use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
    use datafusion::physical_plan::repartition::RepartitionExec;
    use datafusion::physical_plan::sorts::sort::SortExec;
    use datafusion::physical_plan::Partitioning;

    if partition_by.is_empty() {
        return Ok(plan);
    }
    let plan = cast_to_delta(plan)?;
    let schema = plan.schema();
    let keys = partition_by
        .iter()
        .map(|name| col(name, &schema))
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    let Some(ordering) = LexOrdering::new(keys.iter().cloned().map(PhysicalSortExpr::new_default))
    else {
        return Ok(plan);
    };
    let hashed = Arc::new(RepartitionExec::try_new(
        plan,
        Partitioning::Hash(keys, streams.max(1)),
    )?);
    Ok(Arc::new(
        SortExec::new(ordering, hashed).with_preserve_partitioning(true),
    ))
}

/// Writes one stream of a staged version. A stream grouped by partition value (see
/// [`grouped_by_partition`]) gets a fresh writer at each new value, so the finished files are
/// closed as soon as their value's run ends. Returns the rows written and the files added.
async fn write_stream(
    mut stream: datafusion::execution::SendableRecordBatchStream,
    store: ObjectStoreRef,
    config: WriterConfig,
    schema: SchemaRef,
    partition_by: Vec<String>,
    table: TableName,
) -> Result<(u64, Vec<Add>)> {
    let engine = building(&table);
    let key_columns = partition_columns(&schema, &partition_by, &table)?;
    let mut rows = 0u64;
    let mut adds = Vec::new();
    let mut writer = DeltaWriter::new(Arc::clone(&store), config.clone());
    let mut current_key: Option<Vec<datafusion::scalar::ScalarValue>> = None;
    while let Some(batch) = stream.next().await {
        let batch = to_delta_batch(&batch.map_err(engine)?, &schema)?;
        rows += batch.num_rows() as u64;
        if key_columns.is_empty() {
            writer
                .write(&batch)
                .await
                .map_err(delta_error(&table, "writing"))?;
            continue;
        }
        for (run, key) in value_runs(&batch, &key_columns, &table)? {
            if current_key.as_ref().is_some_and(|current| *current != key) {
                let finished = std::mem::replace(
                    &mut writer,
                    DeltaWriter::new(Arc::clone(&store), config.clone()),
                );
                adds.extend(
                    finished
                        .close()
                        .await
                        .map_err(delta_error(&table, "writing"))?,
                );
            }
            current_key = Some(key);
            // The run holds one value: it goes to the writer as it is, where
            // `DeltaWriter::write` would group its rows by value again.
            let run = batch.slice(run.start, run.end - run.start);
            let values = partition_values(&run, &key_columns, &table)?;
            writer
                .write_partition(run, &values)
                .await
                .map_err(delta_error(&table, "writing"))?;
        }
    }
    adds.extend(
        writer
            .close()
            .await
            .map_err(delta_error(&table, "writing"))?,
    );
    Ok((rows, adds))
}

/// A provider over a staged version's files, to audit it before it is committed.
pub fn staged_provider(lake: &Lake, staged: &StagedVersion) -> Result<Arc<dyn TableProvider>> {
    let engine = |source| LakeError::Engine {
        doing: format!("auditing {}", staged.table),
        source,
    };
    let portable = lake.table_scans() == TableScans::ParquetFiles;
    if staged.adds.is_empty() {
        if portable {
            let nothing = VersionFiles {
                schema: Arc::clone(&staged.schema),
                partition_by: staged.partition_by.clone(),
                files: vec![],
            };
            return files_scan::provider(lake, &staged.table, &nothing, None);
        }
        let empty = MemTable::try_new(Arc::clone(&staged.schema), vec![vec![]]).map_err(engine)?;
        return Ok(Arc::new(empty));
    }
    let folder = layout::table_root(&staged.table).join(staged.stage.as_str());
    let url = ListingTableUrl::parse(lake.folder_url(&folder)).map_err(engine)?;
    let file_fields: Vec<Field> = staged
        .schema
        .fields()
        .iter()
        .filter(|f| !staged.partition_by.contains(f.name()))
        .map(|f| f.as_ref().clone())
        .collect();
    let partition_cols = staged
        .partition_by
        .iter()
        .map(|c| {
            let field = staged
                .schema
                .field_with_name(c)
                .map_err(|e| LakeError::Corrupt {
                    path: staged.table.to_string(),
                    reason: e.to_string(),
                })?;
            Ok((c.clone(), field.data_type().clone()))
        })
        .collect::<Result<Vec<_>>>()?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(partition_cols);
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(Arc::new(Schema::new(file_fields)));
    let provider: Arc<dyn TableProvider> = Arc::new(ListingTable::try_new(config).map_err(engine)?);
    if portable {
        // A view, so that the plan holds the listing scan itself (which serializes).
        let scan =
            LogicalPlanBuilder::scan(staged.table.to_string(), provider_as_source(provider), None)
                .and_then(LogicalPlanBuilder::build)
                .map_err(engine)?;
        return Ok(files_scan::view(scan));
    }
    Ok(provider)
}

/// Makes a staged version the table's current one: one commit that removes every file of the
/// version it was staged against and adds the staged files, recording `facts`.
///
/// If another writer committed to the table in between, Delta's conflict check fails this
/// commit and nothing changes.
pub async fn commit_overwrite(
    lake: &Lake,
    staged: &StagedVersion,
    facts: &CommitFacts,
) -> Result<u64> {
    let table = &staged.table;
    let delta = open(lake, table)
        .await?
        .ok_or_else(|| LakeError::NoSuchTable {
            table: table.to_string(),
        })?;
    let snapshot = delta.snapshot().map_err(delta_error(table, "reading"))?;
    let mut actions: Vec<Action> = Vec::new();
    let new_schema = kernel_schema(table, &staged.schema)?;
    if snapshot.schema().as_ref() != &new_schema {
        let metadata = snapshot
            .metadata()
            .clone()
            .with_schema(&new_schema)
            .map_err(|e| delta_error(table, "changing the schema of")(e.into()))?;
        actions.push(Action::Metadata(metadata));
    }
    let replaced: Option<std::collections::HashSet<&str>> = match &staged.replaces {
        Replaces::Everything => None,
        Replaces::Files { version, paths } => {
            if delta.version() != Some(*version) {
                return Err(LakeError::CommitConflict {
                    table: table.to_string(),
                    reason: format!(
                        "the build read version {version}, but version {} was committed since",
                        delta.version().unwrap_or_default()
                    ),
                });
            }
            Some(paths.iter().map(String::as_str).collect())
        }
    };
    actions.extend(
        snapshot
            .log_data()
            .iter()
            .filter(|file| {
                replaced
                    .as_ref()
                    .is_none_or(|r| r.contains(file.path().as_ref()))
            })
            .map(|file| Action::Remove(file.remove_action(true))),
    );
    actions.extend(staged.adds.iter().cloned().map(Action::Add));
    let operation = DeltaOperation::Write {
        mode: SaveMode::Overwrite,
        partition_by: (!staged.partition_by.is_empty()).then(|| staged.partition_by.clone()),
        // An incremental build replaces only the files holding the keys it rebuilt.
        predicate: match &staged.replaces {
            Replaces::Everything => None,
            Replaces::Files { paths, .. } => {
                Some(format!("incremental: {} files replaced", paths.len()))
            }
        },
    };
    let mut facts = facts.clone();
    facts.insert(INFO_ROWS.into(), staged.rows.into());
    commit(&delta, table, actions, operation, &facts, vec![]).await
}

/// Deletes the files of a version that must not be committed.
pub async fn discard(lake: &Lake, staged: &StagedVersion) -> Result<()> {
    let folder = layout::table_root(&staged.table).join(staged.stage.as_str());
    for object in lake.list(&folder).await? {
        lake.delete(&lake.relative(&object.location)).await?;
    }
    lake.prune_empty_folders(&layout::table_root(&staged.table));
    Ok(())
}

/// A whole Parquet object already written inside a table's root, to be added to the table.
#[derive(Debug, Clone)]
pub struct WrittenObject {
    /// Path relative to the table root.
    pub path: String,
    pub size: u64,
    pub rows: u64,
    /// The application transaction ids recorded with it (Bronze: the hashes of the landing
    /// files whose rows it holds).
    pub txns: Vec<String>,
}

/// The paths of the data files of a table's latest version (none when it does not exist).
pub async fn active_files(lake: &Lake, table: &TableName) -> Result<Vec<String>> {
    Ok(versioned_active_files(lake, table).await?.1)
}

/// The latest version of a table and its data files, from one snapshot.
pub async fn versioned_active_files(
    lake: &Lake,
    table: &TableName,
) -> Result<(Option<u64>, Vec<String>)> {
    let Some(delta) = open(lake, table).await? else {
        return Ok((None, vec![]));
    };
    let snapshot = delta.snapshot().map_err(delta_error(table, "reading"))?;
    let files = snapshot
        .log_data()
        .iter()
        .map(|f| f.path().to_string())
        .collect();
    Ok((delta.version(), files))
}

/// The paths of the data files of one version of a table.
pub async fn files_at(lake: &Lake, table: &TableName, version: u64) -> Result<Vec<String>> {
    let delta = open_version(lake, table, version).await?;
    let snapshot = delta.snapshot().map_err(delta_error(table, "reading"))?;
    Ok(snapshot
        .log_data()
        .iter()
        .map(|f| f.path().to_string())
        .collect())
}

/// The rows of one version of a table, from the statistics of its data files.
pub async fn row_count(lake: &Lake, table: &TableName, version: u64) -> Result<u64> {
    let delta = open_version(lake, table, version).await?;
    let snapshot = delta.snapshot().map_err(delta_error(table, "reading"))?;
    Ok(snapshot
        .log_data()
        .iter()
        .map(|f| f.num_records().unwrap_or(0) as u64)
        .sum())
}

/// Whether a commit of the table carried this application transaction id.
pub async fn has_transaction(lake: &Lake, table: &TableName, app_id: &str) -> Result<bool> {
    let Some(delta) = open(lake, table).await? else {
        return Ok(false);
    };
    let snapshot = delta.snapshot().map_err(delta_error(table, "reading"))?;
    let seen = snapshot
        .transaction_version(delta.log_store().as_ref(), app_id)
        .await
        .map_err(delta_error(table, "reading transactions of"))?;
    Ok(seen.is_some())
}

/// Every application transaction id a table's commits recorded, and the version they were
/// read at (`None`: no table yet).
#[derive(Debug, Default)]
pub struct TransactionIds {
    pub version: Option<u64>,
    pub ids: HashSet<String>,
}

/// The `_last_checkpoint` fields this reads (the file has more).
#[derive(serde::Deserialize)]
struct LastCheckpoint {
    version: u64,
    parts: Option<u64>,
}

/// Every transaction id of a table in one pass over its log: the last checkpoint's `txn`
/// column and the commits after it. Asking [`has_transaction`] id by id replays the log each
/// time (some 60 ms for a table of ten commits), too slow for thousands of landing files.
/// `None` when the log has a shape this does not read (a multi-part or V2 checkpoint, or a
/// commit already cleaned away); the caller then asks id by id.
pub async fn transaction_ids(lake: &Lake, table: &TableName) -> Result<Option<TransactionIds>> {
    let Some(delta) = open(lake, table).await? else {
        return Ok(Some(TransactionIds::default()));
    };
    let Some(version) = delta.version() else {
        return Ok(Some(TransactionIds::default()));
    };
    let in_log = |name: &str| layout::table_root(table).join("_delta_log").join(name);
    let mut ids = HashSet::new();
    let mut first_commit = 0;
    if let Some(hint) = lake.get_bytes(&in_log("_last_checkpoint")).await? {
        let hint: LastCheckpoint =
            serde_json::from_slice(&hint).map_err(|e| LakeError::Corrupt {
                path: lake.object_url(&in_log("_last_checkpoint")),
                reason: e.to_string(),
            })?;
        if hint.parts.is_some() {
            return Ok(None);
        }
        let checkpoint = in_log(&format!("{:020}.checkpoint.parquet", hint.version));
        let Some(bytes) = lake.get_bytes(&checkpoint).await? else {
            return Ok(None);
        };
        let read =
            checkpoint_transaction_ids(bytes, &mut ids).map_err(|source| LakeError::Parquet {
                path: lake.object_url(&checkpoint),
                source,
            })?;
        if !read {
            return Ok(None);
        }
        first_commit = hint.version + 1;
    }
    // A checkpoint newer than the version read (another writer's) already holds every id of
    // that version: a superset, which only makes the caller skip what has landed since.
    let commits: Vec<Option<Vec<Action>>> = futures::stream::iter(first_commit..=version)
        .map(|v| commit_actions(&delta, table, v))
        .buffered(16)
        .try_collect()
        .await?;
    for actions in commits {
        let Some(actions) = actions else {
            return Ok(None);
        };
        ids.extend(actions.into_iter().filter_map(|action| match action {
            Action::Txn(txn) => Some(txn.app_id),
            _ => None,
        }));
    }
    Ok(Some(TransactionIds {
        version: Some(version),
        ids,
    }))
}

/// Adds the `txn.appId` values of a checkpoint file to `ids`; false when its `txn` column
/// has another shape than this reads (another writer's), for the caller to fall back.
fn checkpoint_transaction_ids(
    bytes: Vec<u8>,
    ids: &mut HashSet<String>,
) -> std::result::Result<bool, ParquetError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))?;
    let Ok(txn_column) = builder.schema().index_of("txn") else {
        return Ok(true);
    };
    let mask = ProjectionMask::roots(builder.parquet_schema(), [txn_column]);
    for batch in builder.with_projection(mask).build()? {
        let batch = batch?;
        let Some(txns) = batch.column(0).as_struct_opt() else {
            return Ok(false);
        };
        let Some(app_ids) = txns
            .column_by_name("appId")
            .and_then(|ids| cast(ids, &DataType::Utf8).ok())
        else {
            return Ok(false);
        };
        let app_ids = app_ids.as_string::<i32>();
        // Each row of a checkpoint is one action: rows of other actions have no txn, and the
        // appId beneath a null txn holds no value.
        ids.extend(
            (0..txns.len())
                .filter(|&row| txns.is_valid(row) && app_ids.is_valid(row))
                .map(|row| app_ids.value(row).to_string()),
        );
    }
    Ok(true)
}

/// Adds whole objects to an append-only table in one commit, each with its transaction id.
/// With `read_version` (the version whose files the caller checked for these objects), the
/// commit is checked against every commit since then: one that recorded any of the same
/// transaction ids (another writer landed the same file) makes this commit fail with
/// [`LakeError::CommitConflict`] instead of adding its rows a second time.
pub async fn append_objects(
    lake: &Lake,
    table: &TableName,
    schema: &Schema,
    objects: &[WrittenObject],
    facts: &CommitFacts,
    read_version: Option<u64>,
) -> Result<u64> {
    let delta = open_for_append(lake, table, schema, read_version).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let actions = objects
        .iter()
        .map(|o| {
            Action::Add(Add {
                path: o.path.clone(),
                partition_values: HashMap::new(),
                size: o.size as i64,
                modification_time: now,
                data_change: true,
                stats: Some(serde_json::json!({ "numRecords": o.rows }).to_string()),
                tags: None,
                deletion_vector: None,
                base_row_id: None,
                default_row_commit_version: None,
                clustering_provider: None,
            })
        })
        .collect();
    let txns = objects
        .iter()
        .flat_map(|o| &o.txns)
        .map(|id| Transaction::new(id, 1))
        .collect();
    commit(&delta, table, actions, APPEND, facts, txns).await
}

/// Appends rows to an append-only table in one commit.
pub async fn append_batches(
    lake: &Lake,
    table: &TableName,
    schema: &Schema,
    batches: &[RecordBatch],
    facts: &CommitFacts,
) -> Result<u64> {
    append_batches_with_txns(lake, table, schema, batches, facts, &[], None).await
}

/// An append-only table (created if missing) at `read_version`, or at its latest version.
async fn open_for_append(
    lake: &Lake,
    table: &TableName,
    schema: &Schema,
    read_version: Option<u64>,
) -> Result<DeltaTable> {
    let mut delta = ensure(lake, table, schema, &[], TableKind::AppendOnly).await?;
    if let Some(version) = read_version {
        if delta.version() != Some(version) {
            delta
                .load_version(version)
                .await
                .map_err(delta_error(table, "reading"))?;
        }
    }
    Ok(delta)
}

/// The latest version of a table; `None` when it does not exist.
pub async fn latest_version(lake: &Lake, table: &TableName) -> Result<Option<u64>> {
    Ok(open(lake, table).await?.and_then(|delta| delta.version()))
}

/// Appends rows in one commit that also records application transaction ids: a concurrent
/// commit that recorded one of the same ids makes this one fail with
/// [`LakeError::CommitConflict`] instead of adding the rows a second time. With `read_version`
/// (the version the caller based its decision on), the commit is checked against every commit
/// made since that version, not only since this call opened the table.
pub async fn append_batches_with_txns(
    lake: &Lake,
    table: &TableName,
    schema: &Schema,
    batches: &[RecordBatch],
    facts: &CommitFacts,
    txn_ids: &[String],
    read_version: Option<u64>,
) -> Result<u64> {
    let delta = open_for_append(lake, table, schema, read_version).await?;
    let target = delta_schema(schema);
    let config = writer_config(&delta, table, &target, &[])?;
    let mut writer = DeltaWriter::new(lake.store_at(&layout::table_root(table)), config);
    for batch in batches {
        writer
            .write(&to_delta_batch(batch, &target)?)
            .await
            .map_err(delta_error(table, "writing"))?;
    }
    let adds = writer
        .close()
        .await
        .map_err(delta_error(table, "writing"))?;
    let actions = adds.into_iter().map(Action::Add).collect();
    let txns = txn_ids.iter().map(|id| Transaction::new(id, 1)).collect();
    commit(&delta, table, actions, APPEND, facts, txns).await
}

/// Adds the columns of `schema` that an existing table lacks (it was created by an older
/// paylake), in one metadata commit, and returns their names. Only nullable columns can be
/// added: the rows already in the table have no value for them.
pub async fn add_missing_columns(
    lake: &Lake,
    table: &TableName,
    schema: &Schema,
) -> Result<Vec<String>> {
    let Some(delta) = open(lake, table).await? else {
        return Ok(vec![]);
    };
    let missing = {
        let snapshot = delta.snapshot().map_err(delta_error(table, "reading"))?;
        let current = snapshot.schema();
        delta_schema(schema)
            .fields()
            .iter()
            .filter(|f| current.field(f.name()).is_none())
            .cloned()
            .collect::<Vec<_>>()
    };
    if missing.is_empty() {
        return Ok(vec![]);
    }
    let names: Vec<String> = missing.iter().map(|f| f.name().clone()).collect();
    if let Some(required) = missing.iter().find(|f| !f.is_nullable()) {
        return Err(LakeError::Corrupt {
            path: table.to_string(),
            reason: format!(
                "column {} is missing and cannot be added to existing rows (not nullable)",
                required.name()
            ),
        });
    }
    let added = kernel_schema(table, &Schema::new(missing))?;
    let fields: Vec<_> = added.fields().cloned().collect();
    match delta.add_columns().with_fields(fields).await {
        Ok(_) => Ok(names),
        // Another writer may have added them at the same moment: fine if they are there now.
        Err(e) => {
            let now = open(lake, table).await?;
            let present = match &now {
                Some(d) => {
                    let snapshot = d.snapshot().map_err(delta_error(table, "reading"))?;
                    let schema = snapshot.schema();
                    names.iter().all(|n| schema.field(n).is_some())
                }
                None => false,
            };
            if present {
                Ok(names)
            } else {
                Err(delta_error(table, "adding columns to")(e))
            }
        }
    }
}

/// One commit of a table, as `paylake history` shows it.
/// The actions of one commit; `None` when the log no longer holds it (a checkpoint replaced it
/// and its file was cleaned up).
async fn commit_actions(
    delta: &DeltaTable,
    table: &TableName,
    version: u64,
) -> Result<Option<Vec<Action>>> {
    let Some(bytes) = delta
        .log_store()
        .read_commit_entry(version)
        .await
        .map_err(delta_error(table, "reading the log of"))?
    else {
        return Ok(None);
    };
    deltalake_core::logstore::get_actions(version, &bytes)
        .map(Some)
        .map_err(delta_error(table, "reading the log of"))
}

/// The paylake facts (commit info) recorded by one commit of a table.
pub async fn commit_facts(
    lake: &Lake,
    table: &TableName,
    version: u64,
) -> Result<Option<CommitFacts>> {
    let Some(delta) = open(lake, table).await? else {
        return Ok(None);
    };
    Ok(commit_actions(&delta, table, version)
        .await?
        .and_then(|actions| {
            actions.into_iter().find_map(|action| match action {
                Action::CommitInfo(info) => Some(info.info.into_iter().collect()),
                _ => None,
            })
        }))
}

/// What changed in a table between two versions.
#[derive(Debug, Clone, Default)]
pub struct ChangedFiles {
    /// Data files added by commits after the first version (compaction excluded: it changes no
    /// row) that are still part of the later version.
    pub added: Vec<String>,
    /// Data files of the first version that the later one no longer has (their rows were
    /// rewritten into added files, or replaced).
    pub removed: Vec<String>,
    /// Whether a file added with new rows in that range was removed again before the later
    /// version (compaction merged it): its rows can no longer be told apart by file.
    pub added_then_removed: bool,
    /// The paylake facts of every commit in the range, oldest first.
    pub facts: Vec<CommitFacts>,
}

/// The data files added to `table` after version `after` up to and including `upto`; `None`
/// when a commit in that range is no longer in the log.
pub async fn changes_between(
    lake: &Lake,
    table: &TableName,
    after: u64,
    upto: u64,
) -> Result<Option<ChangedFiles>> {
    let delta = open_version(lake, table, upto).await?;
    let active: std::collections::HashSet<String> = delta
        .snapshot()
        .map_err(delta_error(table, "reading"))?
        .log_data()
        .iter()
        .map(|f| f.path().to_string())
        .collect();
    let mut changes = ChangedFiles::default();
    for version in after + 1..=upto {
        let Some(actions) = commit_actions(&delta, table, version).await? else {
            return Ok(None);
        };
        for action in actions {
            match action {
                Action::Add(add) if add.data_change => {
                    if active.contains(&add.path) {
                        changes.added.push(add.path);
                    } else {
                        changes.added_then_removed = true;
                    }
                }
                Action::CommitInfo(info) => changes.facts.push(info.info.into_iter().collect()),
                _ => {}
            }
        }
    }
    changes.added.sort();
    changes.added.dedup();
    changes.removed = files_at(lake, table, after)
        .await?
        .into_iter()
        .filter(|f| !active.contains(f))
        .collect();
    Ok(Some(changes))
}

/// A provider over version `version` of a table: only the data files `paths` when given, and
/// with each row's file path in the column `file_column` when given.
pub async fn files_provider(
    lake: &Lake,
    table: &TableName,
    version: u64,
    paths: Option<Vec<String>>,
    file_column: Option<&str>,
) -> Result<Arc<dyn TableProvider>> {
    let delta = open_version(lake, table, version).await?;
    if lake.table_scans() == TableScans::ParquetFiles {
        let mut files = VersionFiles::of(table, &delta)?;
        if let Some(paths) = paths {
            files = files.only(&paths);
        }
        return files_scan::provider(lake, table, &files, file_column);
    }
    let mut builder = delta.table_provider();
    if let Some(paths) = paths {
        builder = builder.with_file_paths(paths);
    }
    if let Some(column) = file_column {
        builder = builder.with_file_column(column);
    }
    let provider = builder.await.map_err(|source| LakeError::Engine {
        doing: format!("scanning {table}"),
        source,
    })?;
    Ok(crate::catalog::ReadOnlyTable::wrap(
        table.to_string(),
        provider,
    ))
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub timestamp: Option<String>,
    pub operation: Option<String>,
    pub run_id: Option<String>,
    pub as_of: Option<String>,
    pub rows: Option<u64>,
    pub audit: Option<String>,
}

/// Every commit of a table still in its log, newest first.
pub async fn history(lake: &Lake, table: &TableName) -> Result<Vec<HistoryEntry>> {
    let delta = open(lake, table)
        .await?
        .ok_or_else(|| LakeError::NoSuchTable {
            table: table.to_string(),
        })?;
    let latest = delta.version().unwrap_or(0);
    let infos: Vec<_> = delta
        .history(None)
        .try_collect()
        .await
        .map_err(delta_error(table, "reading the history of"))?;
    let text = |info: &HashMap<String, serde_json::Value>, key: &str| {
        info.get(key).and_then(|v| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        })
    };
    Ok(infos
        .into_iter()
        .enumerate()
        .map(|(i, info)| HistoryEntry {
            version: latest.saturating_sub(i as u64),
            timestamp: info
                .timestamp
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            operation: info.operation.clone(),
            run_id: text(&info.info, INFO_RUN_ID),
            as_of: text(&info.info, INFO_AS_OF),
            rows: info.info.get(INFO_ROWS).and_then(|v| v.as_u64()),
            audit: text(&info.info, INFO_AUDIT),
        })
        .collect())
}

/// Deletes files no version within the retention still needs — replaced versions' files and
/// files of builds that were never committed (a killed run) — and returns how many.
pub async fn vacuum(lake: &Lake, table: &TableName, retain: chrono::Duration) -> Result<usize> {
    let Some(delta) = open(lake, table).await? else {
        return Ok(0);
    };
    let (_, metrics) = delta
        .vacuum()
        .with_retention_period(retain)
        .with_mode(VacuumMode::Full)
        .with_enforce_retention_duration(false)
        .await
        .map_err(delta_error(table, "vacuuming"))?;
    Ok(metrics.files_deleted.len())
}

/// What `optimize` did to one table.
#[derive(Debug, Clone, Serialize)]
pub struct Compaction {
    pub table: String,
    pub files_before: usize,
    pub files_after: usize,
    pub version: Option<u64>,
}

/// Compacts a table's small files into larger ones, in one commit.
pub async fn optimize(lake: &Lake, table: &TableName) -> Result<Compaction> {
    let delta = open(lake, table)
        .await?
        .ok_or_else(|| LakeError::NoSuchTable {
            table: table.to_string(),
        })?;
    let files_before = delta
        .snapshot()
        .map_err(delta_error(table, "reading"))?
        .log_data()
        .num_files();
    let schema = delta
        .snapshot()
        .map_err(delta_error(table, "reading"))?
        .snapshot()
        .arrow_schema();
    let (optimized, metrics) = delta
        .optimize()
        .with_writer_properties(table_writer_properties(table.layer, &schema))
        .await
        .map_err(delta_error(table, "optimizing"))?;
    let files_after =
        files_before + metrics.num_files_added as usize - metrics.num_files_removed as usize;
    Ok(Compaction {
        table: table.to_string(),
        files_before,
        files_after,
        version: optimized.version(),
    })
}

/// The number of data files in a table's latest version.
pub async fn file_count(lake: &Lake, table: &TableName) -> Result<usize> {
    match open(lake, table).await? {
        Some(delta) => Ok(delta
            .snapshot()
            .map_err(delta_error(table, "reading"))?
            .log_data()
            .num_files()),
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layer;
    use datafusion::prelude::SessionContext;
    use std::collections::BTreeMap;

    /// A lake in a temporary folder and a session that can read it.
    fn test_lake() -> (tempfile::TempDir, Lake, SessionContext) {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let ctx = SessionContext::new();
        lake.register_with(&ctx).unwrap();
        (dir, lake, ctx)
    }

    async fn count(ctx: &SessionContext, provider: Arc<dyn TableProvider>) -> usize {
        ctx.read_table(provider).unwrap().count().await.unwrap()
    }

    fn facts(run: &str) -> CommitFacts {
        let mut facts = CommitFacts::new();
        facts.insert(INFO_RUN_ID.into(), run.into());
        facts.insert(INFO_AUDIT.into(), "passed".into());
        facts
    }

    async fn stage_rows(
        lake: &Lake,
        ctx: &SessionContext,
        table: &TableName,
        rows: usize,
        run: &str,
    ) -> StagedVersion {
        let values: Vec<String> = (0..rows)
            .map(|i| format!("({i}, '2024-11-1{}')", i % 3))
            .collect();
        let sql = format!(
            "SELECT column1 AS n, column2 AS day FROM (VALUES {})",
            values.join(", ")
        );
        let frame = ctx.sql(&sql).await.unwrap();
        stage(lake, table, frame, &["day".to_string()], run)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn overwrite_replaces_keeps_history_and_old_versions_readable() {
        let (dir, lake, ctx) = test_lake();
        let table = TableName::new(Layer::Gold, "numbers");
        assert!(provider(&lake, &table, None).await.unwrap().is_none());

        let first = stage_rows(&lake, &ctx, &table, 3, "r1").await;
        // Staged files are invisible until the commit.
        assert_eq!(
            count(&ctx, provider(&lake, &table, None).await.unwrap().unwrap()).await,
            0
        );
        assert_eq!(
            count(&ctx, staged_provider(&lake, &first).unwrap()).await,
            3
        );
        assert_eq!(
            commit_overwrite(&lake, &first, &facts("r1")).await.unwrap(),
            1
        );
        let second = stage_rows(&lake, &ctx, &table, 5, "r2").await;
        assert_eq!(
            commit_overwrite(&lake, &second, &facts("r2"))
                .await
                .unwrap(),
            2
        );

        assert_eq!(
            count(&ctx, provider(&lake, &table, None).await.unwrap().unwrap()).await,
            5
        );
        assert_eq!(
            count(
                &ctx,
                provider(&lake, &table, Some(1)).await.unwrap().unwrap()
            )
            .await,
            3
        );
        let history = history(&lake, &table).await.unwrap();
        assert_eq!(
            history.iter().map(|h| h.version).collect::<Vec<_>>(),
            vec![2, 1, 0]
        );
        assert_eq!(history[0].run_id.as_deref(), Some("r2"));
        assert_eq!(history[0].rows, Some(5));
        assert_eq!(history[0].audit.as_deref(), Some("passed"));
        assert!(dir.path().join("gold/numbers/_delta_log").is_dir());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn lake_tables_refuse_writes_planned_on_them() {
        // Bypasses the shell's statement check: the providers themselves refuse.
        let (_dir, lake, ctx) = test_lake();
        let table = TableName::new(Layer::Gold, "numbers");
        let staged = stage_rows(&lake, &ctx, &table, 3, "r1").await;
        commit_overwrite(&lake, &staged, &facts("r1"))
            .await
            .unwrap();
        let session = SessionContext::new();
        crate::catalog::register_lake(&session, &lake, &Default::default())
            .await
            .unwrap();
        // A provider registered under a layer for one session is read-only as well.
        session
            .register_table(
                datafusion::common::TableReference::partial("gold", "overlay"),
                staged_provider(&lake, &staged).unwrap(),
            )
            .unwrap();
        for (sql, table) in [
            (
                "INSERT INTO gold.numbers SELECT * FROM gold.numbers",
                "gold.numbers",
            ),
            ("DELETE FROM gold.numbers", "gold.numbers"),
            ("UPDATE gold.numbers SET n = 0", "gold.numbers"),
            ("TRUNCATE gold.numbers", "gold.numbers"),
            (
                "INSERT INTO gold.overlay SELECT * FROM gold.numbers",
                "gold.overlay",
            ),
        ] {
            let refused = match session.sql(sql).await {
                Ok(frame) => frame.collect().await.map(|_| ()),
                Err(e) => Err(e),
            };
            let message = refused.expect_err(sql).to_string();
            assert!(
                message.contains(&format!("{table} is read-only")),
                "{sql}: {message}"
            );
        }
        assert_eq!(
            count(&ctx, provider(&lake, &table, None).await.unwrap().unwrap()).await,
            3
        );
        assert_eq!(history(&lake, &table).await.unwrap().len(), 2);
    }

    /// Stages `batches` (one stream of `n`, `day` rows) as a table partitioned by day through
    /// a scratch folder; returns the files staged per day and the rows read back per day.
    async fn stage_through_scratch(
        days_per_batch: &[&[&str]],
    ) -> (BTreeMap<String, usize>, BTreeMap<String, i64>) {
        use datafusion::arrow::array::{Int64Array, StringArray};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};

        let (dir, lake, ctx) = test_lake();
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("day", DataType::Utf8, false),
        ]));
        let mut n = 0;
        let batches: Vec<RecordBatch> = days_per_batch
            .iter()
            .map(|days| {
                let numbers: Vec<i64> = days
                    .iter()
                    .map(|_| {
                        n += 1;
                        n
                    })
                    .collect();
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(Int64Array::from(numbers)),
                        Arc::new(StringArray::from(days.to_vec())),
                    ],
                )
                .unwrap()
            })
            .collect();
        let table = Arc::new(MemTable::try_new(schema, vec![batches]).unwrap());
        let frame = ctx.read_table(table).unwrap();
        let task = Arc::new(frame.task_ctx());
        let plan = frame.create_physical_plan().await.unwrap();
        assert_eq!(plan.properties().partitioning.partition_count(), 1);
        let table = TableName::new(Layer::Gold, "by_day");
        let scratch = dir.path().join("scratch");
        let staged = stage_plan(
            &lake,
            &table,
            plan,
            task,
            &["day".into()],
            "r1",
            Some(&scratch),
        )
        .await
        .unwrap();
        assert_eq!(staged.rows, n as u64);
        let mut files = BTreeMap::new();
        for add in &staged.adds {
            let day = add.partition_values["day"].clone().unwrap();
            *files.entry(day).or_default() += 1;
        }
        let counted = ctx
            .read_table(staged_provider(&lake, &staged).unwrap())
            .unwrap()
            .aggregate(
                vec![datafusion::prelude::col("day")],
                vec![
                    datafusion::functions_aggregate::count::count(datafusion::prelude::col("n"))
                        .alias("rows"),
                ],
            )
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut rows = BTreeMap::new();
        for batch in counted {
            let days = batch.column(0).as_string::<i32>();
            let counts = batch
                .column(1)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            for row in 0..batch.num_rows() {
                rows.insert(days.value(row).to_string(), counts.value(row));
            }
        }
        (files, rows)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_stream_grouped_by_partition_value_is_written_straight_and_any_other_through_buckets()
    {
        let counts = |pairs: &[(&str, i64)]| -> BTreeMap<String, i64> {
            pairs.iter().map(|(d, c)| (d.to_string(), *c)).collect()
        };
        let files = |pairs: &[(&str, usize)]| -> BTreeMap<String, usize> {
            pairs.iter().map(|(d, c)| (d.to_string(), *c)).collect()
        };
        // Grouped: a batch may end one day and start the next. One file per day.
        let (written, rows) = stage_through_scratch(&[
            &["a", "a", "a"],
            &["a", "a", "b", "b"],
            &["b", "b", "b"],
            &["c"],
        ])
        .await;
        assert_eq!(rows, counts(&[("a", 5), ("b", 5), ("c", 1)]));
        assert_eq!(written, files(&[("a", 1), ("b", 1), ("c", 1)]));

        // Grouped, then a day comes back: what came before stays written, the rest is
        // bucketed (a second file for that day), and no row is lost.
        let (written, rows) =
            stage_through_scratch(&[&["a", "a"], &["b", "b"], &["a", "c"], &["b"]]).await;
        assert_eq!(rows, counts(&[("a", 3), ("b", 3), ("c", 1)]));
        assert_eq!(written, files(&[("a", 2), ("b", 2), ("c", 1)]));

        // A batch across two days with the days in two runs each, as a right hash join
        // emits them (its matched rows first): still grouped, one file per day.
        let (written, rows) =
            stage_through_scratch(&[&["a", "a"], &["a", "b", "a", "b"], &["b"]]).await;
        assert_eq!(rows, counts(&[("a", 4), ("b", 3)]));
        assert_eq!(written, files(&[("a", 1), ("b", 1)]));
        let (written, rows) = stage_through_scratch(&[&["b", "a", "b"], &["b", "c"]]).await;
        assert_eq!(rows, counts(&[("a", 1), ("b", 3), ("c", 1)]));
        assert_eq!(written, files(&[("a", 1), ("b", 1), ("c", 1)]));

        // The open day first, then the next: "a" ends with that batch; back in the next one,
        // it is bucketed from there on.
        let (written, rows) = stage_through_scratch(&[&["a", "a"], &["b", "a"], &["a"]]).await;
        assert_eq!(rows, counts(&[("a", 4), ("b", 1)]));
        assert_eq!(written, files(&[("a", 2), ("b", 1)]));

        // Many days per batch from the start: bucketed whole, one file per day.
        let (written, rows) =
            stage_through_scratch(&[&["a", "b", "c", "a"], &["c", "b", "a"]]).await;
        assert_eq!(rows, counts(&[("a", 3), ("b", 2), ("c", 2)]));
        assert_eq!(written, files(&[("a", 1), ("b", 1), ("c", 1)]));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_empty_table_exists_with_its_schema() {
        let (_dir, lake, ctx) = test_lake();
        let table = TableName::new(Layer::Silver, "empty");
        let frame = ctx
            .sql("SELECT CAST(1 AS BIGINT) AS n, 'x' AS label WHERE false")
            .await
            .unwrap();
        let staged = stage(&lake, &table, frame, &[], "r1").await.unwrap();
        commit_overwrite(&lake, &staged, &facts("r1"))
            .await
            .unwrap();
        let provider = provider(&lake, &table, None).await.unwrap().unwrap();
        let names: Vec<_> = provider
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, vec!["n", "label"]);
        assert_eq!(count(&ctx, provider).await, 0);
    }

    #[test]
    fn silver_and_gold_keep_dictionaries_for_text_only() {
        let schema = Schema::new(vec![
            Field::new("payment_id", DataType::Utf8, false),
            Field::new("amount", DataType::Decimal128(18, 2), true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("count", DataType::Int64, true),
            Field::new("flag", DataType::Boolean, true),
            Field::new("day", DataType::Date32, true),
        ]);
        let dictionary = |layer, column: &str| {
            table_writer_properties(layer, &schema).dictionary_enabled(&ColumnPath::from(column))
        };
        for layer in [Layer::Silver, Layer::Gold] {
            assert!(dictionary(layer, "payment_id"), "{layer:?}");
            for column in ["amount", "ts", "count", "flag", "day"] {
                assert!(!dictionary(layer, column), "{layer:?} {column}");
            }
        }
        for column in ["payment_id", "amount", "ts"] {
            assert!(dictionary(Layer::Bronze, column), "bronze {column}");
        }
    }

    /// A log holding files but no version (a writer killed while it created the table, after
    /// writing its temporary commit or the store's staging file, which the local store does not
    /// even list) is no table: the catalog lists none, and the next run creates it.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_log_without_a_version_is_no_table() {
        let (dir, lake, _ctx) = test_lake();
        let table = TableName::new(Layer::Bronze, "half_made");
        let log = dir.path().join("bronze/half_made/_delta_log");
        std::fs::create_dir_all(&log).unwrap();
        for name in ["_commit_1b2c3d.json.tmp", "00000000000000000000.json#1"] {
            std::fs::write(log.join(name), b"{\"commitInfo\":{}}").unwrap();
        }
        assert!(!exists(&lake, &table).await.unwrap());
        assert!(open(&lake, &table).await.unwrap().is_none());
        let listed = crate::catalog::table_names(&lake, Layer::Bronze)
            .await
            .unwrap();
        assert!(listed.is_empty(), "{listed:?}");

        let schema = Schema::new(vec![Field::new("n", DataType::Int64, true)]);
        let created = ensure(&lake, &table, &schema, &[], TableKind::AppendOnly)
            .await
            .unwrap();
        assert_eq!(created.version(), Some(0));
        assert!(exists(&lake, &table).await.unwrap());
        let listed = crate::catalog::table_names(&lake, Layer::Bronze)
            .await
            .unwrap();
        assert_eq!(listed, vec!["half_made"]);
    }

    #[test]
    fn log_versions_are_commits_and_checkpoints() {
        for name in [
            "00000000000000000000.json",
            "00000000000000000010.checkpoint.parquet",
            "00000000000000000010.checkpoint.0000000001.0000000002.parquet",
            "00000000000000000010.checkpoint.80a083e8-7026-4e79-81be-64bd76c43a11.json",
        ] {
            assert!(is_log_version(name), "{name}");
        }
        for name in [
            "00000000000000000000.json#1",
            "_last_checkpoint",
            "0000000000000000000.json",
            "0000000000000000000a.json",
            "00000000000000000000.crc",
            "_commit_1b2c.json.tmp",
        ] {
            assert!(!is_log_version(name), "{name}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_second_writer_staged_on_the_same_version_fails_cleanly() {
        let (_dir, lake, ctx) = test_lake();
        second_writer_conflicts(&lake, &ctx).await;
    }

    /// The same race on an `s3://` table: deltalake must accept the URL with paylake's store
    /// (its default log store, registered for `s3://`) and its put-if-absent must refuse the
    /// late commit. The in-memory store answers `PutMode::Create` as S3 answers `If-None-Match`.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_second_writer_on_an_s3_table_fails_cleanly() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let lake = Lake::over_store(store, "s3://bank-lake", "prod/lake");
        let ctx = SessionContext::new();
        lake.register_with(&ctx).unwrap();
        assert!(table_url(&lake, &TableName::new(Layer::Gold, "contested"))
            .unwrap()
            .as_str()
            .starts_with("s3://bank-lake/prod/lake/gold/"));
        second_writer_conflicts(&lake, &ctx).await;
    }

    async fn second_writer_conflicts(lake: &Lake, ctx: &SessionContext) {
        let (lake, ctx) = (lake.clone(), ctx.clone());
        let table = TableName::new(Layer::Gold, "contested");
        let base = stage_rows(&lake, &ctx, &table, 2, "r0").await;
        commit_overwrite(&lake, &base, &facts("r0")).await.unwrap();
        let a = stage_rows(&lake, &ctx, &table, 3, "ra").await;
        let b = stage_rows(&lake, &ctx, &table, 4, "rb").await;
        // Both were staged against version 1; b commits first by reading the table at 1.
        let delta_at_1 = open_version(&lake, &table, 1).await.unwrap();
        assert_eq!(commit_overwrite(&lake, &b, &facts("rb")).await.unwrap(), 2);
        let snapshot = delta_at_1.snapshot().unwrap();
        let removes: Vec<Action> = snapshot
            .log_data()
            .iter()
            .map(|f| Action::Remove(f.remove_action(true)))
            .chain(a.adds.iter().cloned().map(Action::Add))
            .collect();
        let operation = DeltaOperation::Write {
            mode: SaveMode::Overwrite,
            partition_by: None,
            predicate: None,
        };
        let late = commit_builder(&facts("ra"), vec![])
            .with_actions(removes)
            .with_max_retries(0)
            .build(Some(snapshot), delta_at_1.log_store(), operation)
            .await;
        assert!(late.is_err(), "the late overwrite must conflict");
        assert_eq!(
            count(&ctx, provider(&lake, &table, None).await.unwrap().unwrap()).await,
            4
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn appends_record_their_transaction_ids() {
        let (_dir, lake, ctx) = test_lake();
        let table = TableName::new(Layer::Bronze, "things");
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, true)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(datafusion::arrow::array::StringArray::from(vec![
                "a", "b",
            ]))],
        )
        .unwrap();
        let object = layout::table_root(&table).join("f1.parquet");
        let mut sink = crate::sink::ParquetObjectSink::create(
            &lake,
            &object,
            Arc::clone(&schema),
            writer_properties(Layer::Bronze),
        )
        .unwrap();
        sink.write(&batch).await.unwrap();
        let (rows, size) = sink.finish().await.unwrap();
        let written = WrittenObject {
            path: "f1.parquet".into(),
            size,
            rows,
            txns: vec!["sha-1".into(), "sha-2".into()],
        };
        assert!(!has_transaction(&lake, &table, "sha-1").await.unwrap());
        append_objects(&lake, &table, &schema, &[written], &facts("b1"), None)
            .await
            .unwrap();
        assert!(has_transaction(&lake, &table, "sha-1").await.unwrap());
        assert!(has_transaction(&lake, &table, "sha-2").await.unwrap());
        assert!(!has_transaction(&lake, &table, "sha-3").await.unwrap());
        assert_eq!(
            active_files(&lake, &table).await.unwrap(),
            vec!["f1.parquet"]
        );
        append_batches(&lake, &table, &schema, &[batch], &facts("b3"))
            .await
            .unwrap();
        assert_eq!(
            count(&ctx, provider(&lake, &table, None).await.unwrap().unwrap()).await,
            4
        );
        let compaction = optimize(&lake, &table).await.unwrap();
        assert_eq!((compaction.files_before, compaction.files_after), (2, 1));
        assert_eq!(
            count(&ctx, provider(&lake, &table, None).await.unwrap().unwrap()).await,
            4
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn transaction_ids_are_read_from_the_checkpoint_and_the_commits_after_it() {
        let (dir, lake, _ctx) = test_lake();
        let table = TableName::new(Layer::Bronze, "things");
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, true)]));
        let empty = transaction_ids(&lake, &table).await.unwrap().unwrap();
        assert_eq!((empty.version, empty.ids.len()), (None, 0));
        // The table's creation, then 105 commits of two ids each: a checkpoint at version 100,
        // five commits after it.
        for commit in 0..105 {
            let object = WrittenObject {
                path: format!("f{commit}.parquet"),
                size: 1,
                rows: 1,
                txns: vec![format!("a{commit}"), format!("b{commit}")],
            };
            append_objects(&lake, &table, &schema, &[object], &facts("b"), None)
                .await
                .unwrap();
        }
        assert!(dir
            .path()
            .join("bronze/things/_delta_log/_last_checkpoint")
            .exists());
        let read = transaction_ids(&lake, &table).await.unwrap().unwrap();
        let expected: HashSet<String> = (0..105)
            .flat_map(|c| [format!("a{c}"), format!("b{c}")])
            .collect();
        assert_eq!(read.version, Some(105));
        assert_eq!(read.ids, expected);
        // With the commits before the checkpoint gone, the checkpoint still holds their ids.
        for version in 0..100u64 {
            std::fs::remove_file(
                dir.path()
                    .join(format!("bronze/things/_delta_log/{version:020}.json")),
            )
            .unwrap();
        }
        let read = transaction_ids(&lake, &table).await.unwrap().unwrap();
        assert_eq!(read.ids, expected);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn many_small_commits_get_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let table = TableName::new(Layer::Quality, "many");
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(datafusion::arrow::array::Int64Array::from(vec![
                1,
            ]))],
        )
        .unwrap();
        for _ in 0..100 {
            append_batches(
                &lake,
                &table,
                &schema,
                std::slice::from_ref(&batch),
                &facts("b"),
            )
            .await
            .unwrap();
        }
        let log = dir.path().join("quality/many/_delta_log");
        assert!(
            log.join("_last_checkpoint").exists(),
            "a checkpoint every 100 commits keeps opening the table cheap"
        );
        let ctx = SessionContext::new();
        lake.register_with(&ctx).unwrap();
        assert_eq!(
            count(&ctx, provider(&lake, &table, None).await.unwrap().unwrap()).await,
            100
        );
    }
}
