//! Speculative execution of stragglers, as Spark's `spark.speculation`: a task that has run much
//! longer than its finished siblings gets a copy on another executor; the first to finish wins.

use std::time::Duration;

use ember_planner::ids::{ExecutorId, StageId};

use super::Scheduler;
use super::state::{QueryState, Status};

impl Scheduler {
    /// Launches copies of slow tasks while slots are free. Result tasks are not copied: their rows
    /// stream to the client from one attempt.
    pub(super) fn launch_speculative(&mut self) {
        let Some(speculation) = self.config.speculation.clone() else {
            return;
        };
        // Spark's measure of a small stage: no more tasks than one executor has slots.
        let executor_slots = self
            .executors
            .values()
            .map(|e| e.info.slots)
            .max()
            .unwrap_or(0);
        let mut candidates: Vec<(usize, StageId, usize, ExecutorId)> = vec![];
        for (qi, query) in self.running.iter().enumerate() {
            if query.status != Status::Running {
                continue;
            }
            for stage in &query.stages {
                if stage.status != Status::Running || query.is_result_stage(stage.id) {
                    continue;
                }
                let Some(threshold) = threshold(query, stage.id, &speculation, executor_slots)
                else {
                    continue;
                };
                for (partition, task) in stage.tasks.iter().enumerate() {
                    if task.status == Status::Running
                        && task.speculative.is_none()
                        && task
                            .started_instant
                            .is_some_and(|t| t.elapsed() > threshold)
                        && let Some(executor) = &task.executor
                    {
                        candidates.push((qi, stage.id, partition, executor.clone()));
                    }
                }
            }
        }
        for (qi, stage_id, partition, running_on) in candidates {
            if !self.any_free_slot() {
                return;
            }
            let excluded = &self.running[qi].stages[stage_id.0 as usize].tasks[partition].excluded;
            let Some(executor_id) = self.pick_executor(excluded, Some(&running_on)) else {
                continue;
            };
            if let Err(error) = self.launch(qi, stage_id, partition, &executor_id, true) {
                // The copy is an optimisation: the original attempt carries on.
                tracing::warn!(%error, "cannot launch a speculative copy");
            }
        }
    }
}

/// How long a task of `stage` may run before it is copied, once enough of its siblings finished:
/// `multiplier` times their median duration, at least `min_runtime`. A stage of no more tasks
/// than `executor_slots` waits for no siblings when `task_duration` is set.
fn threshold(
    query: &QueryState,
    stage: StageId,
    speculation: &super::Speculation,
    executor_slots: usize,
) -> Option<Duration> {
    let tasks = &query.stages[stage.0 as usize].tasks;
    let mut finished: Vec<u64> = tasks
        .iter()
        .filter(|t| t.status == Status::Succeeded)
        .map(|t| t.elapsed_us)
        .collect();
    if finished.len() == tasks.len() {
        return None;
    }
    let needed = ((speculation.quantile * tasks.len() as f64).floor() as usize).max(1);
    if finished.len() < needed {
        return speculation
            .task_duration
            .filter(|_| tasks.len() <= executor_slots)
            .map(|d| d.max(speculation.min_runtime));
    }
    finished.sort_unstable();
    let median = Duration::from_micros(finished[finished.len() / 2]);
    Some(
        median
            .mul_f64(speculation.multiplier)
            .max(speculation.min_runtime),
    )
}
