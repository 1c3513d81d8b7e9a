//! Ember's Postgres wire protocol frontend (simple and extended query protocols), built on
//! pgwire: psql, pgJDBC, psycopg, SQLAlchemy and BI tools talk to the coordinator through it.
//!
//! ```text
//!  client ──startup (auth.rs: trust | password | md5 | SCRAM, TLS)──► PgServer
//!         ──Query / Parse-Bind-Execute──► PgHandler ──► QueryEngine (ember-coordinator)
//!                                             │  sessions speak the PostgresDialect
//!                                             │  (dialect.rs, pg_compat/: pg_catalog,
//!                                             │   functions, variables, catalog rewrites)
//!         ◄──RowDescription, DataRows (encode.rs), CommandComplete (tags.rs)──┘
//! ```
//!
//! Each connection gets a [`ClientSession`]; statements run through the shared [`QueryEngine`]
//! and rows stream back as the final stage produces them. Errors become ErrorResponses with
//! their SQLSTATE; a failing statement never closes the connection or affects other clients.
//! What is Postgres about Ember lives here: the coordinator knows no OID, tag or variable.

mod auth;
mod column_names;
mod dialect;
mod encode;
mod extended;
mod pg_compat;
mod tags;

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use futures::{Sink, StreamExt, stream};
use pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler;
use pgwire::api::auth::md5pass::Md5PasswordAuthStartupHandler;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::ScramAuth;
use pgwire::api::auth::{
    ServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::portal::Format;
use pgwire::api::query::SimpleQueryHandler;
use pgwire::api::results::{QueryResponse, Response, Tag};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, PgWireServerHandlers, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::response::TransactionStatus;
use pgwire::messages::startup::SecretKey;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::TlsAcceptor;
use tokio::net::TcpListener;
use tracing::{debug, info};

use auth::PgUsers;
pub use dialect::PostgresDialect;
use ember_config::{AuthConfig, TlsConfig};
use ember_coordinator::access::AccessControl;
use ember_coordinator::users::Method;
use ember_coordinator::{
    ClientSession, Deallocate, Error, Output, ParsedStatement, QueryEngine, Result,
    TransactionCommand,
};
use pg_compat::PG_SERVER_VERSION;

/// The frontend's name in sessions, `system.queries.frontend` and metrics.
const FRONTEND: &str = "pgwire";

/// The Postgres frontend of one coordinator: serves its listener until shut down.
pub struct PgServer {
    listener: TcpListener,
    handlers: Arc<PgHandlers>,
    tls: Option<TlsAcceptor>,
    max_connections: usize,
}

impl PgServer {
    /// The frontend for `engine` on an already-bound listener, with the configured
    /// authentication (`auth.*`) and TLS (`tls.*`), and at most `max_connections_per_user`
    /// connections of one user. A bad user entry or an unreadable
    /// certificate stops the start.
    pub async fn new(
        engine: Arc<QueryEngine>,
        auth: &AuthConfig,
        tls: &TlsConfig,
        max_connections_per_user: usize,
        listener: TcpListener,
    ) -> Result<Self> {
        let security = Security::from_config(auth, tls)?;
        let access = Arc::clone(engine.access());
        let dialect: Arc<PostgresDialect> = Arc::new(PostgresDialect::new(&engine).await?);
        let handler = Arc::new({
            let sessions = Arc::new(Sessions {
                engine: Arc::clone(&engine),
                dialect,
                cancel_keys: CancelKeys::default(),
            });
            PgHandler {
                parser: Arc::new(extended::EmberQueryParser::new(
                    Arc::clone(&engine),
                    Arc::clone(&sessions),
                )),
                engine,
                sessions,
                keys: RandomPidSecretKeyGenerator::default(),
            }
        });
        let users = PgUsers(Arc::clone(&access));
        let method = match security.method {
            Method::Trust => StartupMethod::Trust(Arc::clone(&handler)),
            Method::Password => StartupMethod::Password(CleartextPasswordAuthStartupHandler::new(
                users,
                EmberParameters,
            )),
            Method::Md5 => StartupMethod::Md5(Md5PasswordAuthStartupHandler::new(
                Arc::new(users),
                Arc::new(EmberParameters),
            )),
            Method::Scram => StartupMethod::Scram(
                SASLAuthStartupHandler::new(Arc::new(EmberParameters))
                    .with_scram(ScramAuth::new(Arc::new(users))),
            ),
        };
        let startup = Arc::new(Startup {
            method,
            access,
            users: Arc::new(UserConnections {
                max: max_connections_per_user.max(1),
                counts: Mutex::default(),
            }),
        });
        Ok(Self {
            listener,
            handlers: Arc::new(PgHandlers { handler, startup }),
            tls: security.tls,
            max_connections: usize::MAX,
        })
    }

    /// At most `max_connections` clients at once; one more is told "too many clients"
    /// (SQLSTATE 53300) and disconnected, as PostgreSQL does.
    pub fn with_max_connections(mut self, max_connections: usize) -> Self {
        self.max_connections = max_connections.max(1);
        self
    }

    /// Serves Postgres clients until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(
            self.max_connections
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        ));
        serve(self.listener, self.handlers, self.tls, slots, shutdown).await
    }
}

/// PostgreSQL's answer to a client beyond the connection limit: an ErrorResponse (FATAL,
/// SQLSTATE 53300), sent before anything else, then the socket is closed.
fn too_many_clients() -> Vec<u8> {
    let mut fields = vec![];
    for (code, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "53300"),
        (
            b'M',
            "sorry, too many clients already (coordinator.max_connections)",
        ),
    ] {
        fields.push(code);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
    message.extend_from_slice(&fields);
    message
}

async fn serve(
    listener: TcpListener,
    handlers: Arc<PgHandlers>,
    tls: Option<TlsAcceptor>,
    slots: Arc<tokio::sync::Semaphore>,
    shutdown: impl Future<Output = ()>,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "postgres wire protocol listening");
    }
    let metrics = Arc::clone(handlers.handler.engine.monitor().metrics());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((mut socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                        metrics.connection_refused(FRONTEND);
                        tokio::spawn(async move {
                            use tokio::io::AsyncWriteExt;
                            let _ = socket.write_all(&too_many_clients()).await;
                            let _ = socket.shutdown().await;
                        });
                        continue;
                    };
                    let handlers = Arc::clone(&handlers);
                    let tls = tls.clone();
                    let open = metrics.connection_opened(FRONTEND);
                    tokio::spawn(async move {
                        if let Err(error) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                            debug!(%peer, %error, "postgres connection ended with an error");
                        }
                        drop(open);
                        drop(permit);
                    });
                }
                Err(error) => {
                    debug!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

struct PgHandlers {
    handler: Arc<PgHandler>,
    startup: Arc<Startup>,
}

impl PgWireServerHandlers for PgHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.handler)
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        Arc::clone(&self.handler)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.startup)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::clone(&self.handler)
    }
}

/// How the Postgres port checks clients: the authentication method, and TLS.
struct Security {
    method: Method,
    tls: Option<TlsAcceptor>,
}

impl Security {
    /// From `auth.*` and `tls.*`; a bad user entry or an unreadable certificate stops the start.
    fn from_config(auth: &AuthConfig, tls: &TlsConfig) -> Result<Self> {
        let tls = if tls.cert_file.as_os_str().is_empty() {
            None
        } else {
            Some(tls_acceptor(&tls.cert_file, &tls.key_file)?)
        };
        Ok(Self {
            method: Method::parse(&auth.method)?,
            tls,
        })
    }
}

fn tls_acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor> {
    use pgwire::tokio::tokio_rustls::rustls;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let unreadable = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        Error::Unavailable(format!(
            "cannot read the TLS {what} {}: {e}",
            path.display()
        ))
    };
    let certificates = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| unreadable("certificate", cert_file, &e))?;
    let key =
        PrivateKeyDer::from_pem_file(key_file).map_err(|e| unreadable("key", key_file, &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|builder| {
        builder
            .with_no_client_auth()
            .with_single_cert(certificates, key)
    })
    .map_err(|e| Error::Unavailable(format!("invalid TLS certificate or key: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The startup exchange of the configured authentication method, then the per-user
/// connection limit.
struct Startup {
    method: StartupMethod,
    /// Under trust, only the login check stands between a client and its session.
    access: Arc<AccessControl>,
    users: Arc<UserConnections>,
}

enum StartupMethod {
    Trust(Arc<PgHandler>),
    Password(CleartextPasswordAuthStartupHandler<PgUsers, EmberParameters>),
    Md5(Md5PasswordAuthStartupHandler<PgUsers, EmberParameters>),
    Scram(SASLAuthStartupHandler<EmberParameters>),
}

/// Connections per user, at most `max` each (`coordinator.max_sessions_per_user`).
#[derive(Debug)]
struct UserConnections {
    max: usize,
    counts: Mutex<HashMap<String, usize>>,
}

/// One counted connection of `user`, kept in the connection's session extensions: it is
/// released when the connection ends, however it ends.
#[derive(Debug)]
struct UserSlot {
    user: String,
    owner: Arc<UserConnections>,
}

impl UserConnections {
    fn admit(self: &Arc<Self>, user: &str) -> Option<UserSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(user.to_string()).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(UserSlot {
            user: user.to_string(),
            owner: Arc::clone(self),
        })
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // Counted from the startup message on (its user is named there), before any reply:
        // a client beyond its user's limit is refused before authentication, as PostgreSQL
        // refuses it before the session starts.
        if let PgWireFrontendMessage::Startup(startup) = &message
            && client.session_extensions().get::<UserSlot>().is_none()
        {
            let user = startup.parameters.get("user").cloned().unwrap_or_default();
            match self.users.admit(&user) {
                Some(slot) => {
                    client.session_extensions().insert(slot);
                }
                None => {
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "FATAL".to_string(),
                        "53300".to_string(),
                        format!(
                            "too many connections for role \"{user}\" \
                             (coordinator.max_sessions_per_user = {})",
                            self.users.max
                        ),
                    ))));
                }
            }
        }
        // Under trust the role must still exist and may log in, as in PostgreSQL (the password
        // methods find no verifier for any other).
        if let (StartupMethod::Trust(_), PgWireFrontendMessage::Startup(startup)) =
            (&self.method, &message)
        {
            let user = startup.parameters.get("user").cloned().unwrap_or_default();
            if let Err(error) = self.access.check_login(&user) {
                return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                    "FATAL".to_string(),
                    error.sqlstate().to_string(),
                    error.to_string(),
                ))));
            }
        }
        match &self.method {
            StartupMethod::Trust(handler) => handler.on_startup(client, message).await?,
            StartupMethod::Password(handler) => handler.on_startup(client, message).await?,
            StartupMethod::Md5(handler) => handler.on_startup(client, message).await?,
            StartupMethod::Scram(handler) => handler.on_startup(client, message).await?,
        }
        Ok(())
    }
}

struct PgHandler {
    engine: Arc<QueryEngine>,
    sessions: Arc<Sessions>,
    parser: Arc<extended::EmberQueryParser>,
    keys: RandomPidSecretKeyGenerator,
}

/// Creates each connection's session on its first statement and keeps it findable by the
/// connection's cancel key.
struct Sessions {
    engine: Arc<QueryEngine>,
    dialect: Arc<PostgresDialect>,
    cancel_keys: CancelKeys,
}

impl Sessions {
    fn of<C: ClientInfo>(&self, client: &C) -> Arc<ClientSession> {
        let mut created = false;
        let session = client.session_extensions().get_or_insert_with(|| {
            created = true;
            let user = client.metadata().get("user").cloned().unwrap_or_default();
            self.engine
                .new_session_with(
                    Arc::clone(&self.dialect) as Arc<dyn ember_coordinator::ClientDialect>
                )
                .with_user(user)
                .with_frontend(FRONTEND)
        });
        if created {
            self.cancel_keys
                .register(client.pid_and_secret_key(), &session);
        }
        session
    }
}

impl PgHandler {
    fn session<C: ClientInfo>(&self, client: &C) -> Arc<ClientSession> {
        self.sessions.of(client)
    }

    /// Runs one statement under its guard: a cancel request or `statement_timeout` stops it,
    /// also while its rows are being sent.
    async fn run(
        &self,
        session: &ClientSession,
        work: impl Future<Output = Result<Output>>,
    ) -> Result<Output> {
        let mut guard = session.statement_guard();
        match guard.run(work).await? {
            Output::Rows(rows) => Ok(Output::Rows(guard.guard_stream(rows))),
            other => Ok(other),
        }
    }
}

/// What Ember reports in ParameterStatus at startup: a server version clients parse as
/// PostgreSQL 16 and the session defaults they depend on.
struct EmberParameters;

impl ServerParameterProvider for EmberParameters {
    fn server_parameters<C>(&self, client: &C) -> Option<HashMap<String, String>>
    where
        C: ClientInfo,
    {
        let mut parameters = HashMap::new();
        let mut set = |k: &str, v: &str| parameters.insert(k.to_string(), v.to_string());
        set(
            "server_version",
            &format!("{PG_SERVER_VERSION} (Ember {})", env!("CARGO_PKG_VERSION")),
        );
        set("server_encoding", "UTF8");
        set("client_encoding", "UTF8");
        set("DateStyle", "ISO, MDY");
        set("IntervalStyle", "postgres");
        set("TimeZone", "UTC");
        set("integer_datetimes", "on");
        set("standard_conforming_strings", "on");
        set("is_superuser", "on");
        let user = client.metadata().get("user").cloned().unwrap_or_default();
        set("session_authorization", &user);
        let application = client
            .metadata()
            .get("application_name")
            .cloned()
            .unwrap_or_default();
        set("application_name", &application);
        Some(parameters)
    }
}

// Local mode trusts its users (user `ember`, any password).
#[async_trait]
impl StartupHandler for PgHandler {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(ref startup) = message {
            protocol_negotiation(client, startup).await?;
            save_startup_parameters_to_metadata(client, startup);
            let (pid, secret_key) = self.keys.generate(client);
            client.set_pid_and_secret_key(pid, secret_key);
            finish_authentication(client, &EmberParameters).await?;
            debug!(peer = %client.socket_addr(), user = ?client.metadata().get("user"), "postgres client connected");
        }
        Ok(())
    }
}

/// Sessions by the (process id, secret key) pair their clients got at startup, so that a
/// CancelRequest, which arrives on a connection of its own, finds the statement to stop.
#[derive(Default)]
struct CancelKeys {
    sessions: Mutex<HashMap<CancelKey, Weak<ClientSession>>>,
}

/// A connection's process id and secret key, as bytes.
type CancelKey = (i32, Vec<u8>);

impl CancelKeys {
    fn register(&self, key: (i32, SecretKey), session: &Arc<ClientSession>) {
        if let Ok(mut sessions) = self.sessions.lock() {
            // Connections that closed leave dead entries: sweep them as new ones come.
            sessions.retain(|_, s| s.strong_count() > 0);
            sessions.insert((key.0, key.1.to_bytes().to_vec()), Arc::downgrade(session));
        }
    }

    fn find(&self, pid: i32, secret_key: &SecretKey) -> Option<Arc<ClientSession>> {
        let sessions = self.sessions.lock().ok()?;
        sessions
            .get(&(pid, secret_key.to_bytes().to_vec()))
            .and_then(Weak::upgrade)
    }
}

#[async_trait]
impl CancelHandler for PgHandler {
    async fn on_cancel_request(&self, request: CancelRequest) {
        match self
            .sessions
            .cancel_keys
            .find(request.pid, &request.secret_key)
        {
            Some(session) => {
                debug!(pid = request.pid, "cancel request");
                session.cancel();
            }
            // A wrong key is ignored, as PostgreSQL does: it must not reveal which pids exist.
            None => debug!(pid = request.pid, "cancel request with an unknown key"),
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for PgHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
    {
        self.engine.monitor().metrics().request(FRONTEND);
        let session = self.session(client);
        let statements = match self.engine.parse(&session, query) {
            Ok(statements) => statements,
            Err(error) => return Ok(vec![error_response(&error)]),
        };
        let mut responses = Vec::with_capacity(statements.len());
        for statement in statements {
            let names = statement
                .ast()
                .and_then(column_names::postgres_column_names);
            if let Some(refused) = failed_transaction(client, &statement) {
                responses.push(refused);
                break;
            }
            // `DEALLOCATE name` of a statement prepared through the extended protocol (psycopg
            // drops its cached ones so): the protocol's statement store holds it, not the session.
            if let Some(Deallocate::Named(name)) = statement.deallocate()
                && client.portal_store().get_statement(&name).is_some()
            {
                client.portal_store().rm_statement(&name);
                responses.push(Response::Execution(Tag::new("DEALLOCATE")));
                continue;
            }
            match self
                .run(&session, self.engine.execute(&session, &statement))
                .await
            {
                Ok(output) => {
                    responses.push(response(output, &Format::UnifiedText, names.as_deref()))
                }
                Err(error) => {
                    responses.push(error_response(&error));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

/// In a transaction block that failed, PostgreSQL runs nothing until the block ends: the
/// answer to any other statement is SQLSTATE 25P02, and COMMIT rolls back.
fn failed_transaction<C: ClientInfo>(client: &C, statement: &ParsedStatement) -> Option<Response> {
    if !matches!(client.transaction_status(), TransactionStatus::Error) {
        return None;
    }
    match statement.transaction() {
        Some(TransactionCommand::Commit) => Some(Response::TransactionEnd(Tag::new("ROLLBACK"))),
        Some(TransactionCommand::Rollback | TransactionCommand::RollbackToSavepoint) => None,
        _ => Some(error_response(&Error::TransactionAborted)),
    }
}

/// A statement's output as pgwire sends it, result columns in `format` (text or binary) and
/// named as `names` says.
fn response(output: Output, format: &Format, names: Option<&[Option<String>]>) -> Response {
    match output {
        Output::Done(outcome) => tags::response(&outcome),
        Output::Rows(batches) => {
            let fields = Arc::new(encode::fields(&batches.schema(), format, names));
            let row_fields = Arc::clone(&fields);
            let rows = batches.flat_map(move |batch| {
                let rows = match batch {
                    Ok(batch) => match encode::encode_batch(&batch, &row_fields) {
                        Ok(rows) => rows.into_iter().map(Ok).collect(),
                        Err(error) => vec![Err(error)],
                    },
                    Err(error) => vec![Err(user_error(&Error::from(error)))],
                };
                stream::iter(rows)
            });
            Response::Query(QueryResponse::new(fields, rows))
        }
    }
}

/// The one mapping from Ember's errors to Postgres errors: severity, SQLSTATE, message.
fn error_info(error: &Error) -> ErrorInfo {
    ErrorInfo::new(
        "ERROR".to_string(),
        error.sqlstate().to_string(),
        error.to_string(),
    )
}

fn error_response(error: &Error) -> Response {
    Response::Error(Box::new(error_info(error)))
}

fn user_error(error: &Error) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(error)))
}
