//! A point-in-time copy of the scheduler's state as the monitoring model: what the `system`
//! tables, the REST API and the web UI show.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use datafusion::physical_plan::{ExecutionPlan, displayable};
use ember_planner::ids::QueryId;

use super::state::{ExecutorState, QueryState, StageState, Status, TaskState};
use crate::history::{StagePlan, StageProgress};
use crate::status::model::{
    Executor, Operator, QueryDetail, QuerySummary, Stage, Task, critical_path, millis_between,
};

/// What a snapshot copies.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotRequest {
    /// One query, or all of them.
    pub(crate) query: Option<QueryId>,
    /// Queries with their stages and tasks (else summaries only).
    pub(crate) stages: bool,
    /// Stages with their plans and operators.
    pub(crate) plans: bool,
    /// Queries at all (else executors only).
    pub(crate) queries: bool,
}

impl SnapshotRequest {
    /// Every query with its stages and tasks, without plans: the `system` tables.
    pub(crate) fn tables() -> Self {
        Self {
            query: None,
            stages: true,
            plans: false,
            queries: true,
        }
    }

    /// Every query, summaries only: the query list, the cluster page, `/metrics`.
    pub(crate) fn summaries() -> Self {
        Self {
            stages: false,
            ..Self::tables()
        }
    }

    /// One query in full: the query page.
    pub(crate) fn query(id: QueryId) -> Self {
        Self {
            query: Some(id),
            stages: true,
            plans: true,
            queries: true,
        }
    }

    /// One query's summary: who ran it and whether it still runs.
    pub(crate) fn summary(id: QueryId) -> Self {
        Self {
            query: Some(id),
            ..Self::summaries()
        }
    }

    /// Executors only.
    pub(crate) fn executors() -> Self {
        Self {
            queries: false,
            ..Self::summaries()
        }
    }
}

/// The executors and queries a [`SnapshotRequest`] asked for.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) executors: Vec<Executor>,
    /// Queries oldest first; `stages` is empty unless asked for.
    pub(crate) queries: Vec<QueryDetail>,
}

impl Snapshot {
    /// Executors currently alive (lost ones stay listed in `system.executors`).
    pub(crate) fn alive_executors(&self) -> usize {
        self.executors
            .iter()
            .filter(|e| e.state == crate::status::ExecutorState::Alive)
            .count()
    }

    pub(crate) fn build<'a>(
        request: &SnapshotRequest,
        executors: impl Iterator<Item = &'a ExecutorState>,
        queries: impl Iterator<Item = &'a QueryState>,
    ) -> Self {
        let mut executors: Vec<Executor> = executors.map(executor).collect();
        executors.sort_by(|a, b| a.executor_id.cmp(&b.executor_id));
        let queries = if request.queries {
            queries
                .filter(|q| request.query.as_ref().is_none_or(|id| &q.id == id))
                .map(|q| query(q, request))
                .collect()
        } else {
            vec![]
        };
        Self { executors, queries }
    }
}

pub(super) fn time(t: SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(t)
}

fn executor(e: &ExecutorState) -> Executor {
    Executor {
        executor_id: e.info.id.to_string(),
        host: e.info.host.clone(),
        flight_port: e.info.flight_port,
        state: e.status,
        slots: e.info.slots as u32,
        cores: e.info.cores as u32,
        memory_bytes: e.info.memory,
        memory_used_bytes: e.memory_used,
        memory_peak_bytes: e.memory_peak,
        disk_used_bytes: e.disk_used,
        running_tasks: e.running.len() as u32,
        active_tasks: e.active_tasks,
        tasks_succeeded: e.tasks_succeeded,
        tasks_failed: e.tasks_failed,
        shuffle_write_bytes: e.bytes_written,
        registered_at: time(e.registered_at),
        last_heartbeat: time(e.last_heartbeat_wall),
        allocation_id: Some(e.info.allocation_id.clone()).filter(|a| !a.is_empty()),
    }
}

fn count(tasks: &[TaskState], status: Status) -> u32 {
    tasks.iter().filter(|t| t.status == status).count() as u32
}

fn query(q: &QueryState, request: &SnapshotRequest) -> QueryDetail {
    let summary = summary(q);
    if !request.stages {
        return QueryDetail {
            summary,
            stages: vec![],
            critical_path: vec![],
        };
    }
    let stages: Vec<Stage> = q.stages.iter().map(|s| stage(q, s, request)).collect();
    let critical_path = critical_path(&stages);
    QueryDetail {
        summary,
        stages,
        critical_path,
    }
}

/// What the query list shows of a query.
pub(super) fn summary(q: &QueryState) -> QuerySummary {
    QuerySummary {
        query_id: q.id.to_string(),
        state: q.status,
        sql: q.sql.clone(),
        user: q.user.clone(),
        session_id: q.session_id.clone(),
        frontend: q.frontend.clone(),
        num_stages: q.stages.len() as u32,
        stages_succeeded: q
            .stages
            .iter()
            .filter(|s| s.status == Status::Succeeded)
            .count() as u32,
        num_tasks: q.stages.iter().map(|s| s.tasks.len() as u32).sum(),
        tasks_succeeded: q
            .stages
            .iter()
            .map(|s| count(&s.tasks, Status::Succeeded))
            .sum(),
        tasks_running: q
            .stages
            .iter()
            .map(|s| count(&s.tasks, Status::Running))
            .sum(),
        result_rows: q
            .stages
            .last()
            .map_or(0, |s| s.tasks.iter().map(|t| t.rows).sum()),
        submitted_at: time(q.submitted_at),
        finished_at: q.finished_at.map(time),
        duration_ms: millis_between(Some(q.submitted_at), q.finished_at).unwrap_or(0),
        error: q.error.clone(),
        sqlstate: q.sqlstate.clone(),
    }
}

/// What a stage is, apart from how far it got: its kind, inputs, partitioning, tasks and plan
/// (the event log records it once, when its query is submitted).
pub(super) fn stage_plan(q: &QueryState, s: &StageState) -> StagePlan {
    let planned = q.graph.stage(s.id);
    let mut descriptions = vec![];
    describe(planned.plan.as_ref(), &mut descriptions);
    StagePlan {
        stage_id: s.id.0,
        kind: planned.kind.as_str().to_string(),
        input_stages: planned.inputs.iter().map(|i| i.0).collect(),
        output_partitioning: match planned.writer().output_partitioning() {
            Some(p) => p.to_string(),
            None => "single".to_string(),
        },
        num_tasks: s.tasks.len() as u32,
        adaptive: s.adaptive.clone(),
        plan: displayable(planned.plan.as_ref()).indent(true).to_string(),
        operators: descriptions
            .into_iter()
            .map(|(depth, name, description)| Operator {
                depth,
                name,
                description,
                metrics: Default::default(),
            })
            .collect(),
    }
}

/// How far a stage got: its state, times and operator metrics so far.
pub(super) fn stage_progress(q: &QueryState, s: &StageState) -> StageProgress {
    StageProgress {
        stage_id: s.id.0,
        state: s.status,
        started_at: s.started_at.map(time),
        finished_at: s.finished_at.map(time),
        operators: operators(q, s),
    }
}

/// The stage's operators with their metrics summed over its succeeded tasks.
fn operators(q: &QueryState, s: &StageState) -> Vec<Operator> {
    let mut descriptions = vec![];
    describe(q.graph.stage(s.id).plan.as_ref(), &mut descriptions);
    s.operators
        .iter()
        .enumerate()
        .map(|(i, o)| Operator {
            depth: o.depth,
            name: o.name.clone(),
            // The executors run the plan the coordinator cut; if one reported another shape,
            // only the names it sent are shown.
            description: descriptions
                .get(i)
                .filter(|(_, name, _)| *name == o.name)
                .map_or_else(|| o.name.clone(), |(_, _, line)| line.clone()),
            metrics: o
                .metrics
                .iter()
                .map(|(k, (v, _))| (k.clone(), *v))
                .collect(),
        })
        .collect()
}

fn stage(q: &QueryState, s: &StageState, request: &SnapshotRequest) -> Stage {
    let planned = q.graph.stage(s.id);
    let (plan, operators) = if request.plans {
        (
            displayable(planned.plan.as_ref()).indent(true).to_string(),
            operators(q, s),
        )
    } else {
        (String::new(), vec![])
    };
    Stage {
        stage_id: s.id.0,
        kind: planned.kind.as_str().to_string(),
        state: s.status,
        input_stages: planned.inputs.iter().map(|i| i.0).collect(),
        output_partitioning: match planned.writer().output_partitioning() {
            Some(p) => p.to_string(),
            None => "single".to_string(),
        },
        num_tasks: s.tasks.len() as u32,
        adaptive: s.adaptive.clone(),
        tasks_succeeded: count(&s.tasks, Status::Succeeded),
        tasks_running: count(&s.tasks, Status::Running),
        rows: s.tasks.iter().map(|t| t.rows).sum(),
        bytes: s.tasks.iter().map(|t| t.bytes).sum(),
        shuffle_read_bytes: s.tasks.iter().map(|t| t.shuffle_read_bytes).sum(),
        spilled_bytes: s.tasks.iter().map(|t| t.spilled_bytes).sum(),
        peak_memory_bytes: s
            .tasks
            .iter()
            .map(|t| t.peak_memory_bytes)
            .max()
            .unwrap_or(0),
        started_at: s.started_at.map(time),
        finished_at: s.finished_at.map(time),
        duration_ms: millis_between(s.started_at, s.finished_at),
        plan,
        operators,
        tasks: s.tasks.iter().map(task).collect(),
    }
}

/// Each operator's depth, name and one-line description, in pre-order.
fn describe(plan: &dyn ExecutionPlan, out: &mut Vec<(u32, String, String)>) {
    describe_at(plan, 0, out);
}

fn describe_at(plan: &dyn ExecutionPlan, depth: u32, out: &mut Vec<(u32, String, String)>) {
    out.push((
        depth,
        plan.name().to_string(),
        displayable(plan)
            .one_line()
            .to_string()
            .trim_end()
            .to_string(),
    ));
    for child in plan.children() {
        describe_at(child.as_ref(), depth + 1, out);
    }
}

pub(super) fn task(t: &TaskState) -> Task {
    Task {
        partition: t.partition,
        attempt: t.attempt,
        state: t.status,
        executor_id: t.executor.as_ref().map(|e| e.to_string()),
        speculative: t.speculation_won,
        rows: t.rows,
        bytes: t.bytes,
        shuffle_read_bytes: t.shuffle_read_bytes,
        spilled_bytes: t.spilled_bytes,
        peak_memory_bytes: t.peak_memory_bytes,
        started_at: t.started_at.map(time),
        finished_at: t.finished_at.map(time),
        duration_ms: millis_between(t.started_at, t.finished_at),
        error: t.error.clone(),
        sqlstate: t.sqlstate.clone(),
    }
}
