//! Every path in the lake, in one place.
//!
//! ```text
//! bronze/<source>/<file sha256>.parquet      raw rows of one landing file (append-only)
//! bronze/_dead_letter/<file sha256>.parquet  lines of that file that could not be used
//! bronze/_file_log/<batch>-<seq>.parquet     one entry per landing file seen by a run
//! <layer>/<table>/_current.json              pointer to the published version of a rebuilt table
//! <layer>/<table>/v-<version>/…              that version's Parquet files
//! ```
//! Bronze objects are named by content hash, so writing the same file twice lands one copy.

use object_store::path::Path;

/// The medallion layers whose tables are rebuilt and published as whole versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layer {
    Bronze,
    Silver,
    Gold,
}

impl Layer {
    pub fn name(self) -> &'static str {
        match self {
            Layer::Bronze => "bronze",
            Layer::Silver => "silver",
            Layer::Gold => "gold",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "bronze" => Some(Layer::Bronze),
            "silver" => Some(Layer::Silver),
            "gold" => Some(Layer::Gold),
            _ => None,
        }
    }
}

pub const DEAD_LETTER_TABLE: &str = "_dead_letter";
pub const FILE_LOG_TABLE: &str = "_file_log";

/// Folder of a source's raw Bronze rows.
pub fn bronze_source(source: &str) -> Path {
    Path::from_iter(["bronze", source])
}

/// The Bronze object holding one landing file's rows.
pub fn bronze_data_file(source: &str, file_sha256: &str) -> Path {
    bronze_source(source).join(format!("{file_sha256}.parquet"))
}

pub fn dead_letter_folder() -> Path {
    Path::from_iter(["bronze", DEAD_LETTER_TABLE])
}

pub fn dead_letter_file(file_sha256: &str) -> Path {
    dead_letter_folder().join(format!("{file_sha256}.parquet"))
}

pub fn file_log_folder() -> Path {
    Path::from_iter(["bronze", FILE_LOG_TABLE])
}

pub fn file_log_entry(batch_id: &str, sequence: usize) -> Path {
    file_log_folder().join(format!("{batch_id}-{sequence:06}.parquet"))
}

/// Folder of a rebuilt table (Silver or Gold).
pub fn table_folder(layer: Layer, table: &str) -> Path {
    Path::from_iter([layer.name(), table])
}

pub fn table_pointer(layer: Layer, table: &str) -> Path {
    table_folder(layer, table).join("_current.json")
}

pub fn table_version_folder(layer: Layer, table: &str, version: &str) -> Path {
    table_folder(layer, table).join(format!("v-{version}"))
}

/// Data-quality results: one Parquet object per evaluated table per run (append-only).
pub fn quality_results_folder() -> Path {
    Path::from_iter(["quality", "results"])
}

pub fn quality_results_file(run_id: &str, table: &str) -> Path {
    quality_results_folder().join(format!("{run_id}-{table}.parquet"))
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

/// The version named by a path inside a table folder (`…/v-<version>/…`), if any.
pub fn version_of(table_relative_part: &str) -> Option<&str> {
    table_relative_part.strip_prefix("v-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_documented_layout() {
        assert_eq!(
            bronze_data_file("payments", "ab").as_ref(),
            "bronze/payments/ab.parquet"
        );
        assert_eq!(
            dead_letter_file("ab").as_ref(),
            "bronze/_dead_letter/ab.parquet"
        );
        assert_eq!(
            file_log_entry("b1", 7).as_ref(),
            "bronze/_file_log/b1-000007.parquet"
        );
        assert_eq!(
            table_pointer(Layer::Gold, "t").as_ref(),
            "gold/t/_current.json"
        );
        assert_eq!(
            table_version_folder(Layer::Silver, "t", "42").as_ref(),
            "silver/t/v-42"
        );
        assert_eq!(version_of("v-42"), Some("42"));
    }
}
