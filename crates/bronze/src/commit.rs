//! Bronze commits in groups: the objects of many landing files become one commit per table, then
//! their file-log entries one more. A commit per file would make a run of thousands of
//! 15-minute batches spend its time replaying Delta logs, and an object per small file would
//! make it spend its time creating files (and compacting them afterwards): the rows of files
//! that fit in one batch share one object per table and group.
//!
//! Exactly once: every object is committed with the hashes of the landing files it holds as
//! Delta transaction ids, and a file's rows are written only if its table has no transaction
//! of that hash yet. The ids are read once per table, from its log, and every commit is built
//! on the version they were read at (the version this run's previous group committed, when
//! nobody wrote in between, or a fresh read), so a writer that landed the same file since (past
//! the lease) makes the commit conflict rather than land it twice.

use std::collections::{BTreeMap, HashMap, HashSet};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use paylake_lake::delta::{self, CommitFacts, WrittenObject};
use paylake_lake::layout::{self, Layer, TableName};
use paylake_lake::sink::ParquetObjectSink;
use paylake_lake::Lake;

use crate::filelog::{self, FileLogEntry};
use crate::BronzeError;

/// How many landing files share one commit at most, and how many of their bytes: bounds what a
/// crash makes the next run redo. Each commit group opens the table and the file log again,
/// replaying their logs, so fewer groups cost less: measured on the folder layout at 1M
/// payments (8,818 files), groups of 256 files spent 10% of Bronze's CPU in those replays.
pub(crate) const FILES_PER_COMMIT: usize = 1024;
pub(crate) const BYTES_PER_COMMIT: u64 = 128 * 1024 * 1024;

/// What a table already holds: the transaction ids of its commits.
struct Committed {
    /// `None` when the log could not be read in one pass: each id is then looked up alone.
    ids: Option<HashSet<String>>,
    /// The version these ids were read at: commits are checked against every later one.
    read_version: Option<u64>,
}

impl Committed {
    async fn holds(&self, lake: &Lake, table: &TableName, txn: &str) -> Result<bool, BronzeError> {
        Ok(match &self.ids {
            Some(ids) => ids.contains(txn),
            None => delta::has_transaction(lake, table, txn).await?,
        })
    }
}

/// The shared object of one table in the current group: the rows of its small files.
struct SharedObject {
    sink: ParquetObjectSink,
    name: String,
    schema: SchemaRef,
    txns: Vec<String>,
}

/// Objects and file-log entries waiting for their commits.
pub(crate) struct PendingCommits {
    objects: BTreeMap<TableName, (SchemaRef, Vec<WrittenObject>)>,
    shared: BTreeMap<TableName, SharedObject>,
    entries: Vec<FileLogEntry>,
    committed: HashMap<TableName, Committed>,
    batch_id: String,
    /// Shared objects begun in this run: names them apart.
    shared_objects: usize,
    abort_before_file_log: bool,
}

impl PendingCommits {
    pub(crate) fn new(batch_id: &str, abort_before_file_log: bool) -> Self {
        Self {
            objects: BTreeMap::new(),
            shared: BTreeMap::new(),
            entries: Vec::new(),
            committed: HashMap::new(),
            batch_id: batch_id.to_string(),
            shared_objects: 0,
            abort_before_file_log,
        }
    }

    async fn committed(
        &mut self,
        lake: &Lake,
        table: &TableName,
    ) -> Result<&Committed, BronzeError> {
        if !self.committed.contains_key(table) {
            let committed = match delta::transaction_ids(lake, table).await? {
                Some(read) => Committed {
                    ids: Some(read.ids),
                    read_version: read.version,
                },
                None => Committed {
                    ids: None,
                    read_version: delta::versioned_active_files(lake, table).await?.0,
                },
            };
            self.committed.insert(table.clone(), committed);
        }
        self.committed
            .get(table)
            .ok_or_else(|| BronzeError::Internal("committed set vanished".into()))
    }

    /// Queues a written object, unless its table already holds its rows (a run that crashed
    /// after committing them); such a duplicate object is deleted.
    pub(crate) async fn add_object(
        &mut self,
        lake: &Lake,
        table: TableName,
        schema: SchemaRef,
        object: WrittenObject,
    ) -> Result<bool, BronzeError> {
        let committed = self.committed(lake, &table).await?;
        let mut landed = false;
        for txn in &object.txns {
            landed |= committed.holds(lake, &table, txn).await?;
        }
        if landed {
            tracing::info!("{table}: {} was committed by an earlier run", object.path);
            lake.delete(&layout::table_root(&table).join(object.path.as_str()))
                .await?;
            return Ok(false);
        }
        self.objects
            .entry(table)
            .or_insert_with(|| (schema, Vec::new()))
            .1
            .push(object);
        Ok(true)
    }

    /// Writes the rows of a small file (all of them, in one batch) into its table's shared
    /// object of this group, unless the table already holds them (a run that crashed after
    /// committing them).
    pub(crate) async fn add_small_file(
        &mut self,
        lake: &Lake,
        table: TableName,
        batch: RecordBatch,
        txn: &str,
    ) -> Result<bool, BronzeError> {
        if self
            .committed(lake, &table)
            .await?
            .holds(lake, &table, txn)
            .await?
        {
            tracing::info!("{table}: the rows of {txn} were committed by an earlier run");
            return Ok(false);
        }
        let shared = match self.shared.get_mut(&table) {
            Some(shared) => shared,
            None => {
                self.shared_objects += 1;
                let unique = uuid::Uuid::new_v4().simple().to_string();
                let name =
                    layout::bronze_shared_object_name(&self.batch_id, self.shared_objects, &unique);
                let sink = ParquetObjectSink::create(
                    lake,
                    &layout::table_root(&table).join(name.as_str()),
                    batch.schema(),
                    delta::writer_properties(Layer::Bronze),
                )?;
                let shared = SharedObject {
                    sink,
                    name,
                    schema: batch.schema(),
                    txns: Vec::new(),
                };
                self.shared.entry(table).or_insert(shared)
            }
        };
        shared.sink.write(&batch).await?;
        shared.txns.push(txn.to_string());
        Ok(true)
    }

    pub(crate) fn add_entry(&mut self, entry: FileLogEntry) {
        self.entries.push(entry);
    }

    pub(crate) fn is_full(&self) -> bool {
        let bytes: u64 = self
            .entries
            .iter()
            .map(|e| u64::try_from(e.size_bytes).unwrap_or(0))
            .sum();
        self.entries.len() >= FILES_PER_COMMIT || bytes >= BYTES_PER_COMMIT
    }

    /// Commits the queued objects table by table, then their file-log entries.
    pub(crate) async fn flush(&mut self, lake: &Lake) -> Result<(), BronzeError> {
        for (table, shared) in std::mem::take(&mut self.shared) {
            let (rows, size) = shared.sink.finish().await?;
            let object = WrittenObject {
                path: shared.name,
                size,
                rows,
                txns: shared.txns,
            };
            self.objects
                .entry(table)
                .or_insert_with(|| (shared.schema, Vec::new()))
                .1
                .push(object);
        }
        let mut facts = CommitFacts::new();
        facts.insert(delta::INFO_RUN_ID.into(), self.batch_id.clone().into());
        for (table, (schema, objects)) in std::mem::take(&mut self.objects) {
            let read_version = self.committed.get(&table).and_then(|c| c.read_version);
            let version =
                delta::append_objects(lake, &table, &schema, &objects, &facts, read_version)
                    .await?;
            // The next commit is built on this one only when nobody else committed in between:
            // then the known ids plus ours are exactly this version's. Otherwise the table is
            // read again. Building every commit on the first version read instead made Delta
            // check each one against all the commits since: work growing with the square of
            // the groups in a run of thousands of micro-batch files.
            match (read_version, self.committed.get_mut(&table)) {
                (Some(read), Some(committed)) if version == read + 1 => {
                    committed.read_version = Some(version);
                    if let Some(ids) = committed.ids.as_mut() {
                        ids.extend(objects.into_iter().flat_map(|o| o.txns));
                    }
                }
                _ => {
                    self.committed.remove(&table);
                }
            }
        }
        if self.entries.is_empty() {
            return Ok(());
        }
        if self.abort_before_file_log {
            tracing::error!("PAYLAKE_ABORT_BEFORE_FILE_LOG: aborting as a crash test");
            std::process::abort();
        }
        filelog::append(lake, &std::mem::take(&mut self.entries), &facts).await?;
        Ok(())
    }
}
