//! A table version as plain Parquet scans of its data files, for engines that must serialize
//! their plans (a Ballista cluster): no Delta provider in the plan, only listing scans, literal
//! partition values and a union, which DataFusion's plan codec carries and every executor can
//! run with nothing but the object store.
//!
//! Delta keeps partition values in the log, not in the files, and a scan of explicit files
//! cannot read them from folder names; so the files are grouped by partition values, each
//! group is one listing scan, and the partition columns are added back as literals.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::view::ViewTable;
use datafusion::catalog::TableProvider;
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::provider_as_source;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{lit, Expr, LogicalPlan, LogicalPlanBuilder};
use deltalake_core::kernel::engine::arrow_conversion::TryIntoArrow;
use deltalake_core::DeltaTable;
use object_store::path::Path;

use crate::layout::{self, TableName};
use crate::{Lake, LakeError, Result};

/// One data file of a table version: its path relative to the table root and the values of
/// its partition columns as the log records them (text; `None` is NULL).
#[derive(Debug, Clone)]
pub struct DataFile {
    pub path: String,
    pub partition_values: HashMap<String, Option<String>>,
}

/// What a files scan needs from a table version: its schema, partition columns and files.
#[derive(Debug, Clone)]
pub struct VersionFiles {
    pub schema: SchemaRef,
    pub partition_by: Vec<String>,
    pub files: Vec<DataFile>,
}

impl VersionFiles {
    pub fn of(table: &TableName, delta: &DeltaTable) -> Result<Self> {
        let snapshot = delta.snapshot().map_err(|source| LakeError::Delta {
            doing: format!("reading {table}"),
            source: Box::new(source),
        })?;
        let files = snapshot
            .log_data()
            .iter()
            .map(|file| DataFile {
                path: file.path().to_string(),
                partition_values: file.partition_values_map(),
            })
            .collect();
        let schema: Schema =
            snapshot
                .schema()
                .as_ref()
                .try_into_arrow()
                .map_err(|e| LakeError::Corrupt {
                    path: table.to_string(),
                    reason: format!("its schema has no Arrow equivalent: {e}"),
                })?;
        Ok(Self {
            schema: Arc::new(schema),
            partition_by: snapshot.metadata().partition_columns().to_vec(),
            files,
        })
    }

    /// Only the files whose paths are in `paths`.
    pub fn only(mut self, paths: &[String]) -> Self {
        let wanted: std::collections::BTreeSet<&str> = paths.iter().map(String::as_str).collect();
        self.files.retain(|f| wanted.contains(f.path.as_str()));
        self
    }
}

fn engine_error(table: &TableName) -> impl Fn(DataFusionError) -> LakeError + '_ {
    move |source| LakeError::Engine {
        doing: format!("planning a files scan of {table}"),
        source,
    }
}

/// A read-only provider over `files` of `table` as Parquet scans (a view: DataFusion inlines
/// it, so the plan holds only listing scans). With `file_column`, each row also carries the URL
/// of the file it came from.
pub fn provider(
    lake: &Lake,
    table: &TableName,
    version: &VersionFiles,
    file_column: Option<&str>,
) -> Result<Arc<dyn TableProvider>> {
    let failed = engine_error(table);
    let file_schema = Arc::new(Schema::new(
        version
            .schema
            .fields()
            .iter()
            .filter(|f| !version.partition_by.contains(f.name()))
            .map(|f| f.as_ref().clone())
            .collect::<Vec<Field>>(),
    ));
    // One scan per partition (per file when each row must name its file).
    let mut groups: BTreeMap<Vec<Option<String>>, Vec<&DataFile>> = BTreeMap::new();
    for file in &version.files {
        let mut key: Vec<Option<String>> = version
            .partition_by
            .iter()
            .map(|c| file.partition_values.get(c).cloned().flatten())
            .collect();
        if file_column.is_some() {
            key.push(Some(file.path.clone()));
        }
        groups.entry(key).or_default().push(file);
    }
    let root = layout::table_root(table);
    let mut plan: Option<LogicalPlanBuilder> = None;
    if groups.is_empty() {
        // A folder that never holds files: an empty scan that still carries the schema (an
        // empty relation would lose it on the wire).
        let empty = lake.folder_url(&layout::no_files_folder(table));
        let scan = listing_scan(table, vec![empty], &file_schema).map_err(&failed)?;
        plan = Some(with_constants(
            scan,
            version,
            &HashMap::new(),
            file_column.map(|c| (c, None)),
        )?);
    }
    for files in groups.values() {
        let urls = files
            .iter()
            .map(|f| lake.object_url(&join(&root, &f.path)))
            .collect::<Vec<_>>();
        let scan = listing_scan(table, urls.clone(), &file_schema).map_err(&failed)?;
        let first = files[0];
        let group = with_constants(
            scan,
            version,
            &first.partition_values,
            file_column.map(|c| (c, urls.first().cloned())),
        )?;
        plan = Some(match plan {
            None => group,
            Some(before) => before
                .union(group.build().map_err(&failed)?)
                .map_err(&failed)?,
        });
    }
    let plan = plan
        .ok_or_else(|| LakeError::Corrupt {
            path: table.to_string(),
            reason: "no scan planned".into(),
        })?
        .build()
        .map_err(&failed)?;
    Ok(view(plan))
}

/// A view over `plan`: read-only, and inlined into every query that reads it.
pub fn view(plan: LogicalPlan) -> Arc<dyn TableProvider> {
    Arc::new(ViewTable::new(plan, None))
}

/// A listing scan of exactly these files (or one folder) with the table's file schema.
pub fn listing_scan(
    table: &TableName,
    urls: Vec<String>,
    file_schema: &SchemaRef,
) -> datafusion::error::Result<LogicalPlanBuilder> {
    let paths = urls
        .iter()
        .map(ListingTableUrl::parse)
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension("");
    let config = ListingTableConfig::new_with_multi_paths(paths)
        .with_listing_options(options)
        .with_schema(Arc::clone(file_schema));
    let listing = ListingTable::try_new(config)?;
    LogicalPlanBuilder::scan(
        table.to_string(),
        provider_as_source(Arc::new(listing)),
        None,
    )
}

/// Projects a group's scan to the table's columns, in order, with its partition values (and
/// file URL) as typed literals.
fn with_constants(
    scan: LogicalPlanBuilder,
    version: &VersionFiles,
    partition_values: &HashMap<String, Option<String>>,
    file_column: Option<(&str, Option<String>)>,
) -> Result<LogicalPlanBuilder> {
    let mut columns = Vec::with_capacity(version.schema.fields().len() + 1);
    for field in version.schema.fields() {
        let name = field.name();
        if version.partition_by.contains(name) {
            let text = partition_values.get(name).cloned().flatten();
            let value = typed_value(name, text.as_deref(), field.data_type())?;
            columns.push(lit(value).alias(name));
        } else {
            columns.push(Expr::Column(Column::from_name(name)));
        }
    }
    if let Some((column, url)) = file_column {
        columns.push(lit(ScalarValue::Utf8(url)).alias(column));
    }
    scan.project(columns).map_err(|source| LakeError::Engine {
        doing: "adding partition values to a files scan".into(),
        source,
    })
}

/// A partition value as its column's type (Delta writes them as text).
fn typed_value(column: &str, text: Option<&str>, data_type: &DataType) -> Result<ScalarValue> {
    let invalid = |e: DataFusionError| LakeError::Corrupt {
        path: column.to_string(),
        reason: format!("partition value {text:?} is not a {data_type}: {e}"),
    };
    match text {
        None => ScalarValue::try_from(data_type).map_err(invalid),
        Some(text) => ScalarValue::try_from_string(text.to_string(), data_type).map_err(invalid),
    }
}

fn join(root: &Path, relative: &str) -> Path {
    relative
        .split('/')
        .filter(|part| !part.is_empty())
        .fold(root.clone(), |path, part| path.join(part))
}
