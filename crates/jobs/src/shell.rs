//! `paylake sql`: the read-only SQL shell.
//!
//! Three lines of defence keep the shell from changing or escaping the lake:
//! 1. every statement is parsed with DataFusion's SQL parser and must be a query (`SELECT`,
//!    `WITH`, `VALUES`, `EXPLAIN` of a query, `SHOW`, `DESCRIBE`), nested statements included;
//!    anything else is refused, naming its kind ([`read_only_statements`]);
//! 2. the plan of each statement is verified with DataFusion's [`SQLOptions`] allowing no DDL,
//!    no DML and no statements (what `SessionContext::sql_with_options` checks, applied to the
//!    very statement that was checked above instead of a second parse of the text);
//! 3. the lake's tables are read-only providers ([`paylake_lake::catalog::ReadOnlyTable`]).
//!
//! A query runs on an [`Engine`] (the memory pool of `--memory-limit`) under a timeout.
//! Functions whose result can be far larger than their input (`repeat`, `lpad`, `replace`,
//! `range`, …) allocate outside the pool, so the shell wraps them: before computing, each
//! reserves an upper bound of its result's size from the pool, and a result that cannot fit is
//! the pool's "resources exhausted" error instead of an allocation that aborts the process.
//! The collected result is reserved from the pool as well.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::{DataFusionError, Result as EngineResult, ScalarValue};
use datafusion::execution::context::SQLOptions;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{Expr, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    ObjectName, ObjectType, Select, SetExpr, Statement as SqlStatement, Visit, Visitor,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use futures::StreamExt;
use paylake_lake::layout::Layer;
use paylake_lake::Lake;

use crate::engine::{is_out_of_memory, Engine, EngineSettings};
use crate::JobError;

pub mod hints;
pub mod input;

/// What the shell runs, for messages.
pub const QUERY_KINDS: &str = "SELECT, WITH, VALUES, EXPLAIN, SHOW and DESCRIBE";

/// The shell's default timeout: long enough for any ad-hoc question over the lake.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Parses a timeout like `30s`, `5m`, `1h`, `500ms` or a number of seconds; `0` is none.
pub fn parse_timeout(text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    let (number, unit) = crate::engine::number_and_unit(text).ok_or_else(|| {
        format!("'{text}' is not a timeout (use e.g. 30s, 5m, 1h, or 0 for none)")
    })?;
    let seconds = match unit.as_str() {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        other => {
            return Err(format!(
                "'{text}': unknown unit '{other}' (use ms, s, m or h)"
            ))
        }
    };
    if !seconds.is_finite() || seconds > 365.0 * 24.0 * 3600.0 {
        return Err(format!("'{text}' is too long (0 means no timeout)"));
    }
    if seconds == 0.0 {
        return Ok(None);
    }
    Ok(Some(Duration::from_secs_f64(seconds)))
}

/// A timeout as a user would write it: `2s`, `5m`, `1h`, `1500ms`.
pub fn format_timeout(timeout: Duration) -> String {
    let millis = timeout.as_millis();
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if millis >= size && millis / size * size == millis {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

/// The statements of `sql`, at least one.
fn parse_statements(sql: &str) -> Result<VecDeque<DFStatement>, JobError> {
    let statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})
        .map_err(|e| JobError::Query(e.to_string()))?;
    if statements.is_empty() {
        return Err(JobError::Query("no statement to run".into()));
    }
    Ok(statements)
}

/// Parses `sql` into its statements and refuses the text unless every one is a query.
pub fn read_only_statements(sql: &str) -> Result<Vec<DFStatement>, JobError> {
    let statements = parse_statements(sql)?;
    for (index, statement) in statements.iter().enumerate() {
        if let Some(kind) = refused_kind(statement) {
            return Err(JobError::ReadOnly {
                kind,
                position: index + 1,
                count: statements.len(),
            });
        }
    }
    Ok(statements.into())
}

/// The kind of statement that makes `statement` more than a query, if any.
fn refused_kind(statement: &DFStatement) -> Option<String> {
    match statement {
        DFStatement::Statement(statement) => refused_sql_kind(statement),
        DFStatement::CreateExternalTable(_) => Some("CREATE EXTERNAL TABLE".into()),
        DFStatement::CopyTo(_) => Some("COPY".into()),
        DFStatement::Reset(_) => Some("RESET".into()),
        DFStatement::Explain(explain) => {
            refused_kind(&explain.statement).map(|kind| format!("EXPLAIN {kind}"))
        }
    }
}

/// Walks every statement and `SELECT` of a parsed statement, nested ones included (a query can
/// hold an `INSERT` in a set expression, or be a `SELECT … INTO`).
struct QueriesOnly;

impl Visitor for QueriesOnly {
    type Break = String;

    fn pre_visit_statement(&mut self, statement: &SqlStatement) -> ControlFlow<String> {
        if is_query(statement) {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(sql_kind(statement))
        }
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<String> {
        if select.into.is_some() {
            ControlFlow::Break("SELECT INTO".into())
        } else {
            ControlFlow::Continue(())
        }
    }

    fn pre_visit_query(
        &mut self,
        query: &datafusion::sql::sqlparser::ast::Query,
    ) -> ControlFlow<String> {
        match query.body.as_ref() {
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
                ControlFlow::Break(sql_kind(s))
            }
            _ => ControlFlow::Continue(()),
        }
    }
}

fn refused_sql_kind(statement: &SqlStatement) -> Option<String> {
    match statement.visit(&mut QueriesOnly) {
        ControlFlow::Break(kind) => Some(kind),
        ControlFlow::Continue(()) => None,
    }
}

/// Statements that only read: queries, `EXPLAIN` (whose inner statement is checked on its
/// own), `DESCRIBE` and the `SHOW` forms.
fn is_query(statement: &SqlStatement) -> bool {
    matches!(
        statement,
        SqlStatement::Query(_)
            | SqlStatement::Explain { .. }
            | SqlStatement::ExplainTable { .. }
            | SqlStatement::ShowTables { .. }
            | SqlStatement::ShowColumns { .. }
            | SqlStatement::ShowVariable { .. }
            | SqlStatement::ShowVariables { .. }
            | SqlStatement::ShowFunctions { .. }
            | SqlStatement::ShowCreate { .. }
            | SqlStatement::ShowSchemas { .. }
            | SqlStatement::ShowCatalogs { .. }
            | SqlStatement::ShowDatabases { .. }
            | SqlStatement::ShowViews { .. }
    )
}

/// A statement's kind as SQL spells it: `INSERT`, `CREATE TABLE`, `DROP VIEW`, `SET`, …
fn sql_kind(statement: &SqlStatement) -> String {
    let named = match statement {
        SqlStatement::Insert(_) => "INSERT",
        SqlStatement::Update(_) => "UPDATE",
        SqlStatement::Delete(_) => "DELETE",
        SqlStatement::Merge(_) => "MERGE",
        SqlStatement::Truncate(_) => "TRUNCATE",
        SqlStatement::Copy { .. } | SqlStatement::CopyIntoSnowflake { .. } => "COPY",
        SqlStatement::Set(_) => "SET",
        SqlStatement::CreateTable(_) => "CREATE TABLE",
        SqlStatement::CreateView(_) => "CREATE VIEW",
        SqlStatement::CreateSchema { .. } => "CREATE SCHEMA",
        SqlStatement::CreateDatabase { .. } => "CREATE DATABASE",
        SqlStatement::CreateFunction(_) => "CREATE FUNCTION",
        SqlStatement::CreateIndex(_) => "CREATE INDEX",
        SqlStatement::AlterTable(_) => "ALTER TABLE",
        SqlStatement::Drop { object_type, .. } => return format!("DROP {object_type}"),
        SqlStatement::DropFunction(_) => "DROP FUNCTION",
        SqlStatement::StartTransaction { .. } => "START TRANSACTION",
        SqlStatement::Commit { .. } => "COMMIT",
        SqlStatement::Rollback { .. } => "ROLLBACK",
        SqlStatement::Prepare { .. } => "PREPARE",
        SqlStatement::Execute { .. } => "EXECUTE",
        SqlStatement::Deallocate { .. } => "DEALLOCATE",
        SqlStatement::Analyze(_) => "ANALYZE",
        SqlStatement::Use(_) => "USE",
        _ => {
            // Any other statement: its leading keyword(s) as printed by the parser.
            let text = statement.to_string();
            let mut words = text.split_whitespace();
            let first = words.next().unwrap_or("statement").to_ascii_uppercase();
            return match (first.as_str(), words.next()) {
                ("CREATE" | "ALTER" | "DROP", Some(second)) => {
                    format!("{first} {}", second.to_ascii_uppercase())
                }
                _ => first,
            };
        }
    };
    named.to_string()
}

/// Parses `sql` for a session with `--allow-writes`: besides queries, each statement may only
/// create, replace or drop the session's own objects, `SET` options, or `COPY` to a file
/// outside the lake ([`SESSION_WRITES`]). `INSERT`, `UPDATE`, `DELETE` and anything naming a
/// lake schema stay refused.
pub fn session_write_statements(
    sql: &str,
    lake_folder: Option<&Path>,
) -> Result<Vec<DFStatement>, JobError> {
    let statements = parse_statements(sql)?;
    for (index, statement) in statements.iter().enumerate() {
        if let Err(what) = session_write_allowed(statement, lake_folder) {
            return Err(JobError::WriteRefused {
                what,
                position: index + 1,
                count: statements.len(),
            });
        }
    }
    Ok(statements.into())
}

fn session_write_allowed(
    statement: &DFStatement,
    lake_folder: Option<&Path>,
) -> Result<(), String> {
    match statement {
        DFStatement::Statement(statement) => match statement.visit(&mut SessionWritesOnly) {
            ControlFlow::Break(what) => Err(what),
            ControlFlow::Continue(()) => Ok(()),
        },
        DFStatement::CreateExternalTable(create) => {
            outside_lake_schemas("CREATE EXTERNAL TABLE", std::slice::from_ref(&create.name))
        }
        DFStatement::CopyTo(copy) => copy_target_outside(&copy.target, lake_folder),
        DFStatement::Reset(_) => Ok(()),
        DFStatement::Explain(explain) => session_write_allowed(&explain.statement, lake_folder),
    }
}

/// Schemas a session object must never be created in or dropped from.
fn is_lake_schema(schema: &str) -> bool {
    Layer::parse(&schema.to_ascii_lowercase()).is_some()
        || schema.eq_ignore_ascii_case(crate::runner::PARAMS_SCHEMA)
        || schema.eq_ignore_ascii_case("information_schema")
}

fn outside_lake_schemas(kind: &str, names: &[ObjectName]) -> Result<(), String> {
    for name in names {
        let parts: Vec<&str> = name
            .0
            .iter()
            .filter_map(|part| part.as_ident().map(|ident| ident.value.as_str()))
            .collect();
        // `schema.table` or `catalog.schema.table`: the part before the table's name.
        if parts.len() >= 2 && is_lake_schema(parts[parts.len() - 2]) {
            return Err(format!(
                "{kind} {name} (the lake's schemas are read-only; session objects go in the \
                 default schema, e.g. {kind} {})",
                parts[parts.len() - 1]
            ));
        }
    }
    Ok(())
}

/// `COPY … TO` writes only local files, outside the lake's folder when the lake is local (a
/// lake in an object store cannot be reached by a local path).
fn copy_target_outside(target: &str, lake_folder: Option<&Path>) -> Result<(), String> {
    let refuse = |reason: &str| Err(format!("COPY TO '{target}': {reason}"));
    let local = match target.strip_prefix("file://") {
        Some(rest) => rest,
        None if target.contains("://") => return refuse("only local paths can be written"),
        None => target,
    };
    let path = Path::new(local);
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return refuse("'..' is not allowed in the target; name the folder directly");
    }
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        match std::env::current_dir() {
            Ok(dir) => dir.join(path),
            Err(e) => return refuse(&format!("cannot resolve the current folder: {e}")),
        }
    };
    // Resolve symlinks through the part of the path that exists already.
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    let resolved = loop {
        match std::fs::canonicalize(existing) {
            Ok(real) => break rest.iter().rev().fold(real, |path, part| path.join(part)),
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_owned());
                    existing = parent;
                }
                _ => break absolute.clone(),
            },
        }
    };
    if let Some(lake_folder) = lake_folder.filter(|folder| resolved.starts_with(folder)) {
        return refuse(&format!(
            "it is inside the lake {} (the lake is written only by paylake's steps)",
            lake_folder.display()
        ));
    }
    Ok(())
}

/// Walks a statement allowed under `--allow-writes`: queries, `SET`, and session objects.
struct SessionWritesOnly;

impl Visitor for SessionWritesOnly {
    type Break = String;

    fn pre_visit_statement(&mut self, statement: &SqlStatement) -> ControlFlow<String> {
        let allowed = match statement {
            statement if is_query(statement) => Ok(()),
            SqlStatement::Set(_) => Ok(()),
            SqlStatement::CreateView(view) => {
                outside_lake_schemas("CREATE VIEW", std::slice::from_ref(&view.name))
            }
            SqlStatement::CreateTable(table) => {
                outside_lake_schemas("CREATE TABLE", std::slice::from_ref(&table.name))
            }
            SqlStatement::Drop {
                object_type: ObjectType::Table | ObjectType::View,
                names,
                ..
            } => outside_lake_schemas(&sql_kind(statement), names),
            other => Err(format!("{} is never allowed", sql_kind(other))),
        };
        match allowed {
            Ok(()) => ControlFlow::Continue(()),
            Err(what) => ControlFlow::Break(what),
        }
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<String> {
        QueriesOnly.pre_visit_select(select)
    }

    fn pre_visit_query(
        &mut self,
        query: &datafusion::sql::sqlparser::ast::Query,
    ) -> ControlFlow<String> {
        QueriesOnly.pre_visit_query(query)
    }
}

/// What the shell allows a plan to do: nothing but read.
pub fn read_only_options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// What a shell session may do beyond reading the lake.
#[derive(Debug, Clone, Default)]
pub struct ShellOptions {
    /// Stop a statement after this long (`None`: never).
    pub timeout: Option<Duration>,
    /// Allow the session's own objects and `COPY … TO` a file outside the lake
    /// ([`SESSION_WRITES`]); the lake's tables stay read-only whatever this says.
    pub allow_writes: bool,
}

/// What `--allow-writes` permits, for messages and help.
pub const SESSION_WRITES: &str = "CREATE EXTERNAL TABLE, CREATE VIEW and CREATE TABLE … AS \
     (in-memory, this session only, never in a lake schema), DROP of those, SET, and COPY … TO \
     a file outside the lake";

/// The result of one statement, held within the engine's memory pool while it lives.
pub struct StatementResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// The collected batches' share of the memory pool, given back when the result is dropped.
    _held: MemoryReservation,
}

impl StatementResult {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// A shell session over the lake: one DataFusion session (so objects a statement creates under
/// `--allow-writes` stay for the next), on its own engine (memory pool, spill folder).
pub struct Shell {
    ctx: SessionContext,
    engine: Engine,
    options: ShellOptions,
    /// The lake's local folder; `None` for a lake in an object store.
    lake_folder: Option<PathBuf>,
}

impl Shell {
    /// A session on `lake` with the functions that can outgrow their input bounded by the
    /// engine's memory pool.
    pub async fn open(
        lake: &Lake,
        settings: &EngineSettings,
        options: ShellOptions,
    ) -> Result<Self, JobError> {
        let engine = Engine::new(settings)?;
        let ctx = crate::runner::lake_session_on(lake, &engine).await?;
        guard_functions(&ctx, Arc::clone(&engine.pool) as Arc<dyn MemoryPool>);
        Ok(Self {
            ctx,
            engine,
            options,
            lake_folder: lake.local_folder().map(Path::to_path_buf),
        })
    }

    pub fn options(&self) -> &ShellOptions {
        &self.options
    }

    /// Parses `sql` into statements, each checked against what this session may do.
    pub fn statements(&self, sql: &str) -> Result<Vec<DFStatement>, JobError> {
        if self.options.allow_writes {
            session_write_statements(sql, self.lake_folder.as_deref())
        } else {
            read_only_statements(sql)
        }
    }

    /// Plans one statement, checks the plan and collects its result under the timeout.
    pub async fn run(&self, statement: DFStatement) -> Result<StatementResult, JobError> {
        let work = self.collect(statement);
        match self.options.timeout {
            None => work.await,
            Some(limit) => {
                tokio::time::timeout(limit, work)
                    .await
                    .map_err(|_| JobError::Timeout {
                        limit: format_timeout(limit),
                    })?
            }
        }
    }

    /// Runs every statement of `sql` in order; the first failure stops the rest.
    pub async fn run_all(&self, sql: &str) -> Result<Vec<StatementResult>, JobError> {
        let mut results = Vec::new();
        for statement in self.statements(sql)? {
            results.push(self.run(statement).await?);
        }
        Ok(results)
    }

    /// Plans `sql`, which must be exactly one query (whatever `--allow-writes` says): what a
    /// remote client (Flight SQL) may run.
    pub async fn plan_query(&self, sql: &str) -> Result<LogicalPlan, JobError> {
        let mut statements = read_only_statements(sql)?;
        if statements.len() != 1 {
            return Err(JobError::Query(format!(
                "one statement at a time, got {}",
                statements.len()
            )));
        }
        let statement = statements.remove(0);
        self.plan(statement, &read_only_options()).await
    }

    /// Executes a plan from [`Shell::plan_query`] as a stream of batches, stopped with an
    /// error once the session's timeout has passed.
    pub async fn execute(&self, plan: LogicalPlan) -> Result<SendableRecordBatchStream, JobError> {
        let limit = self.engine.settings.memory_limit;
        let frame = self
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| shell_error(e, limit))?;
        let stream = frame
            .execute_stream()
            .await
            .map_err(|e| shell_error(e, limit))?;
        Ok(match self.options.timeout {
            None => stream,
            Some(timeout) => with_deadline(stream, timeout),
        })
    }

    /// Every table a query can name, as `schema.table`, sorted: the lake's layers and, under
    /// `--allow-writes`, the session's own objects.
    pub async fn table_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        let Some(catalog) = self.ctx.catalog("datafusion") else {
            return names;
        };
        for schema in catalog.schema_names() {
            if schema == "information_schema" || schema == crate::runner::PARAMS_SCHEMA {
                continue;
            }
            if let Some(provider) = catalog.schema(&schema) {
                names.extend(
                    provider
                        .table_names()
                        .into_iter()
                        .map(|table| format!("{schema}.{table}")),
                );
            }
        }
        names.sort();
        names
    }

    /// The session, for catalog questions (schemas of tables, Flight SQL metadata).
    pub fn session(&self) -> &SessionContext {
        &self.ctx
    }

    async fn plan(
        &self,
        statement: DFStatement,
        options: &SQLOptions,
    ) -> Result<LogicalPlan, JobError> {
        let limit = self.engine.settings.memory_limit;
        let references = self
            .ctx
            .state()
            .resolve_table_references(&statement)
            .unwrap_or_default();
        let plan = match self.ctx.state().statement_to_plan(statement).await {
            Ok(plan) => plan,
            Err(e) if is_out_of_memory(&e) => return Err(shell_error(e, limit)),
            Err(e) => {
                let hint = hints::for_planning_error(&e, &references, &self.table_names().await);
                return Err(JobError::Query(match hint {
                    Some(hint) => format!("{e}\n  {hint}"),
                    None => e.to_string(),
                }));
            }
        };
        options.verify_plan(&plan).map_err(|e| {
            JobError::Query(if self.options.allow_writes {
                format!("refused: {e}")
            } else {
                format!("the shell is read-only: {e}")
            })
        })?;
        Ok(plan)
    }

    async fn collect(&self, statement: DFStatement) -> Result<StatementResult, JobError> {
        let options = if self.options.allow_writes {
            SQLOptions::new()
        } else {
            read_only_options()
        };
        let plan = self.plan(statement, &options).await?;
        let limit = self.engine.settings.memory_limit;
        let engine_error = |e: DataFusionError| shell_error(e, limit);
        let frame = self
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(engine_error)?;
        let schema = Arc::clone(frame.schema().inner());
        let mut stream = frame.execute_stream().await.map_err(engine_error)?;
        let pool = Arc::clone(&self.engine.pool) as Arc<dyn MemoryPool>;
        let held = MemoryConsumer::new("paylake sql result").register(&pool);
        let mut batches = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(engine_error)?;
            held.try_grow(batch.get_array_memory_size())
                .map_err(engine_error)?;
            batches.push(batch);
        }
        Ok(StatementResult {
            schema,
            batches,
            _held: held,
        })
    }
}

/// A stream that ends with a timeout error once `timeout` has passed, even while the engine
/// is still working on its next batch.
fn with_deadline(
    stream: SendableRecordBatchStream,
    timeout: Duration,
) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let deadline = tokio::time::Instant::now() + timeout;
    let limited = futures::stream::unfold(Some(stream), move |state| async move {
        let mut stream = state?;
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(item)) => Some((item, Some(stream))),
            Ok(None) => None,
            Err(_) => Some((
                Err(DataFusionError::External(Box::new(JobError::Timeout {
                    limit: format_timeout(timeout),
                }))),
                None,
            )),
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, limited))
}

/// Out of memory names the limit and the flag; other engine errors stay as they are.
fn shell_error(error: DataFusionError, limit: Option<u64>) -> JobError {
    crate::engine::out_of_memory_or(error, "the query", limit)
}

/// How to bound the size of a function's result from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(text, n)`: |text| × n.
    Repeat,
    /// `lpad/rpad(text, n [, fill])`: n characters of at most 4 bytes (of the fill's width).
    Pad,
    /// `replace(text, from, to)`, `regexp_replace(text, pattern, replacement …)`: each of the
    /// |text| + 1 positions can take the replacement (twice, counting group references).
    Replace,
    /// `array_repeat(element, n)`: n elements.
    ArrayRepeat,
    /// `array_resize(array, n [, value])`: n elements.
    ArrayResize,
    /// `range/generate_series(start, stop [, step])` on integers: one 8-byte value per step.
    Range,
}

const GUARDED: [(&str, Growth); 8] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::Replace),
    ("array_repeat", Growth::ArrayRepeat),
    ("array_resize", Growth::ArrayResize),
    ("range", Growth::Range),
];

/// Replaces the session's growth functions with guarded ones (and `generate_series`, the
/// scalar twin of `range`).
fn guard_functions(ctx: &SessionContext, pool: Arc<dyn MemoryPool>) {
    let registered = ctx.state().scalar_functions().clone();
    let mut guarded: Vec<(&str, Growth)> = GUARDED.to_vec();
    guarded.push(("generate_series", Growth::Range));
    for (name, growth) in guarded {
        let Some(inner) = registered.get(name) else {
            continue;
        };
        ctx.register_udf(ScalarUDF::new_from_impl(GuardedFunction {
            inner: Arc::clone(inner),
            growth,
            pool: Arc::clone(&pool),
        }));
    }
}

/// A function that reserves an upper bound of its result's size from the memory pool before
/// computing it.
#[derive(Debug)]
struct GuardedFunction {
    inner: Arc<ScalarUDF>,
    growth: Growth,
    pool: Arc<dyn MemoryPool>,
}

impl PartialEq for GuardedFunction {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
            && self.growth == other.growth
            && Arc::ptr_eq(&self.pool, &other.pool)
    }
}

impl Eq for GuardedFunction {}

impl Hash for GuardedFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.growth.hash(state);
    }
}

impl ScalarUDFImpl for GuardedFunction {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> EngineResult<String> {
        self.inner.schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> EngineResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> EngineResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn is_strict(&self) -> bool {
        self.inner.is_strict()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> EngineResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> EngineResult<ColumnarValue> {
        let bound = result_bound(self.growth, &args.args, args.number_rows)?;
        let reservation =
            MemoryConsumer::new(format!("{}() result", self.inner.name())).register(&self.pool);
        reservation.try_grow(usize::try_from(bound).unwrap_or(usize::MAX))?;
        let result = self.inner.invoke_with_args(args);
        reservation.free();
        result
    }
}

/// Per row of a batch: a value of one argument.
enum Values {
    /// The same value on every row.
    Scalar(Option<u64>),
    PerRow(Vec<Option<u64>>),
}

impl Values {
    fn get(&self, row: usize) -> Option<u64> {
        match self {
            Values::Scalar(value) => *value,
            Values::PerRow(values) => values.get(row).copied().flatten(),
        }
    }
}

/// Byte length of each text value of an argument (NULL: none).
fn text_lengths(value: &ColumnarValue) -> EngineResult<Values> {
    Ok(match value {
        ColumnarValue::Scalar(scalar) => Values::Scalar(match scalar {
            ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
                v.as_ref().map(|s| s.len() as u64)
            }
            other if other.is_null() => None,
            other => Some(other.to_string().len() as u64),
        }),
        ColumnarValue::Array(array) => Values::PerRow(array_text_lengths(array)?),
    })
}

fn array_text_lengths(array: &ArrayRef) -> EngineResult<Vec<Option<u64>>> {
    let lengths = |get: &dyn Fn(usize) -> usize| {
        (0..array.len())
            .map(|i| (!array.is_null(i)).then(|| get(i) as u64))
            .collect()
    };
    Ok(match array.data_type() {
        DataType::Utf8 => {
            let strings = array.as_string::<i32>();
            lengths(&|i| strings.value(i).len())
        }
        DataType::LargeUtf8 => {
            let strings = array.as_string::<i64>();
            lengths(&|i| strings.value(i).len())
        }
        DataType::Utf8View => {
            let strings = array.as_string_view();
            lengths(&|i| strings.value(i).len())
        }
        _ => {
            let text = cast(array, &DataType::LargeUtf8)?;
            let strings = text.as_string::<i64>();
            lengths(&|i| strings.value(i).len())
        }
    })
}

/// Each integer value of an argument, negatives as 0 (NULL: none).
fn counts(value: &ColumnarValue) -> EngineResult<Values> {
    Ok(match value {
        ColumnarValue::Scalar(scalar) => Values::Scalar(
            scalar
                .cast_to(&DataType::Int64)
                .ok()
                .and_then(|v| match v {
                    ScalarValue::Int64(v) => v,
                    _ => None,
                })
                .map(|v| v.max(0) as u64),
        ),
        ColumnarValue::Array(array) => {
            let ints = cast(array, &DataType::Int64)?;
            let ints = ints.as_primitive::<Int64Type>();
            Values::PerRow(
                (0..ints.len())
                    .map(|i| (!ints.is_null(i)).then(|| ints.value(i).max(0) as u64))
                    .collect(),
            )
        }
    })
}

/// The signed integers of an argument (for `range`), `None` for NULL or a non-integer type.
fn integers(value: &ColumnarValue) -> Option<Vec<Option<i64>>> {
    match value {
        ColumnarValue::Scalar(scalar) if scalar.data_type().is_integer() => {
            match scalar.cast_to(&DataType::Int64).ok()? {
                ScalarValue::Int64(v) => Some(vec![v]),
                _ => None,
            }
        }
        ColumnarValue::Array(array) if array.data_type().is_integer() => {
            let ints = cast(array, &DataType::Int64).ok()?;
            let ints = ints.as_primitive::<Int64Type>();
            Some(
                (0..ints.len())
                    .map(|i| (!ints.is_null(i)).then(|| ints.value(i)))
                    .collect(),
            )
        }
        _ => None,
    }
}

/// Bytes one value of an element argument takes, per row.
fn element_sizes(value: &ColumnarValue) -> Values {
    match value {
        ColumnarValue::Scalar(scalar) => Values::Scalar(Some(scalar.size() as u64)),
        ColumnarValue::Array(array) => {
            let per_row = array.get_array_memory_size() / array.len().max(1);
            Values::Scalar(Some(per_row.max(1) as u64))
        }
    }
}

/// An upper bound of the bytes a guarded function's result takes on `rows` rows.
fn result_bound(growth: Growth, args: &[ColumnarValue], rows: usize) -> EngineResult<u128> {
    let rows = rows.max(1);
    let arg = |i: usize| args.get(i);
    let mut total: u128 = 0;
    match growth {
        Growth::Repeat => {
            let (Some(text), Some(n)) = (arg(0), arg(1)) else {
                return Ok(0);
            };
            let (text, n) = (text_lengths(text)?, counts(n)?);
            for row in 0..rows {
                total +=
                    u128::from(text.get(row).unwrap_or(0)) * u128::from(n.get(row).unwrap_or(0));
            }
        }
        Growth::Pad => {
            let (Some(text), Some(n)) = (arg(0), arg(1)) else {
                return Ok(0);
            };
            let (text, n) = (text_lengths(text)?, counts(n)?);
            let fill = arg(2).map(text_lengths).transpose()?;
            for row in 0..rows {
                let width = fill
                    .as_ref()
                    .map_or(1, |f| f.get(row).unwrap_or(1).clamp(1, 4));
                total += u128::from(n.get(row).unwrap_or(0)) * u128::from(width)
                    + u128::from(text.get(row).unwrap_or(0));
            }
        }
        Growth::Replace => {
            let (Some(text), Some(to)) = (arg(0), arg(2)) else {
                return Ok(0);
            };
            let (text, to) = (text_lengths(text)?, text_lengths(to)?);
            for row in 0..rows {
                let length = u128::from(text.get(row).unwrap_or(0));
                let to = u128::from(to.get(row).unwrap_or(0));
                total += length + (length + 1) * 2 * to;
            }
        }
        Growth::ArrayRepeat => {
            let (Some(element), Some(n)) = (arg(0), arg(1)) else {
                return Ok(0);
            };
            let (element, n) = (element_sizes(element), counts(n)?);
            for row in 0..rows {
                total +=
                    u128::from(element.get(row).unwrap_or(1)) * u128::from(n.get(row).unwrap_or(0));
            }
        }
        Growth::ArrayResize => {
            let (Some(array), Some(n)) = (arg(0), arg(1)) else {
                return Ok(0);
            };
            let n = counts(n)?;
            let element = arg(2).map_or(Values::Scalar(Some(16)), element_sizes);
            let existing = match array {
                ColumnarValue::Array(a) => a.get_array_memory_size() as u128,
                ColumnarValue::Scalar(s) => s.size() as u128,
            };
            total += existing;
            for row in 0..rows {
                total += u128::from(element.get(row).unwrap_or(16).max(16))
                    * u128::from(n.get(row).unwrap_or(0));
            }
        }
        Growth::Range => {
            let ints: Option<Vec<_>> = args.iter().map(integers).collect();
            let Some(ints) = ints else {
                // Dates and timestamps: stepped by intervals, not bounded here.
                return Ok(0);
            };
            let value = |column: &Vec<Option<i64>>, row: usize| {
                if column.len() == 1 {
                    column[0]
                } else {
                    column.get(row).copied().flatten()
                }
            };
            for row in 0..rows {
                let (start, stop, step) = match ints.as_slice() {
                    [stop] => (Some(0), value(stop, row), Some(1)),
                    [start, stop] => (value(start, row), value(stop, row), Some(1)),
                    [start, stop, step, ..] => {
                        (value(start, row), value(stop, row), value(step, row))
                    }
                    [] => (None, None, None),
                };
                if let (Some(start), Some(stop), Some(step)) = (start, stop, step) {
                    let span = (i128::from(stop) - i128::from(start)).unsigned_abs();
                    let step = i128::from(step).unsigned_abs().max(1);
                    total += (span / step + 1) * 8;
                }
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> String {
        match read_only_statements(sql) {
            Err(JobError::ReadOnly { kind, .. }) => kind,
            Err(other) => panic!("{sql}: {other}"),
            Ok(_) => panic!("{sql} was accepted"),
        }
    }

    #[test]
    fn only_queries_pass() {
        for sql in [
            "SELECT 1",
            "WITH a AS (SELECT 1 AS x) SELECT x FROM a",
            "VALUES (1), (2)",
            "EXPLAIN SELECT 1",
            "EXPLAIN ANALYZE SELECT 1",
            "SHOW TABLES",
            "SHOW COLUMNS FROM bronze.payments",
            "DESCRIBE bronze.payments",
            "SELECT 1; SELECT 2",
            "SELECT * FROM (SELECT 1 UNION ALL SELECT 2) t",
        ] {
            assert!(read_only_statements(sql).is_ok(), "{sql}");
        }
        assert_eq!(refused("INSERT INTO bronze.payments VALUES (1)"), "INSERT");
        assert_eq!(refused("update t set a = 1"), "UPDATE");
        assert_eq!(refused("DELETE FROM t"), "DELETE");
        assert_eq!(refused("COPY (SELECT 1) TO '/tmp/x'"), "COPY");
        assert_eq!(
            refused("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/tmp'"),
            "CREATE EXTERNAL TABLE"
        );
        assert_eq!(refused("CREATE TABLE t AS SELECT 1"), "CREATE TABLE");
        assert_eq!(
            refused("CREATE OR REPLACE VIEW v AS SELECT 1"),
            "CREATE VIEW"
        );
        assert_eq!(refused("DROP TABLE t"), "DROP TABLE");
        assert_eq!(refused("DROP VIEW v"), "DROP VIEW");
        assert_eq!(refused("SET datafusion.execution.batch_size = 1"), "SET");
        assert_eq!(refused("SELECT 1 INTO t"), "SELECT INTO");
        assert_eq!(
            refused("EXPLAIN INSERT INTO t VALUES (1)"),
            "EXPLAIN INSERT"
        );
        assert_eq!(refused("SELECT 1; DROP SCHEMA bronze"), "DROP SCHEMA");
        match read_only_statements("SELECT 1; DELETE FROM t") {
            Err(JobError::ReadOnly {
                position, count, ..
            }) => assert_eq!((position, count), (2, 2)),
            _ => panic!("the second statement is refused"),
        }
        assert!(matches!(
            read_only_statements(" ; "),
            Err(JobError::Query(_))
        ));
        assert!(matches!(
            read_only_statements("SELEC 1"),
            Err(JobError::Query(_))
        ));
    }

    #[test]
    fn timeouts_parse() {
        assert_eq!(parse_timeout("30s"), Ok(Some(Duration::from_secs(30))));
        assert_eq!(parse_timeout("5m"), Ok(Some(Duration::from_secs(300))));
        assert_eq!(parse_timeout("2"), Ok(Some(Duration::from_secs(2))));
        assert_eq!(parse_timeout("250ms"), Ok(Some(Duration::from_millis(250))));
        assert_eq!(parse_timeout("0"), Ok(None));
        assert!(parse_timeout("soon").is_err());
        assert!(parse_timeout("5 parsecs").is_err());
        assert!(parse_timeout("-1s").is_err());
        assert_eq!(format_timeout(Duration::from_secs(2)), "2s");
        assert_eq!(format_timeout(DEFAULT_TIMEOUT), "5m");
        assert_eq!(format_timeout(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn growth_bounds_follow_the_arguments() {
        let text = |s: &str| ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.into())));
        let int = |n: i64| ColumnarValue::Scalar(ScalarValue::Int64(Some(n)));
        assert_eq!(
            result_bound(Growth::Repeat, &[text("ab"), int(1_000)], 1).unwrap(),
            2_000
        );
        assert_eq!(
            result_bound(Growth::Repeat, &[text("ab"), int(-5)], 3).unwrap(),
            0
        );
        assert!(
            result_bound(Growth::Pad, &[text("x"), int(2_000_000_000)], 1).unwrap()
                >= 2_000_000_000
        );
        assert_eq!(
            result_bound(Growth::Range, &[int(1), int(100_000_000_000)], 1).unwrap(),
            800_000_000_000
        );
    }
}
