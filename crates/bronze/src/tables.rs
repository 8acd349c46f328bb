//! Bronze tables as DataFusion sees them: registered with their declared schemas, so a feed that
//! has not sent anything yet is an empty table rather than an error.

use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::prelude::{DataFrame, SessionContext};
use paylake_contracts::all_contracts;
use paylake_lake::table::folder_provider;
use paylake_lake::{layout, Lake};

use crate::schema::{bronze_schema, dead_letter_schema, file_log_schema};
use crate::BronzeError;

/// The file log as a DataFrame, or `None` before the first run.
pub async fn file_log_frame(
    lake: &Lake,
    ctx: &SessionContext,
) -> Result<Option<DataFrame>, BronzeError> {
    lake.register_with(ctx)?;
    if lake.list(&layout::file_log_folder()).await?.is_empty() {
        return Ok(None);
    }
    let provider = folder_provider(lake, &layout::file_log_folder(), file_log_schema()).await?;
    Ok(Some(ctx.read_table(provider)?))
}

/// Every Bronze table by its name inside the `bronze` schema: one per source, plus
/// `_dead_letter` and `_file_log`.
pub async fn bronze_providers(
    lake: &Lake,
) -> Result<Vec<(String, Arc<dyn TableProvider>)>, BronzeError> {
    let mut providers = Vec::new();
    for contract in all_contracts()? {
        let folder = layout::bronze_source(&contract.source);
        let provider = folder_provider(lake, &folder, bronze_schema(&contract)).await?;
        providers.push((contract.source.clone(), provider));
    }
    providers.push((
        layout::DEAD_LETTER_TABLE.to_string(),
        folder_provider(lake, &layout::dead_letter_folder(), dead_letter_schema()).await?,
    ));
    providers.push((
        layout::FILE_LOG_TABLE.to_string(),
        folder_provider(lake, &layout::file_log_folder(), file_log_schema()).await?,
    ));
    Ok(providers)
}
