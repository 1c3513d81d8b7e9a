//! What the scheduler writes to the event log: after each round of events, the queries that
//! may have changed are compared with what was last logged of them, and each task, stage or
//! query that moved is logged as it now is. Comparing, rather than logging at each place that
//! changes a state, keeps the log complete as the scheduler grows.

use std::collections::HashMap;
use std::time::SystemTime;

use chrono::Utc;
use ember_planner::ids::{ExecutorId, QueryId};

use super::snapshot::{stage_plan, stage_progress, summary, task, time as time_of};
use super::state::{QueryState, Status, TaskState};
use crate::history::{EventLog, QueryEvent};
use crate::status::model::millis_between;

/// What was last logged of a task: a change to any of it is a transition.
#[derive(Debug, Clone, PartialEq)]
struct TaskKey {
    status: Status,
    attempt: u32,
    executor: Option<ExecutorId>,
    finished_at: Option<SystemTime>,
    attempt_failures: u32,
}

impl TaskKey {
    fn of(t: &TaskState) -> Self {
        Self {
            status: t.status,
            attempt: t.attempt,
            executor: t.executor.clone(),
            finished_at: t.finished_at,
            attempt_failures: t.attempt_failures,
        }
    }
}

/// Tasks as planned: none launched.
fn pending(tasks: usize) -> Vec<TaskKey> {
    (0..tasks)
        .map(|_| TaskKey {
            status: Status::Pending,
            attempt: 0,
            executor: None,
            finished_at: None,
            attempt_failures: 0,
        })
        .collect()
}

/// What was last logged of a stage.
type StageKey = (Status, Option<SystemTime>, Option<SystemTime>);

/// What was last logged of one query.
#[derive(Debug)]
struct Logged {
    status: Status,
    stages: Vec<StageKey>,
    /// The version of each stage's plan last logged (adaptive execution changes plans).
    plan_versions: Vec<u32>,
    tasks: Vec<Vec<TaskKey>>,
}

/// Sends the scheduler's transitions to the event log.
#[derive(Debug)]
pub(crate) struct EventRecorder {
    log: EventLog,
    logged: HashMap<QueryId, Logged>,
}

impl EventRecorder {
    pub(crate) fn new(log: EventLog) -> Self {
        Self {
            log,
            logged: HashMap::new(),
        }
    }

    /// Whether `q` may have moved since it was last logged: it is queued or running, or its state
    /// changed. An ended query's tasks and stages change only with its state (a lost output
    /// makes it run again) or when it is released.
    pub(super) fn may_have_moved(&self, q: &QueryState) -> bool {
        !q.status.is_final() || self.logged.get(&q.id).is_none_or(|l| l.status != q.status)
    }

    /// Logs what moved in `q` since it was last logged: tasks, then stages, then the query.
    pub(super) fn record(&mut self, q: &QueryState) {
        let time = Utc::now();
        let log = &self.log;
        let logged = self.logged.entry(q.id.clone()).or_insert_with(|| {
            log.append(
                &q.id,
                &QueryEvent::QuerySubmitted {
                    time,
                    query: summary(q),
                    stages: q.stages.iter().map(|s| stage_plan(q, s)).collect(),
                },
            );
            Logged {
                // As submitted: whatever it is now is logged below.
                status: Status::Queued,
                stages: q
                    .stages
                    .iter()
                    .map(|s| {
                        let planned = if s.tasks.is_empty() {
                            Status::Succeeded
                        } else {
                            Status::Pending
                        };
                        (planned, None, None)
                    })
                    .collect(),
                plan_versions: q.stages.iter().map(|s| s.plan_version).collect(),
                tasks: q.stages.iter().map(|s| pending(s.tasks.len())).collect(),
            }
        });
        for (si, stage) in q.stages.iter().enumerate() {
            // Re-planned before any of its tasks ran: its new plan, tasks and notes.
            if logged.plan_versions[si] != stage.plan_version {
                log.append(
                    &q.id,
                    &QueryEvent::StageAdapted {
                        time,
                        stage: stage_plan(q, stage),
                    },
                );
                logged.plan_versions[si] = stage.plan_version;
                logged.tasks[si] = pending(stage.tasks.len());
            }
            for (ti, t) in stage.tasks.iter().enumerate() {
                let key = TaskKey::of(t);
                let before = &logged.tasks[si][ti];
                if *before == key {
                    continue;
                }
                let stage_id = si as u32;
                // An attempt that failed and runs again (or whose speculative copy carries on)
                // moved on in one step: its failure is logged first, as the attempt it was.
                if t.attempt_failures > before.attempt_failures
                    && t.status != Status::Failed
                    && let Some(failure) = &t.last_failure
                {
                    let mut failed = task(t);
                    failed.state = Status::Failed;
                    failed.attempt = failure.attempt;
                    failed.executor_id = Some(failure.executor.to_string());
                    failed.started_at = failure.started_at.map(time_of);
                    failed.finished_at = Some(time_of(failure.failed_at));
                    failed.duration_ms =
                        millis_between(failure.started_at, Some(failure.failed_at));
                    log.append(
                        &q.id,
                        &QueryEvent::TaskEnded {
                            time,
                            stage_id,
                            task: failed,
                        },
                    );
                }
                let task = task(t);
                log.append(
                    &q.id,
                    &match t.status {
                        Status::Running => QueryEvent::TaskStarted {
                            time,
                            stage_id,
                            task,
                        },
                        Status::Pending | Status::Queued => QueryEvent::TaskReset {
                            time,
                            stage_id,
                            task,
                        },
                        _ => QueryEvent::TaskEnded {
                            time,
                            stage_id,
                            task,
                        },
                    },
                );
                logged.tasks[si][ti] = key;
            }
            let key = (stage.status, stage.started_at, stage.finished_at);
            if logged.stages[si] != key {
                let stage = stage_progress(q, stage);
                log.append(
                    &q.id,
                    &if stage.state.is_final() {
                        QueryEvent::StageEnded { time, stage }
                    } else {
                        QueryEvent::StageStarted { time, stage }
                    },
                );
                logged.stages[si] = key;
            }
        }
        if logged.status != q.status {
            let query = summary(q);
            log.append(
                &q.id,
                &if q.status.is_final() {
                    QueryEvent::QueryEnded { time, query }
                } else {
                    QueryEvent::QueryStarted { time, query }
                },
            );
            logged.status = q.status;
        }
    }

    /// The query leaves the scheduler: what moved last is logged, and it is forgotten here.
    pub(super) fn released(&mut self, q: &QueryState) {
        self.record(q);
        self.logged.remove(&q.id);
    }
}
