//! A scheduler-side rewrite of the leaves that make no data.
//!
//! Ballista 55 gives each task its own copy of a stage's plan, restricted to the task's
//! partitions. Under a union it turns an `EmptyExec` (or `PlaceholderRowExec`) that a task does
//! not read into a memory scan, which reports metrics, and keeps the one it does read, which
//! reports none. Two tasks of one stage then report metric lists of different lengths, the
//! scheduler refuses the second task's status, and the job never finishes. An incremental run
//! meets this whenever a table's kept part or its changed keys are empty. Memory scans report
//! metrics whatever their partitions, so they are used for these leaves from the start.

use std::sync::Arc;

use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::Result;
use datafusion::config::ConfigOptions;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::placeholder_row::PlaceholderRowExec;
use datafusion::physical_plan::ExecutionPlan;

/// Replaces `EmptyExec` and column-less `PlaceholderRowExec` by memory scans with the same
/// schema, partitions and rows (none, or one row per partition).
#[derive(Debug, Default)]
pub struct DataFreeLeavesAsMemoryScans;

impl PhysicalOptimizerRule for DataFreeLeavesAsMemoryScans {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let schema = node.schema();
            let partitions = node.properties().output_partitioning().partition_count();
            let batches = if node.is::<EmptyExec>() {
                vec![]
            } else if node.is::<PlaceholderRowExec>() && schema.fields().is_empty() {
                // A placeholder with columns fills them with nulls of its own making, whatever
                // its schema says; only the column-less one (under `SELECT 1`) is rewritten.
                let one_row = RecordBatchOptions::new().with_row_count(Some(1));
                vec![RecordBatch::try_new_with_options(
                    Arc::clone(&schema),
                    vec![],
                    &one_row,
                )?]
            } else {
                return Ok(Transformed::no(node));
            };
            let source = MemorySourceConfig::try_new(&vec![batches; partitions], schema, None)?;
            Ok(Transformed::yes(
                DataSourceExec::from_data_source(source) as Arc<dyn ExecutionPlan>
            ))
        })
        .map(|rewritten| rewritten.data)
    }

    fn name(&self) -> &str {
        "paylake_data_free_leaves_as_memory_scans"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_plan::collect;
    use datafusion::physical_plan::union::UnionExec;
    use datafusion::prelude::SessionContext;

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true)]))
    }

    fn no_columns() -> Arc<Schema> {
        Arc::new(Schema::empty())
    }

    #[tokio::test]
    async fn empty_and_one_row_leaves_become_memory_scans_with_the_same_rows() {
        let rule = DataFreeLeavesAsMemoryScans;
        let config = ConfigOptions::default();
        let empty = UnionExec::try_new(vec![
            Arc::new(EmptyExec::new(schema()).with_partitions(2)) as Arc<dyn ExecutionPlan>,
            Arc::new(EmptyExec::new(schema())),
        ])
        .expect("a union of equal schemas");
        let rewritten = rule.optimize(empty, &config).expect("the rule applies");
        let children = rewritten.children();
        assert_eq!(children.len(), 2);
        for child in &children {
            assert!(child.is::<DataSourceExec>(), "{}", child.name());
            assert!(child.metrics().is_some(), "a memory scan reports metrics");
        }
        assert_eq!(
            children[0]
                .properties()
                .output_partitioning()
                .partition_count(),
            2
        );
        assert_eq!(rewritten.schema(), schema());
        let task = SessionContext::new().task_ctx();
        let rows =
            |batches: Vec<RecordBatch>| batches.iter().map(RecordBatch::num_rows).sum::<usize>();
        assert_eq!(
            rows(collect(rewritten, Arc::clone(&task)).await.expect("runs")),
            0
        );

        let one_row = Arc::new(PlaceholderRowExec::new(no_columns())) as Arc<dyn ExecutionPlan>;
        let rewritten = rule.optimize(one_row, &config).expect("the rule applies");
        assert!(rewritten.is::<DataSourceExec>(), "{}", rewritten.name());
        assert_eq!(
            rows(collect(rewritten, Arc::clone(&task)).await.expect("runs")),
            1
        );

        // A placeholder with columns makes nulls its schema may not allow: left as it is.
        let with_columns = Arc::new(PlaceholderRowExec::new(schema())) as Arc<dyn ExecutionPlan>;
        let kept = rule
            .optimize(with_columns, &config)
            .expect("the rule applies");
        assert!(kept.is::<PlaceholderRowExec>(), "{}", kept.name());
    }
}
