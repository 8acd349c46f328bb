//! The data-quality report: a static HTML page per run, and the latest at a fixed path, with each
//! table's rules, pass rates, failing samples and the trend over the last runs.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, Float64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;
use paylake_lake::{layout, Lake};

use crate::{QualityError, RuleResult};

/// How many earlier runs the trend shows.
pub const TREND_RUNS: usize = 10;

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Failed percent per (table, rule) for the last runs, oldest first.
async fn trend(lake: &Lake) -> Result<BTreeMap<(String, String), Vec<f64>>, QualityError> {
    let ctx = SessionContext::new();
    lake.register_with(&ctx)?;
    let Some(provider) =
        paylake_lake::delta::provider(lake, &layout::quality_results_table(), None).await?
    else {
        return Ok(BTreeMap::new());
    };
    ctx.register_table("results", provider)
        .map_err(|e| QualityError::query("registering results", e))?;
    let sql = format!(
        "SELECT table_name, rule, failed_percent FROM results WHERE run_id IN \
         (SELECT run_id FROM results GROUP BY run_id ORDER BY max(evaluated_at) DESC LIMIT {TREND_RUNS}) \
         ORDER BY evaluated_at, run_id"
    );
    let batches = ctx
        .sql(&sql)
        .await
        .map_err(|e| QualityError::query("reading the results history", e))?
        .collect()
        .await
        .map_err(|e| QualityError::query("reading the results history", e))?;
    let mut trend: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for batch in batches {
        let tables = cast(batch.column(0), &DataType::Utf8)?;
        let rules = cast(batch.column(1), &DataType::Utf8)?;
        let failed = cast(batch.column(2), &DataType::Float64)?;
        let (Some(tables), Some(rules), Some(failed)) = (
            tables.as_any().downcast_ref::<StringArray>(),
            rules.as_any().downcast_ref::<StringArray>(),
            failed.as_any().downcast_ref::<Float64Array>(),
        ) else {
            continue;
        };
        for i in 0..batch.num_rows() {
            trend
                .entry((tables.value(i).to_string(), rules.value(i).to_string()))
                .or_default()
                .push(if failed.is_null(i) {
                    0.0
                } else {
                    failed.value(i)
                });
        }
    }
    Ok(trend)
}

/// A small inline bar chart of failed percentages, oldest to newest.
fn sparkline(values: &[f64]) -> String {
    let bars: String = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let height = (v.clamp(0.0, 100.0) / 100.0 * 18.0).max(1.0);
            let colour = if *v > 0.0 { "#c0392b" } else { "#27ae60" };
            format!(
                "<rect x=\"{}\" y=\"{:.1}\" width=\"6\" height=\"{height:.1}\" fill=\"{colour}\"><title>{v:.2}% failed</title></rect>",
                i * 8,
                20.0 - height
            )
        })
        .collect();
    format!(
        "<svg width=\"{}\" height=\"20\" role=\"img\" aria-label=\"failed percent over the last runs\">{bars}</svg>",
        values.len().max(1) * 8
    )
}

pub fn render_html(
    run_id: &str,
    results: &[RuleResult],
    trend: &BTreeMap<(String, String), Vec<f64>>,
) -> String {
    let mut tables: BTreeMap<&str, Vec<&RuleResult>> = BTreeMap::new();
    for r in results {
        tables.entry(r.table.as_str()).or_default().push(r);
    }
    let failing = results.iter().filter(|r| !r.passed).count();
    let blocking = results.iter().filter(|r| r.blocks()).count();
    let mut body = format!(
        "<h1>paylake data quality</h1><p class=\"summary\">run <code>{}</code>: {} rules, \
         {} failing, {} blocking</p>",
        html_escape(run_id),
        results.len(),
        failing,
        blocking
    );
    for (table, rules) in tables {
        let passed = rules.iter().filter(|r| r.passed).count();
        body.push_str(&format!(
            "<h2>{}</h2><p>{passed} of {} rules pass</p><table><thead><tr><th>rule</th><th>kind</th>\
             <th>severity</th><th>evaluated</th><th>failed</th><th>pass rate</th><th>result</th>\
             <th>trend (last {TREND_RUNS} runs)</th><th>failing samples</th></tr></thead><tbody>",
            html_escape(table),
            rules.len()
        ));
        for r in rules {
            let (class, verdict) = match (r.passed, r.severity) {
                (true, _) => ("pass", "pass"),
                (false, crate::Severity::Warn) => ("warn", "warn"),
                (false, crate::Severity::Error) => ("fail", "FAIL"),
            };
            let history = trend
                .get(&(r.table.clone(), r.rule.clone()))
                .map(|v| sparkline(v))
                .unwrap_or_default();
            let mut samples = r
                .samples
                .iter()
                .map(|s| html_escape(s))
                .collect::<Vec<_>>()
                .join(", ");
            if let Some(detail) = &r.detail {
                samples = format!("{} {samples}", html_escape(detail));
            }
            body.push_str(&format!(
                "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{:.2}%</td><td>{verdict}</td><td>{history}</td><td>{samples}</td></tr>",
                html_escape(&r.rule),
                html_escape(&r.kind),
                r.severity.name(),
                r.evaluated,
                r.failed,
                100.0 - r.failed_percent,
            ));
        }
        body.push_str("</tbody></table>");
    }
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>paylake data quality {}</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse;margin-bottom:2em}}th,td{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}}\
         th{{background:#f4f4f4}}tr.fail td{{background:#fdecea}}tr.warn td{{background:#fff8e1}}\
         .summary{{font-size:1.1em}}code{{background:#f4f4f4;padding:1px 4px}}</style></head><body>{body}</body></html>\n",
        html_escape(run_id)
    )
}

/// Writes the run's report and replaces the latest one; returns the latest report's path.
pub async fn write_report(
    lake: &Lake,
    run_id: &str,
    results: &[RuleResult],
) -> Result<String, QualityError> {
    let history = trend(lake).await?;
    let html = render_html(run_id, results, &history).into_bytes();
    lake.put_bytes(&layout::quality_report(run_id), html.clone())
        .await?;
    let latest = layout::quality_report_latest();
    lake.put_bytes(&latest, html).await?;
    Ok(format!("{}/{}", lake.display(), latest))
}
