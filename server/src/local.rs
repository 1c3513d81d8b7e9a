//! `ember local`: a coordinator and N executors in one process, talking over loopback through
//! exactly the same gRPC and Flight code as separate processes.

use std::future::Future;
use std::time::Duration;

use ember_config::EmberConfig;
use ember_executor::{Executor, ExecutorOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::coordinator::{Coordinator, stopped};
use crate::error::Result;

/// A running local cluster: the coordinator and its executors, stopped together.
pub struct LocalCluster {
    pub pg_addr: std::net::SocketAddr,
    pub grpc_addr: std::net::SocketAddr,
    pub flight_sql_addr: std::net::SocketAddr,
    coordinator: Coordinator,
    executors: Vec<Executor>,
}

impl LocalCluster {
    /// Binds every listener and prepares every part; nothing serves until `run`.
    pub async fn start(config: &EmberConfig) -> Result<Self> {
        let host = &config.coordinator.bind_host;
        let grpc_listener = TcpListener::bind((host.as_str(), config.coordinator.port)).await?;
        let pg_listener = TcpListener::bind((host.as_str(), config.coordinator.pg_port)).await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let pg_addr = pg_listener.local_addr()?;
        let flight_sql_listener =
            TcpListener::bind((host.as_str(), config.coordinator.flight_sql_port)).await?;
        let flight_sql_addr = flight_sql_listener.local_addr()?;
        // The executors run in this process: they share the key whether configured or random.
        let (key, _) = crate::flight_sql::signing_key(config);
        let coordinator = Coordinator::new(config, grpc_listener, pg_listener)
            .await?
            .with_flight_sql(config, flight_sql_listener, key.clone(), true)?;
        let mut executors = vec![];
        for i in 0..config.local.executors {
            let listener = TcpListener::bind((config.executor.bind_host.as_str(), 0)).await?;
            let work_dir = if config.executor.work_dir.as_os_str().is_empty() {
                config
                    .coordinator
                    .data_dir
                    .join("work")
                    .join(format!("executor-{i}"))
            } else {
                config.executor.work_dir.join(format!("executor-{i}"))
            };
            let mut options =
                executor_options(config, format!("127.0.0.1:{}", grpc_addr.port()), work_dir);
            if config.executor.slots == 0 {
                // The executors share this machine: together they get one slot per core, as
                // single-node DataFusion gets one partition per core.
                options.slots = (options.slots / config.local.executors.max(1)).max(1);
            }
            if config.executor.memory == 0 {
                options.memory /= config.local.executors.max(1) as u64;
            }
            options.client_key = Some(key.clone());
            executors.push(Executor::new(options, listener));
        }
        Ok(Self {
            pg_addr,
            grpc_addr,
            flight_sql_addr,
            coordinator,
            executors,
        })
    }

    pub fn engine(&self) -> std::sync::Arc<crate::engine::QueryEngine> {
        self.coordinator.engine()
    }

    /// Runs until `shutdown` completes, then stops the executors and the coordinator.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = vec![];
        for executor in self.executors {
            tasks.push(tokio::spawn(executor.run(stopped(stop_rx.clone()))));
        }
        let coordinator = tokio::spawn(self.coordinator.run(stopped(stop_rx.clone())));
        info!(pg = %self.pg_addr, grpc = %self.grpc_addr, executors = tasks.len(), "local cluster running");
        shutdown.await;
        let _ = stop_tx.send(true);
        for task in tasks {
            let _ = task.await;
        }
        let _ = coordinator.await;
        Ok(())
    }
}

/// Executor options from the config; `slots` 0 means one per core.
pub fn executor_options(
    config: &EmberConfig,
    coordinator: String,
    work_dir: std::path::PathBuf,
) -> ExecutorOptions {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    ExecutorOptions {
        coordinator,
        advertise_host: config.executor.bind_host.clone(),
        work_dir,
        slots: if config.executor.slots == 0 {
            cores
        } else {
            config.executor.slots
        },
        memory: if config.executor.memory == 0 {
            default_executor_memory()
        } else {
            config.executor.memory
        },
        max_disk_bytes: config.executor.max_disk_bytes,
        heartbeat_interval: Duration::from_millis(config.executor.heartbeat_interval_ms),
        max_message_size: config.coordinator.max_message_size,
        allowed_paths: config.allowed_paths(),
        cache: cache_limits(config),
        s3: s3_options(config),
        // Flight SQL clients fetch result partitions from executors with the coordinator's
        // tickets: a stand-alone executor needs the shared secret to check them.
        client_key: (!config.auth.flight_secret.is_empty()).then(|| {
            ember_executor::client_auth::SigningKey::from_secret(&config.auth.flight_secret)
        }),
    }
}

/// Memory for an executor that was given none: 60% of the machine's, the rest left to the
/// operating system, buffers and the coordinator (0, no limit, where it cannot be read).
fn default_executor_memory() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .unwrap_or(0);
    total_kib * 1024 / 10 * 6
}

/// The S3 settings of the config.
pub fn s3_options(config: &EmberConfig) -> ember_planner::storage::S3Options {
    let storage = &config.storage;
    ember_planner::storage::S3Options {
        endpoint: storage.s3_endpoint.clone(),
        region: storage.s3_region.clone(),
        access_key_id: storage.s3_access_key_id.clone(),
        secret_access_key: storage.s3_secret_access_key.clone(),
        allow_http: storage.s3_allow_http,
    }
}

/// The metadata cache sizes of the config.
pub fn cache_limits(config: &EmberConfig) -> ember_planner::cache::CacheLimits {
    let bytes = |b: u64| usize::try_from(b).unwrap_or(usize::MAX);
    ember_planner::cache::CacheLimits {
        metadata_bytes: bytes(config.cache.metadata_bytes),
        listing_bytes: bytes(config.cache.listing_bytes),
        statistics_bytes: bytes(config.cache.statistics_bytes),
        listing_ttl: (config.cache.listing_ttl_ms > 0)
            .then(|| Duration::from_millis(config.cache.listing_ttl_ms)),
    }
}
