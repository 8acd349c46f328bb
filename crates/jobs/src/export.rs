//! `paylake export`: a published table as a CSV or Parquet file outside the lake, streamed
//! into a temporary file beside the target and renamed over it only when whole.

use std::ffi::OsString;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{col, Expr};
use futures::StreamExt;
use paylake_lake::delta;
use paylake_lake::layout::{Layer, TableName};
use paylake_lake::Lake;

use crate::engine::{Engine, EngineSettings};
use crate::JobError;

/// The columns of the original take-home's unified table, in its order.
pub const UNIFIED_COLUMNS: [&str; 13] = [
    "payment_id",
    "src_account_id",
    "dest_account_id",
    "payment_reference",
    "amount",
    "timestamp",
    "src_opening_date",
    "dest_opening_date",
    "src_risk_flag",
    "dest_risk_flag",
    "fraud_flag",
    "fraud_type",
    "fraud_reported_date",
];

/// Timestamps are UTC; written without zone suffix, with a fraction only when there is one.
pub const TIMESTAMP_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.f";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Parquet,
}

impl ExportFormat {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "csv" => Some(Self::Csv),
            "parquet" => Some(Self::Parquet),
            _ => None,
        }
    }
}

/// The columns exported without `--all-columns`.
fn primary_columns(table: &TableName) -> Option<&'static [&'static str]> {
    match table.to_string().as_str() {
        "gold.unified_payments" => Some(&UNIFIED_COLUMNS),
        _ => None,
    }
}

/// Where an export may be written: `output`'s folder exists, `output` is a regular file or
/// nothing (never a FIFO, device, socket, folder or symlink), and it is outside the lake.
/// Returns the folder (with symlinks resolved) and the file name.
pub fn check_output(lake: &Lake, output: &Path) -> Result<(PathBuf, OsString), JobError> {
    let refuse = |reason: String| JobError::Output {
        path: output.display().to_string(),
        reason,
    };
    let name = match output.file_name() {
        Some(name) if !output.as_os_str().to_string_lossy().ends_with('/') => name.to_owned(),
        _ => return Err(refuse("not a file name".into())),
    };
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let folder = std::fs::canonicalize(&parent).map_err(|e| {
        refuse(if e.kind() == std::io::ErrorKind::NotFound {
            format!("the folder {} does not exist", parent.display())
        } else {
            format!("the folder {} cannot be used: {e}", parent.display())
        })
    })?;
    if !folder.is_dir() {
        return Err(refuse(format!("{} is not a folder", parent.display())));
    }
    let target = folder.join(&name);
    // An object-store lake has no folder here that an export could land in.
    if lake
        .local_folder()
        .is_some_and(|folder| target.starts_with(folder))
    {
        return Err(refuse(format!(
            "it is inside the lake {} (exports go outside the lake)",
            lake.display()
        )));
    }
    check_replaceable(&target).map_err(refuse)?;
    Ok((folder, name))
}

/// A path an export may rename its file over: a regular file or nothing.
fn check_replaceable(target: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(target) {
        Ok(meta) => {
            let kind = meta.file_type();
            if kind.is_file() {
                return Ok(());
            }
            use std::os::unix::fs::FileTypeExt;
            let what = if kind.is_symlink() {
                "a symbolic link"
            } else if kind.is_dir() {
                "a folder"
            } else if kind.is_fifo() {
                "a FIFO (named pipe)"
            } else if kind.is_char_device() || kind.is_block_device() {
                "a device"
            } else if kind.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            };
            Err(format!(
                "it is {what}; an export replaces only a regular file or creates a new one"
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Why a table cannot be exported: a table paylake builds but has not yet, or a name the
/// lake does not hold at all (listing the ones it does).
async fn missing_table(lake: &Lake, table: &TableName) -> JobError {
    let built_by_model = matches!(table.layer, Layer::Silver | Layer::Gold)
        && crate::models::load_models(table.layer, None).is_ok_and(|models| {
            models.iter().any(|m| {
                m.name == table.name && m.materialization == crate::models::Materialization::Table
            })
        });
    if built_by_model {
        return JobError::NotBuilt {
            what: table.to_string(),
            hint: format!("run `paylake {}` first", table.layer.name()),
        };
    }
    match paylake_lake::catalog::all_tables(lake).await {
        Ok(existing) => JobError::NoSuchTable {
            table: table.to_string(),
            lake: lake.display().to_string(),
            existing: existing.iter().map(ToString::to_string).collect(),
        },
        Err(e) => e.into(),
    }
}

/// Writes a table (its latest version, or `version`) to `output`; returns the rows written.
///
/// The rows stream from the engine into a temporary file in `output`'s folder (sorted within
/// the engine's memory limit, spilling beyond it), which is renamed over `output` once whole.
pub async fn export_table(
    lake: &Lake,
    table: &TableName,
    version: Option<u64>,
    format: ExportFormat,
    output: &Path,
    all_columns: bool,
) -> Result<u64, JobError> {
    check_output(lake, output)?;
    let engine = Engine::new(&EngineSettings::default())?;
    let ctx = crate::runner::lake_session_on(lake, &engine).await?;
    let provider = delta::provider(lake, table, version).await?;
    let Some(provider) = provider else {
        return Err(missing_table(lake, table).await);
    };
    let frame = ctx.read_table(provider)?;
    let schema = frame.schema().clone();
    let names: Vec<String> = match (all_columns, primary_columns(table)) {
        (false, Some(columns)) => columns.iter().map(|c| c.to_string()).collect(),
        _ => schema.fields().iter().map(|f| f.name().clone()).collect(),
    };
    let mut selection: Vec<Expr> = Vec::new();
    for name in &names {
        let field = schema
            .field_with_unqualified_name(name)
            .map_err(|_| JobError::Internal(format!("{table} has no column {name}")))?;
        let column = col(format!("\"{name}\""));
        let is_list = matches!(
            field.data_type(),
            DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _)
        );
        selection.push(if is_list && format == ExportFormat::Csv {
            // CSV has no lists: join the items with ';'.
            datafusion::functions_nested::expr_fn::array_to_string(
                column,
                datafusion::prelude::lit(";"),
            )
            .alias(name)
        } else {
            column
        });
    }
    let mut ordering = Vec::new();
    for key in ["timestamp", "payment_id"] {
        if names.iter().any(|n| n == key) {
            ordering.push(col(format!("\"{key}\"")).sort(true, true));
        }
    }
    let mut frame = frame.select(selection)?;
    if !ordering.is_empty() {
        frame = frame.sort(ordering)?;
    }
    let output_schema = frame.schema().inner().clone();
    let limit = engine.settings.memory_limit;
    let engine_error = move |e| crate::engine::out_of_memory_or(e, "export", limit);
    let mut batches = frame.execute_stream().await.map_err(engine_error)?;

    let mut staged = OutputFile::create(lake, output)?;
    let write_error = |source: std::io::Error| JobError::Write {
        path: output.display().to_string(),
        source,
    };
    let mut rows = 0u64;
    {
        let file = BufWriter::new(staged.file());
        match format {
            ExportFormat::Csv => {
                let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .with_timestamp_format(TIMESTAMP_FORMAT.to_string())
                    .with_timestamp_tz_format(TIMESTAMP_FORMAT.to_string())
                    .build(file);
                while let Some(batch) = batches.next().await {
                    let batch = batch.map_err(engine_error)?;
                    writer.write(&batch)?;
                    rows += batch.num_rows() as u64;
                }
                writer.into_inner().flush().map_err(write_error)?;
            }
            ExportFormat::Parquet => {
                let mut writer =
                    datafusion::parquet::arrow::ArrowWriter::try_new(file, output_schema, None)?;
                while let Some(batch) = batches.next().await {
                    let batch = batch.map_err(engine_error)?;
                    writer.write(&batch)?;
                    rows += batch.num_rows() as u64;
                }
                writer.into_inner()?.flush().map_err(write_error)?;
            }
        }
    }
    staged.commit()?;
    Ok(rows)
}

/// A file outside the lake, written through a temporary file beside it (created new, removed
/// on any error) and renamed over the target only by [`OutputFile::commit`].
pub struct OutputFile {
    staging: tempfile::NamedTempFile,
    folder: PathBuf,
    name: OsString,
    path: PathBuf,
}

impl OutputFile {
    /// Checks `path` ([`check_output`]) and opens its temporary file.
    pub fn create(lake: &Lake, path: &Path) -> Result<Self, JobError> {
        let (folder, name) = check_output(lake, path)?;
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".partial")
            .tempfile_in(&folder)
            .map_err(|source| JobError::Write {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self {
            staging,
            folder,
            name,
            path: path.to_path_buf(),
        })
    }

    /// The temporary file to write to.
    pub fn file(&mut self) -> &mut std::fs::File {
        self.staging.as_file_mut()
    }

    /// Syncs the temporary file and renames it over the target (keeping the permissions of
    /// a file it replaces).
    pub fn commit(self) -> Result<(), JobError> {
        let write_error = |source: std::io::Error| JobError::Write {
            path: self.path.display().to_string(),
            source,
        };
        self.staging.as_file().sync_all().map_err(write_error)?;
        let target = self.folder.join(&self.name);
        let permissions = match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.file_type().is_file() => meta.permissions(),
            _ => std::fs::Permissions::from_mode(0o644),
        };
        self.staging
            .as_file()
            .set_permissions(permissions)
            .map_err(write_error)?;
        // The target may have changed while the rows were written: check it again.
        check_replaceable(&target).map_err(|reason| JobError::Output {
            path: self.path.display().to_string(),
            reason,
        })?;
        self.staging
            .persist(&target)
            .map_err(|e| write_error(e.error))?;
        Ok(())
    }
}
