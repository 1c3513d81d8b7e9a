//! The scheduler: owns all query, stage, task and executor state and decides what runs where.
//!
//! ```text
//!  cluster service ──(register, heartbeat, task status, lost)──┐
//!  query engine ─────(submit, cancel, release, snapshot)───────┼─► events ─► Scheduler::run
//!  ticker ───────────(tick: heartbeat timeouts)────────────────┘       │
//!        executors ◄── launch / cancel / release ──────────────────────┤
//!        result streams ◄── result partition ready / query failed ─────┘
//! ```
//! One task owns the state; everyone else holds a [`SchedulerHandle`] and sends events, so no
//! lock is ever held across the scheduling logic.

mod decommission;
mod events;
mod placement;
mod recovery;
pub(crate) mod snapshot;
mod speculation;
mod state;
mod status;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ember_planner::ids::{ExecutorId, QueryId, StageId};
use ember_protocol::proto::{
    CancelQuery, CoordinatorMessage, ReleaseQuery, TaskId, TaskStatus, coordinator_message,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

pub(crate) use snapshot::{Snapshot, SnapshotRequest};
pub(crate) use state::{ExecutorInfo, ExecutorStatus, ExecutorTx, Submission};
use state::{ExecutorState, QueryState, Status};

use crate::error::Error;
use crate::history::EventLog;
use crate::output::ResultEvent;
use crate::status::Metrics;

/// Scheduler settings.
#[derive(Debug, Clone)]
pub(crate) struct SchedulerConfig {
    pub(crate) executor_timeout: Duration,
    /// How long a query waits for a live executor before it fails.
    pub(crate) executor_wait: Duration,
    pub(crate) task_max_attempts: u32,
    pub(crate) history_size: usize,
    pub(crate) speculation: Option<Speculation>,
    /// Queries running at once (0: no limit) and queries that may wait for admission.
    pub(crate) max_running_queries: usize,
    pub(crate) max_queued_queries: usize,
    /// Bytes of a result partition the relay holds back until its task has finished.
    pub(crate) result_buffer_bytes: usize,
    /// Executors registered at once.
    pub(crate) max_executors: usize,
    /// How long a lost executor stays listed.
    pub(crate) lost_executor_retention: Duration,
}

impl SchedulerConfig {
    pub(crate) fn from_config(config: &ember_config::EmberConfig) -> Self {
        let s = &config.scheduler;
        Self {
            executor_timeout: Duration::from_millis(config.coordinator.executor_timeout_ms),
            executor_wait: Duration::from_millis(s.executor_wait_ms),
            task_max_attempts: s.task_max_attempts,
            history_size: config.coordinator.history_size,
            speculation: s.speculation.then(|| Speculation {
                multiplier: s.speculation_multiplier,
                quantile: s.speculation_quantile,
                min_runtime: Duration::from_millis(s.speculation_min_ms),
                task_duration: (s.speculation_task_duration_ms > 0)
                    .then(|| Duration::from_millis(s.speculation_task_duration_ms)),
            }),
            max_running_queries: s.max_running_queries,
            max_queued_queries: s.max_queued_queries,
            result_buffer_bytes: s.result_buffer_bytes as usize,
            max_executors: config.coordinator.max_executors,
            lost_executor_retention: Duration::from_millis(
                config.coordinator.lost_executor_retention_ms,
            ),
        }
    }
}

/// When a running task counts as a straggler worth a speculative copy.
#[derive(Debug, Clone)]
pub(crate) struct Speculation {
    pub(crate) multiplier: f64,
    pub(crate) quantile: f64,
    pub(crate) min_runtime: Duration,
    /// Spark's `spark.speculation.task.duration.threshold`: a task of a stage with no more tasks
    /// than one executor has slots is copied after running this long, siblings or not.
    pub(crate) task_duration: Option<Duration>,
}

/// How busy the cluster is: what dynamic allocation scales by.
#[derive(Debug, Default)]
pub(crate) struct Load {
    /// Tasks of running queries that could run now but wait for a slot.
    pub(crate) pending_tasks: usize,
    /// Live executors cluster managers started: allocation id, tasks running there, and
    /// whether a running query still needs map outputs it holds.
    pub(crate) executors: Vec<ExecutorLoad>,
}

/// One allocated executor's load.
#[derive(Debug)]
pub(crate) struct ExecutorLoad {
    pub(crate) allocation_id: String,
    pub(crate) running: usize,
    pub(crate) slots: usize,
    pub(crate) holds_outputs: bool,
}

/// Launches and re-runs of one task beyond `task_max_attempts` that are tolerated when they are
/// caused by lost executors or lost map outputs rather than by the task itself.
const MAX_LOSSES_PER_TASK: u32 = 8;

/// Executor events (heartbeats, statuses) queued for the scheduler before sessions wait.
const EXECUTOR_EVENTS: usize = 8192;

pub(crate) enum Event {
    ExecutorRegistered {
        info: ExecutorInfo,
        session: u64,
        tx: ExecutorTx,
    },
    Heartbeat {
        executor_id: ExecutorId,
        session: u64,
        active_tasks: u32,
        memory_used: u64,
        disk_used: u64,
    },
    TaskStatus {
        executor_id: ExecutorId,
        session: u64,
        status: TaskStatus,
    },
    ExecutorLost {
        executor_id: ExecutorId,
        session: u64,
        reason: String,
    },
    /// A Flight SQL client has read a result partition to its end on that executor.
    ResultServed {
        executor_id: ExecutorId,
        session: u64,
        task: TaskId,
    },
    Submit(Submission),
    /// The result relay could not read this attempt of a result partition to its end (its
    /// executor died, say): run it again if it is not already being re-run.
    RetryResult {
        query_id: QueryId,
        partition: usize,
        attempt: u32,
    },
    /// The client has read the result (or gone): the query's files may go.
    Release {
        query_id: QueryId,
    },
    Snapshot(SnapshotRequest, oneshot::Sender<Snapshot>),
    /// Stop a queued or running query (a cancel request from the monitoring API); answers
    /// whether it was still running.
    Cancel {
        query_id: QueryId,
        tx: oneshot::Sender<bool>,
    },
    /// The executor is stopping gracefully (it received SIGTERM): no new tasks go there.
    Decommissioning {
        executor_id: ExecutorId,
        session: u64,
    },
    /// The allocator gives this allocation's executor back: decommission it, so that it is
    /// released once no running query needs it.
    Decommission {
        allocation_id: String,
    },
    /// The executors cluster managers started, by allocation: their ids and statuses.
    Allocations(oneshot::Sender<Vec<(String, ExecutorId, ExecutorStatus)>>),
    /// How busy the cluster is, for dynamic allocation.
    Load(oneshot::Sender<Load>),
    /// A cluster manager saw the process of this allocation's executor end: it is lost now,
    /// without waiting for its heartbeats to stop.
    AllocationGone {
        allocation_id: String,
        reason: String,
    },
    Tick,
}

/// A cheap, cloneable way to talk to the scheduler.
#[derive(Clone, Debug)]
pub(crate) struct SchedulerHandle {
    /// Events from the coordinator's own parts (queries, results, system tables).
    events_tx: mpsc::UnboundedSender<Event>,
    /// Events from executor sessions: bounded, so that executors wait rather than grow it.
    executor_events_tx: mpsc::Sender<Event>,
    capacity: Arc<Capacity>,
    result_buffer_bytes: usize,
}

/// What planning needs to know of the cluster's live executors, as last seen by the scheduler.
#[derive(Debug, Default)]
struct Capacity {
    slots: AtomicUsize,
    /// The smallest memory pool per task slot of an executor with a bounded pool (0: none).
    slot_memory: AtomicUsize,
}

impl SchedulerHandle {
    pub(crate) fn send(&self, event: Event) {
        // The scheduler only stops at shutdown; events sent after that have nobody to act on them.
        let _ = self.events_tx.send(event);
    }

    /// Sends an executor session's event, waiting while the queue of such events is full; an
    /// error means the scheduler has stopped.
    pub(crate) async fn send_from_executor(&self, event: Event) -> Result<(), ()> {
        self.executor_events_tx.send(event).await.map_err(|_| ())
    }

    /// Bytes of a result partition held back until its task has finished (so that a lost task
    /// can be re-run without the client seeing rows twice).
    pub(crate) fn result_buffer_bytes(&self) -> usize {
        self.result_buffer_bytes
    }

    /// Task slots over all live executors, as last seen by the scheduler.
    pub(crate) fn total_slots(&self) -> usize {
        self.capacity.slots.load(Ordering::Relaxed)
    }

    /// The least memory a task may find on an executor (its pool over its slots); 0 when no
    /// executor bounds its memory.
    pub(crate) fn slot_memory(&self) -> usize {
        self.capacity.slot_memory.load(Ordering::Relaxed)
    }

    pub(crate) async fn snapshot(&self, request: SnapshotRequest) -> Result<Snapshot, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Event::Snapshot(request, tx));
        rx.await
            .map_err(|_| Error::Unavailable("the scheduler has stopped".into()))
    }

    /// Stops a queued or running query; false if it had already ended (or is unknown).
    pub(crate) async fn cancel(&self, query_id: QueryId) -> Result<bool, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Event::Cancel { query_id, tx });
        rx.await
            .map_err(|_| Error::Unavailable("the scheduler has stopped".into()))
    }

    /// The registered executors cluster managers started: allocation id, executor id, status.
    pub(crate) async fn allocations(
        &self,
    ) -> Result<Vec<(String, ExecutorId, ExecutorStatus)>, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Event::Allocations(tx));
        rx.await
            .map_err(|_| Error::Unavailable("the scheduler has stopped".into()))
    }

    /// How busy the cluster is.
    pub(crate) async fn load(&self) -> Result<Load, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Event::Load(tx));
        rx.await
            .map_err(|_| Error::Unavailable("the scheduler has stopped".into()))
    }

    /// Decommissions the executor of `allocation_id`: no new tasks; it is told to stop once
    /// nothing runs there and no running query needs its outputs.
    pub(crate) fn decommission(&self, allocation_id: String) {
        self.send(Event::Decommission { allocation_id });
    }

    /// The executor of `allocation_id` is gone (its process ended).
    pub(crate) fn allocation_gone(&self, allocation_id: String, reason: String) {
        self.send(Event::AllocationGone {
            allocation_id,
            reason,
        });
    }
}

pub(crate) struct Scheduler {
    config: SchedulerConfig,
    events_rx: mpsc::UnboundedReceiver<Event>,
    executor_events_rx: mpsc::Receiver<Event>,
    capacity: Arc<Capacity>,
    executors: HashMap<ExecutorId, ExecutorState>,
    /// Submitted queries not yet released, in submission order (queued ones included).
    running: Vec<QueryState>,
    /// Finished queries, newest last, for the system tables.
    history: VecDeque<QueryState>,
    assignments: u64,
    /// Since when no executor has been alive.
    no_executor_since: Option<Instant>,
    metrics: Arc<Metrics>,
    /// Writes each query's transitions to the event log, when there is one.
    events: Option<events::EventRecorder>,
}

impl Scheduler {
    pub(crate) fn new(config: SchedulerConfig, metrics: Arc<Metrics>) -> (Self, SchedulerHandle) {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (executor_events_tx, executor_events_rx) = mpsc::channel(EXECUTOR_EVENTS);
        let capacity = Arc::new(Capacity::default());
        let handle = SchedulerHandle {
            events_tx,
            executor_events_tx,
            capacity: Arc::clone(&capacity),
            result_buffer_bytes: config.result_buffer_bytes,
        };
        let scheduler = Self {
            config,
            events_rx,
            executor_events_rx,
            capacity,
            executors: HashMap::new(),
            running: vec![],
            history: VecDeque::new(),
            assignments: 0,
            no_executor_since: Some(Instant::now()),
            metrics,
            events: None,
        };
        (scheduler, handle)
    }

    /// Logs every query's transitions to `log`.
    pub(crate) fn with_event_log(mut self, log: EventLog) -> Self {
        self.events = Some(events::EventRecorder::new(log));
        self
    }

    /// Logs what moved in the queries that may have moved.
    fn record_events(&mut self) {
        let Some(recorder) = &mut self.events else {
            return;
        };
        for query in &self.running {
            if recorder.may_have_moved(query) {
                recorder.record(query);
            }
        }
    }

    /// Processes events until every handle is dropped or `shutdown` fires.
    pub(crate) async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        tokio::pin!(shutdown);
        loop {
            let event = tokio::select! {
                _ = &mut shutdown => break,
                _ = ticker.tick() => Event::Tick,
                event = self.events_rx.recv() => match event {
                    Some(event) => event,
                    None => break,
                },
                Some(event) = self.executor_events_rx.recv() => event,
            };
            self.handle(event);
            // Drain whatever else is queued before scheduling once (a bounded number of
            // executor events, so a busy cluster still gets scheduled).
            while let Ok(event) = self.events_rx.try_recv() {
                self.handle(event);
            }
            for _ in 0..EXECUTOR_EVENTS {
                match self.executor_events_rx.try_recv() {
                    Ok(event) => self.handle(event),
                    Err(_) => break,
                }
            }
            self.schedule();
            self.record_events();
        }
        for query in std::mem::take(&mut self.running) {
            if let Some(tx) = &query.results_tx {
                let _ = tx.send(ResultEvent::Failed(Error::Shutdown));
            }
        }
    }

    /// The executor if this event comes from its current session.
    fn current(&mut self, executor_id: &ExecutorId, session: u64) -> Option<&mut ExecutorState> {
        self.executors
            .get_mut(executor_id)
            .filter(|e| e.session == session)
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::ExecutorRegistered { info, session, tx } => self.register(info, session, tx),
            Event::Heartbeat {
                executor_id,
                session,
                active_tasks,
                memory_used,
                disk_used,
            } => {
                if let Some(executor) = self.current(&executor_id, session) {
                    executor.active_tasks = active_tasks;
                    executor.memory_used = memory_used;
                    executor.memory_peak = executor.memory_peak.max(memory_used);
                    executor.disk_used = disk_used;
                    executor.last_heartbeat = Instant::now();
                    executor.last_heartbeat_wall = SystemTime::now();
                }
            }
            Event::TaskStatus {
                executor_id,
                session,
                status,
            } => {
                // A session the scheduler has written off reports nothing that counts.
                if self
                    .current(&executor_id, session)
                    .is_some_and(|e| e.status.is_live())
                {
                    self.task_status(&executor_id, status);
                }
            }
            Event::Decommissioning {
                executor_id,
                session,
            } => {
                if self.current(&executor_id, session).is_some() {
                    self.decommission(&executor_id, "it is stopping (SIGTERM)");
                }
            }
            Event::Decommission { allocation_id } => {
                for executor_id in self.live_of_allocation(&allocation_id) {
                    self.decommission(&executor_id, "its cluster manager gives it back");
                }
            }
            Event::ExecutorLost {
                executor_id,
                session,
                reason,
            } => {
                if self.current(&executor_id, session).is_some() {
                    self.executor_lost(&executor_id, &reason);
                }
            }
            Event::ResultServed {
                executor_id,
                session,
                task,
            } => {
                if self.current(&executor_id, session).is_some() {
                    self.result_served(&executor_id, &task);
                }
            }
            Event::Submit(submission) => self.submit(submission),
            Event::RetryResult {
                query_id,
                partition,
                attempt,
            } => self.retry_result(&query_id, partition, attempt),
            Event::Release { query_id } => self.release(&query_id),
            Event::Cancel { query_id, tx } => {
                let running = self
                    .running
                    .iter()
                    .any(|q| q.id == query_id && !q.status.is_final());
                if running {
                    info!(%query_id, "query cancelled by request");
                    self.finish_query(&query_id, Err(Error::Cancelled));
                }
                let _ = tx.send(running);
            }
            Event::Snapshot(request, tx) => {
                let _ = tx.send(Snapshot::build(
                    &request,
                    self.executors.values(),
                    self.running.iter().chain(self.history.iter()),
                ));
            }
            Event::Allocations(tx) => {
                let _ = tx.send(
                    self.executors
                        .values()
                        .filter(|e| !e.info.allocation_id.is_empty())
                        .map(|e| (e.info.allocation_id.clone(), e.info.id.clone(), e.status))
                        .collect(),
                );
            }
            Event::Load(tx) => {
                let _ = tx.send(self.load());
            }
            Event::AllocationGone {
                allocation_id,
                reason,
            } => {
                for executor_id in self.live_of_allocation(&allocation_id) {
                    self.executor_lost(&executor_id, &reason);
                    if let Some(executor) = self.executors.get_mut(&executor_id) {
                        executor.status = ExecutorStatus::Gone;
                    }
                }
            }
            Event::Tick => self.tick(),
        }
        self.update_slots();
    }

    /// The live executors (every incarnation) of a cluster manager's allocation.
    fn live_of_allocation(&self, allocation_id: &str) -> Vec<ExecutorId> {
        self.executors
            .values()
            .filter(|e| e.info.allocation_id == allocation_id && e.status.is_live())
            .map(|e| e.info.id.clone())
            .collect()
    }

    fn update_slots(&self) {
        let alive = || {
            self.executors
                .values()
                .filter(|e| e.status == ExecutorStatus::Alive)
        };
        let slots = alive().map(|e| e.info.slots).sum();
        let slot_memory = alive()
            .filter(|e| e.info.memory > 0)
            .map(|e| e.info.memory as usize / e.info.slots.max(1))
            .min()
            .unwrap_or(0);
        self.capacity.slots.store(slots, Ordering::Relaxed);
        self.capacity
            .slot_memory
            .store(slot_memory, Ordering::Relaxed);
    }

    fn submit(&mut self, submission: Submission) {
        let queued = self
            .running
            .iter()
            .filter(|q| q.status == Status::Queued)
            .count();
        if self.config.max_running_queries > 0 && queued >= self.config.max_queued_queries {
            let _ = submission
                .results_tx
                .send(ResultEvent::Failed(Error::Unavailable(format!(
                    "too many queries: {} are running and {queued} are waiting \
                 (scheduler.max_running_queries, scheduler.max_queued_queries)",
                    self.config.max_running_queries
                ))));
            return;
        }
        debug!(query_id = %submission.query_id, stages = submission.graph.stages.len(), "query submitted");
        self.running.push(QueryState::new(submission));
    }

    /// Starts queued queries while fewer than `max_running_queries` run, oldest first.
    fn admit(&mut self) {
        let limit = match self.config.max_running_queries {
            0 => usize::MAX,
            n => n,
        };
        let mut running = self
            .running
            .iter()
            .filter(|q| q.status == Status::Running)
            .count();
        for query in &mut self.running {
            if running >= limit {
                break;
            }
            if query.status == Status::Queued {
                query.status = Status::Running;
                running += 1;
            }
        }
    }

    fn register(&mut self, info: ExecutorInfo, session: u64, tx: ExecutorTx) {
        let alive = self
            .executors
            .values()
            .filter(|e| e.status == ExecutorStatus::Alive)
            .count();
        // Ids are assigned by the cluster service and never repeat; one that did would be
        // refused rather than allowed to replace a live executor.
        let refusal = if self.executors.contains_key(&info.id) {
            Some(format!("executor id {} is taken", info.id))
        } else if alive >= self.config.max_executors {
            Some(format!(
                "the cluster has its maximum of {} executors (coordinator.max_executors)",
                self.config.max_executors
            ))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            warn!(executor_id = %info.id, %refusal, "registration refused");
            let _ = tx.try_send(Err(tonic::Status::resource_exhausted(refusal)));
            return;
        }
        info!(executor_id = %info.id, address = %info.flight_address(), slots = info.slots, "executor registered");
        let now = SystemTime::now();
        self.no_executor_since = None;
        self.executors.insert(
            info.id.clone(),
            ExecutorState {
                info,
                status: ExecutorStatus::Alive,
                session,
                tx,
                running: Default::default(),
                active_tasks: 0,
                registered_at: now,
                last_heartbeat: Instant::now(),
                last_heartbeat_wall: now,
                tasks_succeeded: 0,
                tasks_failed: 0,
                bytes_written: 0,
                memory_used: 0,
                memory_peak: 0,
                disk_used: 0,
                lost_at: None,
                last_assigned: 0,
            },
        );
    }

    fn load(&self) -> Load {
        let mut pending_tasks = 0;
        for query in self.running.iter().filter(|q| q.status == Status::Running) {
            for (si, stage) in query.stages.iter().enumerate() {
                if !stage.status.is_final() && query.is_runnable(StageId(si as u32)) {
                    pending_tasks += stage
                        .tasks
                        .iter()
                        .filter(|t| t.status == Status::Pending)
                        .count();
                }
            }
        }
        let holders = self.needed_output_holders();
        Load {
            pending_tasks,
            executors: self
                .executors
                .values()
                .filter(|e| e.status == ExecutorStatus::Alive && !e.info.allocation_id.is_empty())
                .map(|e| ExecutorLoad {
                    allocation_id: e.info.allocation_id.clone(),
                    running: e.running.len(),
                    slots: e.info.slots,
                    holds_outputs: holders.contains(&e.info.id),
                })
                .collect(),
        }
    }

    fn tick(&mut self) {
        let timeout = self.config.executor_timeout;
        let silent: Vec<ExecutorId> = self
            .executors
            .values()
            .filter(|e| e.status.is_live() && e.last_heartbeat.elapsed() > timeout)
            .map(|e| e.info.id.clone())
            .collect();
        for id in silent {
            self.executor_lost(&id, "no heartbeat within the executor timeout");
        }
        self.release_drained();
        // Lost executors stay visible for a while, then are forgotten: an executor that comes
        // back registers as a new one.
        let retention = self.config.lost_executor_retention;
        self.executors
            .retain(|_, e| e.lost_at.is_none_or(|at| at.elapsed() < retention));
        // A decommissioning executor still finishes tasks: queries are not failed for want of
        // executors while one is.
        let any_alive = self.executors.values().any(|e| e.status.is_live());
        if any_alive {
            self.no_executor_since = None;
        } else {
            let since = *self.no_executor_since.get_or_insert_with(Instant::now);
            let wait = self.config.executor_wait;
            let waited_too_long: Vec<QueryId> = self
                .running
                .iter()
                .filter(|q| {
                    matches!(q.status, Status::Running | Status::Queued)
                        && since.max(q.submitted_instant).elapsed() > wait
                })
                .map(|q| q.id.clone())
                .collect();
            for id in waited_too_long {
                self.finish_query(
                    &id,
                    Err(Error::Unavailable(format!(
                        "no executor is alive: none registered within {} s \
                         (scheduler.executor_wait_ms)",
                        wait.as_secs()
                    ))),
                );
            }
        }
    }

    /// Ends a query that has not succeeded: tells the client, stops its tasks.
    pub(super) fn finish_query(&mut self, query_id: &QueryId, outcome: Result<(), Error>) {
        let Some(query) = self.running.iter_mut().find(|q| &q.id == query_id) else {
            return;
        };
        if query.status.is_final() {
            return;
        }
        let Err(error) = outcome else { return };
        query.status = if matches!(error, Error::Cancelled) {
            Status::Cancelled
        } else {
            Status::Failed
        };
        query.error = Some(error.to_string());
        query.sqlstate = Some(error.sqlstate().to_string());
        query.finished_at = Some(SystemTime::now());
        self.metrics.query_ended(
            query.status,
            &query.frontend,
            query.submitted_instant.elapsed().as_secs_f64(),
        );
        info!(%query_id, %error, "query ended");
        let now = query.finished_at;
        for stage in &mut query.stages {
            for task in &mut stage.tasks {
                if !task.status.is_final() {
                    if task.status == Status::Running {
                        task.finished_at = now;
                    }
                    task.status = Status::Cancelled;
                }
                task.speculative = None;
            }
            if !stage.status.is_final() {
                if stage.started_at.is_some() {
                    stage.finished_at = now;
                }
                stage.status = query.status;
            }
        }
        if let Some(tx) = query.results_tx.take() {
            let _ = tx.send(ResultEvent::Failed(error));
        }
        let cancel = CoordinatorMessage {
            message: Some(coordinator_message::Message::CancelQuery(CancelQuery {
                query_id: query_id.to_string(),
            })),
        };
        // The attempts keep their slots until their executors report them stopped: a cancelled
        // task holds its memory until its plan is dropped, and the next query's tasks need it.
        let executors: Vec<ExecutorId> = query.executors_used.iter().cloned().collect();
        for executor_id in executors {
            self.notify(&executor_id, cancel.clone());
        }
    }

    /// Queues `message` for an executor's session. An executor that has let its queue fill up
    /// is not reading it: it is written off (and its session closed) rather than the queue
    /// growing.
    pub(super) fn notify(&mut self, executor_id: &ExecutorId, message: CoordinatorMessage) {
        let Some(executor) = self.executors.get(executor_id) else {
            return;
        };
        if !executor.status.is_live() {
            return;
        }
        if let Err(error) = executor.tx.try_send(Ok(message)) {
            let reason = match error {
                mpsc::error::TrySendError::Full(_) => "it stopped reading its session",
                mpsc::error::TrySendError::Closed(_) => "its session has closed",
            };
            self.executor_lost(executor_id, reason);
        }
    }

    /// Tells whoever reads the query's result that a client fetched this partition itself, if
    /// the executor that says so runs that attempt of a result task.
    fn result_served(&self, executor_id: &ExecutorId, task: &TaskId) {
        let Some(query) =
            QueryId::parse(&task.query_id).and_then(|id| self.running.iter().find(|q| q.id == id))
        else {
            return;
        };
        let stage_id = StageId(task.stage_id);
        let runs_it = query.is_result_stage(stage_id)
            && query
                .stages
                .get(task.stage_id as usize)
                .and_then(|s| s.tasks.get(task.partition as usize))
                .is_some_and(|t| {
                    (t.attempt == task.attempt && t.executor.as_ref() == Some(executor_id))
                        || t.speculative.as_ref().is_some_and(|s| {
                            s.attempt == task.attempt && &s.executor == executor_id
                        })
                });
        if !runs_it {
            warn!(%executor_id, query_id = %query.id, "ignoring a served report for an attempt the executor does not run");
            return;
        }
        if let Some(tx) = &query.results_tx {
            let _ = tx.send(ResultEvent::Served {
                partition: task.partition as usize,
                attempt: task.attempt,
            });
        }
    }

    /// The client is done with the query: stop anything left and delete its files.
    fn release(&mut self, query_id: &QueryId) {
        self.finish_query(query_id, Err(Error::Cancelled));
        let Some(index) = self.running.iter().position(|q| &q.id == query_id) else {
            return;
        };
        let mut query = self.running.remove(index);
        query.results_tx = None;
        let release = CoordinatorMessage {
            message: Some(coordinator_message::Message::ReleaseQuery(ReleaseQuery {
                query_id: query_id.to_string(),
            })),
        };
        for executor_id in &query.executors_used {
            if let Some(executor) = self.executors.get(executor_id) {
                // A release that does not fit is not needed: an executor that is not reading
                // is written off at its next launch, and a new session starts without files.
                let _ = executor.tx.try_send(Ok(release.clone()));
            }
        }
        if let Some(recorder) = &mut self.events {
            recorder.released(&query);
        }
        self.history.push_back(query);
        while self.history.len() > self.config.history_size {
            self.history.pop_front();
        }
    }
}
