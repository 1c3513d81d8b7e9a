//! `ember local`: a coordinator and N executors in one process, talking over loopback through
//! exactly the same gRPC and Flight code as separate processes.

use std::future::Future;

use ember_config::EmberConfig;
use ember_coordinator::stopped;
use ember_executor::{Executor, ExecutorOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::Result;
use crate::roles::{CoordinatorListeners, CoordinatorRole, signing_key};
use crate::secrets::local_credentials;

/// A running local cluster: the coordinator and its executors, stopped together.
pub struct LocalCluster {
    /// Where Postgres clients connect.
    pub pg_addr: std::net::SocketAddr,
    /// Where executors register.
    pub grpc_addr: std::net::SocketAddr,
    /// Where Flight SQL clients connect.
    pub flight_sql_addr: std::net::SocketAddr,
    coordinator: CoordinatorRole,
    executors: Vec<Executor>,
}

impl LocalCluster {
    /// Binds every listener and prepares every part; nothing serves until `run`.
    pub async fn start(config: &EmberConfig) -> Result<Self> {
        let listeners = CoordinatorListeners::bind(config).await?;
        let grpc_addr = listeners.grpc.local_addr()?;
        let pg_addr = listeners.pg.local_addr()?;
        let flight_sql_addr = listeners.flight_sql.local_addr()?;
        // The executors run in this process: they share the key whether configured or random.
        let (key, _) = signing_key(config);
        // A new cluster secret and an ephemeral CA at every start unless configured: only these
        // executors can join, over TLS.
        let cluster = local_credentials(config)?;
        let coordinator =
            CoordinatorRole::new(config, listeners, key.clone(), true, cluster.clone()).await?;
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
            let mut options = ExecutorOptions::from_config(
                config,
                format!("127.0.0.1:{}", grpc_addr.port()),
                work_dir,
                cluster.clone(),
            )?;
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

    /// The engine the frontends run statements through.
    pub fn engine(&self) -> std::sync::Arc<ember_coordinator::QueryEngine> {
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
