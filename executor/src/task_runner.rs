//! Runs one task attempt: decode its fragment, execute its partition, report what it wrote.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{UInt32Type, UInt64Type};
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::session_state::SessionState;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::MetricValue;
use datafusion::prelude::SessionConfig;
use ember_planner::codec::decode_plan;
use ember_planner::dynamic_filters::{is_task_local, plan_task_filters};
use ember_planner::ids::{ExecutorId, TaskAttempt};
use ember_planner::memory::PeakMemoryPool;
use ember_planner::paths::AllowedPaths;
use ember_planner::shuffle::{
    DiskBudget, LiveBlocks, PeerWorkDirs, ShuffleCompression, ShuffleEnv, ShuffleFetcher,
};
use futures::TryStreamExt;

use ember_protocol::proto::{
    LaunchTask, MetricKind, OperatorMetric, OperatorMetrics, PartitionStats, TaskId, TaskStatus,
    TaskSucceeded, task_status,
};
use ember_protocol::task_errors::TaskFailure;

/// Everything a task needs from its executor.
#[derive(Debug)]
pub(crate) struct TaskRunner {
    /// Function registry and runtime (memory pool, spill dir) shared by all tasks.
    pub(crate) base: SessionState,
    pub(crate) work_dir: PathBuf,
    pub(crate) host_key: String,
    pub(crate) fetcher: Arc<dyn ShuffleFetcher>,
    pub(crate) live: Arc<LiveBlocks>,
    pub(crate) disk: Arc<DiskBudget>,
    /// How map outputs are compressed.
    pub(crate) compression: ShuffleCompression,
    /// Peers on this machine whose work dirs named them.
    pub(crate) peers: Arc<PeerWorkDirs>,
    /// Memory a sort sets aside for merging its spills, when the query does not say: scaled to
    /// the slot's share of a limited pool (DataFusion's 10 MiB default alone can exceed it).
    pub(crate) sort_spill_reservation: Option<usize>,
    /// The fragment's files are checked against these before anything runs.
    pub(crate) allowed_paths: Arc<AllowedPaths>,
}

impl TaskRunner {
    /// Runs the task to completion and describes the outcome. Never panics on bad input: a
    /// malformed launch becomes a failed status.
    pub(crate) async fn run(&self, launch: LaunchTask, executor_id: ExecutorId) -> TaskStatus {
        let started = Instant::now();
        let task_id = launch.task.clone().unwrap_or_default();
        let result = match task_id.to_attempt() {
            Some(attempt) => self.execute(&attempt, &launch, executor_id).await,
            None => Err(DataFusionError::Internal(format!(
                "malformed task id {task_id:?}"
            ))),
        };
        TaskStatus {
            task: Some(task_id),
            elapsed_us: started.elapsed().as_micros() as u64,
            result: Some(match result {
                Ok(succeeded) => task_status::Result::Succeeded(succeeded),
                // Described where it arose, from its type: kind, SQLSTATE, or a lost map output.
                Err(error) => {
                    task_status::Result::Failed(TaskFailure::from_error(&error).to_proto())
                }
            }),
        }
    }

    async fn execute(
        &self,
        attempt: &TaskAttempt,
        launch: &LaunchTask,
        executor_id: ExecutorId,
    ) -> datafusion::error::Result<TaskSucceeded> {
        let mut config = SessionConfig::new();
        if let Some(bytes) = self.sort_spill_reservation {
            config.options_mut().execution.sort_spill_reservation_bytes = bytes;
        }
        for (key, value) in &launch.settings {
            config.options_mut().set(key, value)?;
        }
        // A task runs one partition of its fragment; with work stealing that partition's scan
        // would also read the files of partitions other tasks run.
        config
            .options_mut()
            .execution
            .enable_file_stream_work_stealing = false;
        let config = config.with_extension(Arc::new(ShuffleEnv {
            work_dir: self.work_dir.clone(),
            executor_id,
            host_key: self.host_key.clone(),
            attempt: attempt.attempt,
            fetcher: Arc::clone(&self.fetcher),
            live: Arc::clone(&self.live),
            disk: Arc::clone(&self.disk),
            peers: Arc::clone(&self.peers),
            compression: self.compression,
        }));
        // The task's reservations pass through its own view of the executor's pool, which
        // counts their peak.
        let base = self.base.runtime_env();
        let memory = Arc::new(PeakMemoryPool::new(Arc::clone(&base.memory_pool)));
        let runtime = RuntimeEnv {
            memory_pool: Arc::clone(&memory) as _,
            ..RuntimeEnv::clone(base)
        };
        let ctx = Arc::new(
            TaskContext::from(&self.base)
                .with_session_config(config)
                .with_runtime(Arc::new(runtime))
                .with_task_id(attempt.to_string()),
        );
        let started = Instant::now();
        let plan = decode_plan(&launch.plan, &ctx)?;
        self.allowed_paths.check_plan(&plan)?;
        let plan = plan_task_filters(
            plan,
            attempt.partition as usize,
            ctx.session_config().options(),
        )?;
        let decoded = started.elapsed();
        let batches: Vec<RecordBatch> = plan
            .execute(attempt.partition as usize, ctx)?
            .try_collect()
            .await?;
        let spilled_bytes = spilled_bytes(plan.as_ref());
        let mut operators = vec![];
        operator_metrics(plan.as_ref(), 0, &mut operators);
        tracing::debug!(
            task = %attempt,
            plan_bytes = launch.plan.len(),
            decode_us = decoded.as_micros() as u64,
            execute_us = (started.elapsed() - decoded).as_micros() as u64,
            "task ran"
        );
        let mut partitions = vec![];
        for batch in batches {
            let ids = batch.column(0).as_primitive::<UInt32Type>();
            let rows = batch.column(1).as_primitive::<UInt64Type>();
            let bytes = batch.column(2).as_primitive::<UInt64Type>();
            for i in 0..batch.num_rows() {
                partitions.push(PartitionStats {
                    partition: ids.value(i),
                    num_rows: rows.value(i),
                    num_bytes: bytes.value(i),
                });
            }
        }
        Ok(TaskSucceeded {
            partitions,
            spilled_bytes,
            operators,
            peak_memory_bytes: memory.peak() as u64,
        })
    }
}

/// The metrics of each operator of a finished plan, in pre-order, summed over its partitions
/// (DataFusion's `MetricsSet::aggregate_by_name`); a pruning metric becomes two counts, what
/// was pruned (its name) and what was not (`<name>_matched`). Timestamps and ratios do not add
/// up over tasks and are left out.
fn operator_metrics(plan: &dyn ExecutionPlan, depth: u32, out: &mut Vec<OperatorMetrics>) {
    // The stage plan the coordinator shows has no task-local operators.
    if is_task_local(plan) {
        for child in plan.children() {
            operator_metrics(child.as_ref(), depth, out);
        }
        return;
    }
    let metrics = plan
        .metrics()
        .map(|m| m.aggregate_by_name())
        .into_iter()
        .flat_map(|set| set.iter().cloned().collect::<Vec<_>>())
        .flat_map(|metric| {
            let value = metric.value();
            let count = |name: String, value: usize| OperatorMetric {
                name,
                value: value as u64,
                kind: MetricKind::Count as i32,
            };
            // What a scan's statistics and dynamic filters skipped (files, row groups, pages,
            // rows) against what it still read.
            if let MetricValue::PruningMetrics {
                name,
                pruning_metrics,
            } = value
            {
                return vec![
                    count(name.to_string(), pruning_metrics.pruned()),
                    count(format!("{name}_matched"), pruning_metrics.matched()),
                ];
            }
            let kind = match value {
                MetricValue::ElapsedCompute(_) | MetricValue::Time { .. } => MetricKind::TimeNanos,
                MetricValue::CurrentMemoryUsage(_)
                | MetricValue::Gauge { .. }
                | MetricValue::PeakMemoryUsage { .. } => MetricKind::Gauge,
                MetricValue::OutputRows(_)
                | MetricValue::SpillCount(_)
                | MetricValue::SpilledBytes(_)
                | MetricValue::OutputBytes(_)
                | MetricValue::OutputBatches(_)
                | MetricValue::SpilledRows(_)
                | MetricValue::Count { .. } => MetricKind::Count,
                _ => return vec![],
            };
            vec![OperatorMetric {
                name: value.name().to_string(),
                value: value.as_usize() as u64,
                kind: kind as i32,
            }]
        })
        .collect();
    out.push(OperatorMetrics {
        operator: plan.name().to_string(),
        metrics,
        depth,
    });
    for child in plan.children() {
        operator_metrics(child.as_ref(), depth + 1, out);
    }
}

/// Bytes the operators of a finished plan spilled to disk.
fn spilled_bytes(plan: &dyn ExecutionPlan) -> u64 {
    let own = plan
        .metrics()
        .and_then(|m| m.spilled_bytes())
        .unwrap_or_default() as u64;
    own + plan
        .children()
        .into_iter()
        .map(|child| spilled_bytes(child.as_ref()))
        .sum::<u64>()
}

impl TaskRunner {
    /// The status of a task whose code panicked.
    pub(crate) fn panicked(task: TaskId, message: &str) -> TaskStatus {
        TaskStatus {
            task: Some(task),
            elapsed_us: 0,
            result: Some(task_status::Result::Failed(
                TaskFailure::panicked(message).to_proto(),
            )),
        }
    }
}

/// The status of a task stopped by a cancel or a release.
pub(crate) fn cancelled(task: TaskId) -> TaskStatus {
    TaskStatus {
        task: Some(task),
        elapsed_us: 0,
        result: Some(task_status::Result::Failed(
            TaskFailure::Cancelled.to_proto(),
        )),
    }
}
