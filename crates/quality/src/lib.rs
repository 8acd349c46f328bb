//! Data quality: declarative expectations per table, evaluated with DataFusion; results kept in
//! the lake; a gate that stops Gold when an error-severity rule fails; Prometheus metrics and an
//! HTML report.

pub mod evaluate;
pub mod expectations;
pub mod metrics;
pub mod report;
pub mod results;

pub use evaluate::{evaluate_suite, RuleResult};
pub use expectations::{load_suites, Severity, Suite};
pub use results::{read_gate, write_gate, GateVerdict};

#[derive(Debug, thiserror::Error)]
pub enum QualityError {
    #[error("expectations {origin}: {message}")]
    Expectations { origin: String, message: String },
    #[error("{doing}: {source}")]
    Query {
        doing: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    #[error(transparent)]
    Lake(#[from] paylake_lake::LakeError),
    #[error("Arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl QualityError {
    pub fn query(doing: &str, source: datafusion::error::DataFusionError) -> Self {
        QualityError::Query {
            doing: doing.to_string(),
            source,
        }
    }
}
