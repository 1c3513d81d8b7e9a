//! Task status reports: fencing stale attempts, committing map outputs, retrying or failing.

use std::time::SystemTime;

use ember_executor::proto::{TaskId, TaskStatus, task_failed, task_status};
use ember_planner::ids::{ExecutorId, TaskAttempt};
use ember_planner::shuffle::MapOutputLocation;
use tracing::{debug, info, warn};

use super::Scheduler;
use super::state::{ResultEvent, Status};
use crate::error::{Error, TaskErrorKind};

impl Scheduler {
    pub(super) fn task_status(&mut self, executor_id: &ExecutorId, status: TaskStatus) {
        let Some(attempt) = status.task.as_ref().and_then(TaskId::to_attempt) else {
            warn!(%executor_id, "task status without a valid task id");
            return;
        };
        if let Some(executor) = self.executors.get_mut(executor_id) {
            executor.running.remove(&attempt);
        }
        let Some(query) = self.running.iter_mut().find(|q| q.id == attempt.query_id) else {
            return; // the query has ended: a late report
        };
        let is_result = query.is_result_stage(attempt.stage_id);
        let Some(task) = query
            .stages
            .get_mut(attempt.stage_id.0 as usize)
            .and_then(|s| s.tasks.get_mut(attempt.partition as usize))
        else {
            warn!(task = %attempt, "status for an unknown task");
            return;
        };
        if task.attempt != attempt.attempt || task.status != Status::Running {
            debug!(task = %attempt, "ignoring a stale attempt");
            return;
        }
        task.elapsed_us = status.elapsed_us;
        task.finished_at = Some(SystemTime::now());
        match status.result {
            Some(task_status::Result::Succeeded(succeeded)) => {
                if let Some(executor) = self.executors.get_mut(executor_id) {
                    executor.tasks_succeeded += 1;
                }
                task.status = Status::Succeeded;
                task.rows = succeeded.partitions.iter().map(|p| p.num_rows).sum();
                task.bytes = succeeded.partitions.iter().map(|p| p.num_bytes).sum();
                let Some(info) = self.executors.get(executor_id).map(|e| &e.info) else {
                    return;
                };
                let location = MapOutputLocation {
                    map_partition: attempt.partition,
                    attempt: attempt.attempt,
                    executor_id: executor_id.clone(),
                    flight_address: info.flight_address(),
                    host_key: info.host_key.clone(),
                    work_dir: info.work_dir.clone(),
                };
                task.output = Some(location);
                self.task_succeeded(&attempt);
            }
            Some(task_status::Result::Failed(failed)) => {
                if let Some(executor) = self.executors.get_mut(executor_id) {
                    executor.tasks_failed += 1;
                }
                let (kind, message) = match failed.reason {
                    Some(task_failed::Reason::FetchFailed(f)) => (
                        TaskErrorKind::ExecutorLost,
                        format!(
                            "fetch of stage {} map {} from executor {} failed: {}",
                            f.stage_id, f.map_partition, f.executor_id, f.message
                        ),
                    ),
                    Some(task_failed::Reason::Execution(e)) => (task_error_kind(e.kind), e.message),
                    Some(task_failed::Reason::Cancelled(_)) => {
                        (TaskErrorKind::Internal, "task was cancelled".to_string())
                    }
                    None => (TaskErrorKind::Internal, "task failed".to_string()),
                };
                task.error = Some(message.clone());
                // Result tasks stream to the client as they run: a retry could repeat rows.
                let retry = !is_result
                    && kind != TaskErrorKind::User
                    && kind != TaskErrorKind::ExecutorLost
                    && task.attempt + 1 < self.config.task_max_attempts;
                if retry {
                    warn!(task = %attempt, %message, "task failed, retrying");
                    task.status = Status::Pending;
                    task.attempt += 1;
                    task.executor = None;
                } else {
                    task.status = Status::Failed;
                    let query_id = attempt.query_id.clone();
                    self.finish_query(&query_id, Err(Error::Task { kind, message }));
                }
            }
            None => warn!(task = %attempt, "task status without a result"),
        }
    }

    fn task_succeeded(&mut self, attempt: &TaskAttempt) {
        let Some(query) = self.running.iter_mut().find(|q| q.id == attempt.query_id) else {
            return;
        };
        let is_result = query.is_result_stage(attempt.stage_id);
        let stage = &mut query.stages[attempt.stage_id.0 as usize];
        if stage.tasks.iter().all(|t| t.status == Status::Succeeded) {
            stage.status = Status::Succeeded;
            stage.finished_at = Some(SystemTime::now());
        }
        if is_result && let Some(tx) = &query.results_tx {
            let _ = tx.send(ResultEvent::Committed {
                partition: attempt.partition as usize,
            });
        }
        if query.stages.iter().all(|s| s.status == Status::Succeeded) {
            query.status = Status::Succeeded;
            query.finished_at = Some(SystemTime::now());
            info!(query_id = %query.id, elapsed_ms = query.submitted_instant.elapsed().as_millis() as u64, "query succeeded");
            // Stays in `running` until the client has fetched the result and releases it.
        }
    }
}

fn task_error_kind(kind: i32) -> TaskErrorKind {
    use ember_executor::proto::ErrorKind;
    match ErrorKind::try_from(kind) {
        Ok(ErrorKind::User) => TaskErrorKind::User,
        Ok(ErrorKind::Resources) => TaskErrorKind::Resources,
        Ok(ErrorKind::Io) => TaskErrorKind::Io,
        _ => TaskErrorKind::Internal,
    }
}
