//! The scheduler's bookkeeping: executors, queries, stages and task attempts.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Instant, SystemTime};

use ember_planner::adaptive::MapOutputSizes;
use ember_planner::ids::{ExecutorId, QueryId, StageId, TaskAttempt};
use ember_planner::session::EmberOptions;
use ember_planner::shuffle::MapOutputLocation;
use ember_planner::stage::StageGraph;
use ember_protocol::proto::{CoordinatorMessage, MetricKind, OperatorMetrics};
use tokio::sync::mpsc;

use crate::output::ResultEvent;
// The scheduler's states are the ones the monitoring API shows.
pub(crate) use crate::status::{ExecutorState as ExecutorStatus, State as Status};

/// The sending half of an executor's session stream, bounded: an executor that lets
/// [`crate::cluster::EXECUTOR_QUEUE`] messages pile up is written off.
pub(crate) type ExecutorTx = mpsc::Sender<Result<CoordinatorMessage, tonic::Status>>;

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
    /// Bytes the tasks that succeeded there wrote.
    pub(crate) bytes_written: u64,
    /// Its memory pool's reservations and work-dir files, as of its last heartbeat, and the
    /// most reserved at any heartbeat.
    pub(crate) memory_used: u64,
    pub(crate) memory_peak: u64,
    pub(crate) disk_used: u64,
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
    /// Bytes of its committed output by output partition, for adaptive execution.
    pub(crate) partition_bytes: Vec<u64>,
    /// Arrow bytes its shuffle readers read.
    pub(crate) shuffle_read_bytes: u64,
    pub(crate) spilled_bytes: u64,
    /// The most memory its successful attempt held at once.
    pub(crate) peak_memory_bytes: u64,
    /// The successful attempt was a speculative copy that beat the original.
    pub(crate) speculation_won: bool,
    pub(crate) started_at: Option<SystemTime>,
    /// When the current attempt was launched, for speculation.
    pub(crate) started_instant: Option<Instant>,
    pub(crate) finished_at: Option<SystemTime>,
    pub(crate) elapsed_us: u64,
    pub(crate) error: Option<String>,
    pub(crate) sqlstate: Option<String>,
    /// Attempts of it that failed, retried or not, and the latest of them.
    pub(crate) attempt_failures: u32,
    pub(crate) last_failure: Option<FailedAttempt>,
}

/// An attempt that failed: what the event log says of it.
#[derive(Debug, Clone)]
pub(crate) struct FailedAttempt {
    pub(crate) attempt: u32,
    pub(crate) executor: ExecutorId,
    pub(crate) started_at: Option<SystemTime>,
    pub(crate) failed_at: SystemTime,
}

impl TaskState {
    pub(crate) fn new(partition: u32) -> Self {
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
            partition_bytes: vec![],
            shuffle_read_bytes: 0,
            spilled_bytes: 0,
            peak_memory_bytes: 0,
            speculation_won: false,
            started_at: None,
            started_instant: None,
            finished_at: None,
            elapsed_us: 0,
            error: None,
            sqlstate: None,
            attempt_failures: 0,
            last_failure: None,
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
    /// The plan's operators in pre-order, with metrics added up over succeeded tasks.
    pub(crate) operators: Vec<OperatorTotals>,
    /// Whether adaptive execution has looked at the stage (it does once, before the first
    /// task), and what it changed and why.
    pub(crate) adapted: bool,
    pub(crate) adaptive: Vec<String>,
    /// Bumped each time its plan or its notes change after submission (it was re-planned, or
    /// a stage it reads was), so the event log records the plan it runs.
    pub(crate) plan_version: u32,
}

/// One operator of a stage's plan, its metrics added up over the stage's succeeded tasks.
#[derive(Debug, Clone)]
pub(crate) struct OperatorTotals {
    pub(crate) depth: u32,
    pub(crate) name: String,
    /// Value and how it adds up, by metric name.
    pub(crate) metrics: BTreeMap<String, (u64, MetricKind)>,
}

/// Bounds on what one task report may add to a stage's operator metrics.
const MAX_OPERATORS: usize = 1024;
const MAX_METRICS_PER_OPERATOR: usize = 64;
const MAX_NAME_LEN: usize = 64;

fn bounded_name(name: &str) -> String {
    let mut end = name.len().min(MAX_NAME_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

impl StageState {
    /// Adds one succeeded task's operator metrics: counts and times are summed, gauges keep
    /// the largest. A report of another plan shape than the first is ignored.
    pub(crate) fn add_operator_metrics(&mut self, operators: &[OperatorMetrics]) {
        if operators.is_empty() || operators.len() > MAX_OPERATORS {
            return;
        }
        if self.operators.is_empty() {
            self.operators = operators
                .iter()
                .map(|o| OperatorTotals {
                    depth: o.depth,
                    name: bounded_name(&o.operator),
                    metrics: BTreeMap::new(),
                })
                .collect();
        }
        let same_shape = self.operators.len() == operators.len()
            && self
                .operators
                .iter()
                .zip(operators)
                .all(|(mine, theirs)| mine.name == bounded_name(&theirs.operator));
        if !same_shape {
            return;
        }
        for (totals, reported) in self.operators.iter_mut().zip(operators) {
            for metric in reported.metrics.iter().take(MAX_METRICS_PER_OPERATOR) {
                let kind = MetricKind::try_from(metric.kind).unwrap_or(MetricKind::Count);
                let name = bounded_name(&metric.name);
                if totals.metrics.len() >= MAX_METRICS_PER_OPERATOR
                    && !totals.metrics.contains_key(&name)
                {
                    continue;
                }
                let entry = totals.metrics.entry(name).or_insert((0, kind));
                entry.0 = match kind {
                    MetricKind::Gauge => entry.0.max(metric.value),
                    MetricKind::Count | MetricKind::TimeNanos => {
                        entry.0.saturating_add(metric.value)
                    }
                };
            }
        }
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
    /// The frontend the session came through (`pgwire`, `flight-sql`, `embedded`).
    pub(crate) frontend: String,
    pub(crate) sql: String,
    pub(crate) graph: StageGraph,
    /// The session's settings that differ from the defaults; tasks run with them.
    pub(crate) settings: HashMap<String, String>,
    /// How the session lets adaptive execution re-plan the query's stages.
    pub(crate) adaptive: EmberOptions,
    pub(crate) results_tx: mpsc::UnboundedSender<ResultEvent>,
}

#[derive(Debug)]
pub(crate) struct QueryState {
    pub(crate) id: QueryId,
    pub(crate) session_id: String,
    pub(crate) user: String,
    pub(crate) frontend: String,
    pub(crate) sql: String,
    pub(crate) graph: StageGraph,
    pub(crate) settings: HashMap<String, String>,
    pub(crate) adaptive: EmberOptions,
    pub(crate) stages: Vec<StageState>,
    pub(crate) status: Status,
    pub(crate) error: Option<String>,
    pub(crate) sqlstate: Option<String>,
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
            frontend,
            sql,
            graph,
            settings,
            adaptive,
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
                operators: vec![],
                adapted: false,
                adaptive: vec![],
                plan_version: 0,
            })
            .collect();
        Self {
            id,
            session_id,
            user,
            frontend,
            sql,
            graph,
            settings,
            adaptive,
            stages,
            status: Status::Queued,
            error: None,
            sqlstate: None,
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

    /// The sizes of a stage's committed outputs, by map task and output partition.
    pub(crate) fn map_output_sizes(&self, stage: StageId) -> MapOutputSizes {
        MapOutputSizes {
            bytes: self.stages[stage.0 as usize]
                .tasks
                .iter()
                .map(|t| t.partition_bytes.clone())
                .collect(),
            rows: self.stages[stage.0 as usize]
                .tasks
                .iter()
                .fold(0u64, |sum, t| sum.saturating_add(t.rows)),
        }
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
