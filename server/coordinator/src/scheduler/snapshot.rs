//! A point-in-time copy of the scheduler's state as Arrow batches, behind the `system` tables.

use std::sync::Arc;
use std::time::SystemTime;

use datafusion::arrow::array::{
    ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::state::{ExecutorState, QueryState};

/// The rows of `system.executors`, `system.queries`, `system.stages` and `system.tasks`.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) executors: RecordBatch,
    pub(crate) queries: RecordBatch,
    pub(crate) stages: RecordBatch,
    pub(crate) tasks: RecordBatch,
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn micros(t: Option<SystemTime>) -> Option<i64> {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_micros() as i64)
}

fn millis_between(start: Option<SystemTime>, end: Option<SystemTime>) -> Option<u64> {
    let end = end.unwrap_or_else(SystemTime::now);
    start
        .and_then(|s| end.duration_since(s).ok())
        .map(|d| d.as_millis() as u64)
}

fn strings<I: IntoIterator<Item = Option<String>>>(values: I) -> ArrayRef {
    Arc::new(values.into_iter().collect::<StringArray>())
}

fn u64s<I: IntoIterator<Item = Option<u64>>>(values: I) -> ArrayRef {
    Arc::new(values.into_iter().collect::<UInt64Array>())
}

fn u32s<I: IntoIterator<Item = Option<u32>>>(values: I) -> ArrayRef {
    Arc::new(values.into_iter().collect::<UInt32Array>())
}

fn times<I: IntoIterator<Item = Option<SystemTime>>>(values: I) -> ArrayRef {
    let array: TimestampMicrosecondArray = values.into_iter().map(micros).collect();
    Arc::new(array.with_timezone("UTC"))
}

macro_rules! schema {
    ($($name:literal : $ty:expr),* $(,)?) => {
        Arc::new(Schema::new(vec![$(Field::new($name, $ty, true)),*]))
    };
}

pub(crate) fn executors_schema() -> SchemaRef {
    schema!(
        "executor_id": DataType::Utf8, "host": DataType::Utf8, "flight_port": DataType::UInt32,
        "status": DataType::Utf8, "slots": DataType::UInt32, "cores": DataType::UInt32,
        "memory_bytes": DataType::UInt64, "running_tasks": DataType::UInt32,
        "active_tasks": DataType::UInt32, "tasks_succeeded": DataType::UInt64, "tasks_failed": DataType::UInt64,
        "registered_at": ts_type(), "last_heartbeat": ts_type(), "allocation_id": DataType::Utf8,
    )
}

pub(crate) fn queries_schema() -> SchemaRef {
    schema!(
        "query_id": DataType::Utf8, "status": DataType::Utf8, "sql": DataType::Utf8,
        "stages": DataType::UInt32, "tasks": DataType::UInt32, "tasks_succeeded": DataType::UInt32,
        "result_rows": DataType::UInt64, "submitted_at": ts_type(), "finished_at": ts_type(),
        "duration_ms": DataType::UInt64, "error": DataType::Utf8, "session_id": DataType::Utf8,
        "user_name": DataType::Utf8,
    )
}

pub(crate) fn stages_schema() -> SchemaRef {
    schema!(
        "query_id": DataType::Utf8, "stage_id": DataType::UInt32, "kind": DataType::Utf8,
        "status": DataType::Utf8, "tasks": DataType::UInt32, "tasks_succeeded": DataType::UInt32,
        "tasks_running": DataType::UInt32, "input_stages": DataType::Utf8,
        "output_partitioning": DataType::Utf8, "rows": DataType::UInt64, "bytes": DataType::UInt64,
        "started_at": ts_type(), "finished_at": ts_type(), "duration_ms": DataType::UInt64,
    )
}

pub(crate) fn tasks_schema() -> SchemaRef {
    schema!(
        "query_id": DataType::Utf8, "stage_id": DataType::UInt32, "partition": DataType::UInt32,
        "attempt": DataType::UInt32, "status": DataType::Utf8, "executor_id": DataType::Utf8,
        "rows": DataType::UInt64, "bytes": DataType::UInt64, "spilled_bytes": DataType::UInt64,
        "speculative": DataType::Boolean, "started_at": ts_type(),
        "finished_at": ts_type(), "duration_ms": DataType::UInt64, "error": DataType::Utf8,
    )
}

impl Snapshot {
    /// Executors currently alive (lost ones stay listed in `system.executors`).
    pub(crate) fn alive_executors(&self) -> usize {
        self.executors
            .column_by_name("status")
            .and_then(|c| c.as_string_opt::<i32>())
            .map_or(0, |status| {
                status.iter().filter(|s| *s == Some("alive")).count()
            })
    }

    pub(crate) fn build<'a>(
        executors: impl Iterator<Item = &'a ExecutorState>,
        queries: impl Iterator<Item = &'a QueryState>,
    ) -> Self {
        let mut executors: Vec<&ExecutorState> = executors.collect();
        executors.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        let queries: Vec<&QueryState> = queries.collect();
        Self {
            executors: executors_batch(&executors),
            queries: queries_batch(&queries),
            stages: stages_batch(&queries),
            tasks: tasks_batch(&queries),
        }
    }
}

fn batch(schema: SchemaRef, columns: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(schema, columns)
        .expect("system table columns match their schema (built side by side)")
}

fn executors_batch(executors: &[&ExecutorState]) -> RecordBatch {
    let e = executors;
    batch(
        executors_schema(),
        vec![
            strings(e.iter().map(|e| Some(e.info.id.to_string()))),
            strings(e.iter().map(|e| Some(e.info.host.clone()))),
            u32s(e.iter().map(|e| Some(u32::from(e.info.flight_port)))),
            strings(e.iter().map(|e| Some(e.status.as_str().to_string()))),
            u32s(e.iter().map(|e| Some(e.info.slots as u32))),
            u32s(e.iter().map(|e| Some(e.info.cores as u32))),
            u64s(e.iter().map(|e| Some(e.info.memory))),
            u32s(e.iter().map(|e| Some(e.running.len() as u32))),
            u32s(e.iter().map(|e| Some(e.active_tasks))),
            u64s(e.iter().map(|e| Some(e.tasks_succeeded))),
            u64s(e.iter().map(|e| Some(e.tasks_failed))),
            times(e.iter().map(|e| Some(e.registered_at))),
            times(e.iter().map(|e| Some(e.last_heartbeat_wall))),
            strings(
                e.iter()
                    .map(|e| Some(e.info.allocation_id.clone()).filter(|a| !a.is_empty())),
            ),
        ],
    )
}

fn queries_batch(queries: &[&QueryState]) -> RecordBatch {
    let q = queries;
    let num_tasks = |q: &QueryState| q.stages.iter().map(|s| s.tasks.len()).sum::<usize>() as u32;
    let succeeded =
        |q: &QueryState| q.stages.iter().map(|s| s.tasks_succeeded()).sum::<usize>() as u32;
    let result_rows = |q: &QueryState| {
        q.stages
            .last()
            .map(|s| s.tasks.iter().map(|t| t.rows).sum::<u64>())
    };
    batch(
        queries_schema(),
        vec![
            strings(q.iter().map(|q| Some(q.id.to_string()))),
            strings(q.iter().map(|q| Some(q.status.as_str().to_string()))),
            strings(q.iter().map(|q| Some(q.sql.clone()))),
            u32s(q.iter().map(|q| Some(q.stages.len() as u32))),
            u32s(q.iter().map(|q| Some(num_tasks(q)))),
            u32s(q.iter().map(|q| Some(succeeded(q)))),
            u64s(q.iter().map(|q| result_rows(q))),
            times(q.iter().map(|q| Some(q.submitted_at))),
            times(q.iter().map(|q| q.finished_at)),
            u64s(
                q.iter()
                    .map(|q| millis_between(Some(q.submitted_at), q.finished_at)),
            ),
            strings(q.iter().map(|q| q.error.clone())),
            strings(q.iter().map(|q| Some(q.session_id.clone()))),
            strings(q.iter().map(|q| Some(q.user.clone()))),
        ],
    )
}

fn stages_batch(queries: &[&QueryState]) -> RecordBatch {
    let rows: Vec<_> = queries
        .iter()
        .flat_map(|q| q.stages.iter().map(move |s| (*q, s)))
        .collect();
    let r = &rows;
    batch(
        stages_schema(),
        vec![
            strings(r.iter().map(|(q, _)| Some(q.id.to_string()))),
            u32s(r.iter().map(|(_, s)| Some(s.id.0))),
            strings(
                r.iter()
                    .map(|(q, s)| Some(q.graph.stage(s.id).kind.as_str().to_string())),
            ),
            strings(r.iter().map(|(_, s)| Some(s.status.as_str().to_string()))),
            u32s(r.iter().map(|(_, s)| Some(s.tasks.len() as u32))),
            u32s(r.iter().map(|(_, s)| Some(s.tasks_succeeded() as u32))),
            u32s(r.iter().map(|(_, s)| {
                Some(
                    s.tasks
                        .iter()
                        .filter(|t| t.status == super::state::Status::Running)
                        .count() as u32,
                )
            })),
            strings(r.iter().map(|(q, s)| {
                let inputs: Vec<String> = q
                    .graph
                    .stage(s.id)
                    .inputs
                    .iter()
                    .map(|i| i.to_string())
                    .collect();
                Some(inputs.join(","))
            })),
            strings(r.iter().map(|(q, s)| {
                Some(match q.graph.stage(s.id).writer().output_partitioning() {
                    Some(p) => p.to_string(),
                    None => "single".to_string(),
                })
            })),
            u64s(
                r.iter()
                    .map(|(_, s)| Some(s.tasks.iter().map(|t| t.rows).sum())),
            ),
            u64s(
                r.iter()
                    .map(|(_, s)| Some(s.tasks.iter().map(|t| t.bytes).sum())),
            ),
            times(r.iter().map(|(_, s)| s.started_at)),
            times(r.iter().map(|(_, s)| s.finished_at)),
            u64s(
                r.iter()
                    .map(|(_, s)| millis_between(s.started_at, s.finished_at)),
            ),
        ],
    )
}

fn tasks_batch(queries: &[&QueryState]) -> RecordBatch {
    let rows: Vec<_> = queries
        .iter()
        .flat_map(|q| {
            q.stages
                .iter()
                .flat_map(move |s| s.tasks.iter().map(move |t| (*q, s.id, t)))
        })
        .collect();
    let r = &rows;
    batch(
        tasks_schema(),
        vec![
            strings(r.iter().map(|(q, _, _)| Some(q.id.to_string()))),
            u32s(r.iter().map(|(_, s, _)| Some(s.0))),
            u32s(r.iter().map(|(_, _, t)| Some(t.partition))),
            u32s(r.iter().map(|(_, _, t)| Some(t.attempt))),
            strings(
                r.iter()
                    .map(|(_, _, t)| Some(t.status.as_str().to_string())),
            ),
            strings(
                r.iter()
                    .map(|(_, _, t)| t.executor.as_ref().map(|e| e.to_string())),
            ),
            u64s(r.iter().map(|(_, _, t)| Some(t.rows))),
            u64s(r.iter().map(|(_, _, t)| Some(t.bytes))),
            u64s(r.iter().map(|(_, _, t)| Some(t.spilled_bytes))),
            Arc::new(BooleanArray::from_iter(
                r.iter().map(|(_, _, t)| Some(t.speculation_won)),
            )),
            times(r.iter().map(|(_, _, t)| t.started_at)),
            times(r.iter().map(|(_, _, t)| t.finished_at)),
            u64s(
                r.iter()
                    .map(|(_, _, t)| millis_between(t.started_at, t.finished_at)),
            ),
            strings(r.iter().map(|(_, _, t)| t.error.clone())),
        ],
    )
}
