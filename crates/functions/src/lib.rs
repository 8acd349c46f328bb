//! Window functions for paylake's point-in-time features.
//!
//! `point_in_time_features` (module `point_in_time`) computes every feature of the training
//! table in one pass over payments and account facts in time order; `TimeBucketedWindows`
//! (module `time_buckets`) gets it that order by day instead of by sorting the whole stream.
//!
//! The per-account functions below each read a partition (one account's rows, sorted by time)
//! in a single vectorized pass. They replaced running `sum`/`count` frames and windows
//! partitioned by tiny groups, which DataFusion 55 evaluates row by row, and are the reference
//! `point_in_time_features` is tested against. Every session that plans the models registers
//! them all (`register`): the local engine, and a Ballista scheduler and its executors.
//!
//! - `trailing_sum(value, ts, seconds)`: the sum of `value` over the partition's rows with
//!   `ts - seconds <= ts' < ts`. Rows at the same instant are excluded, and so is the row
//!   itself. `trailing_sum(1, ts, 3600)` counts them.
//! - `trailing_distinct(value, ts, seconds)`: how many distinct non-NULL `value`s those rows
//!   hold.
//! - `seen_before(value, ts)`: whether an earlier row of the partition, at a strictly earlier
//!   time, holds the same `value` (NULL counts as a value).
//! - `carry_forward(value, marker)`: `value` of the latest row so far, this one included,
//!   whose `marker` is not NULL. This is an as-of lookup over a stream of facts and lookups.
//!
//! The first two require `ORDER BY ts` in their window; a partition out of time order is an
//! error, never a wrong number.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

mod chunked;
mod point_in_time;
mod time_buckets;
pub use chunked::{ChunkedWindowAggExec, ChunkedWindows, CHUNK_ROWS};
pub use time_buckets::{TimeBucketedWindowExec, TimeBucketedWindows};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Float64Array, Int64Array, UInt32Array,
};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{
    DataType, Decimal128Type, Field, FieldRef, Float64Type, Int64Type, TimeUnit,
};
use datafusion::arrow::row::{Row, RowConverter, Rows, SortField};
use datafusion::common::{exec_err, plan_err, Result};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{
    PartitionEvaluator, Signature, Volatility, WindowUDF, WindowUDFImpl,
};

/// Every paylake window function.
pub fn window_functions() -> Vec<Arc<WindowUDF>> {
    vec![
        Arc::new(WindowUDF::from(TrailingSum::new())),
        Arc::new(WindowUDF::from(TrailingDistinct::new())),
        Arc::new(WindowUDF::from(SeenBefore::new())),
        Arc::new(WindowUDF::from(CarryForward::new())),
        Arc::new(WindowUDF::from(point_in_time::PointInTimeFeatures::new())),
    ]
}

/// Registers every paylake window function with `registry` (a session or session state).
pub fn register(registry: &mut dyn FunctionRegistry) -> Result<()> {
    for function in window_functions() {
        registry.register_udwf(function)?;
    }
    Ok(())
}

/// The sum type of a value: counts and integers as BIGINT, decimals with their scale and the
/// widest precision, floats as DOUBLE.
fn sum_type(name: &str, value: &DataType) -> Result<DataType> {
    match value {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => Ok(DataType::Int64),
        DataType::Decimal128(_, scale) => Ok(DataType::Decimal128(38, *scale)),
        DataType::Float32 | DataType::Float64 => Ok(DataType::Float64),
        other => plan_err!("{name}: cannot sum values of type {other}"),
    }
}

/// The window width in microseconds from the `seconds` argument, a positive constant.
fn width_micros(name: &str, seconds: &ArrayRef) -> Result<i64> {
    if seconds.is_empty() {
        return Ok(0);
    }
    let seconds = cast(seconds, &DataType::Int64)?;
    let seconds = seconds.as_primitive::<Int64Type>();
    if seconds.is_null(0) || seconds.value(0) <= 0 {
        return exec_err!("{name}: the window in seconds must be a positive number");
    }
    let micros = seconds.value(0).checked_mul(1_000_000);
    match micros {
        Some(micros) if seconds.values().iter().all(|s| *s == seconds.value(0)) => Ok(micros),
        _ => {
            exec_err!("{name}: the window in seconds must be one constant, within i64 microseconds")
        }
    }
}

/// The times as microseconds.
fn micros_of(name: &str, ts: &ArrayRef) -> Result<Int64Array> {
    let micros = match ts.data_type() {
        DataType::Timestamp(_, zone) => cast(
            ts,
            &DataType::Timestamp(TimeUnit::Microsecond, zone.clone()),
        )?,
        other => return plan_err!("{name}: the time argument must be a timestamp, not {other}"),
    };
    Ok(cast(&micros, &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

/// One partition's rows that have a time, in `times` (microseconds) and `rows` (their
/// positions), both cleared first. Checks the times ascend.
fn sorted_times(
    name: &str,
    micros: &Int64Array,
    partition: &Range<usize>,
    times: &mut Vec<i64>,
    rows: &mut Vec<usize>,
) -> Result<()> {
    times.clear();
    rows.clear();
    for row in partition.clone() {
        if micros.is_null(row) {
            continue;
        }
        let time = micros.value(row);
        if times.last().is_some_and(|last| *last > time) {
            return exec_err!("{name}: rows must be ordered by the time argument (ORDER BY ts)");
        }
        times.push(time);
        rows.push(row);
    }
    Ok(())
}

/// For each timed row `k`: the positions `[start, end)` (in time order) of the rows in
/// `[t_k - width, t_k)`, into `ranges` (cleared first). Both bounds only move forward: one pass.
fn trailing_ranges(times: &[i64], width: i64, ranges: &mut Vec<(usize, usize)>) {
    ranges.clear();
    let (mut start, mut end) = (0, 0);
    for &time in times {
        let from = time.saturating_sub(width);
        while start < times.len() && times[start] < from {
            start += 1;
        }
        while end < times.len() && times[end] < time {
            end += 1;
        }
        ranges.push((start, end));
    }
}

/// A paylake window function evaluated for many partitions of one batch in one call: the
/// batch's rows are sorted by partition, then by the window's order, and `partitions` are
/// the row ranges of its partitions, in order, covering every row. [`ChunkedWindowAggExec`]
/// calls it once per chunk; a call per partition (DataFusion's `evaluate_all`) costs more
/// in setup than in work when partitions hold a few dozen rows, as accounts do.
pub(crate) trait PartitionedWindow: std::fmt::Debug + Sync {
    /// The function's value at every row of `args`.
    fn evaluate_partitions(
        &self,
        args: &[ArrayRef],
        partitions: &[Range<usize>],
    ) -> Result<ArrayRef>;
}

/// DataFusion's evaluator of a paylake function over one partition: its rows as one range.
#[derive(Debug)]
struct OnePartition(&'static dyn PartitionedWindow);

impl PartitionEvaluator for OnePartition {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        self.0
            .evaluate_partitions(values, std::slice::from_ref(&(0..num_rows)))
    }
}

/// The paylake function `udf` is, if it is one.
pub(crate) fn partitioned_window(udf: &WindowUDF) -> Option<&'static dyn PartitionedWindow> {
    let function = udf.inner();
    if function.is::<TrailingSum>() {
        Some(&TrailingSumEvaluator)
    } else if function.is::<TrailingDistinct>() {
        Some(&TrailingDistinctEvaluator)
    } else if function.is::<SeenBefore>() {
        Some(&SeenBeforeEvaluator)
    } else if function.is::<CarryForward>() {
        Some(&CarryForwardEvaluator)
    } else {
        None
    }
}

/// Values as comparable keys: equal values (NULLs included) have equal rows.
fn keys_of(value: &ArrayRef) -> Result<Rows> {
    let converter = RowConverter::new(vec![SortField::new(value.data_type().clone())])?;
    Ok(converter.convert_columns(std::slice::from_ref(value))?)
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TrailingSum {
    signature: Signature,
}

impl TrailingSum {
    fn new() -> Self {
        Self {
            signature: Signature::any(3, Volatility::Immutable),
        }
    }
}

impl WindowUDFImpl for TrailingSum {
    fn name(&self) -> &str {
        "trailing_sum"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn field(&self, args: WindowUDFFieldArgs) -> Result<FieldRef> {
        let value = args.input_fields()[0].data_type();
        Ok(Arc::new(Field::new(
            args.name(),
            sum_type(self.name(), value)?,
            false,
        )))
    }

    fn partition_evaluator(
        &self,
        _args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(OnePartition(&TrailingSumEvaluator)))
    }
}

#[derive(Debug)]
struct TrailingSumEvaluator;

impl PartitionedWindow for TrailingSumEvaluator {
    fn evaluate_partitions(
        &self,
        values: &[ArrayRef],
        partitions: &[Range<usize>],
    ) -> Result<ArrayRef> {
        let name = "trailing_sum";
        let [value, ts, seconds] = values else {
            return exec_err!("{name} takes (value, ts, seconds)");
        };
        let num_rows = value.len();
        let width = width_micros(name, seconds)?;
        let micros = micros_of(name, ts)?;
        let summed = cast(value, &sum_type(name, value.data_type())?)?;
        let (mut times, mut rows, mut ranges) = (Vec::new(), Vec::new(), Vec::new());
        // Sums over ranges as differences of prefix sums; NULL values add nothing.
        macro_rules! trailing {
            ($array:expr, $zero:expr, $add:expr, $sub:expr) => {{
                let array = $array;
                let mut prefix = Vec::new();
                let mut out = vec![$zero; num_rows];
                for partition in partitions {
                    sorted_times(name, &micros, partition, &mut times, &mut rows)?;
                    trailing_ranges(&times, width, &mut ranges);
                    prefix.clear();
                    prefix.push($zero);
                    for &row in &rows {
                        let last = *prefix.last().unwrap_or(&$zero);
                        let next = if array.is_null(row) {
                            last
                        } else {
                            $add(last, array.value(row))?
                        };
                        prefix.push(next);
                    }
                    for (&row, &(start, end)) in rows.iter().zip(&ranges) {
                        out[row] = $sub(prefix[end], prefix[start])?;
                    }
                }
                out
            }};
        }
        let overflow =
            || datafusion::error::DataFusionError::Execution(format!("{name}: the sum overflows"));
        Ok(match summed.data_type() {
            DataType::Int64 => Arc::new(Int64Array::from(trailing!(
                summed.as_primitive::<Int64Type>(),
                0i64,
                |a: i64, b: i64| a.checked_add(b).ok_or_else(overflow),
                |a: i64, b: i64| a.checked_sub(b).ok_or_else(overflow)
            ))),
            DataType::Decimal128(precision, scale) => Arc::new(
                Decimal128Array::from(trailing!(
                    summed.as_primitive::<Decimal128Type>(),
                    0i128,
                    |a: i128, b: i128| a.checked_add(b).ok_or_else(overflow),
                    |a: i128, b: i128| a.checked_sub(b).ok_or_else(overflow)
                ))
                .with_precision_and_scale(*precision, *scale)?,
            ),
            _ => Arc::new(Float64Array::from(trailing!(
                summed.as_primitive::<Float64Type>(),
                0f64,
                |a: f64, b: f64| Ok::<f64, datafusion::error::DataFusionError>(a + b),
                |a: f64, b: f64| Ok::<f64, datafusion::error::DataFusionError>(a - b)
            ))),
        })
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TrailingDistinct {
    signature: Signature,
}

impl TrailingDistinct {
    fn new() -> Self {
        Self {
            signature: Signature::any(3, Volatility::Immutable),
        }
    }
}

impl WindowUDFImpl for TrailingDistinct {
    fn name(&self) -> &str {
        "trailing_distinct"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn field(&self, args: WindowUDFFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(args.name(), DataType::Int64, false)))
    }

    fn partition_evaluator(
        &self,
        _args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(OnePartition(&TrailingDistinctEvaluator)))
    }
}

#[derive(Debug)]
struct TrailingDistinctEvaluator;

impl PartitionedWindow for TrailingDistinctEvaluator {
    fn evaluate_partitions(
        &self,
        values: &[ArrayRef],
        partitions: &[Range<usize>],
    ) -> Result<ArrayRef> {
        let name = "trailing_distinct";
        let [value, ts, seconds] = values else {
            return exec_err!("{name} takes (value, ts, seconds)");
        };
        let width = width_micros(name, seconds)?;
        let micros = micros_of(name, ts)?;
        let keys = keys_of(value)?;
        let (mut times, mut rows, mut ranges) = (Vec::new(), Vec::new(), Vec::new());
        // How often each value occurs in the current range; entries at zero are removed.
        let mut counts: HashMap<Row<'_>, usize> = HashMap::new();
        let mut out = vec![0i64; value.len()];
        for partition in partitions {
            sorted_times(name, &micros, partition, &mut times, &mut rows)?;
            trailing_ranges(&times, width, &mut ranges);
            counts.clear();
            let (mut start, mut end) = (0, 0);
            for (&row, &(to_start, to_end)) in rows.iter().zip(&ranges) {
                while end < to_end {
                    if value.is_valid(rows[end]) {
                        *counts.entry(keys.row(rows[end])).or_default() += 1;
                    }
                    end += 1;
                }
                while start < to_start {
                    if value.is_valid(rows[start]) {
                        let key = keys.row(rows[start]);
                        if let Some(count) = counts.get_mut(&key) {
                            *count -= 1;
                            if *count == 0 {
                                counts.remove(&key);
                            }
                        }
                    }
                    start += 1;
                }
                out[row] = counts.len() as i64;
            }
        }
        Ok(Arc::new(Int64Array::from(out)))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SeenBefore {
    signature: Signature,
}

impl SeenBefore {
    fn new() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl WindowUDFImpl for SeenBefore {
    fn name(&self) -> &str {
        "seen_before"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn field(&self, args: WindowUDFFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(args.name(), DataType::Boolean, true)))
    }

    fn partition_evaluator(
        &self,
        _args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(OnePartition(&SeenBeforeEvaluator)))
    }
}

#[derive(Debug)]
struct SeenBeforeEvaluator;

impl PartitionedWindow for SeenBeforeEvaluator {
    fn evaluate_partitions(
        &self,
        values: &[ArrayRef],
        partitions: &[Range<usize>],
    ) -> Result<ArrayRef> {
        let name = "seen_before";
        let [value, ts] = values else {
            return exec_err!("{name} takes (value, ts)");
        };
        let micros = micros_of(name, ts)?;
        let keys = keys_of(value)?;
        let (mut times, mut rows) = (Vec::new(), Vec::new());
        // The earliest time of each value; rows come in time order, so the first is the earliest.
        let mut first_seen: HashMap<Row<'_>, i64> = HashMap::new();
        let mut out: Vec<Option<bool>> = vec![None; value.len()];
        for partition in partitions {
            sorted_times(name, &micros, partition, &mut times, &mut rows)?;
            first_seen.clear();
            for (&row, &time) in rows.iter().zip(&times) {
                let first = *first_seen.entry(keys.row(row)).or_insert(time);
                out[row] = Some(first < time);
            }
        }
        Ok(Arc::new(BooleanArray::from(out)))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct CarryForward {
    signature: Signature,
}

impl CarryForward {
    fn new() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl WindowUDFImpl for CarryForward {
    fn name(&self) -> &str {
        "carry_forward"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn field(&self, args: WindowUDFFieldArgs) -> Result<FieldRef> {
        let value = args.input_fields()[0].data_type().clone();
        Ok(Arc::new(Field::new(args.name(), value, true)))
    }

    fn partition_evaluator(
        &self,
        _args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(OnePartition(&CarryForwardEvaluator)))
    }
}

#[derive(Debug)]
struct CarryForwardEvaluator;

impl PartitionedWindow for CarryForwardEvaluator {
    fn evaluate_partitions(
        &self,
        values: &[ArrayRef],
        partitions: &[Range<usize>],
    ) -> Result<ArrayRef> {
        let [value, marker] = values else {
            return exec_err!("carry_forward takes (value, marker)");
        };
        if u32::try_from(value.len()).is_err() {
            return exec_err!("carry_forward: a partition holds more than 4 billion rows");
        }
        let mut positions = Vec::with_capacity(value.len());
        for partition in partitions {
            let mut latest: Option<u32> = None;
            for row in partition.clone() {
                if marker.is_valid(row) {
                    // In range: the batch has fewer than 2^32 rows (checked above).
                    latest = Some(row as u32);
                }
                positions.push(latest);
            }
        }
        Ok(take(value.as_ref(), &UInt32Array::from(positions), None)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{RecordBatch, StringArray, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::Schema;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::prelude::SessionContext;

    const MINUTE: i64 = 60_000_000;

    /// Two accounts; a's rows at 0, 0, 30, 60 and 61 minutes; b's at 10 minutes.
    fn session() -> SessionContext {
        let mut ctx = SessionContext::new();
        register(&mut ctx).expect("registers");
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("account", DataType::Utf8, false),
            Field::new("peer", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                false,
            ),
            Field::new("amount", DataType::Decimal128(10, 2), true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["p1", "p2", "p3", "p4", "p5", "p6"])),
                Arc::new(StringArray::from(vec!["a", "a", "a", "a", "a", "b"])),
                Arc::new(StringArray::from(vec![
                    Some("x"),
                    Some("y"),
                    Some("x"),
                    None,
                    Some("z"),
                    Some("x"),
                ])),
                Arc::new(TimestampMicrosecondArray::from(vec![
                    0,
                    0,
                    30 * MINUTE,
                    60 * MINUTE,
                    61 * MINUTE,
                    10 * MINUTE,
                ])),
                Arc::new(
                    Decimal128Array::from(vec![
                        Some(100),
                        Some(200),
                        None,
                        Some(400),
                        Some(500),
                        Some(600),
                    ])
                    .with_precision_and_scale(10, 2)
                    .expect("valid decimals"),
                ),
            ],
        )
        .expect("a valid batch");
        ctx.register_batch("payments", batch).expect("registers");
        ctx
    }

    async fn rows(ctx: &SessionContext, sql: &str) -> String {
        let batches = ctx
            .sql(sql)
            .await
            .expect("plans")
            .collect()
            .await
            .expect("runs");
        pretty_format_batches(&batches)
            .expect("formats")
            .to_string()
    }

    #[tokio::test]
    async fn trailing_sums_and_distinct_counts_exclude_the_same_instant_and_the_row_itself() {
        let ctx = session();
        let table = rows(
            &ctx,
            "SELECT id,
                trailing_sum(1, ts, 3600) OVER w AS n_1h,
                trailing_sum(amount, ts, 3600) OVER w AS s_1h,
                trailing_distinct(peer, ts, 3600) OVER w AS peers_1h
             FROM payments
             WINDOW w AS (PARTITION BY account ORDER BY ts)
             ORDER BY id",
        )
        .await;
        // p4 at 60 min: p1, p2 (at 0, the window's first instant) and p3; p5 at 61 min: p3, p4.
        let expected = "\
+----+------+------+----------+
| id | n_1h | s_1h | peers_1h |
+----+------+------+----------+
| p1 | 0    | 0.00 | 0        |
| p2 | 0    | 0.00 | 0        |
| p3 | 2    | 3.00 | 2        |
| p4 | 3    | 3.00 | 2        |
| p5 | 2    | 4.00 | 1        |
| p6 | 0    | 0.00 | 0        |
+----+------+------+----------+";
        assert_eq!(table, expected);
    }

    #[tokio::test]
    async fn seen_before_needs_the_same_value_at_a_strictly_earlier_time() {
        let ctx = session();
        let table = rows(
            &ctx,
            "SELECT id, seen_before(peer, ts) OVER (PARTITION BY account ORDER BY ts) AS seen
             FROM payments ORDER BY id",
        )
        .await;
        // p3 meets p1's x from an earlier time; p2's y and p5's z are new; p4's NULL is new.
        let expected = "\
+----+-------+
| id | seen  |
+----+-------+
| p1 | false |
| p2 | false |
| p3 | true  |
| p4 | false |
| p5 | false |
| p6 | false |
+----+-------+";
        assert_eq!(table, expected);
    }

    #[tokio::test]
    async fn carry_forward_takes_the_latest_marked_row_so_far() {
        let ctx = session();
        let table = rows(
            &ctx,
            "SELECT id, carry_forward(amount, peer) OVER (PARTITION BY account ORDER BY ts, id) AS last
             FROM payments ORDER BY id",
        )
        .await;
        // p3 is marked with a NULL amount: it is carried as NULL; p4 has no marker.
        let expected = "\
+----+------+
| id | last |
+----+------+
| p1 | 1.00 |
| p2 | 2.00 |
| p3 |      |
| p4 |      |
| p5 | 5.00 |
| p6 | 6.00 |
+----+------+";
        assert_eq!(table, expected);
    }

    #[tokio::test]
    async fn a_partition_out_of_time_order_is_an_error() {
        let ctx = session();
        let err = ctx
            .sql("SELECT trailing_sum(1, ts, 60) OVER (PARTITION BY account ORDER BY id DESC) FROM payments")
            .await
            .expect("plans")
            .collect()
            .await
            .expect_err("out of order");
        assert!(
            err.to_string().contains("ordered by the time argument"),
            "{err}"
        );
    }
}
