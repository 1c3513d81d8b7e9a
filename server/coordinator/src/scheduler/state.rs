//! The scheduler's bookkeeping: executors, queries, stages and task attempts.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Instant, SystemTime};

use ember_planner::ids::{ExecutorId, QueryId, StageId, TaskAttempt};
use ember_planner::shuffle::MapOutputLocation;
use ember_planner::stage::StageGraph;
use ember_protocol::proto::CoordinatorMessage;
use tokio::sync::mpsc;

use crate::output::ResultEvent;

/// The sending half of an executor's session stream, bounded: an executor that lets
/// [`crate::cluster::EXECUTOR_QUEUE`] messages pile up is written off.
pub(crate) type ExecutorTx = mpsc::Sender<Result<CoordinatorMessage, tonic::Status>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExecutorStatus {
    Alive,
    /// Stopping gracefully: no new tasks; what runs there finishes and its shuffle outputs are
    /// served until no running query needs them.
    Decommissioning,
    /// Stopped answering, or its session failed.
    Lost,
    /// Its cluster manager saw its process end, or gave it back.
    Gone,
}

impl ExecutorStatus {
    /// Its session counts: its task reports are taken and its shuffle outputs are readable
    /// (alive or decommissioning).
    pub(crate) fn is_live(&self) -> bool {
        matches!(
            self,
            ExecutorStatus::Alive | ExecutorStatus::Decommissioning
        )
    }

    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            ExecutorStatus::Alive => "alive",
            ExecutorStatus::Decommissioning => "decommissioning",
            ExecutorStatus::Lost => "lost",
            ExecutorStatus::Gone => "gone",
        }
    }
}

/// What an executor told us when it registered.
#[derive(Debug, Clone)]
pub(crate) struct ExecutorInfo {
    pub(crate) id: ExecutorId,
    pub(crate) host: String,
    pub(crate) flight_port: u16,
    pub(crate) slots: usize,
    pub(crate) cores: usize,
    pub(crate) memory: u64,
    pub(crate) host_key: String,
    pub(crate) work_dir: std::path::PathBuf,
    /// The cluster manager's allocation it was started for (empty: it registered by itself).
    pub(crate) allocation_id: String,
}

impl ExecutorInfo {
    pub(crate) fn flight_address(&self) -> String {
        format!("{}:{}", self.host, self.flight_port)
    }
}

#[derive(Debug)]
pub(crate) struct ExecutorState {
    pub(crate) info: ExecutorInfo,
    pub(crate) status: ExecutorStatus,
    /// Distinguishes this registration from an earlier session of the same executor.
    pub(crate) session: u64,
    pub(crate) tx: ExecutorTx,
    pub(crate) running: HashSet<TaskAttempt>,
    /// Tasks the executor itself said it was running (waiting for a slot or running) in its
    /// last heartbeat: unlike `running`, this includes attempts still stopping after a cancel.
    pub(crate) active_tasks: u32,
    pub(crate) registered_at: SystemTime,
    pub(crate) last_heartbeat: Instant,
    pub(crate) last_heartbeat_wall: SystemTime,
    pub(crate) tasks_succeeded: u64,
    pub(crate) tasks_failed: u64,
    /// When the executor was declared lost; it is forgotten a while later.
    pub(crate) lost_at: Option<Instant>,
    /// Tie-breaker so equal executors take turns.
    pub(crate) last_assigned: u64,
}

impl ExecutorState {
    pub(crate) fn free_slots(&self) -> usize {
        self.info.slots.saturating_sub(self.running.len())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Waiting for admission (too many queries running).
    Queued,
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub(crate) fn is_final(&self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

/// A second copy of a slow task, racing the first.
#[derive(Debug, Clone)]
pub(crate) struct SpeculativeAttempt {
    pub(crate) attempt: u32,
    pub(crate) executor: ExecutorId,
}

#[derive(Debug, Clone)]
pub(crate) struct TaskState {
    pub(crate) partition: u32,
    /// The latest attempt launched; reports of attempts other than this one and the speculative
    /// copy are stale and ignored (fencing).
    pub(crate) attempt: u32,
    /// Attempts launched so far (the next one gets this number).
    pub(crate) launches: u32,
    /// Failures that count against `task_max_attempts` (not losses of executors or map outputs).
    pub(crate) failures: u32,
    /// Executors this task failed or was lost on: a retry prefers others.
    pub(crate) excluded: BTreeSet<ExecutorId>,
    pub(crate) speculative: Option<SpeculativeAttempt>,
    pub(crate) status: Status,
    pub(crate) executor: Option<ExecutorId>,
    pub(crate) output: Option<MapOutputLocation>,
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
    pub(crate) spilled_bytes: u64,
    /// The successful attempt was a speculative copy that beat the original.
    pub(crate) speculation_won: bool,
    pub(crate) started_at: Option<SystemTime>,
    /// When the current attempt was launched, for speculation.
    pub(crate) started_instant: Option<Instant>,
    pub(crate) finished_at: Option<SystemTime>,
    pub(crate) elapsed_us: u64,
    pub(crate) error: Option<String>,
}

impl TaskState {
    fn new(partition: u32) -> Self {
        Self {
            partition,
            attempt: 0,
            launches: 0,
            failures: 0,
            excluded: BTreeSet::new(),
            speculative: None,
            status: Status::Pending,
            executor: None,
            output: None,
            rows: 0,
            bytes: 0,
            spilled_bytes: 0,
            speculation_won: false,
            started_at: None,
            started_instant: None,
            finished_at: None,
            elapsed_us: 0,
            error: None,
        }
    }

    /// Back to pending: the attempt that ran (or its output) is gone.
    pub(crate) fn reset(&mut self) {
        self.status = Status::Pending;
        self.executor = None;
        self.output = None;
        self.speculative = None;
        self.started_instant = None;
    }
}

#[derive(Debug)]
pub(crate) struct StageState {
    pub(crate) id: StageId,
    pub(crate) status: Status,
    pub(crate) tasks: Vec<TaskState>,
    pub(crate) started_at: Option<SystemTime>,
    pub(crate) finished_at: Option<SystemTime>,
}

impl StageState {
    pub(crate) fn tasks_succeeded(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| t.status == Status::Succeeded)
            .count()
    }
}

/// A query handed to the scheduler.
#[derive(Debug)]
pub(crate) struct Submission {
    pub(crate) query_id: QueryId,
    /// The client session that runs it (`system.queries.session_id`).
    pub(crate) session_id: String,
    /// The session's user (`system.queries.user_name`).
    pub(crate) user: String,
    pub(crate) sql: String,
    pub(crate) graph: StageGraph,
    /// The session's settings that differ from the defaults; tasks run with them.
    pub(crate) settings: HashMap<String, String>,
    pub(crate) results_tx: mpsc::UnboundedSender<ResultEvent>,
}

#[derive(Debug)]
pub(crate) struct QueryState {
    pub(crate) id: QueryId,
    pub(crate) session_id: String,
    pub(crate) user: String,
    pub(crate) sql: String,
    pub(crate) graph: StageGraph,
    pub(crate) settings: HashMap<String, String>,
    pub(crate) stages: Vec<StageState>,
    pub(crate) status: Status,
    pub(crate) error: Option<String>,
    pub(crate) submitted_at: SystemTime,
    pub(crate) submitted_instant: Instant,
    pub(crate) finished_at: Option<SystemTime>,
    pub(crate) results_tx: Option<mpsc::UnboundedSender<ResultEvent>>,
    /// Executors that may hold files of this query.
    pub(crate) executors_used: HashSet<ExecutorId>,
}

impl QueryState {
    pub(crate) fn new(submission: Submission) -> Self {
        let Submission {
            query_id: id,
            session_id,
            user,
            sql,
            graph,
            settings,
            results_tx,
        } = submission;
        let stages = graph
            .stages
            .iter()
            .map(|stage| StageState {
                id: stage.id,
                // A stage without partitions (a scan of no files) has nothing to wait for.
                status: if stage.num_tasks() == 0 {
                    Status::Succeeded
                } else {
                    Status::Pending
                },
                tasks: (0..stage.num_tasks() as u32).map(TaskState::new).collect(),
                started_at: None,
                finished_at: None,
            })
            .collect();
        Self {
            id,
            session_id,
            user,
            sql,
            graph,
            settings,
            stages,
            status: Status::Queued,
            error: None,
            submitted_at: SystemTime::now(),
            submitted_instant: Instant::now(),
            finished_at: None,
            results_tx: Some(results_tx),
            executors_used: HashSet::new(),
        }
    }

    /// A stage may run once every stage it reads has committed all of its outputs.
    pub(crate) fn is_runnable(&self, stage: StageId) -> bool {
        self.graph
            .stage(stage)
            .inputs
            .iter()
            .all(|input| self.stages[input.0 as usize].status == Status::Succeeded)
    }

    /// The committed outputs of every stage, by map partition.
    pub(crate) fn map_outputs(&self, stage: StageId) -> Vec<MapOutputLocation> {
        self.stages[stage.0 as usize]
            .tasks
            .iter()
            .filter_map(|t| t.output.clone())
            .collect()
    }

    pub(crate) fn is_result_stage(&self, stage: StageId) -> bool {
        self.graph.result_stage().id == stage
    }

    /// Whether a stage's outputs are still to be read: some stage reading it has unfinished tasks.
    pub(crate) fn outputs_needed(&self, stage: StageId) -> bool {
        self.graph.stages.iter().any(|consumer| {
            consumer.inputs.contains(&stage)
                && self.stages[consumer.id.0 as usize]
                    .tasks
                    .iter()
                    .any(|t| t.status != Status::Succeeded)
        })
    }
}
