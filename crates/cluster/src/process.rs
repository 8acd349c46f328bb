//! The scheduler and executor processes: Ballista's own, started with the object stores a lake
//! lives in (so that they can read `s3://` and shared local lakes) and nothing else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ballista::prelude::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::SessionConfig;

use crate::{ClusterError, DataFreeLeavesAsMemoryScans, LakeStores};

/// `paylake cluster scheduler`.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Address the scheduler's gRPC service listens on.
    pub bind: SocketAddr,
    /// Host name executors and clients reach this scheduler by.
    pub external_host: String,
}

/// `paylake cluster executor`.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    pub scheduler_host: String,
    pub scheduler_port: u16,
    /// Address to listen on; the Flight port serves shuffle and result data.
    pub bind_host: String,
    pub flight_port: u16,
    pub grpc_port: u16,
    /// Host name other executors and clients fetch this executor's results by.
    pub external_host: Option<String>,
    /// Tasks run at once (default: the number of cores).
    pub concurrent_tasks: Option<usize>,
    /// Where shuffle files and spills go (default: a temporary folder).
    pub work_dir: Option<PathBuf>,
    /// Bytes the executor's tasks may hold together; sorts and aggregations spill beyond it.
    pub memory_limit: Option<u64>,
}

fn failed(process: &'static str) -> impl Fn(ballista_core::error::BallistaError) -> ClusterError {
    move |e| ClusterError::Process {
        process,
        reason: e.to_string(),
    }
}

/// Runs a scheduler until the process is stopped. Its sessions plan over [`LakeStores`], so it
/// can list and read the Parquet files of `s3://` and local lakes.
pub async fn run_scheduler(options: SchedulerOptions) -> Result<(), ClusterError> {
    let stores = Arc::new(LakeStores::default());
    let mut config = SchedulerConfig::default()
        .with_hostname(options.external_host.clone())
        .with_port(options.bind.port())
        .with_override_session_builder(Arc::new(move |config| {
            let mut state = ballista_core::utils::default_session_builder(config)?;
            paylake_functions::register(&mut state)?;
            let runtime = RuntimeEnvBuilder::new()
                .with_object_store_registry(stores.clone())
                .build_arc()?;
            Ok(SessionStateBuilder::new_from_existing(state)
                .with_runtime_env(runtime)
                .with_physical_optimizer_rule(Arc::new(DataFreeLeavesAsMemoryScans))
                .build())
        }));
    config.bind_host = options.bind.ip().to_string();
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(failed("scheduler"))?;
    tracing::info!("Ballista scheduler listening on {}", options.bind);
    start_server(cluster, options.bind, Arc::new(config))
        .await
        .map_err(failed("scheduler"))
}

/// Runs an executor until the process is stopped or the scheduler tells it to.
pub async fn run_executor(options: ExecutorOptions) -> Result<(), ClusterError> {
    let stores = Arc::new(LakeStores::default());
    let work_dir = options.work_dir.clone();
    let mut config = ExecutorProcessConfig {
        bind_host: options.bind_host.clone(),
        external_host: options.external_host.clone(),
        port: options.flight_port,
        grpc_port: options.grpc_port,
        scheduler_host: options.scheduler_host.clone(),
        scheduler_port: options.scheduler_port,
        // Wait for a scheduler that is still starting instead of failing at once.
        scheduler_connect_timeout_seconds: 30,
        work_dir: options.work_dir.as_ref().map(|d| d.display().to_string()),
        memory_pool_size: options.memory_limit,
        override_runtime_producer: Some(Arc::new(move |_| {
            let mut runtime = RuntimeEnvBuilder::new().with_object_store_registry(stores.clone());
            if let Some(dir) = &work_dir {
                runtime = runtime.with_temp_file_path(dir);
            }
            runtime.build_arc()
        })),
        ..Default::default()
    };
    // Ballista's default registry holds DataFusion's core functions only; the models also use
    // nested ones (`string_to_array`, …) and paylake's window functions: give executors every
    // function a client session has.
    let executor_error = |e: datafusion::error::DataFusionError| ClusterError::Process {
        process: "executor",
        reason: e.to_string(),
    };
    let mut functions =
        ballista_core::utils::default_session_builder(SessionConfig::new_with_ballista())
            .map_err(executor_error)?;
    paylake_functions::register(&mut functions).map_err(executor_error)?;
    config.override_function_registry = Some(Arc::new(BallistaFunctionRegistry::from(&functions)));
    if let Some(tasks) = options.concurrent_tasks {
        config.vcores = tasks.max(1);
    }
    tracing::info!(
        "Ballista executor on {}:{} for the scheduler at {}:{}",
        options.bind_host,
        options.flight_port,
        options.scheduler_host,
        options.scheduler_port
    );
    start_executor_process(Arc::new(config))
        .await
        .map_err(failed("executor"))
}
