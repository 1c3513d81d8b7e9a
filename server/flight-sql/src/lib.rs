//! Ember's Arrow Flight SQL frontend (ADBC, pyarrow, Flight SQL JDBC, `ember sql`), built on
//! arrow-flight's `FlightSqlService`. Sessions speak DataFusion's own SQL (no Postgres
//! variables); statements run through the coordinator's `QueryEngine`, and a distributed
//! query's result partitions are handed to clients straight from the executors computing them.
//!
//! ```text
//!  client ── Handshake (Basic) ──────────────► Bearer token (signed: session, user, expiry)
//!         ── GetFlightInfo(statement) ───────► plan, start the query, FlightInfo:
//!                                               one endpoint per result partition
//!         ── DoGet(ticket) ─► executor ───────► the partition's live batches (direct), or
//!         ── DoGet(ticket) ─► coordinator ────► relayed batches (proxy, local answers, metadata)
//! ```
//! Every GetFlightInfo starts its statement and keeps the answer for its tickets
//! ([`results::ResultStore`]); tickets are signed, name the user and expire, so they stay valid
//! after the prepared statement that produced them is closed, and cannot be forged or guessed.

mod auth;
mod ingest;
mod metadata;
mod prepared;
mod results;
mod service;
mod session_options;
mod sql_info;
mod statements;
mod status;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use ember_config::EmberConfig;
use ember_protocol::credentials::SigningKey;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, ServerTlsConfig};
use tracing::info;

use ember_coordinator::{QueryEngine, Result};
use service::EmberFlightSql;

/// Whether and how clients may fetch result partitions from executors themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorEndpoints {
    /// Executors' Flight ports are plaintext: `grpc+tcp://` locations.
    Plain,
    /// Executors' Flight ports speak TLS with certificates clients can verify (the operator's
    /// cluster CA): `grpc+tls://` locations.
    Tls,
    /// Clients could not verify the executors (an ephemeral CA): the coordinator relays.
    Hidden,
}

/// What the Flight SQL frontend needs from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct FlightSqlOptions {
    /// Signs tokens and tickets; executors that trust it serve result partitions directly.
    pub(crate) key: SigningKey,
    /// Relay every result through the coordinator instead of pointing clients at executors.
    pub(crate) proxy: bool,
    pub(crate) fetch_timeout: Duration,
    pub(crate) token_ttl: Duration,
    pub(crate) sessions: auth::SessionLimits,
    /// Bytes one ingest may send.
    pub(crate) max_ingest_bytes: usize,
    pub(crate) max_message_size: usize,
    /// How clients dial executors for result partitions.
    pub(crate) executor_scheme: &'static str,
}

impl FlightSqlOptions {
    /// From the configuration. Without `auth.flight_secret` the key is random and only
    /// executors of this process (`ember local`) can check tickets: `shared_key` says whether
    /// the key reaches every executor, and results are relayed when it does not.
    pub(crate) fn from_config(
        config: &EmberConfig,
        key: SigningKey,
        shared_key: bool,
        executors: ExecutorEndpoints,
    ) -> Self {
        let client_tls = !config.tls.cert_file.as_os_str().is_empty();
        // A client that reached us over TLS is never sent, with its token, to a plaintext port,
        // nor to one whose certificate it cannot verify.
        let proxy = config.coordinator.flight_sql_proxy
            || !shared_key
            || executors == ExecutorEndpoints::Hidden
            || (client_tls && executors == ExecutorEndpoints::Plain);
        if !config.coordinator.flight_sql_proxy && !shared_key {
            info!(
                "auth.flight_secret is not set: Flight SQL results are relayed by the coordinator \
                 (set it alike on coordinator and executors for direct endpoints)"
            );
        }
        Self {
            key,
            proxy,
            fetch_timeout: Duration::from_millis(config.coordinator.flight_sql_fetch_timeout_ms),
            token_ttl: Duration::from_millis(config.auth.token_ttl_ms),
            sessions: auth::SessionLimits {
                max_sessions: config.coordinator.max_connections,
                max_sessions_per_user: config.coordinator.max_sessions_per_user,
                idle: Duration::from_millis(config.coordinator.flight_sql_session_idle_ms),
            },
            max_ingest_bytes: usize::try_from(config.coordinator.max_ingest_bytes)
                .unwrap_or(usize::MAX),
            max_message_size: config.coordinator.max_message_size,
            executor_scheme: match executors {
                ExecutorEndpoints::Tls => "grpc+tls",
                ExecutorEndpoints::Plain | ExecutorEndpoints::Hidden => "grpc+tcp",
            },
        }
    }
}

/// The key of the configuration's `auth.flight_secret`, or a random one; `true` when it came
/// from the configuration (and so is known to every executor configured alike).
pub fn signing_key(config: &EmberConfig) -> (SigningKey, bool) {
    if config.auth.flight_secret.is_empty() {
        (SigningKey::random(), false)
    } else {
        (SigningKey::from_secret(&config.auth.flight_secret), true)
    }
}

/// The Flight SQL frontend of one coordinator: serves its listener until shut down.
pub struct FlightSqlServer {
    listener: TcpListener,
    service: EmberFlightSql,
    tls: Option<ServerTlsConfig>,
}

impl FlightSqlServer {
    /// The frontend for `engine` on an already-bound listener. `key` signs its tokens and
    /// tickets; `shared_key` says whether every executor trusts it (else results are relayed
    /// by the coordinator); `executors` whether clients can reach executors' ports. The port
    /// speaks TLS with `tls.cert_file` when it is set.
    pub fn new(
        engine: Arc<QueryEngine>,
        config: &EmberConfig,
        key: SigningKey,
        shared_key: bool,
        executors: ExecutorEndpoints,
        listener: TcpListener,
    ) -> Result<Self> {
        let options = FlightSqlOptions::from_config(config, key, shared_key, executors);
        let tls = if config.tls.cert_file.as_os_str().is_empty() {
            None
        } else {
            let read = |path: &std::path::Path| {
                std::fs::read_to_string(path).map_err(|e| {
                    ember_coordinator::Error::Unavailable(format!(
                        "cannot read {}: {e}",
                        path.display()
                    ))
                })
            };
            let identity =
                Identity::from_pem(read(&config.tls.cert_file)?, read(&config.tls.key_file)?);
            Some(ServerTlsConfig::new().identity(identity))
        };
        Ok(Self {
            listener,
            service: EmberFlightSql::new(engine, config, options)?,
            tls,
        })
    }

    /// Serves Flight SQL until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let Self {
            listener,
            service,
            tls,
        } = self;
        info!(addr = %listener.local_addr()?, tls = tls.is_some(), "flight sql listening");
        let max_message_size = service.max_message_size();
        let janitor = service.start_janitor();
        let server = FlightServiceServer::new(service)
            .max_decoding_message_size(max_message_size)
            .max_encoding_message_size(max_message_size);
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).map_err(|e| {
                ember_coordinator::Error::Unavailable(format!("flight sql TLS: {e}"))
            })?;
        }
        let served = builder
            .add_service(server)
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await;
        janitor.abort();
        Ok(served?)
    }
}
