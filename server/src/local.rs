//! `ember local`: a coordinator and N executors in one process, talking over loopback through
//! exactly the same gRPC and Flight code as separate processes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ember_config::EmberConfig;
use ember_coordinator::{
    AllocationEvent, AllocationEvents, AllocationPolicy, ClusterManager, ExecutorRequest, stopped,
};
use ember_executor::{Executor, ExecutorOptions};
use ember_protocol::credentials::SigningKey;
use ember_protocol::membership::ClusterCredentials;
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
    /// Where the web UI is served (none when `http.enabled` is false).
    pub http_addr: Option<std::net::SocketAddr>,
    coordinator: CoordinatorRole,
}

impl LocalCluster {
    /// Binds every listener and prepares every part; nothing serves until `run`, which starts
    /// `local.executors` executors in this process through the `local` cluster manager.
    pub async fn start(config: &EmberConfig) -> Result<Self> {
        let listeners = CoordinatorListeners::bind(config).await?;
        let grpc_addr = listeners.grpc.local_addr()?;
        let pg_addr = listeners.pg.local_addr()?;
        let flight_sql_addr = listeners.flight_sql.local_addr()?;
        let http_addr = listeners
            .http
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;
        // The executors run in this process: they share the key whether configured or random.
        let (key, _) = signing_key(config);
        // A new cluster secret and an ephemeral CA at every start unless configured: only these
        // executors can join, over TLS.
        let cluster = local_credentials(config)?;
        let mut config = config.clone();
        config.cluster_manager.kind = "local".into();
        config.cluster_manager.executors = config.local.executors;
        let manager = LocalExecutors::new(&config, grpc_addr, cluster.clone(), key.clone());
        let coordinator = CoordinatorRole::new(&config, listeners, key, true, cluster)
            .await?
            .with_cluster_manager(manager, AllocationPolicy::from_config(&config));
        Ok(Self {
            pg_addr,
            grpc_addr,
            flight_sql_addr,
            http_addr,
            coordinator,
        })
    }

    /// The engine the frontends run statements through.
    pub fn engine(&self) -> std::sync::Arc<ember_coordinator::QueryEngine> {
        self.coordinator.engine()
    }

    /// Runs until `shutdown` completes, then stops the coordinator and its executors.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        info!(pg = %self.pg_addr, grpc = %self.grpc_addr, "local cluster running");
        self.coordinator.run(shutdown).await
    }
}

/// The `local` cluster manager: executors in this process, each on its own Flight listener and
/// work dir, talking to the coordinator over loopback through the same gRPC and Flight code as
/// separate processes. Unless `executor.slots`/`memory` (or the request) say otherwise, the
/// `cluster_manager.executors` executors share the machine's cores and memory.
#[derive(Debug)]
pub struct LocalExecutors {
    config: EmberConfig,
    coordinator: String,
    cluster: ClusterCredentials,
    client_key: SigningKey,
    /// The executors running; each removes itself when it ends.
    running: Arc<Mutex<HashMap<String, Running>>>,
}

#[derive(Debug)]
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl LocalExecutors {
    /// Executors registering at `grpc_addr` with `cluster`'s secret; `client_key` checks Flight
    /// SQL clients' tickets.
    pub fn new(
        config: &EmberConfig,
        grpc_addr: std::net::SocketAddr,
        cluster: ClusterCredentials,
        client_key: SigningKey,
    ) -> Arc<Self> {
        Arc::new(Self {
            config: config.clone(),
            coordinator: format!("127.0.0.1:{}", grpc_addr.port()),
            cluster,
            client_key,
            running: Arc::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl ClusterManager for LocalExecutors {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn request(
        &self,
        request: ExecutorRequest,
        events: AllocationEvents,
    ) -> ember_coordinator::Result<()> {
        let config = &self.config;
        let unavailable = |e: &dyn std::fmt::Display| {
            ember_coordinator::Error::Unavailable(format!("cannot start a local executor: {e}"))
        };
        let listener = TcpListener::bind((config.executor.bind_host.as_str(), 0)).await?;
        // One work dir per allocation (ids are unique to this coordinator's run, so two
        // coordinators sharing a data dir never share one), removed when the executor stops.
        let work_dir = if config.executor.work_dir.as_os_str().is_empty() {
            config.coordinator.data_dir.join("work")
        } else {
            config.executor.work_dir.clone()
        }
        .join(&request.allocation_id);
        let mut options = ExecutorOptions::from_config(
            config,
            self.coordinator.clone(),
            work_dir.clone(),
            self.cluster.clone(),
        )
        .map_err(|e| unavailable(&e))?;
        let sharing = config.cluster_manager.executors.max(1);
        options.slots = match (request.slots, config.executor.slots) {
            (0, 0) => (options.slots / sharing).max(1),
            (0, _) => options.slots,
            (slots, _) => slots,
        };
        options.memory = match (request.memory, config.executor.memory) {
            (0, 0) => options.memory / sharing as u64,
            (0, _) => options.memory,
            (memory, _) => memory,
        };
        options.client_key = Some(self.client_key.clone());
        options.allocation_id = request.allocation_id.clone();
        let (stop, stop_rx) = watch::channel(false);
        let executor = Executor::new(options, listener);
        let allocation_id = request.allocation_id.clone();
        events.send(AllocationEvent::Started {
            allocation_id: allocation_id.clone(),
        });
        let running = Arc::clone(&self.running);
        // Held until the executor is listed: one that ends at once removes itself after.
        let mut listed = self.lock();
        let task = tokio::spawn(async move {
            let (reason, clean) = match executor.run(stopped(stop_rx)).await {
                Ok(()) => ("stopped".to_string(), true),
                Err(error) => (error.to_string(), false),
            };
            if let Err(error) = std::fs::remove_dir_all(&work_dir)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %work_dir.display(), %error, "cannot remove a stopped executor's work dir");
            }
            running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&allocation_id);
            events.send(AllocationEvent::Exited {
                allocation_id,
                reason,
                clean,
            });
        });
        listed.insert(request.allocation_id, Running { stop, task });
        Ok(())
    }

    async fn release(&self, allocation_id: &str) -> ember_coordinator::Result<()> {
        let running = self.lock().remove(allocation_id);
        if let Some(running) = running {
            let _ = running.stop.send(true);
            let _ = running.task.await;
        }
        Ok(())
    }

    async fn shutdown(&self) {
        let running: Vec<Running> = self.lock().drain().map(|(_, r)| r).collect();
        for r in &running {
            let _ = r.stop.send(true);
        }
        for r in running {
            let _ = r.task.await;
        }
    }
}
