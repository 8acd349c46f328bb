//! The query engine a run plans its models on: a memory pool with a limit, a scratch folder
//! for spills and temporary models, and what each model's execution cost (time, rows, peak
//! pool memory, spilled bytes).

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use datafusion::common::Result as EngineResult;
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation, TrackConsumersPool,
    UnboundedMemoryPool,
};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use paylake_cluster::QueryEngine;
use paylake_lake::{Lake, TableScans};
use serde::Serialize;

use crate::JobError;

/// The memory pool's default size: what a laptop can give a run next to everything else.
pub const DEFAULT_MEMORY_LIMIT: u64 = 1 << 30;

/// How many of the largest memory consumers a refused allocation lists.
const TOP_CONSUMERS: NonZeroUsize = NonZeroUsize::new(5).expect("five is not zero");

/// A consumer that can spill (a sort's buffer, an aggregate, partition buckets) holds at most
/// this fraction of a limited pool, and so does a sort's merge of its spilled runs: see
/// [`PeakTrackingPool`].
const SPILLING_CONSUMER_SHARE: usize = 8;

/// ... but at least this much, so that small limits still seat a few batches per sort.
const MIN_SPILLING_CONSUMER_CAP: usize = 16 << 20;

/// DataFusion's name for the reservation a sort merges its spilled runs with. It is registered
/// as unable to spill, yet it reads as many runs at once as the pool lets it reserve.
const SORT_MERGE_CONSUMER: &str = "ExternalSorterMerge";

/// Engine settings of a run (`--memory-limit`, `--spill-dir`, `--engine`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    /// Bytes the engine's operators may hold at once; `None` is unbounded. Sorts,
    /// aggregations and sort-merge joins spill to disk beyond it.
    pub memory_limit: Option<u64>,
    /// Where spill files and temporary models go (default: the system temp folder).
    pub spill_dir: Option<PathBuf>,
    /// Parallel partitions per query (default: the number of cores).
    pub target_partitions: Option<usize>,
    /// Where the SQL runs: in this process, or on a Ballista cluster (`--engine`).
    pub query_engine: QueryEngine,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            memory_limit: Some(DEFAULT_MEMORY_LIMIT),
            spill_dir: None,
            target_partitions: None,
            query_engine: QueryEngine::Local,
        }
    }
}

impl EngineSettings {
    /// The lake as this engine must read it: a cluster gets plain Parquet scans of each
    /// table version's files (its executors cannot run Delta's provider).
    pub fn lake_for_engine(&self, lake: &Lake) -> Lake {
        match self.query_engine {
            QueryEngine::Local => lake.clone(),
            QueryEngine::Ballista { .. } => lake.clone().with_table_scans(TableScans::ParquetFiles),
        }
    }
}

/// The engine's memory pool. It remembers the most it ever held, so a run can report each
/// model's peak. Under a limit it is a fair pool that lists its largest consumers when it
/// refuses one, and that holds every reservation of a spilling consumer, and of a sort's merge,
/// to a share of the limit ([`spilling_consumer_cap`]): past it the consumer spills, or merges
/// its runs in more passes, as when the pool itself is full. The cap is per reservation, as the
/// fair pool's share is; an infallible `grow` (DataFusion's, for a batch it already holds) is
/// never refused.
///
/// Why the cap: with a fair pool alone, a sort holds its fair part of the limit, and once its
/// input ends it merges its spilled runs with a reservation as large as the pool lets it take.
/// A chain of sorts (the two as-of passes feeding the training table) then kept 150-200 MiB
/// per merge in the pool and about as much again outside it (the runs' decoded batches), and
/// an operator downstream could be refused. At 10M payments, `gold.payment_training` took about
/// as long capped (30.3 and 30.1 s against 30.9 and 28.5 s, runs alternated), with the pool's
/// peak 582 -> 290 MiB and Gold's peak RSS 1067 -> 523 MiB (a 1/16 share).
///
/// Why 1/8, not 1/16: a sort's runs are as long as its share lets them be, and its merge seats
/// as many runs as its share holds (two batches each). At 1/16, each as-of sort of 10M payments
/// cut ~22 runs per partition, more than one merge seats, so most rows went to disk twice
/// (4.7 GiB spilled). At 1/8 they cut half as many runs and merge them in one pass (2.5 GiB);
/// the training table took ~2.5 s less, Gold's RSS 634-739 MiB and Silver's 715-726 MiB.
#[derive(Debug)]
pub struct PeakTrackingPool {
    inner: Arc<dyn MemoryPool>,
    /// Under a limit: the same pool as `inner`, typed to report its top consumers, and the
    /// most one spilling reservation may hold.
    limited: Option<(Arc<TrackConsumersPool<FairSpillPool>>, usize)>,
    peak: AtomicUsize,
}

impl PeakTrackingPool {
    fn new(limit: Option<usize>) -> Self {
        let (inner, limited): (Arc<dyn MemoryPool>, _) = match limit {
            Some(bytes) => {
                let tracked = Arc::new(TrackConsumersPool::new(
                    FairSpillPool::new(bytes),
                    TOP_CONSUMERS,
                ));
                let cap = spilling_consumer_cap(bytes);
                (tracked.clone(), Some((tracked, cap)))
            }
            None => (Arc::new(UnboundedMemoryPool::default()), None),
        };
        Self {
            inner,
            limited,
            peak: AtomicUsize::new(0),
        }
    }

    fn note(&self) {
        self.peak
            .fetch_max(self.inner.reserved(), Ordering::Relaxed);
    }

    /// The peak since the last reset, and a new measurement starting from what is held now.
    pub fn take_peak(&self) -> usize {
        let held = self.inner.reserved();
        self.peak.swap(held, Ordering::Relaxed).max(held)
    }

    /// Refuses a spilling reservation, or a sort's merge, growing past the cap.
    fn check_cap(&self, reservation: &MemoryReservation, additional: usize) -> EngineResult<()> {
        let Some((tracked, cap)) = &self.limited else {
            return Ok(());
        };
        let consumer = reservation.consumer();
        let capped = consumer.can_spill() || consumer.name().starts_with(SORT_MERGE_CONSUMER);
        let wanted = reservation.size().saturating_add(additional);
        if capped && wanted > *cap {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{} holds {} and asked for {} more: an operator that can spill, or a sort's \
                 merge, may hold at most {} (1/{SPILLING_CONSUMER_SHARE} of the memory limit, \
                 at least {}); the largest consumers:\n{}",
                consumer.name(),
                format_bytes(reservation.size() as u64),
                format_bytes(additional as u64),
                format_bytes(*cap as u64),
                format_bytes(MIN_SPILLING_CONSUMER_CAP as u64),
                tracked.report_top(TOP_CONSUMERS.get()),
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for PeakTrackingPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peak-tracking {}", self.inner)
    }
}

impl MemoryPool for PeakTrackingPool {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional);
        self.note();
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink)
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> EngineResult<()> {
        self.check_cap(reservation, additional)?;
        self.inner.try_grow(reservation, additional)?;
        self.note();
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}

/// The most one spilling consumer may hold under a pool of `limit` bytes.
fn spilling_consumer_cap(limit: usize) -> usize {
    (limit / SPILLING_CONSUMER_SHARE)
        .max(MIN_SPILLING_CONSUMER_CAP)
        .min(limit)
}

/// Scratch folders are `<spill dir>/paylake-run-*`, each naming the process that owns it in
/// `owner.pid`: its id and its PID namespace (`<pid> <namespace>`).
const SCRATCH_PREFIX: &str = "paylake-run-";
const SCRATCH_OWNER: &str = "owner.pid";

/// This process as a scratch folder's owner. The namespace tells processes of other containers
/// sharing the spill folder apart: their ids mean nothing here.
fn scratch_owner() -> String {
    format!(
        "{} {}",
        std::process::id(),
        pid_namespace().unwrap_or_default()
    )
}

/// The PID namespace of this process (Linux), e.g. `pid:[4026531836]`.
fn pid_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|link| link.display().to_string())
}

/// Removes scratch folders whose process is gone. A run removes its own folder when it ends, but
/// a killed run (SIGKILL, OOM, a lost machine) cannot, and its spills can be gigabytes. Only
/// folders of this PID namespace whose process no longer exists are removed; one without an
/// owner file, or owned in another namespace (another container), is left alone.
fn remove_abandoned_scratch(root: &Path) {
    let Some(namespace) = pid_namespace() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(SCRATCH_PREFIX)
        {
            continue;
        }
        let folder = entry.path();
        let Ok(owner) = std::fs::read_to_string(folder.join(SCRATCH_OWNER)) else {
            continue;
        };
        let Some((pid, owner_namespace)) = owner.trim().split_once(' ') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if owner_namespace != namespace
            || pid == std::process::id()
            || Path::new("/proc").join(pid.to_string()).exists()
        {
            continue;
        }
        match std::fs::remove_dir_all(&folder) {
            Ok(()) => tracing::info!(
                "removed the scratch folder {} of a run that ended without cleaning up (process {pid})",
                folder.display()
            ),
            Err(error) => tracing::warn!(
                "could not remove the abandoned scratch folder {}: {error}",
                folder.display()
            ),
        }
    }
}

/// The engine of one run: settings, the runtime every session of the run shares, and the
/// run's scratch folder (spills and temporary models), removed when the engine is dropped.
pub struct Engine {
    pub settings: EngineSettings,
    pub runtime: Arc<RuntimeEnv>,
    pub pool: Arc<PeakTrackingPool>,
    scratch: tempfile::TempDir,
}

impl Engine {
    pub fn new(settings: &EngineSettings) -> Result<Self, JobError> {
        let root = settings
            .spill_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&root).map_err(|source| JobError::Write {
            path: root.display().to_string(),
            source,
        })?;
        remove_abandoned_scratch(&root);
        let scratch = tempfile::Builder::new()
            .prefix(SCRATCH_PREFIX)
            .tempdir_in(&root)
            .map_err(|source| JobError::Write {
                path: root.display().to_string(),
                source,
            })?;
        let owner = scratch.path().join(SCRATCH_OWNER);
        std::fs::write(&owner, scratch_owner()).map_err(|source| JobError::Write {
            path: owner.display().to_string(),
            source,
        })?;
        let pool = Arc::new(PeakTrackingPool::new(
            settings
                .memory_limit
                .map(|bytes| usize::try_from(bytes).unwrap_or(usize::MAX)),
        ));
        let spill = scratch.path().join("spill");
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::clone(&pool) as Arc<dyn MemoryPool>)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![spill])),
            )
            .build_arc()?;
        Ok(Self {
            settings: settings.clone(),
            runtime,
            pool,
            scratch,
        })
    }

    /// Session settings for this engine. Joins stay hash joins under any limit: the models put
    /// the small input on the build side (repeated ids, accounts, flags, labels), and a
    /// sort-merge join would sort the large side instead (measured: it made `stg_payments` fail
    /// at 64 MiB where the hash join fits). Sorts and aggregations spill.
    pub fn session_config(&self) -> SessionConfig {
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .set_str("datafusion.sql_parser.enable_ident_normalization", "true");
        if let Some(partitions) = self.settings.target_partitions {
            config = config.with_target_partitions(partitions.max(1));
        }
        if let Some(limit) = self.settings.memory_limit {
            // Each sort sets this much aside for merging its spills (10 MiB by default): under
            // a small limit, many concurrent sorts would reserve more than the pool holds.
            let reservation = (limit / 256).clamp(64 << 10, 10 << 20);
            config = config.with_sort_spill_reservation_bytes(reservation as usize);
        }
        config
    }

    /// The folder a temporary model of this run is written to.
    pub fn temporary_model_dir(&self, qualified_name: &str) -> PathBuf {
        self.scratch.path().join("models").join(qualified_name)
    }

    pub fn scratch_dir(&self) -> &Path {
        self.scratch.path()
    }

    /// Bytes spilled so far by this run.
    pub fn spilled_now(&self) -> u64 {
        self.runtime.disk_manager.spilling_progress().current_bytes
    }
}

/// What a profiled step of a build was.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProfiledWork {
    /// A model written once to scratch files for the run.
    Temporary,
    /// A model staged as a table version.
    Table,
    /// Queries around the models: invariant checks, classification counts.
    Query,
    /// The layer's expectations.
    Audit,
}

impl std::fmt::Display for ProfiledWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Temporary => "temporary",
            Self::Table => "table",
            Self::Query => "query",
            Self::Audit => "audit",
        })
    }
}

/// What building one model cost.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelProfile {
    /// `layer.name`, or `layer.name checks` / `expectations` for the work around models.
    pub model: String,
    pub materialization: ProfiledWork,
    pub seconds: f64,
    /// Rows the model's scans read (of lake tables, temporary models and staged tables).
    pub rows_in: u64,
    pub rows_out: u64,
    /// The most the engine's memory pool held while the model ran.
    pub peak_memory_bytes: u64,
    pub spilled_bytes: u64,
}

/// Rows read by the leaves of an executed plan and bytes spilled by any of its operators.
pub fn plan_totals(plan: &Arc<dyn ExecutionPlan>) -> (u64, u64) {
    let mut rows_in = 0u64;
    let mut spilled = 0u64;
    let mut stack = vec![Arc::clone(plan)];
    while let Some(node) = stack.pop() {
        let metrics = node.metrics();
        if let Some(metrics) = &metrics {
            spilled += metrics.spilled_bytes().unwrap_or(0) as u64;
        }
        let children = node.children();
        if children.is_empty() {
            rows_in += metrics.and_then(|m| m.output_rows()).unwrap_or(0) as u64;
        }
        stack.extend(children.into_iter().cloned());
    }
    (rows_in, spilled)
}

/// Whether an engine error means the memory limit was too small.
pub fn is_out_of_memory(error: &DataFusionError) -> bool {
    matches!(error.find_root(), DataFusionError::ResourcesExhausted(_))
        || error.to_string().contains("Resources exhausted")
}

/// An engine error of `what`: out of memory names the limit and the setting to raise.
pub fn out_of_memory_or(error: DataFusionError, what: &str, limit: Option<u64>) -> JobError {
    if is_out_of_memory(&error) {
        JobError::OutOfMemory {
            model: what.to_string(),
            limit: limit.map_or_else(|| "unlimited".into(), format_bytes),
            reason: error.to_string(),
        }
    } else {
        JobError::Engine(error)
    }
}

/// Human-readable bytes for messages and profiles (binary units).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Splits a quantity like `1.5GiB` or `30s` into its number and its lower-case unit.
pub(crate) fn number_and_unit(text: &str) -> Option<(f64, String)> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    Some((number.parse().ok()?, unit.trim().to_ascii_lowercase()))
}

/// Parses a size like `1GiB`, `512MiB`, `64M`, `2g`, `1000000` (bytes), or `unlimited`.
pub fn parse_memory_limit(text: &str) -> Result<Option<u64>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("unlimited") || text.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let (number, unit) = number_and_unit(text)
        .ok_or_else(|| format!("'{text}' is not a size (use e.g. 1GiB, 512MiB or unlimited)"))?;
    let scale: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "'{text}': unknown unit '{other}' (use KiB, MiB or GiB)"
            ))
        }
    };
    let bytes = number * scale as f64;
    if !bytes.is_finite() || bytes < (1 << 20) as f64 {
        return Err(format!(
            "'{text}' is too small: the engine needs at least 1MiB"
        ));
    }
    if bytes > u64::MAX as f64 {
        return Err(format!("'{text}' is too large"));
    }
    Ok(Some(bytes as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limits_parse_with_binary_units() {
        assert_eq!(parse_memory_limit("1GiB"), Ok(Some(1 << 30)));
        assert_eq!(parse_memory_limit("64M"), Ok(Some(64 << 20)));
        assert_eq!(parse_memory_limit("1.5g"), Ok(Some(3 << 29)));
        assert_eq!(parse_memory_limit("unlimited"), Ok(None));
        assert!(parse_memory_limit("12 parsecs").is_err());
        assert!(parse_memory_limit("10").is_err());
        assert!(parse_memory_limit("").is_err());
        assert_eq!(format_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(format_bytes(12), "12 B");
    }

    /// An engine under a memory limit of `bytes`, and its pool as DataFusion sees it.
    fn limited_engine(bytes: u64) -> (Engine, Arc<dyn MemoryPool>) {
        let engine = Engine::new(&EngineSettings {
            memory_limit: Some(bytes),
            ..EngineSettings::default()
        })
        .unwrap();
        let pool: Arc<dyn MemoryPool> = engine.pool.clone();
        (engine, pool)
    }

    /// A pool that records the name of every consumer registered with it.
    #[derive(Debug, Default)]
    struct NamingPool {
        inner: UnboundedMemoryPool,
        names: std::sync::Mutex<Vec<String>>,
    }

    impl std::fmt::Display for NamingPool {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "naming")
        }
    }

    impl MemoryPool for NamingPool {
        fn name(&self) -> &str {
            "naming"
        }

        fn register(&self, consumer: &MemoryConsumer) {
            self.names.lock().unwrap().push(consumer.name().to_string());
        }

        fn grow(&self, reservation: &MemoryReservation, additional: usize) {
            self.inner.grow(reservation, additional)
        }

        fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
            self.inner.shrink(reservation, shrink)
        }

        fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> EngineResult<()> {
            self.inner.try_grow(reservation, additional)
        }

        fn reserved(&self) -> usize {
            self.inner.reserved()
        }
    }

    /// The merge cap finds DataFusion's sort merges by name: a rename upstream must fail here.
    #[tokio::test]
    async fn datafusion_names_a_sorts_merge_as_the_cap_expects() {
        let pool = Arc::new(NamingPool::default());
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::clone(&pool) as Arc<dyn MemoryPool>)
            .build_arc()
            .unwrap();
        let ctx =
            datafusion::prelude::SessionContext::new_with_config_rt(SessionConfig::new(), runtime);
        let sorted = ctx
            .sql("SELECT value FROM generate_series(1, 10000) ORDER BY value DESC")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(sorted.iter().map(|b| b.num_rows()).sum::<usize>(), 10000);
        let names = pool.names.lock().unwrap();
        assert!(
            names
                .iter()
                .any(|name| name.starts_with(SORT_MERGE_CONSUMER)),
            "{names:?}"
        );
    }

    #[test]
    fn spilling_consumers_and_sort_merges_hold_at_most_a_share_of_the_limit() {
        let (_engine, pool) = limited_engine(1 << 30);
        let cap = (1 << 30) / SPILLING_CONSUMER_SHARE;
        let sort = MemoryConsumer::new("ExternalSorter[0]")
            .with_can_spill(true)
            .register(&pool);
        sort.try_grow(cap).unwrap();
        let refused = sort.try_grow(1).unwrap_err();
        assert!(is_out_of_memory(&refused), "{refused}");
        assert!(
            refused.to_string().contains("at most 128.0 MiB"),
            "{refused}"
        );
        // DataFusion registers a sort's merge as unable to spill; it is capped all the same.
        let merge = MemoryConsumer::new(format!("{SORT_MERGE_CONSUMER}[0]")).register(&pool);
        assert!(merge.try_grow(cap + 1).is_err());
        // Any other consumer that cannot spill takes what the pool has free.
        let window = MemoryConsumer::new("ChunkedWindowAggExec[0]").register(&pool);
        window.try_grow(4 * cap).unwrap();
        // Small limits keep a floor per consumer.
        assert_eq!(spilling_consumer_cap(64 << 20), MIN_SPILLING_CONSUMER_CAP);
        assert_eq!(spilling_consumer_cap(8 << 20), 8 << 20);
        assert_eq!(spilling_consumer_cap(4 << 30), 512 << 20);
    }

    #[test]
    fn the_pool_reports_its_peak_and_starts_again() {
        let (engine, pool) = limited_engine(8 << 20);
        let reservation = MemoryConsumer::new("test").register(&pool);
        reservation.try_grow(3 << 20).unwrap();
        reservation.shrink(2 << 20);
        assert_eq!(engine.pool.take_peak(), 3 << 20);
        assert_eq!(engine.pool.take_peak(), 1 << 20);
        let too_much = reservation.try_grow(64 << 20).unwrap_err();
        assert!(is_out_of_memory(&too_much), "{too_much}");
        let scratch = engine.scratch_dir().to_path_buf();
        assert!(scratch.is_dir());
        drop(reservation);
        drop(engine);
        assert!(
            !scratch.exists(),
            "the scratch folder is removed with the engine"
        );
    }

    #[test]
    fn a_new_engine_removes_scratch_folders_of_runs_that_are_gone() {
        let root = tempfile::tempdir().unwrap();
        let folder = |name: &str, owner: Option<String>| {
            let path = root.path().join(name);
            std::fs::create_dir_all(path.join("spill")).unwrap();
            if let Some(owner) = owner {
                std::fs::write(path.join(SCRATCH_OWNER), owner).unwrap();
            }
            path
        };
        let namespace = pid_namespace().unwrap_or_default();
        // Process ids stop well below this on Linux (pid_max is at most 2^22).
        let gone = folder("paylake-run-gone", Some(format!("4294967295 {namespace}")));
        let running = folder("paylake-run-running", Some(scratch_owner()));
        let other_container = folder(
            "paylake-run-elsewhere",
            Some("4294967295 pid:[1]".to_string()),
        );
        let unowned = folder("paylake-run-unowned", None);
        let not_scratch = folder("someone-else", Some(format!("4294967295 {namespace}")));
        let engine = Engine::new(&EngineSettings {
            spill_dir: Some(root.path().to_path_buf()),
            ..EngineSettings::default()
        })
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(engine.scratch_dir().join(SCRATCH_OWNER)).unwrap(),
            scratch_owner()
        );
        assert_eq!(!gone.exists(), cfg!(target_os = "linux"));
        for kept in [running, other_container, unowned, not_scratch] {
            assert!(kept.exists(), "{}", kept.display());
        }
    }
}
