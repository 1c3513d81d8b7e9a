//! `EXPLAIN ANALYZE` over the cluster: the query runs on the executors as any other (its rows
//! are read and dropped), then each stage and each operator of its plan is answered as a row
//! with the metrics its tasks reported, added up over the tasks — what the web UI's query page
//! shows, for psql and Flight SQL clients.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

use crate::engine::QueryEngine;
use crate::error::{Error, Result};
use crate::output::Output;
use crate::query::StartedQuery;
use crate::scheduler::SnapshotRequest;
use crate::session::ClientSession;
use crate::statement::ParsedStatement;
use crate::status::model::{QueryDetail, Stage};

impl QueryEngine {
    /// Runs the query under `EXPLAIN ANALYZE` on the cluster and answers its stages and
    /// operators with their metrics. A query with nothing to distribute runs here, under
    /// DataFusion's own `EXPLAIN ANALYZE`.
    pub(crate) async fn explain_analyze(
        &self,
        session: &ClientSession,
        parsed: &ParsedStatement,
        plan: LogicalPlan,
    ) -> Result<Output> {
        let LogicalPlan::Analyze(analyze) = &plan else {
            return Err(Error::NotSupported("not an EXPLAIN ANALYZE".into()));
        };
        let physical = session
            .ctx
            .state()
            .create_physical_plan(&analyze.input)
            .await?;
        if !crate::query::distributes(&physical)? {
            return self.run_query(session, parsed, plan).await;
        }
        let handle = match self.start_physical(session, parsed.sql(), physical).await? {
            StartedQuery::Distributed(handle) => handle,
            StartedQuery::Local(_) => return self.run_query(session, parsed, plan).await,
        };
        let query_id = handle.partitions().query_id().clone();
        let mut rows = handle.into_stream();
        while let Some(batch) = rows.next().await {
            batch?;
        }
        drop(rows);
        let detail = self
            .scheduler
            .snapshot(SnapshotRequest::query(query_id.clone()))
            .await?
            .queries
            .pop()
            .ok_or_else(|| {
                Error::Unavailable(format!("query {query_id} is no longer remembered"))
            })?;
        Ok(Output::Rows(analyze_rows(&detail, analyze.verbose)))
    }
}

/// One row per stage (its tasks, rows, bytes and duration), followed by one per operator of
/// its plan, indented by depth.
fn analyze_rows(query: &QueryDetail, verbose: bool) -> SendableRecordBatchStream {
    let schema = Arc::new(Schema::new(vec![
        Field::new("stage", DataType::UInt32, false),
        Field::new("operator", DataType::Utf8, false),
        Field::new("tasks", DataType::Utf8, true),
        Field::new("output_rows", DataType::UInt64, true),
        Field::new("compute_ms", DataType::Float64, true),
        Field::new("spilled_bytes", DataType::UInt64, true),
        Field::new("metrics", DataType::Utf8, false),
    ]));
    let mut stage_ids = vec![];
    let mut operators = vec![];
    let mut tasks = vec![];
    let mut output_rows = vec![];
    let mut compute_ms = vec![];
    let mut spilled = vec![];
    let mut metrics = vec![];
    for stage in &query.stages {
        stage_ids.push(stage.stage_id);
        operators.push(stage_title(
            stage,
            query.critical_path.contains(&stage.stage_id),
        ));
        tasks.push(Some(format!(
            "{}/{}",
            stage.tasks_succeeded, stage.num_tasks
        )));
        output_rows.push(Some(stage.rows));
        compute_ms.push(None);
        spilled.push(Some(stage.spilled_bytes));
        metrics.push(stage_metrics(stage));
        for operator in &stage.operators {
            stage_ids.push(stage.stage_id);
            operators.push(format!(
                "{}{}",
                "  ".repeat(operator.depth as usize + 1),
                operator.description
            ));
            tasks.push(None);
            output_rows.push(operator.metrics.get("output_rows").copied());
            compute_ms.push(
                operator
                    .metrics
                    .get("elapsed_compute")
                    .map(|ns| *ns as f64 / 1e6),
            );
            spilled.push(operator.metrics.get("spilled_bytes").copied());
            let shown = ["output_rows", "elapsed_compute", "spilled_bytes"];
            metrics.push(
                operator
                    .metrics
                    .iter()
                    .filter(|(name, value)| {
                        !shown.contains(&name.as_str()) && (verbose || **value > 0)
                    })
                    .map(|(name, value)| format_metric(name, *value))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(stage_ids)),
        Arc::new(StringArray::from(operators)),
        Arc::new(StringArray::from(tasks)),
        Arc::new(UInt64Array::from(output_rows)),
        Arc::new(Float64Array::from(compute_ms)),
        Arc::new(UInt64Array::from(spilled)),
        Arc::new(StringArray::from(metrics)),
    ];
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns);
    Box::pin(RecordBatchStreamAdapter::new(
        schema,
        futures::stream::iter(vec![batch.map_err(Into::into)]),
    ))
}

fn stage_title(stage: &Stage, critical: bool) -> String {
    format!(
        "Stage {} ({}, output {}){}",
        stage.stage_id,
        stage.kind,
        stage.output_partitioning,
        if critical { " [critical path]" } else { "" }
    )
}

fn stage_metrics(stage: &Stage) -> String {
    let durations: Vec<u64> = stage.tasks.iter().filter_map(|t| t.duration_ms).collect();
    let mut parts = vec![format!("duration={} ms", stage.duration_ms.unwrap_or(0))];
    if let (Some(min), Some(max)) = (durations.iter().min(), durations.iter().max()) {
        parts.push(format!("task_ms=[min {min}, max {max}]"));
    }
    parts.push(format!("bytes_written={}", stage.bytes));
    if stage.shuffle_read_bytes > 0 {
        parts.push(format!("shuffle_read_bytes={}", stage.shuffle_read_bytes));
    }
    if !stage.input_stages.is_empty() {
        let inputs: Vec<String> = stage.input_stages.iter().map(u32::to_string).collect();
        parts.push(format!("reads stages {}", inputs.join(",")));
    }
    if !stage.adaptive.is_empty() {
        parts.push(format!("adaptive: {}", stage.adaptive.join("; ")));
    }
    parts.join(", ")
}

/// A metric as `name=value`, times (in nanoseconds) in milliseconds.
fn format_metric(name: &str, value: u64) -> String {
    if name.contains("time") || name.starts_with("elapsed") {
        format!("{name}={:.3}ms", value as f64 / 1e6)
    } else {
        format!("{name}={value}")
    }
}
