//! Recovery from lost executors: their running attempts start again elsewhere, and map outputs
//! they held are recomputed where a stage still has to read them.

use std::collections::HashMap;

use ember_planner::ids::{ExecutorId, QueryId, StageId};
use ember_planner::sqlstate::SqlState;
use tracing::{info, warn};

use super::state::{ExecutorState, ExecutorStatus, QueryState, Status};
use super::{MAX_LOSSES_PER_TASK, Scheduler};
use crate::error::{Error, TaskErrorKind};

impl Scheduler {
    /// An executor died or went silent: its running attempts are started again elsewhere and the
    /// map outputs it held are recomputed where they are still needed.
    pub(super) fn executor_lost(&mut self, executor_id: &ExecutorId, reason: &str) {
        let Some(executor) = self.executors.get_mut(executor_id) else {
            return;
        };
        if !executor.status.is_live() {
            return;
        }
        warn!(%executor_id, reason, "executor lost");
        executor.status = ExecutorStatus::Lost;
        executor.running.clear();
        executor.lost_at = Some(std::time::Instant::now());
        // Ends the session: an executor that is merely slow (stopped, partitioned) notices,
        // drops its tasks and registers again as a new incarnation. The sender is the session's
        // last: replacing it closes the stream once the error is read.
        let _ = executor.tx.try_send(Err(tonic::Status::unavailable(format!(
            "the coordinator declared this executor lost: {reason}"
        ))));
        executor.tx = tokio::sync::mpsc::channel(1).0;
        let cap = self.config.task_max_attempts + MAX_LOSSES_PER_TASK;
        let mut exhausted = vec![];
        for query in &mut self.running {
            if !matches!(query.status, Status::Running | Status::Succeeded) {
                continue;
            }
            for stage in &mut query.stages {
                for task in &mut stage.tasks {
                    if task
                        .speculative
                        .as_ref()
                        .is_some_and(|s| &s.executor == executor_id)
                    {
                        task.speculative = None;
                    }
                    if task.status == Status::Running && task.executor.as_ref() == Some(executor_id)
                    {
                        task.excluded.insert(executor_id.clone());
                        if let Some(copy) = task.speculative.take() {
                            // Its speculative copy carries on alone.
                            task.attempt = copy.attempt;
                            task.executor = Some(copy.executor);
                            continue;
                        }
                        if task.launches >= cap {
                            exhausted.push(query.id.clone());
                        }
                        task.reset();
                    }
                }
            }
            recompute_lost_outputs(query, &self.executors);
        }
        for query_id in exhausted {
            self.finish_query(
                &query_id,
                Err(Error::Task {
                    kind: TaskErrorKind::ExecutorLost,
                    sqlstate: SqlState::SYSTEM_ERROR,
                    message: format!(
                        "a task of this query was lost with its executor too often; \
                         last executor lost: {executor_id} ({reason})"
                    ),
                }),
            );
        }
    }

    /// The relay lost the stream of a result partition's attempt.
    pub(super) fn retry_result(&mut self, query_id: &QueryId, partition: usize, attempt: u32) {
        let Some(query) = self.running.iter_mut().find(|q| &q.id == query_id) else {
            return;
        };
        if !matches!(query.status, Status::Running | Status::Succeeded) {
            return;
        }
        let result_stage = query.graph.result_stage().id;
        let Some(task) = query.stages[result_stage.0 as usize]
            .tasks
            .get_mut(partition)
        else {
            return;
        };
        if task.attempt != attempt {
            return; // already replaced
        }
        let executor_alive = task
            .executor
            .as_ref()
            .and_then(|e| self.executors.get(e))
            .is_some_and(|e| e.status.is_live());
        // A running attempt on a live executor will report how it ended; act on that report.
        if task.status == Status::Succeeded || (task.status == Status::Running && !executor_alive) {
            info!(%query_id, partition, attempt, "re-running a result partition whose stream was lost");
            if let Some(executor) = &task.executor {
                task.excluded.insert(executor.clone());
            }
            task.reset();
            recompute_lost_outputs(query, &self.executors);
        }
    }
}

/// Map outputs that lived on executors no longer alive are recomputed where a stage still has to
/// read them. Consumers are looked at first (stage ids are topological), so a reset consumer makes
/// its inputs needed again.
pub(super) fn recompute_lost_outputs(
    query: &mut QueryState,
    executors: &HashMap<ExecutorId, ExecutorState>,
) {
    // A decommissioning executor still serves its outputs.
    let alive = |id: &ExecutorId| executors.get(id).is_some_and(|e| e.status.is_live());
    let result_stage = query.graph.result_stage().id;
    for si in (0..query.stages.len()).rev() {
        let stage_id = StageId(si as u32);
        if stage_id == result_stage || !query.outputs_needed(stage_id) {
            continue;
        }
        let stage = &mut query.stages[si];
        let mut reset = 0;
        for task in &mut stage.tasks {
            let lost = task.output.as_ref().is_some_and(|o| !alive(&o.executor_id));
            if task.status == Status::Succeeded && lost {
                task.reset();
                reset += 1;
            }
        }
        if reset > 0 {
            info!(query_id = %query.id, stage = %stage_id, tasks = reset, "recomputing map outputs of a lost executor");
        }
    }
    // Stages (and the query) with a task to run again are running again.
    let mut any_unfinished = false;
    for stage in &mut query.stages {
        let unfinished = stage.tasks.iter().any(|t| t.status != Status::Succeeded);
        any_unfinished |= unfinished;
        if unfinished && stage.status == Status::Succeeded {
            stage.status = Status::Running;
            stage.finished_at = None;
        }
    }
    if any_unfinished && query.status == Status::Succeeded {
        query.status = Status::Running;
        query.finished_at = None;
    }
}
