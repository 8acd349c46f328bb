//! Bronze commits in groups: the objects of many landing files become one commit per table, then
//! their file-log entries one more. A commit per file would make a run of thousands of
//! 15-minute batches spend its time replaying Delta logs.
//!
//! Exactly once: every object is committed with its file's hash as Delta transaction id, and a
//! file is committed only if its table has no object of that hash yet. The check is a set
//! lookup over the table's file names (`<sha256>-…`); only when the hash is there, or the table
//! was compacted (`optimize` renames files), is the transaction id itself looked up. Every
//! commit is built on the version those names were read at (the version this run's previous
//! group committed, when nobody wrote in between, or a fresh read), so a writer that landed the
//! same file since (past the lease) makes the commit conflict rather than land it twice.

use std::collections::{BTreeMap, HashMap, HashSet};

use datafusion::arrow::datatypes::SchemaRef;
use paylake_lake::delta::{self, CommitFacts, WrittenObject};
use paylake_lake::layout::{self, TableName};
use paylake_lake::Lake;

use crate::filelog::{self, FileLogEntry};
use crate::BronzeError;

/// How many landing files share one commit at most, and how many of their bytes: bounds what a
/// crash makes the next run redo. Each commit group opens the table and the file log again,
/// replaying their logs, so fewer groups cost less: measured on the folder layout at 1M
/// payments (8,818 files), groups of 256 files spent 10% of Bronze's CPU in those replays.
pub(crate) const FILES_PER_COMMIT: usize = 1024;
pub(crate) const BYTES_PER_COMMIT: u64 = 128 * 1024 * 1024;

/// What a table already holds, by landing-file hash.
struct Committed {
    hashes: HashSet<String>,
    /// Some files are not named by hash (compacted): fall back to transaction ids.
    compacted: bool,
    /// The version these hashes were read at: commits are checked against every later one.
    read_version: Option<u64>,
}

/// Objects and file-log entries waiting for their commits.
pub(crate) struct PendingCommits {
    objects: BTreeMap<TableName, (SchemaRef, Vec<WrittenObject>)>,
    entries: Vec<FileLogEntry>,
    committed: HashMap<TableName, Committed>,
    batch_id: String,
    abort_before_file_log: bool,
}

impl PendingCommits {
    pub(crate) fn new(batch_id: &str, abort_before_file_log: bool) -> Self {
        Self {
            objects: BTreeMap::new(),
            entries: Vec::new(),
            committed: HashMap::new(),
            batch_id: batch_id.to_string(),
            abort_before_file_log,
        }
    }

    async fn committed(
        &mut self,
        lake: &Lake,
        table: &TableName,
    ) -> Result<&Committed, BronzeError> {
        if !self.committed.contains_key(table) {
            let mut hashes = HashSet::new();
            let mut compacted = false;
            let (read_version, files) = delta::versioned_active_files(lake, table).await?;
            for path in files {
                match layout::hash_of_bronze_object(&path) {
                    Some(hash) => {
                        hashes.insert(hash.to_string());
                    }
                    None => compacted = true,
                }
            }
            self.committed.insert(
                table.clone(),
                Committed {
                    hashes,
                    compacted,
                    read_version,
                },
            );
        }
        self.committed
            .get(table)
            .ok_or_else(|| BronzeError::Internal("committed set vanished".into()))
    }

    /// Queues a written object, unless its table already holds this file's rows (a run that
    /// crashed after committing them); such a duplicate object is deleted.
    pub(crate) async fn add_object(
        &mut self,
        lake: &Lake,
        table: TableName,
        schema: SchemaRef,
        object: WrittenObject,
        file_sha256: &str,
    ) -> Result<bool, BronzeError> {
        let committed = self.committed(lake, &table).await?;
        let suspicious = committed.compacted || committed.hashes.contains(file_sha256);
        let txn = object.txn.clone().unwrap_or_default();
        if suspicious && delta::has_transaction(lake, &table, &txn).await? {
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
        let mut facts = CommitFacts::new();
        facts.insert(delta::INFO_RUN_ID.into(), self.batch_id.clone().into());
        for (table, (schema, objects)) in std::mem::take(&mut self.objects) {
            let read_version = self.committed.get(&table).and_then(|c| c.read_version);
            let version =
                delta::append_objects(lake, &table, &schema, &objects, &facts, read_version)
                    .await?;
            // The next commit is built on this one only when nobody else committed in between:
            // then the known hashes plus ours are exactly this version's. Otherwise the table is
            // read again. Building every commit on the first version read instead made Delta
            // check each one against all the commits since: work growing with the square of
            // the groups in a run of thousands of micro-batch files.
            match (read_version, self.committed.get_mut(&table)) {
                (Some(read), Some(committed)) if version == read + 1 => {
                    committed.read_version = Some(version);
                    committed.hashes.extend(
                        objects
                            .iter()
                            .filter_map(|o| layout::hash_of_bronze_object(&o.path))
                            .map(str::to_string),
                    );
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
