//! The client side: a session whose queries run on the cluster, and the check every model's
//! plan passes before it is sent.

use std::time::Duration;

use ballista::prelude::SessionContextExt;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::BallistaLogicalExtensionCodec;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::expr::NullTreatment;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::prelude::SessionContext;

use crate::{ClusterError, QueryEngine};

/// A session on `engine` with `state` (the run's settings, catalog and object stores): as it is
/// for the local engine; on a cluster, one whose queries the scheduler plans into stages its
/// executors run. Fails fast, naming the scheduler, when nothing answers at its address.
pub async fn session_on(
    engine: &QueryEngine,
    state: SessionState,
) -> Result<SessionContext, ClusterError> {
    let QueryEngine::Ballista { host, port } = engine else {
        return Ok(SessionContext::new_with_state(state));
    };
    let unreachable = |reason: String| ClusterError::Unreachable {
        url: engine.to_string(),
        reason,
    };
    let address = format!("{host}:{port}");
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(&address),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => return Err(unreachable("no answer within 10 s".into())),
    }
    let url = engine
        .scheduler_url()
        .ok_or_else(|| unreachable("not a cluster engine".into()))?;
    // Ballista 55's adaptive planner re-plans a union over an empty input into new stages
    // forever (an incremental run's Bronze narrowed to no keys); the static planner runs it.
    let config = state
        .config()
        .clone()
        .upgrade_for_ballista()
        .with_ballista_adaptive_query_planner(false);
    let state = SessionStateBuilder::new_from_existing(state)
        .with_config(config)
        .build();
    SessionContext::remote_with_state(&url, state)
        .await
        .map_err(|e| unreachable(e.to_string()))
}

/// Refuses a plan the cluster would not run as the local engine does:
/// - a window function with `IGNORE NULLS`: Ballista 55's physical plan codec drops the
///   option for window functions such as `last_value`, so the rows would differ;
/// - anything DataFusion's plan codec cannot carry (in-memory tables, custom table providers
///   such as Delta's, unknown extension nodes).
pub fn check_plan(model: &str, plan: &LogicalPlan) -> Result<(), ClusterError> {
    let unsupported = |reason: String| ClusterError::Unsupported {
        model: model.to_string(),
        reason,
    };
    let mut ignores_nulls = None;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::WindowFunction(window) = e {
                    if window.params.null_treatment == Some(NullTreatment::IgnoreNulls) {
                        ignores_nulls = Some(window.fun.to_string());
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })
    .map_err(|e| unsupported(e.to_string()))?;
    if let Some(function) = ignores_nulls {
        return Err(unsupported(format!(
            "it uses {function}(…) IGNORE NULLS OVER (…), which Ballista 55 drops when it sends \
             the plan to executors; a forward fill that works on both engines is \
             count(x) OVER (PARTITION BY k ORDER BY t) AS grp, then max(x) OVER (PARTITION BY k, grp)"
        )));
    }
    datafusion_proto::bytes::logical_plan_to_bytes_with_extension_codec(
        plan,
        &BallistaLogicalExtensionCodec::default(),
    )
    .map_err(|e| {
        unsupported(format!(
            "its plan cannot be sent to the scheduler: {}",
            e.find_root()
        ))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Int64Array};
    use datafusion::arrow::record_batch::RecordBatch;

    use super::*;

    async fn plan(ctx: &SessionContext, sql: &str) -> LogicalPlan {
        ctx.sql(sql)
            .await
            .and_then(|frame| frame.into_optimized_plan())
            .expect("plans")
    }

    #[tokio::test]
    async fn refuses_what_the_cluster_would_run_differently_or_cannot_carry() {
        let ctx = SessionContext::new();
        let column = |values: Vec<Option<i64>>| Arc::new(Int64Array::from(values)) as ArrayRef;
        let batch = RecordBatch::try_from_iter([
            ("k", column(vec![Some(1), Some(1)])),
            ("v", column(vec![Some(1), None])),
        ])
        .expect("a batch");
        ctx.register_batch("t", batch).expect("registered");

        let forward_fill = plan(
            &ctx,
            "SELECT last_value(v) IGNORE NULLS OVER (PARTITION BY k ORDER BY v) AS f \
             FROM (SELECT column1 AS k, column2 AS v FROM (VALUES (1, 1), (1, NULL)))",
        )
        .await;
        let refused = check_plan("gold.m", &forward_fill).unwrap_err().to_string();
        assert!(
            refused.starts_with("gold.m cannot run on the Ballista cluster"),
            "{refused}"
        );
        assert!(refused.contains("IGNORE NULLS") && refused.contains("--engine local"));

        let in_memory = plan(&ctx, "SELECT k FROM t").await;
        let refused = check_plan("silver.m", &in_memory).unwrap_err().to_string();
        assert!(
            refused.contains("cannot be sent to the scheduler"),
            "{refused}"
        );

        let respecting_nulls = plan(
            &ctx,
            "SELECT last_value(v) OVER (PARTITION BY k ORDER BY v) AS f \
             FROM (SELECT column1 AS k, column2 AS v FROM (VALUES (1, 1), (1, NULL)))",
        )
        .await;
        check_plan("gold.m", &respecting_nulls).expect("plain windows are sent");
    }
}
