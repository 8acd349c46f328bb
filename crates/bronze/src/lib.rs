//! Bronze ingestion: landing files become raw-text Parquet with lineage, and every line that
//! cannot be used goes to the dead-letter table with its raw bytes and a reason.

mod commit;
pub mod compact;
pub mod filelog;
mod ingest;
pub mod landing;
pub mod reader;
pub mod schema;
pub mod tables;
pub mod unpack;
pub mod workbook;

pub use filelog::FileLogEntry;
pub use ingest::{run_bronze, BronzeOptions, BronzeSummary, SourceSummary};
pub use landing::Landing;

#[derive(Debug, thiserror::Error)]
pub enum BronzeError {
    #[error("cannot read landing path {path}: {source}")]
    Landing {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read landing object {uri}: {source}")]
    LandingStore {
        uri: String,
        #[source]
        source: object_store::Error,
    },
    #[error(transparent)]
    Lake(#[from] paylake_lake::LakeError),
    #[error(transparent)]
    Contract(#[from] paylake_contracts::ContractError),
    #[error("query engine: {0}")]
    Engine(#[from] datafusion::error::DataFusionError),
    #[error("Arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("internal error: {0}")]
    Internal(String),
}
