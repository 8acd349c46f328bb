//! What a Ballista cluster is handed: every table version as plain Parquet scans of the files
//! its Delta log names. They must read exactly what Delta's own provider reads (partition values
//! from the log, empty tables keeping their schema), and their plans must be ones the cluster
//! accepts, where Delta's provider is refused.

use crate::common;

use common::{copy_tree, sample_data, Workspace};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionContext;
use paylake_lake::{catalog, delta, Lake, TableScans};

/// A query's rows as sorted text lines: equal for equal rows whatever the column types.
async fn rows(ctx: &SessionContext, sql: &str) -> Vec<String> {
    let batches = ctx
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let text = pretty_format_batches(&batches)
        .expect("printable")
        .to_string();
    let mut lines: Vec<String> = text.lines().skip(3).map(str::to_string).collect();
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread")]
async fn files_scans_read_what_delta_reads_and_can_be_sent_to_a_cluster() {
    let ws = Workspace::new();
    copy_tree(&sample_data(), &ws.landing());
    ws.bronze();
    ws.silver_with(&["--as-of", "2025-03-01"]);
    ws.gold_with(&["--as-of", "2025-03-01"]);

    let lake = Lake::open_existing(ws.lake().to_str().expect("a UTF-8 path"))
        .await
        .expect("the lake opens");
    let files_lake = lake.clone().with_table_scans(TableScans::ParquetFiles);
    let delta_session = paylake_jobs::lake_session(&lake).await.expect("a session");
    let files_session = paylake_jobs::lake_session(&files_lake)
        .await
        .expect("a session");

    let tables = catalog::all_tables(&lake).await.expect("tables");
    assert!(tables
        .iter()
        .any(|t| t.to_string() == "gold.unified_payments"));
    let mut empty_tables = 0;
    for table in &tables {
        let sql = format!("SELECT * FROM {table}");
        let expected = rows(&delta_session, &sql).await;
        assert_eq!(rows(&files_session, &sql).await, expected, "{table}");
        empty_tables += usize::from(expected.len() <= 1);

        let plan = files_session
            .sql(&sql)
            .await
            .and_then(|frame| frame.into_optimized_plan())
            .expect("plans");
        paylake_cluster::check_plan(&table.to_string(), &plan)
            .unwrap_or_else(|e| panic!("{table}: {e}"));
    }
    assert!(empty_tables > 0, "the sample has empty quarantine tables");

    // Delta's provider cannot travel: the check refuses it, naming the model.
    let plan = delta_session
        .sql("SELECT * FROM gold.unified_payments")
        .await
        .and_then(|frame| frame.into_optimized_plan())
        .expect("plans");
    let refused = paylake_cluster::check_plan("gold.unified_payments", &plan)
        .expect_err("a Delta scan cannot be sent")
        .to_string();
    assert!(
        refused.contains("gold.unified_payments cannot run on the Ballista cluster"),
        "{refused}"
    );

    // Each row can name its file (incremental runs find the files holding changed keys).
    let table = paylake_lake::layout::TableName::parse("gold.unified_payments").expect("a name");
    let version = delta::latest_version(&lake, &table)
        .await
        .expect("a version")
        .expect("built");
    let files_by_name = |lake: Lake| {
        let table = table.clone();
        async move {
            let provider = delta::files_provider(&lake, &table, version, None, Some("f"))
                .await
                .expect("a provider");
            let ctx = SessionContext::new();
            lake.register_with(&ctx).expect("the store");
            ctx.register_table("t", provider).expect("registered");
            rows(
                &ctx,
                "SELECT regexp_replace(CAST(f AS VARCHAR), '^.*/', '') AS file, count(*) AS n \
                 FROM t GROUP BY 1",
            )
            .await
        }
    };
    let expected = files_by_name(lake.clone()).await;
    assert!(
        expected.len() > 1,
        "unified_payments is partitioned into several files"
    );
    assert_eq!(files_by_name(files_lake).await, expected);
}
