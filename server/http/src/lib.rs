//! Ember's HTTP frontend (Spark's UI port, 4040): a live web UI, a REST API under `/api/v1` and
//! Prometheus metrics at `/metrics`, all read from the coordinator's [`Monitor`]. It knows the
//! coordinator only through its public API, as the Postgres and Flight SQL frontends do.
//!
//! ```text
//!  browser ──► /  /ui/*  (embedded page, polls the API)
//!  scripts ──► /api/v1/{queries, queries/{id}, queries/{id}/cancel, executors, cluster}
//!  Prometheus ► /metrics                ──► Monitor (ember-coordinator)
//! ```
//! When `auth.method` is not trust every route asks for HTTP Basic credentials, checked against
//! the same users as the other frontends; a query is cancelled only by its own user or a
//! superuser.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use ember_config::EmberConfig;
use ember_coordinator::QueryEngine;
use tokio::net::TcpListener;
use tracing::info;

mod api;
mod assets;
mod auth;
mod listener;

pub use api::{API_PREFIX, ApiDoc};

/// Settings the routes share.
struct AppState {
    engine: Arc<QueryEngine>,
    /// How often pages refresh, in milliseconds.
    refresh_ms: u64,
    /// Whether `/metrics` is served without credentials.
    metrics_without_auth: bool,
}

/// The HTTP frontend of one coordinator: serves its listener until shut down.
pub struct HttpServer {
    listener: TcpListener,
    router: Router,
    max_connections: usize,
}

impl HttpServer {
    /// The frontend for `engine` on an already-bound listener, with `[http]` and `[auth]` from
    /// `config`.
    pub fn new(engine: Arc<QueryEngine>, config: &EmberConfig, listener: TcpListener) -> Self {
        let state = Arc::new(AppState {
            engine,
            refresh_ms: config.http.refresh_ms,
            metrics_without_auth: config.http.metrics_without_auth,
        });
        Self {
            listener,
            router: router(state),
            max_connections: config.http.max_connections,
        }
    }

    /// Serves HTTP clients until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        if let Ok(addr) = self.listener.local_addr() {
            info!(%addr, "web UI, REST API and metrics listening");
        }
        let listener = listener::LimitedListener::new(
            self.listener,
            self.max_connections,
            listener::IDLE_TIMEOUT,
        );
        if let Err(error) = axum::serve(listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(%error, "HTTP server stopped");
        }
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(api::routes())
        .merge(assets::routes())
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::authenticate,
        ))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers every response carries: no framing, no sniffing, scripts only from this server.
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; \
             frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
