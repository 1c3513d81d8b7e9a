//! The `ember` command line: roles and flags, layered onto the configuration.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ember_coordinator::AllocationPolicy;
use ember_executor::{Executor, ExecutorOptions};
use tracing::info;

use crate::layers::load_config;
use crate::local::LocalCluster;
use crate::roles::{CoordinatorListeners, CoordinatorRole, signing_key};

/// The `ember` command line.
#[derive(Debug, Parser)]
#[command(
    name = "ember",
    version,
    about = "Ember: a distributed SQL engine on DataFusion"
)]
pub struct Cli {
    /// TOML file overlaying the defaults (see config/ember.toml for every key).
    #[arg(long, global = true, env = "EMBER_CONFIG")]
    pub config: Option<PathBuf>,
    /// The role or tool to run.
    #[command(subcommand)]
    pub command: Command,
}

/// What `ember` runs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a coordinator: catalog, scheduler, cluster manager and client frontends.
    Coordinator(CoordinatorArgs),
    /// Run an executor that registers with a coordinator.
    Executor(ExecutorArgs),
    /// Run a standalone worker: it offers this machine to a coordinator whose
    /// `cluster_manager.kind` is `standalone`, and starts executors when the coordinator asks.
    Worker(WorkerArgs),
    /// Run a coordinator and executors in one process (the quickest start).
    Local(LocalArgs),
    /// An interactive SQL shell over Flight SQL (or `-e SQL`, `-f FILE`).
    Sql(crate::shell::SqlArgs),
    /// Benchmarks comparing Ember with single-node DataFusion.
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        bench: crate::bench::BenchCommand,
    },
    /// Print a user entry for `auth.users`: reads the password from standard input (one line)
    /// and prints `NAME:verifier`. The password itself is not kept anywhere.
    Passwd {
        /// The user name.
        name: String,
        /// An md5 verifier (for `auth.method = "md5"`) instead of SCRAM-SHA-256.
        #[arg(long)]
        md5: bool,
    },
}

/// Flags of `ember coordinator` (and `ember local`); each overrides its configuration key.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Directory for catalog and sample data.
    #[arg(long)]
    pub data_dir: Option<String>,
    /// Postgres wire protocol port.
    #[arg(long)]
    pub pg_port: Option<String>,
    /// gRPC port that executors dial.
    #[arg(long)]
    pub port: Option<String>,
    /// Arrow Flight SQL port (0: any free port).
    #[arg(long)]
    pub flight_sql_port: Option<String>,
    /// HTTP port of the web UI, REST API and metrics (0: any free port).
    #[arg(long)]
    pub http_port: Option<String>,
    /// Address to bind the client ports (Postgres, Flight SQL) to.
    #[arg(long)]
    pub bind: Option<String>,
    /// Address to bind the cluster port (where executors register) to; default 127.0.0.1.
    #[arg(long)]
    pub cluster_bind: Option<String>,
    /// Generate TPC-H at this scale factor and register it as schema `tpch`.
    #[arg(long)]
    pub tpch: Option<String>,
    /// Directories (comma-separated) that table and COPY locations must lie in; default the
    /// data dir.
    #[arg(long)]
    pub allowed_paths: Option<String>,
}

/// Flags of `ember executor`; each overrides its configuration key.
#[derive(Debug, Args)]
pub struct ExecutorArgs {
    /// The coordinator's gRPC address, HOST:PORT.
    #[arg(long)]
    pub coordinator: String,
    /// Arrow Flight port for shuffle data (0: any free port).
    #[arg(long)]
    pub flight_port: Option<String>,
    /// Directory for shuffle and spill files.
    #[arg(long)]
    pub work_dir: Option<String>,
    /// Concurrent task slots (default: CPU cores).
    #[arg(long)]
    pub slots: Option<String>,
    /// Memory for tasks, in bytes or with a unit (512MiB, 4GiB).
    #[arg(long)]
    pub memory: Option<String>,
    /// Address to bind the Flight service to; also advertised to peers.
    #[arg(long)]
    pub bind: Option<String>,
    /// The data dir (the default root of the files tasks may scan and write, and of the work
    /// dir).
    #[arg(long)]
    pub data_dir: Option<String>,
    /// Directories (comma-separated) that files scanned or written by tasks must lie in;
    /// default the data dir.
    #[arg(long)]
    pub allowed_paths: Option<String>,
}

/// Flags of `ember worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// `host:port` of the coordinator's gRPC port (`coordinator.port`).
    #[arg(long)]
    pub coordinator: String,
    /// Cores offered to executors (default: this machine's).
    #[arg(long)]
    pub cores: Option<usize>,
    /// Memory offered to executors, for example 16GiB (default: 60% of this machine's).
    #[arg(long)]
    pub memory: Option<String>,
    /// Where executors' work dirs go (default: `<data dir>/work/worker`).
    #[arg(long)]
    pub work_dir: Option<String>,
    /// Data directory (the cluster secret, tables on a shared file system).
    #[arg(long)]
    pub data_dir: Option<String>,
    /// Address executors' Flight ports bind to and advertise.
    #[arg(long)]
    pub bind: Option<String>,
    /// Directories (comma-separated) that table and COPY locations must lie in.
    #[arg(long)]
    pub allowed_paths: Option<String>,
}

/// Flags of `ember local`.
#[derive(Debug, Args)]
pub struct LocalArgs {
    /// The coordinator's flags.
    #[command(flatten)]
    pub coordinator: CoordinatorArgs,
    /// Executors to start in-process.
    #[arg(long)]
    pub executors: Option<String>,
    /// Task slots per executor.
    #[arg(long)]
    pub slots: Option<String>,
    /// Memory per executor, in bytes or with a unit (512MiB, 4GiB).
    #[arg(long)]
    pub memory: Option<String>,
}

fn coordinator_flags(args: &CoordinatorArgs) -> Vec<(&'static str, Option<&String>)> {
    vec![
        ("coordinator.data_dir", args.data_dir.as_ref()),
        ("storage.allowed_paths", args.allowed_paths.as_ref()),
        ("coordinator.pg_port", args.pg_port.as_ref()),
        ("coordinator.port", args.port.as_ref()),
        ("coordinator.flight_sql_port", args.flight_sql_port.as_ref()),
        ("http.port", args.http_port.as_ref()),
        ("coordinator.bind_host", args.bind.as_ref()),
        ("coordinator.cluster_bind_host", args.cluster_bind.as_ref()),
        ("tpch.scale", args.tpch.as_ref()),
    ]
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Terminates on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => ctrl_c().await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c().await;
}

/// SIGTERM, listened for from now on (before an executor is set up, so that a pod deleted while
/// it starts is not killed by the default action).
#[cfg(unix)]
fn terminate_signal() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok()
}

#[cfg(not(unix))]
fn terminate_signal() -> Option<()> {
    None
}

/// An executor's signals: the first SIGTERM decommissions it (a pod deletion, a worker's
/// release); SIGINT or a second SIGTERM stops it at once (the returned future completes).
#[cfg(unix)]
async fn executor_signals(
    term: Option<tokio::signal::unix::Signal>,
    decommission: tokio_util::sync::CancellationToken,
) {
    let Some(mut term) = term else {
        return ctrl_c().await;
    };
    tokio::select! {
        _ = ctrl_c() => return,
        _ = term.recv() => {}
    }
    info!("SIGTERM: decommissioning (a second signal stops at once)");
    decommission.cancel();
    tokio::select! {
        _ = ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(not(unix))]
async fn executor_signals(_term: Option<()>, _decommission: tokio_util::sync::CancellationToken) {
    ctrl_c().await
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Coordinator(args) => {
            let config = load_config(cli.config.as_ref(), &coordinator_flags(&args))?;
            let listeners = CoordinatorListeners::bind(&config).await?;
            let grpc_addr = listeners.grpc.local_addr()?;
            let (key, shared) = signing_key(&config);
            let cluster = crate::secrets::coordinator_credentials(&config)?;
            let mut coordinator =
                CoordinatorRole::new(&config, listeners, key.clone(), shared, cluster.clone())
                    .await?;
            // `static`: executors are started by hand and register themselves.
            match config.cluster_manager.kind.as_str() {
                "local" => {
                    let manager =
                        crate::local::LocalExecutors::new(&config, grpc_addr, cluster, key);
                    coordinator = coordinator
                        .with_cluster_manager(manager, AllocationPolicy::from_config(&config));
                }
                "kubernetes" => {
                    let manager =
                        ember_kubernetes::KubernetesExecutors::connect(&config, grpc_addr.port())
                            .await?;
                    coordinator = coordinator
                        .with_cluster_manager(manager, AllocationPolicy::from_config(&config));
                }
                // `standalone`: workers connect to the coordinator's cluster service.
                _ => {}
            }
            coordinator.run(shutdown_signal()).await?;
        }
        Command::Executor(args) => {
            let term = terminate_signal();
            let flags = vec![
                ("executor.flight_port", args.flight_port.as_ref()),
                ("executor.work_dir", args.work_dir.as_ref()),
                ("executor.slots", args.slots.as_ref()),
                ("executor.memory", args.memory.as_ref()),
                ("executor.bind_host", args.bind.as_ref()),
                ("coordinator.data_dir", args.data_dir.as_ref()),
                ("storage.allowed_paths", args.allowed_paths.as_ref()),
            ];
            let config = load_config(cli.config.as_ref(), &flags)?;
            let listener = crate::listen(
                config.executor.bind_host.as_str(),
                config.executor.flight_port,
                "shuffle and result reads (executor Flight)",
                "--flight-port",
                "executor.flight_port",
            )
            .await?;
            let work_dir = if config.executor.work_dir.as_os_str().is_empty() {
                config
                    .coordinator
                    .data_dir
                    .join("work")
                    .join(format!("executor-{}", listener.local_addr()?.port()))
            } else {
                config.executor.work_dir.clone()
            };
            let cluster = crate::secrets::executor_credentials(&config).await?;
            let options =
                ExecutorOptions::from_config(&config, args.coordinator.clone(), work_dir, cluster)?;
            let executor = Executor::new(options, listener);
            info!(executor = %executor.name(), coordinator = %args.coordinator, "starting executor");
            let decommission = executor.decommission_token();
            executor.run(executor_signals(term, decommission)).await?;
        }
        Command::Worker(args) => {
            let flags = vec![
                ("executor.memory", args.memory.as_ref()),
                ("executor.bind_host", args.bind.as_ref()),
                ("coordinator.data_dir", args.data_dir.as_ref()),
                ("storage.allowed_paths", args.allowed_paths.as_ref()),
            ];
            let config = load_config(cli.config.as_ref(), &flags)?;
            let cluster = crate::secrets::executor_credentials(&config).await?;
            // What every executor it starts gets besides its own arguments: the same
            // configuration, data dir, bind address and allowed paths.
            let mut executor_args = vec![
                "--data-dir".to_string(),
                config.coordinator.data_dir.display().to_string(),
                "--bind".to_string(),
                config.executor.bind_host.clone(),
            ];
            if let Some(file) = &cli.config {
                executor_args.push("--config".into());
                executor_args.push(file.display().to_string());
            }
            if let Some(paths) = &args.allowed_paths {
                executor_args.push("--allowed-paths".into());
                executor_args.push(paths.clone());
            }
            let options = crate::worker::WorkerOptions {
                coordinator: args.coordinator.clone(),
                cores: args
                    .cores
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                    .max(1),
                memory: match config.executor.memory {
                    0 => ember_executor::executor::default_memory(),
                    memory => memory,
                },
                work_dir: args.work_dir.as_ref().map_or_else(
                    || config.coordinator.data_dir.join("work").join("worker"),
                    PathBuf::from,
                ),
                cluster,
                executor_args,
                name: format!("worker-{}", std::process::id()),
                decommission_grace: std::time::Duration::from_millis(
                    config.executor.decommission_grace_ms,
                ),
            };
            info!(coordinator = %options.coordinator, cores = options.cores, memory = options.memory, "starting worker");
            crate::worker::run(options, shutdown_signal()).await?;
        }
        Command::Local(args) => {
            let mut flags = coordinator_flags(&args.coordinator);
            flags.push(("local.executors", args.executors.as_ref()));
            flags.push(("executor.slots", args.slots.as_ref()));
            flags.push(("executor.memory", args.memory.as_ref()));
            let config = load_config(cli.config.as_ref(), &flags)?;
            let cluster = LocalCluster::start(&config).await?;
            println!(
                "ember local: {} executors; connect with psql -h {} -p {} -U ember -d ember, \
                 or Flight SQL at grpc://{}{}",
                config.local.executors,
                cluster.pg_addr.ip(),
                cluster.pg_addr.port(),
                cluster.flight_sql_addr,
                cluster
                    .http_addr
                    .map(|addr| format!("; web UI at http://{addr}/"))
                    .unwrap_or_default()
            );
            cluster.run(shutdown_signal()).await?;
        }
        Command::Bench { bench } => crate::bench::run(bench, cli.config.as_ref()).await?,
        Command::Sql(args) => crate::shell::run(args).await?,
        Command::Passwd { name, md5 } => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\n', '\r']);
            anyhow::ensure!(!password.is_empty(), "no password on standard input");
            let verifier = if md5 {
                ember_coordinator::users::md5_verifier(&name, password)
            } else {
                ember_coordinator::users::scram_verifier(password)
            };
            println!("{name}:{verifier}");
        }
    }
    Ok(())
}
