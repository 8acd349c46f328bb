//! Windows evaluated a few partitions at a time.
//!
//! DataFusion 55 runs a window whose functions need a whole partition (`evaluate_all`, as every
//! paylake function does) in `WindowAggExec`, which collects its entire input, outside the
//! memory pool, and emits it as one batch. For `PARTITION BY account` over millions of rows that
//! is the largest allocation of a Gold run (measured: RSS 1.1 GiB at 2M payments while the pool
//! held 350 MiB) and a single huge batch for the next operator.
//!
//! Its input is sorted by the partition keys, so a partition is complete as soon as a row of the
//! next one arrives. [`ChunkedWindowAggExec`] buffers about [`CHUNK_ROWS`] rows, evaluates the
//! complete partitions among them with the results `WindowAggExec` would give, emits them, and
//! keeps only the unfinished last one. A paylake function is called once for all the complete
//! partitions of a chunk (`PartitionedWindow`), any other function once per partition. The buffer is reserved in the memory pool; when
//! the pool has no room for it, the chunk is evaluated early, and only an unfinished partition
//! larger than the room left is an error (resources exhausted, naming this operator).
//! [`ChunkedWindows`] swaps it in for every partitioned `WindowAggExec` of a plan.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::{concat, concat_batches, SortColumn};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::utils::evaluate_partition_ranges;
use datafusion::common::{internal_err, Result};
use datafusion::config::ConfigOptions;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::window::StandardWindowExpr;
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::windows::{WindowAggExec, WindowExpr, WindowUDFExpr};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputDistributionRequirements, PlanProperties,
};
use futures::{Stream, StreamExt};

/// Rows buffered before the complete partitions among them are evaluated and emitted.
pub const CHUNK_ROWS: usize = 64 * 1024;

/// Replaces every `WindowAggExec` that has `PARTITION BY` keys with a [`ChunkedWindowAggExec`]
/// of the same window expressions and input. Runs last, after the plan's sorts are placed.
#[derive(Debug, Default)]
pub struct ChunkedWindows;

impl PhysicalOptimizerRule for ChunkedWindows {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(window) = node.downcast_ref::<WindowAggExec>() else {
                return Ok(Transformed::no(node));
            };
            let keys = window.partition_by_sort_keys()?;
            if keys.is_empty() || keys.len() != window.window_expr()[0].partition_by().len() {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(Arc::new(ChunkedWindowAggExec {
                input: Arc::clone(window.input()),
                window_expr: window.window_expr().to_vec(),
                partition_keys: keys,
                cache: Arc::clone(window.properties()),
                required_distribution: window.input_distribution_requirements(),
                metrics: ExecutionPlanMetricsSet::new(),
            })))
        })
        .map(|transformed| transformed.data)
    }

    fn name(&self) -> &str {
        "chunked_windows"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `WindowAggExec` with bounded memory: see the module documentation.
#[derive(Debug)]
pub struct ChunkedWindowAggExec {
    input: Arc<dyn ExecutionPlan>,
    window_expr: Vec<Arc<dyn WindowExpr>>,
    /// The `PARTITION BY` keys in the order the input is sorted by them.
    partition_keys: Vec<PhysicalSortExpr>,
    cache: Arc<PlanProperties>,
    required_distribution: InputDistributionRequirements,
    metrics: ExecutionPlanMetricsSet,
}

impl DisplayAs for ChunkedWindowAggExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let windows = self
            .window_expr
            .iter()
            .map(|w| w.name().to_string())
            .collect::<Vec<_>>();
        write!(
            f,
            "ChunkedWindowAggExec: chunk_rows={CHUNK_ROWS}, wdw=[{}]",
            windows.join(", ")
        )
    }
}

impl ExecutionPlan for ChunkedWindowAggExec {
    fn name(&self) -> &str {
        "ChunkedWindowAggExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        apply_window_expressions(&self.window_expr, f)
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.required_distribution.clone()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("ChunkedWindowAggExec takes one input");
        }
        Ok(Arc::new(Self {
            input: children.swap_remove(0),
            window_expr: self.window_expr.clone(),
            partition_keys: self.partition_keys.clone(),
            cache: Arc::clone(&self.cache),
            required_distribution: self.required_distribution.clone(),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, Arc::clone(&context))?;
        // Registered as unable to spill: it cannot put an unfinished partition anywhere, so it
        // takes what the pool has free, which is usually more than a spilling consumer's share
        // (paylake's engine holds each of those to a fraction of its limit, so the sorts that
        // feed a window rarely fill the pool). When the pool is full it evaluates its complete
        // partitions early; only an unfinished one that does not fit is an error.
        let reservation = MemoryConsumer::new(format!("ChunkedWindowAggExec[{partition}]"))
            .register(context.memory_pool());
        Ok(Box::pin(ChunkedWindowStream {
            schema: self.schema(),
            input: Some(input),
            window_expr: self.window_expr.clone(),
            partition_keys: self.partition_keys.clone(),
            buffered: Vec::new(),
            ready: VecDeque::new(),
            buffered_rows: 0,
            evaluate_at: CHUNK_ROWS,
            reservation,
            metrics: BaselineMetrics::new(&self.metrics, partition),
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

struct ChunkedWindowStream {
    schema: SchemaRef,
    /// `None` once the input is exhausted.
    input: Option<SendableRecordBatchStream>,
    window_expr: Vec<Arc<dyn WindowExpr>>,
    partition_keys: Vec<PhysicalSortExpr>,
    buffered: Vec<RecordBatch>,
    buffered_rows: usize,
    /// Buffered rows at which to look for complete partitions again: [`CHUNK_ROWS`] more than
    /// were kept last time, so a partition larger than a chunk is not re-scanned per batch.
    evaluate_at: usize,
    /// Evaluated batches not yet emitted.
    ready: VecDeque<RecordBatch>,
    reservation: MemoryReservation,
    metrics: BaselineMetrics,
}

impl ChunkedWindowStream {
    /// Evaluates the buffered rows' complete partitions (all of them once the input is done),
    /// queues them in `ready`, and keeps the last, possibly unfinished, partition buffered.
    ///
    /// Only the columns the windows read are concatenated: each buffered batch goes out as it
    /// came in, with its slice of the window values appended. (Concatenating whole rows copied
    /// every column of the training table's point-in-time passes once more.)
    fn evaluate_buffered(&mut self, input_done: bool) -> Result<()> {
        let _timer = self.metrics.elapsed_compute().timer();
        if self.buffered.is_empty() {
            return Ok(());
        }
        let keys = self
            .partition_keys
            .iter()
            .map(|key| {
                let parts = self
                    .buffered
                    .iter()
                    .map(|batch| Ok(key.evaluate_to_sort_column(batch)?.values))
                    .collect::<Result<Vec<_>>>()?;
                Ok(SortColumn {
                    values: concat_arrays(&parts)?,
                    options: Some(key.options),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut partitions = evaluate_partition_ranges(self.buffered_rows, &keys)?;
        let complete_rows = if input_done {
            self.buffered_rows
        } else {
            // The last partition may go on in the next batch: keep it for later.
            partitions
                .pop()
                .map_or(self.buffered_rows, |last| last.start)
        };
        let (complete, kept) = split_at_row(std::mem::take(&mut self.buffered), complete_rows);
        self.buffered = kept;
        self.buffered_rows -= complete_rows;
        self.evaluate_at = self.buffered_rows + CHUNK_ROWS;
        self.reservation.try_resize(
            self.buffered
                .iter()
                .map(|b| b.get_array_memory_size())
                .sum(),
        )?;
        if complete_rows == 0 {
            return Ok(());
        }
        let mut chunk = ChunkInputs::new(&complete);
        let values = self
            .window_expr
            .iter()
            .map(|window| evaluate_window(window.as_ref(), &mut chunk, &partitions))
            .collect::<Result<Vec<_>>>()?;
        let mut offset = 0;
        for batch in complete {
            let rows = batch.num_rows();
            let mut columns = batch.columns().to_vec();
            columns.extend(values.iter().map(|value| value.slice(offset, rows)));
            offset += rows;
            self.ready
                .push_back(RecordBatch::try_new(Arc::clone(&self.schema), columns)?);
        }
        Ok(())
    }
}

/// Applies `f` to every expression of `windows` (arguments, `PARTITION BY`, `ORDER BY`), for
/// an operator's `ExecutionPlan::apply_expressions`.
pub(crate) fn apply_window_expressions(
    windows: &[Arc<dyn WindowExpr>],
    f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
) -> Result<TreeNodeRecursion> {
    let mut recursion = TreeNodeRecursion::Continue;
    for window in windows {
        let expressions = window.all_expressions();
        for expression in expressions
            .args
            .iter()
            .chain(&expressions.partition_by_exprs)
            .chain(&expressions.order_by_exprs)
        {
            recursion = f(expression)?;
            if recursion == TreeNodeRecursion::Stop {
                return Ok(recursion);
            }
        }
    }
    Ok(recursion)
}

/// `batches` split into those holding the first `rows` rows and those holding the rest (a
/// batch across the boundary is sliced in two).
fn split_at_row(batches: Vec<RecordBatch>, rows: usize) -> (Vec<RecordBatch>, Vec<RecordBatch>) {
    let mut before = Vec::new();
    let mut after = Vec::new();
    let mut offset = 0;
    for batch in batches {
        let len = batch.num_rows();
        if offset + len <= rows {
            before.push(batch);
        } else if offset >= rows {
            after.push(batch);
        } else {
            let split = rows - offset;
            before.push(batch.slice(0, split));
            after.push(batch.slice(split, len - split));
        }
        offset += len;
    }
    (before, after)
}

fn concat_arrays(parts: &[ArrayRef]) -> Result<ArrayRef> {
    match parts {
        [one] => Ok(Arc::clone(one)),
        _ => {
            let parts: Vec<&dyn Array> = parts.iter().map(|part| part.as_ref()).collect();
            Ok(concat(&parts)?)
        }
    }
}

/// One chunk's input batches, and what its functions read of them concatenated once each: a
/// column several paylake functions take (the payment time feeds seven of the source pass's
/// eleven), and the whole rows for functions evaluated the way `WindowAggExec` does.
struct ChunkInputs<'a> {
    batches: &'a [RecordBatch],
    columns: HashMap<usize, ArrayRef>,
    whole_rows: Option<RecordBatch>,
}

impl<'a> ChunkInputs<'a> {
    fn new(batches: &'a [RecordBatch]) -> Self {
        Self {
            batches,
            columns: HashMap::new(),
            whole_rows: None,
        }
    }

    /// `argument`'s values over the chunk's rows.
    fn argument(&mut self, argument: &Arc<dyn PhysicalExpr>) -> Result<ArrayRef> {
        if let Some(column) = argument.downcast_ref::<Column>() {
            if let Some(values) = self.columns.get(&column.index()) {
                return Ok(Arc::clone(values));
            }
            let parts: Vec<ArrayRef> = self
                .batches
                .iter()
                .map(|batch| Arc::clone(batch.column(column.index())))
                .collect();
            let values = concat_arrays(&parts)?;
            self.columns.insert(column.index(), Arc::clone(&values));
            return Ok(values);
        }
        let parts = self
            .batches
            .iter()
            .map(|batch| argument.evaluate(batch)?.into_array(batch.num_rows()))
            .collect::<Result<Vec<_>>>()?;
        concat_arrays(&parts)
    }

    fn whole_rows(&mut self) -> Result<&RecordBatch> {
        match self.whole_rows {
            Some(ref rows) => Ok(rows),
            None => {
                let rows = concat_batches(&window_input_schema(self.batches)?, self.batches)?;
                Ok(self.whole_rows.insert(rows))
            }
        }
    }
}

/// `window`'s values at every row of the chunk, whose partitions are `partitions`: a paylake
/// function in one call for all of them, over its arguments only; any other function once
/// per partition, as `WindowAggExec` evaluates it, over the whole rows.
fn evaluate_window(
    window: &dyn WindowExpr,
    chunk: &mut ChunkInputs<'_>,
    partitions: &[Range<usize>],
) -> Result<ArrayRef> {
    if let Some(standard) = window.as_any().downcast_ref::<StandardWindowExpr>() {
        let function = standard.get_standard_func_expr();
        if let Some(paylake) = function
            .as_any()
            .downcast_ref::<WindowUDFExpr>()
            .and_then(|udf| crate::partitioned_window(udf.fun()))
        {
            let arguments = function
                .expressions()
                .iter()
                .map(|argument| chunk.argument(argument))
                .collect::<Result<Vec<_>>>()?;
            return paylake.evaluate_partitions(&arguments, partitions);
        }
    }
    let rows = chunk.whole_rows()?;
    let parts = partitions
        .iter()
        .map(|range| window.evaluate(&rows.slice(range.start, range.len())))
        .collect::<Result<Vec<_>>>()?;
    let parts: Vec<&dyn Array> = parts.iter().map(|part| part.as_ref()).collect();
    Ok(concat(&parts)?)
}

fn window_input_schema(batches: &[RecordBatch]) -> Result<SchemaRef> {
    match batches.first() {
        Some(first) => Ok(first.schema()),
        None => internal_err!("a window was evaluated over no rows"),
    }
}

/// `batch` with its string and binary views holding only their own bytes. A sort emits views
/// into large shared buffers; buffering them as they are would keep those buffers alive and
/// make their size impossible to account for.
fn compact(batch: RecordBatch) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .map(|column| match column.data_type() {
            DataType::Utf8View => Arc::new(column.as_string_view().gc()) as ArrayRef,
            DataType::BinaryView => Arc::new(column.as_binary_view().gc()) as ArrayRef,
            _ => Arc::clone(column),
        })
        .collect();
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// The bytes of `batch`'s own rows (a slice counts only its part of fixed-width buffers).
fn rows_size(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|column| {
            column
                .to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| column.get_array_memory_size())
        })
        .sum()
}

impl Stream for ChunkedWindowStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(batch) = self.ready.pop_front() {
                let poll = Poll::Ready(Some(Ok(batch)));
                return self.metrics.record_poll(poll);
            }
            let Some(input) = self.input.as_mut() else {
                return Poll::Ready(None);
            };
            let polled = match input.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(polled) => polled,
            };
            let evaluated = match polled {
                Some(Err(error)) => Err(error),
                Some(Ok(batch)) => {
                    let batch = match compact(batch) {
                        Ok(batch) => batch,
                        Err(error) => return Poll::Ready(Some(Err(error))),
                    };
                    // Under memory pressure the chunk shrinks: the complete partitions are
                    // evaluated now, and only an unfinished one that does not fit is an error.
                    let fits = self.reservation.try_grow(rows_size(&batch)).is_ok();
                    self.buffered_rows += batch.num_rows();
                    self.buffered.push(batch);
                    if fits && self.buffered_rows < self.evaluate_at {
                        continue;
                    }
                    self.evaluate_buffered(false)
                }
                None => {
                    self.input = None;
                    let evaluated = self.evaluate_buffered(true);
                    self.reservation.free();
                    evaluated
                }
            };
            if let Err(error) = evaluated {
                return Poll::Ready(Some(Err(error)));
            }
        }
    }
}

impl RecordBatchStream for ChunkedWindowStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    /// 300k rows in 8k-row batches: 2,000 small accounts and one of 100k rows, longer than a
    /// chunk; every account's rows in time order, accounts interleaved.
    fn table() -> MemTable {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("account", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                false,
            ),
            Field::new("amount", DataType::Int64, true),
            Field::new("marker", DataType::Int64, true),
        ]));
        let rows: Vec<i64> = (0..300_000).collect();
        let account = |i: i64| if i % 3 == 0 { 7_777 } else { i % 2_000 };
        let batches = rows
            .chunks(8_192)
            .map(|chunk| {
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(Int64Array::from(chunk.to_vec())),
                        Arc::new(Int64Array::from_iter_values(
                            chunk.iter().map(|&i| account(i)),
                        )),
                        Arc::new(TimestampMicrosecondArray::from_iter_values(
                            chunk.iter().map(|&i| (i / 5) * 60_000_000),
                        )),
                        Arc::new(Int64Array::from_iter(
                            chunk.iter().map(|&i| (i % 11 != 0).then_some(i % 97)),
                        )),
                        Arc::new(Int64Array::from_iter(
                            chunk.iter().map(|&i| (i % 13 == 0).then_some(i)),
                        )),
                    ],
                )
                .expect("batch")
            })
            .collect();
        MemTable::try_new(schema, vec![batches]).expect("table")
    }

    async fn run(chunked: bool) -> (String, String) {
        let mut builder = SessionStateBuilder::new()
            .with_default_features()
            .with_config(SessionConfig::new().with_target_partitions(2));
        if chunked {
            builder = builder.with_physical_optimizer_rule(Arc::new(ChunkedWindows));
        }
        let mut ctx = SessionContext::new_with_state(builder.build());
        crate::register(&mut ctx).expect("registers");
        ctx.register_table("t", Arc::new(table()))
            .expect("registers");
        let frame = ctx
            .sql(
                "SELECT id, trailing_sum(amount, ts, 3600) OVER w AS hour_sum,
                    carry_forward(amount, marker) OVER w AS carried,
                    trailing_distinct(amount, ts, 86400) OVER w AS day_distinct,
                    seen_before(marker, ts) OVER w AS marker_seen,
                    count(*) OVER (PARTITION BY account) AS account_rows
                 FROM t WINDOW w AS (PARTITION BY account ORDER BY ts)",
            )
            .await
            .expect("plans");
        let plan = frame.clone().create_physical_plan().await.expect("plans");
        let shown = displayable(plan.as_ref()).indent(false).to_string();
        let rows = frame
            .sort_by(vec![datafusion::prelude::col("id")])
            .expect("sorts")
            .collect()
            .await
            .expect("runs");
        (
            shown,
            pretty_format_batches(&rows).expect("prints").to_string(),
        )
    }

    #[tokio::test]
    async fn chunked_windows_equal_whole_input_windows() {
        let (whole_plan, whole) = run(false).await;
        let (chunked_plan, chunked) = run(true).await;
        assert!(whole_plan.contains("WindowAggExec"), "{whole_plan}");
        assert!(!whole_plan.contains("ChunkedWindowAggExec"), "{whole_plan}");
        assert!(
            chunked_plan.contains("ChunkedWindowAggExec")
                && !chunked_plan.contains(" WindowAggExec"),
            "{chunked_plan}"
        );
        assert_eq!(whole.lines().count(), 300_000 + 4);
        assert!(whole == chunked, "the chunked window changed results");
    }
}
