//! Rebuilt tables (Silver and Gold): each build writes a new version folder, then one small
//! pointer object (`_current.json`) is replaced atomically to publish it.
//!
//! Readers resolve the pointer first and read only that version's files, so they never see a
//! half-written build, and a rebuild replaces the table instead of appending to it. A build that
//! dies before its pointer is written leaves an unreferenced folder, removed by the next publish.

use std::str::FromStr;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::MemTable;
use datafusion::parquet::arrow::AsyncArrowWriter;
use datafusion::prelude::DataFrame;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::layout::{self, Layer};
use crate::{Lake, LakeError, Result};

/// A Silver or Gold table name, e.g. `silver.payments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub layer: Layer,
    pub name: String,
}

impl TableName {
    pub fn new(layer: Layer, name: impl Into<String>) -> Self {
        Self {
            layer,
            name: name.into(),
        }
    }

    /// Parses `layer.table`.
    pub fn parse(qualified: &str) -> Option<Self> {
        let (layer, name) = qualified.split_once('.')?;
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let layer = Layer::parse(layer)?;
        valid.then(|| Self::new(layer, name))
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.layer.name(), self.name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FieldSpec {
    pub name: String,
    pub data_type: String,
    pub nullable: bool,
}

/// The published state of a table: which version readers use, and what it holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TablePointer {
    pub table: String,
    pub version: String,
    pub published_at: String,
    pub rows: u64,
    pub partition_by: Vec<String>,
    /// The full table schema, partition columns included (they are stored as text).
    pub fields: Vec<FieldSpec>,
    /// Free-form facts about the build (run id, as-of time, model file).
    #[serde(default)]
    pub properties: serde_json::Map<String, serde_json::Value>,
}

impl TablePointer {
    pub fn schema(&self) -> Result<SchemaRef> {
        let fields = self
            .fields
            .iter()
            .map(|f| {
                DataType::from_str(&f.data_type)
                    .map(|t| Field::new(&f.name, t, f.nullable))
                    .map_err(|e| LakeError::Corrupt {
                        path: format!("{}/_current.json", self.table),
                        reason: format!("field {}: {e}", f.name),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }
}

fn engine(
    doing: impl Into<String>,
) -> impl FnOnce(datafusion::error::DataFusionError) -> LakeError {
    let doing = doing.into();
    move |source| LakeError::Engine { doing, source }
}

/// A sortable, unique version name: UTC time to the nanosecond.
fn new_version() -> String {
    let now = chrono::Utc::now();
    format!(
        "{}{:09}",
        now.format("%Y%m%dT%H%M%S"),
        now.timestamp_subsec_nanos()
    )
}

/// Reads a table's pointer; `None` when the table was never published.
pub async fn read_pointer(lake: &Lake, table: &TableName) -> Result<Option<TablePointer>> {
    let path = layout::table_pointer(table.layer, &table.name);
    let Some(bytes) = lake.get_bytes(&path).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| LakeError::Corrupt {
            path: path.to_string(),
            reason: e.to_string(),
        })
}

/// Writes a DataFrame as a new version of `table` and publishes it.
///
/// Partition columns must be text; they become `col=value/` folders.
pub async fn publish(
    lake: &Lake,
    table: &TableName,
    frame: DataFrame,
    partition_by: &[&str],
    properties: serde_json::Map<String, serde_json::Value>,
) -> Result<TablePointer> {
    let staged = stage(lake, table, frame, partition_by, properties).await?;
    commit(lake, table, staged).await
}

/// Writes a new version of `table` without publishing it: readers still see the old one.
/// The returned pointer can be read with [`provider_for`] (to check it) and then committed.
pub async fn stage(
    lake: &Lake,
    table: &TableName,
    frame: DataFrame,
    partition_by: &[&str],
    properties: serde_json::Map<String, serde_json::Value>,
) -> Result<TablePointer> {
    let version = new_version();
    let folder = layout::table_version_folder(table.layer, &table.name, &version);
    let schema = frame.schema().inner().clone();
    let options = DataFrameWriteOptions::new()
        .with_partition_by(partition_by.iter().map(|c| c.to_string()).collect());
    let written = frame
        .write_parquet(&lake.folder_url(&folder), options, None)
        .await
        .map_err(engine(format!("writing {table}")))?;
    // An empty result writes no file; readers then use the schema kept in the pointer.
    let rows = count_from_write_result(&written);
    Ok(TablePointer {
        table: table.to_string(),
        version,
        published_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        rows,
        partition_by: partition_by.iter().map(|c| c.to_string()).collect(),
        fields: schema
            .fields()
            .iter()
            .map(|f| FieldSpec {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                nullable: f.is_nullable(),
            })
            .collect(),
        properties,
    })
}

/// Publishes a staged version: one atomic pointer write, then older versions are removed.
pub async fn commit(lake: &Lake, table: &TableName, staged: TablePointer) -> Result<TablePointer> {
    let bytes = serde_json::to_vec_pretty(&staged).map_err(|e| LakeError::Corrupt {
        path: table.to_string(),
        reason: e.to_string(),
    })?;
    lake.put_bytes(&layout::table_pointer(table.layer, &table.name), bytes)
        .await?;
    remove_unpublished_versions(lake, table, &staged.version).await?;
    Ok(staged)
}

/// Deletes a staged version that must not be published.
pub async fn discard(lake: &Lake, table: &TableName, staged: &TablePointer) -> Result<()> {
    let folder = layout::table_version_folder(table.layer, &table.name, &staged.version);
    for object in lake.list(&folder).await? {
        lake.delete(&lake.relative(&object.location)).await?;
    }
    lake.prune_empty_folders(&layout::table_folder(table.layer, &table.name));
    Ok(())
}

fn count_from_write_result(batches: &[datafusion::arrow::record_batch::RecordBatch]) -> u64 {
    use datafusion::arrow::array::{Array, UInt64Array};
    batches
        .iter()
        .filter_map(|b| b.column(0).as_any().downcast_ref::<UInt64Array>().cloned())
        .map(|a| (0..a.len()).map(|i| a.value(i)).sum::<u64>())
        .sum()
}

/// Deletes every version folder except the published one.
async fn remove_unpublished_versions(lake: &Lake, table: &TableName, keep: &str) -> Result<()> {
    let folder = layout::table_folder(table.layer, &table.name);
    let folder_depth = folder.parts().count();
    for object in lake.list(&folder).await? {
        let relative = lake.relative(&object.location);
        let Some(first) = relative.parts().nth(folder_depth) else {
            continue;
        };
        match layout::version_of(first.as_ref()) {
            Some(version) if version != keep => lake.delete(&relative).await?,
            _ => {}
        }
    }
    lake.prune_empty_folders(&folder);
    Ok(())
}

/// A provider for the published version of a table, or `None` when it was never published.
pub async fn published_provider(
    lake: &Lake,
    table: &TableName,
) -> Result<Option<Arc<dyn TableProvider>>> {
    match read_pointer(lake, table).await? {
        Some(pointer) => provider_for(lake, table, &pointer).map(Some),
        None => Ok(None),
    }
}

/// A provider for the version a pointer names (published or only staged).
pub fn provider_for(
    lake: &Lake,
    table: &TableName,
    pointer: &TablePointer,
) -> Result<Arc<dyn TableProvider>> {
    let schema = pointer.schema()?;
    if pointer.rows == 0 {
        let empty = MemTable::try_new(schema, vec![vec![]]).map_err(engine("empty table"))?;
        return Ok(Arc::new(empty));
    }
    let folder = layout::table_version_folder(table.layer, &table.name, &pointer.version);
    let url = ListingTableUrl::parse(lake.folder_url(&folder)).map_err(engine("table URL"))?;
    let file_fields: Vec<Field> = schema
        .fields()
        .iter()
        .filter(|f| !pointer.partition_by.contains(f.name()))
        .map(|f| f.as_ref().clone())
        .collect();
    let partition_cols = pointer
        .partition_by
        .iter()
        .map(|c| (c.clone(), DataType::Utf8))
        .collect();
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(partition_cols);
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(Arc::new(Schema::new(file_fields)));
    let provider = ListingTable::try_new(config).map_err(engine(format!("opening {table}")))?;
    Ok(Arc::new(provider))
}

/// A provider over every Parquet object in a lake folder, read with `schema`; an empty table
/// when the folder holds none yet.
pub async fn folder_provider(
    lake: &Lake,
    folder: &Path,
    schema: SchemaRef,
) -> Result<Arc<dyn TableProvider>> {
    let has_files = lake
        .list(folder)
        .await?
        .iter()
        .any(|o| o.location.as_ref().ends_with(".parquet"));
    if !has_files {
        let empty = MemTable::try_new(schema, vec![vec![]]).map_err(engine("empty table"))?;
        return Ok(Arc::new(empty));
    }
    let url = ListingTableUrl::parse(lake.folder_url(folder)).map_err(engine("folder URL"))?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema);
    let provider = ListingTable::try_new(config).map_err(engine(format!("opening {folder}")))?;
    Ok(Arc::new(provider))
}

/// Streams record batches into one Parquet object; the object appears only when finished.
pub struct ParquetObjectSink {
    writer: AsyncArrowWriter<object_store::buffered::BufWriter>,
    path: Path,
    rows: u64,
}

impl ParquetObjectSink {
    pub fn create(lake: &Lake, relative: &Path, schema: SchemaRef) -> Result<Self> {
        let absolute = lake.path(relative);
        let object = object_store::buffered::BufWriter::new(lake.store(), absolute);
        let writer = AsyncArrowWriter::try_new(object, schema, None).map_err(|source| {
            LakeError::Parquet {
                path: relative.to_string(),
                source,
            }
        })?;
        Ok(Self {
            writer,
            path: relative.clone(),
            rows: 0,
        })
    }

    pub async fn write(
        &mut self,
        batch: &datafusion::arrow::record_batch::RecordBatch,
    ) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        self.writer
            .write(batch)
            .await
            .map_err(|source| LakeError::Parquet {
                path: self.path.to_string(),
                source,
            })
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Finishes the object: only now does it become visible at its path.
    pub async fn finish(self) -> Result<u64> {
        let path = self.path.to_string();
        self.writer
            .close()
            .await
            .map_err(|source| LakeError::Parquet { path, source })?;
        Ok(self.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn row_count(lake: &Lake, ctx: &SessionContext, table: &TableName) -> usize {
        let provider = published_provider(lake, table).await.unwrap().unwrap();
        let frame = ctx.read_table(provider).unwrap();
        frame.count().await.unwrap()
    }

    #[tokio::test]
    async fn republishing_replaces_instead_of_appending() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let ctx = SessionContext::new();
        lake.register_with(&ctx).unwrap();
        let table = TableName::new(Layer::Silver, "numbers");
        assert!(published_provider(&lake, &table).await.unwrap().is_none());
        for _ in 0..2 {
            let frame = ctx
                .sql("SELECT * FROM (VALUES (1, 'a'), (2, 'b'), (3, 'a')) AS t(n, part)")
                .await
                .unwrap();
            let pointer = publish(&lake, &table, frame, &["part"], Default::default())
                .await
                .unwrap();
            assert_eq!(pointer.rows, 3);
        }
        assert_eq!(row_count(&lake, &ctx, &table).await, 3);
        let versions: std::collections::BTreeSet<String> = lake
            .list(&layout::table_folder(Layer::Silver, "numbers"))
            .await
            .unwrap()
            .iter()
            .filter_map(|o| {
                lake.relative(&o.location)
                    .parts()
                    .nth(2)
                    .map(|p| p.as_ref().to_string())
            })
            .filter(|p| p.starts_with("v-"))
            .collect();
        assert_eq!(versions.len(), 1, "old versions are removed: {versions:?}");
    }

    #[tokio::test]
    async fn empty_result_is_published_with_its_schema() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let ctx = SessionContext::new();
        lake.register_with(&ctx).unwrap();
        let table = TableName::new(Layer::Gold, "empty");
        let frame = ctx
            .sql("SELECT CAST(1 AS BIGINT) AS n WHERE false")
            .await
            .unwrap();
        publish(&lake, &table, frame, &[], Default::default())
            .await
            .unwrap();
        let provider = published_provider(&lake, &table).await.unwrap().unwrap();
        assert_eq!(provider.schema().field(0).name(), "n");
        assert_eq!(row_count(&lake, &ctx, &table).await, 0);
    }

    #[test]
    fn table_names_parse_layer_and_name() {
        let name = TableName::parse("gold.unified_payments").unwrap();
        assert_eq!(name.layer, Layer::Gold);
        assert_eq!(name.to_string(), "gold.unified_payments");
        assert!(TableName::parse("platinum.x").is_none());
        assert!(TableName::parse("gold.x;drop").is_none());
    }
}
