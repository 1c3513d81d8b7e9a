//! Placing tasks: which runnable tasks start, on which executor, as which attempt.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use datafusion::physical_plan::ExecutionPlanProperties;
use ember_planner::adaptive::adapt_stage;
use ember_planner::codec::encode_plan;
use ember_planner::ids::{ExecutorId, StageId, TaskAttempt};
use ember_planner::shuffle::MapOutputLocation;
use ember_planner::task::task_fragment;
use ember_protocol::proto::{
    CancelTask, CoordinatorMessage, LaunchTask, TaskId, coordinator_message,
};
use tracing::{debug, info, warn};

use super::Scheduler;
use super::state::{ExecutorStatus, SpeculativeAttempt, Status, TaskState};
use crate::error::Error;
use crate::output::ResultEvent;

impl Scheduler {
    /// Launches runnable tasks on free slots, oldest query first, then speculative copies.
    pub(super) fn schedule(&mut self) {
        self.admit();
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
                let elapsed = query.submitted_instant.elapsed().as_secs_f64();
                self.metrics
                    .query_ended(Status::Succeeded, &query.frontend, elapsed);
                continue;
            }
            for si in 0..self.running[qi].stages.len() {
                let stage_id = StageId(si as u32);
                let query = &self.running[qi];
                if query.stages[si].status.is_final() || !query.is_runnable(stage_id) {
                    continue;
                }
                if !query.stages[si].adapted {
                    self.adapt(qi, stage_id);
                }
                let query = &self.running[qi];
                let pending: Vec<usize> = query.stages[si]
                    .tasks
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.status == Status::Pending)
                    .map(|(i, _)| i)
                    .collect();
                for partition in pending {
                    if !self.any_free_slot() {
                        return;
                    }
                    let task = &self.running[qi].stages[si].tasks[partition];
                    let Some(executor_id) = self.pick_executor(&task.excluded, None) else {
                        continue;
                    };
                    if let Err(error) = self.launch(qi, stage_id, partition, &executor_id, false) {
                        let query_id = self.running[qi].id.clone();
                        self.finish_query(&query_id, Err(error));
                        break;
                    }
                }
            }
        }
        self.launch_speculative();
    }

    /// Adaptive execution: re-plans a stage from the exact sizes of the map outputs it reads,
    /// once, before its first task. A stage it cannot improve runs as planned.
    fn adapt(&mut self, qi: usize, stage_id: StageId) {
        let parallelism = self
            .executors
            .values()
            .filter(|e| e.status == ExecutorStatus::Alive)
            .map(|e| e.info.slots)
            .sum::<usize>();
        let query = &mut self.running[qi];
        let si = stage_id.0 as usize;
        query.stages[si].adapted = true;
        if query.stages[si].tasks.iter().any(|t| t.launches > 0) {
            return;
        }
        let stage = query.graph.stage(stage_id);
        let sizes = stage
            .inputs
            .iter()
            .map(|input| (*input, query.map_output_sizes(*input)))
            .collect();
        let options = query.adaptive.adaptive_options(parallelism);
        let adapted = match adapt_stage(stage, &sizes, &options) {
            Ok(Some(adapted)) => adapted,
            Ok(None) => return,
            Err(error) => {
                warn!(query_id = %query.id, stage = %stage_id, %error, "stage runs as planned: adaptive execution failed");
                return;
            }
        };
        let planned = stage.num_tasks();
        let num_tasks = adapted.plan.output_partitioning().partition_count();
        let replanned = !Arc::ptr_eq(&adapted.plan, &stage.plan);
        if replanned && let Err(error) = query.graph.replace_plan(stage_id, adapted.plan) {
            warn!(query_id = %query.id, stage = %stage_id, %error, "stage runs as planned: adaptive execution failed");
            return;
        }
        info!(
            query_id = %query.id,
            stage = %stage_id,
            planned,
            num_tasks,
            changes = %adapted.notes.join("; "),
            "stage re-planned"
        );
        if replanned {
            // The stages reading it now read another number of map outputs.
            let consumers: Vec<usize> = query
                .graph
                .consumers(stage_id)
                .map(|c| c.id.0 as usize)
                .collect();
            for consumer in consumers {
                query.stages[consumer].plan_version += 1;
            }
            query.stages[si].tasks = (0..num_tasks as u32).map(TaskState::new).collect();
        }
        let stage_state = &mut query.stages[si];
        stage_state.adaptive = adapted.notes;
        stage_state.plan_version += 1;
    }

    pub(super) fn any_free_slot(&self) -> bool {
        self.executors
            .values()
            .any(|e| e.status == ExecutorStatus::Alive && e.free_slots() > 0)
    }

    /// The live executor with the most free slots (ties: the one used least recently), avoiding
    /// `excluded` unless every live executor is excluded, and never `not`.
    pub(super) fn pick_executor(
        &self,
        excluded: &BTreeSet<ExecutorId>,
        not: Option<&ExecutorId>,
    ) -> Option<ExecutorId> {
        let alive = || {
            self.executors
                .values()
                .filter(|e| e.status == ExecutorStatus::Alive && Some(&e.info.id) != not)
        };
        let all_excluded = alive().all(|e| excluded.contains(&e.info.id));
        alive()
            .filter(|e| e.free_slots() > 0 && (all_excluded || !excluded.contains(&e.info.id)))
            .max_by(|a, b| {
                a.free_slots()
                    .cmp(&b.free_slots())
                    .then(b.last_assigned.cmp(&a.last_assigned))
            })
            .map(|e| e.info.id.clone())
    }

    pub(super) fn launch(
        &mut self,
        qi: usize,
        stage_id: StageId,
        partition: usize,
        executor_id: &ExecutorId,
        speculative: bool,
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
            attempt: task.launches,
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
        if let Err(error) = executor.tx.try_send(Ok(launch)) {
            // The session is gone, or not read: the task stays pending, and whatever ran there
            // is re-run.
            let reason = match error {
                tokio::sync::mpsc::error::TrySendError::Full(_) => "it stopped reading its session",
                tokio::sync::mpsc::error::TrySendError::Closed(_) => "its session has closed",
            };
            let executor_id = executor_id.clone();
            self.executor_lost(&executor_id, reason);
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
        if !matches!(stage_state.status, Status::Running) {
            stage_state.status = Status::Running;
            stage_state.started_at.get_or_insert_with(SystemTime::now);
            stage_state.finished_at = None;
        }
        let task = &mut stage_state.tasks[partition];
        self.metrics
            .task_started(task.launches > 0 && !speculative, speculative);
        task.launches += 1;
        if speculative {
            task.speculative = Some(SpeculativeAttempt {
                attempt: attempt.attempt,
                executor: executor_id.clone(),
            });
            info!(task = %attempt, %executor_id, "speculative copy launched");
        } else {
            task.attempt = attempt.attempt;
            task.status = Status::Running;
            task.executor = Some(executor_id.clone());
            task.started_at = Some(SystemTime::now());
            task.finished_at = None;
            task.started_instant = Some(Instant::now());
            debug!(task = %attempt, %executor_id, "task launched");
        }
        Ok(())
    }

    /// Tells an executor to stop one attempt (the loser of a speculative race).
    pub(super) fn cancel_attempt(&mut self, attempt: &TaskAttempt, executor_id: &ExecutorId) {
        self.notify(
            executor_id,
            CoordinatorMessage {
                message: Some(coordinator_message::Message::CancelTask(CancelTask {
                    task: Some(TaskId::from_attempt(attempt)),
                })),
            },
        );
    }
}
