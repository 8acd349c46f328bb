//! Declarative expectations: one TOML file per table in `expectations/<layer>/`, compiled in.
//!
//! Every rule has a unique name, a severity (`warn` or `error`), a threshold (`mostly`, the
//! share of evaluated rows that must pass, default 1.0; or `max_failures`) and, for value rules,
//! a null policy: `ignore` (the default: a NULL is not evaluated, as `not_null` is its own rule),
//! `fail` (a NULL is a failure) or `pass` (a NULL is evaluated and passes).

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::QualityError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warn,
    Error,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Warn => "warn",
            Severity::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NullPolicy {
    #[default]
    Ignore,
    Fail,
    Pass,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RuleKind {
    NotNull {
        column: String,
    },
    Unique {
        columns: Vec<String>,
    },
    AcceptedValues {
        column: String,
        values: Vec<toml::Value>,
    },
    Between {
        column: String,
        min: Option<f64>,
        max: Option<f64>,
    },
    Regex {
        column: String,
        pattern: String,
    },
    /// A foreign key: `references = "silver.accounts.account_id"`.
    Reference {
        column: String,
        references: String,
    },
    /// A row-level SQL boolean expression that must hold.
    Custom {
        expression: String,
    },
    RowCountBetween {
        min: Option<u64>,
        max: Option<u64>,
    },
    /// Newest value of `column` against the run's as-of time.
    Freshness {
        column: String,
        max_age_hours: f64,
    },
    Schema {
        #[serde(default)]
        required_columns: Vec<String>,
        #[serde(default)]
        forbidden_columns: Vec<String>,
    },
    /// A table-level query returning one row with `evaluated` and `failed` counts.
    CustomQuery {
        query: String,
    },
}

impl RuleKind {
    pub fn name(&self) -> &'static str {
        match self {
            RuleKind::NotNull { .. } => "not_null",
            RuleKind::Unique { .. } => "unique",
            RuleKind::AcceptedValues { .. } => "accepted_values",
            RuleKind::Between { .. } => "between",
            RuleKind::Regex { .. } => "regex",
            RuleKind::Reference { .. } => "reference",
            RuleKind::Custom { .. } => "custom",
            RuleKind::RowCountBetween { .. } => "row_count_between",
            RuleKind::Freshness { .. } => "freshness",
            RuleKind::Schema { .. } => "schema",
            RuleKind::CustomQuery { .. } => "custom_query",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Rule {
    pub name: String,
    #[serde(flatten)]
    pub kind: RuleKind,
    pub severity: Severity,
    pub mostly: Option<f64>,
    pub max_failures: Option<u64>,
    #[serde(default)]
    pub null_policy: NullPolicy,
}

impl Rule {
    /// Whether `failed` of `evaluated` is within the rule's threshold.
    pub fn passes(&self, evaluated: u64, failed: u64) -> bool {
        if let Some(max) = self.max_failures {
            return failed <= max;
        }
        if evaluated == 0 {
            return true;
        }
        let mostly = self.mostly.unwrap_or(1.0);
        (evaluated - failed) as f64 / evaluated as f64 >= mostly - 1e-12
    }
}

/// The expectations of one table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Suite {
    pub table: String,
    /// Columns that identify a failing row in samples.
    #[serde(default)]
    pub key: Vec<String>,
    pub rules: Vec<Rule>,
}

const EMBEDDED: &[(&str, &str)] = &[
    (
        "gold/unified_payments.toml",
        include_str!("../../../expectations/gold/unified_payments.toml"),
    ),
    (
        "gold/payment_training.toml",
        include_str!("../../../expectations/gold/payment_training.toml"),
    ),
    (
        "silver/payments.toml",
        include_str!("../../../expectations/silver/payments.toml"),
    ),
    (
        "silver/accounts.toml",
        include_str!("../../../expectations/silver/accounts.toml"),
    ),
    (
        "silver/risk_feed.toml",
        include_str!("../../../expectations/silver/risk_feed.toml"),
    ),
    (
        "silver/fraud_labels.toml",
        include_str!("../../../expectations/silver/fraud_labels.toml"),
    ),
];

impl Suite {
    pub fn parse(origin: &str, text: &str) -> Result<Self, QualityError> {
        let suite: Suite = toml::from_str(text).map_err(|e| QualityError::Expectations {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        let mut names = BTreeSet::new();
        for rule in &suite.rules {
            if !names.insert(rule.name.as_str()) {
                return Err(QualityError::Expectations {
                    origin: origin.to_string(),
                    message: format!("rule name '{}' is used twice", rule.name),
                });
            }
            if let Some(mostly) = rule.mostly {
                if !(0.0..=1.0).contains(&mostly) {
                    return Err(QualityError::Expectations {
                        origin: origin.to_string(),
                        message: format!("rule {}: mostly must be within 0..1", rule.name),
                    });
                }
            }
        }
        Ok(suite)
    }

    pub fn layer(&self) -> &str {
        self.table.split('.').next().unwrap_or_default()
    }
}

/// The suites of a layer (`silver`, `gold`), from `dir/<layer>/*.toml` or those built in.
pub fn load_suites(layer: &str, dir: Option<&std::path::Path>) -> Result<Vec<Suite>, QualityError> {
    match dir {
        None => EMBEDDED
            .iter()
            .filter(|(origin, _)| origin.starts_with(&format!("{layer}/")))
            .map(|(origin, text)| Suite::parse(origin, text))
            .collect(),
        Some(dir) => {
            // A mistyped folder must not silently mean "no rules".
            let folder = dir.join(layer);
            let entries = std::fs::read_dir(&folder).map_err(|e| QualityError::Expectations {
                origin: folder.display().to_string(),
                message: format!("cannot read the expectations folder: {e}"),
            })?;
            let mut paths: Vec<_> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            paths.sort();
            paths
                .iter()
                .map(|path| {
                    let text =
                        std::fs::read_to_string(path).map_err(|e| QualityError::Expectations {
                            origin: path.display().to_string(),
                            message: e.to_string(),
                        })?;
                    Suite::parse(&path.display().to_string(), &text)
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_suites_parse_and_match_the_repository() {
        let embedded = load_suites("silver", None).unwrap();
        assert_eq!(embedded.len(), 4);
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../expectations");
        assert_eq!(
            load_suites("silver", Some(&dir)).unwrap().len(),
            embedded.len()
        );
        assert_eq!(load_suites("gold", None).unwrap().len(), 2);
        assert_eq!(load_suites("gold", Some(&dir)).unwrap().len(), 2);
        let payments = embedded
            .iter()
            .find(|s| s.table == "silver.payments")
            .unwrap();
        assert!(
            payments
                .rules
                .iter()
                .any(|r| matches!(r.kind, RuleKind::Reference { .. })
                    && r.severity == Severity::Error)
        );
    }

    #[test]
    fn a_mistyped_expectations_folder_is_an_error_not_no_rules() {
        let missing = std::path::Path::new("/nonexistent/expectations");
        let err = load_suites("silver", Some(missing)).unwrap_err();
        assert!(
            matches!(err, QualityError::Expectations { .. }) && err.to_string().contains("silver"),
            "{err}"
        );
    }

    #[test]
    fn thresholds_mostly_and_max_failures() {
        let rule = |mostly: Option<f64>, max_failures: Option<u64>| Rule {
            name: "r".into(),
            kind: RuleKind::NotNull { column: "c".into() },
            severity: Severity::Error,
            mostly,
            max_failures,
            null_policy: NullPolicy::Ignore,
        };
        assert!(rule(None, None).passes(10, 0));
        assert!(!rule(None, None).passes(10, 1));
        assert!(rule(Some(0.9), None).passes(10, 1));
        assert!(!rule(Some(0.95), None).passes(10, 1));
        assert!(rule(None, Some(2)).passes(10, 2));
        assert!(!rule(None, Some(2)).passes(10, 3));
        assert!(rule(None, None).passes(0, 0), "nothing evaluated passes");
    }

    #[test]
    fn duplicate_rule_names_are_rejected() {
        let text = r#"
table = "silver.x"
[[rules]]
name = "a"
kind = "not_null"
column = "c"
severity = "warn"
[[rules]]
name = "a"
kind = "row_count_between"
min = 1
severity = "error"
"#;
        let err = Suite::parse("x.toml", text).unwrap_err();
        assert!(err.to_string().contains("used twice"), "{err}");
    }
}
