//! The events of a query's life as the event log writes them, one JSON object per line, and
//! their replay into the monitoring model.
//!
//! Each event carries the state of what changed as it is after the change (the whole task, the
//! stage's state, times and operator metrics, the query's summary), so a replay only keeps the
//! last word on each and cannot drift from the scheduler's own bookkeeping.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::status::model::{
    Operator, QueryDetail, QuerySummary, Stage, State, Task, critical_path, millis_between,
};

/// One line of a query's event log. The `event` field names the kind; the names and fields are
/// stable, for tools that read the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum QueryEvent {
    /// The query was planned and handed to the scheduler: who ran it, and its stages' plans.
    QuerySubmitted {
        time: DateTime<Utc>,
        query: QuerySummary,
        stages: Vec<StagePlan>,
    },
    /// It was admitted and runs (or runs again, to recompute an output that was lost).
    QueryStarted {
        time: DateTime<Utc>,
        query: QuerySummary,
    },
    /// It succeeded, failed or was cancelled.
    QueryEnded {
        time: DateTime<Utc>,
        query: QuerySummary,
    },
    /// A stage launched its first task (or runs again, to recompute a lost output).
    StageStarted {
        time: DateTime<Utc>,
        stage: StageProgress,
    },
    /// A stage committed all of its outputs, or its query ended before it did.
    StageEnded {
        time: DateTime<Utc>,
        stage: StageProgress,
    },
    /// A task's attempt was launched.
    TaskStarted {
        time: DateTime<Utc>,
        stage_id: u32,
        task: Task,
    },
    /// A task committed its output, failed, or was cancelled with its query.
    TaskEnded {
        time: DateTime<Utc>,
        stage_id: u32,
        task: Task,
    },
    /// A task is to run again: its attempt failed and is retried, or its output was lost.
    TaskReset {
        time: DateTime<Utc>,
        stage_id: u32,
        task: Task,
    },
    /// Adaptive execution re-planned a stage (or a stage it reads) before its first task: its
    /// plan and tasks as they now are, and what changed.
    StageAdapted {
        time: DateTime<Utc>,
        stage: StagePlan,
    },
}

impl QueryEvent {
    /// The query's summary, for the events that carry one.
    pub(crate) fn summary(&self) -> Option<&QuerySummary> {
        match self {
            QueryEvent::QuerySubmitted { query, .. }
            | QueryEvent::QueryStarted { query, .. }
            | QueryEvent::QueryEnded { query, .. } => Some(query),
            _ => None,
        }
    }
}

/// A stage as planned: what it is, apart from how far it got.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StagePlan {
    pub(crate) stage_id: u32,
    pub(crate) kind: String,
    pub(crate) input_stages: Vec<u32>,
    pub(crate) output_partitioning: String,
    pub(crate) num_tasks: u32,
    /// What adaptive execution changed (empty in logs written before it existed).
    #[serde(default)]
    pub(crate) adaptive: Vec<String>,
    pub(crate) plan: String,
    /// Its operators in pre-order, without metrics.
    pub(crate) operators: Vec<Operator>,
}

/// How far a stage got: its state, times and operator metrics over its succeeded tasks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StageProgress {
    pub(crate) stage_id: u32,
    pub(crate) state: State,
    pub(crate) started_at: Option<DateTime<Utc>>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) operators: Vec<Operator>,
}

/// Most tasks one stage of a replayed log may have: a log is trusted no more than a client.
const MAX_TASKS: u32 = 1_000_000;

/// Folds a query's events, in order, into what the monitoring API shows of it.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    detail: Option<QueryDetail>,
    /// Lines that were not events of this log (a torn last line, say).
    pub(crate) skipped: usize,
}

impl Replay {
    /// Applies one line of the log.
    pub(crate) fn line(&mut self, line: &str) {
        let applied = serde_json::from_str::<QueryEvent>(line).is_ok_and(|e| self.apply(e));
        if !applied {
            self.skipped += 1;
        }
    }

    /// Applies one event; false if it does not fit what came before.
    pub(crate) fn apply(&mut self, event: QueryEvent) -> bool {
        if let QueryEvent::QuerySubmitted { query, stages, .. } = event {
            if self.detail.is_some() || stages.iter().any(|s| s.num_tasks > MAX_TASKS) {
                return false;
            }
            self.detail = Some(QueryDetail {
                summary: query,
                stages: stages.into_iter().map(planned_stage).collect(),
                critical_path: vec![],
            });
            return true;
        }
        let Some(detail) = &mut self.detail else {
            return false;
        };
        match event {
            QueryEvent::QuerySubmitted { .. } => unreachable!("handled above"),
            QueryEvent::QueryStarted { query, .. } | QueryEvent::QueryEnded { query, .. } => {
                if query.query_id != detail.summary.query_id {
                    return false;
                }
                detail.summary = query;
            }
            QueryEvent::StageStarted { stage, .. } | QueryEvent::StageEnded { stage, .. } => {
                let Some(planned) = detail.stages.get_mut(stage.stage_id as usize) else {
                    return false;
                };
                planned.state = stage.state;
                planned.started_at = stage.started_at;
                planned.finished_at = stage.finished_at;
                if !stage.operators.is_empty() {
                    planned.operators = stage.operators;
                }
            }
            QueryEvent::StageAdapted { stage, .. } => {
                if stage.num_tasks > MAX_TASKS {
                    return false;
                }
                let Some(planned) = detail.stages.get_mut(stage.stage_id as usize) else {
                    return false;
                };
                *planned = planned_stage(stage);
            }
            QueryEvent::TaskStarted { stage_id, task, .. }
            | QueryEvent::TaskEnded { stage_id, task, .. }
            | QueryEvent::TaskReset { stage_id, task, .. } => {
                let Some(slot) = detail
                    .stages
                    .get_mut(stage_id as usize)
                    .and_then(|s| s.tasks.get_mut(task.partition as usize))
                else {
                    return false;
                };
                *slot = task;
            }
        }
        true
    }

    /// Whether the log has a beginning (a `query_submitted` event).
    pub(crate) fn is_started(&self) -> bool {
        self.detail.is_some()
    }

    /// The query as its events left it. A query whose log stops before it ended (the coordinator
    /// stopped) is `interrupted`: failed with that error, what still ran cancelled.
    pub(crate) fn finish(
        self,
        interrupted: impl FnOnce() -> (String, String),
    ) -> Option<QueryDetail> {
        let mut detail = self.detail?;
        if !detail.summary.state.is_final() {
            let (error, sqlstate) = interrupted();
            detail.summary.state = State::Failed;
            detail.summary.error = Some(error);
            detail.summary.sqlstate = Some(sqlstate);
            let last = detail
                .stages
                .iter()
                .flat_map(|s| {
                    s.tasks
                        .iter()
                        .filter_map(|t| t.finished_at.or(t.started_at))
                })
                .chain(
                    detail
                        .stages
                        .iter()
                        .filter_map(|s| s.finished_at.or(s.started_at)),
                )
                .max()
                .unwrap_or(detail.summary.submitted_at);
            detail.summary.finished_at = Some(last.max(detail.summary.submitted_at));
        }
        // As the scheduler does when a query ends: what had not ended ends with it.
        let state = detail.summary.state;
        let ended = detail.summary.finished_at;
        for stage in &mut detail.stages {
            for task in &mut stage.tasks {
                if !task.state.is_final() {
                    task.state = State::Cancelled;
                    if task.started_at.is_some() && task.finished_at.is_none() {
                        task.finished_at = ended;
                    }
                }
            }
            if !stage.state.is_final() {
                stage.state = state;
                if stage.started_at.is_some() && stage.finished_at.is_none() {
                    stage.finished_at = ended;
                }
            }
        }
        recount(&mut detail);
        Some(detail)
    }
}

/// A stage as planned, no task launched yet.
fn planned_stage(plan: StagePlan) -> Stage {
    Stage {
        stage_id: plan.stage_id,
        kind: plan.kind,
        state: if plan.num_tasks == 0 {
            State::Succeeded
        } else {
            State::Pending
        },
        input_stages: plan.input_stages,
        output_partitioning: plan.output_partitioning,
        num_tasks: plan.num_tasks,
        adaptive: plan.adaptive,
        tasks_succeeded: 0,
        tasks_running: 0,
        rows: 0,
        bytes: 0,
        shuffle_read_bytes: 0,
        spilled_bytes: 0,
        peak_memory_bytes: 0,
        started_at: None,
        finished_at: None,
        duration_ms: None,
        plan: plan.plan,
        // Operators are shown once a task reported their metrics.
        operators: vec![],
        tasks: (0..plan.num_tasks)
            .map(|partition| Task {
                partition,
                attempt: 0,
                state: State::Pending,
                executor_id: None,
                speculative: false,
                rows: 0,
                bytes: 0,
                shuffle_read_bytes: 0,
                spilled_bytes: 0,
                peak_memory_bytes: 0,
                started_at: None,
                finished_at: None,
                duration_ms: None,
                error: None,
                sqlstate: None,
            })
            .collect(),
    }
}

fn system_time(t: Option<DateTime<Utc>>) -> Option<SystemTime> {
    t.map(SystemTime::from)
}

/// The totals of a replayed query, added up from its tasks as the scheduler adds them.
fn recount(detail: &mut QueryDetail) {
    for stage in &mut detail.stages {
        let count = |state| stage.tasks.iter().filter(|t| t.state == state).count() as u32;
        stage.tasks_succeeded = count(State::Succeeded);
        stage.tasks_running = count(State::Running);
        stage.rows = stage.tasks.iter().map(|t| t.rows).sum();
        stage.bytes = stage.tasks.iter().map(|t| t.bytes).sum();
        stage.shuffle_read_bytes = stage.tasks.iter().map(|t| t.shuffle_read_bytes).sum();
        stage.spilled_bytes = stage.tasks.iter().map(|t| t.spilled_bytes).sum();
        stage.peak_memory_bytes = stage
            .tasks
            .iter()
            .map(|t| t.peak_memory_bytes)
            .max()
            .unwrap_or(0);
        stage.duration_ms = millis_between(
            system_time(stage.started_at),
            system_time(stage.finished_at),
        );
        for task in &mut stage.tasks {
            task.duration_ms =
                millis_between(system_time(task.started_at), system_time(task.finished_at));
        }
    }
    let summary = &mut detail.summary;
    let stages = &detail.stages;
    summary.num_stages = stages.len() as u32;
    summary.stages_succeeded = stages
        .iter()
        .filter(|s| s.state == State::Succeeded)
        .count() as u32;
    summary.num_tasks = stages.iter().map(|s| s.num_tasks).sum();
    summary.tasks_succeeded = stages.iter().map(|s| s.tasks_succeeded).sum();
    summary.tasks_running = stages.iter().map(|s| s.tasks_running).sum();
    summary.result_rows = stages.last().map_or(0, |s| s.rows);
    summary.duration_ms = millis_between(
        Some(SystemTime::from(summary.submitted_at)),
        system_time(summary.finished_at),
    )
    .unwrap_or(0);
    detail.critical_path = critical_path(&detail.stages);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(state: State) -> QuerySummary {
        QuerySummary {
            query_id: "q1".into(),
            state,
            sql: "SELECT 1".into(),
            user: "ember".into(),
            session_id: "s".into(),
            frontend: "pgwire".into(),
            num_stages: 2,
            stages_succeeded: 0,
            num_tasks: 3,
            tasks_succeeded: 0,
            tasks_running: 0,
            result_rows: 0,
            submitted_at: DateTime::from_timestamp(1_000, 0).unwrap(),
            finished_at: None,
            duration_ms: 0,
            error: None,
            sqlstate: None,
        }
    }

    fn plan(stage_id: u32, num_tasks: u32, inputs: Vec<u32>) -> StagePlan {
        StagePlan {
            stage_id,
            kind: "shuffle".into(),
            input_stages: inputs,
            output_partitioning: "single".into(),
            num_tasks,
            adaptive: vec![],
            plan: "ScanExec".into(),
            operators: vec![],
        }
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_000 + seconds, 0).unwrap()
    }

    fn task(partition: u32, state: State, started: i64, finished: Option<i64>) -> Task {
        Task {
            partition,
            attempt: 0,
            state,
            executor_id: Some("e1".into()),
            speculative: false,
            rows: 10,
            bytes: 100,
            shuffle_read_bytes: 0,
            spilled_bytes: 0,
            peak_memory_bytes: 0,
            started_at: Some(at(started)),
            finished_at: finished.map(at),
            duration_ms: None,
            error: None,
            sqlstate: None,
        }
    }

    fn lines(events: &[QueryEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect()
    }

    #[test]
    fn a_replay_adds_up_the_last_word_on_each_task() {
        let submitted = QueryEvent::QuerySubmitted {
            time: at(0),
            query: summary(State::Queued),
            stages: vec![plan(0, 2, vec![]), plan(1, 1, vec![0])],
        };
        let mut ended = summary(State::Succeeded);
        ended.finished_at = Some(at(9));
        let events = [
            submitted,
            QueryEvent::TaskStarted {
                time: at(1),
                stage_id: 0,
                task: task(0, State::Running, 1, None),
            },
            QueryEvent::TaskEnded {
                time: at(2),
                stage_id: 0,
                task: task(0, State::Succeeded, 1, Some(2)),
            },
            QueryEvent::TaskEnded {
                time: at(3),
                stage_id: 0,
                task: task(1, State::Succeeded, 1, Some(3)),
            },
            QueryEvent::StageEnded {
                time: at(3),
                stage: StageProgress {
                    stage_id: 0,
                    state: State::Succeeded,
                    started_at: Some(at(1)),
                    finished_at: Some(at(3)),
                    operators: vec![],
                },
            },
            QueryEvent::TaskEnded {
                time: at(8),
                stage_id: 1,
                task: task(0, State::Succeeded, 4, Some(8)),
            },
            QueryEvent::QueryEnded {
                time: at(9),
                query: ended,
            },
        ];
        let mut replay = Replay::default();
        for line in lines(&events) {
            replay.line(&line);
        }
        replay.line("{\"event\":\"task_ended\",\"ti"); // a torn last line
        assert_eq!(replay.skipped, 1);
        let detail = replay.finish(|| unreachable!()).unwrap();
        assert_eq!(detail.summary.state, State::Succeeded);
        assert_eq!(detail.summary.tasks_succeeded, 3);
        assert_eq!(detail.summary.result_rows, 10);
        assert_eq!(detail.summary.duration_ms, 9_000);
        assert_eq!(detail.stages[0].rows, 20);
        assert_eq!(detail.stages[0].duration_ms, Some(2_000));
        assert_eq!(detail.stages[0].tasks[1].duration_ms, Some(2_000));
        // Stage 1's end was not logged: it ends with its query.
        assert_eq!(detail.stages[1].state, State::Succeeded);
        assert_eq!(detail.critical_path, vec![0, 1]);
    }

    #[test]
    fn a_stage_adaptive_execution_re_planned_replays_with_its_new_tasks() {
        let mut adapted = plan(1, 3, vec![0]);
        adapted.adaptive = vec!["partition 2 of stage 0 (probe side) is skewed".into()];
        let events = [
            QueryEvent::QuerySubmitted {
                time: at(0),
                query: summary(State::Queued),
                stages: vec![plan(0, 2, vec![]), plan(1, 1, vec![0])],
            },
            QueryEvent::StageAdapted {
                time: at(2),
                stage: adapted,
            },
            QueryEvent::TaskEnded {
                time: at(4),
                stage_id: 1,
                task: task(2, State::Succeeded, 3, Some(4)),
            },
        ];
        let mut replay = Replay::default();
        for line in lines(&events) {
            replay.line(&line);
        }
        assert_eq!(replay.skipped, 0);
        let detail = replay
            .finish(|| ("stopped".into(), "57P01".into()))
            .unwrap();
        assert_eq!(detail.stages[1].num_tasks, 3);
        assert_eq!(detail.stages[1].tasks[2].state, State::Succeeded);
        assert_eq!(detail.stages[1].adaptive.len(), 1);
        assert_eq!(detail.summary.num_tasks, 5);
    }

    #[test]
    fn an_interrupted_log_reads_as_a_failed_query() {
        let events = [
            QueryEvent::QuerySubmitted {
                time: at(0),
                query: summary(State::Queued),
                stages: vec![plan(0, 2, vec![]), plan(1, 1, vec![0])],
            },
            QueryEvent::TaskEnded {
                time: at(2),
                stage_id: 0,
                task: task(0, State::Succeeded, 1, Some(2)),
            },
            QueryEvent::TaskStarted {
                time: at(3),
                stage_id: 0,
                task: task(1, State::Running, 3, None),
            },
        ];
        let mut replay = Replay::default();
        for line in lines(&events) {
            replay.line(&line);
        }
        let detail = replay
            .finish(|| ("the coordinator stopped".into(), "57P01".into()))
            .unwrap();
        assert_eq!(detail.summary.state, State::Failed);
        assert_eq!(detail.summary.sqlstate.as_deref(), Some("57P01"));
        assert_eq!(detail.summary.finished_at, Some(at(3)));
        assert_eq!(detail.stages[0].tasks[1].state, State::Cancelled);
        assert_eq!(detail.stages[1].tasks[0].state, State::Cancelled);
        assert_eq!(detail.stages[1].state, State::Failed);
    }

    #[test]
    fn events_out_of_place_are_skipped() {
        let mut replay = Replay::default();
        // Nothing before the submission counts, nor a task the plan does not have.
        replay.line(
            &serde_json::to_string(&QueryEvent::TaskEnded {
                time: at(1),
                stage_id: 0,
                task: task(0, State::Succeeded, 1, Some(2)),
            })
            .unwrap(),
        );
        replay.line(
            &serde_json::to_string(&QueryEvent::QuerySubmitted {
                time: at(0),
                query: summary(State::Queued),
                stages: vec![plan(0, 1, vec![]), plan(1, MAX_TASKS + 1, vec![0])],
            })
            .unwrap(),
        );
        replay.line("not json");
        assert_eq!(replay.skipped, 3);
        assert!(!replay.is_started());
    }
}
