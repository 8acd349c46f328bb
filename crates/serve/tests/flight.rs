//! The Flight SQL server in process, through arrow-flight's own client: the plain statement
//! path (CommandStatementQuery → ticket → DoGet), the bearer token, the read-only guard and a
//! graceful stop. ADBC's path (prepared statements, metadata) is tests/flight (pytest).

use std::time::Duration;

use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use futures::TryStreamExt;
use paylake_jobs::EngineSettings;
use paylake_lake::Lake;
use paylake_serve::{bind, serve, ServeOptions};
use tonic::transport::Channel;

const TOKEN: &str = "in-process-token";

struct Running {
    address: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), paylake_serve::ServeError>>,
    _lake: tempfile::TempDir,
}

async fn start() -> Running {
    let folder = tempfile::tempdir().unwrap();
    let lake = Lake::open(folder.path().to_str().unwrap()).unwrap();
    let options = ServeOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        token: Some(TOKEN.into()),
        engine: EngineSettings::default(),
        timeout: Some(Duration::from_secs(60)),
    };
    let listener = bind(options.bind).await.unwrap();
    let address = listener.address;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(lake, listener, options, async {
        let _ = stopped.await;
    }));
    Running {
        address,
        stop,
        server,
        _lake: folder,
    }
}

async fn client(
    address: std::net::SocketAddr,
    token: Option<&str>,
) -> FlightSqlServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    if let Some(token) = token {
        client.set_header("authorization", format!("Bearer {token}"));
    }
    client
}

async fn query(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, arrow_flight::error::FlightError> {
    let info = client.execute(sql.to_string(), None).await?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("a ticket");
        let stream = client.do_get(ticket).await?;
        batches.extend(stream.try_collect::<Vec<_>>().await?);
    }
    Ok(batches)
}

#[tokio::test(flavor = "multi_thread")]
async fn statements_run_read_only_behind_the_token_and_the_server_stops_cleanly() {
    let running = start().await;

    let mut authorised = client(running.address, Some(TOKEN)).await;
    let batches = query(
        &mut authorised,
        "SELECT value AS n, 'row ' || value AS label FROM generate_series(1, 3) ORDER BY n",
    )
    .await
    .unwrap();
    let batch = datafusion::arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    assert_eq!(batch.num_rows(), 3);
    let numbers: Vec<i64> = batch
        .column(0)
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    assert_eq!(numbers, vec![1, 2, 3]);
    // Strings go out as plain Utf8, which every Flight SQL client reads.
    assert_eq!(batch.schema().field(1).data_type(), &DataType::Utf8);
    assert_eq!(batch.column(1).as_string::<i32>().value(2), "row 3");

    for refused in [
        "CREATE TABLE t AS SELECT 1 AS x",
        "COPY (SELECT 1 AS x) TO '/tmp/paylake-serve-copy.csv'",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let error = query(&mut authorised, refused)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("read-only"), "{refused}: {error}");
    }
    assert!(!std::path::Path::new("/tmp/paylake-serve-copy.csv").exists());

    for token in [None, Some("wrong")] {
        let mut stranger = client(running.address, token).await;
        let error = query(&mut stranger, "SELECT 1")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("bearer token is required"),
            "{token:?}: {error}"
        );
        let error = stranger.get_catalogs().await.unwrap_err().to_string();
        assert!(
            error.contains("bearer token is required"),
            "{token:?}: {error}"
        );
    }

    running.stop.send(()).unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(30), running.server)
        .await
        .expect("the server stops");
    stopped.unwrap().unwrap();
}
