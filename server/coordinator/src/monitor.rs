//! What the coordinator is doing, for people and their tools: queries with their stages, tasks
//! and operator metrics, executors, the cluster, and Prometheus metrics. The HTTP frontend
//! (web UI, REST API, `/metrics`) and the `system` tables read it; a query can be cancelled
//! through it.
//!
//! ```text
//!  scheduler state ──snapshot──► status::model (QuerySummary, QueryDetail, Executor) ──► REST / UI
//!        │                                   └──► system.* tables (status/tables.rs)
//!        └── counters (status/metrics.rs) ◄── frontends: connections, requests ──► /metrics
//!  event log (history/) ──► finished queries the scheduler no longer holds, after a restart too
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use ember_planner::ids::QueryId;

use crate::access::AccessControl;
use crate::cluster_manager::Allocations;
use crate::error::{Error, Result};
use crate::history::History;
use crate::scheduler::{SchedulerHandle, SnapshotRequest};

pub use crate::status::{
    Allocation, Cluster, ConnectionGuard, Executor, ExecutorState, FrontendSessions, Metrics,
    Operator, QueryDetail, QuerySummary, Stage, State, Task,
};

/// The frontend of sessions made by the engine's own callers (the benchmark, tests).
pub const EMBEDDED: &str = "embedded";

/// Reads the coordinator's state for monitoring; cheap to clone.
#[derive(Clone)]
pub struct Monitor {
    scheduler: SchedulerHandle,
    access: Arc<AccessControl>,
    metrics: Arc<Metrics>,
    sessions: Arc<Sessions>,
    /// Finished queries from the event log (none if `history.enabled` is off).
    history: Option<Arc<History>>,
    /// The cluster manager's allocations.
    allocations: Arc<Allocations>,
    started_at: DateTime<Utc>,
    started: Instant,
    configuration: Arc<serde_json::Value>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("started_at", &self.started_at)
            .finish_non_exhaustive()
    }
}

/// What a cancel request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The query was queued or running and is being stopped.
    Stopped,
    /// The query had already ended.
    AlreadyEnded,
}

impl Monitor {
    pub(crate) fn new(
        scheduler: SchedulerHandle,
        access: Arc<AccessControl>,
        metrics: Arc<Metrics>,
        sessions: Arc<Sessions>,
        history: Option<Arc<History>>,
        allocations: Arc<Allocations>,
        configuration: serde_json::Value,
    ) -> Self {
        Self {
            scheduler,
            access,
            metrics,
            sessions,
            history,
            allocations,
            started_at: Utc::now(),
            started: Instant::now(),
            configuration: Arc::new(mask_secrets(configuration)),
        }
    }

    /// The sessions open now, which sessions add themselves to.
    pub(crate) fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// The counters frontends move (connections, requests).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether `role` sees every query (a superuser) rather than only its own.
    fn sees_all(&self, role: &str) -> bool {
        self.access.is_superuser(role)
    }

    /// The queries `viewer` may see (all for a superuser, else its own), newest first: those
    /// the scheduler holds, and the finished ones of the event log's history.
    pub async fn queries(&self, viewer: &str) -> Result<Vec<QuerySummary>> {
        let snapshot = self
            .scheduler
            .snapshot(SnapshotRequest::summaries())
            .await?;
        let mut queries: Vec<QuerySummary> =
            snapshot.queries.into_iter().map(|q| q.summary).collect();
        if let Some(history) = &self.history {
            history.loaded().await;
            let live: HashSet<String> = queries.iter().map(|q| q.query_id.clone()).collect();
            queries.extend(
                history
                    .summaries()
                    .into_iter()
                    .filter(|q| !live.contains(&q.query_id)),
            );
        }
        let all = self.sees_all(viewer);
        queries.retain(|q| all || q.user == viewer);
        queries.sort_by_key(|q| std::cmp::Reverse(q.submitted_at));
        Ok(queries)
    }

    /// One query with its stages, tasks and operator metrics, if `viewer` may see it: as the
    /// scheduler holds it, else as the event log recorded it.
    pub async fn query(&self, viewer: &str, query_id: &str) -> Result<Option<QueryDetail>> {
        let Some(id) = QueryId::parse(query_id) else {
            return Ok(None);
        };
        let snapshot = self
            .scheduler
            .snapshot(SnapshotRequest::query(id.clone()))
            .await?;
        let all = self.sees_all(viewer);
        let detail = match snapshot.queries.into_iter().next() {
            Some(live) => Some(live),
            None => match &self.history {
                Some(history) => {
                    history.loaded().await;
                    let history = Arc::clone(history);
                    tokio::task::spawn_blocking(move || history.detail(&id))
                        .await
                        .map_err(|e| {
                            Error::Unavailable(format!("reading the query history: {e}"))
                        })??
                }
                None => None,
            },
        };
        Ok(detail.filter(|q| all || q.summary.user == viewer))
    }

    /// Every executor the coordinator knows (lost ones for a while), by id.
    pub async fn executors(&self) -> Result<Vec<Executor>> {
        Ok(self
            .scheduler
            .snapshot(SnapshotRequest::executors())
            .await?
            .executors)
    }

    /// The cluster manager's allocations whose executor has not registered, oldest id first.
    pub async fn allocations(&self) -> Result<Vec<Allocation>> {
        // One whose executor registered since the allocator last looked is an executor.
        let registered: HashSet<String> = self
            .executors()
            .await?
            .into_iter()
            .filter_map(|e| e.allocation_id)
            .collect();
        Ok(self
            .allocations
            .unregistered()
            .into_iter()
            .filter(|(id, _)| !registered.contains(id))
            .map(|(allocation_id, a)| Allocation {
                allocation_id,
                state: a.state.as_str().to_string(),
                slots: (a.request.slots > 0).then_some(a.request.slots as u32),
                memory_bytes: (a.request.memory > 0).then_some(a.request.memory),
                state_ms: a.since.elapsed().as_millis() as u64,
                reason: a.reason,
            })
            .collect())
    }

    /// The cluster as a whole: version, uptime, executors, sessions, configuration.
    pub async fn cluster(&self) -> Result<Cluster> {
        let snapshot = self
            .scheduler
            .snapshot(SnapshotRequest::summaries())
            .await?;
        let mut executors: BTreeMap<&'static str, u64> =
            ExecutorState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        let mut slots = 0;
        for executor in &snapshot.executors {
            *executors.entry(executor.state.as_str()).or_default() += 1;
            if executor.state == ExecutorState::Alive {
                slots += u64::from(executor.slots);
            }
        }
        let mut queries: BTreeMap<&'static str, u64> = State::ALL
            .iter()
            .filter(|s| **s != State::Pending)
            .map(|s| (s.as_str(), 0))
            .collect();
        for query in &snapshot.queries {
            *queries.entry(query.summary.state.as_str()).or_default() += 1;
        }
        Ok(Cluster {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.started_at,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            executors,
            slots,
            queries,
            sessions: self.sessions.by_frontend(),
            configuration: (*self.configuration).clone(),
        })
    }

    /// Stops a queued or running query, as a Postgres cancel request would: its client gets
    /// SQLSTATE 57014. Only its own user or a superuser may; others are told it does not exist.
    pub async fn cancel(&self, requester: &str, query_id: &str) -> Result<Cancelled> {
        let missing = || Error::UndefinedObject(format!("query {query_id} does not exist"));
        let id = QueryId::parse(query_id).ok_or_else(missing)?;
        // Its summary is enough to know whose it is and whether it still runs.
        let snapshot = self
            .scheduler
            .snapshot(SnapshotRequest::summary(id.clone()))
            .await?;
        let all = self.sees_all(requester);
        let summary = match (snapshot.queries.into_iter().next(), &self.history) {
            (Some(live), _) => live.summary,
            // A query of the history has ended.
            (None, Some(history)) => {
                history.loaded().await;
                history.summary(id.as_str()).ok_or_else(missing)?
            }
            (None, None) => return Err(missing()),
        };
        if !(all || summary.user == requester) {
            return Err(missing());
        }
        if summary.state.is_final() {
            return Ok(Cancelled::AlreadyEnded);
        }
        Ok(if self.scheduler.cancel(id).await? {
            Cancelled::Stopped
        } else {
            Cancelled::AlreadyEnded
        })
    }

    /// Every metric, in the OpenMetrics text format Prometheus scrapes.
    pub async fn metrics_text(&self) -> Result<String> {
        let snapshot = self
            .scheduler
            .snapshot(SnapshotRequest::summaries())
            .await?;
        let queries: Vec<QuerySummary> = snapshot.queries.into_iter().map(|q| q.summary).collect();
        Ok(self.metrics.encode(&queries, &snapshot.executors))
    }
}

/// The sessions open now, by id: their frontend, for the cluster page.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    // A std Mutex: only touched briefly, never across an await.
    open: Mutex<HashMap<String, String>>,
}

impl Sessions {
    pub(crate) fn opened(&self, id: &str, frontend: &str) {
        self.lock().insert(id.to_string(), frontend.to_string());
    }

    pub(crate) fn closed(&self, id: &str) {
        self.lock().remove(id);
    }

    fn by_frontend(&self) -> Vec<FrontendSessions> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for frontend in self.lock().values() {
            *counts.entry(frontend.clone()).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(frontend, sessions)| FrontendSessions { frontend, sessions })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Settings whose values are secrets (passwords, keys, verifiers) are shown as `********` when
/// set.
fn mask_secrets(mut value: serde_json::Value) -> serde_json::Value {
    fn is_secret(key: &str) -> bool {
        key == "users"
            || key.ends_with("_secret")
            || key.contains("password")
            || key.contains("secret_access_key")
            || key.contains("access_key_id")
    }
    fn walk(value: &mut serde_json::Value) {
        if let serde_json::Value::Object(map) = value {
            for (key, value) in map.iter_mut() {
                let empty = match value {
                    serde_json::Value::String(s) => s.is_empty(),
                    serde_json::Value::Array(a) => a.is_empty(),
                    serde_json::Value::Null => true,
                    _ => false,
                };
                if is_secret(key) && !empty {
                    *value = serde_json::Value::String("********".into());
                } else {
                    walk(value);
                }
            }
        }
    }
    walk(&mut value);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_and_the_rest_shown() {
        let config = serde_json::json!({
            "auth": {
                "method": "scram-sha-256",
                "users": ["alice:SCRAM-SHA-256$4096:..."],
                "cluster_secret": "0123456789abcdef",
                "flight_secret": "",
            },
            "storage": {"s3_secret_access_key": "k", "s3_endpoint": "http://127.0.0.1:9000"},
        });
        let masked = mask_secrets(config);
        assert_eq!(masked["auth"]["method"], "scram-sha-256");
        assert_eq!(masked["auth"]["users"], "********");
        assert_eq!(masked["auth"]["cluster_secret"], "********");
        assert_eq!(
            masked["auth"]["flight_secret"], "",
            "an unset secret shows as unset"
        );
        assert_eq!(masked["storage"]["s3_secret_access_key"], "********");
        assert_eq!(masked["storage"]["s3_endpoint"], "http://127.0.0.1:9000");
    }
}
