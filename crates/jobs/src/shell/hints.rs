//! "Did you mean" for names a statement gets wrong. DataFusion already suggests the closest
//! column ("No field named amout. Did you mean 'amount'?"); tables are suggested here, from the
//! tables the session can see.

use datafusion::common::TableReference;
use datafusion::error::DataFusionError;

/// The closest names are at most this far apart (Damerau–Levenshtein edits).
const MAX_EDITS: usize = 3;

/// A hint for an error met while planning a statement that referred to `references`.
pub fn for_planning_error(
    error: &DataFusionError,
    references: &[TableReference],
    known_tables: &[String],
) -> Option<String> {
    let message = error.to_string();
    if !message.contains("not found") && !message.contains("schema") {
        return None;
    }
    let missing: Vec<String> = references
        .iter()
        .map(display_name)
        .filter(|name| !is_known(name, known_tables))
        .collect();
    let first = missing.first()?;
    Some(match closest_table(first, known_tables) {
        Some(close) => format!("no table {first}: did you mean {close}?"),
        None => format!(
            "no table {first}; the tables are listed by `.tables` (or SHOW TABLES); a layer's \
             tables exist once its step has run"
        ),
    })
}

/// `schema.table` (or the bare name) as the user wrote it, lower-cased like DataFusion does.
fn display_name(reference: &TableReference) -> String {
    match reference {
        TableReference::Bare { table } => table.to_string(),
        TableReference::Partial { schema, table } => format!("{schema}.{table}"),
        TableReference::Full { schema, table, .. } => format!("{schema}.{table}"),
    }
}

fn is_known(name: &str, known_tables: &[String]) -> bool {
    known_tables.iter().any(|known| {
        known == name
            || (!name.contains('.')
                && known.rsplit('.').next() == Some(name)
                && known.starts_with("public."))
    })
}

/// The known table closest to `name`: compared whole when `name` names a schema, by the table
/// part otherwise (`unified_payment` → `gold.unified_payments`).
pub fn closest_table<'a>(name: &str, known_tables: &'a [String]) -> Option<&'a str> {
    let qualified = name.contains('.');
    known_tables
        .iter()
        .map(|known| {
            let compared = if qualified {
                known.as_str()
            } else {
                known.rsplit('.').next().unwrap_or(known)
            };
            (strsim::damerau_levenshtein(name, compared), known)
        })
        .filter(|(edits, _)| *edits <= MAX_EDITS.min(name.len() / 2).max(1))
        .min_by_key(|(edits, _)| *edits)
        .map(|(_, known)| known.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closest_table_is_suggested() {
        let known: Vec<String> = [
            "bronze.payments",
            "gold.unified_payments",
            "silver.payments",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            closest_table("gold.unified_payment", &known),
            Some("gold.unified_payments")
        );
        assert_eq!(
            closest_table("unified_paymnts", &known),
            Some("gold.unified_payments")
        );
        assert_eq!(
            closest_table("sliver.payments", &known),
            Some("silver.payments")
        );
        assert_eq!(closest_table("customers", &known), None);
    }
}
