//! Routing a landing file to its source.
//!
//! Two layouts are accepted under the landing directory:
//! - flat, as in the original take-home: `payment_transactions*.csv`, `account_details*.csv`,
//!   `external_risk_feed*.csv`, `historical_fraud_cases*.csv|.jsonl` directly in the directory;
//! - a folder per source: `<source>/**` (any depth below the source folder).

use std::path::Path;

use crate::SourceContract;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileFormat {
    Csv,
    JsonLines,
}

impl FileFormat {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "csv" => Some(Self::Csv),
            "jsonl" => Some(Self::JsonLines),
            _ => None,
        }
    }

    pub fn from_extension(path: &Path) -> Option<Self> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "csv" => Some(Self::Csv),
            "jsonl" | "ndjson" => Some(Self::JsonLines),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::JsonLines => "jsonl",
        }
    }
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
    pub layout: Option<LayoutKind>,
    /// Set when the file cannot be routed: the reason, for the dead-letter table.
    pub problem: Option<String>,
}

/// Routes a file given its path relative to the landing directory.
pub fn route_landing_file(relative_path: &Path, contracts: &[SourceContract]) -> RoutedFile {
    let format = FileFormat::from_extension(relative_path);
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
            layout: Some(layout),
            problem: Some(problem),
        };
    };
    let problem = match format {
        Some(f) if contract.accepts(f) => None,
        Some(f) => Some(format!(
            "source {} does not accept {} files",
            contract.source,
            f.name()
        )),
        None => Some("unsupported file type (expected .csv or .jsonl)".to_string()),
    };
    RoutedFile {
        source: Some(contract.source.clone()),
        format,
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
    }
}
