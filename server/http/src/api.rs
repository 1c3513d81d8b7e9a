//! The REST API (`/api/v1`) and `/metrics`. JSON field names are the monitoring model's
//! (`ember_coordinator::status::model`) and stable; errors are `{"error", "sqlstate"}` with an
//! HTTP status that says what kind.

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ember_coordinator::monitor::{
    Allocation, Cancelled, Cluster, Executor, Operator, QueryDetail, QuerySummary, Stage, Task,
};
use ember_coordinator::{Error, SqlState};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

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

/// The OpenAPI document of the REST API, generated from the routes and the monitoring model
/// (checked into `docs/openapi.json`; a test keeps the two the same).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ember REST API",
        description = "Queries with their stages, tasks and operator metrics, executors and the \
                       cluster, as the web UI shows them; and the cancelling of a query. When \
                       auth.method is not trust, every call needs HTTP Basic credentials of a \
                       user of auth.users. A user who is not a superuser sees and cancels only \
                       their own queries."
    ),
    paths(
        list_queries, query_detail, cancel_query, executors, allocations, cluster, metrics,
        openapi
    ),
    components(schemas(
        QuerySummary, QueryDetail, Stage, Task, Operator, Executor, Allocation, Cluster, ErrorBody,
        CancelAccepted
    )),
    tags(
        (name = "queries", description = "Queries, their stages, tasks and operators"),
        (name = "cluster", description = "Executors and the cluster"),
        (name = "metrics", description = "Prometheus metrics")
    )
)]
pub struct ApiDoc;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/queries", get(list_queries))
        .route("/api/v1/queries/{id}", get(query_detail))
        .route("/api/v1/queries/{id}/cancel", post(cancel_query))
        .route("/api/v1/executors", get(executors))
        .route("/api/v1/allocations", get(allocations))
        .route("/api/v1/cluster", get(cluster))
        .route("/metrics", get(metrics))
}

/// What an error response carries.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong.
    error: String,
    /// Its SQLSTATE, as the SQL frontends would report it.
    sqlstate: String,
}

/// The answer to an accepted cancel request.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CancelAccepted {
    /// The query being stopped.
    query_id: String,
    /// Always true: the query was queued or running and is stopping.
    cancelled: bool,
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
            Json(ErrorBody {
                error: self.message,
                sqlstate: self.sqlstate.to_string(),
            }),
        )
            .into_response()
    }
}

/// Filters of `GET /api/v1/queries`, all optional.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
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

/// The queries the coordinator holds (queued, running, and the latest finished ones), newest
/// first.
#[utoipa::path(
    get, path = "/api/v1/queries", tag = "queries", params(QueryFilter),
    responses(
        (status = 200, description = "Queries, newest first", body = Vec<QuerySummary>),
        (status = 400, description = "A bad filter", body = ErrorBody),
        (status = 401, description = "No or wrong credentials", body = ErrorBody)
    )
)]
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

/// One query with its stages, tasks, operator metrics and critical path.
#[utoipa::path(
    get, path = "/api/v1/queries/{id}", tag = "queries",
    params(("id" = String, Path, description = "The query's id")),
    responses(
        (status = 200, description = "The query", body = QueryDetail),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 404, description = "No such query (or not the caller's)", body = ErrorBody)
    )
)]
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

/// Stops a queued or running query: its client gets SQLSTATE 57014. Needs the
/// `X-Requested-By` header (any value).
#[utoipa::path(
    post, path = "/api/v1/queries/{id}/cancel", tag = "queries",
    params(
        ("id" = String, Path, description = "The query's id"),
        ("X-Requested-By" = String, Header, description = "Any value; guards against cross-site requests")
    ),
    responses(
        (status = 202, description = "The query is stopping", body = CancelAccepted),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "The X-Requested-By header is missing", body = ErrorBody),
        (status = 404, description = "No such query (or not the caller's)", body = ErrorBody),
        (status = 409, description = "The query has already ended", body = ErrorBody)
    )
)]
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
            Json(CancelAccepted {
                query_id: id,
                cancelled: true,
            }),
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

/// Every executor the coordinator knows, lost and gone ones for a while.
#[utoipa::path(
    get, path = "/api/v1/executors", tag = "cluster",
    responses(
        (status = 200, description = "Executors by id", body = Vec<Executor>),
        (status = 401, description = "No or wrong credentials", body = ErrorBody)
    )
)]
async fn executors(State(state): State<Arc<AppState>>) -> Result<Json<Vec<Executor>>, ApiError> {
    Ok(Json(state.engine.monitor().executors().await?))
}

/// The cluster manager's allocations whose executor has not registered (requested, starting,
/// given back or gone before it did).
#[utoipa::path(
    get, path = "/api/v1/allocations", tag = "cluster",
    responses(
        (status = 200, description = "Allocations by id", body = Vec<Allocation>),
        (status = 401, description = "No or wrong credentials", body = ErrorBody)
    )
)]
async fn allocations(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<Allocation>>, ApiError> {
    Ok(Json(state.engine.monitor().allocations().await?))
}

/// Version, uptime, executors and queries by state, sessions by frontend, configuration.
#[utoipa::path(
    get, path = "/api/v1/cluster", tag = "cluster",
    responses(
        (status = 200, description = "The cluster", body = Cluster),
        (status = 401, description = "No or wrong credentials", body = ErrorBody)
    )
)]
async fn cluster(State(state): State<Arc<AppState>>) -> Result<Json<Cluster>, ApiError> {
    Ok(Json(state.engine.monitor().cluster().await?))
}

/// Every metric in the OpenMetrics text format, for Prometheus.
#[utoipa::path(
    get, path = "/metrics", tag = "metrics",
    responses(
        (status = 200, description = "The metrics", body = String,
         content_type = "application/openmetrics-text"),
        (status = 401, description = "No or wrong credentials", body = ErrorBody)
    )
)]
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

/// This document.
#[utoipa::path(
    get, path = "/api/v1/openapi.json", tag = "cluster",
    responses((status = 200, description = "The OpenAPI document of this API", body = Object))
)]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/openapi.json` is what the code generates: run with `EMBER_BLESS=1` to rewrite it
    /// after changing the API.
    #[test]
    fn openapi_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let generated = ApiDoc::openapi()
            .to_pretty_json()
            .expect("the document serialises")
            + "\n";
        if std::env::var_os("EMBER_BLESS").is_some() {
            std::fs::write(path, &generated).expect("write docs/openapi.json");
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "docs/openapi.json differs from the code; run EMBER_BLESS=1 cargo test -p ember-http"
        );
    }
}
