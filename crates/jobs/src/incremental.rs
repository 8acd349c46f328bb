//! Incremental builds: a Silver or Gold run rebuilds only the keys whose inputs changed since
//! the last run, and replaces only the data files that hold those keys.
//!
//! **Watermarks.** Every commit of a Silver or Gold table records what it consumed
//! ([`delta::INFO_WATERMARK`]: the versions of the tables below it) and how it was built
//! ([`delta::INFO_BUILD`]). The watermark moves in the same commit as the data, so a run that
//! dies before committing is simply redone. When the tables of a layer disagree (a run died
//! between two table commits), or the latest commit was a full `--as-of` build, the next run
//! is a full build.
//!
//! **Keys.** Every published model names the key its rows depend on (`incremental_key=`):
//! the rows a model gives for a key depend only on input rows with that key (its windows are
//! partitioned by it, its joins look it up). A run collects the keys of the input rows that
//! arrived since the watermark, rebuilds each model for exactly those keys, and commits, per
//! table, one version that removes the files holding those keys and adds their rewritten
//! survivors plus the rebuilt rows. Rebuilding a key that did not really change gives the same
//! rows, so a superset of changed keys is always safe.
//!
//! - Silver: the changed keys of a key column are the keys of the new Bronze rows of every
//!   source keyed by it (payments and fraud labels share `payment_id`: a new payment can
//!   un-orphan a label). Bronze is read only for those keys, plus new rows without a key
//!   (they are quarantined on their own).
//! - Gold: the changed payments are those in Silver files added since the Gold watermark
//!   (payments, labels) and the payments of accounts whose snapshot or risk flag changed.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::arrow::array::AsArray;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::common::ScalarValue;
use datafusion::prelude::{cast, col, lit, DataFrame, Expr, SessionContext};
use paylake_lake::delta::{self, CommitFacts, Replaces, StagedVersion};
use paylake_lake::layout::{self, Layer, TableName};
use paylake_lake::Lake;
use serde::Serialize;

use crate::models::{Materialization, Model};
use crate::JobError;

/// Table → version a build read from the layer below.
pub type Watermark = BTreeMap<String, u64>;

/// Why a run rebuilt its whole layer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FullReason {
    /// `--full-refresh`.
    Requested,
    /// `--as-of`: a build of what was known at a past time never moves a watermark.
    AsOf,
    /// A table of the layer has no watermark (never built, built by an older paylake, or last
    /// built with `--as-of`).
    NoWatermark,
    /// The tables of the layer were committed from different inputs (a run died between them).
    TablesDisagree,
    /// An input table's log no longer holds a commit since the watermark, or the new rows can
    /// no longer be told apart (compaction merged them with older ones).
    HistoryGone,
    /// The layer below was rebuilt in full since the watermark.
    InputRebuilt,
    /// The layer's models or expectations changed since its tables were built.
    DefinitionsChanged,
}

impl std::fmt::Display for FullReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FullReason::Requested => "--full-refresh",
            FullReason::AsOf => "--as-of builds are full builds",
            FullReason::NoWatermark => "a table has no watermark yet",
            FullReason::TablesDisagree => "the tables were last built from different inputs",
            FullReason::HistoryGone => "the changes since the watermark are no longer in the log",
            FullReason::InputRebuilt => "the layer below was rebuilt in full",
            FullReason::DefinitionsChanged => "the models or expectations changed",
        })
    }
}

/// How a run builds its layer, decided before anything is built.
#[derive(Debug, Clone)]
pub enum BuildPlan {
    Full(FullReason),
    /// Rebuild these keys only.
    Incremental(ChangedKeys),
    /// Nothing arrived since the watermark: there is nothing to build.
    NothingNew,
}

/// The keys to rebuild, by key column, and Silver's new Bronze files (their keyless rows).
#[derive(Debug, Clone, Default)]
pub struct ChangedKeys {
    pub keys: BTreeMap<String, Vec<String>>,
    /// Bronze source → data files added since the watermark.
    pub new_files: BTreeMap<String, Vec<String>>,
}

/// How a run built its layer (recorded in each commit as `paylake.build`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BuildMode {
    Full,
    Incremental,
    NothingNew,
}

impl BuildMode {
    pub fn name(self) -> &'static str {
        match self {
            BuildMode::Full => "full",
            BuildMode::Incremental => "incremental",
            BuildMode::NothingNew => "nothing_new",
        }
    }
}

/// What a run's report says about how it was built.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BuildSummary {
    pub mode: BuildMode,
    /// Why a full build, when it was one.
    pub reason: Option<FullReason>,
    /// Key column → how many keys were rebuilt (incremental builds).
    pub changed_keys: BTreeMap<String, u64>,
    /// What the build read from the layer below (recorded in its commits).
    pub watermark: Watermark,
    /// Fingerprint of the models and expectations the build used (recorded in its commits).
    pub definitions: String,
}

impl BuildSummary {
    pub fn new(plan: &BuildPlan, watermark: &Watermark, definitions: &str) -> Self {
        let (mode, reason, changed_keys) = match plan {
            BuildPlan::Full(reason) => (BuildMode::Full, Some(reason.clone()), BTreeMap::new()),
            BuildPlan::Incremental(changes) => (
                BuildMode::Incremental,
                None,
                changes
                    .keys
                    .iter()
                    .map(|(column, keys)| (column.clone(), keys.len() as u64))
                    .collect(),
            ),
            BuildPlan::NothingNew => (BuildMode::NothingNew, None, BTreeMap::new()),
        };
        Self {
            mode,
            reason,
            changed_keys,
            watermark: watermark.clone(),
            definitions: definitions.to_string(),
        }
    }
}

/// The fingerprint of a layer's definitions: every model's name and SQL, and the expectations.
pub fn definitions_fingerprint(models: &[Model], suites: &[paylake_quality::Suite]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for model in models {
        hash.update(model.name.as_bytes());
        hash.update([0]);
        hash.update(model.sql.as_bytes());
        hash.update([0]);
        for check in &model.checks {
            hash.update(check.sql.as_bytes());
        }
    }
    hash.update(format!("{suites:?}").as_bytes());
    hex::encode(&hash.finalize()[..12])
}

/// The key as every layer compares it: trimmed text, empty as no key.
pub fn key_expr(column: &str) -> Expr {
    use datafusion::functions::expr_fn::{btrim, nullif};
    nullif(btrim(vec![cast(col(column), DataType::Utf8)]), lit(""))
}

/// `key IN (keys)`, with the keys as one literal list the engine hashes.
pub fn key_in(column: &str, keys: &[String]) -> Expr {
    let list = keys
        .iter()
        .map(|k| lit(ScalarValue::Utf8(Some(k.clone()))))
        .collect();
    key_expr(column).in_list(list, false)
}

/// The distinct non-empty keys of `column` in `frame`.
pub async fn distinct_keys(frame: DataFrame, column: &str) -> Result<BTreeSet<String>, JobError> {
    let batches = frame
        .select(vec![key_expr(column).alias("key")])?
        .filter(col("key").is_not_null())?
        .distinct()?
        .collect()
        .await?;
    let mut keys = BTreeSet::new();
    for batch in &batches {
        let column = datafusion::arrow::compute::cast(batch.column(0), &DataType::Utf8)?;
        keys.extend(
            column
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_string),
        );
    }
    Ok(keys)
}

/// The watermark and definitions fingerprint of a table's latest commit.
async fn last_build(
    lake: &Lake,
    table: &TableName,
) -> Result<Option<(Watermark, String)>, JobError> {
    let Some(version) = delta::latest_version(lake, table).await? else {
        return Ok(None);
    };
    let Some(facts) = delta::commit_facts(lake, table, version).await? else {
        return Ok(None);
    };
    let Some(watermark) = facts
        .get(delta::INFO_WATERMARK)
        .and_then(|w| serde_json::from_value::<Watermark>(w.clone()).ok())
    else {
        return Ok(None);
    };
    let definitions = facts
        .get(delta::INFO_DEFINITIONS)
        .and_then(|d| d.as_str())
        .unwrap_or_default()
        .to_string();
    Ok(Some((watermark, definitions)))
}

fn is_incremental(facts: &CommitFacts) -> bool {
    facts.get(delta::INFO_BUILD).and_then(|b| b.as_str()) == Some(BuildMode::Incremental.name())
}

/// The one watermark every incrementally built table of the layer was last committed with.
async fn layer_watermark(
    lake: &Lake,
    layer: Layer,
    models: &[Model],
    definitions: &str,
) -> Result<Result<Watermark, FullReason>, JobError> {
    let mut seen: Option<Watermark> = None;
    for model in models
        .iter()
        .filter(|m| m.materialization == Materialization::Table)
    {
        if model.incremental_key.is_none() {
            continue;
        }
        let table = TableName::new(layer, model.name.clone());
        let Some((watermark, built_with)) = last_build(lake, &table).await? else {
            return Ok(Err(FullReason::NoWatermark));
        };
        if built_with != definitions {
            return Ok(Err(FullReason::DefinitionsChanged));
        }
        match &seen {
            Some(previous) if previous != &watermark => return Ok(Err(FullReason::TablesDisagree)),
            _ => seen = Some(watermark),
        }
    }
    Ok(seen.ok_or(FullReason::NoWatermark))
}

/// Versions of every Bronze source table now (sources never landed are left out).
pub async fn bronze_versions(lake: &Lake) -> Result<Watermark, JobError> {
    let mut versions = Watermark::new();
    for contract in paylake_contracts::all_contracts()? {
        let table = layout::bronze_table(&contract.source);
        if let Some(version) = delta::latest_version(lake, &table).await? {
            versions.insert(table.to_string(), version);
        }
    }
    Ok(versions)
}

/// A scratch session for reading changes (the run's own session holds its overlays).
fn scratch_session() -> SessionContext {
    SessionContext::new()
}

/// The watermark an incremental run of `layer` starts from, or the plan when there is none to
/// start from: a full build (asked for, or no usable watermark) or nothing new.
async fn previous_watermark(
    lake: &Lake,
    layer: Layer,
    models: &[Model],
    definitions: &str,
    current: &Watermark,
    requested: Option<FullReason>,
) -> Result<Result<Watermark, BuildPlan>, JobError> {
    if let Some(reason) = requested {
        return Ok(Err(BuildPlan::Full(reason)));
    }
    Ok(
        match layer_watermark(lake, layer, models, definitions).await? {
            Err(reason) => Err(BuildPlan::Full(reason)),
            Ok(previous) if &previous == current => Err(BuildPlan::NothingNew),
            Ok(previous) => Ok(previous),
        },
    )
}

/// Decides how Silver is built from Bronze at `current` versions.
pub async fn plan_silver(
    lake: &Lake,
    models: &[Model],
    definitions: &str,
    current: &Watermark,
    requested: Option<FullReason>,
) -> Result<BuildPlan, JobError> {
    let previous =
        match previous_watermark(lake, Layer::Silver, models, definitions, current, requested)
            .await?
        {
            Ok(previous) => previous,
            Err(plan) => return Ok(plan),
        };
    let ctx = scratch_session();
    let mut changes = ChangedKeys::default();
    for contract in paylake_contracts::all_contracts()? {
        let table = layout::bronze_table(&contract.source);
        let name = table.to_string();
        let Some(&now) = current.get(&name) else {
            continue;
        };
        let Some(key) = contract.key.first() else {
            return Ok(BuildPlan::Full(FullReason::NoWatermark));
        };
        let files = match previous.get(&name) {
            Some(&before) if before == now => continue,
            Some(&before) if before < now => {
                match delta::changes_between(lake, &table, before, now).await? {
                    Some(changed) if !changed.added_then_removed => changed.added,
                    _ => return Ok(BuildPlan::Full(FullReason::HistoryGone)),
                }
            }
            _ => return Ok(BuildPlan::Full(FullReason::HistoryGone)),
        };
        if files.is_empty() {
            continue;
        }
        let provider = delta::files_provider(lake, &table, now, Some(files.clone()), None).await?;
        let keys = distinct_keys(ctx.read_table(provider)?, key).await?;
        changes.keys.entry(key.clone()).or_default().extend(keys);
        changes.new_files.insert(contract.source.clone(), files);
    }
    for keys in changes.keys.values_mut() {
        keys.sort();
        keys.dedup();
    }
    Ok(BuildPlan::Incremental(changes))
}

/// Restricts each Bronze source in `ctx` to the rows of the changed keys of its key column,
/// plus its new rows without a key.
pub async fn restrict_bronze_to_keys(
    ctx: &SessionContext,
    lake: &Lake,
    current: &Watermark,
    changes: &ChangedKeys,
) -> Result<(), JobError> {
    for contract in paylake_contracts::all_contracts()? {
        let table = layout::bronze_table(&contract.source);
        let Some(key) = contract.key.first() else {
            continue;
        };
        let Ok(all) = ctx.table(table.to_string()).await else {
            continue;
        };
        let keys = changes.keys.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let mut rows = all.filter(key_in(key, keys))?;
        if let (Some(files), Some(&version)) = (
            changes.new_files.get(&contract.source),
            current.get(&table.to_string()),
        ) {
            let new =
                delta::files_provider(lake, &table, version, Some(files.clone()), None).await?;
            let keyless = ctx.read_table(new)?.filter(key_expr(key).is_null())?;
            rows = rows.union(keyless)?;
        }
        crate::runner::register(ctx, Layer::Bronze, &contract.source, rows.into_view())?;
    }
    Ok(())
}

/// Gives the session back every Bronze table whole, at the versions the run read: the audit
/// judges the whole lake (cumulative rates), not only the rebuilt keys.
pub async fn restore_bronze(
    ctx: &SessionContext,
    lake: &Lake,
    current: &Watermark,
) -> Result<(), JobError> {
    for (name, version) in current {
        let Some(table) = TableName::parse(name) else {
            continue;
        };
        if let Some(provider) = delta::provider(lake, &table, Some(*version)).await? {
            crate::runner::register(ctx, table.layer, &table.name, provider)?;
        }
    }
    Ok(())
}

/// Which Silver tables drive which Gold keys: a change in `table` changes the Gold rows of
/// the `payment_id`s it holds, or (by account) of the payments from or to its accounts.
const GOLD_INPUTS: &[(&str, GoldKeyPath)] = &[
    ("silver.payments", GoldKeyPath::Payment),
    ("silver.fraud_labels", GoldKeyPath::Payment),
    ("silver.accounts", GoldKeyPath::Account),
    ("silver.risk_feed", GoldKeyPath::Account),
];

#[derive(Debug, Clone, Copy)]
enum GoldKeyPath {
    Payment,
    Account,
}

/// Decides how Gold is built from the audited Silver versions `current`.
pub async fn plan_gold(
    lake: &Lake,
    models: &[Model],
    definitions: &str,
    current: &Watermark,
    requested: Option<FullReason>,
) -> Result<BuildPlan, JobError> {
    let previous =
        match previous_watermark(lake, Layer::Gold, models, definitions, current, requested).await?
        {
            Ok(previous) => previous,
            Err(plan) => return Ok(plan),
        };
    let ctx = scratch_session();
    let mut payments = BTreeSet::new();
    let mut accounts = BTreeSet::new();
    for (name, path) in GOLD_INPUTS {
        let table = TableName::parse(name)
            .ok_or_else(|| JobError::Internal(format!("bad table name {name}")))?;
        let (Some(&before), Some(&now)) = (previous.get(*name), current.get(*name)) else {
            return Ok(BuildPlan::Full(FullReason::NoWatermark));
        };
        if before == now {
            continue;
        }
        if before > now {
            return Ok(BuildPlan::Full(FullReason::InputRebuilt));
        }
        let Some(changed) = delta::changes_between(lake, &table, before, now).await? else {
            return Ok(BuildPlan::Full(FullReason::HistoryGone));
        };
        if !changed.facts.iter().all(is_incremental) {
            return Ok(BuildPlan::Full(FullReason::InputRebuilt));
        }
        if changed.added.is_empty() {
            continue;
        }
        // Silver rewrites whole files around the keys it rebuilt: only rows that are not
        // exactly as before (in the files it replaced) changed.
        let provider = delta::files_provider(lake, &table, now, Some(changed.added), None).await?;
        let mut frame = ctx.read_table(provider)?;
        if !changed.removed.is_empty() {
            let schema = frame.schema().as_arrow().clone();
            let before =
                delta::files_provider(lake, &table, before, Some(changed.removed), None).await?;
            frame = frame.except(conform(ctx.read_table(before)?, &schema)?)?;
        }
        match path {
            GoldKeyPath::Payment => payments.extend(distinct_keys(frame, "payment_id").await?),
            GoldKeyPath::Account => accounts.extend(distinct_keys(frame, "account_id").await?),
        }
    }
    if !accounts.is_empty() {
        let table = TableName::new(Layer::Silver, "payments");
        let version = current
            .get(&table.to_string())
            .copied()
            .ok_or_else(|| JobError::Internal("the Silver watermark lacks payments".into()))?;
        let provider = delta::files_provider(lake, &table, version, None, None).await?;
        let accounts: Vec<String> = accounts.into_iter().collect();
        let touched = ctx
            .read_table(provider)?
            .filter(key_in("src_account_id", &accounts).or(key_in("dest_account_id", &accounts)))?;
        payments.extend(distinct_keys(touched, "payment_id").await?);
    }
    let mut changes = ChangedKeys::default();
    changes
        .keys
        .insert("payment_id".into(), payments.into_iter().collect());
    Ok(BuildPlan::Incremental(changes))
}

/// An incremental build of one table: `model` (the model's full query) narrowed to `keys`,
/// plus the other rows of the files that hold any of them; those files are what the staged
/// version replaces. Rows without a key can only come from new input: they are added.
pub async fn rebuild_keys(
    ctx: &SessionContext,
    lake: &Lake,
    table: &TableName,
    model: DataFrame,
    column: &str,
    keys: &[String],
) -> Result<(DataFrame, Replaces), JobError> {
    let rebuilt = model.filter(key_in(column, keys).or(key_expr(column).is_null()))?;
    let Some(version) = delta::latest_version(lake, table).await? else {
        return Ok((rebuilt, Replaces::Everything));
    };
    let files = if keys.is_empty() {
        vec![]
    } else {
        files_holding(ctx, lake, table, version, column, keys).await?
    };
    if files.is_empty() {
        return Ok((
            rebuilt,
            Replaces::Files {
                version,
                paths: files,
            },
        ));
    }
    let schema = rebuilt.schema().as_arrow().clone();
    let provider = delta::files_provider(lake, table, version, Some(files.clone()), None).await?;
    let kept = ctx
        .read_table(provider)?
        .filter(key_in(column, keys).is_not_true())?;
    let frame = rebuilt.union(conform(kept, &schema)?)?;
    Ok((
        frame,
        Replaces::Files {
            version,
            paths: files,
        },
    ))
}

/// What readers will see of a staged table once it is committed: for a full build its staged
/// files; for an incremental one, the files it leaves in place plus the staged ones.
pub async fn table_after_commit(
    ctx: &SessionContext,
    lake: &Lake,
    staged: &StagedVersion,
) -> Result<Arc<dyn TableProvider>, JobError> {
    let staged_files = delta::staged_provider(lake, staged)?;
    let Replaces::Files { version, paths } = &staged.replaces else {
        return Ok(staged_files);
    };
    let replaced: BTreeSet<&str> = paths.iter().map(String::as_str).collect();
    let untouched: Vec<String> = delta::files_at(lake, &staged.table, *version)
        .await?
        .into_iter()
        .filter(|f| !replaced.contains(f.as_str()))
        .collect();
    if untouched.is_empty() {
        return Ok(staged_files);
    }
    let staged_frame = ctx.read_table(staged_files)?;
    let schema = staged_frame.schema().as_arrow().clone();
    let provider =
        delta::files_provider(lake, &staged.table, *version, Some(untouched), None).await?;
    let state = conform(ctx.read_table(provider)?, &schema)?.union(staged_frame)?;
    Ok(state.into_view())
}

/// The data files of `table` at `version` holding any of `keys` in `column`.
async fn files_holding(
    ctx: &SessionContext,
    lake: &Lake,
    table: &TableName,
    version: u64,
    column: &str,
    keys: &[String],
) -> Result<Vec<String>, JobError> {
    const FILE: &str = "__paylake_file";
    let active_files = delta::files_at(lake, table, version).await?;
    let provider = delta::files_provider(lake, table, version, None, Some(FILE)).await?;
    let batches = ctx
        .read_table(provider)?
        .filter(key_in(column, keys))?
        .select(vec![cast(col(FILE), DataType::Utf8).alias("file")])?
        .distinct()?
        .collect()
        .await?;
    // The scan names files by URL; the log by path relative to the table. Data file names
    // end in a unique id, so the last segment identifies the file.
    let by_name: BTreeMap<&str, &String> = active_files
        .iter()
        .map(|path| (path.rsplit('/').next().unwrap_or(path), path))
        .collect();
    let mut files = Vec::new();
    for batch in &batches {
        for url in batch.column(0).as_string::<i32>().iter().flatten() {
            let name = url.rsplit('/').next().unwrap_or(url);
            let path = by_name.get(name).ok_or_else(|| {
                JobError::Internal(format!(
                    "{table}: the scan read {url}, which the log does not name"
                ))
            })?;
            files.push((*path).clone());
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// `frame` with every column cast to the type `like` has for it (same names, same order).
pub fn conform(
    frame: DataFrame,
    like: &datafusion::arrow::datatypes::Schema,
) -> Result<DataFrame, JobError> {
    let columns = like
        .fields()
        .iter()
        .map(|f| {
            let column = Expr::Column(datafusion::common::Column::from_name(f.name()));
            cast(column, f.data_type().clone()).alias(f.name())
        })
        .collect::<Vec<_>>();
    Ok(frame.select(columns)?)
}
