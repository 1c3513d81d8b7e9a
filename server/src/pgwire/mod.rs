//! The Postgres wire protocol frontend (simple and extended query protocols), built on pgwire.
//!
//! Each connection gets a [`ClientSession`]; statements run through the shared [`QueryEngine`]
//! and rows stream back as the final stage produces them. Errors become ErrorResponses with a
//! SQLSTATE; a failing statement never closes the connection or affects other clients.

mod encode;
mod extended;

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::error::DataFusionError;
use futures::{Sink, StreamExt, stream};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::portal::Format;
use pgwire::api::query::SimpleQueryHandler;
use pgwire::api::results::{QueryResponse, Response, Tag};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::engine::{ClientSession, QueryEngine, QueryOutput};
use crate::error::Error;

/// Serves Postgres clients on an already-bound listener until `shutdown` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    engine: Arc<QueryEngine>,
    shutdown: impl Future<Output = ()>,
) {
    let handlers = Arc::new(PgHandlers {
        handler: Arc::new(PgHandler {
            parser: Arc::new(extended::EmberQueryParser::new(Arc::clone(&engine))),
            engine,
        }),
    });
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "postgres wire protocol listening");
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let handlers = Arc::clone(&handlers);
                    tokio::spawn(async move {
                        if let Err(error) = pgwire::tokio::process_socket(socket, None, handlers).await {
                            debug!(%peer, %error, "postgres connection ended with an error");
                        }
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
}

impl PgWireServerHandlers for PgHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.handler)
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        Arc::clone(&self.handler)
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        Arc::clone(&self.handler)
    }
}

struct PgHandler {
    engine: Arc<QueryEngine>,
    parser: Arc<extended::EmberQueryParser>,
}

/// The connection's session, created on its first statement.
fn session_of<C: ClientInfo>(client: &C, engine: &Arc<QueryEngine>) -> Arc<ClientSession> {
    client
        .session_extensions()
        .get_or_insert_with(|| engine.new_postgres_session())
}

// Local mode trusts its users; authentication methods come with the full Postgres frontend.
#[async_trait]
impl NoopStartupHandler for PgHandler {
    async fn post_startup<C>(
        &self,
        client: &mut C,
        _message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        debug!(peer = %client.socket_addr(), user = ?client.metadata().get("user"), "postgres client connected");
        Ok(())
    }
}

#[async_trait]
impl SimpleQueryHandler for PgHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
    {
        let session = session_of(client, &self.engine);
        let statements = match self.engine.parse(&session, query) {
            Ok(statements) => statements,
            Err(error) => return Ok(vec![error_response(&error)]),
        };
        let mut responses = Vec::with_capacity(statements.len());
        for statement in statements {
            match self.engine.execute(&session, statement).await {
                Ok(output) => responses.push(response(output, &Format::UnifiedText)),
                Err(error) => {
                    responses.push(error_response(&error));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

/// A statement's output as pgwire sends it, result columns in `format` (text or binary).
fn response(output: QueryOutput, format: &Format) -> Response {
    match output {
        QueryOutput::Command(tag) => Response::Execution(Tag::new(&tag)),
        QueryOutput::TransactionStart(tag) => Response::TransactionStart(Tag::new(&tag)),
        QueryOutput::TransactionEnd(tag) => Response::TransactionEnd(Tag::new(&tag)),
        QueryOutput::Rows(batches) => {
            let fields = Arc::new(encode::fields(&batches.schema(), format));
            let row_fields = Arc::clone(&fields);
            let rows = batches.flat_map(move |batch| {
                let rows = match batch {
                    Ok(batch) => match encode::encode_batch(&batch, &row_fields) {
                        Ok(rows) => rows.into_iter().map(Ok).collect(),
                        Err(error) => vec![Err(error)],
                    },
                    Err(error) => vec![Err(user_error(&Error::from_datafusion(error)))],
                };
                stream::iter(rows)
            });
            Response::Query(QueryResponse::new(fields, rows))
        }
    }
}

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

impl Error {
    /// Recovers an Ember error that travelled inside a DataFusion stream.
    pub fn from_datafusion(error: DataFusionError) -> Error {
        match error {
            DataFusionError::External(inner) => match inner.downcast::<Error>() {
                Ok(error) => *error,
                Err(inner) => Error::DataFusion(DataFusionError::External(inner)),
            },
            other => Error::DataFusion(other),
        }
    }
}
