//! Routing a landing file to its source.
//!
//! Two layouts are accepted under the landing directory:
//! - flat, as in the original take-home: `payment_transactions*.csv`, `account_details*.csv`,
//!   `external_risk_feed*.csv`, `historical_fraud_cases*.csv|.jsonl` directly in the directory;
//! - a folder per source: `<source>/**` (any depth below the source folder).
//!
//! The format comes from the extension: `.csv`, `.jsonl`/`.ndjson`, or an Excel workbook
//! (`.xlsx`, `.xlsm`, `.xls`). CSV and JSON lines may be compressed (`.csv.gz`, `.jsonl.zst`).

use std::path::Path;

use crate::SourceContract;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileFormat {
    Csv,
    JsonLines,
    /// An Excel workbook (`.xlsx`, `.xlsm`, `.xls`): one sheet read as a table.
    Excel,
}

impl FileFormat {
    /// The format as contracts name it in `formats`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "csv" => Some(Self::Csv),
            "jsonl" => Some(Self::JsonLines),
            "xlsx" => Some(Self::Excel),
            _ => None,
        }
    }

    /// The format of a file extension (lower case, without the dot).
    fn from_extension_text(extension: &str) -> Option<Self> {
        match extension {
            "csv" => Some(Self::Csv),
            "jsonl" | "ndjson" => Some(Self::JsonLines),
            "xlsx" | "xlsm" | "xls" => Some(Self::Excel),
            _ => None,
        }
    }

    /// The format of a file name, looking through a compression extension (`a.csv.gz` is CSV).
    pub fn from_extension(path: &Path) -> Option<Self> {
        let (inner, _) = split_compression(path)?;
        Self::from_extension_text(&inner)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::JsonLines => "jsonl",
            Self::Excel => "xlsx",
        }
    }
}

/// How a landing file's bytes are packed. The content hash is always over the bytes as
/// received; line numbers refer to the decompressed text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    #[default]
    None,
    /// `.gz`: one or more gzip members.
    Gzip,
    /// `.zst`, `.zstd`: one or more Zstandard frames.
    Zstd,
}

impl Compression {
    /// The extension naming the compression, with its dot (`""` when uncompressed).
    pub fn suffix(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Gzip => ".gz",
            Self::Zstd => ".zst",
        }
    }
}

/// The lower-case extension of a file name under its compression extension, and the
/// compression: `a.CSV.gz` gives `("csv", Gzip)`, `a.csv` gives `("csv", None)`.
fn split_compression(path: &Path) -> Option<(String, Compression)> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let (stem, compression) = if let Some(stem) = name.strip_suffix(".gz") {
        (stem, Compression::Gzip)
    } else if let Some(stem) = name
        .strip_suffix(".zst")
        .or_else(|| name.strip_suffix(".zstd"))
    {
        (stem, Compression::Zstd)
    } else {
        (name.as_str(), Compression::None)
    };
    let (_, extension) = stem.rsplit_once('.')?;
    Some((extension.to_string(), compression))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutKind {
    Flat,
    FolderPerSource,
}

/// Where a landing file goes, or why it goes nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedFile {
    pub source: Option<String>,
    pub format: Option<FileFormat>,
    /// How the file is packed (`.gz`, `.zst`); the format is that of the unpacked content.
    pub compression: Compression,
    pub layout: Option<LayoutKind>,
    /// Set when the file cannot be routed: the reason, for the dead-letter table.
    pub problem: Option<String>,
}

impl RoutedFile {
    /// The format as the file log records it: `csv`, `jsonl`, `xlsx`, or `csv.gz`, `jsonl.zst`.
    pub fn format_label(&self) -> Option<String> {
        self.format
            .map(|f| format!("{}{}", f.name(), self.compression.suffix()))
    }
}

/// Routes a file given its path relative to the landing directory.
pub fn route_landing_file(relative_path: &Path, contracts: &[SourceContract]) -> RoutedFile {
    let format = FileFormat::from_extension(relative_path);
    let compression = split_compression(relative_path)
        .map(|(_, c)| c)
        .unwrap_or_default();
    let mut components = relative_path.components();
    let first = components
        .next()
        .and_then(|c| c.as_os_str().to_str())
        .unwrap_or_default();
    let is_flat = relative_path.components().count() == 1;

    let (contract, layout) = if is_flat {
        let lower = first.to_ascii_lowercase();
        let found = contracts.iter().find(|c| {
            c.flat_prefixes
                .iter()
                .any(|p| lower.starts_with(p.as_str()))
        });
        (found, LayoutKind::Flat)
    } else {
        let folder = first.to_ascii_lowercase();
        (
            contracts.iter().find(|c| c.source == folder),
            LayoutKind::FolderPerSource,
        )
    };

    let Some(contract) = contract else {
        let problem = if is_flat {
            "file name matches no source prefix (payment_transactions, account_details, \
             external_risk_feed, historical_fraud_cases)"
                .to_string()
        } else {
            format!(
                "folder '{first}' is not a source (payments, accounts, risk_feed, fraud_labels)"
            )
        };
        return RoutedFile {
            source: None,
            format,
            compression,
            layout: Some(layout),
            problem: Some(problem),
        };
    };
    let problem = match format {
        Some(FileFormat::Excel) if compression != Compression::None => Some(format!(
            "a compressed workbook ({}) is not accepted: a workbook is already compressed, \
             land the workbook itself",
            compression.suffix()
        )),
        Some(f) if contract.accepts(f) => None,
        Some(f) => Some(format!(
            "source {} does not accept {} files",
            contract.source,
            f.name()
        )),
        None => Some(
            "unsupported file type (expected .csv, .jsonl or .xlsx, .xls; CSV and JSON lines \
             may be compressed as .gz or .zst)"
                .to_string(),
        ),
    };
    RoutedFile {
        source: Some(contract.source.clone()),
        format,
        compression,
        layout: Some(layout),
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::all_contracts;

    fn route(path: &str) -> RoutedFile {
        route_landing_file(Path::new(path), &all_contracts().unwrap())
    }

    #[test]
    fn flat_layout_routes_by_prefix() {
        assert_eq!(
            route("payment_transactions.csv").source.as_deref(),
            Some("payments")
        );
        assert_eq!(
            route("account_details_0601.csv").source.as_deref(),
            Some("accounts")
        );
        assert_eq!(
            route("external_risk_feed.csv").source.as_deref(),
            Some("risk_feed")
        );
        let labels = route("historical_fraud_cases_api.jsonl");
        assert_eq!(labels.source.as_deref(), Some("fraud_labels"));
        assert_eq!(labels.format, Some(FileFormat::JsonLines));
        assert_eq!(labels.problem, None);
    }

    #[test]
    fn folder_layout_routes_by_first_folder() {
        let routed = route("payments/2024-11-15/batch_0915.csv");
        assert_eq!(routed.source.as_deref(), Some("payments"));
        assert_eq!(routed.layout, Some(LayoutKind::FolderPerSource));
    }

    #[test]
    fn unknown_files_carry_a_problem() {
        assert!(route("notes.txt").problem.is_some());
        assert!(route("customers/a.csv")
            .problem
            .unwrap()
            .contains("customers"));
        assert!(route("payments/a.xml")
            .problem
            .unwrap()
            .contains("unsupported"));
        assert!(route("payments/a.gz")
            .problem
            .unwrap()
            .contains("unsupported"));
        assert!(route("fraud_labels/a.xlsx.gz")
            .problem
            .unwrap()
            .contains("compressed workbook"));
    }

    #[test]
    fn compressed_files_route_by_the_extension_under_the_compression() {
        let gzip = route("payments/2024-11-18/payments_2024-11-18T09-00.CSV.gz");
        assert_eq!(gzip.source.as_deref(), Some("payments"));
        assert_eq!(gzip.format, Some(FileFormat::Csv));
        assert_eq!(gzip.compression, Compression::Gzip);
        assert_eq!(gzip.problem, None);
        let zstd = route("historical_fraud_cases_api.jsonl.zst");
        assert_eq!(zstd.source.as_deref(), Some("fraud_labels"));
        assert_eq!(zstd.format, Some(FileFormat::JsonLines));
        assert_eq!(zstd.compression, Compression::Zstd);
        assert_eq!(route("payments/a.csv").compression, Compression::None);
    }

    #[test]
    fn workbooks_route_in_every_source_folder() {
        for source in ["payments", "accounts", "risk_feed", "fraud_labels"] {
            let routed = route(&format!("{source}/book_2025-01-14.xlsx"));
            assert_eq!(routed.format, Some(FileFormat::Excel), "{source}");
            assert_eq!(routed.problem, None, "{source}");
        }
        assert_eq!(
            route("fraud_labels/old.XLS").format,
            Some(FileFormat::Excel)
        );
        assert_eq!(route("historical_fraud_cases.xlsm").problem, None);
    }
}
