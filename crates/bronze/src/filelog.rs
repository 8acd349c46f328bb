//! The file log: one Parquet entry per landing file a run looked at, appended, never rewritten.
//!
//! Appends are idempotent: an entry the log already holds (same path and content, or for a
//! refused file same path and reason; or content whose rows another entry already landed) is
//! not appended again, and each entry's commit carries a transaction id derived from it, so two
//! runs racing to log the same file cannot both succeed. The log stays one entry per file
//! content without relying on the writer lease.

use std::collections::HashSet;
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
use paylake_lake::{delta, Lake, LakeError};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ingest::{BronzeOptions, Landed};
use crate::reader::{clip, MAX_REASON_BYTES};
use crate::schema::file_log_schema;
use crate::BronzeError;

pub const OUTCOME_LANDED: &str = "landed";
pub const OUTCOME_LANDED_WITH_ERRORS: &str = "landed_with_errors";
pub const OUTCOME_REJECTED: &str = "rejected";
pub const OUTCOME_SKIPPED: &str = "skipped_duplicate";
/// Never opened: hidden name, symlink leaving the landing folder, dangling or looping, FIFO,
/// socket or device. `file_sha256` is empty.
pub const OUTCOME_REFUSED: &str = "refused";

/// How the lines of one file were used: `lines_read = rows_landed + rows_dead_lettered +
/// blank_lines`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineCounts {
    pub lines_read: u64,
    pub rows_landed: u64,
    pub rows_dead_lettered: u64,
    pub blank_lines: u64,
}

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
    /// Lines with nothing but spaces, tabs or a line end (NULL in entries written before the
    /// column existed).
    pub blank_lines: i64,
}

fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

fn joined<'a>(names: impl IntoIterator<Item = &'a String>) -> Option<String> {
    let list: Vec<&str> = names.into_iter().map(String::as_str).collect();
    (!list.is_empty()).then(|| clip(&list.join(","), MAX_REASON_BYTES))
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
            format: routed.format_label(),
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
            blank_lines: 0,
        }
    }

    /// A path that was never opened, with the reason.
    pub(crate) fn refused(
        relative: &str,
        routed: &RoutedFile,
        reason: &str,
        options: &BronzeOptions,
    ) -> Self {
        Self {
            source_file: relative.to_string(),
            source: routed.source.clone(),
            format: routed.format_label(),
            file_sha256: String::new(),
            size_bytes: 0,
            outcome: OUTCOME_REFUSED.to_string(),
            reason: Some(clip(reason, MAX_REASON_BYTES)),
            duplicate_of: None,
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
            blank_lines: 0,
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
        counts: LineCounts,
        known_at: DateTime<Utc>,
        options: &BronzeOptions,
    ) -> Self {
        let rows_dead_lettered = counts.rows_dead_lettered;
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
                Some(clip(&problem.reason, MAX_REASON_BYTES)),
                problem.fingerprint.clone(),
                !problem.added_columns.is_empty() || !problem.missing_columns.is_empty(),
                joined(&problem.added_columns),
                joined(&problem.missing_columns),
            ),
        };
        Self {
            source_file: relative.to_string(),
            source: routed.source.clone(),
            format: routed.format_label(),
            file_sha256: sha256.to_string(),
            size_bytes: size as i64,
            outcome: outcome.to_string(),
            reason,
            duplicate_of: None,
            lines_read: counts.lines_read as i64,
            rows_landed: counts.rows_landed as i64,
            rows_dead_lettered: counts.rows_dead_lettered as i64,
            schema_fingerprint: fingerprint,
            contract_version: contract.map(|c| c.version.clone()),
            schema_change,
            added_columns: added,
            missing_columns: missing,
            batch_id: options.batch_id.clone(),
            ingested_at: options.ingested_at,
            known_at,
            blank_lines: counts.blank_lines as i64,
        }
    }

    /// What makes two entries the same: path and content, or for a refused file path and
    /// reason.
    fn key(&self) -> (String, String, String) {
        let reason = if self.outcome == OUTCOME_REFUSED {
            self.reason.clone().unwrap_or_default()
        } else {
            String::new()
        };
        (self.source_file.clone(), self.file_sha256.clone(), reason)
    }

    /// The Delta transaction id of this entry's commit.
    fn txn_id(&self) -> String {
        let (file, sha, reason) = self.key();
        let mut hasher = Sha256::new();
        for part in [file, sha, reason] {
            hasher.update(part.as_bytes());
            hasher.update([0u8]);
        }
        format!("file_log:{}", hex::encode(hasher.finalize()))
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
            number(self.blank_lines),
        ];
        Ok(RecordBatch::try_new(file_log_schema(), columns)?)
    }
}

/// How often an append that lost a race to another run logging the same files is retried.
const APPEND_ATTEMPTS: usize = 5;

/// Appends the entries the log does not hold yet, in one commit (entries already committed
/// survive a crash); returns how many were appended. See the module comment.
pub(crate) async fn append(
    lake: &Lake,
    entries: &[FileLogEntry],
    facts: &delta::CommitFacts,
) -> Result<usize, BronzeError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        // The commit is built on the version the log was read at: a run that logged the same
        // entries after it makes this commit conflict, and the next attempt skips them.
        let read_version = delta::latest_version(lake, &layout::file_log_table()).await?;
        let logged = read_logged_files_at(lake, read_version).await?;
        let keys: HashSet<(String, String, String)> = logged.iter().map(LoggedFile::key).collect();
        let landed: HashSet<&str> = logged
            .iter()
            .filter(|f| outcome_landed_rows(&f.outcome))
            .map(|f| f.file_sha256.as_str())
            .collect();
        let fresh: Vec<&FileLogEntry> = entries
            .iter()
            .filter(|e| {
                let known = keys.contains(&e.key())
                    || (outcome_landed_rows(&e.outcome) && landed.contains(e.file_sha256.as_str()));
                if known {
                    tracing::info!(
                        "{}: already in the file log (logged by another run): not logged again",
                        e.source_file
                    );
                }
                !known
            })
            .collect();
        if fresh.is_empty() {
            return Ok(0);
        }
        let batches = fresh
            .iter()
            .map(|e| e.to_batch())
            .collect::<Result<Vec<_>, _>>()?;
        let txns: Vec<String> = fresh.iter().map(|e| e.txn_id()).collect();
        match delta::append_batches_with_txns(
            lake,
            &layout::file_log_table(),
            &file_log_schema(),
            &batches,
            facts,
            &txns,
            read_version,
        )
        .await
        {
            Ok(_) => return Ok(fresh.len()),
            Err(LakeError::CommitConflict { reason, .. }) if attempt < APPEND_ATTEMPTS => {
                tracing::info!("file log: another run logged at the same time ({reason}); retrying with what it left");
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The parts of earlier entries that decide what a new run must land.
#[derive(Debug, Clone)]
pub(crate) struct LoggedFile {
    pub source_file: String,
    pub file_sha256: String,
    pub outcome: String,
    pub reason: Option<String>,
}

impl LoggedFile {
    fn key(&self) -> (String, String, String) {
        let reason = if self.outcome == OUTCOME_REFUSED {
            self.reason.clone().unwrap_or_default()
        } else {
            String::new()
        };
        (self.source_file.clone(), self.file_sha256.clone(), reason)
    }
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
    read_logged_files_at(lake, None).await
}

/// The file log as of `version` (the latest when `None`).
async fn read_logged_files_at(
    lake: &Lake,
    version: Option<u64>,
) -> Result<Vec<LoggedFile>, BronzeError> {
    let ctx = datafusion::prelude::SessionContext::new();
    let Some(frame) = crate::tables::file_log_frame_at(lake, &ctx, version).await? else {
        return Ok(vec![]);
    };
    let batches = frame
        .select_columns(&["source_file", "file_sha256", "outcome", "reason"])?
        .collect()
        .await?;
    let mut logged = Vec::new();
    for batch in &batches {
        let files = text_column(batch, "source_file")?;
        let hashes = text_column(batch, "file_sha256")?;
        let outcomes = text_column(batch, "outcome")?;
        let reasons = text_column(batch, "reason")?;
        for i in 0..batch.num_rows() {
            if files.is_null(i) || hashes.is_null(i) {
                continue;
            }
            logged.push(LoggedFile {
                source_file: files.value(i).to_string(),
                file_sha256: hashes.value(i).to_string(),
                outcome: outcomes.value(i).to_string(),
                reason: (!reasons.is_null(i)).then(|| reasons.value(i).to_string()),
            });
        }
    }
    Ok(logged)
}

/// Rows Bronze holds that became known after `since` (by their files' knowledge time in the
/// file log). A Silver build as of a later time sees these rows and one as of `since` did
/// not, so a scheduler that built Silver as of `since` has something new to build.
pub async fn rows_known_after(lake: &Lake, since: DateTime<Utc>) -> Result<u64, BronzeError> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    use datafusion::common::ScalarValue;
    use datafusion::functions_aggregate::expr_fn::sum;
    use datafusion::prelude::{col, lit};

    let ctx = datafusion::prelude::SessionContext::new();
    let Some(frame) = crate::tables::file_log_frame_at(lake, &ctx, None).await? else {
        return Ok(0);
    };
    let since = lit(ScalarValue::TimestampMicrosecond(
        Some(since.timestamp_micros()),
        Some("UTC".into()),
    ));
    let batches = frame
        .filter(col("known_at").gt(since))?
        .aggregate(vec![], vec![sum(col("rows_landed")).alias("rows")])?
        .collect()
        .await?;
    let total = batches
        .iter()
        .filter(|batch| batch.num_rows() > 0)
        .map(|batch| {
            let rows = cast(batch.column(0), &DataType::Int64)?;
            let rows = rows.as_primitive::<Int64Type>();
            Ok(if rows.is_null(0) { 0 } else { rows.value(0) })
        })
        .sum::<Result<i64, BronzeError>>()?;
    Ok(u64::try_from(total).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::run_bronze;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::Schema;
    use paylake_lake::delta::TableKind;

    fn options(landing: &std::path::Path) -> BronzeOptions {
        let now = Utc::now();
        BronzeOptions {
            landing: crate::Landing::Folder(landing.to_path_buf()),
            batch_rows: 1000,
            ingested_at: now,
            batch_id: format!("test-{}", now.timestamp_micros()),
            abort_after_rows: None,
            abort_before_file_log: false,
            progress: false,
        }
    }

    fn land(landing: &std::path::Path, name: &str, id: &str) {
        let path = landing.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            path,
            format!(
                "payment_id,src_account_id,dest_account_id,payment_reference,amount,timestamp\n\
                 {id},A1,A2,R,1.00,2024-11-15 09:00:00\n\n"
            ),
        )
        .unwrap();
    }

    async fn logged_blank_lines(lake: &Lake) -> Vec<(String, Option<i64>)> {
        let ctx = datafusion::prelude::SessionContext::new();
        let frame = crate::tables::file_log_frame(lake, &ctx)
            .await
            .unwrap()
            .unwrap();
        let batches = frame
            .select_columns(&["source_file", "blank_lines"])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut out = vec![];
        for batch in &batches {
            let files = text_column(batch, "source_file").unwrap();
            let blanks = cast(batch.column(1), &DataType::Int64).unwrap();
            let blanks = blanks.as_any().downcast_ref::<Int64Array>().unwrap();
            for i in 0..batch.num_rows() {
                out.push((
                    files.value(i).to_string(),
                    (!blanks.is_null(i)).then(|| blanks.value(i)),
                ));
            }
        }
        out.sort();
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_log_without_the_blank_lines_column_gains_it() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().join("lake").to_str().unwrap()).unwrap();
        let landing = dir.path().join("landing");
        // The file log as the first release made it, with one entry.
        land(&landing, "payments/old.csv", "P1");
        let first = run_bronze(&lake, &options(&landing)).await.unwrap();
        let table = layout::file_log_table();
        std::fs::remove_dir_all(dir.path().join("lake/bronze/_file_log")).unwrap();
        let schema = file_log_schema();
        let old_fields: Vec<_> = schema
            .fields()
            .iter()
            .filter(|f| f.name() != "blank_lines")
            .cloned()
            .collect();
        let old_schema = Schema::new(old_fields.clone());
        delta::ensure(&lake, &table, &old_schema, &[], TableKind::AppendOnly)
            .await
            .unwrap();
        let batch = first.files[0].to_batch().unwrap();
        let old_batch = batch
            .project(&(0..old_fields.len()).collect::<Vec<_>>())
            .unwrap();
        delta::append_batches(
            &lake,
            &table,
            &old_schema,
            &[old_batch],
            &Default::default(),
        )
        .await
        .unwrap();

        land(&landing, "payments/new.csv", "P2");
        let second = run_bronze(&lake, &options(&landing)).await.unwrap();
        assert_eq!(second.files.len(), 1, "{:?}", second.files);
        assert_eq!(
            logged_blank_lines(&lake).await,
            vec![
                ("payments/new.csv".to_string(), Some(1)),
                ("payments/old.csv".to_string(), None)
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_logged_twice_at_once_are_logged_once() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().join("lake").to_str().unwrap()).unwrap();
        let landing = dir.path().join("landing");
        for i in 0..3 {
            land(&landing, &format!("payments/p{i}.csv"), &format!("P{i}"));
        }
        let summary = run_bronze(&lake, &options(&landing)).await.unwrap();
        assert_eq!(summary.files.len(), 3);
        let facts = delta::CommitFacts::new();
        // Entries the log already holds are not appended again.
        assert_eq!(append(&lake, &summary.files, &facts).await.unwrap(), 0);

        // Two appends of the same new entries racing each other: one wins, the other adds
        // nothing.
        let fresh: Vec<FileLogEntry> = summary
            .files
            .iter()
            .map(|e| FileLogEntry {
                source_file: format!("elsewhere/{}", e.source_file),
                outcome: OUTCOME_REJECTED.into(),
                ..e.clone()
            })
            .collect();
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let (lake, fresh) = (lake.clone(), fresh.clone());
                tokio::spawn(async move { append(&lake, &fresh, &delta::CommitFacts::new()).await })
            })
            .collect();
        let mut appended = 0;
        for racer in racers {
            appended += racer.await.unwrap().unwrap();
        }
        assert_eq!(appended, 3);
        assert_eq!(logged_blank_lines(&lake).await.len(), 6);
    }

    #[tokio::test]
    async fn rows_known_after_a_time_count_only_files_known_later() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().join("lake").to_str().unwrap()).unwrap();
        let landing = dir.path().join("landing");
        let at = |text: &str| DateTime::parse_from_rfc3339(text).unwrap().to_utc();
        assert_eq!(
            rows_known_after(&lake, at("2024-01-01T00:00:00Z"))
                .await
                .unwrap(),
            0
        );
        land(&landing, "payments/2024-11-15T09-15/a.csv", "P1");
        land(&landing, "payments/2024-11-15T10-15/b.csv", "P2");
        run_bronze(&lake, &options(&landing)).await.unwrap();
        let known_after = |t: &'static str| {
            let lake = lake.clone();
            async move { rows_known_after(&lake, at(t)).await.unwrap() }
        };
        assert_eq!(known_after("2024-11-15T09:00:00Z").await, 2);
        assert_eq!(known_after("2024-11-15T09:15:00Z").await, 1);
        assert_eq!(known_after("2024-11-15T10:15:00Z").await, 0);
    }
}
