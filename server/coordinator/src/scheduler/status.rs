//! Task status reports: fencing stale attempts, committing map outputs, retrying or failing.

use std::time::SystemTime;

use ember_planner::ids::{ExecutorId, StageId, TaskAttempt};
use ember_planner::shuffle::{MapOutputLocation, SHUFFLE_READ_BYTES};
use ember_planner::sqlstate::SqlState;
use ember_protocol::proto::{TaskId, TaskStatus, TaskSucceeded, task_status};
use ember_protocol::task_errors::TaskFailure;
use tracing::{debug, info, warn};

use super::Scheduler;
use super::state::{FailedAttempt, QueryState, Status};
use crate::error::{Error, TaskErrorKind};
use crate::output::ResultEvent;

/// Which live attempt of a task a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Primary,
    Speculative,
}

impl Scheduler {
    pub(super) fn task_status(&mut self, executor_id: &ExecutorId, status: TaskStatus) {
        let Some(attempt) = status.task.as_ref().and_then(TaskId::to_attempt) else {
            warn!(%executor_id, "task status without a valid task id");
            return;
        };
        if let Some(executor) = self.executors.get_mut(executor_id) {
            executor.running.remove(&attempt);
        }
        let Some(qi) = self.running.iter().position(|q| q.id == attempt.query_id) else {
            return; // the query has ended: a late report
        };
        let query = &mut self.running[qi];
        if !matches!(query.status, Status::Running | Status::Succeeded) {
            return;
        }
        let Some(task) = query
            .stages
            .get_mut(attempt.stage_id.0 as usize)
            .and_then(|s| s.tasks.get_mut(attempt.partition as usize))
        else {
            warn!(task = %attempt, "status for an unknown task");
            return;
        };
        let which = if task.status == Status::Running
            && task.attempt == attempt.attempt
            && task.executor.as_ref() == Some(executor_id)
        {
            Which::Primary
        } else if task
            .speculative
            .as_ref()
            .is_some_and(|s| s.attempt == attempt.attempt && &s.executor == executor_id)
        {
            Which::Speculative
        } else {
            debug!(task = %attempt, "ignoring a stale attempt");
            return;
        };
        match status.result {
            Some(task_status::Result::Succeeded(succeeded)) => {
                if let Some(executor) = self.executors.get_mut(executor_id) {
                    executor.tasks_succeeded += 1;
                }
                self.attempt_succeeded(
                    qi,
                    &attempt,
                    executor_id,
                    which,
                    status.elapsed_us,
                    &succeeded,
                );
            }
            Some(task_status::Result::Failed(failed)) => {
                if let Some(executor) = self.executors.get_mut(executor_id) {
                    executor.tasks_failed += 1;
                }
                self.metrics.task_failed();
                let failure = TaskFailure::from_proto(failed);
                self.attempt_failed(qi, &attempt, executor_id, which, failure);
            }
            None => warn!(task = %attempt, "task status without a result"),
        }
    }

    fn attempt_succeeded(
        &mut self,
        qi: usize,
        attempt: &TaskAttempt,
        executor_id: &ExecutorId,
        which: Which,
        elapsed_us: u64,
        succeeded: &TaskSucceeded,
    ) {
        let Some(info) = self.executors.get(executor_id).map(|e| e.info.clone()) else {
            return;
        };
        // Sized by the plan, not by the report.
        let outputs = self.running[qi]
            .graph
            .stage(attempt.stage_id)
            .num_output_partitions();
        let mut partition_bytes = vec![0u64; outputs];
        for p in &succeeded.partitions {
            if let Some(bytes) = partition_bytes.get_mut(p.partition as usize) {
                *bytes = bytes.saturating_add(p.num_bytes);
            }
        }
        let task = &mut self.running[qi].stages[attempt.stage_id.0 as usize].tasks
            [attempt.partition as usize];
        task.partition_bytes = partition_bytes;
        // The other attempt of a speculated task lost the race.
        let loser = match which {
            Which::Primary => task.speculative.take().map(|s| (s.attempt, s.executor)),
            Which::Speculative => {
                task.speculative = None;
                let loser = task.executor.clone().map(|e| (task.attempt, e));
                info!(task = %attempt, "speculative copy finished first");
                task.attempt = attempt.attempt;
                task.executor = Some(executor_id.clone());
                loser
            }
        };
        task.status = Status::Succeeded;
        task.elapsed_us = elapsed_us;
        task.finished_at = Some(SystemTime::now());
        task.error = None;
        task.sqlstate = None;
        task.rows = succeeded.partitions.iter().map(|p| p.num_rows).sum();
        task.bytes = succeeded.partitions.iter().map(|p| p.num_bytes).sum();
        task.spilled_bytes = succeeded.spilled_bytes;
        task.peak_memory_bytes = succeeded.peak_memory_bytes;
        task.shuffle_read_bytes = succeeded
            .operators
            .iter()
            .flat_map(|o| &o.metrics)
            .filter(|m| m.name == SHUFFLE_READ_BYTES)
            .fold(0u64, |sum, m| sum.saturating_add(m.value));
        task.speculation_won = which == Which::Speculative;
        let (written, read, spilled) = (task.bytes, task.shuffle_read_bytes, task.spilled_bytes);
        self.metrics.task_succeeded(written, read, spilled);
        if let Some(executor) = self.executors.get_mut(executor_id) {
            executor.bytes_written = executor.bytes_written.saturating_add(written);
        }
        let task = &mut self.running[qi].stages[attempt.stage_id.0 as usize].tasks
            [attempt.partition as usize];
        task.output = Some(MapOutputLocation {
            map_partition: attempt.partition,
            attempt: attempt.attempt,
            executor_id: executor_id.clone(),
            flight_address: info.flight_address(),
            host_key: info.host_key.clone(),
            work_dir: info.work_dir.clone(),
        });
        if let Some((loser_attempt, loser_executor)) = loser {
            let loser = TaskAttempt {
                attempt: loser_attempt,
                ..attempt.clone()
            };
            self.cancel_attempt(&loser, &loser_executor);
        }
        let query = &mut self.running[qi];
        let is_result = query.is_result_stage(attempt.stage_id);
        let stage = &mut query.stages[attempt.stage_id.0 as usize];
        stage.add_operator_metrics(&succeeded.operators);
        if stage.tasks.iter().all(|t| t.status == Status::Succeeded) {
            stage.status = Status::Succeeded;
            stage.finished_at = Some(SystemTime::now());
        }
        if is_result && let Some(tx) = &query.results_tx {
            let _ = tx.send(ResultEvent::Committed {
                partition: attempt.partition as usize,
                attempt: attempt.attempt,
            });
        }
        if query.status == Status::Running
            && query.stages.iter().all(|s| s.status == Status::Succeeded)
        {
            query.status = Status::Succeeded;
            query.finished_at = Some(SystemTime::now());
            let elapsed = query.submitted_instant.elapsed();
            self.metrics
                .query_ended(Status::Succeeded, &query.frontend, elapsed.as_secs_f64());
            info!(query_id = %query.id, elapsed_ms = query.submitted_instant.elapsed().as_millis() as u64, "query succeeded");
            // Stays in `running` until the client has fetched the result and releases it.
        }
    }

    fn attempt_failed(
        &mut self,
        qi: usize,
        attempt: &TaskAttempt,
        executor_id: &ExecutorId,
        which: Which,
        failure: TaskFailure,
    ) {
        let max_attempts = self.config.task_max_attempts;
        let query = &mut self.running[qi];
        let query_id = query.id.clone();
        let (kind, sqlstate, message, lost_output) = describe(failure);
        let task = &mut query.stages[attempt.stage_id.0 as usize].tasks[attempt.partition as usize];
        task.error = Some(message.clone());
        task.sqlstate = Some(sqlstate.to_string());
        task.attempt_failures += 1;
        task.last_failure = Some(FailedAttempt {
            attempt: attempt.attempt,
            executor: executor_id.clone(),
            started_at: match which {
                Which::Primary => task.started_at,
                Which::Speculative => None,
            },
            failed_at: SystemTime::now(),
        });
        if kind == TaskErrorKind::User {
            // Deterministic: every attempt would fail the same way.
            task.status = Status::Failed;
            task.finished_at = Some(SystemTime::now());
            self.finish_query(
                &query_id,
                Err(Error::Task {
                    kind,
                    sqlstate,
                    message,
                }),
            );
            return;
        }
        // With two attempts racing, the survivor carries on.
        match which {
            Which::Speculative => {
                task.speculative = None;
                return;
            }
            Which::Primary => {
                if let Some(copy) = task.speculative.take() {
                    task.attempt = copy.attempt;
                    task.executor = Some(copy.executor);
                    return;
                }
            }
        }
        task.finished_at = Some(SystemTime::now());
        let counted = lost_output.is_none() && kind != TaskErrorKind::ExecutorLost;
        if counted {
            task.failures += 1;
            task.excluded.insert(executor_id.clone());
        }
        let exhausted = task.failures >= max_attempts
            || task.launches >= max_attempts + super::MAX_LOSSES_PER_TASK;
        if exhausted {
            task.status = Status::Failed;
            let message = if counted {
                message
            } else {
                format!("{message} (the task was re-run {} times)", task.launches)
            };
            self.finish_query(
                &query_id,
                Err(Error::Task {
                    kind,
                    sqlstate,
                    message,
                }),
            );
            return;
        }
        warn!(task = %attempt, %message, "task failed, running it again");
        task.reset();
        if let Some(lost) = lost_output {
            lose_map_output(query, &lost);
            // Other outputs of executors that are gone (decommissioned, say) that this task
            // reads are recomputed now, not discovered one failed fetch at a time.
            super::recovery::recompute_lost_outputs(query, &self.executors);
        }
    }
}

/// What an executor said of a failed task, typed: a lost map output, or an error with its kind
/// and code.
fn describe(failure: TaskFailure) -> (TaskErrorKind, SqlState, String, Option<LostOutput>) {
    match failure {
        TaskFailure::FetchFailed {
            executor_id,
            stage_id,
            map_partition,
            map_attempt,
            message,
        } => (
            TaskErrorKind::ExecutorLost,
            SqlState::SYSTEM_ERROR,
            format!(
                "fetch of stage {stage_id} map {map_partition} from executor {executor_id} failed: {message}"
            ),
            Some(LostOutput {
                executor_id,
                stage_id,
                map_partition,
                map_attempt,
            }),
        ),
        TaskFailure::Execution {
            kind,
            sqlstate,
            message,
        } => (kind.into(), sqlstate, message, None),
        // Cancelled without being asked (its executor's session ended, say): not its fault.
        TaskFailure::Cancelled => (
            TaskErrorKind::ExecutorLost,
            SqlState::SYSTEM_ERROR,
            "task was cancelled by its executor".to_string(),
            None,
        ),
    }
}

/// A map output a reader could not fetch.
struct LostOutput {
    executor_id: ExecutorId,
    stage_id: StageId,
    map_partition: u32,
    map_attempt: u32,
}

/// A reader could not fetch a map output: unless that output was already replaced, its map task
/// runs again (and the reader waits for it).
fn lose_map_output(query: &mut QueryState, lost: &LostOutput) {
    let Some(stage) = query.stages.get_mut(lost.stage_id.0 as usize) else {
        return;
    };
    let Some(task) = stage.tasks.get_mut(lost.map_partition as usize) else {
        return;
    };
    let is_that_output = task
        .output
        .as_ref()
        .is_some_and(|o| o.attempt == lost.map_attempt && o.executor_id == lost.executor_id);
    if task.status == Status::Succeeded && is_that_output {
        info!(
            query_id = %query.id,
            stage = %lost.stage_id,
            map = lost.map_partition,
            executor = %lost.executor_id,
            "map output lost, recomputing it"
        );
        task.excluded.insert(lost.executor_id.clone());
        task.reset();
        stage.status = Status::Running;
        stage.finished_at = None;
    }
}
