//! Results of each evaluation, appended to `quality.results` in the lake, and the gate verdict.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, ListBuilder, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use paylake_lake::layout::{self, Layer};
use paylake_lake::{delta, Lake};
use serde::{Deserialize, Serialize};

use crate::{QualityError, RuleResult};

pub fn results_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new(
            "evaluated_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("evaluated", DataType::Int64, false),
        Field::new("failed", DataType::Int64, false),
        Field::new("failed_percent", DataType::Float64, false),
        Field::new("passed", DataType::Boolean, false),
        Field::new(
            "sample_failing_keys",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        ),
        Field::new("detail", DataType::Utf8, true),
    ]))
}

/// Appends the results of a run to `quality.results` in one commit (never replaces earlier runs).
pub async fn append_results(
    lake: &Lake,
    run_id: &str,
    at: DateTime<Utc>,
    results: &[RuleResult],
) -> Result<(), QualityError> {
    if results.is_empty() {
        return Ok(());
    }
    let n = results.len();
    let mut samples = ListBuilder::new(StringBuilder::new());
    for r in results {
        for key in &r.samples {
            samples.values().append_value(key);
        }
        samples.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![run_id; n])),
        Arc::new(
            TimestampMicrosecondArray::from(vec![at.timestamp_micros(); n]).with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(
            results.iter().map(|r| r.table.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            results.iter().map(|r| r.rule.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            results.iter().map(|r| r.kind.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            results.iter().map(|r| r.severity.name()),
        )),
        Arc::new(Int64Array::from_iter_values(
            results.iter().map(|r| r.evaluated as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            results.iter().map(|r| r.failed as i64),
        )),
        Arc::new(Float64Array::from_iter_values(
            results.iter().map(|r| r.failed_percent),
        )),
        Arc::new(BooleanArray::from(
            results.iter().map(|r| r.passed).collect::<Vec<_>>(),
        )),
        Arc::new(samples.finish()),
        Arc::new(StringArray::from(
            results
                .iter()
                .map(|r| r.detail.as_deref())
                .collect::<Vec<_>>(),
        )),
    ];
    let batch = RecordBatch::try_new(results_schema(), columns)?;
    let mut facts = delta::CommitFacts::new();
    facts.insert(delta::INFO_RUN_ID.into(), run_id.into());
    delta::append_batches(
        lake,
        &layout::quality_results_table(),
        &results_schema(),
        &[batch],
        &facts,
    )
    .await?;
    Ok(())
}

/// What the last run of a layer decided: whether the next layer may build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GateVerdict {
    pub layer: String,
    pub run_id: String,
    pub evaluated_at: String,
    pub passed: bool,
    /// `table.rule` of every error-severity rule that failed.
    pub blocking_rules: Vec<String>,
    pub warnings: Vec<String>,
    /// The table versions this verdict audited (`silver.payments` → Delta version): what the
    /// next layer reads.
    #[serde(default)]
    pub versions: std::collections::BTreeMap<String, u64>,
}

pub async fn write_gate(
    lake: &Lake,
    layer: Layer,
    verdict: &GateVerdict,
) -> Result<(), QualityError> {
    let bytes =
        serde_json::to_vec_pretty(verdict).map_err(|e| QualityError::Internal(e.to_string()))?;
    lake.put_bytes(&layout::quality_gate(layer), bytes).await?;
    Ok(())
}

pub async fn read_gate(lake: &Lake, layer: Layer) -> Result<Option<GateVerdict>, QualityError> {
    let path = layout::quality_gate(layer);
    match lake.get_bytes(&path).await? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| QualityError::Internal(format!("{path} is corrupt: {e}"))),
    }
}

/// The compact report printed on stderr after an evaluation.
pub fn render_text(results: &[RuleResult]) -> String {
    let mut out = String::from(
        "table                 rule                           severity  evaluated   failed  failed%  result\n",
    );
    for r in results {
        let verdict = match (r.passed, r.severity) {
            (true, _) => "pass",
            (false, crate::Severity::Warn) => "WARN",
            (false, crate::Severity::Error) => "FAIL",
        };
        out.push_str(&format!(
            "{:<21} {:<30} {:<8} {:>10} {:>8} {:>7.2}  {}{}\n",
            r.table,
            r.rule,
            r.severity.name(),
            r.evaluated,
            r.failed,
            r.failed_percent,
            verdict,
            if r.passed || r.samples.is_empty() {
                String::new()
            } else {
                format!(
                    "  e.g. {}",
                    r.samples
                        .iter()
                        .take(3)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ));
    }
    out
}
