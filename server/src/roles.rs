//! The coordinator role: the coordinator library with its frontends beside it, on listeners
//! bound by the caller. This is where Ember is composed; nothing below it knows the others.
//!
//! ```text
//!  PgServer (ember-pgwire) ────────────┐
//!  FlightSqlServer (ember-flight-sql) ─┼─► QueryEngine ◄─ Coordinator (ember-coordinator)
//!  HttpServer (ember-http) ────────────┘   (monitor)       scheduler, executors' gRPC
//! ```
//! Shutdown stops everything at once: the frontends accept no more clients and the scheduler
//! stops, so statements still running end with 57P01 (their clients see why) instead of
//! keeping a graceful shutdown waiting; then it waits for every part to finish.

use std::future::Future;
use std::sync::Arc;

use ember_config::EmberConfig;
use ember_coordinator::{AllocationPolicy, ClusterManager, Coordinator, QueryEngine, stopped};
use ember_flight_sql::{ExecutorEndpoints, FlightSqlServer};
use ember_http::HttpServer;
use ember_pgwire::PgServer;
use ember_protocol::credentials::SigningKey;
use ember_protocol::membership::ClusterCredentials;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::{Result, listen};

/// The listeners of a coordinator: executors' gRPC, Postgres, Flight SQL.
#[derive(Debug)]
pub struct CoordinatorListeners {
    /// `coordinator.port`: executors register here.
    pub grpc: TcpListener,
    /// `coordinator.pg_port`: Postgres clients.
    pub pg: TcpListener,
    /// `coordinator.flight_sql_port`: Flight SQL clients.
    pub flight_sql: TcpListener,
    /// `http.port`: the web UI, REST API and metrics (none when `http.enabled` is false).
    pub http: Option<TcpListener>,
}

impl CoordinatorListeners {
    /// Binds the configured ports (0: any free port): the client ports on
    /// `coordinator.bind_host`, the cluster port on `coordinator.cluster_bind_host`.
    pub async fn bind(config: &EmberConfig) -> Result<Self> {
        let host = config.coordinator.bind_host.as_str();
        let cluster_host = config.coordinator.cluster_bind_host.as_str();
        Ok(Self {
            grpc: listen(
                cluster_host,
                config.coordinator.port,
                "executors (coordinator gRPC)",
                "--port",
                "coordinator.port",
            )
            .await?,
            pg: listen(
                host,
                config.coordinator.pg_port,
                "Postgres clients",
                "--pg-port",
                "coordinator.pg_port",
            )
            .await?,
            flight_sql: listen(
                host,
                config.coordinator.flight_sql_port,
                "Flight SQL clients",
                "--flight-sql-port",
                "coordinator.flight_sql_port",
            )
            .await?,
            http: match config.http.enabled {
                true => Some(
                    listen(
                        host,
                        config.http.port,
                        "the web UI and REST API (HTTP)",
                        "--http-port",
                        "http.port",
                    )
                    .await?,
                ),
                false => None,
            },
        })
    }
}

/// A coordinator and its frontends, ready to serve.
pub struct CoordinatorRole {
    coordinator: Coordinator,
    pg: PgServer,
    flight_sql: FlightSqlServer,
    http: Option<HttpServer>,
}

impl CoordinatorRole {
    /// Builds the coordinator and its frontends. `key` signs Flight SQL tokens and tickets;
    /// `shared_key` says whether every executor knows it (else results are relayed).
    /// Executors join by proving the secret behind `cluster`'s key.
    pub async fn new(
        config: &EmberConfig,
        listeners: CoordinatorListeners,
        key: SigningKey,
        shared_key: bool,
        cluster: ClusterCredentials,
    ) -> Result<Self> {
        let executors = match &cluster.tls {
            None => ExecutorEndpoints::Plain,
            Some(_) if !config.tls.cluster_ca_file.as_os_str().is_empty() => ExecutorEndpoints::Tls,
            // `ember local`'s ephemeral CA: no client can verify it.
            Some(_) => ExecutorEndpoints::Hidden,
        };
        let coordinator = Coordinator::new(config, cluster, listeners.grpc).await?;
        let engine = coordinator.engine();
        let pg = PgServer::new(
            Arc::clone(&engine),
            &config.auth,
            &config.tls,
            config.coordinator.max_sessions_per_user,
            listeners.pg,
        )
        .await?
        .with_max_connections(config.coordinator.max_connections);
        let http = listeners
            .http
            .map(|listener| HttpServer::new(Arc::clone(&engine), config, listener));
        let flight_sql = FlightSqlServer::new(
            engine,
            config,
            key,
            shared_key,
            executors,
            listeners.flight_sql,
        )?;
        Ok(Self {
            coordinator,
            pg,
            flight_sql,
            http,
        })
    }

    /// Has `manager` start and replace the executors `policy` asks for.
    pub fn with_cluster_manager(
        mut self,
        manager: Arc<dyn ClusterManager>,
        policy: AllocationPolicy,
    ) -> Self {
        self.coordinator = self.coordinator.with_cluster_manager(manager, policy);
        self
    }

    /// The engine the frontends run statements through.
    pub fn engine(&self) -> Arc<QueryEngine> {
        self.coordinator.engine()
    }

    /// Serves executors and clients until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let coordinator = tokio::spawn(self.coordinator.run(stopped(stop_rx.clone())));
        let pg = tokio::spawn(self.pg.run(stopped(stop_rx.clone())));
        let flight_sql = tokio::spawn(self.flight_sql.run(stopped(stop_rx.clone())));
        let http = self
            .http
            .map(|http| tokio::spawn(http.run(stopped(stop_rx))));
        shutdown.await;
        let _ = stop_tx.send(true);
        if let Some(http) = http {
            let _ = http.await;
        }
        let _ = flight_sql.await;
        let _ = pg.await;
        let _ = coordinator.await;
        Ok(())
    }
}

/// The key of the configuration's `auth.flight_secret`, or a random one; `true` when it came
/// from the configuration (and so is known to every executor configured alike).
pub fn signing_key(config: &EmberConfig) -> (SigningKey, bool) {
    ember_flight_sql::signing_key(config)
}
