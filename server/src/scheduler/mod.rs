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

pub(crate) mod snapshot;
mod state;
mod status;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ember_executor::proto::{
    CancelQuery, CoordinatorMessage, LaunchTask, ReleaseQuery, TaskId, TaskStatus,
    coordinator_message,
};
use ember_planner::codec::encode_plan;
use ember_planner::ids::{ExecutorId, QueryId, StageId, TaskAttempt};
use ember_planner::shuffle::MapOutputLocation;
use ember_planner::stage::StageGraph;
use ember_planner::task::task_fragment;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

pub(crate) use snapshot::Snapshot;
pub(crate) use state::{ExecutorInfo, ExecutorTx, ResultEvent};
use state::{ExecutorState, ExecutorStatus, QueryState, Status};

use crate::error::{Error, TaskErrorKind};

/// Scheduler settings.
#[derive(Debug, Clone)]
pub(crate) struct SchedulerConfig {
    pub(crate) executor_timeout: Duration,
    /// How long a query waits for a first executor before it fails.
    pub(crate) executor_wait: Duration,
    pub(crate) task_max_attempts: u32,
    pub(crate) history_size: usize,
}

pub(crate) enum Event {
    ExecutorRegistered {
        info: ExecutorInfo,
        session: u64,
        tx: ExecutorTx,
    },
    Heartbeat {
        executor_id: ExecutorId,
    },
    TaskStatus {
        executor_id: ExecutorId,
        status: TaskStatus,
    },
    ExecutorLost {
        executor_id: ExecutorId,
        session: u64,
        reason: String,
    },
    Submit {
        query_id: QueryId,
        sql: String,
        graph: StageGraph,
        settings: HashMap<String, String>,
        results_tx: mpsc::UnboundedSender<ResultEvent>,
    },
    /// The client has read the result (or gone): the query's files may go.
    Release {
        query_id: QueryId,
    },
    Snapshot(oneshot::Sender<Snapshot>),
    Tick,
}

/// A cheap, cloneable way to talk to the scheduler.
#[derive(Clone, Debug)]
pub(crate) struct SchedulerHandle {
    events_tx: mpsc::UnboundedSender<Event>,
    total_slots: Arc<AtomicUsize>,
}

impl SchedulerHandle {
    pub(crate) fn send(&self, event: Event) {
        // The scheduler only stops at shutdown; events sent after that have nobody to act on them.
        let _ = self.events_tx.send(event);
    }

    /// Task slots over all live executors, as last seen by the scheduler.
    pub(crate) fn total_slots(&self) -> usize {
        self.total_slots.load(Ordering::Relaxed)
    }

    pub(crate) async fn snapshot(&self) -> Result<Snapshot, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Event::Snapshot(tx));
        rx.await
            .map_err(|_| Error::Unavailable("the scheduler has stopped".into()))
    }
}

pub(crate) struct Scheduler {
    config: SchedulerConfig,
    events_rx: mpsc::UnboundedReceiver<Event>,
    total_slots: Arc<AtomicUsize>,
    executors: HashMap<ExecutorId, ExecutorState>,
    /// Running queries in submission order.
    running: Vec<QueryState>,
    /// Finished queries, newest last, for the system tables.
    history: VecDeque<QueryState>,
    assignments: u64,
}

impl Scheduler {
    pub(crate) fn new(config: SchedulerConfig) -> (Self, SchedulerHandle) {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let total_slots = Arc::new(AtomicUsize::new(0));
        let handle = SchedulerHandle {
            events_tx,
            total_slots: Arc::clone(&total_slots),
        };
        let scheduler = Self {
            config,
            events_rx,
            total_slots,
            executors: HashMap::new(),
            running: vec![],
            history: VecDeque::new(),
            assignments: 0,
        };
        (scheduler, handle)
    }

    /// Processes events until every handle is dropped or `shutdown` fires.
    pub(crate) async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        tokio::pin!(shutdown);
        loop {
            let event = tokio::select! {
                _ = &mut shutdown => break,
                _ = ticker.tick() => Event::Tick,
                event = self.events_rx.recv() => match event {
                    Some(event) => event,
                    None => break,
                },
            };
            self.handle(event);
            // Drain whatever else is queued before scheduling once.
            while let Ok(event) = self.events_rx.try_recv() {
                self.handle(event);
            }
            self.schedule();
        }
        for query in std::mem::take(&mut self.running) {
            if let Some(tx) = &query.results_tx {
                let _ = tx.send(ResultEvent::Failed(Error::Unavailable(
                    "the coordinator is shutting down".into(),
                )));
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::ExecutorRegistered { info, session, tx } => self.register(info, session, tx),
            Event::Heartbeat { executor_id } => {
                if let Some(executor) = self.executors.get_mut(&executor_id) {
                    executor.last_heartbeat = Instant::now();
                    executor.last_heartbeat_wall = SystemTime::now();
                }
            }
            Event::TaskStatus {
                executor_id,
                status,
            } => self.task_status(&executor_id, status),
            Event::ExecutorLost {
                executor_id,
                session,
                reason,
            } => {
                let current = self.executors.get(&executor_id).map(|e| e.session);
                if current == Some(session) {
                    self.executor_lost(&executor_id, &reason);
                }
            }
            Event::Submit {
                query_id,
                sql,
                graph,
                settings,
                results_tx,
            } => {
                debug!(%query_id, stages = graph.stages.len(), "query submitted");
                self.running
                    .push(QueryState::new(query_id, sql, graph, settings, results_tx));
            }
            Event::Release { query_id } => self.release(&query_id),
            Event::Snapshot(tx) => {
                let _ = tx.send(Snapshot::build(
                    self.executors.values(),
                    self.running.iter().chain(self.history.iter()),
                ));
            }
            Event::Tick => self.tick(),
        }
        self.update_slots();
    }

    fn update_slots(&self) {
        let slots = self
            .executors
            .values()
            .filter(|e| e.status == ExecutorStatus::Alive)
            .map(|e| e.info.slots)
            .sum();
        self.total_slots.store(slots, Ordering::Relaxed);
    }

    fn register(&mut self, info: ExecutorInfo, session: u64, tx: ExecutorTx) {
        info!(executor_id = %info.id, address = %info.flight_address(), slots = info.slots, "executor registered");
        let now = SystemTime::now();
        self.executors.insert(
            info.id.clone(),
            ExecutorState {
                info,
                status: ExecutorStatus::Alive,
                session,
                tx,
                running: Default::default(),
                registered_at: now,
                last_heartbeat: Instant::now(),
                last_heartbeat_wall: now,
                tasks_succeeded: 0,
                tasks_failed: 0,
                last_assigned: 0,
            },
        );
    }

    fn tick(&mut self) {
        let timeout = self.config.executor_timeout;
        let silent: Vec<ExecutorId> = self
            .executors
            .values()
            .filter(|e| e.status == ExecutorStatus::Alive && e.last_heartbeat.elapsed() > timeout)
            .map(|e| e.info.id.clone())
            .collect();
        for id in silent {
            self.executor_lost(&id, "no heartbeat within the executor timeout");
        }
        let any_alive = self
            .executors
            .values()
            .any(|e| e.status == ExecutorStatus::Alive);
        if !any_alive {
            let waited_too_long: Vec<QueryId> = self
                .running
                .iter()
                .filter(|q| q.submitted_instant.elapsed() > self.config.executor_wait)
                .map(|q| q.id.clone())
                .collect();
            for id in waited_too_long {
                self.finish_query(
                    &id,
                    Err(Error::Unavailable(
                        "no executors are registered with the coordinator".into(),
                    )),
                );
            }
        }
    }

    fn executor_lost(&mut self, executor_id: &ExecutorId, reason: &str) {
        let Some(executor) = self.executors.get_mut(executor_id) else {
            return;
        };
        if executor.status == ExecutorStatus::Lost {
            return;
        }
        warn!(%executor_id, reason, "executor lost");
        executor.status = ExecutorStatus::Lost;
        executor.running.clear();
        // Recovery (re-running lost map outputs elsewhere) is not implemented yet: every running
        // query that used the executor fails with a clear error.
        let affected: Vec<QueryId> = self
            .running
            .iter()
            .filter(|q| q.executors_used.contains(executor_id))
            .map(|q| q.id.clone())
            .collect();
        for id in affected {
            self.finish_query(
                &id,
                Err(Error::Task {
                    kind: TaskErrorKind::ExecutorLost,
                    message: format!("executor {executor_id} was lost: {reason}"),
                }),
            );
        }
    }

    /// Ends a query that has not succeeded: tells the client, stops its tasks.
    fn finish_query(&mut self, query_id: &QueryId, outcome: Result<(), Error>) {
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
        query.finished_at = Some(SystemTime::now());
        info!(%query_id, %error, "query ended");
        for stage in &mut query.stages {
            for task in &mut stage.tasks {
                if !task.status.is_final() {
                    task.status = Status::Cancelled;
                }
            }
            if !stage.status.is_final() {
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
        for executor_id in &query.executors_used {
            if let Some(executor) = self.executors.get_mut(executor_id) {
                let _ = executor.tx.send(Ok(cancel.clone()));
                executor.running.retain(|t| &t.query_id != query_id);
            }
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
                let _ = executor.tx.send(Ok(release.clone()));
            }
        }
        self.history.push_back(query);
        while self.history.len() > self.config.history_size {
            self.history.pop_front();
        }
    }

    /// Launches runnable tasks on free slots, oldest query first.
    fn schedule(&mut self) {
        for qi in 0..self.running.len() {
            if self.running[qi].status != Status::Running {
                continue;
            }
            if self.running[qi]
                .stages
                .iter()
                .all(|s| s.status == Status::Succeeded)
            {
                // Only possible when every stage was empty from the start.
                let query = &mut self.running[qi];
                query.status = Status::Succeeded;
                query.finished_at = Some(SystemTime::now());
                continue;
            }
            for si in 0..self.running[qi].stages.len() {
                let stage_id = StageId(si as u32);
                let query = &self.running[qi];
                if query.stages[si].status.is_final() || !query.is_runnable(stage_id) {
                    continue;
                }
                let pending: Vec<usize> = query.stages[si]
                    .tasks
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.status == Status::Pending)
                    .map(|(i, _)| i)
                    .collect();
                for partition in pending {
                    let Some(executor_id) = self.pick_executor() else {
                        return;
                    };
                    if let Err(error) = self.launch(qi, stage_id, partition, &executor_id) {
                        let query_id = self.running[qi].id.clone();
                        self.finish_query(&query_id, Err(error));
                        break;
                    }
                }
            }
        }
    }

    /// The live executor with the most free slots; ties go to the one used least recently.
    fn pick_executor(&self) -> Option<ExecutorId> {
        self.executors
            .values()
            .filter(|e| e.status == ExecutorStatus::Alive && e.free_slots() > 0)
            .max_by(|a, b| {
                a.free_slots()
                    .cmp(&b.free_slots())
                    .then(b.last_assigned.cmp(&a.last_assigned))
            })
            .map(|e| e.info.id.clone())
    }

    fn launch(
        &mut self,
        qi: usize,
        stage_id: StageId,
        partition: usize,
        executor_id: &ExecutorId,
    ) -> Result<(), Error> {
        let query = &self.running[qi];
        let stage = query.graph.stage(stage_id);
        let locations: HashMap<StageId, Vec<MapOutputLocation>> = stage
            .inputs
            .iter()
            .map(|input| (*input, query.map_outputs(*input)))
            .collect();
        let fragment = task_fragment(stage, partition, &locations)?;
        let plan = encode_plan(fragment)?;
        let task = &query.stages[stage_id.0 as usize].tasks[partition];
        let attempt = TaskAttempt {
            query_id: query.id.clone(),
            stage_id,
            partition: partition as u32,
            attempt: task.attempt,
        };
        let launch = CoordinatorMessage {
            message: Some(coordinator_message::Message::LaunchTask(LaunchTask {
                task: Some(TaskId::from_attempt(&attempt)),
                plan,
                settings: query.settings.clone(),
            })),
        };
        self.assignments += 1;
        let executor = self
            .executors
            .get_mut(executor_id)
            .expect("picked from the registry just before");
        if executor.tx.send(Ok(launch)).is_err() {
            // The session is closing; its loss event will follow. Leave the task pending.
            executor.status = ExecutorStatus::Lost;
            return Ok(());
        }
        executor.running.insert(attempt.clone());
        executor.last_assigned = self.assignments;
        let location = MapOutputLocation {
            map_partition: attempt.partition,
            attempt: attempt.attempt,
            executor_id: executor_id.clone(),
            flight_address: executor.info.flight_address(),
            host_key: executor.info.host_key.clone(),
            work_dir: executor.info.work_dir.clone(),
        };
        let query = &mut self.running[qi];
        if query.is_result_stage(stage_id)
            && let Some(tx) = &query.results_tx
        {
            let _ = tx.send(ResultEvent::Launched {
                partition,
                location,
            });
        }
        query.executors_used.insert(executor_id.clone());
        let stage_state = &mut query.stages[stage_id.0 as usize];
        if stage_state.status == Status::Pending {
            stage_state.status = Status::Running;
            stage_state.started_at = Some(SystemTime::now());
        }
        let task = &mut stage_state.tasks[partition];
        task.status = Status::Running;
        task.executor = Some(executor_id.clone());
        task.started_at = Some(SystemTime::now());
        debug!(task = %attempt, %executor_id, "task launched");
        Ok(())
    }
}
