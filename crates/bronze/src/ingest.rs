//! `paylake bronze`: every new landing file becomes raw-text Parquet in the lake.
//!
//! Per file: hash it, skip it when its content already landed under any name, stream its records
//! into one Parquet object named by the hash (good rows) and one dead-letter object (bad lines),
//! then append one file-log entry. Objects appear only when complete, and a re-run after a crash
//! rewrites the same objects, so each file's rows exist exactly once.
//!
//! Only regular files are opened. A symlink is followed when it resolves inside the landing
//! folder; one that leaves it, a dangling one, a loop, a FIFO, socket or device, and a name
//! starting with `.` (hidden and editor files such as `.DS_Store`, `.~lock.x.csv#`) are refused
//! unopened: each gets one file-log entry (outcome `refused`, with the reason) the first time it
//! is seen with that reason, and is counted as refused in every run's summary.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::Component;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Int64Builder, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use object_store::path::Path as ObjectPath;
use paylake_contracts::{
    all_contracts, known_at_from_path, route_landing_file, Compression, FileFormat, SourceContract,
};
use paylake_lake::delta::{self, WrittenObject};
use paylake_lake::layout;
use paylake_lake::layout::{Layer, TableName};
use paylake_lake::sink::ParquetObjectSink;
use paylake_lake::Lake;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::commit::PendingCommits;
use crate::filelog::{self, FileLogEntry};
use crate::landing::{Landing, RemoveOnDrop, StoreLanding};
use crate::reader::{
    clip, CsvRecords, Drift, FileProblem, JsonRecords, LineReader, Parsed, MAX_LINE_BYTES,
    MAX_REASON_BYTES,
};
use crate::schema::{bronze_schema, dead_letter_schema};
use crate::unpack::{corrupt_reason, unpack, InputState};
use crate::workbook::{WorkbookProblem, WorkbookRecords};
use crate::BronzeError;

/// How many bad lines per file are also reported on stderr (all are stored).
const BAD_LINES_LOGGED_PER_FILE: u64 = 5;

#[derive(Debug, Clone)]
pub struct BronzeOptions {
    pub landing: Landing,
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
    /// Never opened: hidden names, symlinks that leave the landing folder or lead nowhere,
    /// FIFOs, sockets, devices.
    pub files_refused: u64,
    pub files_skipped: u64,
    /// Lines after the header: `rows_landed + rows_dead_lettered + blank_lines`.
    pub lines_read: u64,
    pub rows_landed: u64,
    pub rows_dead_lettered: u64,
    pub blank_lines: u64,
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

    /// The run added no row to any Bronze source table, so Silver and Gold would rebuild
    /// from exactly the facts they last saw.
    pub fn nothing_new(&self) -> bool {
        self.rows_landed() == 0
    }
}

/// A regular file found under the landing directory (directly or through a symlink that
/// stays inside it).
#[derive(Debug, Clone)]
struct LandingFile {
    /// What is opened: the file itself, or the resolved target of a symlink.
    absolute: PathBuf,
    /// The name it has in the landing folder (a symlink's own name).
    relative: PathBuf,
    size: u64,
    /// For a store landing: the object to copy to `absolute` (in the run's scratch folder)
    /// before it is read.
    object: Option<ObjectPath>,
}

/// What discovery found at one path of the landing folder.
#[derive(Debug, Clone)]
enum Found {
    File(LandingFile),
    /// Not opened, with the reason.
    Refused {
        relative: PathBuf,
        reason: String,
    },
}

impl Found {
    fn relative(&self) -> &Path {
        match self {
            Found::File(f) => &f.relative,
            Found::Refused { relative, .. } => relative,
        }
    }
}

fn special_kind(file_type: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if file_type.is_socket() {
            return "a socket";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
        if file_type.is_char_device() {
            return "a character device";
        }
    }
    let _ = file_type;
    "not a regular file"
}

fn is_loop_error(error: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        error.raw_os_error() == Some(libc::ELOOP)
    }
    #[cfg(not(unix))]
    {
        let _ = error;
        false
    }
}

/// Opens a landing file for reading only if it is a regular file: opening never blocks (a FIFO
/// swapped in after discovery) and what was opened is checked, not the name.
pub(crate) fn open_regular(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file any more (it changed after the landing folder was listed)",
        ));
    }
    Ok(file)
}

fn discover(landing: &Path) -> Result<Vec<Found>, BronzeError> {
    let io_error = |path: &Path| {
        let path = path.display().to_string();
        move |source| BronzeError::Landing { path, source }
    };
    /// `dir` is the real (resolved) folder read; `chain` the real folders from the root down
    /// to it, to recognise a symlink back up as a loop.
    fn walk(
        root: &Path,
        dir: &Path,
        relative_dir: &Path,
        chain: &mut Vec<PathBuf>,
        out: &mut Vec<Found>,
    ) -> Result<(), BronzeError> {
        let landing_error = |path: &Path, source| BronzeError::Landing {
            path: path.display().to_string(),
            source,
        };
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| landing_error(dir, e))? {
            entries.push(entry.map_err(|e| landing_error(dir, e))?);
        }
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name();
            let relative = relative_dir.join(&name);
            let meta = std::fs::symlink_metadata(&path).map_err(|e| landing_error(&path, e))?;
            let refuse = |reason: String| Found::Refused {
                relative: relative.clone(),
                reason,
            };
            if name.to_string_lossy().starts_with('.') {
                let what = if meta.is_dir() {
                    "hidden folder (name starts with '.'): not read, nor anything in it"
                } else {
                    "hidden file (name starts with '.', as editor and system files do): not read"
                };
                out.push(refuse(what.to_string()));
                continue;
            }
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_else(|_| "?".into());
                let real = match std::fs::canonicalize(&path) {
                    Ok(real) => real,
                    Err(e) if is_loop_error(&e) => {
                        out.push(refuse(format!(
                            "symlink loop: '{target}' never resolves to a file"
                        )));
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        out.push(refuse(format!(
                            "dangling symlink: its target '{target}' does not exist"
                        )));
                        continue;
                    }
                    Err(e) => {
                        out.push(refuse(format!(
                            "symlink to '{target}' cannot be resolved: {e}"
                        )));
                        continue;
                    }
                };
                if !real.starts_with(root) {
                    out.push(refuse(format!(
                        "symlink to '{target}' leaves the landing folder: not followed"
                    )));
                    continue;
                }
                let target_meta = std::fs::metadata(&real).map_err(|e| landing_error(&real, e))?;
                if target_meta.is_dir() {
                    if chain.iter().any(|c| c == &real) {
                        out.push(refuse(format!(
                            "symlink loop: '{target}' is a folder that contains this link"
                        )));
                        continue;
                    }
                    chain.push(real.clone());
                    walk(root, &real, &relative, chain, out)?;
                    chain.pop();
                } else if target_meta.is_file() {
                    out.push(Found::File(LandingFile {
                        absolute: real,
                        relative,
                        size: target_meta.len(),
                        object: None,
                    }));
                } else {
                    let kind = special_kind(&target_meta.file_type());
                    out.push(refuse(format!(
                        "symlink to '{target}', which is {kind}: never opened"
                    )));
                }
            } else if meta.is_dir() {
                let real = std::fs::canonicalize(&path).map_err(|e| landing_error(&path, e))?;
                chain.push(real.clone());
                walk(root, &real, &relative, chain, out)?;
                chain.pop();
            } else if meta.is_file() {
                out.push(Found::File(LandingFile {
                    absolute: path,
                    relative,
                    size: meta.len(),
                    object: None,
                }));
            } else {
                let kind = special_kind(&meta.file_type());
                out.push(refuse(format!("{kind}: never opened")));
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
    let root = std::fs::canonicalize(landing).map_err(io_error(landing))?;
    let mut found = Vec::new();
    let mut chain = vec![root.clone()];
    walk(&root, &root, Path::new(""), &mut chain, &mut found)?;
    found.sort_by(|a, b| a.relative().cmp(b.relative()));
    Ok(found)
}

/// Lists a store landing prefix: each object is to be copied to `scratch/<relative name>`.
async fn discover_objects(
    landing: &StoreLanding,
    scratch: &Path,
) -> Result<Vec<Found>, BronzeError> {
    let listing = landing.list().await?;
    let mut found: Vec<Found> = listing
        .hidden
        .into_iter()
        .map(|(relative, reason)| Found::Refused {
            relative,
            reason: reason.to_string(),
        })
        .collect();
    found.extend(listing.objects.into_iter().map(|object| {
        Found::File(LandingFile {
            absolute: scratch.join(&object.relative),
            relative: object.relative,
            size: object.size,
            object: Some(object.key),
        })
    }));
    found.sort_by(|a, b| a.relative().cmp(b.relative()));
    Ok(found)
}

/// The landing file as the readers open it: a store object is copied to the scratch folder
/// first (and its copy removed when the guard drops), with its size as copied.
async fn local_copy(
    landing: &Landing,
    file: &LandingFile,
) -> Result<(LandingFile, Option<RemoveOnDrop>), BronzeError> {
    match (landing, &file.object) {
        (Landing::Store(store), Some(key)) => {
            let guard = RemoveOnDrop(file.absolute.clone());
            let size = store.fetch(key, &file.absolute).await?;
            Ok((
                LandingFile {
                    size,
                    ..file.clone()
                },
                Some(guard),
            ))
        }
        _ => Ok((file.clone(), None)),
    }
}

/// Errors about a fetched copy name the object (`s3://bucket/key`), not the scratch file.
fn named_by_origin(landing: &Landing, file: &LandingFile) -> impl Fn(BronzeError) -> BronzeError {
    let origin = match (landing, &file.object) {
        (Landing::Store(store), Some(key)) => {
            Some((file.absolute.display().to_string(), store.uri_of(key)))
        }
        _ => None,
    };
    move |error| match (error, &origin) {
        (BronzeError::Landing { path, source }, Some((copy, uri))) if &path == copy => {
            BronzeError::Landing {
                path: uri.clone(),
                source,
            }
        }
        (error, _) => error,
    }
}

/// A landing path as the lake records it: `/`-separated, relative to the landing folder.
fn relative_text(relative: &Path) -> String {
    let parts: Vec<String> = relative
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    parts.join("/")
}

fn sha256_of(path: &Path) -> Result<String, BronzeError> {
    let io_error = |e| BronzeError::Landing {
        path: path.display().to_string(),
        source: e,
    };
    let mut file = open_regular(path).map_err(io_error)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = match file.read(&mut buffer) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(e)),
        };
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
    /// What the rows' `_source_file` says: the path, and for a workbook `path#Sheet`.
    rows_file: String,
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
            txns: vec![txn],
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

    /// Drops what is buffered.
    fn clear(&mut self) {
        for builder in &mut self.values {
            builder.finish();
        }
        self.rescued.finish();
        self.lines.finish();
        self.fingerprints.finish();
        self.len = 0;
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
        columns.push(repeated_text(&lineage.rows_file, len));
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

    /// Drops what is buffered.
    fn clear(&mut self) {
        *self = Self::new();
    }

    fn take(&mut self, lineage: &FileLineage) -> Result<RecordBatch, BronzeError> {
        let len = self.len;
        self.len = 0;
        let source: ArrayRef = Arc::new(StringArray::from(vec![lineage.source.as_deref(); len]));
        let columns: Vec<ArrayRef> = vec![
            source,
            repeated_text(&lineage.rows_file, len),
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
    /// Lines with nothing but spaces, tabs or a line end: counted, not stored.
    blank_lines: u64,
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
        let reason = clip(reason, MAX_REASON_BYTES);
        if self.records_read <= BAD_LINES_LOGGED_PER_FILE && !is_header {
            tracing::warn!("{}:{}: {}", self.lineage.relative, line, reason);
        }
        self.dead.push(line, is_header, &reason, raw);
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
                self.rows_sink.insert(ParquetObjectSink::create(
                    self.lake,
                    &path,
                    batch.schema(),
                    delta::writer_properties(Layer::Bronze),
                )?)
            }
        };
        sink.write(&batch).await?;
        self.count_rows(batch.num_rows());
        Ok(())
    }

    /// Counts rows handed to an object; the crash hook aborts when the run reaches its count.
    fn count_rows(&mut self, rows: usize) {
        *self.rows_buffered_in_run += rows as u64;
        if let Some(limit) = self.options.abort_after_rows {
            if *self.rows_buffered_in_run >= limit {
                tracing::error!(
                    "PAYLAKE_ABORT_AFTER_ROWS reached: aborting mid-file as a crash test"
                );
                std::process::abort();
            }
        }
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
                // A Bronze table, written with Bronze's codec.
                self.dead_sink.insert(ParquetObjectSink::create(
                    self.lake,
                    &path,
                    dead_letter_schema(),
                    delta::writer_properties(Layer::Bronze),
                )?)
            }
        };
        sink.write(&batch).await?;
        Ok(())
    }

    /// Forgets everything read from the file so far: buffered rows and lines are dropped and
    /// the objects begun are never finished, so they never appear (a damaged archive found
    /// part-way lands nothing).
    fn discard(&mut self) {
        if let Some(rows) = self.rows.as_mut() {
            rows.clear();
        }
        self.dead.clear();
        self.rows_sink = None;
        self.dead_sink = None;
        self.records_read = 0;
        self.blank_lines = 0;
        self.headers_dead_lettered = 0;
    }

    /// Writes what is buffered and closes the objects; they are committed by the caller, in
    /// groups. Each object's transaction id is the file's content hash (for the dead letter:
    /// hash and path, since a rejected file may land later under a name that routes it). The
    /// rows of a file that fit in one batch are handed back instead, for its group's shared
    /// object: an object per 15-minute batch made Bronze spend its time creating files.
    async fn finish(mut self) -> Result<FinishedFile, BronzeError> {
        let mut finished = FinishedFile {
            records_read: self.records_read,
            blank_lines: self.blank_lines,
            ..Default::default()
        };
        let small = match self.rows.as_mut() {
            Some(rows) if self.rows_sink.is_none() && rows.len > 0 => {
                Some(rows.take(&self.lineage)?)
            }
            _ => None,
        };
        if let Some(batch) = small {
            let table = layout::bronze_table(self.lineage.source.as_deref().unwrap_or_default());
            finished.rows_landed = batch.num_rows() as u64;
            self.count_rows(batch.num_rows());
            finished.small_rows = Some((table, batch));
        }
        self.flush_rows().await?;
        self.flush_dead().await?;
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
    blank_lines: u64,
    rows_landed: u64,
    dead_lettered: u64,
    objects: Vec<(TableName, SchemaRef, WrittenObject)>,
    /// All the rows of a file that fit in one batch, for the shared object of its table.
    small_rows: Option<(TableName, RecordBatch)>,
}

/// Runs Bronze ingestion over a landing directory.
pub async fn run_bronze(
    lake: &Lake,
    options: &BronzeOptions,
) -> Result<BronzeSummary, BronzeError> {
    let contracts = all_contracts()?;
    // A store landing's objects are copied into a scratch folder one at a time; the folder
    // is removed when the run ends.
    let (found, _scratch) = match &options.landing {
        Landing::Folder(folder) => (discover(folder)?, None),
        Landing::Store(store) => {
            let scratch = tempfile::Builder::new()
                .prefix("paylake-landing-")
                .tempdir()
                .map_err(|source| BronzeError::Landing {
                    path: std::env::temp_dir().display().to_string(),
                    source,
                })?;
            let found = discover_objects(store, scratch.path()).await?;
            (found, Some(scratch))
        }
    };
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
    // A refused file is logged once per path and reason, not on every run.
    let mut refused_logged: HashSet<(String, String)> = logged
        .iter()
        .filter(|f| f.outcome == filelog::OUTCOME_REFUSED)
        .map(|f| (f.source_file.clone(), f.reason.clone().unwrap_or_default()))
        .collect();
    let mut logged_pairs: HashSet<(String, String)> = logged
        .into_iter()
        .filter(|f| f.outcome != filelog::OUTCOME_REFUSED)
        .map(|f| (f.source_file, f.file_sha256))
        .collect();

    let total_bytes = found
        .iter()
        .map(|f| match f {
            Found::File(file) => file.size,
            Found::Refused { .. } => 0,
        })
        .sum();
    let progress = progress_bar(options.progress, total_bytes);
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

    for item in &found {
        let relative = relative_text(item.relative());
        progress.set_message(relative.clone());
        let routed = route_landing_file(item.relative(), &contracts);
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

        let listed = match item {
            Found::File(file) => file,
            Found::Refused { reason, .. } => {
                summary.files_refused += 1;
                let key = (relative.clone(), reason.clone());
                if refused_logged.contains(&key) {
                    tracing::debug!("{relative}: refused again: {reason}");
                    continue;
                }
                tracing::warn!("{relative}: refused: {reason}");
                let entry = FileLogEntry::refused(&relative, &routed, reason, options);
                refused_logged.insert(key);
                entries.push(entry.clone());
                pending.add_entry(entry);
                if pending.is_full() {
                    pending.flush(lake).await?;
                }
                continue;
            }
        };
        let (file, _copy) = local_copy(&options.landing, listed).await?;
        let file = &file;
        let name_errors = named_by_origin(&options.landing, file);
        let sha256 = sha256_of(&file.absolute).map_err(&name_errors)?;

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
            rows_file: relative.clone(),
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
            blank_lines: 0,
            headers_dead_lettered: 0,
            rows_buffered_in_run: &mut rows_buffered_in_run,
        };

        let outcome = match (contract, routed.format, routed.problem.as_deref()) {
            (Some(contract), Some(format), None) => {
                let kind = FileKind {
                    format,
                    compression: routed.compression,
                    size: file.size,
                };
                land_records(&mut writer, &file.absolute, contract, kind)
                    .await
                    .map_err(&name_errors)?
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
                // Unrouted: its bytes are kept as they are, compressed or not.
                let raw = Compression::None;
                reject_whole_file(&mut writer, &file.absolute, raw, &problem, false)
                    .await
                    .map_err(|e| match e {
                        RejectError::Read(source, _) => BronzeError::Landing {
                            path: file.absolute.display().to_string(),
                            source,
                        },
                        RejectError::Bronze(e) => e,
                    })
                    .map_err(&name_errors)?;
                Landed::Rejected(problem)
            }
        };
        let finished = writer.finish().await?;
        let counts = filelog::LineCounts {
            lines_read: finished.records_read + finished.blank_lines,
            rows_landed: finished.rows_landed,
            rows_dead_lettered: finished.dead_lettered,
            blank_lines: finished.blank_lines,
        };
        for (table, schema, object) in finished.objects {
            pending.add_object(lake, table, schema, object).await?;
        }
        if let Some((table, batch)) = finished.small_rows {
            pending.add_small_file(lake, table, batch, &sha256).await?;
        }
        let entry = FileLogEntry::processed(
            &relative, &routed, contract, &sha256, file.size, &outcome, counts, known_at, options,
        );
        if let Landed::Rejected(problem) = &outcome {
            tracing::warn!("{relative}: rejected whole: {}", problem.reason);
        }
        summary.lines_read += counts.lines_read;
        summary.rows_landed += counts.rows_landed;
        summary.rows_dead_lettered += counts.rows_dead_lettered;
        summary.blank_lines += counts.blank_lines;
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
        landing: options.landing.display(),
        sources: summaries.into_values().collect(),
        files: entries,
    })
}

/// How a file's records turned out.
pub(crate) enum Landed {
    Records { fingerprint: String, drift: Drift },
    Rejected(FileProblem),
}

/// How a routed landing file is read.
#[derive(Debug, Clone, Copy)]
struct FileKind {
    format: FileFormat,
    compression: Compression,
    /// Its size as received, for reasons.
    size: u64,
}

/// A read error while landing a compressed file: a damaged archive rejects the file and drops
/// what was read of it; an error reading the file itself stops the run.
fn unpack_failure(
    writer: &mut FileWriter<'_>,
    path: &Path,
    kind: FileKind,
    state: &InputState,
    error: std::io::Error,
) -> Result<Landed, BronzeError> {
    if kind.compression == Compression::None || state.read_failed() {
        return Err(BronzeError::Landing {
            path: path.display().to_string(),
            source: error,
        });
    }
    writer.discard();
    let reason = corrupt_reason(kind.compression, &error, state, kind.size);
    Ok(Landed::Rejected(FileProblem::plain(reason)))
}

async fn land_records(
    writer: &mut FileWriter<'_>,
    path: &Path,
    contract: &SourceContract,
    kind: FileKind,
) -> Result<Landed, BronzeError> {
    let io_error = |e| BronzeError::Landing {
        path: path.display().to_string(),
        source: e,
    };
    let file = open_regular(path).map_err(io_error)?;
    if kind.format == FileFormat::Excel {
        return land_workbook(writer, file, contract).await;
    }
    let (input, state) = unpack(file, kind.compression).map_err(io_error)?;
    match kind.format {
        FileFormat::Csv => {
            let mut records = match CsvRecords::open(input, contract) {
                Ok(Ok(records)) => records,
                Ok(Err(problem)) => {
                    return match reject_whole_file(writer, path, kind.compression, &problem, true)
                        .await
                    {
                        Ok(()) => Ok(Landed::Rejected(problem)),
                        Err(RejectError::Read(e, state)) => {
                            unpack_failure(writer, path, kind, &state, e)
                        }
                        Err(RejectError::Bronze(e)) => Err(e),
                    };
                }
                Err(e) => return unpack_failure(writer, path, kind, &state, e),
            };
            loop {
                match records.next_record() {
                    Ok(Some(parsed)) => push_parsed(writer, parsed).await?,
                    Ok(None) => break,
                    Err(e) => return unpack_failure(writer, path, kind, &state, e),
                }
            }
            writer.blank_lines += records.counts.blank;
            Ok(Landed::Records {
                fingerprint: records.fingerprint().to_string(),
                drift: records.drift,
            })
        }
        FileFormat::JsonLines => {
            let mut records = JsonRecords::new(input, contract);
            loop {
                match records.next_record() {
                    Ok(Some(parsed)) => push_parsed(writer, parsed).await?,
                    Ok(None) => break,
                    Err(e) => return unpack_failure(writer, path, kind, &state, e),
                }
            }
            writer.blank_lines += records.blank_lines;
            let fingerprint =
                paylake_contracts::schema_fingerprint(records.keys_seen.iter().map(String::as_str));
            Ok(Landed::Records {
                fingerprint,
                drift: records.drift,
            })
        }
        FileFormat::Excel => Err(BronzeError::Internal(
            "a workbook reached the line readers".into(),
        )),
    }
}

/// Lands one sheet of a workbook (see [`crate::workbook`]): its rows are named `path#Sheet`.
async fn land_workbook(
    writer: &mut FileWriter<'_>,
    mut file: File,
    contract: &SourceContract,
) -> Result<Landed, BronzeError> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|source| BronzeError::Landing {
            path: writer.lineage.relative.clone(),
            source,
        })?;
    let mut records = match WorkbookRecords::open(bytes, contract) {
        Ok(records) => records,
        Err(WorkbookProblem::Unreadable(problem)) => return Ok(Landed::Rejected(problem)),
        Err(WorkbookProblem::Header { problem, records }) => {
            let records = *records;
            writer.lineage.rows_file = format!("{}#{}", writer.lineage.relative, records.sheet);
            for (line, is_header, raw, blank) in records.into_raw_rows() {
                if blank {
                    writer.blank_lines += 1;
                    continue;
                }
                if !is_header {
                    writer.records_read += 1;
                }
                writer
                    .push_dead(line, is_header, &problem.reason, &raw)
                    .await?;
            }
            return Ok(Landed::Rejected(problem));
        }
    };
    writer.lineage.rows_file = format!("{}#{}", writer.lineage.relative, records.sheet);
    while let Some(parsed) = records.next_record() {
        push_parsed(writer, parsed).await?;
    }
    writer.blank_lines += records.blank_rows;
    Ok(Landed::Records {
        fingerprint: records.fingerprint().to_string(),
        drift: records.drift,
    })
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

/// Why dead-lettering a whole file stopped.
enum RejectError {
    /// Its (decompressed) text could not be read.
    Read(std::io::Error, Arc<InputState>),
    Bronze(BronzeError),
}

impl From<BronzeError> for RejectError {
    fn from(error: BronzeError) -> Self {
        Self::Bronze(error)
    }
}

/// Dead-letters every line of a file, byte for byte, with the file-level reason (blank lines are
/// counted, a line over [`MAX_LINE_BYTES`] is kept as its first bytes and its byte range).
/// A compressed file's lines are those of its decompressed text.
async fn reject_whole_file(
    writer: &mut FileWriter<'_>,
    path: &Path,
    compression: Compression,
    problem: &FileProblem,
    first_line_is_header: bool,
) -> Result<(), RejectError> {
    let io_error = |e| BronzeError::Landing {
        path: path.display().to_string(),
        source: e,
    };
    let file = open_regular(path).map_err(io_error)?;
    let (input, state) = unpack(file, compression).map_err(io_error)?;
    let mut lines = LineReader::new(input, MAX_LINE_BYTES, false);
    let mut header_pending = first_line_is_header;
    loop {
        let line = match lines.next_line() {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => return Err(RejectError::Read(e, state)),
        };
        if line.is_blank() {
            writer.blank_lines += 1;
            continue;
        }
        let is_header = std::mem::take(&mut header_pending);
        if !is_header {
            writer.records_read += 1;
        }
        let reason = if line.oversized {
            format!(
                "{}; {}",
                problem.reason,
                line.oversized_reason(MAX_LINE_BYTES)
            )
        } else {
            problem.reason.clone()
        };
        writer
            .push_dead(line.number, is_header, &reason, &line.bytes)
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
