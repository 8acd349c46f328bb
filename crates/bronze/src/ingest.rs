//! `paylake bronze`: every new landing file becomes raw-text Parquet in the lake.
//!
//! Per file: hash it, skip it when its content already landed under any name, stream its records
//! into one Parquet object named by the hash (good rows) and one dead-letter object (bad lines),
//! then append one file-log entry. Objects appear only when complete, and a re-run after a crash
//! rewrites the same objects, so each file's rows exist exactly once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Int64Builder, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use paylake_contracts::{
    all_contracts, known_at_from_path, route_landing_file, FileFormat, SourceContract,
};
use paylake_lake::delta::WrittenObject;
use paylake_lake::layout;
use paylake_lake::layout::TableName;
use paylake_lake::sink::ParquetObjectSink;
use paylake_lake::Lake;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::commit::PendingCommits;
use crate::filelog::{self, FileLogEntry};
use crate::reader::{CsvRecords, Drift, FileProblem, JsonRecords, Parsed};
use crate::schema::{bronze_schema, dead_letter_schema};
use crate::BronzeError;

/// How many bad lines per file are also reported on stderr (all are stored).
const BAD_LINES_LOGGED_PER_FILE: u64 = 5;

#[derive(Debug, Clone)]
pub struct BronzeOptions {
    pub landing: PathBuf,
    /// Rows per record batch written to Parquet: bounds memory whatever the file size.
    pub batch_rows: usize,
    /// The run's ingestion time; also the knowledge time of files whose path carries none.
    pub ingested_at: DateTime<Utc>,
    pub batch_id: String,
    /// Testing hook: abort the process once this many rows were buffered (simulates a kill).
    pub abort_after_rows: Option<u64>,
    /// Testing hook: abort after a file's rows are committed, before its file-log entry.
    pub abort_before_file_log: bool,
    pub progress: bool,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SourceSummary {
    pub source: String,
    pub files_seen: u64,
    pub files_landed: u64,
    pub files_rejected: u64,
    pub files_skipped: u64,
    pub lines_read: u64,
    pub rows_landed: u64,
    pub rows_dead_lettered: u64,
    pub schema_changes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BronzeSummary {
    pub batch_id: String,
    pub ingested_at: String,
    pub landing: String,
    pub sources: Vec<SourceSummary>,
    pub files: Vec<FileLogEntry>,
}

impl BronzeSummary {
    pub fn rows_landed(&self) -> u64 {
        self.sources.iter().map(|s| s.rows_landed).sum()
    }
}

/// A file found under the landing directory.
#[derive(Debug, Clone)]
struct LandingFile {
    absolute: PathBuf,
    relative: PathBuf,
    size: u64,
}

fn discover(landing: &Path) -> Result<Vec<LandingFile>, BronzeError> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<LandingFile>) -> Result<(), BronzeError> {
        let entries = std::fs::read_dir(dir).map_err(|e| BronzeError::Landing {
            path: dir.display().to_string(),
            source: e,
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| BronzeError::Landing {
                path: dir.display().to_string(),
                source: e,
            })?;
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            let meta = entry.metadata().map_err(|e| BronzeError::Landing {
                path: path.display().to_string(),
                source: e,
            })?;
            if hidden {
                continue;
            }
            if meta.is_dir() {
                walk(root, &path, out)?;
            } else if meta.is_file() {
                let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                out.push(LandingFile {
                    absolute: path,
                    relative,
                    size: meta.len(),
                });
            }
        }
        Ok(())
    }
    if !landing.is_dir() {
        return Err(BronzeError::Landing {
            path: landing.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        });
    }
    let mut files = Vec::new();
    walk(landing, landing, &mut files)?;
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(files)
}

fn sha256_of(path: &Path) -> Result<String, BronzeError> {
    let io_error = |e| BronzeError::Landing {
        path: path.display().to_string(),
        source: e,
    };
    let mut file = File::open(path).map_err(io_error)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer).map_err(io_error)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn repeated_timestamp(value: i64, len: usize) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(vec![value; len]).with_timezone("UTC"))
}

fn repeated_text(value: &str, len: usize) -> ArrayRef {
    Arc::new(StringArray::from(vec![value; len]))
}

/// What every row of one landing file shares.
struct FileLineage {
    source: Option<String>,
    relative: String,
    sha256: String,
    batch_id: String,
    /// The file's place in this run: names its objects apart from another file's.
    sequence: usize,
    ingested_at: i64,
    known_at: i64,
}

impl FileLineage {
    /// Where this file's object in `table` is written.
    fn object_name(&self) -> String {
        layout::bronze_object_name(&self.sha256, &self.batch_id, self.sequence)
    }

    fn object_path(&self, table: &TableName) -> object_store::path::Path {
        layout::table_root(table).join(self.object_name())
    }

    fn written(&self, rows: u64, size: u64, txn: String) -> WrittenObject {
        WrittenObject {
            path: self.object_name(),
            size,
            rows,
            txn: Some(txn),
        }
    }
}

/// Buffers good rows of one file and writes them as record batches.
struct RowBuffer {
    schema: SchemaRef,
    values: Vec<StringBuilder>,
    rescued: StringBuilder,
    lines: Int64Builder,
    fingerprints: StringBuilder,
    len: usize,
}

impl RowBuffer {
    fn new(contract: &SourceContract) -> Self {
        Self {
            schema: bronze_schema(contract),
            values: contract
                .columns
                .iter()
                .map(|_| StringBuilder::new())
                .collect(),
            rescued: StringBuilder::new(),
            lines: Int64Builder::new(),
            fingerprints: StringBuilder::new(),
            len: 0,
        }
    }

    fn push(
        &mut self,
        line: u64,
        values: &[Option<String>],
        rescued: Option<&str>,
        fingerprint: &str,
    ) {
        for (builder, value) in self.values.iter_mut().zip(values) {
            builder.append_option(value.as_deref());
        }
        self.rescued.append_option(rescued);
        self.lines.append_value(line as i64);
        self.fingerprints.append_value(fingerprint);
        self.len += 1;
    }

    fn take(&mut self, lineage: &FileLineage) -> Result<RecordBatch, BronzeError> {
        let len = self.len;
        self.len = 0;
        let mut columns: Vec<ArrayRef> = self
            .values
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        columns.push(Arc::new(self.rescued.finish()));
        columns.push(repeated_text(&lineage.relative, len));
        columns.push(Arc::new(self.lines.finish()));
        columns.push(repeated_text(&lineage.sha256, len));
        columns.push(repeated_text(&lineage.batch_id, len));
        columns.push(repeated_timestamp(lineage.ingested_at, len));
        columns.push(repeated_timestamp(lineage.known_at, len));
        columns.push(Arc::new(self.fingerprints.finish()));
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}

/// Buffers dead-letter lines of one file.
struct DeadLetterBuffer {
    lines: Int64Builder,
    headers: BooleanBuilder,
    reasons: StringBuilder,
    raw: BinaryBuilder,
    raw_text: StringBuilder,
    len: usize,
}

impl DeadLetterBuffer {
    fn new() -> Self {
        Self {
            lines: Int64Builder::new(),
            headers: BooleanBuilder::new(),
            reasons: StringBuilder::new(),
            raw: BinaryBuilder::new(),
            raw_text: StringBuilder::new(),
            len: 0,
        }
    }

    fn push(&mut self, line: u64, is_header: bool, reason: &str, raw: &[u8]) {
        self.lines.append_value(line as i64);
        self.headers.append_value(is_header);
        self.reasons.append_value(reason);
        self.raw.append_value(raw);
        self.raw_text.append_value(String::from_utf8_lossy(raw));
        self.len += 1;
    }

    fn take(&mut self, lineage: &FileLineage) -> Result<RecordBatch, BronzeError> {
        let len = self.len;
        self.len = 0;
        let source: ArrayRef = Arc::new(StringArray::from(vec![lineage.source.as_deref(); len]));
        let columns: Vec<ArrayRef> = vec![
            source,
            repeated_text(&lineage.relative, len),
            Arc::new(self.lines.finish()),
            Arc::new(self.headers.finish()),
            Arc::new(self.reasons.finish()),
            Arc::new(self.raw.finish()),
            Arc::new(self.raw_text.finish()),
            repeated_text(&lineage.sha256, len),
            repeated_text(&lineage.batch_id, len),
            repeated_timestamp(lineage.ingested_at, len),
            repeated_timestamp(lineage.known_at, len),
        ];
        Ok(RecordBatch::try_new(dead_letter_schema(), columns)?)
    }
}

/// Streams one file's rows and bad lines into their lake objects.
struct FileWriter<'a> {
    lake: &'a Lake,
    options: &'a BronzeOptions,
    lineage: FileLineage,
    rows: Option<RowBuffer>,
    rows_sink: Option<ParquetObjectSink>,
    dead: DeadLetterBuffer,
    dead_sink: Option<ParquetObjectSink>,
    /// Records taken from the file (a used header excluded), counted apart from what is written.
    records_read: u64,
    headers_dead_lettered: u64,
    rows_buffered_in_run: &'a mut u64,
}

impl FileWriter<'_> {
    async fn push_row(
        &mut self,
        line: u64,
        values: &[Option<String>],
        rescued: Option<&str>,
        fingerprint: &str,
    ) -> Result<(), BronzeError> {
        let Some(rows) = self.rows.as_mut() else {
            return Err(BronzeError::Internal(
                "row pushed to a file without a source".into(),
            ));
        };
        rows.push(line, values, rescued, fingerprint);
        if rows.len >= self.options.batch_rows {
            self.flush_rows().await?;
        }
        Ok(())
    }

    async fn push_dead(
        &mut self,
        line: u64,
        is_header: bool,
        reason: &str,
        raw: &[u8],
    ) -> Result<(), BronzeError> {
        if self.records_read <= BAD_LINES_LOGGED_PER_FILE && !is_header {
            tracing::warn!("{}:{}: {}", self.lineage.relative, line, reason);
        }
        self.dead.push(line, is_header, reason, raw);
        if is_header {
            self.headers_dead_lettered += 1;
        }
        if self.dead.len >= self.options.batch_rows {
            self.flush_dead().await?;
        }
        Ok(())
    }

    async fn flush_rows(&mut self) -> Result<(), BronzeError> {
        let Some(rows) = self.rows.as_mut() else {
            return Ok(());
        };
        if rows.len == 0 {
            return Ok(());
        }
        let batch = rows.take(&self.lineage)?;
        let sink = match self.rows_sink.as_mut() {
            Some(sink) => sink,
            None => {
                let source = self.lineage.source.as_deref().unwrap_or_default();
                let path = self.lineage.object_path(&layout::bronze_table(source));
                self.rows_sink
                    .insert(ParquetObjectSink::create(self.lake, &path, batch.schema())?)
            }
        };
        sink.write(&batch).await?;
        *self.rows_buffered_in_run += batch.num_rows() as u64;
        if let Some(limit) = self.options.abort_after_rows {
            if *self.rows_buffered_in_run >= limit {
                tracing::error!(
                    "PAYLAKE_ABORT_AFTER_ROWS reached: aborting mid-file as a crash test"
                );
                std::process::abort();
            }
        }
        Ok(())
    }

    async fn flush_dead(&mut self) -> Result<(), BronzeError> {
        if self.dead.len == 0 {
            return Ok(());
        }
        let batch = self.dead.take(&self.lineage)?;
        let sink = match self.dead_sink.as_mut() {
            Some(sink) => sink,
            None => {
                let path = self.lineage.object_path(&layout::dead_letter_table());
                self.dead_sink.insert(ParquetObjectSink::create(
                    self.lake,
                    &path,
                    dead_letter_schema(),
                )?)
            }
        };
        sink.write(&batch).await?;
        Ok(())
    }

    /// Writes what is buffered and closes the objects; they are committed by the caller, in
    /// groups. Each object's transaction id is the file's content hash (for the dead letter:
    /// hash and path, since a rejected file may land later under a name that routes it).
    async fn finish(mut self) -> Result<FinishedFile, BronzeError> {
        self.flush_rows().await?;
        self.flush_dead().await?;
        let mut finished = FinishedFile {
            records_read: self.records_read,
            ..Default::default()
        };
        if let Some(sink) = self.rows_sink.take() {
            let source = self.lineage.source.as_deref().unwrap_or_default();
            let (rows, size) = sink.finish().await?;
            finished.rows_landed = rows;
            let schema = self
                .rows
                .as_ref()
                .map(|r| r.schema.clone())
                .ok_or_else(|| {
                    BronzeError::Internal("rows written for a file without a source".into())
                })?;
            let txn = self.lineage.sha256.clone();
            finished.objects.push((
                layout::bronze_table(source),
                schema,
                self.lineage.written(rows, size, txn),
            ));
        }
        if let Some(sink) = self.dead_sink.take() {
            let (lines, size) = sink.finish().await?;
            finished.dead_lettered = lines - self.headers_dead_lettered;
            let txn = format!("{}:{}", self.lineage.sha256, self.lineage.relative);
            finished.objects.push((
                layout::dead_letter_table(),
                dead_letter_schema(),
                self.lineage.written(lines, size, txn),
            ));
        }
        Ok(finished)
    }
}

/// One landing file written to its objects, not yet committed.
#[derive(Default)]
struct FinishedFile {
    records_read: u64,
    rows_landed: u64,
    dead_lettered: u64,
    objects: Vec<(TableName, SchemaRef, WrittenObject)>,
}

/// Runs Bronze ingestion over a landing directory.
pub async fn run_bronze(
    lake: &Lake,
    options: &BronzeOptions,
) -> Result<BronzeSummary, BronzeError> {
    let contracts = all_contracts()?;
    let files = discover(&options.landing)?;
    crate::tables::ensure_tables(lake).await?;
    let mut pending = PendingCommits::new(&options.batch_id, options.abort_before_file_log);
    let logged = filelog::read_logged_files(lake).await?;
    // Only content whose rows landed blocks a copy: a file rejected or unrouted under one
    // name must still land when it arrives under a name that routes it.
    let mut landed_by_hash: HashMap<String, String> = logged
        .iter()
        .filter(|f| filelog::outcome_landed_rows(&f.outcome))
        .map(|f| (f.file_sha256.clone(), f.source_file.clone()))
        .collect();
    let mut logged_pairs: HashSet<(String, String)> = logged
        .into_iter()
        .map(|f| (f.source_file, f.file_sha256))
        .collect();

    let progress = progress_bar(options.progress, files.iter().map(|f| f.size).sum());
    let mut summaries: BTreeMap<String, SourceSummary> = contracts
        .iter()
        .map(|c| {
            (
                c.source.clone(),
                SourceSummary {
                    source: c.source.clone(),
                    ..Default::default()
                },
            )
        })
        .collect();
    let mut entries = Vec::new();
    let mut rows_buffered_in_run = 0u64;

    for file in &files {
        progress.set_message(file.relative.display().to_string());
        let relative = file.relative.to_string_lossy().replace('\\', "/");
        let routed = route_landing_file(&file.relative, &contracts);
        let sha256 = sha256_of(&file.absolute)?;
        let summary_key = routed
            .source
            .clone()
            .unwrap_or_else(|| "(unrouted)".to_string());
        let summary = summaries
            .entry(summary_key.clone())
            .or_insert_with(|| SourceSummary {
                source: summary_key,
                ..Default::default()
            });
        summary.files_seen += 1;

        let pair = (relative.clone(), sha256.clone());
        if logged_pairs.contains(&pair) {
            // This very file was seen before (landed, rejected or skipped): same answer.
            tracing::debug!("{relative}: already seen");
            summary.files_skipped += 1;
            progress.inc(file.size);
            continue;
        }
        if let Some(first) = landed_by_hash.get(&sha256) {
            summary.files_skipped += 1;
            tracing::info!("{relative}: same content as {first}, skipped");
            let entry =
                FileLogEntry::skipped(&relative, &routed, &sha256, file.size, first, options);
            logged_pairs.insert(pair);
            entries.push(entry.clone());
            pending.add_entry(entry);
            progress.inc(file.size);
            continue;
        }

        let known_at = known_at_from_path(&file.relative).unwrap_or(options.ingested_at);
        let lineage = FileLineage {
            source: routed.source.clone(),
            relative: relative.clone(),
            sha256: sha256.clone(),
            batch_id: options.batch_id.clone(),
            sequence: entries.len(),
            ingested_at: micros(options.ingested_at),
            known_at: micros(known_at),
        };
        let contract = routed
            .source
            .as_deref()
            .and_then(|s| contracts.iter().find(|c| c.source == s));
        let mut writer = FileWriter {
            lake,
            options,
            lineage,
            rows: contract.map(RowBuffer::new),
            rows_sink: None,
            dead: DeadLetterBuffer::new(),
            dead_sink: None,
            records_read: 0,
            headers_dead_lettered: 0,
            rows_buffered_in_run: &mut rows_buffered_in_run,
        };

        let outcome = match (contract, routed.format, routed.problem.as_deref()) {
            (Some(contract), Some(format), None) => {
                land_records(&mut writer, &file.absolute, contract, format).await?
            }
            (_, _, problem) => {
                let reason = problem
                    .unwrap_or("file cannot be routed to a source")
                    .to_string();
                let problem = FileProblem {
                    reason,
                    fingerprint: None,
                    added_columns: vec![],
                    missing_columns: vec![],
                };
                reject_whole_file(&mut writer, &file.absolute, &problem, false).await?;
                Landed::Rejected(problem)
            }
        };
        let finished = writer.finish().await?;
        let (lines_read, rows_landed, rows_dead_lettered) = (
            finished.records_read,
            finished.rows_landed,
            finished.dead_lettered,
        );
        for (table, schema, object) in finished.objects {
            pending
                .add_object(lake, table, schema, object, &sha256)
                .await?;
        }
        let entry = FileLogEntry::processed(
            &relative,
            &routed,
            contract,
            &sha256,
            file.size,
            &outcome,
            lines_read,
            rows_landed,
            rows_dead_lettered,
            known_at,
            options,
        );
        if let Landed::Rejected(problem) = &outcome {
            tracing::warn!("{relative}: rejected whole: {}", problem.reason);
        }
        summary.lines_read += lines_read;
        summary.rows_landed += rows_landed;
        summary.rows_dead_lettered += rows_dead_lettered;
        summary.schema_changes += u64::from(entry.schema_change);
        if matches!(outcome, Landed::Rejected(_)) {
            summary.files_rejected += 1;
        } else {
            summary.files_landed += 1;
        }
        if filelog::outcome_landed_rows(&entry.outcome) {
            landed_by_hash.insert(sha256.clone(), relative.clone());
        }
        logged_pairs.insert((relative, sha256));
        entries.push(entry.clone());
        pending.add_entry(entry);
        if pending.is_full() {
            pending.flush(lake).await?;
        }
        progress.inc(file.size);
    }
    pending.flush(lake).await?;
    progress.finish_and_clear();

    Ok(BronzeSummary {
        batch_id: options.batch_id.clone(),
        ingested_at: options
            .ingested_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        landing: options.landing.display().to_string(),
        sources: summaries.into_values().collect(),
        files: entries,
    })
}

/// How a file's records turned out.
pub(crate) enum Landed {
    Records { fingerprint: String, drift: Drift },
    Rejected(FileProblem),
}

async fn land_records(
    writer: &mut FileWriter<'_>,
    path: &Path,
    contract: &SourceContract,
    format: FileFormat,
) -> Result<Landed, BronzeError> {
    let io_error = |e| BronzeError::Landing {
        path: path.display().to_string(),
        source: e,
    };
    let file = BufReader::new(File::open(path).map_err(io_error)?);
    match format {
        FileFormat::Csv => {
            let mut records = match CsvRecords::open(file, contract).map_err(io_error)? {
                Ok(records) => records,
                Err(problem) => {
                    reject_whole_file(writer, path, &problem, true).await?;
                    return Ok(Landed::Rejected(problem));
                }
            };
            while let Some(parsed) = records.next_record().map_err(io_error)? {
                push_parsed(writer, parsed).await?;
            }
            Ok(Landed::Records {
                fingerprint: records.fingerprint().to_string(),
                drift: records.drift,
            })
        }
        FileFormat::JsonLines => {
            let mut records = JsonRecords::new(file, contract);
            while let Some(parsed) = records.next_record().map_err(io_error)? {
                push_parsed(writer, parsed).await?;
            }
            let fingerprint =
                paylake_contracts::schema_fingerprint(records.keys_seen.iter().map(String::as_str));
            Ok(Landed::Records {
                fingerprint,
                drift: records.drift,
            })
        }
    }
}

async fn push_parsed(writer: &mut FileWriter<'_>, parsed: Parsed) -> Result<(), BronzeError> {
    writer.records_read += 1;
    match parsed {
        Parsed::Row {
            line,
            values,
            rescued,
            fingerprint,
        } => {
            writer
                .push_row(line, &values, rescued.as_deref(), &fingerprint)
                .await
        }
        Parsed::Bad { line, raw, reason } => writer.push_dead(line, false, &reason, &raw).await,
    }
}

/// Dead-letters every line of a file, byte for byte, with the file-level reason.
async fn reject_whole_file(
    writer: &mut FileWriter<'_>,
    path: &Path,
    problem: &FileProblem,
    first_line_is_header: bool,
) -> Result<(), BronzeError> {
    use std::io::BufRead;
    let io_error = |e| BronzeError::Landing {
        path: path.display().to_string(),
        source: e,
    };
    let mut input = BufReader::new(File::open(path).map_err(io_error)?);
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).map_err(io_error)? == 0 {
            break;
        }
        number += 1;
        let is_header = first_line_is_header && number == 1;
        if !is_header {
            writer.records_read += 1;
        }
        writer
            .push_dead(number, is_header, &problem.reason, &line)
            .await?;
    }
    Ok(())
}

fn progress_bar(enabled: bool, total_bytes: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total_bytes);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} bronze [{bar:30}] {bytes}/{total_bytes} {wide_msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
