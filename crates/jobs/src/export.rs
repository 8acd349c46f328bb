//! `paylake export`: a published table as a CSV or Parquet file outside the lake.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{col, Expr};
use paylake_lake::delta;
use paylake_lake::layout::TableName;
use paylake_lake::Lake;

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
const TIMESTAMP_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.f";

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

/// Writes a table (its latest version, or `version`) to `output`; returns the rows written.
pub async fn export_table(
    lake: &Lake,
    table: &TableName,
    version: Option<u64>,
    format: ExportFormat,
    output: &Path,
    all_columns: bool,
) -> Result<u64, JobError> {
    let ctx = crate::runner::lake_session(lake).await?;
    let provider = delta::provider(lake, table, version)
        .await?
        .ok_or_else(|| JobError::NotBuilt {
            what: table.to_string(),
            hint: format!("run `paylake {}` first", table.layer.name()),
        })?;
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
    let batches = frame.collect().await?;

    let staging = output.with_extension(format!(
        "{}.partial",
        output.extension().and_then(|e| e.to_str()).unwrap_or("out")
    ));
    let io_error = |e: std::io::Error| JobError::Io {
        path: output.display().to_string(),
        source: e,
    };
    let file = BufWriter::new(File::create(&staging).map_err(io_error)?);
    let mut rows = 0u64;
    match format {
        ExportFormat::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .with_timestamp_format(TIMESTAMP_FORMAT.to_string())
                .with_timestamp_tz_format(TIMESTAMP_FORMAT.to_string())
                .build(file);
            for batch in &batches {
                writer.write(batch)?;
                rows += batch.num_rows() as u64;
            }
        }
        ExportFormat::Parquet => {
            let mut writer =
                datafusion::parquet::arrow::ArrowWriter::try_new(file, output_schema, None)?;
            for batch in &batches {
                writer.write(batch)?;
                rows += batch.num_rows() as u64;
            }
            writer.close()?;
        }
    }
    std::fs::rename(&staging, output).map_err(io_error)?;
    Ok(rows)
}
