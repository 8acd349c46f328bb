//! `paylake status` and `paylake schema`: what the lake holds and what changed upstream.

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;
use paylake_lake::layout::{Layer, TableName};
use paylake_lake::Lake;
use paylake_quality::metrics::{read_step, STEPS};
use serde::Serialize;

use crate::{job_failure, print_json, Failure};

/// Rows of a query as text cells (NULL as None).
async fn text_rows(ctx: &SessionContext, sql: &str) -> Result<Vec<Vec<Option<String>>>, Failure> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let mut rows = Vec::new();
    for batch in batches {
        let columns: Vec<StringArray> = batch
            .columns()
            .iter()
            .map(|c| {
                cast(c, &DataType::Utf8).map(|a| {
                    a.as_any()
                        .downcast_ref::<StringArray>()
                        .cloned()
                        .unwrap_or_else(|| StringArray::from(vec![None::<&str>; batch.num_rows()]))
                })
            })
            .collect::<Result<_, _>>()?;
        for i in 0..batch.num_rows() {
            rows.push(
                columns
                    .iter()
                    .map(|c| (!c.is_null(i)).then(|| c.value(i).to_string()))
                    .collect(),
            );
        }
    }
    Ok(rows)
}

#[derive(Debug, Serialize)]
struct TableStatus {
    table: String,
    rows: u64,
    last_update: Option<String>,
    newest_event: Option<String>,
    freshness_hours: Option<f64>,
    failing_rules: Vec<String>,
}

#[derive(Debug, Serialize)]
struct StepStatus {
    step: String,
    outcome: String,
    last_run: String,
    last_success: Option<String>,
    duration_seconds: f64,
}

fn seconds_to_time(seconds: f64) -> String {
    DateTime::<Utc>::from_timestamp_micros((seconds * 1e6) as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The time column whose maximum says how fresh a table is (raw text columns do not count).
fn event_column(schema: &datafusion::common::DFSchema) -> Option<&'static str> {
    ["timestamp", "known_at", "_known_at"]
        .into_iter()
        .find(|c| {
            schema
                .field_with_unqualified_name(c)
                .is_ok_and(|f| matches!(f.data_type(), DataType::Timestamp(_, _)))
        })
}

pub async fn status(lake: &Lake, now: DateTime<Utc>, json: bool) -> Result<(), Failure> {
    let ctx = paylake_jobs::lake_session(lake)
        .await
        .map_err(job_failure)?;
    let mut steps = Vec::new();
    let mut failing: Vec<(String, String)> = Vec::new();
    for step in STEPS {
        if let Some(state) = read_step(lake, step).await? {
            for rule in state.rules.iter().filter(|r| !r.passed) {
                failing.push((rule.table.clone(), rule.rule.clone()));
            }
            steps.push(StepStatus {
                step: state.step.clone(),
                outcome: state.outcome.clone(),
                last_run: seconds_to_time(state.last_run_seconds),
                last_success: state.last_success_seconds.map(seconds_to_time),
                duration_seconds: state.duration_seconds,
            });
        }
    }

    let mut names: Vec<String> = paylake_contracts::all_contracts()?
        .into_iter()
        .map(|c| format!("bronze.{}", c.source))
        .collect();
    for layer in [Layer::Silver, Layer::Gold] {
        for name in paylake_lake::catalog::table_names(lake, layer).await? {
            names.push(format!("{}.{name}", layer.name()));
        }
    }
    let mut tables = Vec::new();
    for name in names {
        let frame = ctx.table(name.as_str()).await?;

        // The last commit of a rebuilt table is its update time.
        let last_commit = match TableName::parse(&name) {
            Some(t) if t.layer != Layer::Bronze => paylake_lake::delta::history(lake, &t)
                .await?
                .into_iter()
                .next()
                .and_then(|h| h.timestamp),
            _ => None,
        };
        let newest_column = event_column(frame.schema());
        let newest_sql = newest_column
            .map(|c| format!("CAST(max(\"{c}\") AS VARCHAR), date_part('epoch', max(\"{c}\"))"))
            .unwrap_or_else(|| "NULL, NULL".into());
        let row = text_rows(&ctx, &format!("SELECT count(*), {newest_sql} FROM {name}")).await?;
        let cells = row.into_iter().next().unwrap_or_default();
        let rows = cells
            .first()
            .cloned()
            .flatten()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let newest_seconds: Option<f64> =
            cells.get(2).cloned().flatten().and_then(|v| v.parse().ok());
        let last_update = match last_commit {
            Some(at) => Some(at),
            None if name.starts_with("bronze.") => text_rows(
                &ctx,
                &format!("SELECT CAST(max(_ingested_at) AS VARCHAR) FROM {name}"),
            )
            .await?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten()),
            None => None,
        };
        tables.push(TableStatus {
            failing_rules: failing
                .iter()
                .filter(|(t, _)| *t == name)
                .map(|(_, r)| r.clone())
                .collect(),
            table: name,
            rows,
            last_update,
            newest_event: cells.get(1).cloned().flatten(),
            freshness_hours: newest_seconds.map(|s| (now.timestamp() as f64 - s) / 3600.0),
        });
    }

    let dead_letter = text_rows(
        &ctx,
        "SELECT COALESCE(source, '(unrouted)'), count(*) FROM bronze._dead_letter \
         WHERE NOT is_header GROUP BY 1 ORDER BY 1",
    )
    .await?;
    let mut quarantine = Vec::new();
    for table in &tables {
        if table.table.ends_with("_quarantine") {
            quarantine.push((table.table.clone(), table.rows));
        }
    }

    if json {
        let dead: serde_json::Map<String, serde_json::Value> = dead_letter
            .iter()
            .filter_map(|r| {
                let source = r.first().cloned().flatten()?;
                let n: u64 = r.get(1).cloned().flatten()?.parse().ok()?;
                Some((source, n.into()))
            })
            .collect();
        return print_json(&serde_json::json!({
            "lake": lake.display(),
            "checked_at": now.to_rfc3339(),
            "steps": steps,
            "tables": tables,
            "dead_letter": dead,
            "quarantine": quarantine.iter().map(|(t, n)| (t.clone(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
        }));
    }
    println!(
        "lake {}  (checked {})",
        lake.display(),
        now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    for s in &steps {
        println!(
            "step {:<7} last run {}  {:<11} {:>7.2}s  last success {}",
            s.step,
            s.last_run,
            s.outcome,
            s.duration_seconds,
            s.last_success.as_deref().unwrap_or("never")
        );
    }
    println!(
        "\n{:<34} {:>9}  {:<28} {:<26} {:>10}  failing rules",
        "table", "rows", "last update", "newest event", "age (h)"
    );
    for t in &tables {
        println!(
            "{:<34} {:>9}  {:<28} {:<26} {:>10}  {}",
            t.table,
            t.rows,
            t.last_update.as_deref().unwrap_or("-"),
            t.newest_event.as_deref().unwrap_or("-"),
            t.freshness_hours
                .map(|h| format!("{h:.1}"))
                .unwrap_or_else(|| "-".into()),
            if t.failing_rules.is_empty() {
                "-".to_string()
            } else {
                t.failing_rules.join(", ")
            }
        );
    }
    let dead: Vec<String> = dead_letter
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r[0].as_deref().unwrap_or("?"),
                r[1].as_deref().unwrap_or("0")
            )
        })
        .collect();
    println!(
        "\ndead-lettered lines: {}",
        if dead.is_empty() {
            "none".into()
        } else {
            dead.join(", ")
        }
    );
    let quarantined: Vec<String> = quarantine.iter().map(|(t, n)| format!("{t} {n}")).collect();
    println!(
        "quarantined rows:    {}",
        if quarantined.is_empty() {
            "none".into()
        } else {
            quarantined.join(", ")
        }
    );
    Ok(())
}

#[derive(Debug, Serialize)]
struct Drift {
    file: String,
    known_at: Option<String>,
    ingested_at: Option<String>,
    outcome: Option<String>,
    added_columns: Vec<String>,
    missing_columns: Vec<String>,
    change: &'static str,
}

#[derive(Debug, Serialize)]
struct SourceSchema {
    source: String,
    contract_version: String,
    contract_fingerprint: String,
    required_columns: Vec<String>,
    optional_columns: Vec<String>,
    drifts: Vec<Drift>,
}

/// Adding a column is minor; losing a required column (removed or renamed) is major; losing
/// an optional one is minor.
fn classify(required: &[String], added: &[String], missing: &[String]) -> &'static str {
    if missing.iter().any(|m| required.contains(m)) {
        "major"
    } else if added.is_empty() && missing.is_empty() {
        "none"
    } else {
        "minor"
    }
}

fn split_list(value: Option<String>) -> Vec<String> {
    value
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

pub async fn schema(lake: &Lake, json: bool) -> Result<(), Failure> {
    let ctx = paylake_jobs::lake_session(lake)
        .await
        .map_err(job_failure)?;
    let log = text_rows(
        &ctx,
        "SELECT source, source_file, CAST(known_at AS VARCHAR) AS known, \
         CAST(ingested_at AS VARCHAR) AS ingested, outcome, added_columns, missing_columns \
         FROM bronze._file_log WHERE schema_change ORDER BY known, source_file",
    )
    .await?;
    let mut sources = Vec::new();
    for contract in paylake_contracts::all_contracts()? {
        let required: Vec<String> = contract
            .columns
            .iter()
            .filter(|c| c.required)
            .map(|c| c.name.clone())
            .collect();
        let optional: Vec<String> = contract
            .columns
            .iter()
            .filter(|c| !c.required)
            .map(|c| c.name.clone())
            .collect();
        let drifts = log
            .iter()
            .filter(|r| r[0].as_deref() == Some(contract.source.as_str()))
            .map(|r| {
                let added = split_list(r[5].clone());
                let missing = split_list(r[6].clone());
                Drift {
                    file: r[1].clone().unwrap_or_default(),
                    known_at: r[2].clone(),
                    ingested_at: r[3].clone(),
                    outcome: r[4].clone(),
                    change: classify(&required, &added, &missing),
                    added_columns: added,
                    missing_columns: missing,
                }
            })
            .collect();
        sources.push(SourceSchema {
            source: contract.source.clone(),
            contract_version: contract.version.clone(),
            contract_fingerprint: contract.fingerprint(),
            required_columns: required,
            optional_columns: optional,
            drifts,
        });
    }
    if json {
        return print_json(&sources);
    }
    for s in &sources {
        println!(
            "{}  contract v{}  required: {}  optional: {}",
            s.source,
            s.contract_version,
            s.required_columns.join(", "),
            if s.optional_columns.is_empty() {
                "-".into()
            } else {
                s.optional_columns.join(", ")
            }
        );
        if s.drifts.is_empty() {
            println!("  no drift seen");
        }
        for d in &s.drifts {
            println!(
                "  {:<5} {}  known {}  added [{}]  missing [{}]  {}",
                d.change,
                d.file,
                d.known_at.as_deref().unwrap_or("?"),
                d.added_columns.join(", "),
                d.missing_columns.join(", "),
                d.outcome.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_classification() {
        let required = vec!["account_id".to_string(), "risk_flag".to_string()];
        let none: Vec<String> = vec![];
        assert_eq!(classify(&required, &["bank".into()], &none), "minor");
        assert_eq!(classify(&required, &none, &["risk_flag".into()]), "major");
        assert_eq!(
            classify(&required, &["flag".into()], &["risk_flag".into()]),
            "major"
        );
        assert_eq!(classify(&required, &none, &none), "none");
    }
}
