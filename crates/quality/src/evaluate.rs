//! Evaluates a table's expectations: every row-level rule in one aggregate query over the table,
//! table-level rules from that same pass (row count, freshness) or the schema, and samples of
//! failing keys only for rules that failed.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::{Float64Type, UInt64Type};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use serde::Serialize;

use crate::expectations::{NullPolicy, Rule, RuleKind, Severity, Suite};
use crate::QualityError;

pub const MAX_SAMPLES: usize = 20;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RuleResult {
    pub table: String,
    pub rule: String,
    pub kind: String,
    pub severity: Severity,
    pub evaluated: u64,
    pub failed: u64,
    pub failed_percent: f64,
    pub passed: bool,
    pub samples: Vec<String>,
    /// A short explanation for table-level rules (newest value, missing columns, …).
    pub detail: Option<String>,
}

impl RuleResult {
    pub fn blocks(&self) -> bool {
        !self.passed && self.severity == Severity::Error
    }
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => format!("'{}'", other.to_string().replace('\'', "''")),
    }
}

/// (evaluated, failed) SQL conditions of a row-level rule, or `None` for table-level rules.
fn row_conditions(index: usize, rule: &Rule) -> Option<(String, String)> {
    let value_rule = |null_test: String, holds: String| {
        let (evaluated, failed) = match rule.null_policy {
            NullPolicy::Ignore => (
                format!("NOT ({null_test})"),
                format!("NOT ({null_test}) AND NOT ({holds})"),
            ),
            NullPolicy::Fail => (
                "TRUE".to_string(),
                format!("({null_test}) OR NOT ({holds})"),
            ),
            NullPolicy::Pass => (
                "TRUE".to_string(),
                format!("NOT ({null_test}) AND NOT ({holds})"),
            ),
        };
        Some((evaluated, failed))
    };
    match &rule.kind {
        RuleKind::NotNull { column } => Some(("TRUE".into(), format!("{} IS NULL", ident(column)))),
        RuleKind::Unique { columns } => {
            // Failures are counted per key by `repeated_keys`, not per row here.
            let evaluated = match rule.null_policy {
                NullPolicy::Ignore => format!("NOT ({})", null_key(columns)),
                NullPolicy::Fail | NullPolicy::Pass => "TRUE".to_string(),
            };
            Some((evaluated, "FALSE".to_string()))
        }
        RuleKind::AcceptedValues { column, values } => {
            let list = values.iter().map(literal).collect::<Vec<_>>().join(", ");
            value_rule(
                format!("{} IS NULL", ident(column)),
                format!("{} IN ({list})", ident(column)),
            )
        }
        RuleKind::Between { column, min, max } => {
            let mut holds = vec!["TRUE".to_string()];
            if let Some(min) = min {
                holds.push(format!("{} >= {min}", ident(column)));
            }
            if let Some(max) = max {
                holds.push(format!("{} <= {max}", ident(column)));
            }
            value_rule(format!("{} IS NULL", ident(column)), holds.join(" AND "))
        }
        RuleKind::Regex { column, pattern } => value_rule(
            format!("{} IS NULL", ident(column)),
            format!(
                "regexp_like(CAST({} AS VARCHAR), '{}')",
                ident(column),
                pattern.replace('\'', "''")
            ),
        ),
        RuleKind::Reference { column, .. } => value_rule(
            format!("{} IS NULL", ident(column)),
            format!("__found_{index}"),
        ),
        RuleKind::Custom { expression } => {
            value_rule(format!("({expression}) IS NULL"), format!("({expression})"))
        }
        RuleKind::RowCountBetween { .. }
        | RuleKind::Freshness { .. }
        | RuleKind::Schema { .. }
        | RuleKind::CustomQuery { .. } => None,
    }
}

/// Whether any column of a unique key is NULL.
fn null_key(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| format!("{} IS NULL", ident(c)))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// The groups of a unique rule's key that fail it: repeated keys without NULLs, and under
/// `null_policy = "fail"` every key with a NULL. An aggregate over the key columns alone, not a
/// window partitioned by the key: that would sort the whole table into one-row partitions
/// (measured: 1.2 GiB resident for 2M payments), and joining the counts back made the engine
/// build a hash table of the whole table (over 1 GiB at 10M payments).
fn failing_key_groups(table: &str, columns: &[String], null_policy: NullPolicy) -> String {
    let keys = columns
        .iter()
        .map(|c| ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let nulls = null_key(columns);
    let failing = match null_policy {
        NullPolicy::Fail => format!("count(*) > 1 OR {nulls}"),
        NullPolicy::Ignore | NullPolicy::Pass => format!("count(*) > 1 AND NOT ({nulls})"),
    };
    let label = columns
        .iter()
        .map(|c| format!("COALESCE(CAST({} AS VARCHAR), 'NULL')", ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT concat_ws('|', {label}) AS k, count(*) AS __n FROM {table} \
         GROUP BY {keys} HAVING {failing}"
    )
}

/// The table with the helper columns row-level rules need (reference joins). Each referenced
/// key set is the left side of a right join, the side the engine builds its hash table from:
/// written as left joins, the second join built its table from the whole audited table (the
/// first join's output has no row estimate to swap on): 10M rows at 10M payments.
fn enriched_table(suite: &Suite) -> Result<String, QualityError> {
    let mut extra = Vec::new();
    let mut joined = format!("{} AS __t", suite.table);
    for (index, rule) in suite.rules.iter().enumerate() {
        if let RuleKind::Reference { column, references } = &rule.kind {
            let (table, key) =
                references
                    .rsplit_once('.')
                    .ok_or_else(|| QualityError::Expectations {
                        origin: suite.table.clone(),
                        message: format!(
                            "rule {}: references must be layer.table.column",
                            rule.name
                        ),
                    })?;
            joined = format!(
                "(SELECT DISTINCT {} AS __k FROM {table}) AS __ref_{index} RIGHT JOIN ({joined}) \
                 ON __t.{} = __ref_{index}.__k",
                ident(key),
                ident(column)
            );
            extra.push(format!("__ref_{index}.__k IS NOT NULL AS __found_{index}"));
        }
    }
    let extra = extra.iter().map(|e| format!(", {e}")).collect::<String>();
    Ok(format!("SELECT __t.*{extra} FROM {joined}"))
}

fn number(batch: &RecordBatch, name: &str) -> Result<Option<f64>, QualityError> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| QualityError::Internal(format!("no column {name} in the result")))?;
    let values = cast(column, &DataType::Float64)?;
    let values = values
        .as_primitive_opt::<Float64Type>()
        .ok_or_else(|| QualityError::Internal(format!("{name} is not numeric")))?;
    Ok((!values.is_empty() && !values.is_null(0)).then(|| values.value(0)))
}

/// Every batch of `sql`'s result; `doing` names the query in errors.
async fn collect(
    ctx: &SessionContext,
    sql: &str,
    doing: &str,
) -> Result<Vec<RecordBatch>, QualityError> {
    ctx.sql(sql)
        .await
        .map_err(|e| QualityError::query(doing, e))?
        .collect()
        .await
        .map_err(|e| QualityError::query(doing, e))
}

async fn one_row(
    ctx: &SessionContext,
    sql: &str,
    doing: &str,
) -> Result<RecordBatch, QualityError> {
    let batches = collect(ctx, sql, doing).await?;
    batches
        .into_iter()
        .find(|b| b.num_rows() > 0)
        .ok_or_else(|| QualityError::Internal(format!("{doing}: no result row")))
}

/// Up to [`MAX_SAMPLES`] failing keys (smallest first) of each row-level rule in `failing`
/// (rule index, failed condition), by rule index. One scan of the table for all of them: a
/// query per rule re-read the whole table and its reference joins each time (at 10M payments,
/// three rules with failures made the audit scan silver.payments four times).
async fn samples(
    ctx: &SessionContext,
    suite: &Suite,
    enriched: &str,
    failing: &[(usize, String)],
) -> Result<HashMap<usize, Vec<String>>, QualityError> {
    let mut by_rule: HashMap<usize, Vec<String>> = HashMap::new();
    if failing.is_empty() {
        return Ok(by_rule);
    }
    let key = if suite.key.is_empty() {
        "'(no key)'".to_string()
    } else {
        let parts = suite
            .key
            .iter()
            .map(|k| format!("COALESCE(CAST({} AS VARCHAR), 'NULL')", ident(k)))
            .collect::<Vec<_>>();
        format!("concat_ws('|', {})", parts.join(", "))
    };
    let any_failed = failing
        .iter()
        .map(|(_, condition)| format!("({condition})"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let rule_of_row = failing
        .iter()
        .map(|(index, condition)| format!("CASE WHEN {condition} THEN {index} END"))
        .collect::<Vec<_>>()
        .join(", ");
    // The failing rows only, each unnested into one row per rule it fails.
    let sql = format!(
        "SELECT __rule, __sample_key FROM ( \
           SELECT __rule, __sample_key, row_number() OVER (PARTITION BY __rule ORDER BY __sample_key) AS __n \
           FROM ( \
             SELECT __sample_key, unnest(make_array({rule_of_row})) AS __rule \
             FROM (SELECT {key} AS __sample_key, * FROM ({enriched}) AS __q WHERE {any_failed}) AS __failed \
           ) AS __flagged WHERE __rule IS NOT NULL \
         ) AS __ranked WHERE __n <= {MAX_SAMPLES} ORDER BY __rule, __sample_key"
    );
    let doing = "sampling failing keys";
    let batches = collect(ctx, &sql, doing).await?;
    for batch in batches {
        let rules = cast(batch.column(0), &DataType::UInt64)?;
        let keys = cast(batch.column(1), &DataType::Utf8)?;
        let (Some(rules), Some(keys)) = (
            rules.as_primitive_opt::<UInt64Type>(),
            keys.as_string_opt::<i32>(),
        ) else {
            return Err(QualityError::Internal(format!(
                "{doing}: unexpected column types"
            )));
        };
        for (rule, key) in rules.iter().zip(keys.iter()) {
            if let (Some(rule), Some(key)) = (rule, key) {
                by_rule
                    .entry(rule as usize)
                    .or_default()
                    .push(key.to_string());
            }
        }
    }
    Ok(by_rule)
}

/// The first column of `sql`'s rows, as text.
async fn keys_of(
    ctx: &SessionContext,
    sql: &str,
    doing: &str,
) -> Result<Vec<String>, QualityError> {
    let batches = collect(ctx, sql, doing).await?;
    let mut keys = Vec::new();
    for batch in batches {
        let column = cast(batch.column(0), &DataType::Utf8)?;
        if let Some(values) = column.as_string_opt::<i32>() {
            keys.extend(values.iter().flatten().map(str::to_string));
        }
    }
    Ok(keys)
}

fn result(table: &str, rule: &Rule, evaluated: u64, failed: u64) -> RuleResult {
    RuleResult {
        table: table.to_string(),
        rule: rule.name.clone(),
        kind: rule.kind.name().to_string(),
        severity: rule.severity,
        evaluated,
        failed,
        failed_percent: if evaluated == 0 {
            0.0
        } else {
            100.0 * failed as f64 / evaluated as f64
        },
        passed: rule.passes(evaluated, failed),
        samples: vec![],
        detail: None,
    }
}

/// Evaluates every rule of a suite against the registered table.
pub async fn evaluate_suite(
    ctx: &SessionContext,
    suite: &Suite,
    as_of: DateTime<Utc>,
) -> Result<Vec<RuleResult>, QualityError> {
    let table_schema = ctx
        .table(suite.table.as_str())
        .await
        .map_err(|e| QualityError::query(&format!("opening {}", suite.table), e))?
        .schema()
        .clone();
    let has_column = |name: &str| table_schema.field_with_unqualified_name(name).is_ok();
    let enriched = enriched_table(suite)?;

    // One aggregate pass for every row-level rule, the row count and freshness maxima.
    let mut aggregates = vec!["count(*) AS __rows".to_string()];
    let mut conditions = Vec::new();
    for (index, rule) in suite.rules.iter().enumerate() {
        if let Some((evaluated, failed)) = row_conditions(index, rule) {
            aggregates.push(format!(
                "sum(CASE WHEN {evaluated} THEN 1 ELSE 0 END) AS __e_{index}"
            ));
            aggregates.push(format!(
                "sum(CASE WHEN {failed} THEN 1 ELSE 0 END) AS __f_{index}"
            ));
            conditions.push((index, failed));
        }
        if let RuleKind::Freshness { column, .. } = &rule.kind {
            if has_column(column) {
                aggregates.push(format!(
                    "date_part('epoch', max({})) AS __max_{index}",
                    ident(column)
                ));
            }
        }
    }
    let pass = one_row(
        ctx,
        &format!("SELECT {} FROM ({enriched}) AS __q", aggregates.join(", ")),
        &format!("evaluating the expectations of {}", suite.table),
    )
    .await?;
    let rows = number(&pass, "__rows")?.unwrap_or(0.0) as u64;
    let mut failing = Vec::new();
    for (index, condition) in &conditions {
        if number(&pass, &format!("__f_{index}"))?.unwrap_or(0.0) > 0.0 {
            failing.push((*index, condition.clone()));
        }
    }
    let mut samples_by_rule = samples(ctx, suite, &enriched, &failing).await?;

    let mut results = Vec::new();
    for (index, rule) in suite.rules.iter().enumerate() {
        let outcome = match &rule.kind {
            RuleKind::RowCountBetween { min, max } => {
                let outside = min.is_some_and(|m| rows < m) || max.is_some_and(|m| rows > m);
                let mut r = result(&suite.table, rule, 1, u64::from(outside));
                r.detail = Some(format!("{rows} rows"));
                r
            }
            RuleKind::Freshness {
                column,
                max_age_hours,
            } => {
                let newest = if has_column(column) {
                    number(&pass, &format!("__max_{index}"))?
                } else {
                    None
                };
                let newest_at = newest.and_then(|s| DateTime::<Utc>::from_timestamp(s as i64, 0));
                let stale = match newest_at {
                    Some(at) => (as_of - at).num_seconds() as f64 > max_age_hours * 3600.0,
                    None => true,
                };
                let mut r = result(&suite.table, rule, 1, u64::from(stale));
                r.detail = Some(match newest_at {
                    Some(at) => format!(
                        "newest {column} {} is {:.1} h before {}",
                        at.to_rfc3339(),
                        (as_of - at).num_seconds() as f64 / 3600.0,
                        as_of.to_rfc3339()
                    ),
                    None => format!("no {column} values"),
                });
                r
            }
            RuleKind::Schema {
                required_columns,
                forbidden_columns,
            } => {
                let missing: Vec<&String> =
                    required_columns.iter().filter(|c| !has_column(c)).collect();
                let forbidden: Vec<&String> =
                    forbidden_columns.iter().filter(|c| has_column(c)).collect();
                let evaluated = (required_columns.len() + forbidden_columns.len()) as u64;
                let mut r = result(
                    &suite.table,
                    rule,
                    evaluated,
                    (missing.len() + forbidden.len()) as u64,
                );
                r.samples = missing
                    .iter()
                    .map(|c| format!("missing {c}"))
                    .chain(forbidden.iter().map(|c| format!("forbidden {c}")))
                    .collect();
                r
            }
            RuleKind::Unique { columns } => {
                let groups = failing_key_groups(&suite.table, columns, rule.null_policy);
                let doing = format!("rule {}", rule.name);
                let row = one_row(
                    ctx,
                    &format!("SELECT COALESCE(sum(__n), 0) AS failed FROM ({groups}) AS __g"),
                    &doing,
                )
                .await?;
                let evaluated = number(&pass, &format!("__e_{index}"))?.unwrap_or(0.0) as u64;
                let failed = number(&row, "failed")?.unwrap_or(0.0) as u64;
                let mut r = result(&suite.table, rule, evaluated, failed);
                if failed > 0 {
                    // The failing key values themselves, once each.
                    r.samples = keys_of(
                        ctx,
                        &format!("SELECT k FROM ({groups}) AS __g ORDER BY k LIMIT {MAX_SAMPLES}"),
                        &doing,
                    )
                    .await?;
                }
                r
            }
            RuleKind::CustomQuery { query } => {
                let row = one_row(ctx, query, &format!("rule {}", rule.name)).await?;
                let evaluated = number(&row, "evaluated")?.unwrap_or(0.0) as u64;
                let failed = number(&row, "failed")?.unwrap_or(0.0) as u64;
                result(&suite.table, rule, evaluated, failed)
            }
            _ => {
                let evaluated = number(&pass, &format!("__e_{index}"))?.unwrap_or(0.0) as u64;
                let failed = number(&pass, &format!("__f_{index}"))?.unwrap_or(0.0) as u64;
                let mut r = result(&suite.table, rule, evaluated, failed);
                r.samples = samples_by_rule.remove(&index).unwrap_or_default();
                r
            }
        };
        results.push(outcome);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn evaluate(rules: &str) -> Vec<RuleResult> {
        let ctx = SessionContext::new();
        for statement in [
            "CREATE SCHEMA silver",
            "CREATE TABLE silver.pairs (a INT, b VARCHAR) AS VALUES \
             (1, 'x'), (1, 'x'), (1, 'y'), (2, NULL), (2, NULL), (NULL, NULL), \
             (3, 'z'), (3, 'z'), (3, 'z')",
        ] {
            ctx.sql(statement).await.unwrap().collect().await.unwrap();
        }
        let suite = Suite::parse(
            "test",
            &format!("table = \"silver.pairs\"\nkey = [\"a\", \"b\"]\n{rules}"),
        )
        .unwrap();
        evaluate_suite(&ctx, &suite, Utc::now()).await.unwrap()
    }

    #[tokio::test]
    async fn unique_counts_every_row_of_a_repeated_key_under_each_null_policy() {
        let rule = |policy: &str| {
            format!(
                "[[rules]]\nname = \"{policy}\"\nkind = \"unique\"\ncolumns = [\"a\", \"b\"]\n\
                 severity = \"error\"\nnull_policy = \"{policy}\"\n"
            )
        };
        let results = evaluate(&(rule("ignore") + &rule("fail") + &rule("pass"))).await;
        let counts: Vec<_> = results
            .iter()
            .map(|r| (r.rule.as_str(), r.evaluated, r.failed))
            .collect();
        // Keys without NULLs: (1,x) twice and (3,z) three times repeat, (1,y) does not. Rows
        // with a NULL in the key are judged by the null policy alone.
        assert_eq!(
            counts,
            [("ignore", 6, 5), ("fail", 9, 8), ("pass", 9, 5)],
            "{results:?}"
        );
        assert_eq!(results[0].samples, ["1|x", "3|z"]);
        assert_eq!(results[1].samples, ["1|x", "2|NULL", "3|z", "NULL|NULL"]);
    }

    #[tokio::test]
    async fn each_failing_rule_gets_its_own_smallest_keys_from_one_scan() {
        let results = evaluate(
            "[[rules]]\nname = \"a_below_3\"\nkind = \"between\"\ncolumn = \"a\"\nmin = 3\n\
             severity = \"warn\"\n\
             [[rules]]\nname = \"b_is_x\"\nkind = \"accepted_values\"\ncolumn = \"b\"\n\
             values = [\"x\"]\nseverity = \"warn\"\nnull_policy = \"fail\"\n\
             [[rules]]\nname = \"a_known\"\nkind = \"not_null\"\ncolumn = \"a\"\n\
             severity = \"warn\"\n\
             [[rules]]\nname = \"b_short\"\nkind = \"custom\"\nexpression = \"length(b) = 1\"\n\
             severity = \"warn\"\n",
        )
        .await;
        let found: Vec<_> = results
            .iter()
            .map(|r| (r.rule.as_str(), r.failed, r.samples.clone()))
            .collect();
        let keys = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        assert_eq!(
            found,
            [
                (
                    "a_below_3",
                    5,
                    keys(&["1|x", "1|x", "1|y", "2|NULL", "2|NULL"])
                ),
                (
                    "b_is_x",
                    7,
                    keys(&["1|y", "2|NULL", "2|NULL", "3|z", "3|z", "3|z", "NULL|NULL"])
                ),
                ("a_known", 1, keys(&["NULL|NULL"])),
                ("b_short", 0, vec![]),
            ],
            "{results:?}"
        );
    }
}
