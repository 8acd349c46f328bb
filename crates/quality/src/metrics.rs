//! Monitoring: what each step's last run did, kept in the lake, rendered as Prometheus text for
//! the node_exporter textfile collector. Labels are low-cardinality: step, table, rule.

use serde::{Deserialize, Serialize};

use paylake_lake::{layout, Lake};

use crate::QualityError;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TableMetrics {
    pub table: String,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_quarantined: u64,
    pub rows_dead_lettered: u64,
    pub files_processed: u64,
    pub files_skipped: u64,
    /// Newest event time in the table, Unix seconds.
    pub newest_event_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RuleMetric {
    pub table: String,
    pub rule: String,
    pub failed: u64,
    pub passed: bool,
}

/// The last run of one step (bronze, silver or gold).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StepState {
    pub step: String,
    pub last_run_seconds: f64,
    pub last_success_seconds: Option<f64>,
    pub last_run_success: bool,
    /// Free text of the last outcome: ok, failed, gate_failed.
    pub outcome: String,
    pub duration_seconds: f64,
    pub tables: Vec<TableMetrics>,
    pub rules: Vec<RuleMetric>,
}

pub const STEPS: [&str; 3] = ["bronze", "silver", "gold"];

pub async fn read_step(lake: &Lake, step: &str) -> Result<Option<StepState>, QualityError> {
    let path = layout::monitoring_state(step);
    match lake.get_bytes(&path).await? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| QualityError::Internal(format!("{path} is corrupt: {e}"))),
    }
}

/// Records a run; a failed run keeps the previous success time.
pub async fn record_step(lake: &Lake, mut state: StepState) -> Result<StepState, QualityError> {
    if !state.last_run_success {
        let previous = read_step(lake, &state.step).await?;
        state.last_success_seconds = previous.and_then(|p| p.last_success_seconds);
    } else {
        state.last_success_seconds = Some(state.last_run_seconds);
    }
    let bytes =
        serde_json::to_vec_pretty(&state).map_err(|e| QualityError::Internal(e.to_string()))?;
    lake.put_bytes(&layout::monitoring_state(&state.step), bytes)
        .await?;
    Ok(state)
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

/// Renders every step's last run as Prometheus text (no sample timestamps).
pub fn render(states: &[StepState]) -> String {
    let mut families = vec![
        Family {
            name: "paylake_last_run_timestamp_seconds",
            help: "Unix time the step last ran.",
            samples: vec![],
        },
        Family {
            name: "paylake_last_success_timestamp_seconds",
            help: "Unix time the step last succeeded.",
            samples: vec![],
        },
        Family {
            name: "paylake_last_run_success",
            help: "1 if the step's last run succeeded, else 0.",
            samples: vec![],
        },
        Family {
            name: "paylake_run_duration_seconds",
            help: "Wall time of the step's last run.",
            samples: vec![],
        },
        Family {
            name: "paylake_rows_read",
            help: "Rows read by the step's last run, per table.",
            samples: vec![],
        },
        Family {
            name: "paylake_rows_written",
            help: "Rows written by the step's last run, per table.",
            samples: vec![],
        },
        Family {
            name: "paylake_rows_quarantined",
            help: "Rows quarantined by the step's last run, per table.",
            samples: vec![],
        },
        Family {
            name: "paylake_rows_dead_lettered",
            help: "Lines dead-lettered by the step's last run, per source.",
            samples: vec![],
        },
        Family {
            name: "paylake_files_processed",
            help: "Landing files processed by the step's last run, per source.",
            samples: vec![],
        },
        Family {
            name: "paylake_files_skipped",
            help: "Landing files skipped as already landed, per source.",
            samples: vec![],
        },
        Family {
            name: "paylake_data_newest_event_timestamp_seconds",
            help: "Newest event time in the table (data freshness).",
            samples: vec![],
        },
        Family {
            name: "paylake_rule_failed_rows",
            help: "Rows failing a data-quality rule in the last evaluation.",
            samples: vec![],
        },
        Family {
            name: "paylake_rule_passed",
            help: "1 if the data-quality rule passed its threshold in the last evaluation.",
            samples: vec![],
        },
    ];
    let mut push = |family: &str, labels: String, value: f64| {
        if let Some(f) = families.iter_mut().find(|f| f.name == family) {
            f.samples.push((labels, value));
        }
    };
    for state in states {
        let step = format!("step=\"{}\"", escape(&state.step));
        push(
            "paylake_last_run_timestamp_seconds",
            step.clone(),
            state.last_run_seconds,
        );
        if let Some(success) = state.last_success_seconds {
            push(
                "paylake_last_success_timestamp_seconds",
                step.clone(),
                success,
            );
        }
        push(
            "paylake_last_run_success",
            step.clone(),
            f64::from(u8::from(state.last_run_success)),
        );
        push(
            "paylake_run_duration_seconds",
            step.clone(),
            state.duration_seconds,
        );
        for t in &state.tables {
            let labels = format!("{step},table=\"{}\"", escape(&t.table));
            push("paylake_rows_read", labels.clone(), t.rows_read as f64);
            push(
                "paylake_rows_written",
                labels.clone(),
                t.rows_written as f64,
            );
            push(
                "paylake_rows_quarantined",
                labels.clone(),
                t.rows_quarantined as f64,
            );
            push(
                "paylake_rows_dead_lettered",
                labels.clone(),
                t.rows_dead_lettered as f64,
            );
            if state.step == "bronze" {
                push(
                    "paylake_files_processed",
                    labels.clone(),
                    t.files_processed as f64,
                );
                push(
                    "paylake_files_skipped",
                    labels.clone(),
                    t.files_skipped as f64,
                );
            }
            if let Some(newest) = t.newest_event_seconds {
                push(
                    "paylake_data_newest_event_timestamp_seconds",
                    format!("table=\"{}\"", escape(&t.table)),
                    newest,
                );
            }
        }
        for r in &state.rules {
            let labels = format!(
                "table=\"{}\",rule=\"{}\"",
                escape(&r.table),
                escape(&r.rule)
            );
            push("paylake_rule_failed_rows", labels.clone(), r.failed as f64);
            push("paylake_rule_passed", labels, f64::from(u8::from(r.passed)));
        }
    }
    let mut out = String::new();
    for family in families.iter().filter(|f| !f.samples.is_empty()) {
        out.push_str(&format!(
            "# HELP {} {}\n# TYPE {} gauge\n",
            family.name, family.help, family.name
        ));
        for (labels, value) in &family.samples {
            out.push_str(&format!("{}{{{labels}}} {value}\n", family.name));
        }
    }
    out
}

/// Writes the metrics of every step to `path` atomically (temporary file, then rename), as the
/// textfile collector requires.
pub async fn write_metrics_file(lake: &Lake, path: &std::path::Path) -> Result<(), QualityError> {
    let mut states = Vec::new();
    for step in STEPS {
        if let Some(state) = read_step(lake, step).await? {
            states.push(state);
        }
    }
    let text = render(&states);
    let staging = path.with_extension(format!("prom.{}.tmp", std::process::id()));
    let io = |e| QualityError::Io {
        path: path.display().to_string(),
        source: e,
    };
    std::fs::write(&staging, text).map_err(io)?;
    std::fs::rename(&staging, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_help_type_and_labels_without_timestamps() {
        let state = StepState {
            step: "silver".into(),
            last_run_seconds: 100.0,
            last_success_seconds: Some(90.0),
            last_run_success: false,
            outcome: "gate_failed".into(),
            duration_seconds: 1.5,
            tables: vec![TableMetrics {
                table: "silver.payments".into(),
                rows_quarantined: 3,
                newest_event_seconds: Some(50.0),
                ..Default::default()
            }],
            rules: vec![RuleMetric {
                table: "silver.payments".into(),
                rule: "amount_positive".into(),
                failed: 2,
                passed: false,
            }],
        };
        let text = render(&[state]);
        assert!(text.contains("# TYPE paylake_last_run_success gauge\n"));
        assert!(text.contains("paylake_last_run_success{step=\"silver\"} 0\n"));
        assert!(text
            .contains("paylake_rows_quarantined{step=\"silver\",table=\"silver.payments\"} 3\n"));
        assert!(text.contains(
            "paylake_rule_passed{table=\"silver.payments\",rule=\"amount_positive\"} 0\n"
        ));
        assert!(
            !text.contains("paylake_files_processed"),
            "bronze-only families are absent"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.split(' ').count(), 2, "no timestamp: {line}");
        }
    }
}
