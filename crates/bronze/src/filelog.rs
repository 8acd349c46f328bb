//! The file log: one Parquet entry per landing file a run looked at, appended, never rewritten.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use paylake_contracts::{RoutedFile, SourceContract};
use paylake_lake::layout;
use paylake_lake::{delta, Lake};
use serde::Serialize;

use crate::ingest::{BronzeOptions, Landed};
use crate::schema::file_log_schema;
use crate::BronzeError;

pub const OUTCOME_LANDED: &str = "landed";
pub const OUTCOME_LANDED_WITH_ERRORS: &str = "landed_with_errors";
pub const OUTCOME_REJECTED: &str = "rejected";
pub const OUTCOME_SKIPPED: &str = "skipped_duplicate";

/// Whether a file with this outcome landed its rows (so a copy of it must not land again).
pub fn outcome_landed_rows(outcome: &str) -> bool {
    outcome == OUTCOME_LANDED || outcome == OUTCOME_LANDED_WITH_ERRORS
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FileLogEntry {
    pub source_file: String,
    pub source: Option<String>,
    pub format: Option<String>,
    pub file_sha256: String,
    pub size_bytes: i64,
    pub outcome: String,
    pub reason: Option<String>,
    pub duplicate_of: Option<String>,
    pub lines_read: i64,
    pub rows_landed: i64,
    pub rows_dead_lettered: i64,
    pub schema_fingerprint: Option<String>,
    pub contract_version: Option<String>,
    pub schema_change: bool,
    pub added_columns: Option<String>,
    pub missing_columns: Option<String>,
    pub batch_id: String,
    #[serde(serialize_with = "rfc3339")]
    pub ingested_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub known_at: DateTime<Utc>,
}

fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

fn joined<'a>(names: impl IntoIterator<Item = &'a String>) -> Option<String> {
    let list: Vec<&str> = names.into_iter().map(String::as_str).collect();
    (!list.is_empty()).then(|| list.join(","))
}

impl FileLogEntry {
    pub(crate) fn skipped(
        relative: &str,
        routed: &RoutedFile,
        sha256: &str,
        size: u64,
        duplicate_of: &str,
        options: &BronzeOptions,
    ) -> Self {
        Self {
            source_file: relative.to_string(),
            source: routed.source.clone(),
            format: routed.format.map(|f| f.name().to_string()),
            file_sha256: sha256.to_string(),
            size_bytes: size as i64,
            outcome: OUTCOME_SKIPPED.to_string(),
            reason: Some(format!("same content as {duplicate_of}")),
            duplicate_of: Some(duplicate_of.to_string()),
            lines_read: 0,
            rows_landed: 0,
            rows_dead_lettered: 0,
            schema_fingerprint: None,
            contract_version: None,
            schema_change: false,
            added_columns: None,
            missing_columns: None,
            batch_id: options.batch_id.clone(),
            ingested_at: options.ingested_at,
            known_at: options.ingested_at,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn processed(
        relative: &str,
        routed: &RoutedFile,
        contract: Option<&SourceContract>,
        sha256: &str,
        size: u64,
        landed: &Landed,
        lines_read: u64,
        rows_landed: u64,
        rows_dead_lettered: u64,
        known_at: DateTime<Utc>,
        options: &BronzeOptions,
    ) -> Self {
        let (outcome, reason, fingerprint, schema_change, added, missing) = match landed {
            Landed::Records { fingerprint, drift } => (
                if rows_dead_lettered == 0 {
                    OUTCOME_LANDED
                } else {
                    OUTCOME_LANDED_WITH_ERRORS
                },
                (rows_dead_lettered > 0)
                    .then(|| format!("{rows_dead_lettered} line(s) dead-lettered")),
                Some(fingerprint.clone()),
                !drift.is_empty(),
                joined(&drift.added_columns),
                joined(&drift.missing_columns),
            ),
            Landed::Rejected(problem) => (
                OUTCOME_REJECTED,
                Some(problem.reason.clone()),
                problem.fingerprint.clone(),
                !problem.added_columns.is_empty() || !problem.missing_columns.is_empty(),
                joined(&problem.added_columns),
                joined(&problem.missing_columns),
            ),
        };
        Self {
            source_file: relative.to_string(),
            source: routed.source.clone(),
            format: routed.format.map(|f| f.name().to_string()),
            file_sha256: sha256.to_string(),
            size_bytes: size as i64,
            outcome: outcome.to_string(),
            reason,
            duplicate_of: None,
            lines_read: lines_read as i64,
            rows_landed: rows_landed as i64,
            rows_dead_lettered: rows_dead_lettered as i64,
            schema_fingerprint: fingerprint,
            contract_version: contract.map(|c| c.version.clone()),
            schema_change,
            added_columns: added,
            missing_columns: missing,
            batch_id: options.batch_id.clone(),
            ingested_at: options.ingested_at,
            known_at,
        }
    }

    fn to_batch(&self) -> Result<RecordBatch, BronzeError> {
        let text = |v: &str| Arc::new(StringArray::from(vec![v])) as ArrayRef;
        let optional =
            |v: &Option<String>| Arc::new(StringArray::from(vec![v.as_deref()])) as ArrayRef;
        let number = |v: i64| Arc::new(Int64Array::from(vec![v])) as ArrayRef;
        let time = |v: DateTime<Utc>| {
            Arc::new(
                TimestampMicrosecondArray::from(vec![v.timestamp_micros()]).with_timezone("UTC"),
            ) as ArrayRef
        };
        let columns = vec![
            text(&self.source_file),
            optional(&self.source),
            optional(&self.format),
            text(&self.file_sha256),
            number(self.size_bytes),
            text(&self.outcome),
            optional(&self.reason),
            optional(&self.duplicate_of),
            number(self.lines_read),
            number(self.rows_landed),
            number(self.rows_dead_lettered),
            optional(&self.schema_fingerprint),
            optional(&self.contract_version),
            Arc::new(BooleanArray::from(vec![self.schema_change])) as ArrayRef,
            optional(&self.added_columns),
            optional(&self.missing_columns),
            text(&self.batch_id),
            time(self.ingested_at),
            time(self.known_at),
        ];
        Ok(RecordBatch::try_new(file_log_schema(), columns)?)
    }
}

/// Appends entries in one commit: entries already committed survive a crash.
pub(crate) async fn append(
    lake: &Lake,
    entries: &[FileLogEntry],
    facts: &delta::CommitFacts,
) -> Result<(), BronzeError> {
    let batches = entries
        .iter()
        .map(FileLogEntry::to_batch)
        .collect::<Result<Vec<_>, _>>()?;
    delta::append_batches(
        lake,
        &layout::file_log_table(),
        &file_log_schema(),
        &batches,
        facts,
    )
    .await?;
    Ok(())
}

/// The parts of earlier entries that decide what a new run must land.
#[derive(Debug, Clone)]
pub(crate) struct LoggedFile {
    pub source_file: String,
    pub file_sha256: String,
    pub outcome: String,
}

fn text_column(batch: &RecordBatch, name: &str) -> Result<StringArray, BronzeError> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| BronzeError::Internal(format!("file log has no column {name}")))?;
    let as_text = cast(column, &DataType::Utf8)?;
    as_text
        .as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| BronzeError::Internal(format!("file log column {name} is not text")))
}

pub(crate) async fn read_logged_files(lake: &Lake) -> Result<Vec<LoggedFile>, BronzeError> {
    let ctx = datafusion::prelude::SessionContext::new();
    let Some(frame) = crate::tables::file_log_frame(lake, &ctx).await? else {
        return Ok(vec![]);
    };
    let batches = frame
        .select_columns(&["source_file", "file_sha256", "outcome"])?
        .collect()
        .await?;
    let mut logged = Vec::new();
    for batch in &batches {
        let files = text_column(batch, "source_file")?;
        let hashes = text_column(batch, "file_sha256")?;
        let outcomes = text_column(batch, "outcome")?;
        for i in 0..batch.num_rows() {
            if files.is_null(i) || hashes.is_null(i) {
                continue;
            }
            logged.push(LoggedFile {
                source_file: files.value(i).to_string(),
                file_sha256: hashes.value(i).to_string(),
                outcome: outcomes.value(i).to_string(),
            });
        }
    }
    Ok(logged)
}
