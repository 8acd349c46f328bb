//! SQL models: one `SELECT` per file, named after the table it builds, dbt-style.
//!
//! A model may start with a config comment: `-- paylake: materialized=view` (planned inline by
//! the models that use it, never written), `-- paylake: materialized=temporary` (computed once
//! per run into scratch Parquet that every later model and check reads, never published) or
//! `-- paylake: partition_by=col`, `incremental_key=col` (the key an incremental run rebuilds
//! by, see `incremental`), and DataFusion settings for planning this model only
//! (`datafusion.optimizer.prefer_hash_join=false`). Models reference each other as `silver.name` / `gold.name`;
//! the runner orders them by those references.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;

use paylake_lake::layout::Layer;
use regex::Regex;

use crate::JobError;

/// How a model's result exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Materialization {
    /// Planned inline by every model that reads it; never written.
    View,
    /// Computed once per run into scratch files that later models and checks read; deleted
    /// after the run, never published. For staging models several tables read.
    Temporary,
    /// A published Delta table.
    Table,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub layer: Layer,
    pub name: String,
    pub sql: String,
    /// Where the SQL came from, for messages.
    pub origin: String,
    pub materialization: Materialization,
    pub partition_by: Vec<String>,
    /// DataFusion settings (`datafusion.*` key, value) applied while this model is planned.
    pub engine_settings: Vec<(String, String)>,
    /// Invariants checked on the staged result before it is published.
    pub checks: Vec<Check>,
    /// The column whose value alone decides this table's rows (dbt's `unique_key`): an
    /// incremental run rebuilds only the keys whose inputs changed. Tables without one are
    /// rebuilt in full on every run.
    pub incremental_key: Option<String>,
}

/// One invariant: a SELECT that returns the rows breaking it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub sql: String,
}

/// Splits a checks file into its `-- check: name` sections.
pub fn parse_checks(text: &str, origin: &str) -> Result<Vec<Check>, JobError> {
    let mut checks: Vec<Check> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.trim().strip_prefix("-- check:") {
            checks.push(Check {
                name: name.trim().to_string(),
                sql: String::new(),
            });
        } else if let Some(check) = checks.last_mut() {
            check.sql.push_str(line);
            check.sql.push('\n');
        }
    }
    if let Some(empty) = checks
        .iter()
        .find(|c| c.sql.trim().is_empty() || c.name.is_empty())
    {
        return Err(JobError::Model {
            model: origin.to_string(),
            message: format!("check '{}' has no name or no query", empty.name),
        });
    }
    Ok(checks)
}

const EMBEDDED_SILVER: &[(&str, &str)] = &[
    (
        "int_payments_checked",
        include_str!("../../../sql/silver/int_payments_checked.sql"),
    ),
    (
        "int_repeated_payment_ids",
        include_str!("../../../sql/silver/int_repeated_payment_ids.sql"),
    ),
    (
        "stg_payments",
        include_str!("../../../sql/silver/stg_payments.sql"),
    ),
    ("payments", include_str!("../../../sql/silver/payments.sql")),
    (
        "payments_quarantine",
        include_str!("../../../sql/silver/payments_quarantine.sql"),
    ),
    (
        "int_accounts_checked",
        include_str!("../../../sql/silver/int_accounts_checked.sql"),
    ),
    (
        "stg_accounts",
        include_str!("../../../sql/silver/stg_accounts.sql"),
    ),
    (
        "accounts_history",
        include_str!("../../../sql/silver/accounts_history.sql"),
    ),
    ("accounts", include_str!("../../../sql/silver/accounts.sql")),
    (
        "accounts_quarantine",
        include_str!("../../../sql/silver/accounts_quarantine.sql"),
    ),
    (
        "stg_risk_feed",
        include_str!("../../../sql/silver/stg_risk_feed.sql"),
    ),
    (
        "risk_feed_history",
        include_str!("../../../sql/silver/risk_feed_history.sql"),
    ),
    (
        "risk_feed",
        include_str!("../../../sql/silver/risk_feed.sql"),
    ),
    (
        "risk_feed_quarantine",
        include_str!("../../../sql/silver/risk_feed_quarantine.sql"),
    ),
    (
        "stg_fraud_labels",
        include_str!("../../../sql/silver/stg_fraud_labels.sql"),
    ),
    (
        "fraud_labels_history",
        include_str!("../../../sql/silver/fraud_labels_history.sql"),
    ),
    (
        "fraud_labels",
        include_str!("../../../sql/silver/fraud_labels.sql"),
    ),
    (
        "fraud_labels_quarantine",
        include_str!("../../../sql/silver/fraud_labels_quarantine.sql"),
    ),
];

const EMBEDDED_GOLD: &[(&str, &str)] = &[
    (
        "unified_payments",
        include_str!("../../../sql/gold/unified_payments.sql"),
    ),
    (
        "int_training_payments",
        include_str!("../../../sql/gold/int_training_payments.sql"),
    ),
    (
        "int_accounts_as_of",
        include_str!("../../../sql/gold/int_accounts_as_of.sql"),
    ),
    (
        "int_labels_as_of",
        include_str!("../../../sql/gold/int_labels_as_of.sql"),
    ),
    (
        "payment_training",
        include_str!("../../../sql/gold/payment_training.sql"),
    ),
];

/// Checks files, by the model they guard (`sql/<layer>/checks/<model>.sql`).
const EMBEDDED_CHECKS: &[(Layer, &str, &str)] = &[(
    Layer::Gold,
    "payment_training",
    include_str!("../../../sql/gold/checks/payment_training.sql"),
)];

fn reference_pattern() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    PATTERN.get_or_init(|| {
        Regex::new(r"\b(bronze|silver|gold)\.([A-Za-z0-9_]+)\b")
            .expect("the model reference pattern is a valid regex")
    })
}

impl Model {
    pub fn parse(layer: Layer, name: &str, sql: &str, origin: &str) -> Result<Self, JobError> {
        let mut model = Model {
            layer,
            name: name.to_string(),
            sql: sql.to_string(),
            origin: origin.to_string(),
            materialization: Materialization::Table,
            partition_by: vec![],
            engine_settings: vec![],
            checks: vec![],
            incremental_key: None,
        };
        for line in sql.lines() {
            let Some(config) = line.trim().strip_prefix("-- paylake:") else {
                continue;
            };
            for setting in config.split_whitespace() {
                match setting.split_once('=') {
                    Some(("materialized", "view")) => model.materialization = Materialization::View,
                    Some(("materialized", "temporary")) => {
                        model.materialization = Materialization::Temporary
                    }
                    Some(("materialized", "table")) => {
                        model.materialization = Materialization::Table
                    }
                    Some(("incremental_key", column)) => {
                        model.incremental_key = Some(column.to_string())
                    }
                    Some(("partition_by", columns)) => {
                        model.partition_by = columns.split(',').map(str::to_string).collect()
                    }
                    Some((key, value)) if key.starts_with("datafusion.") => model
                        .engine_settings
                        .push((key.to_string(), value.to_string())),
                    _ => {
                        return Err(JobError::Model {
                            model: origin.to_string(),
                            message: format!("unknown config setting '{setting}'"),
                        })
                    }
                }
            }
        }
        Ok(model)
    }

    /// `layer.name` of this model.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.layer.name(), self.name)
    }

    /// Qualified names of the tables this model reads.
    pub fn references(&self) -> BTreeSet<String> {
        let code: String = self
            .sql
            .lines()
            .map(|l| l.split("--").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        reference_pattern()
            .captures_iter(&code)
            .map(|c| format!("{}.{}", &c[1], &c[2]))
            .collect()
    }
}

/// The models of a layer: from `sql_dir/<layer>/*.sql` when given, else those built in.
pub fn load_models(layer: Layer, sql_dir: Option<&Path>) -> Result<Vec<Model>, JobError> {
    let mut models = Vec::new();
    if let Some(dir) = sql_dir {
        let folder = dir.join(layer.name());
        let entries = std::fs::read_dir(&folder).map_err(|e| JobError::Io {
            path: folder.display().to_string(),
            source: e,
        })?;
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        paths.sort();
        for path in paths {
            let sql = std::fs::read_to_string(&path).map_err(|e| JobError::Io {
                path: path.display().to_string(),
                source: e,
            })?;
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            let origin = path.display().to_string();
            let mut model = Model::parse(layer, &name, &sql, &origin)?;
            let checks_path = folder.join("checks").join(format!("{name}.sql"));
            if checks_path.is_file() {
                let text = std::fs::read_to_string(&checks_path).map_err(|e| JobError::Io {
                    path: checks_path.display().to_string(),
                    source: e,
                })?;
                model.checks = parse_checks(&text, &checks_path.display().to_string())?;
            }
            models.push(model);
        }
    } else {
        let embedded = match layer {
            Layer::Silver => EMBEDDED_SILVER,
            Layer::Gold => EMBEDDED_GOLD,
            Layer::Bronze | Layer::Quality => &[],
        };
        for (name, sql) in embedded {
            let origin = format!("sql/{}/{name}.sql", layer.name());
            let mut model = Model::parse(layer, name, sql, &origin)?;
            for (check_layer, model_name, text) in EMBEDDED_CHECKS {
                if *check_layer == layer && model_name == name {
                    let origin = format!("sql/{}/checks/{name}.sql", layer.name());
                    model.checks = parse_checks(text, &origin)?;
                }
            }
            models.push(model);
        }
    }
    order_models(models)
}

/// Orders models so each comes after the models of its layer that it references.
pub fn order_models(models: Vec<Model>) -> Result<Vec<Model>, JobError> {
    let names: BTreeSet<String> = models.iter().map(Model::qualified).collect();
    let mut pending: BTreeMap<String, (Model, BTreeSet<String>)> = models
        .into_iter()
        .map(|m| {
            let deps = m
                .references()
                .into_iter()
                .filter(|r| names.contains(r) && *r != m.qualified())
                .collect();
            (m.qualified(), (m, deps))
        })
        .collect();
    let mut ordered = Vec::new();
    while !pending.is_empty() {
        let ready: Vec<String> = pending
            .iter()
            .filter(|(_, (_, deps))| deps.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        if ready.is_empty() {
            let stuck: Vec<&String> = pending.keys().collect();
            return Err(JobError::Model {
                model: stuck
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                message: "models reference each other in a cycle".into(),
            });
        }
        for name in ready {
            if let Some((model, _)) = pending.remove(&name) {
                ordered.push(model);
            }
            for (_, deps) in pending.values_mut() {
                deps.remove(&name);
            }
        }
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_models_are_ordered_by_reference() {
        let models = load_models(Layer::Silver, None).unwrap();
        let position = |name: &str| models.iter().position(|m| m.name == name).unwrap();
        assert!(position("stg_payments") < position("payments"));
        assert!(position("payments") < position("fraud_labels_history"));
        assert!(position("accounts_history") < position("accounts"));
        assert_eq!(
            models[position("stg_payments")].materialization,
            Materialization::Temporary
        );
        assert_eq!(
            models[position("payments")].materialization,
            Materialization::Table
        );
        let gold = load_models(Layer::Gold, None).unwrap();
        let gold_position = |name: &str| gold.iter().position(|m| m.name == name).unwrap();
        let features = "int_accounts_as_of";
        assert!(gold_position("int_training_payments") < gold_position(features));
        assert!(gold_position(features) < gold_position("payment_training"));
        // Planned inline: the training table streams the as-of rows into its label join.
        for view in [features, "int_training_payments"] {
            assert_eq!(
                gold[gold_position(view)].materialization,
                Materialization::View
            );
        }
        // Written once, so the planner knows how few labels there are (the join's build side).
        assert!(gold_position("int_labels_as_of") < gold_position("payment_training"));
        assert_eq!(
            gold[gold_position("int_labels_as_of")].materialization,
            Materialization::Temporary
        );
        for table in ["unified_payments", "payment_training"] {
            let model = &gold[gold_position(table)];
            assert_eq!(model.partition_by, vec!["payment_date".to_string()]);
        }
        let training = gold.iter().find(|m| m.name == "payment_training").unwrap();
        let names: Vec<&str> = training.checks.iter().map(|c| c.name.as_str()).collect();
        assert!(names.contains(&"one_row_per_payment"), "{names:?}");
    }

    #[test]
    fn every_sql_file_in_the_repo_is_embedded() {
        for layer in [Layer::Silver, Layer::Gold] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sql");
            let from_disk: BTreeSet<String> = load_models(layer, Some(&dir))
                .unwrap()
                .into_iter()
                .map(|m| m.name)
                .collect();
            let embedded: BTreeSet<String> = load_models(layer, None)
                .unwrap()
                .into_iter()
                .map(|m| m.name)
                .collect();
            assert_eq!(from_disk, embedded, "{layer:?}");
            let checks_on_disk = load_models(layer, Some(&dir))
                .unwrap()
                .iter()
                .map(|m| m.checks.len())
                .sum::<usize>();
            let checks_embedded = load_models(layer, None)
                .unwrap()
                .iter()
                .map(|m| m.checks.len())
                .sum::<usize>();
            assert_eq!(checks_on_disk, checks_embedded, "{layer:?} checks");
        }
    }

    #[test]
    fn checks_files_split_into_named_queries() {
        let checks = parse_checks(
            "-- intro\n-- check: a\nSELECT 1\n-- check: b\nSELECT 2\n",
            "x",
        )
        .unwrap();
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[1].name, "b");
        assert!(checks[1].sql.contains("SELECT 2"));
        assert!(parse_checks("-- check: empty\n", "x").is_err());
    }

    #[test]
    fn cycles_and_unknown_settings_are_reported() {
        let a = Model::parse(Layer::Silver, "a", "SELECT * FROM silver.b", "a.sql").unwrap();
        let b = Model::parse(Layer::Silver, "b", "SELECT * FROM silver.a", "b.sql").unwrap();
        let err = order_models(vec![a, b]).unwrap_err();
        assert!(err.to_string().contains("cycle"), "{err}");
        let err = Model::parse(
            Layer::Gold,
            "x",
            "-- paylake: speed=fast\nSELECT 1",
            "x.sql",
        )
        .unwrap_err();
        assert!(err.to_string().contains("speed=fast"), "{err}");
    }
}
