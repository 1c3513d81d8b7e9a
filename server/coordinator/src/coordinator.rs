//! The coordinator (Spark's driver) as a service: the catalog, the query engine, the scheduler
//! and the cluster manager's gRPC service for executors, built from the configuration. Client
//! frontends are not part of it: they take its [`QueryEngine`] and serve beside it.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionContext;
use ember_config::EmberConfig;
use ember_planner::cache::CacheLimits;
use ember_planner::float_stats::FloatSafeParquetFactory;
use ember_planner::paths::AllowedPaths;
use ember_planner::session::{
    DEFAULT_CATALOG, EmberOptions, distributed_config, distributed_state,
};
use ember_planner::storage::{EmberObjectStores, S3Options};
use ember_protocol::FlightShuffleFetcher;
use ember_protocol::membership::ClusterCredentials;
use ember_protocol::proto::cluster_service_server::ClusterServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tracing::info;

use crate::access::AccessControl;
use crate::catalog::{CatalogStore, VersionedCatalog};
use crate::cluster::{ClusterManagerService, ExecutorLimits};
use crate::cluster_manager::{AllocationPolicy, Allocations, Allocator, ClusterManager};
use crate::engine::QueryEngine;
use crate::error::{Error, Result};
use crate::history::{EventLog, History};
use crate::monitor::Monitor;
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerHandle};
use crate::standalone::Workers;
use crate::status::Metrics;
use crate::system_tables::{SYSTEM_SCHEMA, SystemSchema};

/// A coordinator's parts, before `run` starts serving.
pub struct Coordinator {
    engine: Arc<QueryEngine>,
    scheduler: Scheduler,
    handle: SchedulerHandle,
    grpc_listener: TcpListener,
    max_message_size: usize,
    cluster: ClusterCredentials,
    limits: ExecutorLimits,
    /// Executors requested from a cluster manager, with the policy that sizes them.
    allocations: Arc<Allocations>,
    cluster_manager: Option<(Arc<dyn ClusterManager>, AllocationPolicy)>,
    /// Standalone workers (`cluster_manager.kind = "standalone"`): they connect to the
    /// executors' gRPC port and are this coordinator's cluster manager.
    workers: Option<Arc<Workers>>,
}

impl Coordinator {
    /// Builds the catalog (generating TPC-H sample data if configured), the engine and the
    /// scheduler. Executors join by proving the secret behind `cluster`'s key, over its TLS
    /// when set. The executors' listener is bound by the caller so tests can use ephemeral
    /// ports.
    pub async fn new(
        config: &EmberConfig,
        cluster: ClusterCredentials,
        grpc_listener: TcpListener,
    ) -> Result<Self> {
        ember_protocol::tls::install_crypto_provider();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let allowed_paths = AllowedPaths::from_config(config, &[])?;
        let runtime = RuntimeEnvBuilder::new()
            .with_cache_manager(CacheLimits::from_config(&config.cache).cache_config())
            .with_object_store_registry(Arc::new(EmberObjectStores::new(
                S3Options::from_config(&config.storage),
                Arc::new(allowed_paths.clone()),
            )))
            .build_arc()?;
        let mut session_config =
            distributed_config(cores).with_option_extension(EmberOptions::from_config(config));
        session_config
            .options_mut()
            .optimizer
            .hash_join_single_partition_threshold =
            usize::try_from(config.coordinator.broadcast_join_bytes).unwrap_or(usize::MAX);
        let ctx = SessionContext::new_with_state(distributed_state(session_config, runtime));
        if config.coordinator.filtered_joins_first {
            ctx.add_optimizer_rule(Arc::new(ember_planner::join_order::FilteredJoinsFirst));
        }
        // `STORED AS PARQUET` and COPY resolve formats by name: theirs keeps NaN too.
        ctx.state_ref()
            .write()
            .register_file_format(Arc::new(FloatSafeParquetFactory::default()), true)?;
        // `STORED AS DELTA`: Delta tables other engines may write too.
        ctx.state_ref()
            .write()
            .table_factories_mut()
            .insert("DELTA".into(), Arc::new(ember_delta::DeltaTableFactory));
        let metrics = Arc::new(Metrics::new());
        let (mut scheduler, handle) =
            Scheduler::new(SchedulerConfig::from_config(config), Arc::clone(&metrics));
        let history = History::open(&config.coordinator.data_dir, &config.history)?;
        if let Some(history) = &history {
            scheduler = scheduler.with_event_log(EventLog::start(Arc::clone(history))?);
        }
        let catalog = ctx
            .catalog(DEFAULT_CATALOG)
            .ok_or_else(|| Error::Unavailable("the default catalog is missing".into()))?;
        // Names of Delta tables' earlier versions resolve too (`t@v3`).
        let snapshots = ember_delta::SnapshotCache::new(config.cache.delta_snapshot_bytes);
        ctx.register_catalog(
            DEFAULT_CATALOG,
            Arc::new(VersionedCatalog::new(catalog, snapshots)?),
        );
        let catalog = ctx
            .catalog(DEFAULT_CATALOG)
            .ok_or_else(|| Error::Unavailable("the default catalog is missing".into()))?;
        let access = Arc::new(AccessControl::new(&config.auth)?);
        let allocations = Arc::new(Allocations::default());
        catalog.register_schema(
            SYSTEM_SCHEMA,
            Arc::new(SystemSchema::new(
                handle.clone(),
                Arc::clone(&access),
                Arc::clone(&allocations),
            )),
        )?;
        if config.tpch.scale > 0.0 {
            register_tpch(&ctx, &config.coordinator.data_dir, config.tpch.scale).await?;
        }
        let fetcher = Arc::new(FlightShuffleFetcher::new(
            config.coordinator.max_message_size,
            &cluster,
            "coordinator",
        ));
        let workers = (config.cluster_manager.kind == "standalone").then(|| {
            Workers::new(
                Arc::new(cluster.key.clone()),
                config.coordinator.max_executors,
            )
        });
        let monitor = Monitor::new(
            handle.clone(),
            Arc::clone(&access),
            metrics,
            Arc::default(),
            history,
            Arc::clone(&allocations),
            serde_json::to_value(config).unwrap_or_default(),
        );
        let store = Arc::new(CatalogStore::open(&config.coordinator.data_dir, access)?);
        store.restore(&ctx.state(), DEFAULT_CATALOG).await?;
        let engine = Arc::new(QueryEngine::new(
            ctx.state(),
            handle.clone(),
            fetcher,
            store,
            allowed_paths,
            monitor,
        )?);
        Ok(Self {
            engine,
            scheduler,
            handle,
            grpc_listener,
            max_message_size: config.coordinator.max_message_size,
            cluster,
            limits: ExecutorLimits {
                max_slots: config.coordinator.max_executor_slots,
                max_memory: config.coordinator.max_executor_memory,
            },
            allocations,
            cluster_manager: workers.clone().map(|workers| {
                (
                    workers as Arc<dyn ClusterManager>,
                    AllocationPolicy::from_config(config),
                )
            }),
            workers,
        })
    }

    /// Has `manager` start and replace executors as `policy` says (without one, executors
    /// are started by hand and register themselves).
    pub fn with_cluster_manager(
        mut self,
        manager: Arc<dyn ClusterManager>,
        policy: AllocationPolicy,
    ) -> Self {
        self.cluster_manager = Some((manager, policy));
        self
    }

    /// The engine frontends run statements through.
    pub fn engine(&self) -> Arc<QueryEngine> {
        Arc::clone(&self.engine)
    }

    /// Serves executors and schedules queries until `shutdown` completes; queries still running
    /// then fail with 57P01.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let scheduler = tokio::spawn(self.scheduler.run(stopped(stop_rx.clone())));
        let allocator = self.cluster_manager.map(|(manager, policy)| {
            let allocator = Allocator::new(
                manager,
                policy,
                self.handle.clone(),
                Arc::clone(&self.allocations),
            );
            tokio::spawn(allocator.run(stopped(stop_rx.clone())))
        });
        let service = ClusterServiceServer::new(ClusterManagerService::new(
            self.handle.clone(),
            Arc::new(self.cluster.key),
            self.limits,
            self.workers,
        ))
        .max_decoding_message_size(self.max_message_size)
        .max_encoding_message_size(self.max_message_size);
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = &self.cluster.tls {
            server = server
                .tls_config(tls.server())
                .map_err(|e| Error::Unavailable(format!("cluster TLS: {e}")))?;
        }
        info!(addr = %self.grpc_listener.local_addr()?, tls = self.cluster.tls.is_some(), "coordinator gRPC listening");
        let grpc = tokio::spawn(server.add_service(service).serve_with_incoming_shutdown(
            // Small messages (launches, statuses) must not wait for Nagle's algorithm.
            TcpIncoming::from(self.grpc_listener).with_nodelay(Some(true)),
            stopped(stop_rx.clone()),
        ));
        shutdown.await;
        info!("coordinator shutting down");
        let _ = stop_tx.send(true);
        if let Some(allocator) = allocator {
            let _ = allocator.await;
        }
        let _ = grpc.await;
        let _ = scheduler.await;
        Ok(())
    }
}

/// Resolves once the watch flips to `true` (or its sender is gone).
pub async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn register_tpch(ctx: &SessionContext, data_dir: &std::path::Path, scale: f64) -> Result<()> {
    let base: PathBuf = data_dir.join("tpch");
    info!(scale, path = %base.display(), "preparing TPC-H sample data");
    let dir = tokio::task::spawn_blocking(move || ember_planner::tpch::generate(&base, scale))
        .await
        .map_err(|e| Error::Unavailable(format!("tpch generation panicked: {e}")))??;
    let dir = std::fs::canonicalize(&dir)?;
    ember_planner::tpch::register(ctx, "tpch", &dir).await?;
    Ok(())
}
