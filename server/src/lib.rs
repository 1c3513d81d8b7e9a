//! The `ember` binary's library: the composition root. It parses the command line and runs a
//! role, putting the coordinator (`ember-coordinator`), its frontends (`ember-pgwire`,
//! `ember-flight-sql`) and executors (`ember-executor`) together; it also holds the benchmark
//! and the `ember sql` shell, a Flight SQL client.
//!
//! ```text
//!  ember coordinator ─► CoordinatorRole: Coordinator + PgServer + FlightSqlServer
//!  ember executor    ─► Executor
//!  ember local       ─► CoordinatorRole + N Executors in one process (LocalCluster)
//!  ember sql         ─► shell ── Flight SQL ──► a coordinator
//!  ember bench tpch  ─► LocalCluster vs single-node DataFusion, same files
//! ```
//! Only this crate depends on every other one.

pub mod bench;
pub mod cli;
pub mod layers;
pub mod local;
pub mod roles;
pub mod secrets;
pub mod shell;
pub mod worker;

pub use local::LocalCluster;

/// Errors of the roles: a coordinator's, or an executor's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The coordinator or a frontend failed.
    #[error(transparent)]
    Coordinator(#[from] ember_coordinator::Error),
    /// An executor failed.
    #[error(transparent)]
    Executor(#[from] ember_executor::Error),
    /// A listener could not be bound.
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    /// A port could not be listened on: which one, and what moves it.
    #[error(
        "cannot listen for {what} on {address}: {error} (another process holds it? move it with {flag} or the setting {setting})"
    )]
    Listen {
        /// What the port is for.
        what: &'static str,
        /// Host and port.
        address: String,
        /// The flag that sets the port.
        flag: &'static str,
        /// The setting that sets it (`section.key`, or `EMBER_SECTION_KEY`).
        setting: &'static str,
        /// Why.
        error: std::io::Error,
    },
}

/// Binds `host:port`, or says which port failed and how to move it.
pub(crate) async fn listen(
    host: &str,
    port: u16,
    what: &'static str,
    flag: &'static str,
    setting: &'static str,
) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind((host, port))
        .await
        .map_err(|error| Error::Listen {
            what,
            address: format!("{host}:{port}"),
            flag,
            setting,
            error,
        })
}

/// Result with the roles' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
