//! One catalog for every command: `bronze.*`, `silver.*`, `gold.*` and `quality.*` resolve to
//! the lake's Delta tables when a query names them, not by registering everything up front.
//!
//! A schema can pin tables to versions (Gold reads the Silver versions its gate audited) and
//! can carry overlays: tables a step registers for one session (a staged version under audit,
//! a view model, Bronze filtered to an as-of time) shadow the lake's table of that name.
//! `table_version('layer.table', N)` reads any retained version in SQL.
//!
//! Every table these schemas hand out is read-only ([`ReadOnlyTable`]): the Delta provider
//! would otherwise plan `INSERT INTO bronze.payments …` as a real append. Lake tables are
//! written only through [`crate::delta`]'s staged, audited commits.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use std::borrow::Cow;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{
    ScanArgs, ScanResult, SchemaProvider, Session, TableFunctionImpl, TableProvider,
};
use datafusion::common::{
    plan_err, Constraints, DFSchemaRef, DataFusionError, ScalarValue, Statistics,
};
use datafusion::logical_expr::dml::{InsertOp, MergeIntoClause};
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

use crate::delta;
use crate::layout::{Layer, TableName};
use crate::{Lake, LakeError, Result};

/// A table that reads like the table it wraps and refuses every write (`INSERT`, `DELETE`,
/// `UPDATE`, `TRUNCATE`, `MERGE`), naming the table.
#[derive(Debug)]
pub struct ReadOnlyTable {
    name: String,
    inner: Arc<dyn TableProvider>,
}

impl ReadOnlyTable {
    /// Wraps `inner` (once: a provider that is already read-only is returned as it is).
    pub fn wrap(name: impl Into<String>, inner: Arc<dyn TableProvider>) -> Arc<dyn TableProvider> {
        if inner.is::<ReadOnlyTable>() {
            return inner;
        }
        Arc::new(Self {
            name: name.into(),
            inner,
        })
    }

    fn refuse<T>(&self, what: &str) -> datafusion::common::Result<T> {
        plan_err!(
            "{} is read-only: {what} is refused (lake tables change only through paylake's steps)",
            self.name
        )
    }
}

#[async_trait]
impl TableProvider for ReadOnlyTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.inner.constraints()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn get_table_definition(&self) -> Option<&str> {
        self.inner.get_table_definition()
    }

    fn get_logical_plan(&'_ self) -> Option<Cow<'_, LogicalPlan>> {
        self.inner.get_logical_plan()
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.inner.get_column_default(column)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn Session,
        args: ScanArgs<'a>,
    ) -> datafusion::common::Result<ScanResult> {
        self.inner.scan_with_args(state, args).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<Statistics> {
        self.inner.statistics()
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        _input: Arc<dyn ExecutionPlan>,
        _insert_op: InsertOp,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        self.refuse("INSERT")
    }

    async fn delete_from(
        &self,
        _state: &dyn Session,
        _filters: Vec<Expr>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        self.refuse("DELETE")
    }

    async fn update(
        &self,
        _state: &dyn Session,
        _assignments: Vec<(String, Expr)>,
        _filters: Vec<Expr>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        self.refuse("UPDATE")
    }

    async fn truncate(
        &self,
        _state: &dyn Session,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        self.refuse("TRUNCATE")
    }

    async fn merge_into(
        &self,
        _state: &dyn Session,
        _source: Arc<dyn ExecutionPlan>,
        _merge_schema: DFSchemaRef,
        _on: Expr,
        _clauses: Vec<MergeIntoClause>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        self.refuse("MERGE")
    }
}

/// The tables of one layer, resolved lazily to Delta tables.
#[derive(Debug)]
pub struct LakeSchema {
    lake: Lake,
    layer: Layer,
    /// Tables found in the lake when the schema was opened.
    names: Vec<String>,
    /// Versions to read instead of the latest.
    pinned: HashMap<String, u64>,
    overlays: RwLock<BTreeMap<String, Arc<dyn TableProvider>>>,
}

impl LakeSchema {
    /// Lists the tables of `layer` (folders holding a `_delta_log`).
    pub async fn open(lake: &Lake, layer: Layer) -> Result<Self> {
        Ok(Self {
            names: table_names(lake, layer).await?,
            lake: lake.clone(),
            layer,
            pinned: HashMap::new(),
            overlays: RwLock::new(BTreeMap::new()),
        })
    }

    /// Reads these tables at these versions.
    pub fn with_pinned(mut self, pinned: HashMap<String, u64>) -> Self {
        self.pinned = pinned;
        self
    }

    fn overlay(&self, name: &str) -> Option<Arc<dyn TableProvider>> {
        self.overlays.read().ok().and_then(|o| o.get(name).cloned())
    }
}

/// Every Delta table of the lake, layer by layer, each layer's sorted by name.
pub async fn all_tables(lake: &Lake) -> Result<Vec<TableName>> {
    let mut all = Vec::new();
    for layer in Layer::ALL {
        for name in table_names(lake, layer).await? {
            all.push(TableName::new(layer, name));
        }
    }
    Ok(all)
}

/// The names of the Delta tables of a layer, sorted.
pub async fn table_names(lake: &Lake, layer: Layer) -> Result<Vec<String>> {
    let prefix = object_store::path::Path::from(layer.name());
    let listed = lake
        .store()
        .list_with_delimiter(Some(&lake.path(&prefix)))
        .await
        .map_err(|source| LakeError::Store {
            path: format!("{}/{}", lake.display(), layer.name()),
            source,
        })?;
    let mut names = Vec::new();
    for folder in listed.common_prefixes {
        let relative = lake.relative(&folder);
        let Some(name) = relative.parts().next_back().map(|p| p.as_ref().to_string()) else {
            continue;
        };
        if delta::exists(lake, &TableName::new(layer, name.as_str())).await? {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn to_datafusion(e: LakeError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait]
impl SchemaProvider for LakeSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.names.clone();
        if let Ok(overlays) = self.overlays.read() {
            names.extend(overlays.keys().cloned());
        }
        names.sort();
        names.dedup();
        names
    }

    async fn table(
        &self,
        name: &str,
    ) -> datafusion::common::Result<Option<Arc<dyn TableProvider>>> {
        if let Some(provider) = self.overlay(name) {
            return Ok(Some(provider));
        }
        let table = TableName::new(self.layer, name);
        delta::provider(&self.lake, &table, self.pinned.get(name).copied())
            .await
            .map_err(to_datafusion)
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> datafusion::common::Result<Option<Arc<dyn TableProvider>>> {
        let mut overlays = self
            .overlays
            .write()
            .map_err(|_| DataFusionError::Internal("catalog lock poisoned".into()))?;
        let table = ReadOnlyTable::wrap(format!("{}.{name}", self.layer.name()), table);
        Ok(overlays.insert(name, table))
    }

    fn deregister_table(
        &self,
        name: &str,
    ) -> datafusion::common::Result<Option<Arc<dyn TableProvider>>> {
        let mut overlays = self
            .overlays
            .write()
            .map_err(|_| DataFusionError::Internal("catalog lock poisoned".into()))?;
        Ok(overlays.remove(name))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.overlay(name).is_some() || self.names.iter().any(|n| n == name)
    }
}

/// `table_version('gold.unified_payments', 3)`: one retained version of a table.
#[derive(Debug)]
struct TableVersion {
    lake: Lake,
}

impl TableFunctionImpl for TableVersion {
    fn call(&self, args: &[Expr]) -> datafusion::common::Result<Arc<dyn TableProvider>> {
        let literal = |i: usize| match args.get(i) {
            Some(Expr::Literal(value, _)) => Some(value.clone()),
            _ => None,
        };
        let (Some(ScalarValue::Utf8(Some(name))), Some(version)) = (literal(0), literal(1)) else {
            return plan_err!("usage: table_version('layer.table', version)");
        };
        let Some(table) = TableName::parse(&name) else {
            return plan_err!("table_version: '{name}' is not a table name (layer.table)");
        };
        let version = match version {
            ScalarValue::Int64(Some(v)) if v >= 0 => v as u64,
            other => {
                return plan_err!("table_version: version must be a whole number, not {other}")
            }
        };
        let lake = self.lake.clone();
        // Planning is synchronous here; opening a version reads its log.
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                let delta = delta::open_version(&lake, &table, version).await?;
                delta::provider_of(&lake, &table, &delta).await
            })
        })
        .map_err(to_datafusion)
    }
}

/// Makes the lake's layers the `bronze`, `silver`, `gold` and `quality` schemas of a session,
/// and adds `table_version`. `pinned` names table versions to read instead of the latest.
pub async fn register_lake(
    ctx: &SessionContext,
    lake: &Lake,
    pinned: &HashMap<TableName, u64>,
) -> Result<()> {
    lake.register_with(ctx)?;
    let catalog = ctx
        .catalog("datafusion")
        .ok_or_else(|| LakeError::Corrupt {
            path: "session".into(),
            reason: "the default catalog is missing".into(),
        })?;
    for layer in Layer::ALL {
        let pins = pinned
            .iter()
            .filter(|(t, _)| t.layer == layer)
            .map(|(t, v)| (t.name.clone(), *v))
            .collect();
        let schema = LakeSchema::open(lake, layer).await?.with_pinned(pins);
        catalog
            .register_schema(layer.name(), Arc::new(schema))
            .map_err(|source| LakeError::Engine {
                doing: format!("registering schema {}", layer.name()),
                source,
            })?;
    }
    ctx.register_udtf(
        "table_version",
        Arc::new(TableVersion { lake: lake.clone() }),
    );
    Ok(())
}
