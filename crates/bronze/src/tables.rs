//! Bronze tables in the lake: every source's table, the dead letter and the file log exist with
//! their declared schemas from the first run on, so a feed that has not sent anything yet is an
//! empty table rather than an error. All of them are append-only.

use datafusion::prelude::{DataFrame, SessionContext};
use paylake_contracts::all_contracts;
use paylake_lake::delta::{self, TableKind};
use paylake_lake::{layout, Lake};

use crate::schema::{bronze_schema, dead_letter_schema, file_log_schema};
use crate::BronzeError;

/// Creates the Bronze tables that do not exist yet.
pub async fn ensure_tables(lake: &Lake) -> Result<(), BronzeError> {
    let mut tables = vec![
        (layout::dead_letter_table(), dead_letter_schema()),
        (layout::file_log_table(), file_log_schema()),
    ];
    for contract in all_contracts()? {
        tables.push((
            layout::bronze_table(&contract.source),
            bronze_schema(&contract),
        ));
    }
    for (table, schema) in tables {
        delta::ensure(lake, &table, &schema, &[], TableKind::AppendOnly).await?;
    }
    // A lake created by an older paylake has a file log without the newer columns: add them
    // (nullable; the old entries read them as NULL).
    let added =
        delta::add_missing_columns(lake, &layout::file_log_table(), &file_log_schema()).await?;
    if !added.is_empty() {
        tracing::info!(
            "{}: added column(s) {} (the lake was created by an older paylake)",
            layout::file_log_table(),
            added.join(", ")
        );
    }
    Ok(())
}

/// The file log as a DataFrame, or `None` before the first run.
pub async fn file_log_frame(
    lake: &Lake,
    ctx: &SessionContext,
) -> Result<Option<DataFrame>, BronzeError> {
    file_log_frame_at(lake, ctx, None).await
}

/// The file log at `version` (the latest when `None`).
pub async fn file_log_frame_at(
    lake: &Lake,
    ctx: &SessionContext,
    version: Option<u64>,
) -> Result<Option<DataFrame>, BronzeError> {
    lake.register_with(ctx)?;
    match delta::provider(lake, &layout::file_log_table(), version).await? {
        Some(provider) => Ok(Some(ctx.read_table(provider)?)),
        None => Ok(None),
    }
}
