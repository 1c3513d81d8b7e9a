//! The harness of the scheduler's tests: a scheduler of its own, virtual executors whose
//! messages it collects, and reports sent back as their executors would.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_plan::Partitioning;
use datafusion::physical_plan::repartition::RepartitionExec;
use ember_planner::ids::{ExecutorId, QueryId, StageId, TaskAttempt};
use ember_planner::sqlstate::{ErrorKind, SqlState};
use ember_planner::stage::StageGraph;
use ember_protocol::proto::{
    CoordinatorMessage, PartitionStats, TaskId, TaskStatus, TaskSucceeded, coordinator_message,
    task_status,
};
use ember_protocol::task_errors::TaskFailure;
use tokio::sync::mpsc;

use crate::output::ResultEvent;
use crate::scheduler::state::Status;
use crate::scheduler::{Event, ExecutorInfo, Scheduler, SchedulerConfig, Submission};

/// A map stage of `maps` tasks whose rows are hash-shuffled into a result stage of `reduces`
/// tasks.
pub(super) fn two_stage_graph(maps: usize, reduces: usize) -> StageGraph {
    let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
    )
    .expect("a batch");
    let partitions = vec![vec![batch]; maps];
    let scan = MemorySourceConfig::try_new_exec(&partitions, Arc::clone(&schema), None)
        .expect("a memory scan");
    let shuffle = RepartitionExec::try_new(
        scan,
        Partitioning::Hash(vec![col("a", &schema).expect("column a")], reduces),
    )
    .expect("a repartition");
    let graph = StageGraph::try_new(QueryId::random(), Arc::new(shuffle)).expect("stages");
    assert_eq!(graph.stages.len(), 2, "{}", graph.display());
    graph
}

pub(super) const MAP: StageId = StageId(0);
pub(super) const RESULT: StageId = StageId(1);

pub(super) fn config() -> SchedulerConfig {
    SchedulerConfig {
        executor_timeout: Duration::from_secs(60),
        executor_wait: Duration::from_secs(60),
        task_max_attempts: 3,
        history_size: 10,
        speculation: None,
        max_running_queries: 0,
        max_queued_queries: 0,
        result_buffer_bytes: 1 << 20,
        max_executors: 100,
        lost_executor_retention: Duration::from_secs(60),
    }
}

/// One virtual executor: what the scheduler sent it.
pub(super) struct VirtualExecutor {
    pub(super) id: ExecutorId,
    pub(super) session: u64,
    pub(super) rx: mpsc::Receiver<Result<CoordinatorMessage, tonic::Status>>,
}

pub(super) struct SchedulerTest {
    pub(super) scheduler: Scheduler,
    pub(super) executors: HashMap<&'static str, VirtualExecutor>,
    pub(super) results: HashMap<QueryId, mpsc::UnboundedReceiver<ResultEvent>>,
    pub(super) sessions: u64,
}

impl SchedulerTest {
    pub(super) fn new(config: SchedulerConfig) -> Self {
        let (scheduler, _handle) = Scheduler::new(config, Default::default());
        Self {
            scheduler,
            executors: HashMap::new(),
            results: HashMap::new(),
            sessions: 0,
        }
    }

    /// One event through the scheduler, then one scheduling round and the event log (as its
    /// loop does).
    pub(super) fn event(&mut self, event: Event) {
        self.scheduler.handle(event);
        self.scheduler.schedule();
        self.scheduler.record_events();
    }

    /// Registers executor `name` with `slots` slots.
    pub(super) fn executor(&mut self, name: &'static str, slots: usize) {
        self.sessions += 1;
        let (tx, rx) = mpsc::channel(crate::cluster::EXECUTOR_QUEUE);
        let id = ExecutorId(name.to_string());
        let info = ExecutorInfo {
            id: id.clone(),
            host: "127.0.0.1".into(),
            flight_port: 1,
            slots,
            cores: slots,
            memory: 0,
            host_key: name.into(),
            work_dir: std::path::PathBuf::from("/nonexistent"),
            allocation_id: String::new(),
        };
        self.executors.insert(
            name,
            VirtualExecutor {
                id,
                session: self.sessions,
                rx,
            },
        );
        self.event(Event::ExecutorRegistered {
            info,
            session: self.sessions,
            tx,
        });
    }

    pub(super) fn submit(&mut self, graph: StageGraph) -> QueryId {
        let query_id = graph.query_id.clone();
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        self.results.insert(query_id.clone(), results_rx);
        self.event(Event::Submit(Submission {
            query_id: query_id.clone(),
            session_id: "test".into(),
            user: "tester".into(),
            frontend: "embedded".into(),
            sql: "SELECT a FROM t".into(),
            graph,
            settings: HashMap::from([("datafusion.execution.batch_size".into(), "7".into())]),
            adaptive: Default::default(),
            results_tx,
        }));
        query_id
    }

    /// Everything the scheduler sent `name` since the last look.
    pub(super) fn messages(&mut self, name: &str) -> Vec<coordinator_message::Message> {
        let executor = self.executors.get_mut(name).expect("a registered executor");
        let mut messages = vec![];
        while let Ok(message) = executor.rx.try_recv() {
            if let Ok(CoordinatorMessage {
                message: Some(message),
            }) = message
            {
                messages.push(message);
            }
        }
        messages
    }

    /// The attempts launched on `name` since the last look.
    pub(super) fn launched(&mut self, name: &str) -> Vec<TaskAttempt> {
        self.messages(name)
            .into_iter()
            .filter_map(|message| match message {
                coordinator_message::Message::LaunchTask(launch) => {
                    assert!(!launch.plan.is_empty(), "a launch carries its fragment");
                    assert_eq!(
                        launch.settings.get("datafusion.execution.batch_size"),
                        Some(&"7".to_string()),
                        "a launch carries the session's settings"
                    );
                    launch.task.as_ref().and_then(TaskId::to_attempt)
                }
                _ => None,
            })
            .collect()
    }

    pub(super) fn report(
        &mut self,
        name: &str,
        attempt: &TaskAttempt,
        result: task_status::Result,
    ) {
        let executor = &self.executors[name];
        let event = Event::TaskStatus {
            executor_id: executor.id.clone(),
            session: executor.session,
            status: TaskStatus {
                task: Some(TaskId::from_attempt(attempt)),
                elapsed_us: 1_000,
                result: Some(result),
            },
        };
        self.event(event);
    }

    pub(super) fn succeed(&mut self, name: &str, attempt: &TaskAttempt) {
        let succeeded = TaskSucceeded {
            partitions: vec![PartitionStats {
                partition: 0,
                num_rows: 3,
                num_bytes: 24,
            }],
            spilled_bytes: 0,
            operators: vec![],
            peak_memory_bytes: 0,
        };
        self.report(name, attempt, task_status::Result::Succeeded(succeeded));
    }

    pub(super) fn fail(&mut self, name: &str, attempt: &TaskAttempt, failure: TaskFailure) {
        self.report(
            name,
            attempt,
            task_status::Result::Failed(failure.to_proto()),
        );
    }

    pub(super) fn lose(&mut self, name: &str) {
        let executor = &self.executors[name];
        let event = Event::ExecutorLost {
            executor_id: executor.id.clone(),
            session: executor.session,
            reason: "killed by the test".into(),
        };
        self.event(event);
    }

    /// What the query's reader has been told since the last look.
    pub(super) fn result_events(&mut self, query_id: &QueryId) -> Vec<ResultEvent> {
        let rx = self.results.get_mut(query_id).expect("a submitted query");
        let mut events = vec![];
        while let Ok(event) = rx.try_recv() {
            events.push(event);
        }
        events
    }

    pub(super) fn status(&self, query_id: &QueryId) -> Status {
        self.scheduler
            .running
            .iter()
            .chain(self.scheduler.history.iter())
            .find(|q| &q.id == query_id)
            .map(|q| q.status)
            .expect("a known query")
    }

    pub(super) fn task_status(
        &self,
        query_id: &QueryId,
        stage: StageId,
        partition: usize,
    ) -> Status {
        let query = self
            .scheduler
            .running
            .iter()
            .find(|q| &q.id == query_id)
            .expect("a running query");
        query.stages[stage.0 as usize].tasks[partition].status
    }

    /// The executor running `attempt`.
    pub(super) fn runs_on(&self, attempt: &TaskAttempt) -> &'static str {
        self.executors
            .iter()
            .find(|(_, e)| self.scheduler.executors[&e.id].running.contains(attempt))
            .map(|(name, _)| *name)
            .expect("a running attempt")
    }

    pub(super) fn free_slots(&self, name: &str) -> usize {
        self.scheduler.executors[&self.executors[name].id].free_slots()
    }
}

pub(super) fn in_stage(attempts: &[TaskAttempt], stage: StageId) -> Vec<TaskAttempt> {
    attempts
        .iter()
        .filter(|a| a.stage_id == stage)
        .cloned()
        .collect()
}

pub(super) fn execution_error(kind: ErrorKind, sqlstate: SqlState) -> TaskFailure {
    TaskFailure::Execution {
        kind,
        sqlstate,
        message: "it went wrong".into(),
    }
}
