//! Bronze tables in the lake: every source's table, the dead letter and the file log exist with
//! their declared schemas from the first run on, so a feed that has not sent anything yet is an
//! empty table rather than an error.

use datafusion::prelude::{DataFrame, SessionContext};
use paylake_contracts::all_contracts;
use paylake_lake::{delta, layout, Lake};

use crate::schema::{bronze_schema, dead_letter_schema, file_log_schema};
use crate::BronzeError;

/// Creates the Bronze tables that do not exist yet.
pub async fn ensure_tables(lake: &Lake) -> Result<(), BronzeError> {
    for contract in all_contracts()? {
        delta::ensure(
            lake,
            &layout::bronze_table(&contract.source),
            &bronze_schema(&contract),
            &[],
        )
        .await?;
    }
    delta::ensure(
        lake,
        &layout::dead_letter_table(),
        &dead_letter_schema(),
        &[],
    )
    .await?;
    delta::ensure(lake, &layout::file_log_table(), &file_log_schema(), &[]).await?;
    Ok(())
}

/// The file log as a DataFrame, or `None` before the first run.
pub async fn file_log_frame(
    lake: &Lake,
    ctx: &SessionContext,
) -> Result<Option<DataFrame>, BronzeError> {
    lake.register_with(ctx)?;
    match delta::provider(lake, &layout::file_log_table(), None).await? {
        Some(provider) => Ok(Some(ctx.read_table(provider)?)),
        None => Ok(None),
    }
}
