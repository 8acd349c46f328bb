//! `paylake cluster scheduler|executor`: the nodes of a Ballista cluster that
//! `silver`/`gold --engine ballista://HOST:PORT` run their models on.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use paylake_cluster::{ExecutorOptions, SchedulerOptions};

use crate::{parse_memory_limit, usage, Failure, MemoryLimit};

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// The scheduler: plans each query a client sends into stages and hands their tasks to
    /// the executors that registered with it.
    Scheduler {
        /// Address the scheduler listens on (clients use ballista://HOST:PORT of it).
        #[arg(
            long,
            env = "PAYLAKE_SCHEDULER_BIND",
            default_value = "127.0.0.1:50050"
        )]
        bind: SocketAddr,
        /// Host name executors and clients reach this scheduler by (default: the bind address).
        #[arg(long)]
        external_host: Option<String>,
    },
    /// An executor: runs tasks and serves their results to other executors and to clients over
    /// Arrow Flight. Every executor must see the lake at the same URL (S3, or one shared path).
    Executor {
        /// The scheduler to register with, as HOST:PORT.
        #[arg(long, env = "PAYLAKE_SCHEDULER", default_value = "127.0.0.1:50050", value_parser = parse_host_port)]
        scheduler: (String, u16),
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind_host: String,
        /// Port of the Arrow Flight service (results and shuffle data).
        #[arg(long, default_value_t = 50051)]
        flight_port: u16,
        /// Port of the executor's gRPC service.
        #[arg(long, default_value_t = 50052)]
        grpc_port: u16,
        /// Host name others fetch this executor's results by (default: the bind host).
        #[arg(long)]
        external_host: Option<String>,
        /// Tasks run at once (default: the number of cores).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        concurrent_tasks: Option<u64>,
        /// Folder for shuffle files and spills (default: a temporary folder).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Memory all of this executor's tasks may hold together (e.g. 4GiB); sorts and
        /// aggregations spill beyond it (default: Ballista's share of this machine's memory).
        #[arg(long, value_parser = parse_memory_limit)]
        memory_limit: Option<MemoryLimit>,
    },
}

fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("'{text}' is not HOST:PORT"))?;
    let port = port
        .parse()
        .map_err(|_| format!("'{port}' is not a port number"))?;
    if host.is_empty() {
        return Err(format!("'{text}' names no host"));
    }
    Ok((host.to_string(), port))
}

/// Runs a cluster node until the process is stopped.
pub async fn run(command: ClusterCommand) -> Result<(), Failure> {
    // One line on stdout, for people and for scripts waiting for the node.
    let announce = |line: String| {
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
    };
    let result = match command {
        ClusterCommand::Scheduler {
            bind,
            external_host,
        } => {
            let external_host = external_host.unwrap_or_else(|| bind.ip().to_string());
            announce(format!(
                "paylake cluster scheduler: ballista://{external_host}:{} (listening on {bind})",
                bind.port()
            ));
            paylake_cluster::run_scheduler(SchedulerOptions {
                bind,
                external_host,
            })
            .await
        }
        ClusterCommand::Executor {
            scheduler: (scheduler_host, scheduler_port),
            bind_host,
            flight_port,
            grpc_port,
            external_host,
            concurrent_tasks,
            work_dir,
            memory_limit,
        } => {
            announce(format!(
                "paylake cluster executor: Flight on {bind_host}:{flight_port}, registering with \
                 {scheduler_host}:{scheduler_port}"
            ));
            paylake_cluster::run_executor(ExecutorOptions {
                scheduler_host,
                scheduler_port,
                bind_host,
                flight_port,
                grpc_port,
                external_host,
                concurrent_tasks: concurrent_tasks.map(|n| n as usize),
                work_dir,
                memory_limit: memory_limit.and_then(|limit| limit.0),
            })
            .await
        }
    };
    result.map_err(usage)
}
