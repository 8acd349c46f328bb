//! Every path in the lake, in one place.
//!
//! ```text
//! <layer>/<table>/                                  one Delta table (its log in _delta_log/)
//!   bronze/<source>/                                raw rows of every landing file (append-only)
//!   bronze/<source>/<sha256>-<batch>-<n>.parquet    the rows of one landing file (a large one)
//!   bronze/<source>/shared-<batch>-<n>-<uuid>.parquet  the rows of a commit group's small files
//!   bronze/_dead_letter/<sha256>-<batch>-<n>.parquet lines of that file that could not be used
//!   bronze/_file_log/                               one entry per landing file seen by a run
//!   silver/<table>/, gold/<table>/                  rebuilt tables; a build writes stage-<run>/…
//!   quality/results/                                every rule evaluation (append-only)
//! quality/gates/<layer>.json                        the last gate verdict of a layer
//! quality/reports/<run>.html, latest.html           data-quality reports
//! _monitoring/<step>.json                           what each step's last run did
//! _locks/writer.json                                the lake's writer lease
//! _scratch/<run>/models/<layer>.<model>/            a cluster run's temporary models
//! <layer>/<table>/_paylake_no_files/                never written: an empty scan's folder
//! ```
//! Bronze objects are added to their table with the hashes of the landing files they hold as
//! Delta transaction ids, so the same content lands once.

use object_store::path::Path;

/// The lake's layers: the medallion three, and the data-quality results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layer {
    Bronze,
    Silver,
    Gold,
    Quality,
}

impl Layer {
    pub const ALL: [Layer; 4] = [Layer::Bronze, Layer::Silver, Layer::Gold, Layer::Quality];

    pub fn name(self) -> &'static str {
        match self {
            Layer::Bronze => "bronze",
            Layer::Silver => "silver",
            Layer::Gold => "gold",
            Layer::Quality => "quality",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.name() == name)
    }
}

/// A lake table name, e.g. `silver.payments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub layer: Layer,
    pub name: String,
}

impl TableName {
    pub fn new(layer: Layer, name: impl Into<String>) -> Self {
        Self {
            layer,
            name: name.into(),
        }
    }

    /// Parses `layer.table`; the name is letters, digits and `_` only.
    pub fn parse(qualified: &str) -> Option<Self> {
        let (layer, name) = qualified.split_once('.')?;
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let layer = Layer::parse(layer)?;
        valid.then(|| Self::new(layer, name))
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.layer.name(), self.name)
    }
}

/// The folders directly under a lake root; a folder holding none of them is not a lake.
pub const LAKE_FOLDERS: [&str; 6] = [
    "bronze",
    "silver",
    "gold",
    "quality",
    "_monitoring",
    "_locks",
];

pub const DEAD_LETTER_TABLE: &str = "_dead_letter";
pub const FILE_LOG_TABLE: &str = "_file_log";
pub const QUALITY_RESULTS_TABLE: &str = "results";

/// The root folder of a table: `<layer>/<name>`.
pub fn table_root(table: &TableName) -> Path {
    Path::from_iter([table.layer.name(), table.name.as_str()])
}

pub fn bronze_table(source: &str) -> TableName {
    TableName::new(Layer::Bronze, source)
}

pub fn dead_letter_table() -> TableName {
    TableName::new(Layer::Bronze, DEAD_LETTER_TABLE)
}

pub fn file_log_table() -> TableName {
    TableName::new(Layer::Bronze, FILE_LOG_TABLE)
}

pub fn quality_results_table() -> TableName {
    TableName::new(Layer::Quality, QUALITY_RESULTS_TABLE)
}

/// The object holding one landing file's rows in a Bronze table (source or dead letter),
/// relative to the table root: the file's hash, the run, and the file's place in the run.
pub fn bronze_object_name(file_sha256: &str, batch_id: &str, sequence: usize) -> String {
    format!("{file_sha256}-{batch_id}-{sequence:06}.parquet")
}

/// The object holding the rows of many small landing files in a Bronze source table (one per
/// table and commit group), relative to the table root: the run, the object's place in it,
/// and a random id. Two runs started in one second can share a run id, and a second object of
/// one name would replace the first one's committed rows.
pub fn bronze_shared_object_name(batch_id: &str, sequence: usize, unique: &str) -> String {
    format!("shared-{batch_id}-{sequence:06}-{unique}.parquet")
}

/// The gate verdict of the latest run of a layer, read by the next layer.
pub fn quality_gate(layer: Layer) -> Path {
    Path::from_iter(["quality", "gates"]).join(format!("{}.json", layer.name()))
}

/// HTML data-quality reports: one per run, and the latest at a fixed path.
pub fn quality_report(run_id: &str) -> Path {
    Path::from_iter(["quality", "reports"]).join(format!("{run_id}.html"))
}

pub fn quality_report_latest() -> Path {
    Path::from_iter(["quality", "reports", "latest.html"])
}

/// What the last run of each step reported, for the metrics file and `paylake status`.
pub fn monitoring_state(step: &str) -> Path {
    Path::from_iter(["_monitoring"]).join(format!("{step}.json"))
}

/// Where `paylake pull` keeps a source's cursor between runs (`_pull/<source>.json`).
pub fn pull_state(source: &str) -> Path {
    Path::from_iter(["_pull"]).join(format!("{source}.json"))
}

/// Where a run on a cluster writes its temporary models, so that every executor reads them;
/// removed when the run ends.
pub fn cluster_scratch(run_id: &str) -> Path {
    Path::from_iter(["_scratch", run_id])
}

/// The folder of one temporary model in a cluster run's scratch.
pub fn cluster_model(run_id: &str, qualified_model: &str) -> Path {
    cluster_scratch(run_id).join("models").join(qualified_model)
}

/// A folder under a table that never holds files: a scan of it is an empty table that keeps
/// its schema when a plan is sent to a cluster.
pub fn no_files_folder(table: &TableName) -> Path {
    table_root(table).join("_paylake_no_files")
}

/// The lease a writing step holds on the lake.
pub fn writer_lease() -> Path {
    Path::from_iter(["_locks", "writer.json"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_documented_layout() {
        assert_eq!(
            table_root(&bronze_table("payments")).as_ref(),
            "bronze/payments"
        );
        let hash = "a".repeat(64);
        let name = bronze_object_name(&hash, "b1", 7);
        assert_eq!(name, format!("{hash}-b1-000007.parquet"));
        assert_eq!(
            bronze_shared_object_name("b1", 3, "u"),
            "shared-b1-000003-u.parquet"
        );
        assert_eq!(
            table_root(&dead_letter_table()).as_ref(),
            "bronze/_dead_letter"
        );
        assert_eq!(table_root(&file_log_table()).as_ref(), "bronze/_file_log");
        assert_eq!(
            table_root(&quality_results_table()).as_ref(),
            "quality/results"
        );
        assert_eq!(
            table_root(&TableName::new(Layer::Gold, "t")).as_ref(),
            "gold/t"
        );
        assert_eq!(
            quality_gate(Layer::Silver).as_ref(),
            "quality/gates/silver.json"
        );
        assert_eq!(writer_lease().as_ref(), "_locks/writer.json");
        assert_eq!(
            cluster_model("r1", "silver.stg_payments").as_ref(),
            "_scratch/r1/models/silver.stg_payments"
        );
        assert_eq!(
            no_files_folder(&TableName::new(Layer::Silver, "t")).as_ref(),
            "silver/t/_paylake_no_files"
        );
        assert_eq!(
            pull_state("fraud_labels").as_ref(),
            "_pull/fraud_labels.json"
        );
    }

    #[test]
    fn table_names_parse_layer_and_name() {
        let name = TableName::parse("gold.unified_payments").unwrap();
        assert_eq!(name.layer, Layer::Gold);
        assert_eq!(name.to_string(), "gold.unified_payments");
        assert_eq!(
            TableName::parse("quality.results"),
            Some(quality_results_table())
        );
        assert!(TableName::parse("platinum.x").is_none());
        assert!(TableName::parse("gold.x;drop").is_none());
    }
}
