//! Distributed writes: every task writes its partition as files of its own under a staging
//! directory; the coordinator commits the files of the tasks that succeeded.
//!
//! ```text
//!   INSERT / CREATE TABLE AS / COPY
//!        │ DataFusion plans DataSinkExec(FileSink) ─► CoalescePartitions ─► input
//!        ▼ rewrite
//!   DistributedSinkExec (one task per input partition)
//!        │ task p writes  <staging>/task-<p>-<uuid>/...   (hidden from readers of the target)
//!        ▼ returns one row per task: rows written, files (relative to <staging>)
//!   coordinator: moves the files into place (or records them in the table's manifest)
//! ```
//! A failed or cancelled write leaves only its staging directory, which the coordinator removes.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ListBuilder, RecordBatch, StringBuilder, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{exec_err, internal_err, plan_err};
use datafusion::datasource::file_format::csv::CsvSink;
use datafusion::datasource::file_format::json::JsonSink;
use datafusion::datasource::file_format::parquet::ParquetSink;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::datasource::physical_plan::{FileOutputMode, FileSink, FileSinkConfig};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, execute_input_stream,
};
use futures::TryStreamExt;

/// Directory name, inside a write's target directory, under which tasks stage their files.
/// DataFusion's listing skips files in subdirectories (unless their name holds `=`), so
/// readers of the target never see staged files.
pub const STAGING_DIR: &str = "_ember_staging";

/// The schema of a write task's output: rows written and the files written, relative to the
/// staging directory.
pub fn write_result_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("rows", DataType::UInt64, false),
        Field::new(
            "files",
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
            false,
        ),
    ]))
}

/// Writes each partition of its input with a copy of a DataFusion file sink whose target is a
/// task directory under `staging`.
#[derive(Debug)]
pub struct DistributedSinkExec {
    input: Arc<dyn ExecutionPlan>,
    /// The sink DataFusion planned; its format, options and partition columns are kept, its
    /// target is replaced per task.
    sink: Arc<dyn DataSink>,
    /// URL of the staging directory, ending with `/`.
    staging: String,
    /// File name when the whole write is one file (then the input has one partition).
    single_file: Option<String>,
    properties: Arc<PlanProperties>,
}

impl DistributedSinkExec {
    /// Replaces DataFusion's `DataSinkExec` (and the merge DataFusion put under it when one
    /// file is not required) by a distributed write staged under `staging`.
    pub fn try_from_sink(plan: &DataSinkExec, staging: &str) -> Result<Self> {
        let Some(file_sink) = file_sink(plan.sink()) else {
            return plan_err!(
                "writing with {} is not supported: only parquet, csv and json files can be written",
                DisplayableSink(plan.sink())
            );
        };
        let config = file_sink.config();
        let target = config.table_paths.first().ok_or_else(|| {
            datafusion::error::DataFusionError::Plan("write without target".into())
        })?;
        let single_file = config.file_output_mode.single_file_output(target);
        let mut input = Arc::clone(plan.input());
        let single_file = if single_file {
            let name = target
                .prefix()
                .filename()
                .map(str::to_string)
                .ok_or_else(|| {
                    datafusion::error::DataFusionError::Plan(format!(
                        "cannot write one file to {target}"
                    ))
                })?;
            Some(name)
        } else {
            // Ordered writes keep their merge and so run as one task; plain ones are split. A
            // merge that limits the rows (`INSERT ... SELECT ... LIMIT n`) stays: each split
            // would write up to n rows.
            if plan.sort_order().is_none()
                && input.name() == "CoalescePartitionsExec"
                && input.fetch().is_none()
                && let [child] = input.children().as_slice()
            {
                input = Arc::clone(child);
            }
            None
        };
        Self::try_new(input, plan.sink(), staging.to_string(), single_file)
    }

    /// `sink` is copied (format, options, partition columns); its target does not matter.
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        sink: &dyn DataSink,
        staging: String,
        single_file: Option<String>,
    ) -> Result<Self> {
        let Some(file_sink) = file_sink(sink) else {
            return internal_err!("a distributed write needs a file sink");
        };
        let sink = rebuild_sink(sink, file_sink.config().clone())?;
        if !staging.ends_with('/') {
            return internal_err!("staging directory {staging} must end with /");
        }
        if single_file.is_some() && input.output_partitioning().partition_count() != 1 {
            return internal_err!("a single-file write needs one input partition");
        }
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(write_result_schema()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(Self {
            input,
            sink,
            staging,
            single_file,
            properties,
        })
    }

    /// The plan whose partitions are written, one task each.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    /// The planned sink: every task copies its format, options and partition columns, and writes
    /// to a task directory of its own instead of its target.
    pub fn sink(&self) -> &Arc<dyn DataSink> {
        &self.sink
    }

    /// URL of the staging directory, ending with `/`.
    pub fn staging(&self) -> &str {
        &self.staging
    }

    /// The file name when the whole write is one file; `None` when each task writes a directory
    /// of files.
    pub fn single_file(&self) -> Option<&str> {
        self.single_file.as_deref()
    }

    /// The sink as a plan DataFusion can encode (its input is a placeholder).
    pub fn sink_plan(&self) -> Arc<dyn ExecutionPlan> {
        let placeholder = Arc::new(datafusion::physical_plan::empty::EmptyExec::new(
            self.input.schema(),
        ));
        Arc::new(DataSinkExec::new(placeholder, Arc::clone(&self.sink), None))
    }

    /// A sink like the planned one whose target is `task_dir`.
    fn task_sink(&self, task_dir: &str) -> Result<Arc<dyn DataSink>> {
        let Some(template) = file_sink(self.sink.as_ref()) else {
            return internal_err!("distributed sink without a file sink");
        };
        let (target, mode) = match &self.single_file {
            Some(name) => (format!("{task_dir}{name}"), FileOutputMode::SingleFile),
            None => (task_dir.to_string(), FileOutputMode::Directory),
        };
        let config = FileSinkConfig {
            original_url: target.clone(),
            table_paths: vec![ListingTableUrl::parse(&target)?],
            file_group: Default::default(),
            file_output_mode: mode,
            ..template.config().clone()
        };
        rebuild_sink(self.sink.as_ref(), config)
    }
}

/// A sink of the same format and options as `sink`, writing as `config` says.
fn rebuild_sink(sink: &dyn DataSink, config: FileSinkConfig) -> Result<Arc<dyn DataSink>> {
    Ok(if let Some(sink) = sink.downcast_ref::<ParquetSink>() {
        Arc::new(ParquetSink::new(config, sink.parquet_options().clone()))
    } else if let Some(sink) = sink.downcast_ref::<CsvSink>() {
        Arc::new(CsvSink::new(config, sink.writer_options().clone()))
    } else if let Some(sink) = sink.downcast_ref::<JsonSink>() {
        Arc::new(JsonSink::new(config, sink.writer_options().clone()))
    } else {
        return internal_err!("unexpected sink in a distributed write");
    })
}

/// The file sink (parquet, csv, json) behind a DataFusion sink, if it is one.
pub fn file_sink(sink: &dyn DataSink) -> Option<&dyn FileSink> {
    if let Some(sink) = sink.downcast_ref::<ParquetSink>() {
        return Some(sink);
    }
    if let Some(sink) = sink.downcast_ref::<CsvSink>() {
        return Some(sink);
    }
    sink.downcast_ref::<JsonSink>().map(|s| s as &dyn FileSink)
}

struct DisplayableSink<'a>(&'a dyn DataSink);

impl fmt::Display for DisplayableSink<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_as(DisplayFormatType::Default, f)
    }
}

impl DisplayAs for DistributedSinkExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DistributedSinkExec: staging={}, ", self.staging)?;
        if let Some(name) = &self.single_file {
            write!(f, "file={name}, ")?;
        }
        self.sink.fmt_as(t, f)
    }
}

impl ExecutionPlan for DistributedSinkExec {
    fn name(&self) -> &'static str {
        "DistributedSinkExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = children.as_slice() else {
            return internal_err!("DistributedSinkExec takes one input");
        };
        Ok(Arc::new(Self::try_new(
            Arc::clone(input),
            self.sink.as_ref(),
            self.staging.clone(),
            self.single_file.clone(),
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition >= self.input.output_partitioning().partition_count() {
            return exec_err!("DistributedSinkExec has no partition {partition}");
        }
        // A fresh directory per attempt: a retried task never mixes with its predecessor.
        let task_dir = format!(
            "{}task-{partition}-{:016x}/",
            self.staging,
            crate::ids::rand_u64()
        );
        let sink = self.task_sink(&task_dir)?;
        // One file per task unless a file grows past the configured row limit.
        let mut config = context.session_config().clone();
        config
            .options_mut()
            .set("datafusion.execution.minimum_parallel_output_files", "1")?;
        let context = Arc::new(TaskContext::new(
            context.task_id(),
            context.session_id(),
            config,
            context.scalar_functions().clone(),
            context.higher_order_functions().clone(),
            context.aggregate_functions().clone(),
            context.window_functions().clone(),
            context.runtime_env(),
        ));
        let data = execute_input_stream(
            Arc::clone(&self.input),
            Arc::clone(sink.schema()),
            partition,
            Arc::clone(&context),
        )?;
        let staging = ListingTableUrl::parse(&self.staging)?;
        let task_url = ListingTableUrl::parse(&task_dir)?;
        let stream = futures::stream::once(async move {
            let rows = sink.write_all(data, &context).await?;
            let store = context
                .runtime_env()
                .object_store(task_url.object_store())?;
            let staged: Vec<_> = store
                .list(Some(task_url.prefix()))
                .try_collect()
                .await
                .map_err(datafusion::error::DataFusionError::from)?;
            let base = staging.prefix().as_ref();
            let mut files = ListBuilder::new(StringBuilder::new());
            for meta in staged {
                let path = meta.location.as_ref();
                let relative = path
                    .strip_prefix(base)
                    .map(|p| p.trim_start_matches('/'))
                    .unwrap_or(path);
                files.values().append_value(relative);
            }
            files.append(true);
            Ok(RecordBatch::try_new(
                write_result_schema(),
                vec![
                    Arc::new(UInt64Array::from(vec![rows])),
                    Arc::new(files.finish()),
                ],
            )?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            write_result_schema(),
            stream,
        )))
    }
}
