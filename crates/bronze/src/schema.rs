//! Arrow schemas of the Bronze tables: raw rows per source, the dead-letter and the file log.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use paylake_contracts::SourceContract;

pub const RESCUED: &str = "_rescued";
pub const SOURCE_FILE: &str = "_source_file";
pub const SOURCE_LINE: &str = "_source_line";
pub const FILE_SHA256: &str = "_file_sha256";
pub const BATCH_ID: &str = "_batch_id";
pub const INGESTED_AT: &str = "_ingested_at";
pub const KNOWN_AT: &str = "_known_at";
pub const SCHEMA_FINGERPRINT: &str = "_schema_fingerprint";

pub fn utc_timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Lineage columns every Bronze row carries after its source columns.
fn lineage_fields() -> Vec<Field> {
    vec![
        Field::new(SOURCE_FILE, DataType::Utf8, false),
        Field::new(SOURCE_LINE, DataType::Int64, false),
        Field::new(FILE_SHA256, DataType::Utf8, false),
        Field::new(BATCH_ID, DataType::Utf8, false),
        Field::new(INGESTED_AT, utc_timestamp(), false),
        Field::new(KNOWN_AT, utc_timestamp(), false),
        Field::new(SCHEMA_FINGERPRINT, DataType::Utf8, false),
    ]
}

/// Raw rows of one source: every contract column as text (NULL when the file lacks the
/// column), the extra columns as a JSON object in `_rescued`, then lineage.
pub fn bronze_schema(contract: &SourceContract) -> SchemaRef {
    let mut fields: Vec<Field> = contract
        .columns
        .iter()
        .map(|c| Field::new(&c.name, DataType::Utf8, true))
        .collect();
    fields.push(Field::new(RESCUED, DataType::Utf8, true));
    fields.extend(lineage_fields());
    Arc::new(Schema::new(fields))
}

/// Lines that could not be used, with their raw bytes, so nothing sent is ever lost.
pub fn dead_letter_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, true),
        Field::new(SOURCE_FILE, DataType::Utf8, false),
        Field::new(SOURCE_LINE, DataType::Int64, false),
        Field::new("is_header", DataType::Boolean, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw_bytes", DataType::Binary, false),
        Field::new("raw_text", DataType::Utf8, false),
        Field::new(FILE_SHA256, DataType::Utf8, false),
        Field::new(BATCH_ID, DataType::Utf8, false),
        Field::new(INGESTED_AT, utc_timestamp(), false),
        Field::new(KNOWN_AT, utc_timestamp(), false),
    ]))
}

/// One entry per landing file a run looked at. New columns go at the end, nullable.
pub fn file_log_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("source_file", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, true),
        Field::new("format", DataType::Utf8, true),
        Field::new("file_sha256", DataType::Utf8, false),
        Field::new("size_bytes", DataType::Int64, false),
        Field::new("outcome", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
        Field::new("duplicate_of", DataType::Utf8, true),
        Field::new("lines_read", DataType::Int64, false),
        Field::new("rows_landed", DataType::Int64, false),
        Field::new("rows_dead_lettered", DataType::Int64, false),
        Field::new("schema_fingerprint", DataType::Utf8, true),
        Field::new("contract_version", DataType::Utf8, true),
        Field::new("schema_change", DataType::Boolean, false),
        Field::new("added_columns", DataType::Utf8, true),
        Field::new("missing_columns", DataType::Utf8, true),
        Field::new("batch_id", DataType::Utf8, false),
        Field::new("ingested_at", utc_timestamp(), false),
        Field::new("known_at", utc_timestamp(), false),
        // Added after the first release: NULL in older entries, added to an existing lake by
        // `tables::ensure_tables`.
        Field::new("blank_lines", DataType::Int64, true),
    ]))
}
