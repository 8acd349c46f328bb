//! A logical optimizer rule: a cross join with a single row of constants (`params.run`) becomes
//! a projection that adds those constants as literals.
//!
//! Models read the run's parameters by joining `params.run`. DataFusion 55 plans that join
//! as a nested-loop join that evaluates its filter (`known_at <= params.as_of`) over every
//! row of the other side and copies the rows it keeps: at 10M payments, 1.1 s of
//! `gold.payment_training` and 0.8 s of its checks. Once the constants are literals, the
//! filter is an ordinary predicate that the engine pushes into the scan.

use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, DFSchemaRef, Result, ScalarValue};
use datafusion::logical_expr::logical_plan::{Filter, Join, JoinType, Projection};
use datafusion::logical_expr::{lit, Expr, LogicalPlan};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct InlineConstantRow;

impl OptimizerRule for InlineConstantRow {
    fn name(&self) -> &str {
        "inline_constant_row"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(join) = plan else {
            return Ok(Transformed::no(plan));
        };
        if join.join_type != JoinType::Inner || !join.on.is_empty() {
            return Ok(Transformed::no(LogicalPlan::Join(join)));
        }
        let (constants, other, constants_first) =
            match (constant_row(&join.left), constant_row(&join.right)) {
                (Some(values), _) => (values, Arc::clone(&join.right), true),
                (None, Some(values)) => (values, Arc::clone(&join.left), false),
                (None, None) => return Ok(Transformed::no(LogicalPlan::Join(join))),
            };
        let Join { filter, schema, .. } = join;
        let projected = Projection::try_new(
            output_exprs(
                &schema,
                constants,
                other.schema().fields().len(),
                constants_first,
            ),
            other,
        )?;
        let mut rewritten = LogicalPlan::Projection(projected);
        if let Some(predicate) = filter {
            rewritten = LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(rewritten))?);
        }
        Ok(Transformed::yes(rewritten))
    }
}

/// The join's output columns in its order: the constants as literals under their qualified
/// names, the other side's columns as they are.
fn output_exprs(
    schema: &DFSchemaRef,
    constants: Vec<ScalarValue>,
    other_width: usize,
    constants_first: bool,
) -> Vec<Expr> {
    let constant_count = constants.len();
    let mut constants = constants.into_iter();
    schema
        .iter()
        .enumerate()
        .map(|(index, (qualifier, field))| {
            let is_constant = if constants_first {
                index < constant_count
            } else {
                index >= other_width
            };
            match is_constant.then(|| constants.next()).flatten() {
                Some(value) => lit(value).alias_qualified(qualifier.cloned(), field.name()),
                None => Expr::Column(Column::new(qualifier.cloned(), field.name())),
            }
        })
        .collect()
}

/// The values of `plan` if it is exactly one row of constants: literals projected over a
/// one-row empty relation (how `params.run` is registered) or a one-row VALUES, under any
/// aliases and projections of those columns.
fn constant_row(plan: &LogicalPlan) -> Option<Vec<ScalarValue>> {
    match plan {
        LogicalPlan::EmptyRelation(empty) if empty.produce_one_row => {
            empty.schema.fields().is_empty().then(Vec::new)
        }
        LogicalPlan::Values(values) if values.values.len() == 1 => {
            values.values[0].iter().map(literal_value).collect()
        }
        LogicalPlan::SubqueryAlias(alias) => constant_row(&alias.input),
        LogicalPlan::Projection(projection) => {
            let input = constant_row(&projection.input)?;
            projection
                .expr
                .iter()
                .map(|expr| match expr.clone().unalias_nested().data {
                    Expr::Column(column) => {
                        let index = projection.input.schema().index_of_column(&column).ok()?;
                        input.get(index).cloned()
                    }
                    other => literal_value(&other),
                })
                .collect()
        }
        _ => None,
    }
}

fn literal_value(expr: &Expr) -> Option<ScalarValue> {
    match expr {
        Expr::Literal(value, _) => Some(value.clone()),
        Expr::Alias(alias) => literal_value(&alias.expr),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::{MemTable, ViewTable};
    use datafusion::execution::SessionStateBuilder;
    use datafusion::logical_expr::LogicalPlanBuilder;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::SessionContext;

    /// A session with `t(id, at)` (ids 0..10, `at` = id) and `run`, one row of constants
    /// registered as the runner registers `params.run`.
    fn session(inline: bool) -> SessionContext {
        let mut builder = SessionStateBuilder::new().with_default_features();
        if inline {
            builder = builder.with_optimizer_rule(Arc::new(InlineConstantRow));
        }
        let ctx = SessionContext::new_with_state(builder.build());
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("at", DataType::Int64, false),
        ]));
        let ids: Vec<i64> = (0..10).collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(ids.clone())),
                Arc::new(Int64Array::from(ids)),
            ],
        )
        .expect("batch");
        let table = MemTable::try_new(schema, vec![vec![batch]]).expect("table");
        ctx.register_table("t", Arc::new(table)).expect("registers");
        let row = LogicalPlanBuilder::empty(true)
            .project(vec![lit(6_i64).alias("as_of"), lit("r-1").alias("run_id")])
            .and_then(|builder| builder.build())
            .expect("plans");
        ctx.register_table("run", Arc::new(ViewTable::new(row, None)))
            .expect("registers");
        ctx
    }

    /// The rows of `sql` (sorted by its first column) and its physical plan.
    async fn run(ctx: &SessionContext, sql: &str) -> (String, String) {
        let frame = ctx.sql(sql).await.expect("plans");
        let plan = frame.clone().create_physical_plan().await.expect("plans");
        let shown = displayable(plan.as_ref()).indent(false).to_string();
        let rows = frame.collect().await.expect("runs");
        let text = pretty_format_batches(&rows).expect("prints").to_string();
        (text, shown)
    }

    #[tokio::test]
    async fn a_join_with_the_constant_row_becomes_a_filter_on_literals() {
        for sql in [
            "SELECT t.id, r.as_of, r.run_id FROM run AS r CROSS JOIN t WHERE t.at <= r.as_of \
             ORDER BY t.id",
            "SELECT t.id, r.as_of, r.run_id FROM t CROSS JOIN run AS r WHERE t.at <= r.as_of \
             ORDER BY t.id",
            "WITH params AS (SELECT as_of, run_id FROM run) \
             SELECT t.id, params.as_of, params.run_id FROM params CROSS JOIN t \
             WHERE t.at <= params.as_of ORDER BY t.id",
        ] {
            let (expected, joined) = run(&session(false), sql).await;
            let (inlined, plan) = run(&session(true), sql).await;
            assert!(joined.contains("NestedLoopJoinExec"), "{joined}");
            assert!(
                !plan.contains("NestedLoopJoinExec") && !plan.contains("CrossJoinExec"),
                "{sql}\n{plan}"
            );
            assert_eq!(inlined, expected, "{sql}");
            assert_eq!(inlined.lines().count(), 7 + 4, "{inlined}");
        }
    }

    #[tokio::test]
    async fn a_join_with_several_rows_is_left_alone() {
        let sql = "SELECT t.id, v.k FROM (VALUES (1), (2)) AS v(k) CROSS JOIN t \
                   WHERE t.at < v.k ORDER BY t.id, v.k";
        let (expected, _) = run(&session(false), sql).await;
        let (rows, plan) = run(&session(true), sql).await;
        assert!(plan.contains("JoinExec"), "{plan}");
        assert_eq!(rows, expected);
        assert_eq!(rows.lines().count(), 3 + 4, "{rows}");
    }
}
