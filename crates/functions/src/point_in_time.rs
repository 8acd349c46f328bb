//! `point_in_time_features`: every point-in-time feature of a training payment, from one pass
//! over payments and account facts in time order.
//!
//! ```sql
//! point_in_time_features(is_payment, src_account_id, dest_account_id, amount, ts,
//!     fact_account_id, opening_date, account_known_at, risk_flag, risk_known_at)
//!     OVER (ORDER BY at, is_payment, tiebreak)
//! ```
//!
//! The rows are a stream of facts (`is_payment` false: an account snapshot row, with
//! `account_known_at`, or a risk batch row, with `risk_known_at`, about `fact_account_id`) and
//! payments, ordered by the instant they become known (`at`: a fact's `known_at`, a payment's
//! `ts`); at one instant facts come first, the later file last. For each payment the function
//! returns a struct of
//! - both accounts as known at the payment: the latest snapshot row and the latest risk row
//!   about each, at or before it (`src_opening_date`, `src_account_known_at`, `src_risk_flag`,
//!   `src_risk_known_at`, and the same for `dest_`);
//! - the source's payments and their amounts over the hour, day and week before, at instants
//!   in `[ts - width, ts)` (`src_count_1h`, `src_amount_1h`, ... `_24h`, `_7d`);
//! - whether the source paid this destination at an earlier instant (`pair_seen_before`);
//! - how many distinct sources paid the destination in `[ts - 24h, ts)`
//!   (`dest_distinct_senders_24h`).
//!
//! A NULL account is an account of its own, as it is for `PARTITION BY`. Fact rows get a NULL
//! struct.
//!
//! An optional eleventh argument, `follows_snapshots`, lets a snapshot row stand for the
//! account's rows in the snapshots after it: true, the account is known as of the latest
//! snapshot instant seen so far (the latest `account_known_at` of any account), until a later
//! row about the account replaces it. The caller passes only the rows where an account's
//! opening date changes or its snapshots stop being consecutive, and one row per instant (of
//! the 1.26M snapshot rows of 13 weekly snapshots of 100k accounts, those are about 200k).
//!
//! These are the values the per-account windows `carry_forward`, `trailing_sum`,
//! `trailing_distinct` and `seen_before` give over two sorts (one by destination, one by
//! source; the tests check both agree). Here the state is kept per account instead: the
//! latest facts, running counts and sums, and the payments of the last week in one queue, so
//! the rows need one order only, by time, which [`crate::TimeBucketedWindows`] gets without a
//! sort of the whole input. What it holds grows with the accounts and the pairs of accounts
//! that paid each other, not with the payments: the week's queue apart, a payment adds 8 bytes
//! only when it is the first between its two accounts.

use std::collections::VecDeque;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, Date32Array, Date32Builder,
    Decimal128Array, Int32Array, Int32Builder, Int64Array, PrimitiveArray, StringArray,
    StructArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Field, FieldRef, Fields, Int32Type, Int64Type,
    TimeUnit,
};
use datafusion::common::{exec_err, plan_err, DataFusionError, HashMap, HashSet, Result};
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{
    PartitionEvaluator, Signature, TypeSignature, Volatility, WindowUDFImpl,
};

/// The trailing windows of the source's payments, in microseconds: an hour, a day, a week.
const SOURCE_WINDOWS: [i64; 3] = [3_600_000_000, 86_400_000_000, 604_800_000_000];
/// The window of the destination's distinct senders: a day (`SOURCE_WINDOWS[1]`).
const SENDERS_WINDOW: usize = 1;

/// The function's name in SQL.
pub const NAME: &str = "point_in_time_features";

#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct PointInTimeFeatures {
    signature: Signature,
}

impl PointInTimeFeatures {
    pub(crate) fn new() -> Self {
        Self {
            signature: Signature::one_of(
                vec![TypeSignature::Any(10), TypeSignature::Any(11)],
                Volatility::Immutable,
            ),
        }
    }
}

/// The time zone of the knowledge times the function returns.
const KNOWN_AT_ZONE: &str = "UTC";

/// The struct's fields for amounts of `amount_type`.
fn feature_fields(amount_type: &DataType) -> Result<Fields> {
    let DataType::Decimal128(_, scale) = amount_type else {
        return plan_err!("{NAME}: the amount must be a DECIMAL, not {amount_type}");
    };
    let sum = DataType::Decimal128(38, *scale);
    // Knowledge times are instants: typed UTC here, so the Gold table's UTC columns take them
    // as they are. Naive, their cast to UTC went through arrow's local-time adjustment, a time
    // zone lookup per value (two such columns: 0.55 s of CPU each at 10M payments).
    let known_at = DataType::Timestamp(TimeUnit::Microsecond, Some(KNOWN_AT_ZONE.into()));
    let mut fields = Vec::new();
    for side in ["src", "dest"] {
        fields.push(Field::new(
            format!("{side}_opening_date"),
            DataType::Date32,
            true,
        ));
        fields.push(Field::new(
            format!("{side}_account_known_at"),
            known_at.clone(),
            true,
        ));
        fields.push(Field::new(
            format!("{side}_risk_flag"),
            DataType::Int32,
            true,
        ));
        fields.push(Field::new(
            format!("{side}_risk_known_at"),
            known_at.clone(),
            true,
        ));
    }
    for window in ["1h", "24h", "7d"] {
        fields.push(Field::new(
            format!("src_count_{window}"),
            DataType::Int64,
            true,
        ));
        fields.push(Field::new(
            format!("src_amount_{window}"),
            sum.clone(),
            true,
        ));
    }
    fields.push(Field::new("pair_seen_before", DataType::Boolean, true));
    fields.push(Field::new(
        "dest_distinct_senders_24h",
        DataType::Int64,
        true,
    ));
    Ok(fields.into())
}

impl WindowUDFImpl for PointInTimeFeatures {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn field(&self, args: WindowUDFFieldArgs) -> Result<FieldRef> {
        let fields = feature_fields(args.input_fields()[3].data_type())?;
        Ok(Arc::new(Field::new(
            args.name(),
            DataType::Struct(fields),
            true,
        )))
    }

    fn partition_evaluator(
        &self,
        _args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(WholeStream))
    }
}

/// DataFusion's evaluator: the whole (time-ordered) input at once.
#[derive(Debug)]
struct WholeStream;

impl PartitionEvaluator for WholeStream {
    fn evaluate_all(&mut self, values: &[ArrayRef], _num_rows: usize) -> Result<ArrayRef> {
        let rows = AccountKeys::default().resolve(values)?;
        WindowState::default().process(&rows)
    }
}

/// One entry of the queue of recent payments.
#[derive(Debug, Clone, Copy)]
struct Recent {
    ts: i64,
    src: u32,
    dest: u32,
    /// 0 for a NULL amount, which adds nothing to a sum (32 bytes an entry: the queue holds a
    /// week of payments).
    amount: i128,
}

/// The latest fact of one kind about an account: its value and when it was known.
type Latest = Option<(Option<i32>, i64)>;

/// One account's state.
#[derive(Debug, Clone, Copy, Default)]
struct AccountState {
    /// The payments it sent in each of `SOURCE_WINDOWS`, and their amounts.
    counts: [i64; 3],
    sums: [i128; 3],
    /// The distinct senders that paid it within the senders' window.
    senders: i64,
    account_fact: Latest,
    /// Whether `account_fact` follows the snapshots after it (`follows_snapshots`).
    account_follows: bool,
    risk_fact: Latest,
}

/// The first half of the pass: the rows' accounts as dense ids, and whether each payment's
/// source paid its destination at an earlier instant. Both depend on the order of the rows
/// only, not on the facts or the windows, so [`crate::TimeBucketedWindows`] resolves a day's
/// rows a piece ahead of [`WindowState`] (at 10M payments these hash lookups
/// were a third of the pass, which runs on one core).
#[derive(Debug, Default)]
pub(crate) struct AccountKeys {
    /// Account ids as dense numbers; 0 is the NULL account.
    ids: HashMap<Box<str>, u32>,
    /// The bytes of the ids' names.
    id_bytes: usize,
    /// The destinations each source (by id) has paid, and the (source, destination) pairs that
    /// paid for the first time at the latest instant (a pair seen only there was not seen
    /// before it).
    paid: Vec<Destinations>,
    paid_bytes: usize,
    pairs_new_now: HashSet<u64>,
    last_time: Option<i64>,
}

/// The destinations one source has paid. A short list, scanned: most accounts pay a few
/// hundred others at most, and one hash set of every pair (10M payments between 100k
/// accounts: ~10M pairs) took 150 MB and a cache miss per payment, plus the rehashes as it
/// grew. A source that pays more than [`Destinations::LIST_LIMIT`] gets a hash set.
#[derive(Debug)]
enum Destinations {
    List(Vec<u32>),
    Set(HashSet<u32>),
}

impl Default for Destinations {
    fn default() -> Self {
        Self::List(Vec::new())
    }
}

impl Destinations {
    const LIST_LIMIT: usize = 512;

    /// Adds `dest`; true if it was not there yet.
    fn insert(&mut self, dest: u32) -> bool {
        match self {
            Self::List(list) => {
                // In chunks compared without branches, which the compiler vectorizes.
                let mut chunks = list.chunks_exact(16);
                let found = chunks.by_ref().any(|chunk| {
                    chunk
                        .iter()
                        .fold(false, |found, &paid| found | (paid == dest))
                });
                if found || chunks.remainder().contains(&dest) {
                    return false;
                }
                if list.len() < Self::LIST_LIMIT {
                    list.push(dest);
                } else {
                    let mut set: HashSet<u32> = list.drain(..).collect();
                    set.insert(dest);
                    *self = Self::Set(set);
                }
                true
            }
            Self::Set(set) => set.insert(dest),
        }
    }

    /// About the bytes it holds.
    fn allocated(&self) -> usize {
        match self {
            Self::List(list) => list.capacity() * 4,
            Self::Set(set) => set.capacity() * table_entry(4),
        }
    }
}

/// One call's rows, typed, with their accounts resolved by [`AccountKeys::resolve`].
pub(crate) struct KeyedRows {
    inputs: Inputs,
    /// A payment's source, or a fact's account.
    account: Vec<u32>,
    /// A payment's destination (0 for a fact).
    dest: Vec<u32>,
    /// A payment's `pair_seen_before` (false for a fact).
    pair_seen_before: Vec<bool>,
}

/// The second half of the pass: what is known after the rows so far. Rows arrive in time
/// order, possibly over several calls of [`WindowState::process`] (one per day of rows, from
/// [`crate::TimeBucketedWindows`]).
#[derive(Debug, Default)]
pub(crate) struct WindowState {
    /// What is known of each account, by id: one record each, so that a payment leaving a
    /// window updates one place in memory, not one per array (those updates were most of the
    /// pass's cache misses at 10M payments).
    accounts: Vec<AccountState>,
    /// The payments of the widest window, in time order; `base` is the absolute position of
    /// its first, `fronts[w]` that of the first still inside window `w`.
    recent: VecDeque<Recent>,
    base: u64,
    fronts: [u64; 3],
    /// (destination, sender) pairs within the senders' window, with their payments.
    window_pairs: HashMap<u64, u32>,
    /// Payments at the latest instant, added to the windows once time moves past it: a payment
    /// counts only for payments at later instants.
    pending: Vec<Recent>,
    last_time: Option<i64>,
    /// The latest `account_known_at` of any account's snapshot row so far.
    latest_snapshot: Option<i64>,
}

/// How many rows (or queued payments) ahead the pass asks for the accounts it will touch.
const PREFETCH_DISTANCE: usize = 8;

/// Asks the CPU to start loading `item` into its cache. The pass is bound by memory latency:
/// each payment touches its two accounts and, as it leaves each window, its source's again,
/// all at random among ~100k accounts' records (14 MB); the rows and the queue say which ones
/// are next, so their loads can overlap instead of coming one after another.
#[inline(always)]
fn prefetch<T>(item: Option<&T>) {
    #[cfg(target_arch = "x86_64")]
    if let Some(item) = item {
        // SAFETY: a prefetch is a hint: it reads no value and cannot fault, whatever the
        // address (here, a live reference's).
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                (item as *const T).cast(),
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = item;
}

fn pair(first: u32, second: u32) -> u64 {
    (u64::from(first) << 32) | u64::from(second)
}

/// The columns of one call, typed.
struct Inputs {
    is_payment: BooleanArray,
    src: StringArray,
    dest: StringArray,
    amount: Decimal128Array,
    ts: Int64Array,
    fact_account: StringArray,
    opening_date: Date32Array,
    account_known_at: Int64Array,
    risk_flag: Int32Array,
    risk_known_at: Int64Array,
    /// `follows_snapshots`, when given.
    follows_snapshots: Option<BooleanArray>,
}

fn strings(name: &str, array: &ArrayRef) -> Result<StringArray> {
    match array.data_type() {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null => {
            Ok(cast(array, &DataType::Utf8)?.as_string::<i32>().clone())
        }
        other => exec_err!("{NAME}: {name} must be text, not {other}"),
    }
}

fn micros(name: &str, array: &ArrayRef) -> Result<Int64Array> {
    let micros = match array.data_type() {
        DataType::Timestamp(_, zone) => cast(
            array,
            &DataType::Timestamp(TimeUnit::Microsecond, zone.clone()),
        )?,
        DataType::Null => cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))?,
        other => return exec_err!("{NAME}: {name} must be a timestamp, not {other}"),
    };
    Ok(cast(&micros, &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

impl Inputs {
    fn new(values: &[ArrayRef]) -> Result<Self> {
        let (values, follows_snapshots) = match values {
            [values @ .., follows] if values.len() == 10 => (values, Some(follows)),
            values => (values, None),
        };
        let [is_payment, src, dest, amount, ts, fact_account, opening_date, account_known_at, risk_flag, risk_known_at] =
            values
        else {
            return exec_err!(
                "{NAME} takes (is_payment, src_account_id, dest_account_id, amount, ts, \
                 fact_account_id, opening_date, account_known_at, risk_flag, risk_known_at \
                 [, follows_snapshots])"
            );
        };
        let DataType::Decimal128(_, _) = amount.data_type() else {
            return exec_err!("{NAME}: the amount must be a DECIMAL");
        };
        Ok(Self {
            is_payment: cast(is_payment, &DataType::Boolean)?.as_boolean().clone(),
            src: strings("src_account_id", src)?,
            dest: strings("dest_account_id", dest)?,
            amount: amount.as_primitive().clone(),
            ts: micros("ts", ts)?,
            fact_account: strings("fact_account_id", fact_account)?,
            opening_date: cast(opening_date, &DataType::Date32)?
                .as_primitive::<Date32Type>()
                .clone(),
            account_known_at: micros("account_known_at", account_known_at)?,
            risk_flag: cast(risk_flag, &DataType::Int32)?
                .as_primitive::<Int32Type>()
                .clone(),
            risk_known_at: micros("risk_known_at", risk_known_at)?,
            follows_snapshots: follows_snapshots
                .map(|follows| {
                    Ok::<_, DataFusionError>(
                        cast(follows, &DataType::Boolean)?.as_boolean().clone(),
                    )
                })
                .transpose()?,
        })
    }
}

/// The value at `row`, or `None` for NULL.
fn value<T: ArrowPrimitiveType>(array: &PrimitiveArray<T>, row: usize) -> Option<T::Native> {
    array.is_valid(row).then(|| array.value(row))
}

/// The features of one payment, gathered row by row into the output columns. The columns a
/// payment always has (counts, sums, `pair_seen_before`, senders) are plain values, NULL where
/// the struct is (a fact's row); the others have builders of their own.
struct Columns {
    valid: BooleanBufferBuilder,
    opening_date: [Date32Builder; 2],
    account_known_at: [TimestampMicrosecondBuilder; 2],
    risk_flag: [Int32Builder; 2],
    risk_known_at: [TimestampMicrosecondBuilder; 2],
    counts: [Vec<i64>; 3],
    sums: [Vec<i128>; 3],
    pair_seen_before: BooleanBufferBuilder,
    senders: Vec<i64>,
}

impl Columns {
    fn with_capacity(rows: usize) -> Self {
        let timestamps = || {
            [
                TimestampMicrosecondBuilder::with_capacity(rows).with_timezone(KNOWN_AT_ZONE),
                TimestampMicrosecondBuilder::with_capacity(rows).with_timezone(KNOWN_AT_ZONE),
            ]
        };
        Self {
            valid: BooleanBufferBuilder::new(rows),
            opening_date: [
                Date32Builder::with_capacity(rows),
                Date32Builder::with_capacity(rows),
            ],
            account_known_at: timestamps(),
            risk_flag: [
                Int32Builder::with_capacity(rows),
                Int32Builder::with_capacity(rows),
            ],
            risk_known_at: timestamps(),
            counts: std::array::from_fn(|_| Vec::with_capacity(rows)),
            sums: std::array::from_fn(|_| Vec::with_capacity(rows)),
            pair_seen_before: BooleanBufferBuilder::new(rows),
            senders: Vec::with_capacity(rows),
        }
    }

    fn push_null(&mut self) {
        self.valid.append(false);
        for side in 0..2 {
            self.opening_date[side].append_null();
            self.account_known_at[side].append_null();
            self.risk_flag[side].append_null();
            self.risk_known_at[side].append_null();
        }
        for window in 0..3 {
            self.counts[window].push(0);
            self.sums[window].push(0);
        }
        self.pair_seen_before.append(false);
        self.senders.push(0);
    }

    fn finish(mut self, fields: Fields) -> Result<ArrayRef> {
        let DataType::Decimal128(precision, scale) = fields[9].data_type().clone() else {
            return exec_err!("{NAME}: the sums must be decimals");
        };
        let nulls = NullBuffer::new(self.valid.finish());
        let mut arrays: Vec<ArrayRef> = Vec::new();
        for side in 0..2 {
            arrays.push(Arc::new(self.opening_date[side].finish()));
            arrays.push(Arc::new(self.account_known_at[side].finish()));
            arrays.push(Arc::new(self.risk_flag[side].finish()));
            arrays.push(Arc::new(self.risk_known_at[side].finish()));
        }
        for (counts, sums) in self.counts.into_iter().zip(self.sums) {
            arrays.push(Arc::new(Int64Array::new(
                counts.into(),
                Some(nulls.clone()),
            )));
            arrays.push(Arc::new(
                Decimal128Array::new(sums.into(), Some(nulls.clone()))
                    .with_precision_and_scale(precision, scale)?,
            ));
        }
        arrays.push(Arc::new(BooleanArray::new(
            self.pair_seen_before.finish(),
            Some(nulls.clone()),
        )));
        arrays.push(Arc::new(Int64Array::new(
            self.senders.into(),
            Some(nulls.clone()),
        )));
        Ok(Arc::new(StructArray::try_new(fields, arrays, Some(nulls))?))
    }
}

/// A hash table entry with its control byte, at the load factor it grows at.
fn table_entry(key: usize) -> usize {
    (key + 1) * 8 / 7
}

/// The time of payment `row`, checked to come in time order after `last`.
fn payment_time(inputs: &Inputs, row: usize, last: Option<i64>) -> Result<i64> {
    let Some(time) = value(&inputs.ts, row) else {
        return exec_err!("{NAME}: a payment has no time");
    };
    if last.is_some_and(|last| time < last) {
        return exec_err!(
            "{NAME}: payments must come in time order (ORDER BY at, is_payment, tiebreak)"
        );
    }
    Ok(time)
}

fn is_payment(inputs: &Inputs, row: usize) -> bool {
    inputs.is_payment.is_valid(row) && inputs.is_payment.value(row)
}

impl AccountKeys {
    /// About the bytes it holds, for the memory pool.
    pub(crate) fn allocated(&self) -> usize {
        self.ids.capacity() * table_entry(16 + 4)
            + self.id_bytes
            + self.paid.capacity() * std::mem::size_of::<Destinations>()
            + self.paid_bytes
            + self.pairs_new_now.capacity() * table_entry(8)
    }

    /// The dense id of `account` (0 for NULL), adding it on first sight.
    fn id(&mut self, account: Option<&str>) -> u32 {
        let Some(account) = account else { return 0 };
        if let Some(&id) = self.ids.get(account) {
            return id;
        }
        let id = self.ids.len() as u32 + 1;
        self.ids.insert(account.into(), id);
        self.id_bytes += account.len();
        id
    }

    /// Records that `src` paid `dest`; true if it had not before.
    fn first_payment(&mut self, src: u32, dest: u32) -> bool {
        let index = src as usize;
        if self.paid.len() <= index {
            self.paid.resize_with(index + 1, Destinations::default);
        }
        let destinations = &mut self.paid[index];
        let before = destinations.allocated();
        let first = destinations.insert(dest);
        self.paid_bytes = self.paid_bytes - before + destinations.allocated();
        first
    }

    /// The accounts of every row of `values` (the function's arguments, rows in time order),
    /// carrying on from the rows of earlier calls.
    pub(crate) fn resolve(&mut self, values: &[ArrayRef]) -> Result<KeyedRows> {
        let inputs = Inputs::new(values)?;
        let rows = inputs.is_payment.len();
        let mut account = Vec::with_capacity(rows);
        let mut dest = Vec::with_capacity(rows);
        let mut pair_seen_before = Vec::with_capacity(rows);
        for row in 0..rows {
            if !is_payment(&inputs, row) {
                let fact = &inputs.fact_account;
                account.push(self.id(fact.is_valid(row).then(|| fact.value(row))));
                dest.push(0);
                pair_seen_before.push(false);
                continue;
            }
            let time = payment_time(&inputs, row, self.last_time)?;
            if self.last_time.is_some_and(|last| time > last) {
                self.pairs_new_now.clear();
            }
            self.last_time = Some(time);
            let src = self.id(inputs.src.is_valid(row).then(|| inputs.src.value(row)));
            let to = self.id(inputs.dest.is_valid(row).then(|| inputs.dest.value(row)));
            // Recorded now, and told apart from a pair first seen at this same instant by the
            // (small) set of those.
            let key = pair(src, to);
            let seen_before = if self.first_payment(src, to) {
                self.pairs_new_now.insert(key);
                false
            } else {
                !self.pairs_new_now.contains(&key)
            };
            account.push(src);
            dest.push(to);
            pair_seen_before.push(seen_before);
        }
        Ok(KeyedRows {
            inputs,
            account,
            dest,
            pair_seen_before,
        })
    }
}

impl WindowState {
    /// About the bytes it holds, for the memory pool.
    pub(crate) fn allocated(&self) -> usize {
        self.accounts.capacity() * std::mem::size_of::<AccountState>()
            + (self.recent.capacity() + self.pending.capacity()) * std::mem::size_of::<Recent>()
            + self.window_pairs.capacity() * table_entry(12)
    }

    /// Makes room in the per-account vectors for `id`.
    fn grow_to(&mut self, id: u32) {
        let len = id as usize + 1;
        if self.accounts.len() < len {
            self.accounts.resize(len, AccountState::default());
        }
    }
    /// Adds the payments of the latest instant to the windows.
    fn flush_pending(&mut self) {
        // Taken and put back emptied: its allocation serves the next instant.
        let pending = std::mem::take(&mut self.pending);
        for &payment in &pending {
            let source = &mut self.accounts[payment.src as usize];
            for window in 0..3 {
                source.counts[window] += 1;
                source.sums[window] += payment.amount;
            }
            // A NULL source (account 0) is no sender.
            if payment.src != 0 {
                let in_window = self
                    .window_pairs
                    .entry(pair(payment.dest, payment.src))
                    .or_insert(0);
                *in_window += 1;
                if *in_window == 1 {
                    self.accounts[payment.dest as usize].senders += 1;
                }
            }
            self.recent.push_back(payment);
        }
        self.pending = pending;
        self.pending.clear();
    }

    /// Drops from each window the payments before `time - width`.
    fn evict_before(&mut self, time: i64) {
        let end = self.base + self.recent.len() as u64;
        for (window, width) in SOURCE_WINDOWS.iter().enumerate() {
            let from = time.saturating_sub(*width);
            while self.fronts[window] < end {
                let position = (self.fronts[window] - self.base) as usize;
                if let Some(later) = self.recent.get(position + PREFETCH_DISTANCE) {
                    prefetch(self.accounts.get(later.src as usize));
                }
                let payment = self.recent[position];
                if payment.ts >= from {
                    break;
                }
                let source = &mut self.accounts[payment.src as usize];
                source.counts[window] -= 1;
                source.sums[window] -= payment.amount;
                if window == SENDERS_WINDOW && payment.src != 0 {
                    let key = pair(payment.dest, payment.src);
                    if let Some(in_window) = self.window_pairs.get_mut(&key) {
                        *in_window -= 1;
                        if *in_window == 0 {
                            self.window_pairs.remove(&key);
                            self.accounts[payment.dest as usize].senders -= 1;
                        }
                    }
                }
                self.fronts[window] += 1;
            }
        }
        // The widest window's front is the earliest: everything before it is out of all.
        let widest = self.fronts.iter().copied().min().unwrap_or(self.base);
        while self.base < widest {
            self.recent.pop_front();
            self.base += 1;
        }
    }

    /// The features of every row of `rows` (rows in time order, resolved by one
    /// [`AccountKeys`] from the first call on), carrying on from the rows of earlier calls.
    pub(crate) fn process(&mut self, rows: &KeyedRows) -> Result<ArrayRef> {
        let inputs = &rows.inputs;
        let fields = feature_fields(inputs.amount.data_type())?;
        let count = inputs.is_payment.len();
        let mut out = Columns::with_capacity(count);
        for row in 0..count {
            if !is_payment(inputs, row) {
                let id = rows.account[row];
                self.grow_to(id);
                if let Some(known_at) = value(&inputs.account_known_at, row) {
                    let account = &mut self.accounts[id as usize];
                    account.account_fact = Some((value(&inputs.opening_date, row), known_at));
                    account.account_follows = inputs
                        .follows_snapshots
                        .as_ref()
                        .is_some_and(|follows| follows.is_valid(row) && follows.value(row));
                    self.latest_snapshot = self.latest_snapshot.max(Some(known_at));
                }
                if let Some(known_at) = value(&inputs.risk_known_at, row) {
                    self.accounts[id as usize].risk_fact =
                        Some((value(&inputs.risk_flag, row), known_at));
                }
                out.push_null();
                continue;
            }
            let time = payment_time(inputs, row, self.last_time)?;
            if let (Some(src), Some(dest)) = (
                rows.account.get(row + PREFETCH_DISTANCE),
                rows.dest.get(row + PREFETCH_DISTANCE),
            ) {
                prefetch(self.accounts.get(*src as usize));
                prefetch(self.accounts.get(*dest as usize));
            }
            if self.last_time.is_some_and(|last| time > last) {
                self.flush_pending();
            }
            self.last_time = Some(time);
            self.evict_before(time);
            let (src, dest) = (rows.account[row], rows.dest[row]);
            self.grow_to(src.max(dest));
            out.valid.append(true);
            for (side, id) in [src, dest].into_iter().enumerate() {
                let state = &self.accounts[id as usize];
                let account = state.account_fact;
                let latest = self.latest_snapshot;
                out.opening_date[side].append_option(account.and_then(|(opening, _)| opening));
                out.account_known_at[side].append_option(account.map(|(_, known_at)| {
                    if state.account_follows {
                        latest.map_or(known_at, |latest| latest.max(known_at))
                    } else {
                        known_at
                    }
                }));
                let risk = self.accounts[id as usize].risk_fact;
                out.risk_flag[side].append_option(risk.and_then(|(flag, _)| flag));
                out.risk_known_at[side].append_option(risk.map(|(_, known_at)| known_at));
            }
            let source = &self.accounts[src as usize];
            for window in 0..3 {
                out.counts[window].push(source.counts[window]);
                out.sums[window].push(source.sums[window]);
            }
            out.pair_seen_before.append(rows.pair_seen_before[row]);
            out.senders.push(self.accounts[dest as usize].senders);
            self.pending.push(Recent {
                ts: time,
                src,
                dest,
                amount: value(&inputs.amount, row).unwrap_or(0),
            });
        }
        out.finish(fields)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{
        Date32Array, Decimal128Array, Int32Array, RecordBatch, StringArray,
        TimestampMicrosecondArray,
    };
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::execution::memory_pool::FairSpillPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_plan::{collect, ExecutionPlan};
    use datafusion::prelude::{SessionConfig, SessionContext};
    use std::sync::Arc;

    const MINUTE: i64 = 60_000_000;

    /// Account ids, also ones that differ only in their last bytes or by a trailing zero byte,
    /// each get an id of their own, and the same one again; NULL is 0.
    #[test]
    fn account_ids_get_dense_ids_of_their_own() {
        let mut keys = super::AccountKeys::default();
        let names = [
            "a",
            "a\0",
            "",
            "ACC0000001",
            "0123456789012345678901",
            "0123456789012345678901x",
            "0123456789012345678901y",
        ];
        let ids: Vec<u32> = names.iter().map(|name| keys.id(Some(name))).collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5, 6, 7]);
        let again: Vec<u32> = names.iter().map(|name| keys.id(Some(name))).collect();
        assert_eq!(again, ids);
        assert_eq!(keys.id(None), 0);
        assert_eq!(keys.id_bytes, 81);
    }

    /// A source's destinations answer alike in a list and, past its limit, in a hash set, and
    /// are counted for the pool as they grow.
    #[test]
    fn destinations_paid_are_remembered_past_the_list_limit() {
        let mut keys = super::AccountKeys::default();
        let limit = super::Destinations::LIST_LIMIT as u32;
        for dest in 0..limit + 100 {
            assert!(keys.first_payment(3, dest), "{dest} is new");
            assert!(!keys.first_payment(3, dest), "{dest} was paid");
        }
        assert!(matches!(keys.paid[3], super::Destinations::Set(_)));
        assert!(matches!(keys.paid[0], super::Destinations::List(_)));
        for dest in (0..limit + 100).step_by(7) {
            assert!(!keys.first_payment(3, dest));
        }
        assert!(keys.first_payment(0, 5));
        assert!(keys.first_payment(3, limit + 100));
        let bytes: usize = keys.paid.iter().map(|paid| paid.allocated()).sum();
        assert_eq!(keys.paid_bytes, bytes);
        assert!(keys.allocated() >= bytes);
    }

    /// A small deterministic generator (no dependency for tests this size).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    /// Payments and facts about eight accounts (and NULL) over ten days, at half hours so
    /// that many share an instant, with NULL accounts and amounts, self-transfers, facts at
    /// the instant of payments and two files' facts at one instant.
    fn stream(rows: usize) -> RecordBatch {
        let mut random = Lcg(7);
        let account = |random: &mut Lcg| match random.below(10) {
            0 => None,
            n => Some(format!("a{}", n % 8)),
        };
        let utc = Some("UTC".into());
        let (mut payment_id, mut src, mut dest, mut amount, mut ts) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut at, mut tiebreak, mut fact_account) = (vec![], vec![], vec![]);
        let (mut opening, mut known, mut flag, mut risk_known) = (vec![], vec![], vec![], vec![]);
        for row in 0..rows {
            let time = random.below(10 * 48) as i64 * 30 * MINUTE;
            at.push(time);
            if random.below(5) == 0 {
                payment_id.push(None);
                src.push(None);
                dest.push(None);
                amount.push(None);
                ts.push(None);
                // A file per fact: facts of one file about one account at one instant have no order.
                tiebreak.push(Some(format!("f{}-{row:06}", random.below(3))));
                fact_account.push(account(&mut random));
                let is_snapshot = random.below(2) == 0;
                opening
                    .push((is_snapshot && random.below(4) != 0).then(|| random.below(100) as i32));
                known.push(is_snapshot.then_some(time));
                flag.push((!is_snapshot && random.below(4) != 0).then(|| random.below(3) as i32));
                risk_known.push((!is_snapshot).then_some(time));
            } else {
                payment_id.push(Some(format!("p{row:06}")));
                src.push(account(&mut random));
                dest.push(account(&mut random));
                amount.push((random.below(8) != 0).then(|| random.below(100_000) as i128));
                ts.push(Some(time));
                tiebreak.push(Some(String::new()));
                fact_account.push(None);
                opening.push(None);
                known.push(None);
                flag.push(None);
                risk_known.push(None);
            }
        }
        let timestamp = |zone: Option<Arc<str>>| DataType::Timestamp(TimeUnit::Microsecond, zone);
        let schema = Arc::new(Schema::new(vec![
            Field::new("payment_id", DataType::Utf8, true),
            Field::new("src_account_id", DataType::Utf8, true),
            Field::new("dest_account_id", DataType::Utf8, true),
            Field::new("amount", DataType::Decimal128(18, 2), true),
            Field::new("ts", timestamp(utc.clone()), true),
            Field::new("at", timestamp(utc.clone()), false),
            Field::new("tiebreak", DataType::Utf8, false),
            Field::new("fact_account_id", DataType::Utf8, true),
            Field::new("opening_date", DataType::Date32, true),
            Field::new("account_known_at", timestamp(None), true),
            Field::new("risk_flag", DataType::Int32, true),
            Field::new("risk_known_at", timestamp(None), true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(payment_id)),
                Arc::new(StringArray::from(src)),
                Arc::new(StringArray::from(dest)),
                Arc::new(
                    Decimal128Array::from(amount)
                        .with_precision_and_scale(18, 2)
                        .expect("decimal"),
                ),
                Arc::new(TimestampMicrosecondArray::from(ts).with_timezone_opt(utc.clone())),
                Arc::new(TimestampMicrosecondArray::from(at).with_timezone_opt(utc)),
                Arc::new(StringArray::from(tiebreak)),
                Arc::new(StringArray::from(fact_account)),
                Arc::new(Date32Array::from(opening)),
                Arc::new(TimestampMicrosecondArray::from(known)),
                Arc::new(Int32Array::from(flag)),
                Arc::new(TimestampMicrosecondArray::from(risk_known)),
            ],
        )
        .expect("stream batch")
    }

    /// The features as the per-account windows compute them: two sorted passes, the model this
    /// function replaced.
    const BY_ACCOUNT: &str = "
        WITH s AS (
            SELECT payment_id, COALESCE(src_account_id, fact_account_id) AS src_account_id,
                COALESCE(dest_account_id, fact_account_id) AS dest_account_id, amount, ts, at,
                tiebreak, opening_date, account_known_at, risk_flag, risk_known_at
            FROM stream
        ),
        d AS (
            SELECT *,
                carry_forward(opening_date, account_known_at) OVER w AS dest_opening_date,
                carry_forward(account_known_at, account_known_at) OVER w AS dest_account_known_at,
                carry_forward(risk_flag, risk_known_at) OVER w AS dest_risk_flag,
                carry_forward(risk_known_at, risk_known_at) OVER w AS dest_risk_known_at,
                trailing_distinct(src_account_id, ts, 86400) OVER w AS dest_distinct_senders_24h
            FROM s
            WINDOW w AS (PARTITION BY dest_account_id ORDER BY at, payment_id IS NOT NULL, tiebreak)
        ),
        b AS (
            SELECT payment_id,
                carry_forward(opening_date, account_known_at) OVER w AS src_opening_date,
                carry_forward(account_known_at, account_known_at) OVER w AS src_account_known_at,
                carry_forward(risk_flag, risk_known_at) OVER w AS src_risk_flag,
                carry_forward(risk_known_at, risk_known_at) OVER w AS src_risk_known_at,
                dest_opening_date, dest_account_known_at, dest_risk_flag, dest_risk_known_at,
                trailing_sum(1, ts, 3600) OVER w AS src_count_1h,
                trailing_sum(amount, ts, 3600) OVER w AS src_amount_1h,
                trailing_sum(1, ts, 86400) OVER w AS src_count_24h,
                trailing_sum(amount, ts, 86400) OVER w AS src_amount_24h,
                trailing_sum(1, ts, 604800) OVER w AS src_count_7d,
                trailing_sum(amount, ts, 604800) OVER w AS src_amount_7d,
                seen_before(dest_account_id, ts) OVER w AS pair_seen_before,
                dest_distinct_senders_24h
            FROM d
            WINDOW w AS (PARTITION BY src_account_id ORDER BY at, payment_id IS NOT NULL, tiebreak)
        )
        SELECT * FROM b WHERE payment_id IS NOT NULL ORDER BY payment_id";

    const IN_TIME_ORDER: &str = "
        WITH f AS (
            SELECT payment_id, point_in_time_features(payment_id IS NOT NULL, src_account_id,
                dest_account_id, amount, ts, fact_account_id, opening_date, account_known_at,
                risk_flag, risk_known_at) OVER (ORDER BY at, payment_id IS NOT NULL, tiebreak) AS f
            FROM stream
        )
        SELECT payment_id, get_field(f, 'src_opening_date') AS src_opening_date,
            -- Knowledge times come out typed UTC; the reference's are naive, same instants.
            arrow_cast(get_field(f, 'src_account_known_at'), 'Timestamp(Microsecond, None)')
                AS src_account_known_at,
            get_field(f, 'src_risk_flag') AS src_risk_flag,
            arrow_cast(get_field(f, 'src_risk_known_at'), 'Timestamp(Microsecond, None)')
                AS src_risk_known_at,
            get_field(f, 'dest_opening_date') AS dest_opening_date,
            arrow_cast(get_field(f, 'dest_account_known_at'), 'Timestamp(Microsecond, None)')
                AS dest_account_known_at,
            get_field(f, 'dest_risk_flag') AS dest_risk_flag,
            arrow_cast(get_field(f, 'dest_risk_known_at'), 'Timestamp(Microsecond, None)')
                AS dest_risk_known_at,
            get_field(f, 'src_count_1h') AS src_count_1h,
            get_field(f, 'src_amount_1h') AS src_amount_1h,
            get_field(f, 'src_count_24h') AS src_count_24h,
            get_field(f, 'src_amount_24h') AS src_amount_24h,
            get_field(f, 'src_count_7d') AS src_count_7d,
            get_field(f, 'src_amount_7d') AS src_amount_7d,
            get_field(f, 'pair_seen_before') AS pair_seen_before,
            get_field(f, 'dest_distinct_senders_24h') AS dest_distinct_senders_24h
        FROM f WHERE payment_id IS NOT NULL ORDER BY payment_id";

    /// A session over `batch` (as four partitions), with the day-bucketed window when
    /// `by_day`, in a pool of `limit` bytes.
    fn session(batch: &RecordBatch, by_day: bool, limit: usize) -> SessionContext {
        session_with_batches(batch, by_day, limit, 512)
    }

    /// [`session`] with batches (and the window's pieces of a day) of `batch_size` rows.
    fn session_with_batches(
        batch: &RecordBatch,
        by_day: bool,
        limit: usize,
        batch_size: usize,
    ) -> SessionContext {
        // As paylake's engine: spilling operators share what the others leave.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(limit)))
            .build_arc()
            .expect("runtime");
        let mut state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(
                SessionConfig::new()
                    .with_target_partitions(2)
                    .with_batch_size(batch_size)
                    .with_sort_spill_reservation_bytes(64 << 10),
            )
            .with_runtime_env(runtime);
        if by_day {
            state = state.with_physical_optimizer_rule(Arc::new(crate::TimeBucketedWindows));
        }
        let mut ctx = SessionContext::new_with_state(state.build());
        crate::register(&mut ctx).expect("registers");
        let quarter = batch.num_rows() / 4;
        let parts = (0..4)
            .map(|i| {
                let len = if i == 3 {
                    batch.num_rows() - 3 * quarter
                } else {
                    quarter
                };
                vec![batch.slice(i * quarter, len)]
            })
            .collect();
        let table = MemTable::try_new(batch.schema(), parts).expect("table");
        ctx.register_table("stream", Arc::new(table))
            .expect("register");
        ctx
    }

    async fn run(ctx: &SessionContext, sql: &str) -> (String, Arc<dyn ExecutionPlan>) {
        let plan = ctx
            .sql(sql)
            .await
            .expect("plans")
            .create_physical_plan()
            .await
            .expect("physical plan");
        let batches = collect(Arc::clone(&plan), ctx.task_ctx())
            .await
            .expect("runs");
        let text = pretty_format_batches(&batches)
            .expect("formats")
            .to_string();
        (text, plan)
    }

    /// Equal tables, or the first row that differs, with the header.
    fn assert_same_rows(actual: &str, expected: &str, what: &str) {
        let header = expected.lines().nth(1).unwrap_or_default();
        for (line, (a, e)) in actual.lines().zip(expected.lines()).enumerate() {
            assert_eq!(a, e, "{what}: line {line} differs\n{header}");
        }
        assert_eq!(
            actual.lines().count(),
            expected.lines().count(),
            "{what}: rows"
        );
    }

    fn spills_of(plan: &Arc<dyn ExecutionPlan>) -> usize {
        let own = if plan.name() == "TimeBucketedWindowExec" {
            plan.metrics().and_then(|m| m.spill_count()).unwrap_or(0)
        } else {
            0
        };
        own + plan.children().into_iter().map(spills_of).sum::<usize>()
    }

    #[tokio::test]
    async fn one_time_ordered_pass_equals_the_per_account_windows() {
        let batch = stream(6000);
        let limit = 256 << 20;
        let (expected, _) = run(&session(&batch, false, limit), BY_ACCOUNT).await;
        let (sorted_whole, _) = run(&session(&batch, false, limit), IN_TIME_ORDER).await;
        let (by_day, plan) = run(&session(&batch, true, limit), IN_TIME_ORDER).await;
        assert!(expected.lines().count() > 4000, "most rows are payments");
        assert_same_rows(&sorted_whole, &expected, "one sort of the whole stream");
        assert_same_rows(&by_day, &expected, "the stream ordered by day");
        assert_eq!(spills_of(&plan), 0, "fits its pool");
    }

    #[tokio::test]
    async fn the_day_buckets_spill_under_a_small_pool_with_the_same_features() {
        let batch = stream(40_000);
        let (expected, _) = run(&session(&batch, false, 256 << 20), IN_TIME_ORDER).await;
        let (by_day, plan) = run(&session(&batch, true, 8 << 20), IN_TIME_ORDER).await;
        assert_same_rows(&by_day, &expected, "spilled");
        assert!(spills_of(&plan) > 0, "the buffer spilled");
    }

    /// A day goes through the function in pieces of a batch: pieces of 7 rows split many
    /// instants (about four rows each) between two calls.
    #[tokio::test]
    async fn pieces_of_a_day_that_split_an_instant_give_the_same_features() {
        let batch = stream(2000);
        let (expected, _) = run(&session(&batch, false, 256 << 20), IN_TIME_ORDER).await;
        let ctx = session_with_batches(&batch, true, 256 << 20, 7);
        let (in_pieces, plan) = run(&ctx, IN_TIME_ORDER).await;
        assert_same_rows(&in_pieces, &expected, "in pieces of 7 rows");
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        assert!(shown.contains("TimeBucketedWindowExec"), "{shown}");
    }

    #[tokio::test]
    async fn payments_out_of_time_order_are_an_error() {
        let batch = stream(200);
        let ctx = session(&batch, false, 256 << 20);
        let result = ctx
            .sql(
                "SELECT point_in_time_features(payment_id IS NOT NULL, src_account_id,
                    dest_account_id, amount, ts, fact_account_id, opening_date,
                    account_known_at, risk_flag, risk_known_at) OVER (ORDER BY payment_id DESC)
                 FROM stream",
            )
            .await
            .expect("plans")
            .collect()
            .await;
        let error = result.expect_err("out of order").to_string();
        assert!(error.contains("time order"), "{error}");
    }
}
