//! A window over the whole input in time order, without sorting the whole input.
//!
//! `point_in_time_features(...) OVER (ORDER BY at, ...)` needs every row in one order. DataFusion
//! plans that as a sort of the whole input into one partition, which spills and merges it back
//! (the training table's rows at 10M payments: over a GiB). Time order is cheaper to get by day:
//! [`TimeBucketedWindowExec`] reads every input partition, files each row under the UTC day of
//! its first ordering key (buffered in the memory pool, spilled to one uncompressed Arrow IPC
//! file, grouped by day, whenever the buffer reaches its share of the pool), then takes the
//! days in order: one day's rows, ordered in memory by the full `ORDER BY`, go through the
//! function in pieces of a batch, its state carrying on from one piece and one day to the next.
//! Each row is written to disk once at most and never merged; two days (the one going through
//! and the next, being ordered) and a few pieces are the most it holds at once.
//!
//! [`TimeBucketedWindows`] swaps it in for a window of `point_in_time_features` alone, without
//! `PARTITION BY`, whose first ordering key is an ascending timestamp. A cluster plans on its
//! scheduler without this rule, and sorts.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{
    cast, concat_batches, lexsort_to_indices, take_record_batch, SortColumn,
};
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit};
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{internal_err, Result};
use datafusion::config::ConfigOptions;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::SpillFile;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::window::StandardWindowExpr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::windows::{
    BoundedWindowAggExec, WindowAggExec, WindowExpr, WindowUDFExpr,
};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::StreamExt;

use crate::point_in_time::{AccountKeys, KeyedRows, PointInTimeFeatures, WindowState};

const DAY_MICROS: i64 = 86_400_000_000;

/// Replaces a time-ordered window of `point_in_time_features` and the sort under it with a
/// [`TimeBucketedWindowExec`]. Runs last, after the plan's sorts are placed.
#[derive(Debug, Default)]
pub struct TimeBucketedWindows;

/// The window expression, its input below the sort, if `node` is such a window.
fn time_ordered_window(
    node: &Arc<dyn ExecutionPlan>,
) -> Option<(Arc<dyn WindowExpr>, Arc<dyn ExecutionPlan>)> {
    let (window_expr, input) = if let Some(window) = node.downcast_ref::<WindowAggExec>() {
        (window.window_expr(), window.input())
    } else if let Some(window) = node.downcast_ref::<BoundedWindowAggExec>() {
        (window.window_expr(), window.input())
    } else {
        return None;
    };
    let [window] = window_expr else { return None };
    let standard = window.as_any().downcast_ref::<StandardWindowExpr>()?;
    let udf = standard
        .get_standard_func_expr()
        .as_any()
        .downcast_ref::<WindowUDFExpr>()?;
    if !udf.fun().inner().is::<PointInTimeFeatures>() || !window.partition_by().is_empty() {
        return None;
    }
    let first = window.order_by().first()?;
    let schema = input.schema();
    let is_time = matches!(first.expr.data_type(&schema), Ok(DataType::Timestamp(_, _)));
    if !is_time || first.options.descending {
        return None;
    }
    // What the planner put under the window to order its input: one sort, maybe merged or
    // coalesced into one partition.
    let mut below = Arc::clone(input);
    let mut sorted = false;
    loop {
        if let Some(sort) = below.downcast_ref::<SortExec>() {
            below = Arc::clone(sort.input());
            sorted = true;
        } else if let Some(merge) = below.downcast_ref::<SortPreservingMergeExec>() {
            below = Arc::clone(merge.input());
        } else if let Some(coalesce) = below.downcast_ref::<CoalescePartitionsExec>() {
            below = Arc::clone(coalesce.input());
        } else {
            break;
        }
    }
    sorted.then(|| (Arc::clone(window), below))
}

impl PhysicalOptimizerRule for TimeBucketedWindows {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some((window, input)) = time_ordered_window(&node) else {
                return Ok(Transformed::no(node));
            };
            Ok(Transformed::yes(Arc::new(TimeBucketedWindowExec::new(
                window,
                input,
                node.schema(),
            ))))
        })
        .map(|transformed| transformed.data)
    }

    fn name(&self) -> &str {
        "time_bucketed_windows"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct TimeBucketedWindowExec {
    window: Arc<dyn WindowExpr>,
    input: Arc<dyn ExecutionPlan>,
    cache: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl TimeBucketedWindowExec {
    fn new(window: Arc<dyn WindowExpr>, input: Arc<dyn ExecutionPlan>, schema: SchemaRef) -> Self {
        let cache = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            window,
            input,
            cache: Arc::new(cache),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for TimeBucketedWindowExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "TimeBucketedWindowExec: wdw=[{}]", self.window.name())
    }
}

impl ExecutionPlan for TimeBucketedWindowExec {
    fn name(&self) -> &str {
        "TimeBucketedWindowExec"
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
        crate::chunked::apply_window_expressions(std::slice::from_ref(&self.window), f)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("TimeBucketedWindowExec takes one input");
        }
        Ok(Arc::new(Self::new(
            Arc::clone(&self.window),
            children.swap_remove(0),
            self.schema(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("TimeBucketedWindowExec has one partition, not {partition}");
        }
        let pool = context.memory_pool();
        let metrics = BaselineMetrics::new(&self.metrics, 0);
        let filing_time = MetricBuilder::new(&self.metrics).subset_time("filing_time", 0);
        let mut builder = RecordBatchReceiverStreamBuilder::new(self.schema(), 2);
        // Each input partition in a task of its own, which also orders its batches by day:
        // that copies every row, and one task doing it for all of them held up the rest.
        let partitions = self.input.output_partitioning().partition_count();
        let (filed_tx, filed_rx) = tokio::sync::mpsc::channel(2 * partitions.max(1));
        for partition in 0..partitions {
            let mut input = self.input.execute(partition, Arc::clone(&context))?;
            let window = Arc::clone(&self.window);
            let filed_tx = filed_tx.clone();
            let elapsed = metrics.elapsed_compute().clone();
            let filing_time = filing_time.clone();
            builder.spawn(async move {
                while let Some(batch) = input.next().await {
                    let sorted = batch.and_then(|batch| {
                        let _timer = elapsed.timer();
                        let _filing = filing_time.timer();
                        sort_by_day(&window, &batch)
                    });
                    let failed = sorted.is_err();
                    // A closed channel: the run has stopped (an error, or the consumer left).
                    if filed_tx.send(sorted).await.is_err() || failed {
                        break;
                    }
                }
                Ok(())
            });
        }
        drop(filed_tx);
        let run = BucketedRun {
            window: Arc::clone(&self.window),
            schema: self.schema(),
            batch_size: context.session_config().batch_size(),
            disk: Arc::clone(&context.runtime_env().disk_manager),
            // The buffer spills: paylake's engine holds it to a spilling consumer's share.
            buffer: MemoryConsumer::new("TimeBucketedWindowExec[buffer]")
                .with_can_spill(true)
                .register(pool),
            day: MemoryConsumer::new("TimeBucketedWindowExec[day]").register(pool),
            state_memory: MemoryConsumer::new("TimeBucketedWindowExec[state]").register(pool),
            pending: BTreeMap::new(),
            spills: Vec::new(),
            metrics,
            input_wall_time: MetricBuilder::new(&self.metrics).subset_time("input_wall_time", 0),
            days_wall_time: MetricBuilder::new(&self.metrics).subset_time("days_wall_time", 0),
            day_sort_time: MetricBuilder::new(&self.metrics).subset_time("day_sort_time", 0),
            function_time: MetricBuilder::new(&self.metrics).subset_time("function_time", 0),
            waiting_for_days: MetricBuilder::new(&self.metrics).subset_time("waiting_for_days", 0),
            waiting_for_output: MetricBuilder::new(&self.metrics)
                .subset_time("waiting_for_output", 0),
            spilled_bytes: MetricBuilder::new(&self.metrics).spilled_bytes(0),
            spill_count: MetricBuilder::new(&self.metrics).spill_count(0),
        };
        let tx = builder.tx();
        builder.spawn(async move { run.run(filed_rx, &tx).await });
        Ok(builder.build())
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// One day's buffered rows: slices of the day-sorted input batches, and their share of the
/// buffer's reservation.
#[derive(Default)]
struct PendingDay {
    batches: Vec<RecordBatch>,
    bytes: usize,
}

/// One spill file: one message per buffered day, in ascending order.
struct Spill {
    file: Arc<dyn SpillFile>,
    /// The days in the file, in file order.
    days: Vec<i64>,
}

struct BucketedRun {
    window: Arc<dyn WindowExpr>,
    schema: SchemaRef,
    batch_size: usize,
    disk: Arc<datafusion::execution::disk_manager::DiskManager>,
    buffer: MemoryReservation,
    day: MemoryReservation,
    state_memory: MemoryReservation,
    /// Buffered rows by day.
    pending: BTreeMap<i64, PendingDay>,
    spills: Vec<Spill>,
    /// `elapsed_compute` adds up the busy time of the three parts: `filing_time` (in the
    /// input's tasks), `day_sort_time` and `function_time`.
    metrics: BaselineMetrics,
    /// Wall time from the start of the run to the end of its input.
    input_wall_time: Time,
    /// Wall time from the end of the input to the last row out.
    days_wall_time: Time,
    day_sort_time: Time,
    function_time: Time,
    /// Time the function's pass waited for the next piece, taken in order, and spent sending
    /// the piece before while the next one goes through the function: the sending holds the
    /// pass back only where it exceeds `function_time`.
    waiting_for_days: Time,
    waiting_for_output: Time,
    spilled_bytes: Count,
    spill_count: Count,
}

/// An input batch, its rows ordered by day: each day's run of rows.
struct DaySortedBatch {
    batch: RecordBatch,
    runs: Vec<(i64, std::ops::Range<usize>)>,
}

/// The rows of `batch` ordered by the UTC day of the window's first ordering key, in a copy
/// holding only this batch's rows (a batch can be a slice of a larger one, whose buffers the
/// pool would count in full).
fn sort_by_day(window: &Arc<dyn WindowExpr>, batch: &RecordBatch) -> Result<DaySortedBatch> {
    if batch.num_rows() == 0 {
        return Ok(DaySortedBatch {
            batch: batch.clone(),
            runs: Vec::new(),
        });
    }
    let days = days_of(window, batch)?;
    let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
    order.sort_by_key(|&row| days[row as usize]);
    let ordered_days: Vec<i64> = order.iter().map(|&row| days[row as usize]).collect();
    let batch = take_record_batch(batch, &UInt32Array::from(order))?;
    let mut runs: Vec<(i64, std::ops::Range<usize>)> = Vec::new();
    for (row, &day) in ordered_days.iter().enumerate() {
        match runs.last_mut() {
            Some((last, range)) if *last == day => range.end = row + 1,
            _ => runs.push((day, row..row + 1)),
        }
    }
    Ok(DaySortedBatch { batch, runs })
}

/// The UTC day of each row's first ordering key; NULL (sorted last) after every day.
fn days_of(window: &Arc<dyn WindowExpr>, batch: &RecordBatch) -> Result<Vec<i64>> {
    let first = &window.order_by()[0];
    let keys = first.expr.evaluate(batch)?.into_array(batch.num_rows())?;
    let DataType::Timestamp(_, zone) = keys.data_type() else {
        return internal_err!("TimeBucketedWindowExec orders by a timestamp first");
    };
    let micros = cast(
        &keys,
        &DataType::Timestamp(TimeUnit::Microsecond, zone.clone()),
    )?;
    let micros = cast(&micros, &DataType::Int64)?;
    let null_day = if first.options.nulls_first {
        i64::MIN
    } else {
        i64::MAX
    };
    Ok(micros
        .as_primitive::<Int64Type>()
        .iter()
        .map(|time| time.map_or(null_day, |time| time.div_euclid(DAY_MICROS)))
        .collect())
}

type Filed = tokio::sync::mpsc::Receiver<Result<DaySortedBatch>>;

type Sender = tokio::sync::mpsc::Sender<Result<RecordBatch>>;

impl BucketedRun {
    async fn run(mut self, mut filed: Filed, tx: &Sender) -> Result<()> {
        let started = std::time::Instant::now();
        while let Some(batch) = filed.recv().await {
            self.file(batch?)?;
        }
        drop(filed);
        self.input_wall_time.add_duration(started.elapsed());
        let days_started = std::time::Instant::now();
        let days_wall_time = self.days_wall_time.clone();
        let result = self.evaluate_days(tx).await;
        days_wall_time.add_duration(days_started.elapsed());
        result
    }

    /// Files a batch's rows under their days, spilling the buffer first when the pool has no
    /// room for them.
    fn file(&mut self, sorted: DaySortedBatch) -> Result<()> {
        let DaySortedBatch { batch, runs } = sorted;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let size = batch.get_array_memory_size();
        if self.buffer.try_grow(size).is_err() {
            self.spill()?;
            self.buffer.try_grow(size).map_err(|e| {
                e.context("TimeBucketedWindowExec: one batch does not fit its share of the pool")
            })?;
        }
        let rows = batch.num_rows();
        for (day, run) in runs {
            let pending = self.pending.entry(day).or_default();
            pending.bytes += size * run.len() / rows;
            pending.batches.push(batch.slice(run.start, run.len()));
        }
        Ok(())
    }

    /// Writes the buffered rows to a new spill file, day after day, and frees the buffer.
    fn spill(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let file = self.disk.create_tmp_file("TimeBucketedWindowExec")?;
        let Some(path) = file.path().map(|path| path.to_path_buf()) else {
            return internal_err!("TimeBucketedWindowExec spills to local files only");
        };
        let out = File::options()
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| {
                DataFusionError::Execution(format!("cannot write {}: {e}", path.display()))
            })?;
        let mut writer =
            FileWriter::try_new(BufWriter::new(out), self.schema_of_input()?.as_ref())?;
        let mut days = Vec::new();
        for (day, pending) in std::mem::take(&mut self.pending) {
            // One message per day: an input batch holds a few rows of many days, and a message
            // per slice cost more in headers and reads than the rows themselves.
            let Some(first) = pending.batches.first() else {
                continue;
            };
            writer.write(&concat_batches(&first.schema(), &pending.batches)?)?;
            days.push(day);
        }
        writer.finish()?;
        drop(writer);
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        self.spilled_bytes.add(bytes as usize);
        self.spill_count.add(1);
        self.spills.push(Spill { file, days });
        self.buffer.free();
        Ok(())
    }

    fn schema_of_input(&self) -> Result<SchemaRef> {
        match self.pending.values().flat_map(|day| &day.batches).next() {
            Some(batch) => Ok(batch.schema()),
            None => internal_err!("TimeBucketedWindowExec spilled no rows"),
        }
    }

    /// Takes the days in order, in stages that overlap: a day's rows are read back and ordered
    /// while the day before is taken in its order a piece (a batch) at a time with its accounts
    /// resolved, while the piece before goes through the function and the output of the piece
    /// before that is sent. The ordering, the taking and the function run on blocking threads:
    /// on tokio's workers they kept the plan above (the label join, the Parquet writers)
    /// waiting for a core, and themselves waiting on it in turn.
    async fn evaluate_days(mut self, tx: &Sender) -> Result<()> {
        let spills = std::mem::take(&mut self.spills);
        let mut readers = spills
            .iter()
            .map(|spill| {
                let path = spill.file.path().map(|path| path.to_path_buf());
                let path = path.ok_or_else(|| {
                    DataFusionError::Internal("a spill file without a path".into())
                })?;
                let file = File::open(&path).map_err(|e| {
                    DataFusionError::Execution(format!("cannot read {}: {e}", path.display()))
                })?;
                Ok((
                    FileReader::try_new(BufReader::new(file), None)?,
                    spill.days.clone().into_iter().peekable(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut days: Vec<i64> = self.pending.keys().copied().collect();
        for spill in &spills {
            days.extend(spill.days.iter().copied());
        }
        days.sort_unstable();
        days.dedup();

        let (sorted_tx, mut sorted_rx) = tokio::sync::mpsc::channel::<Result<SortedDay>>(1);
        let mut pending = std::mem::take(&mut self.pending);
        let window = Arc::clone(&self.window);
        let day_memory = self.day.new_empty();
        let buffer = self.buffer.take();
        let elapsed = self.metrics.elapsed_compute().clone();
        let day_sort_time = self.day_sort_time.clone();
        let keys_memory = self.state_memory.new_empty();
        let piece_rows = self.batch_size;
        // Aborted if the pass returns early (an error, or the consumer gone), so that it does
        // not go on reading and ordering days for nothing.
        let mut prepare = AbortOnDrop(tokio::spawn(async move {
            // The accounts' ids and pairs, resolved a piece ahead of the windows.
            let mut keys = AccountKeys::default();
            // The rows of `day`, read back from the spill files and taken from the buffer, in
            // order on a blocking thread.
            let mut order = |day: i64| -> Result<tokio::task::JoinHandle<Result<OrderedDay>>> {
                let mut batches = Vec::new();
                for (reader, spilled_days) in &mut readers {
                    // Each file's next message is its next day's rows.
                    if spilled_days.next_if_eq(&day).is_none() {
                        continue;
                    }
                    match reader.next() {
                        Some(batch) => batches.push(batch?),
                        None => return internal_err!("a spill file ended early"),
                    }
                }
                let buffered = pending.remove(&day).unwrap_or_default();
                // These rows were counted in the buffer: they now count for their day.
                buffer.shrink(buffered.bytes.min(buffer.size()));
                batches.extend(buffered.batches);
                let window = Arc::clone(&window);
                let reserved = day_memory.new_empty();
                Ok(sort_stage(&elapsed, &day_sort_time, move || {
                    order_day(&window, &batches, reserved)
                }))
            };
            // The next day is ordered while this one's pieces are taken: at 10M payments the
            // stage that orders, takes and resolves was the pass's slowest, and ordering a day
            // (gathering its rows and sorting them) needs nothing from the day before.
            let mut next = match days.first() {
                Some(&first) => Some(order(first)?),
                None => None,
            };
            'days: for index in 0..days.len() {
                let Some(ordering) = next.take() else {
                    break;
                };
                if let Some(&day) = days.get(index + 1) {
                    next = Some(order(day)?);
                }
                let ordered = match ordering.await {
                    Ok(Ok(ordered)) => Arc::new(ordered),
                    Ok(Err(e)) => {
                        // The function's side reports it.
                        let _ = sorted_tx.send(Err(e)).await;
                        break;
                    }
                    Err(e) => {
                        return internal_err!("TimeBucketedWindowExec: a day's sort failed: {e}")
                    }
                };
                // The day in pieces of a batch each: the function starts on the first while
                // the next is taken and resolved (the first day of a folder of daily account
                // snapshots holds every account: 100k facts at 1M payments, which took the two
                // stages 170 and 110 ms one after the other).
                let mut offset = 0;
                for length in equal_batches(ordered.rows.num_rows(), piece_rows) {
                    let piece = offset..offset + length;
                    offset += length;
                    let (window, ordered) = (Arc::clone(&window), Arc::clone(&ordered));
                    let reserved = day_memory.new_empty();
                    let taking = sort_stage(&elapsed, &day_sort_time, move || {
                        let sorted = take_piece(&window, &ordered, piece, reserved, &mut keys);
                        (sorted, keys)
                    });
                    let (sorted, returned) = match taking.await {
                        Ok(done) => done,
                        Err(e) => {
                            return internal_err!(
                                "TimeBucketedWindowExec: taking a piece of a day failed: {e}"
                            )
                        }
                    };
                    keys = returned;
                    let keys_fit = keys_memory.try_resize(keys.allocated()).map_err(|e| {
                        e.context(
                            "TimeBucketedWindowExec: the accounts and pairs seen do not fit the pool",
                        )
                    });
                    let sorted = keys_fit.and(sorted);
                    let failed = sorted.is_err();
                    if sorted_tx.send(sorted).await.is_err() || failed {
                        break 'days;
                    }
                }
            }
            Ok(())
        }));

        let mut state = WindowState::default();
        // The piece whose output is sent while the next one goes through the function, with its
        // reservation. That is let go when the sending starts, as an operator's is for the
        // batches it emits: the plan above counts what it keeps of them. Held until the last
        // batch was taken, it left an ORDER BY above, under a small pool, no room to take them.
        let mut sending: Option<(RecordBatch, MemoryReservation)> = None;
        loop {
            let waiting = std::time::Instant::now();
            let Some(sorted) = sorted_rx.recv().await else {
                break;
            };
            self.waiting_for_days.add_duration(waiting.elapsed());
            let SortedDay {
                rows,
                keyed,
                reserved,
            } = sorted?;
            let (elapsed, function_time) = (
                self.metrics.elapsed_compute().clone(),
                self.function_time.clone(),
            );
            let schema = Arc::clone(&self.schema);
            let mut day_state = std::mem::take(&mut state);
            let function = tokio::task::spawn_blocking(move || {
                let _timer = elapsed.timer();
                let _function = function_time.timer();
                let output = day_state.process(&keyed).and_then(|values| {
                    let mut columns = rows.columns().to_vec();
                    columns.push(values);
                    Ok(RecordBatch::try_new(schema, columns)?)
                });
                (output, day_state)
            });
            if !self.send_held(sending.take(), tx).await {
                // The consumer is gone: nothing more to do.
                return Ok(());
            }
            let (output, day_state) = match function.await {
                Ok(done) => done,
                Err(e) => return internal_err!("TimeBucketedWindowExec: the function failed: {e}"),
            };
            state = day_state;
            self.state_memory
                .try_resize(state.allocated())
                .map_err(|e| {
                    e.context("TimeBucketedWindowExec: the accounts' windows do not fit the pool")
                })?;
            sending = Some((output?, reserved));
        }
        if !self.send_held(sending.take(), tx).await {
            return Ok(());
        }
        match (&mut prepare.0).await {
            Ok(result) => result,
            Err(e) => internal_err!("TimeBucketedWindowExec: reading the days failed: {e}"),
        }
    }

    /// Sends a piece's output held back while the next piece went through the function, if
    /// any, letting go of its reservation first; false if the consumer is gone.
    async fn send_held(&self, held: Option<(RecordBatch, MemoryReservation)>, tx: &Sender) -> bool {
        match held {
            Some((output, reserved)) => {
                drop(reserved);
                self.send(output, tx).await
            }
            None => true,
        }
    }

    /// Sends one piece's output in batches of equal size, at most the session's; false if the
    /// consumer is gone. Equal, because the plan above deals batches round-robin to its
    /// writers: a day of 11k rows sent as 8192 + 2919 gave one writer three quarters of the
    /// rows, and the build waited for it alone at the end.
    async fn send(&self, output: RecordBatch, tx: &Sender) -> bool {
        let mut offset = 0;
        for rows in equal_batches(output.num_rows(), self.batch_size) {
            let batch = output.slice(offset, rows);
            offset += rows;
            self.metrics.record_output(batch.num_rows());
            let waiting = std::time::Instant::now();
            let sent = tx.send(Ok(batch)).await;
            self.waiting_for_output.add_duration(waiting.elapsed());
            if sent.is_err() {
                return false;
            }
        }
        true
    }
}

/// The lengths of the fewest batches of at most `most` rows (one at least) that split `rows`
/// rows, as equal as can be: the first `rows % count` take one row more.
fn equal_batches(rows: usize, most: usize) -> impl Iterator<Item = usize> {
    let count = rows.div_ceil(most.max(1));
    (0..count).map(move |index| rows / count + usize::from(index < rows % count))
}

/// Runs `work` on a blocking thread, its time counted as the pass's compute and as its sort
/// stage (`day_sort_time`: ordering days, taking pieces, resolving accounts).
fn sort_stage<T: Send + 'static>(
    elapsed: &Time,
    day_sort_time: &Time,
    work: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    let (elapsed, day_sort_time) = (elapsed.clone(), day_sort_time.clone());
    tokio::task::spawn_blocking(move || {
        let _timer = elapsed.timer();
        let _sorting = day_sort_time.timer();
        work()
    })
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A piece of one day's rows in the window's order, the function's arguments over them, and
/// the memory they hold.
struct SortedDay {
    rows: RecordBatch,
    keyed: KeyedRows,
    reserved: MemoryReservation,
}

/// One day's rows in one batch, and the order the window takes them in.
struct OrderedDay {
    rows: RecordBatch,
    order: UInt32Array,
    /// Held until the last piece is taken.
    _reserved: MemoryReservation,
}

/// `batches` (one day's rows) gathered, and their order by the window's `ORDER BY`.
fn order_day(
    window: &Arc<dyn WindowExpr>,
    batches: &[RecordBatch],
    reserved: MemoryReservation,
) -> Result<OrderedDay> {
    let Some(first) = batches.first() else {
        return internal_err!("TimeBucketedWindowExec: a day without rows");
    };
    let rows = concat_batches(&first.schema(), batches)?;
    // The bytes the rows use, not those of the buffers they point into: a day read back from
    // a spill file is one IPC message that every column's buffers share.
    let bytes = rows
        .columns()
        .iter()
        .map(|column| column.to_data().get_slice_memory_size())
        .sum::<Result<usize, _>>()?;
    reserved
        .try_grow(bytes)
        .map_err(|e| e.context("TimeBucketedWindowExec: one day's rows do not fit the pool"))?;
    let sort_columns = window
        .order_by()
        .iter()
        .map(|key| {
            Ok(SortColumn {
                values: key.expr.evaluate(&rows)?.into_array(rows.num_rows())?,
                options: Some(key.options),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let order = lexsort_to_indices(&sort_columns, None)?;
    reserved
        .try_grow(order.get_array_memory_size())
        .map_err(|e| e.context("TimeBucketedWindowExec: one day's rows do not fit the pool"))?;
    Ok(OrderedDay {
        rows,
        order,
        _reserved: reserved,
    })
}

/// The rows at `piece` of `day`'s order, with the function's arguments over them and their
/// accounts resolved by `keys`.
fn take_piece(
    window: &Arc<dyn WindowExpr>,
    day: &OrderedDay,
    piece: std::ops::Range<usize>,
    reserved: MemoryReservation,
    keys: &mut AccountKeys,
) -> Result<SortedDay> {
    let indices = day.order.slice(piece.start, piece.len());
    let rows = take_record_batch(&day.rows, &indices)?;
    // Twice: the rows and, about as large, the function's arguments and values.
    reserved
        .try_grow(2 * rows.get_array_memory_size())
        .map_err(|e| e.context("TimeBucketedWindowExec: a piece of a day does not fit the pool"))?;
    let arguments = window
        .expressions()
        .iter()
        .map(|argument| argument.evaluate(&rows)?.into_array(rows.num_rows()))
        .collect::<Result<Vec<_>>>()?;
    let keyed = keys.resolve(&arguments)?;
    Ok(SortedDay {
        rows,
        keyed,
        reserved,
    })
}

#[cfg(test)]
mod tests {
    use super::equal_batches;

    #[test]
    fn a_day_goes_out_in_batches_of_equal_size() {
        let lengths = |rows, most| equal_batches(rows, most).collect::<Vec<_>>();
        assert_eq!(lengths(11_111, 8192), vec![5556, 5555]);
        assert_eq!(lengths(8192, 8192), vec![8192]);
        assert_eq!(lengths(16_385, 8192), vec![5462, 5462, 5461]);
        assert_eq!(lengths(3, 8192), vec![3]);
        assert!(lengths(0, 8192).is_empty());
        for (rows, most) in [(1, 1), (7, 2), (100_000, 8192), (8193, 8192), (5, 0)] {
            let batches = lengths(rows, most);
            assert_eq!(batches.iter().sum::<usize>(), rows, "{rows} rows by {most}");
            assert!(batches.iter().all(|&n| n >= 1 && n <= most.max(1)));
            let (least, largest) = (batches.iter().min(), batches.iter().max());
            assert!(largest.zip(least).is_none_or(|(a, b)| a - b <= 1));
        }
    }
}
