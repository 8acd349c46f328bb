//! `paylake serve`: the lake's catalog over Arrow Flight SQL, for notebooks (ADBC) and BI tools
//! (the Arrow Flight SQL JDBC/ODBC drivers).
//!
//! Read-only like `paylake sql`: every statement goes through
//! [`paylake_jobs::shell::Shell::plan_query`] (parsed, refused unless it is one query, plan
//! verified), runs on its own engine (the memory limit holds per query) under the timeout, and
//! streams its batches as they come. Handles are stateless: a statement's ticket and a
//! prepared statement's handle carry the SQL itself, so nothing is kept between calls.
//!
//! Metadata: catalogs, schemas (the layers), tables (with their Arrow schemas on request),
//! table types and SQL info, which is what ADBC's `adbc_get_objects`, `adbc_get_table_schema`
//! and `adbc_get_info` ask for; `cursor.execute` creates a prepared statement first.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::common::TableReference;
use futures::{Stream, StreamExt, TryStreamExt};
use paylake_jobs::shell::{Shell, ShellOptions};
use paylake_jobs::{EngineSettings, JobError};
use paylake_lake::Lake;
use prost::Message;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

/// The catalog every lake table is in, as SQL names it (`datafusion.gold.unified_payments`).
pub const CATALOG: &str = "datafusion";

/// The default address: loopback only, so nothing is exposed unless asked for.
pub const DEFAULT_BIND: &str = "127.0.0.1:50051";

/// How the server runs.
#[derive(Clone)]
pub struct ServeOptions {
    pub bind: SocketAddr,
    /// Clients must send `authorization: Bearer <token>` on every call when set.
    pub token: Option<String>,
    /// Each query's engine (memory limit, spill folder).
    pub engine: EngineSettings,
    /// Each query stops after this long (`None`: never).
    pub timeout: Option<Duration>,
}

impl std::fmt::Debug for ServeOptions {
    // The token is a secret: never printed, not even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("bind", &self.bind)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the Flight SQL server stopped: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A bound listener: the address it really has (port 0 picks a free one).
pub struct Listener {
    incoming: TcpIncoming,
    pub address: SocketAddr,
}

/// Binds the server's address (before serving, so that a busy port is a startup error).
pub async fn bind(address: SocketAddr) -> Result<Listener, ServeError> {
    let bind_error = |source| ServeError::Bind { address, source };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(bind_error)?;
    let address = listener.local_addr().map_err(bind_error)?;
    Ok(Listener {
        incoming: TcpIncoming::from(listener).with_nodelay(Some(true)),
        address,
    })
}

/// Serves Flight SQL on `listener` until `shutdown` completes; calls in flight are finished
/// first.
pub async fn serve(
    lake: Lake,
    listener: Listener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let service = LakeFlightService::new(lake, &options);
    let token = options.token.map(Arc::<str>::from);
    let server = FlightServiceServer::with_interceptor(service, move |request: Request<()>| {
        check_token(token.as_deref(), request)
    });
    tonic::transport::Server::builder()
        .add_service(server)
        .serve_with_incoming_shutdown(listener.incoming, shutdown)
        .await?;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM: what `paylake serve` stops on, after the calls in flight.
pub async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM ({e}); stop the server with Ctrl-C");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("stopping: finishing the calls in flight");
}

/// Accepts a call whose `authorization` header is `Bearer <token>` (compared in constant time).
#[allow(clippy::result_large_err)] // tonic's interceptor signature.
fn check_token(token: Option<&str>, request: Request<()>) -> Result<Request<()>, Status> {
    let Some(token) = token else {
        return Ok(request);
    };
    let presented = request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
        Ok(request)
    } else {
        Err(Status::unauthenticated(
            "a bearer token is required (authorization: Bearer <token>), and this one is not it",
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The Flight SQL service over one lake.
pub struct LakeFlightService {
    lake: Lake,
    engine: EngineSettings,
    timeout: Option<Duration>,
    sql_info: SqlInfoData,
}

type FlightDataStream = <LakeFlightService as FlightService>::DoGetStream;

impl LakeFlightService {
    pub fn new(lake: Lake, options: &ServeOptions) -> Self {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "paylake");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
        info.append(SqlInfo::FlightSqlServerReadOnly, true);
        info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        let sql_info = match info.build() {
            Ok(data) => data,
            // Only fails on a value of the wrong type for its name: a bug, caught by the tests.
            Err(e) => unreachable!("SQL info of fixed types: {e}"),
        };
        Self {
            lake,
            engine: options.engine.clone(),
            timeout: options.timeout,
            sql_info,
        }
    }

    /// A read-only session on the lake as it is now (tables built since the server started
    /// are seen).
    async fn shell(&self) -> Result<Shell, Status> {
        Shell::open(
            &self.lake,
            &self.engine,
            ShellOptions {
                timeout: self.timeout,
                allow_writes: false,
            },
        )
        .await
        .map_err(status)
    }

    /// The schema of `sql`'s result, as clients will receive it.
    async fn result_schema(&self, sql: &str) -> Result<SchemaRef, Status> {
        let shell = self.shell().await?;
        let plan = shell.plan_query(sql).await.map_err(status)?;
        Ok(wire_schema(plan.schema().inner()))
    }

    /// Runs `sql` and streams its batches; the session lives as long as the stream.
    async fn stream_query(&self, sql: &str) -> Result<Response<FlightDataStream>, Status> {
        let shell = self.shell().await?;
        let plan = shell.plan_query(sql).await.map_err(status)?;
        let schema = wire_schema(plan.schema().inner());
        let batches = shell.execute(plan).await.map_err(status)?;
        let target = Arc::clone(&schema);
        let batches = batches.map(move |batch| {
            // Keeps the session (its engine and spill folder) until the last batch.
            let _session = &shell;
            let batch = batch.map_err(|e| FlightError::Tonic(Box::new(engine_status(e))))?;
            paylake_lake::delta::cast_batch(&batch, &target).map_err(FlightError::Arrow)
        });
        Ok(encoded(schema, batches))
    }

    fn flight_info(
        &self,
        schema: &Schema,
        ticket: Any,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket.encode_to_vec()));
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("cannot encode the schema: {e}")))?
            .with_endpoint(endpoint)
            .with_descriptor(descriptor);
        Ok(Response::new(info))
    }
}

/// The batches of one result as Flight data.
fn encoded(
    schema: SchemaRef,
    batches: impl Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
) -> Response<FlightDataStream> {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches)
        .map_err(Status::from);
    Response::new(Box::pin(stream))
}

/// A metadata answer (one batch built by arrow-flight's builders) as Flight data.
fn one_batch(
    batch: Result<RecordBatch, impl std::fmt::Display>,
) -> Result<Response<FlightDataStream>, Status> {
    let batch = batch.map_err(|e| Status::internal(e.to_string()))?;
    let schema = batch.schema();
    Ok(encoded(schema, futures::stream::once(async { Ok(batch) })))
}

/// View types (DataFusion's default for strings) sent as plain strings and binaries, which every
/// Flight SQL client (the JDBC driver included) reads; dictionaries (Delta partition columns)
/// sent as their values, which is what arrow-flight's encoder does with the batches.
fn wire_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|field| {
            field
                .as_ref()
                .clone()
                .with_data_type(wire_type(field.data_type()))
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

fn wire_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::Dictionary(_, values) => wire_type(values),
        DataType::List(item) => DataType::List(Arc::new(
            item.as_ref()
                .clone()
                .with_data_type(wire_type(item.data_type())),
        )),
        DataType::LargeList(item) => DataType::LargeList(Arc::new(
            item.as_ref()
                .clone()
                .with_data_type(wire_type(item.data_type())),
        )),
        other => other.clone(),
    }
}

/// A shell error as a gRPC status: the client's mistakes are `invalid_argument`.
fn status(error: JobError) -> Status {
    match error {
        JobError::ReadOnly { .. } | JobError::Query(_) | JobError::NotBuilt { .. } => {
            Status::invalid_argument(error.to_string())
        }
        JobError::Timeout { .. } => Status::deadline_exceeded(error.to_string()),
        JobError::OutOfMemory { .. } => Status::resource_exhausted(error.to_string()),
        other => Status::internal(other.to_string()),
    }
}

fn engine_status(error: datafusion::error::DataFusionError) -> Status {
    match error.find_root() {
        datafusion::error::DataFusionError::External(inner) => {
            if let Some(job) = inner.downcast_ref::<JobError>() {
                if matches!(job, JobError::Timeout { .. }) {
                    return Status::deadline_exceeded(job.to_string());
                }
            }
            Status::internal(error.to_string())
        }
        datafusion::error::DataFusionError::ResourcesExhausted(_) => {
            Status::resource_exhausted(error.to_string())
        }
        _ => Status::internal(error.to_string()),
    }
}

fn sql_of(bytes: &[u8]) -> Result<String, Status> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Status::invalid_argument("the statement handle is not UTF-8 SQL"))
}

#[tonic::async_trait]
impl FlightSqlService for LakeFlightService {
    type FlightService = LakeFlightService;

    /// No handshake is needed: the bearer token (if any) goes with every call.
    async fn do_handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let response = HandshakeResponse {
            protocol_version: 0,
            payload: Default::default(),
        };
        Ok(Response::new(Box::pin(futures::stream::once(async {
            Ok(response)
        }))))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = self.result_schema(&query.query).await?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        self.flight_info(&schema, ticket.as_any(), request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        self.stream_query(&sql_of(&ticket.statement_handle)?).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let schema = self.result_schema(&query.query).await?;
        let IpcMessage(dataset_schema) = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(|e| Status::internal(format!("cannot encode the schema: {e}")))?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: query.query.into_bytes().into(),
            dataset_schema,
            parameter_schema: Default::default(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        // Handles hold their SQL: nothing to free.
        Ok(())
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = self
            .result_schema(&sql_of(&query.prepared_statement_handle)?)
            .await?;
        self.flight_info(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        self.stream_query(&sql_of(&query.prepared_statement_handle)?)
            .await
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.flight_info(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(CATALOG);
        one_batch(builder.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.flight_info(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        let shell = self.shell().await?;
        let mut builder = query.into_builder();
        for schema in lake_schemas(&shell) {
            builder.append(CATALOG, schema);
        }
        one_batch(builder.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.flight_info(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        let shell = self.shell().await?;
        let include_schema = query.include_schema;
        let mut builder = query.into_builder();
        for name in shell.table_names().await {
            let Some((schema, table)) = name.split_once('.') else {
                continue;
            };
            // The builder filters by catalog, schema and name patterns and table types; a
            // table's Arrow schema is read only when asked for.
            let arrow_schema = if include_schema {
                let reference = TableReference::partial(schema, table);
                let provider = shell
                    .session()
                    .table_provider(reference)
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                wire_schema(&provider.schema())
            } else {
                Arc::new(Schema::empty())
            };
            builder
                .append(CATALOG, schema, table, "TABLE", &arrow_schema)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        one_batch(builder.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.flight_info(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        let mut builder = query.into_builder();
        builder.append("TABLE");
        one_batch(builder.build())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        self.flight_info(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        one_batch(query.into_builder(&self.sql_info).build())
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// The schemas a client may list: the lake's layers (not the system ones).
fn lake_schemas(shell: &Shell) -> Vec<String> {
    let Some(catalog) = shell.session().catalog(CATALOG) else {
        return Vec::new();
    };
    let mut names: Vec<String> = catalog
        .schema_names()
        .into_iter()
        .filter(|name| name != "information_schema" && name != "params")
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_must_match_exactly() {
        let with = |header: Option<&str>| {
            let mut request = Request::new(());
            if let Some(header) = header {
                request
                    .metadata_mut()
                    .insert("authorization", header.parse().unwrap());
            }
            check_token(Some("s3cret"), request).is_ok()
        };
        assert!(with(Some("Bearer s3cret")));
        assert!(!with(Some("Bearer s3cret2")));
        assert!(!with(Some("Bearer s3cre")));
        assert!(!with(Some("s3cret")));
        assert!(!with(None));
        assert!(check_token(None, Request::new(())).is_ok());
    }

    #[test]
    fn view_types_go_out_as_plain_types() {
        let schema = Schema::new(vec![
            Field::new("name", DataType::Utf8View, true),
            Field::new("n", DataType::Int64, false),
        ]);
        let wire = wire_schema(&schema);
        assert_eq!(wire.field(0).data_type(), &DataType::Utf8);
        assert_eq!(wire.field(1).data_type(), &DataType::Int64);
    }

    #[test]
    fn the_token_is_never_printed() {
        let options = ServeOptions {
            bind: DEFAULT_BIND.parse().unwrap(),
            token: Some("s3cret".into()),
            engine: EngineSettings::default(),
            timeout: None,
        };
        assert!(!format!("{options:?}").contains("s3cret"));
    }
}
