//! The REST API (`/api/v1`) and `/metrics`. JSON field names are the monitoring model's
//! (`ember_coordinator::monitor::model`) and stable; errors are `{"error", "sqlstate"}` with an
//! HTTP status that says what kind.

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ember_coordinator::monitor::{Cancelled, QuerySummary};
use ember_coordinator::{Error, SqlState};
use serde::Deserialize;

use crate::AppState;
use crate::auth::Viewer;

/// Where the REST API lives.
pub const API_PREFIX: &str = "/api/v1";

/// The header a state-changing request must carry (any value): a page on another site can
/// not set it without the browser asking this server first, which it refuses.
pub(crate) const REQUESTED_BY: &str = "x-requested-by";

/// Longest search text, and most queries, a list request may ask for.
const MAX_SEARCH: usize = 1024;
const MAX_LIMIT: usize = 10_000;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/queries", get(list_queries))
        .route("/api/v1/queries/{id}", get(query_detail))
        .route("/api/v1/queries/{id}/cancel", post(cancel_query))
        .route("/api/v1/executors", get(executors))
        .route("/api/v1/cluster", get(cluster))
        .route("/metrics", get(metrics))
}

/// An error as the API returns it.
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    sqlstate: SqlState,
}

impl ApiError {
    fn new(status: StatusCode, sqlstate: SqlState, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            sqlstate,
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let status = match &error {
            Error::UndefinedObject(_) => StatusCode::NOT_FOUND,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, error.sqlstate(), error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({
                "error": self.message,
                "sqlstate": self.sqlstate.to_string(),
            })),
        )
            .into_response()
    }
}

/// Filters of `GET /api/v1/queries`, all optional.
#[derive(Debug, Deserialize)]
pub(crate) struct QueryFilter {
    /// Only queries in this state (`queued`, `running`, `succeeded`, `failed`, `cancelled`).
    state: Option<String>,
    /// Only this user's queries.
    user: Option<String>,
    /// Only queries whose SQL, id, user or session contains this text (any case).
    search: Option<String>,
    /// At most this many, newest first.
    limit: Option<usize>,
}

impl QueryFilter {
    fn matches(&self, query: &QuerySummary, search: Option<&str>) -> bool {
        self.state
            .as_deref()
            .is_none_or(|s| query.state.as_str() == s)
            && self.user.as_deref().is_none_or(|u| query.user == u)
            && search.is_none_or(|needle| {
                [
                    &query.sql,
                    &query.query_id,
                    &query.user,
                    &query.session_id,
                    &query.frontend,
                ]
                .iter()
                .any(|field| field.to_lowercase().contains(needle))
            })
    }
}

async fn list_queries(
    State(state): State<Arc<AppState>>,
    Extension(viewer): Extension<Viewer>,
    Query(filter): Query<QueryFilter>,
) -> Result<Json<Vec<QuerySummary>>, ApiError> {
    let search = filter.search.as_deref().map(str::to_lowercase);
    if search.as_ref().is_some_and(|s| s.len() > MAX_SEARCH) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            SqlState::PROGRAM_LIMIT_EXCEEDED,
            format!("search text is longer than {MAX_SEARCH} bytes"),
        ));
    }
    let limit = filter.limit.unwrap_or(MAX_LIMIT).min(MAX_LIMIT);
    let queries = state.engine.monitor().queries(&viewer.0).await?;
    Ok(Json(
        queries
            .into_iter()
            .filter(|q| filter.matches(q, search.as_deref()))
            .take(limit)
            .collect(),
    ))
}

async fn query_detail(
    State(state): State<Arc<AppState>>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.engine.monitor().query(&viewer.0, &id).await? {
        Some(detail) => Ok(Json(detail).into_response()),
        None => Err(not_found(&id)),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        SqlState::UNDEFINED_OBJECT,
        format!("query {id} does not exist"),
    )
}

async fn cancel_query(
    State(state): State<Arc<AppState>>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !headers.contains_key(REQUESTED_BY) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            SqlState::INSUFFICIENT_PRIVILEGE,
            format!("a cancel request must carry the {REQUESTED_BY} header"),
        ));
    }
    match state.engine.monitor().cancel(&viewer.0, &id).await {
        Ok(Cancelled::Stopped) => Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "query_id": id, "cancelled": true })),
        )
            .into_response()),
        Ok(Cancelled::AlreadyEnded) => Err(ApiError::new(
            StatusCode::CONFLICT,
            SqlState::INVALID_PARAMETER_VALUE,
            format!("query {id} has already ended"),
        )),
        Err(Error::UndefinedObject(_)) => Err(not_found(&id)),
        Err(error) => Err(error.into()),
    }
}

async fn executors(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<ember_coordinator::monitor::Executor>>, ApiError> {
    Ok(Json(state.engine.monitor().executors().await?))
}

async fn cluster(
    State(state): State<Arc<AppState>>,
) -> Result<Json<ember_coordinator::monitor::Cluster>, ApiError> {
    Ok(Json(state.engine.monitor().cluster().await?))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let text = state.engine.monitor().metrics_text().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
