//! What the monitoring API shows: queries with their stages and tasks, executors and the
//! cluster, as plain serialisable values. The `system` tables, the REST API and the web UI all
//! read these, so they cannot disagree. Field names are part of the REST API: keep them stable.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The state of a query, a stage or a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for admission (too many queries running); queries only.
    Queued,
    /// Not started yet.
    Pending,
    /// Started and not finished.
    Running,
    /// Finished with its answer.
    Succeeded,
    /// Ended by an error.
    Failed,
    /// Stopped by a client, a timeout or a cancel request.
    Cancelled,
}

impl State {
    /// Every state, in the order the UI lists them.
    pub const ALL: [State; 6] = [
        State::Queued,
        State::Pending,
        State::Running,
        State::Succeeded,
        State::Failed,
        State::Cancelled,
    ];

    /// The state's name, as the `system` tables and the REST API spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Pending => "pending",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    /// Whether it has ended (succeeded, failed or cancelled).
    pub fn is_final(&self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Cancelled)
    }
}

/// The lifecycle state of an executor, as `system.executors.status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorState {
    /// Registered and taking tasks.
    Alive,
    /// Stopping gracefully: no new tasks; what runs there finishes and its shuffle outputs are
    /// served until no running query needs them.
    Decommissioning,
    /// Stopped answering, or its session failed.
    Lost,
    /// Its cluster manager saw its process end, or gave it back.
    Gone,
}

impl ExecutorState {
    /// Every state, in lifecycle order.
    pub const ALL: [ExecutorState; 4] = [
        ExecutorState::Alive,
        ExecutorState::Decommissioning,
        ExecutorState::Lost,
        ExecutorState::Gone,
    ];

    /// Its session counts: its task reports are taken and its shuffle outputs are readable
    /// (alive or decommissioning).
    pub fn is_live(&self) -> bool {
        matches!(self, ExecutorState::Alive | ExecutorState::Decommissioning)
    }

    /// The state's name, as `system.executors.status` and the REST API spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            ExecutorState::Alive => "alive",
            ExecutorState::Decommissioning => "decommissioning",
            ExecutorState::Lost => "lost",
            ExecutorState::Gone => "gone",
        }
    }
}

/// One query as the query list shows it (`system.queries`, `GET /api/v1/queries`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuerySummary {
    /// The query's id.
    pub query_id: String,
    /// Queued, running, succeeded, failed or cancelled.
    pub state: State,
    /// The statement's SQL text.
    pub sql: String,
    /// The user whose session ran it.
    pub user: String,
    /// The client session that ran it.
    pub session_id: String,
    /// The frontend the session came through: `pgwire`, `flight-sql` or `embedded`.
    pub frontend: String,
    /// Stages of its plan.
    pub num_stages: u32,
    /// Stages that have committed all of their outputs.
    pub stages_succeeded: u32,
    /// Tasks of all its stages (one per partition).
    pub num_tasks: u32,
    /// Tasks that have committed their output.
    pub tasks_succeeded: u32,
    /// Tasks running now.
    pub tasks_running: u32,
    /// Rows of its answer, as its result stage's tasks counted them.
    pub result_rows: u64,
    /// When it was submitted.
    pub submitted_at: DateTime<Utc>,
    /// When it ended, if it has.
    pub finished_at: Option<DateTime<Utc>>,
    /// Milliseconds from submission to its end (or to now, while it runs).
    pub duration_ms: u64,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// The SQLSTATE of its error.
    pub sqlstate: Option<String>,
}

/// One query with its stages and tasks (`GET /api/v1/queries/{id}`, the query page).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueryDetail {
    /// What the list shows of it.
    #[serde(flatten)]
    pub summary: QuerySummary,
    /// Its stages, in id order (inputs before the stages reading them); the last is the result
    /// stage.
    pub stages: Vec<Stage>,
    /// The stages whose durations add up to the query's: from the result stage back through
    /// the input that finished last, first stage first.
    pub critical_path: Vec<u32>,
}

/// One shuffle-bounded stage of a query.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Stage {
    /// Its id within the query.
    pub stage_id: u32,
    /// What it writes: `shuffle` (hash-partitioned map output), `broadcast` or `result`, etc.
    pub kind: String,
    /// Pending, running, succeeded, failed or cancelled.
    pub state: State,
    /// The stages whose outputs it reads.
    pub input_stages: Vec<u32>,
    /// How its output is partitioned (`single` for one partition).
    pub output_partitioning: String,
    /// Its tasks (one per partition, or per partition adaptive execution planned).
    pub num_tasks: u32,
    /// What adaptive execution changed in it before its tasks started, and why (empty: it runs
    /// as planned).
    pub adaptive: Vec<String>,
    /// Tasks that have committed their output.
    pub tasks_succeeded: u32,
    /// Tasks running now.
    pub tasks_running: u32,
    /// Rows its tasks wrote.
    pub rows: u64,
    /// Bytes its tasks wrote (shuffle write, or result bytes).
    pub bytes: u64,
    /// Arrow bytes its tasks read from the stages it reads (shuffle read).
    pub shuffle_read_bytes: u64,
    /// Bytes its tasks' operators spilled to disk.
    pub spilled_bytes: u64,
    /// The most memory one of its tasks held at once (the largest task's peak).
    pub peak_memory_bytes: u64,
    /// When its first task was launched.
    pub started_at: Option<DateTime<Utc>>,
    /// When its last task committed.
    pub finished_at: Option<DateTime<Utc>>,
    /// Milliseconds from its start to its end (or to now, while it runs).
    pub duration_ms: Option<u64>,
    /// Its physical plan fragment, indented (empty in the `system` tables).
    pub plan: String,
    /// Its plan's operators, in pre-order, with their metrics summed over its succeeded tasks.
    pub operators: Vec<Operator>,
    /// Its tasks, by partition.
    pub tasks: Vec<Task>,
}

/// One operator of a stage's plan with DataFusion's metrics (`output_rows`, `elapsed_compute`
/// in nanoseconds, `spilled_bytes`, ...) added up over the stage's succeeded tasks: counts and
/// times summed, gauges (memory) the largest.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Operator {
    /// How deep in the stage's plan it is (the root, the stage's writer, is 0).
    pub depth: u32,
    /// DataFusion's name of the operator (`HashJoinExec`, say).
    pub name: String,
    /// Its one-line description in the plan (`HashJoinExec: mode=Partitioned, ...`).
    pub description: String,
    /// Its metrics by name.
    pub metrics: BTreeMap<String, u64>,
}

/// The latest attempt of one task (one partition of a stage).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Task {
    /// The partition it computes.
    pub partition: u32,
    /// Its latest attempt's number (0 first).
    pub attempt: u32,
    /// Pending, running, succeeded, failed or cancelled.
    pub state: State,
    /// The executor its latest attempt runs or ran on.
    pub executor_id: Option<String>,
    /// Whether the attempt that succeeded was a speculative copy that beat the original.
    pub speculative: bool,
    /// Rows it wrote.
    pub rows: u64,
    /// Bytes it wrote (shuffle write, or result bytes).
    pub bytes: u64,
    /// Arrow bytes it read from the map outputs of the stages it reads (shuffle read).
    pub shuffle_read_bytes: u64,
    /// Bytes its operators spilled to disk.
    pub spilled_bytes: u64,
    /// The most memory its operators held at once in its executor's pool (Spark's peak
    /// execution memory).
    #[serde(default)]
    pub peak_memory_bytes: u64,
    /// When its latest attempt was launched.
    pub started_at: Option<DateTime<Utc>>,
    /// When it committed or failed.
    pub finished_at: Option<DateTime<Utc>>,
    /// Milliseconds from launch to its end (or to now, while it runs).
    pub duration_ms: Option<u64>,
    /// Its last error.
    pub error: Option<String>,
    /// The SQLSTATE of its last error.
    pub sqlstate: Option<String>,
}

/// One executor (`system.executors`, `GET /api/v1/executors`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Executor {
    /// Its id, given at registration.
    pub executor_id: String,
    /// The host peers and clients reach its Flight service on.
    pub host: String,
    /// Its Flight service's port.
    pub flight_port: u16,
    /// Alive, decommissioning, lost or gone.
    pub state: ExecutorState,
    /// Tasks it runs at once.
    pub slots: u32,
    /// Its CPU cores.
    pub cores: u32,
    /// Its memory pool, in bytes (0: unbounded).
    pub memory_bytes: u64,
    /// Bytes its memory pool has reserved now, as of its last heartbeat.
    pub memory_used_bytes: u64,
    /// The most its memory pool has reserved, as its heartbeats saw it.
    pub memory_peak_bytes: u64,
    /// Bytes of shuffle and spill files in its work dir, as of its last heartbeat.
    pub disk_used_bytes: u64,
    /// Tasks the scheduler has running there.
    pub running_tasks: u32,
    /// Tasks the executor said it was running (or stopping) in its last heartbeat.
    pub active_tasks: u32,
    /// Tasks that succeeded there.
    pub tasks_succeeded: u64,
    /// Tasks that failed there.
    pub tasks_failed: u64,
    /// Bytes its succeeded tasks wrote.
    pub shuffle_write_bytes: u64,
    /// When it registered.
    pub registered_at: DateTime<Utc>,
    /// When its last heartbeat arrived.
    pub last_heartbeat: DateTime<Utc>,
    /// The cluster manager's allocation it was started for (none: started by hand).
    pub allocation_id: Option<String>,
}

/// A cluster manager's request for an executor that has not registered: not yet (`requested`,
/// `starting`), or never and given up or ended (`gone`), or given back before it did
/// (`decommissioning`). Registered ones are executors (`GET /api/v1/executors`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Allocation {
    /// Its id with the cluster manager; the executor registers with it.
    pub allocation_id: String,
    /// `requested`, `starting`, `decommissioning` or `gone`.
    pub state: String,
    /// Task slots asked for (none: the backend decides).
    pub slots: Option<u32>,
    /// Memory asked for, in bytes (none: the backend decides).
    pub memory_bytes: Option<u64>,
    /// Milliseconds it has been in this state.
    pub state_ms: u64,
    /// Why it is gone.
    pub reason: Option<String>,
}

/// Sessions connected through one frontend.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FrontendSessions {
    /// `pgwire`, `flight-sql` or `embedded`.
    pub frontend: String,
    /// Sessions open now.
    pub sessions: u64,
}

/// The cluster as a whole (`GET /api/v1/cluster`, the cluster page).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Cluster {
    /// Ember's version.
    pub version: String,
    /// When the coordinator started.
    pub started_at: DateTime<Utc>,
    /// Milliseconds since then.
    pub uptime_ms: u64,
    /// Executors by state (`alive`, `decommissioning`, `lost`, `gone`).
    #[schema(value_type = BTreeMap<String, u64>)]
    pub executors: BTreeMap<&'static str, u64>,
    /// Task slots of live executors.
    pub slots: u64,
    /// Queries by state, of those the coordinator remembers.
    #[schema(value_type = BTreeMap<String, u64>)]
    pub queries: BTreeMap<&'static str, u64>,
    /// Sessions connected now, by frontend.
    pub sessions: Vec<FrontendSessions>,
    /// The effective configuration, by section, with secrets masked.
    #[schema(value_type = Object)]
    pub configuration: serde_json::Value,
}

/// Milliseconds from `start` to `end` (or to now, while it runs); none before it starts.
pub(crate) fn millis_between(
    start: Option<std::time::SystemTime>,
    end: Option<std::time::SystemTime>,
) -> Option<u64> {
    let end = end.unwrap_or_else(std::time::SystemTime::now);
    start
        .and_then(|s| end.duration_since(s).ok())
        .map(|d| d.as_millis() as u64)
}

/// The chain of stages the query waited on: from the result stage back through, at each step,
/// the input that finished last (or still runs), returned first stage first.
pub(crate) fn critical_path(stages: &[Stage]) -> Vec<u32> {
    let Some(mut current) = stages.last() else {
        return vec![];
    };
    let mut path = vec![current.stage_id];
    while let Some(latest) = current
        .input_stages
        .iter()
        .filter_map(|id| stages.get(*id as usize))
        .max_by_key(|s| (s.finished_at.is_none(), s.finished_at))
    {
        // Stage inputs have smaller ids, so this ends; the guard keeps it so on bad input.
        if path.contains(&latest.stage_id) {
            break;
        }
        path.push(latest.stage_id);
        current = latest;
    }
    path.reverse();
    path
}
