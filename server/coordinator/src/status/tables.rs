//! The monitoring model as the Arrow batches of the `system` tables (`system.executors`,
//! `system.queries`, `system.stages`, `system.tasks`). Columns only ever get added, at the end.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
    UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::model::{Executor, QueryDetail, Stage, Task};

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
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

fn times<I: IntoIterator<Item = Option<DateTime<Utc>>>>(values: I) -> ArrayRef {
    let array: TimestampMicrosecondArray = values
        .into_iter()
        .map(|t| t.map(|t| t.timestamp_micros()))
        .collect();
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
        "memory_used_bytes": DataType::UInt64, "memory_peak_bytes": DataType::UInt64,
        "disk_used_bytes": DataType::UInt64, "shuffle_write_bytes": DataType::UInt64,
    )
}

pub(crate) fn queries_schema() -> SchemaRef {
    schema!(
        "query_id": DataType::Utf8, "status": DataType::Utf8, "sql": DataType::Utf8,
        "stages": DataType::UInt32, "tasks": DataType::UInt32, "tasks_succeeded": DataType::UInt32,
        "result_rows": DataType::UInt64, "submitted_at": ts_type(), "finished_at": ts_type(),
        "duration_ms": DataType::UInt64, "error": DataType::Utf8, "session_id": DataType::Utf8,
        "user_name": DataType::Utf8, "frontend": DataType::Utf8, "sqlstate": DataType::Utf8,
    )
}

pub(crate) fn stages_schema() -> SchemaRef {
    schema!(
        "query_id": DataType::Utf8, "stage_id": DataType::UInt32, "kind": DataType::Utf8,
        "status": DataType::Utf8, "tasks": DataType::UInt32, "tasks_succeeded": DataType::UInt32,
        "tasks_running": DataType::UInt32, "input_stages": DataType::Utf8,
        "output_partitioning": DataType::Utf8, "rows": DataType::UInt64, "bytes": DataType::UInt64,
        "started_at": ts_type(), "finished_at": ts_type(), "duration_ms": DataType::UInt64,
        "shuffle_read_bytes": DataType::UInt64, "spilled_bytes": DataType::UInt64,
        "adaptive": DataType::Utf8, "peak_memory_bytes": DataType::UInt64,
    )
}

pub(crate) fn tasks_schema() -> SchemaRef {
    schema!(
        "query_id": DataType::Utf8, "stage_id": DataType::UInt32, "partition": DataType::UInt32,
        "attempt": DataType::UInt32, "status": DataType::Utf8, "executor_id": DataType::Utf8,
        "rows": DataType::UInt64, "bytes": DataType::UInt64, "spilled_bytes": DataType::UInt64,
        "speculative": DataType::Boolean, "started_at": ts_type(),
        "finished_at": ts_type(), "duration_ms": DataType::UInt64, "error": DataType::Utf8,
        "shuffle_read_bytes": DataType::UInt64, "sqlstate": DataType::Utf8,
        "peak_memory_bytes": DataType::UInt64,
    )
}

fn batch(schema: SchemaRef, columns: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(schema, columns)
        .expect("system table columns match their schema (built side by side)")
}

pub(crate) fn executors_batch(executors: &[Executor]) -> RecordBatch {
    let e = executors;
    batch(
        executors_schema(),
        vec![
            strings(e.iter().map(|e| Some(e.executor_id.clone()))),
            strings(e.iter().map(|e| Some(e.host.clone()))),
            u32s(e.iter().map(|e| Some(u32::from(e.flight_port)))),
            strings(e.iter().map(|e| Some(e.state.as_str().to_string()))),
            u32s(e.iter().map(|e| Some(e.slots))),
            u32s(e.iter().map(|e| Some(e.cores))),
            u64s(e.iter().map(|e| Some(e.memory_bytes))),
            u32s(e.iter().map(|e| Some(e.running_tasks))),
            u32s(e.iter().map(|e| Some(e.active_tasks))),
            u64s(e.iter().map(|e| Some(e.tasks_succeeded))),
            u64s(e.iter().map(|e| Some(e.tasks_failed))),
            times(e.iter().map(|e| Some(e.registered_at))),
            times(e.iter().map(|e| Some(e.last_heartbeat))),
            strings(e.iter().map(|e| e.allocation_id.clone())),
            u64s(e.iter().map(|e| Some(e.memory_used_bytes))),
            u64s(e.iter().map(|e| Some(e.memory_peak_bytes))),
            u64s(e.iter().map(|e| Some(e.disk_used_bytes))),
            u64s(e.iter().map(|e| Some(e.shuffle_write_bytes))),
        ],
    )
}

pub(crate) fn queries_batch(queries: &[&QueryDetail]) -> RecordBatch {
    let q: Vec<_> = queries.iter().map(|q| &q.summary).collect();
    batch(
        queries_schema(),
        vec![
            strings(q.iter().map(|q| Some(q.query_id.clone()))),
            strings(q.iter().map(|q| Some(q.state.as_str().to_string()))),
            strings(q.iter().map(|q| Some(q.sql.clone()))),
            u32s(q.iter().map(|q| Some(q.num_stages))),
            u32s(q.iter().map(|q| Some(q.num_tasks))),
            u32s(q.iter().map(|q| Some(q.tasks_succeeded))),
            u64s(q.iter().map(|q| Some(q.result_rows))),
            times(q.iter().map(|q| Some(q.submitted_at))),
            times(q.iter().map(|q| q.finished_at)),
            u64s(q.iter().map(|q| Some(q.duration_ms))),
            strings(q.iter().map(|q| q.error.clone())),
            strings(q.iter().map(|q| Some(q.session_id.clone()))),
            strings(q.iter().map(|q| Some(q.user.clone()))),
            strings(q.iter().map(|q| Some(q.frontend.clone()))),
            strings(q.iter().map(|q| q.sqlstate.clone())),
        ],
    )
}

pub(crate) fn stages_batch(queries: &[&QueryDetail]) -> RecordBatch {
    let rows: Vec<(&str, &Stage)> = queries
        .iter()
        .flat_map(|q| q.stages.iter().map(|s| (q.summary.query_id.as_str(), s)))
        .collect();
    let r = &rows;
    batch(
        stages_schema(),
        vec![
            strings(r.iter().map(|(q, _)| Some(q.to_string()))),
            u32s(r.iter().map(|(_, s)| Some(s.stage_id))),
            strings(r.iter().map(|(_, s)| Some(s.kind.clone()))),
            strings(r.iter().map(|(_, s)| Some(s.state.as_str().to_string()))),
            u32s(r.iter().map(|(_, s)| Some(s.num_tasks))),
            u32s(r.iter().map(|(_, s)| Some(s.tasks_succeeded))),
            u32s(r.iter().map(|(_, s)| Some(s.tasks_running))),
            strings(r.iter().map(|(_, s)| {
                let inputs: Vec<String> = s.input_stages.iter().map(|i| i.to_string()).collect();
                Some(inputs.join(","))
            })),
            strings(r.iter().map(|(_, s)| Some(s.output_partitioning.clone()))),
            u64s(r.iter().map(|(_, s)| Some(s.rows))),
            u64s(r.iter().map(|(_, s)| Some(s.bytes))),
            times(r.iter().map(|(_, s)| s.started_at)),
            times(r.iter().map(|(_, s)| s.finished_at)),
            u64s(r.iter().map(|(_, s)| s.duration_ms)),
            u64s(r.iter().map(|(_, s)| Some(s.shuffle_read_bytes))),
            u64s(r.iter().map(|(_, s)| Some(s.spilled_bytes))),
            strings(
                r.iter()
                    .map(|(_, s)| (!s.adaptive.is_empty()).then(|| s.adaptive.join("; "))),
            ),
            u64s(r.iter().map(|(_, s)| Some(s.peak_memory_bytes))),
        ],
    )
}

pub(crate) fn tasks_batch(queries: &[&QueryDetail]) -> RecordBatch {
    let rows: Vec<(&str, u32, &Task)> = queries
        .iter()
        .flat_map(|q| {
            q.stages.iter().flat_map(move |s| {
                s.tasks
                    .iter()
                    .map(move |t| (q.summary.query_id.as_str(), s.stage_id, t))
            })
        })
        .collect();
    let r = &rows;
    batch(
        tasks_schema(),
        vec![
            strings(r.iter().map(|(q, _, _)| Some(q.to_string()))),
            u32s(r.iter().map(|(_, s, _)| Some(*s))),
            u32s(r.iter().map(|(_, _, t)| Some(t.partition))),
            u32s(r.iter().map(|(_, _, t)| Some(t.attempt))),
            strings(r.iter().map(|(_, _, t)| Some(t.state.as_str().to_string()))),
            strings(r.iter().map(|(_, _, t)| t.executor_id.clone())),
            u64s(r.iter().map(|(_, _, t)| Some(t.rows))),
            u64s(r.iter().map(|(_, _, t)| Some(t.bytes))),
            u64s(r.iter().map(|(_, _, t)| Some(t.spilled_bytes))),
            Arc::new(BooleanArray::from_iter(
                r.iter().map(|(_, _, t)| Some(t.speculative)),
            )),
            times(r.iter().map(|(_, _, t)| t.started_at)),
            times(r.iter().map(|(_, _, t)| t.finished_at)),
            u64s(r.iter().map(|(_, _, t)| t.duration_ms)),
            strings(r.iter().map(|(_, _, t)| t.error.clone())),
            u64s(r.iter().map(|(_, _, t)| Some(t.shuffle_read_bytes))),
            strings(r.iter().map(|(_, _, t)| t.sqlstate.clone())),
            u64s(r.iter().map(|(_, _, t)| Some(t.peak_memory_bytes))),
        ],
    )
}
