//! paylake on an Apache Ballista cluster: which engine a run uses (`--engine`), the client
//! session that sends each model's plan to a scheduler, the check that refuses plans the
//! cluster would run differently, and the scheduler and executor processes
//! (`paylake cluster scheduler|executor`) with the object stores a lake can live in.

mod engine;
mod leaves;
mod plans;
mod process;
mod stores;

pub use engine::QueryEngine;
pub use leaves::DataFreeLeavesAsMemoryScans;
pub use plans::{check_plan, session_on};
pub use process::{run_executor, run_scheduler, ExecutorOptions, SchedulerOptions};
pub use stores::LakeStores;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid --engine '{value}': {reason}")]
    InvalidEngine { value: String, reason: String },
    #[error("{model} cannot run on the Ballista cluster: {reason} (run it with --engine local)")]
    Unsupported { model: String, reason: String },
    #[error("cannot reach the Ballista scheduler at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the Ballista {process} stopped: {reason}")]
    Process {
        process: &'static str,
        reason: String,
    },
}
