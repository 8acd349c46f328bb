//! Source contracts: what each upstream feed must send, and how a landing file is routed to its
//! source and given a knowledge time.
//!
//! The contracts live as TOML files in `contracts/` at the repository root and are compiled into
//! the binary, so a deployed `paylake` always runs with the contracts it was tested with.

mod known_at;
mod routing;

use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use known_at::known_at_from_path;
pub use routing::{route_landing_file, Compression, FileFormat, LayoutKind, RoutedFile};

#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("contract {name}: {source}")]
    Parse {
        name: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("contract {name}: {message}")]
    Invalid { name: String, message: String },
    #[error("unknown source '{0}' (known: payments, accounts, risk_feed, fraud_labels)")]
    UnknownSource(String),
}

/// One declared column of a source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnContract {
    pub name: String,
    /// A file whose header lacks a required column lands no rows.
    pub required: bool,
    /// The type Silver gives the column (documentation; the Silver SQL enforces it).
    pub silver_type: String,
    /// Other header names upstream has used for this column.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// A versioned contract for one source feed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceContract {
    pub source: String,
    pub version: String,
    pub description: String,
    pub key: Vec<String>,
    /// File-name prefixes that route a file in the flat landing layout to this source.
    pub flat_prefixes: Vec<String>,
    /// File formats accepted for this source (`csv`, `jsonl`, `xlsx` for any Excel workbook).
    pub formats: Vec<String>,
    pub columns: Vec<ColumnContract>,
}

const EMBEDDED: [(&str, &str); 4] = [
    ("payments", include_str!("../../../contracts/payments.toml")),
    ("accounts", include_str!("../../../contracts/accounts.toml")),
    (
        "risk_feed",
        include_str!("../../../contracts/risk_feed.toml"),
    ),
    (
        "fraud_labels",
        include_str!("../../../contracts/fraud_labels.toml"),
    ),
];

/// Header names are compared trimmed and case-insensitively.
pub fn normalize_header(name: &str) -> String {
    name.trim_start_matches('\u{feff}').trim().to_lowercase()
}

/// A stable fingerprint of a set of header names: order-insensitive, normalised.
pub fn schema_fingerprint<'a>(headers: impl IntoIterator<Item = &'a str>) -> String {
    let mut names: Vec<String> = headers.into_iter().map(normalize_header).collect();
    names.sort();
    let mut hasher = Sha256::new();
    for name in &names {
        hasher.update(name.as_bytes());
        hasher.update([0u8]);
    }
    hex::encode(&hasher.finalize()[..8])
}

/// How a file's header lines up with a contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMapping {
    /// For each contract column (in contract order), the index of the file column that feeds it.
    pub column_positions: Vec<Option<usize>>,
    /// File columns the contract does not declare: (index, header as received).
    pub extra_columns: Vec<(usize, String)>,
    /// Required contract columns the file lacks.
    pub missing_required: Vec<String>,
    /// Optional contract columns the file lacks.
    pub missing_optional: Vec<String>,
    /// Header names that appear more than once (after normalisation).
    pub duplicated: Vec<String>,
}

impl HeaderMapping {
    pub fn is_usable(&self) -> bool {
        self.missing_required.is_empty() && self.duplicated.is_empty()
    }

    pub fn drifted(&self) -> bool {
        !self.extra_columns.is_empty()
            || !self.missing_required.is_empty()
            || !self.missing_optional.is_empty()
    }
}

impl SourceContract {
    pub fn from_toml(name: &str, text: &str) -> Result<Self, ContractError> {
        let contract: SourceContract =
            toml::from_str(text).map_err(|source| ContractError::Parse {
                name: name.to_string(),
                source,
            })?;
        contract.validate(name)?;
        Ok(contract)
    }

    fn validate(&self, name: &str) -> Result<(), ContractError> {
        let invalid = |message: String| ContractError::Invalid {
            name: name.to_string(),
            message,
        };
        if self.columns.is_empty() {
            return Err(invalid("declares no columns".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for column in &self.columns {
            for alias in std::iter::once(&column.name).chain(&column.aliases) {
                if !seen.insert(normalize_header(alias)) {
                    return Err(invalid(format!(
                        "column name or alias '{alias}' is declared twice"
                    )));
                }
            }
            if column.name.starts_with('_') {
                return Err(invalid(format!(
                    "column '{}' starts with '_', which is reserved for lineage columns",
                    column.name
                )));
            }
        }
        for key in &self.key {
            if !self.columns.iter().any(|c| &c.name == key) {
                return Err(invalid(format!("key column '{key}' is not declared")));
            }
        }
        for format in &self.formats {
            if FileFormat::from_name(format).is_none() {
                return Err(invalid(format!("unknown format '{format}'")));
            }
        }
        Ok(())
    }

    pub fn column_names(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|c| c.name.as_str())
    }

    /// The fingerprint of a file that sends exactly the declared columns.
    pub fn fingerprint(&self) -> String {
        schema_fingerprint(self.column_names())
    }

    pub fn accepts(&self, format: FileFormat) -> bool {
        self.formats
            .iter()
            .any(|f| FileFormat::from_name(f) == Some(format))
    }

    /// Matches a file's header names against the declared columns.
    pub fn map_header<S: AsRef<str>>(&self, header: &[S]) -> HeaderMapping {
        let normalized: Vec<String> = header
            .iter()
            .map(|h| normalize_header(h.as_ref()))
            .collect();
        let mut duplicated = Vec::new();
        for (i, name) in normalized.iter().enumerate() {
            if normalized[..i].contains(name) && !duplicated.contains(name) {
                duplicated.push(name.clone());
            }
        }
        let mut claimed = vec![false; header.len()];
        let mut column_positions = Vec::with_capacity(self.columns.len());
        let mut missing_required = Vec::new();
        let mut missing_optional = Vec::new();
        for column in &self.columns {
            let position = std::iter::once(&column.name)
                .chain(&column.aliases)
                .find_map(|name| {
                    let wanted = normalize_header(name);
                    normalized.iter().position(|h| *h == wanted)
                });
            match position {
                Some(index) => claimed[index] = true,
                None if column.required => missing_required.push(column.name.clone()),
                None => missing_optional.push(column.name.clone()),
            }
            column_positions.push(position);
        }
        let extra_columns = header
            .iter()
            .enumerate()
            .filter(|(i, _)| !claimed[*i])
            .map(|(i, h)| {
                (
                    i,
                    h.as_ref().trim_start_matches('\u{feff}').trim().to_string(),
                )
            })
            .collect();
        HeaderMapping {
            column_positions,
            extra_columns,
            missing_required,
            missing_optional,
            duplicated,
        }
    }
}

/// All contracts compiled into this binary, in a fixed order.
pub fn all_contracts() -> Result<Vec<SourceContract>, ContractError> {
    EMBEDDED
        .iter()
        .map(|(name, text)| SourceContract::from_toml(name, text))
        .collect()
}

pub fn contract(source: &str) -> Result<SourceContract, ContractError> {
    let (name, text) = EMBEDDED
        .iter()
        .find(|(name, _)| *name == source)
        .ok_or_else(|| ContractError::UnknownSource(source.to_string()))?;
    SourceContract::from_toml(name, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_contracts_parse_and_name_themselves() {
        let contracts = all_contracts().unwrap();
        let names: Vec<_> = contracts.iter().map(|c| c.source.as_str()).collect();
        assert_eq!(names, ["payments", "accounts", "risk_feed", "fraud_labels"]);
        for (name, _) in EMBEDDED {
            assert_eq!(contract(name).unwrap().source, name);
        }
    }

    #[test]
    fn headers_match_trimmed_case_insensitive_in_any_order() {
        let risk = contract("risk_feed").unwrap();
        let mapping = risk.map_header(&["\u{feff} Risk_Flag ", "ACCOUNT_ID", "source_bank"]);
        assert_eq!(mapping.column_positions, vec![Some(1), Some(0)]);
        assert_eq!(mapping.extra_columns, vec![(2, "source_bank".to_string())]);
        assert!(mapping.is_usable());
        assert!(mapping.drifted());
    }

    #[test]
    fn missing_required_column_makes_file_unusable() {
        let payments = contract("payments").unwrap();
        let mapping = payments.map_header(&[
            "payment_id",
            "src_account_id",
            "dest_account_id",
            "amt",
            "timestamp",
        ]);
        assert_eq!(mapping.missing_required, vec!["amount".to_string()]);
        assert_eq!(
            mapping.missing_optional,
            vec!["payment_reference".to_string()]
        );
        assert!(!mapping.is_usable());
    }

    #[test]
    fn duplicated_header_is_unusable() {
        let risk = contract("risk_feed").unwrap();
        let mapping = risk.map_header(&["account_id", "risk_flag", "Risk_Flag"]);
        assert_eq!(mapping.duplicated, vec!["risk_flag".to_string()]);
        assert!(!mapping.is_usable());
    }

    #[test]
    fn fingerprint_ignores_order_and_case() {
        assert_eq!(
            schema_fingerprint(["a", "B"]),
            schema_fingerprint([" b", "A"])
        );
        assert_ne!(schema_fingerprint(["a"]), schema_fingerprint(["a", "b"]));
    }

    #[test]
    fn contract_with_unknown_key_is_rejected() {
        let text = r#"
source = "x"
version = "1"
description = "d"
key = ["nope"]
flat_prefixes = []
formats = ["csv"]
[[columns]]
name = "a"
required = true
silver_type = "VARCHAR"
"#;
        let err = SourceContract::from_toml("x", text).unwrap_err();
        assert!(err.to_string().contains("key column 'nope'"), "{err}");
    }
}
