//! The SQL job runner: Silver and Gold models over the lake, and exports of published tables.

mod constant_row;
pub mod engine;
pub mod export;
pub mod incremental;
pub mod models;
pub mod pipeline;
pub mod runner;
pub mod shell;

pub use engine::{EngineSettings, ModelProfile};
pub use export::{export_table, ExportFormat, UNIFIED_COLUMNS};
pub use pipeline::{explain, run_gold, run_silver, StepReport};
pub use runner::{lake_session, lake_session_on, PublishedTable, RunOptions, SourceOutcome};

fn existing_tables(existing: &[String]) -> String {
    if existing.is_empty() {
        "; it holds no tables yet (run `paylake bronze`, `silver`, `gold`)".to_string()
    } else {
        format!("; its tables are: {}", existing.join(", "))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{model}: {message}")]
    Model { model: String, message: String },
    #[error("{model}: {source}")]
    Sql {
        model: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    #[error("{table}: invariant {check} is broken by {violations} row(s); nothing was published\n{sample}")]
    CheckFailed {
        table: String,
        check: String,
        violations: usize,
        sample: String,
    },
    #[error("data quality gate failed: Silver run {run_id} broke {}; Gold was not rebuilt", blocking_rules.join(", "))]
    GateClosed {
        run_id: String,
        blocking_rules: Vec<String>,
    },
    #[error(transparent)]
    Quality(#[from] paylake_quality::QualityError),
    #[error("{what} has not been built yet: {hint}")]
    NotBuilt { what: String, hint: String },
    /// A table name the lake does not hold, with the tables it does hold.
    #[error("no table {table} in the lake at {lake}{}", existing_tables(existing))]
    NoSuchTable {
        table: String,
        lake: String,
        existing: Vec<String>,
    },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// An output path that must not be written (not a regular file, inside the lake, no
    /// folder): a usage error.
    #[error("cannot write {path}: {reason}")]
    Output { path: String, reason: String },
    /// `paylake sql` was given something other than queries: a usage error.
    #[error(
        "paylake sql is read-only: {kind} is refused (statement {position} of {count}); only \
         queries run ({}; --allow-writes adds session objects and COPY to files outside \
         the lake)",
        crate::shell::QUERY_KINDS
    )]
    ReadOnly {
        kind: String,
        position: usize,
        count: usize,
    },
    /// Under `--allow-writes`, a statement that would still change the lake or more than the
    /// session: a usage error.
    #[error(
        "statement {position} of {count} is refused: {what}; --allow-writes allows only {}",
        crate::shell::SESSION_WRITES
    )]
    WriteRefused {
        what: String,
        position: usize,
        count: usize,
    },
    /// SQL that does not parse or plan: a usage error.
    #[error("query: {0}")]
    Query(String),
    #[error(
        "the query did not finish within {limit} (--timeout {limit}) and was stopped; raise \
         --timeout (0 = none) or narrow the query"
    )]
    Timeout { limit: String },
    #[error(
        "{model} needs more memory than the engine's limit of {limit} allows: raise --memory-limit \
         (or PAYLAKE_MEMORY_LIMIT), e.g. --memory-limit 4GiB, or free disk for spilling under \
         --spill-dir\n  engine said: {reason}"
    )]
    OutOfMemory {
        model: String,
        limit: String,
        reason: String,
    },
    #[error(transparent)]
    Lake(#[from] paylake_lake::LakeError),
    #[error(transparent)]
    Cluster(#[from] paylake_cluster::ClusterError),
    #[error(transparent)]
    Bronze(#[from] paylake_bronze::BronzeError),
    #[error(transparent)]
    Contract(#[from] paylake_contracts::ContractError),
    #[error("query engine: {0}")]
    Engine(#[from] datafusion::error::DataFusionError),
    #[error("Arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("Parquet: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    #[error("internal error: {0}")]
    Internal(String),
}
