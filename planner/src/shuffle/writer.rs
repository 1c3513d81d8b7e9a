//! `ShuffleWriterExec`: the root of every stage; writes one task's output to local IPC files.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, UInt32Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::repartition::BatchPartitioner;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::TryStreamExt;
use tokio::sync::mpsc::error::SendTimeoutError;

use super::seal::{Checksummed, finish_sealed};
use super::{
    BudgetedFile, DiskBudget, LiveItem, LiveWriter, OVERFLOW_AFTER, Overflow, ShuffleBlock,
    ShuffleCompression, ShuffleEnv, map_attempt_dir,
};
use crate::ids::{QueryId, StageId};

/// The shuffle writer's metric of the time spent writing map output files: encoding, writing,
/// committing (partitioning the rows is `repart_time`).
pub(crate) const WRITE_TIME: &str = "write_time";

/// What one map task's write buffers may hold together.
const WRITE_BUFFERS_BYTES: usize = 4 << 20;

static MAP_OUTPUT_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("output_partition", DataType::UInt32, false),
        Field::new("num_rows", DataType::UInt64, false),
        Field::new("num_bytes", DataType::UInt64, false),
    ]))
});

/// The schema of what a [`ShuffleWriterExec`] returns: one row per output partition written.
pub fn map_output_schema() -> SchemaRef {
    Arc::clone(&MAP_OUTPUT_SCHEMA)
}

/// Runs one partition of its input and writes the rows to `num_output_partitions` Arrow IPC files,
/// hash- or round-robin-partitioned as the downstream stage needs (or all in one file).
#[derive(Debug)]
pub struct ShuffleWriterExec {
    input: Arc<dyn ExecutionPlan>,
    query_id: QueryId,
    stage_id: StageId,
    /// `None`: each task writes a single output partition (gather, broadcast and result stages).
    output_partitioning: Option<Partitioning>,
    /// Streams the single output to its reader instead of writing a file (the result stage).
    live: bool,
    metrics: ExecutionPlanMetricsSet,
    cache: Arc<PlanProperties>,
}

impl ShuffleWriterExec {
    /// A writer at the root of stage `stage_id`. `output_partitioning` must be hash or round-robin,
    /// or `None` for a single output per task; anything else is a planning error.
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        query_id: QueryId,
        stage_id: StageId,
        output_partitioning: Option<Partitioning>,
    ) -> Result<Self> {
        if let Some(p) = &output_partitioning
            && !matches!(p, Partitioning::Hash(..) | Partitioning::RoundRobinBatch(_))
        {
            return Err(DataFusionError::Plan(format!(
                "shuffle writer cannot partition by {p}"
            )));
        }
        let cache = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(map_output_schema()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(Self {
            input,
            query_id,
            stage_id,
            output_partitioning,
            live: false,
            metrics: ExecutionPlanMetricsSet::new(),
            cache,
        })
    }

    /// This writer hands its single output to a live reader rather than to a file.
    pub fn with_live_output(mut self) -> Result<Self> {
        if self.output_partitioning.is_some() {
            return Err(DataFusionError::Plan(
                "only a single-output shuffle writer can stream live".into(),
            ));
        }
        self.live = true;
        Ok(self)
    }

    /// Whether the single output streams to a live reader (the result stage) instead of a file.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// The stage's fragment below the writer.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    /// The query whose shuffle directory the files go to.
    pub fn query_id(&self) -> &QueryId {
        &self.query_id
    }

    /// The stage this writer is the root of.
    pub fn stage_id(&self) -> StageId {
        self.stage_id
    }

    /// How rows are split among output partitions; `None` when each task writes a single output.
    pub fn output_partitioning(&self) -> Option<&Partitioning> {
        self.output_partitioning.as_ref()
    }

    /// How many files each task of this stage writes.
    pub fn num_output_partitions(&self) -> usize {
        self.output_partitioning
            .as_ref()
            .map_or(1, |p| p.partition_count())
    }
}

impl DisplayAs for ShuffleWriterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match &self.output_partitioning {
            Some(p) => write!(
                f,
                "ShuffleWriterExec: stage={}, partitioning={p}",
                self.stage_id
            ),
            None if self.live => write!(f, "ShuffleWriterExec: stage={}, live", self.stage_id),
            None => write!(f, "ShuffleWriterExec: stage={}, single", self.stage_id),
        }
    }
}

impl ExecutionPlan for ShuffleWriterExec {
    fn name(&self) -> &str {
        "ShuffleWriterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        let mut recursion = TreeNodeRecursion::Continue;
        if let Some(Partitioning::Hash(exprs, _)) = &self.output_partitioning {
            for expr in exprs {
                recursion = f(expr)?;
                if recursion == TreeNodeRecursion::Stop {
                    break;
                }
            }
        }
        Ok(recursion)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "ShuffleWriterExec takes exactly one child".into(),
            ));
        }
        let writer = Self::try_new(
            children.swap_remove(0),
            self.query_id.clone(),
            self.stage_id,
            self.output_partitioning.clone(),
        )?;
        Ok(Arc::new(if self.live {
            writer.with_live_output()?
        } else {
            writer
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let env = context
            .session_config()
            .get_extension::<ShuffleEnv>()
            .ok_or_else(|| {
                DataFusionError::Internal("shuffle writer runs without a ShuffleEnv".into())
            })?;
        let num_input_partitions = self.input.output_partitioning().partition_count();
        let partitioner = match &self.output_partitioning {
            Some(p) => Some(BatchPartitioner::try_new(
                p.clone(),
                MetricBuilder::new(&self.metrics).subset_time("repart_time", partition),
                partition,
                num_input_partitions,
            )?),
            None => None,
        };
        let dir = map_attempt_dir(
            &env.work_dir,
            &self.query_id,
            self.stage_id,
            partition as u32,
            env.attempt,
        );
        let output = MapOutput {
            block: ShuffleBlock {
                query_id: self.query_id.clone(),
                stage_id: self.stage_id,
                map_partition: partition as u32,
                attempt: env.attempt,
                output_partition: 0,
            },
            work_dir: env.work_dir.clone(),
            dir,
            num_outputs: self.num_output_partitions(),
            disk: Arc::clone(&env.disk),
            compression: env.compression,
        };
        let input = self.input.execute(partition, context)?;
        if self.live {
            let writer = env.live.sender(&output.block).ok_or_else(|| {
                DataFusionError::Execution(format!(
                    "live block {:?} is taken or its query was released",
                    output.block
                ))
            })?;
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                map_output_schema(),
                futures::stream::once(stream_live(input, writer, output)),
            )));
        }
        // Time spent writing files (Spark's shuffle write time), partitioning aside.
        let write_time = MetricBuilder::new(&self.metrics).subset_time(WRITE_TIME, partition);
        let fut = output.write(input, partitioner, write_time);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            map_output_schema(),
            futures::stream::once(fut),
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// Hands every batch to the live reader. A reader that leaves the channel full for
/// [`OVERFLOW_AFTER`] does not hold the task (and its slot) back: the rest of the partition goes
/// to an overflow file in the task's work dir, which the reader reads after the channel.
async fn stream_live(
    mut input: SendableRecordBatchStream,
    writer: LiveWriter,
    output: MapOutput,
) -> Result<RecordBatch> {
    let LiveWriter { tx, overflow } = writer;
    let schema = input.schema();
    let (mut rows, mut bytes) = (0u64, 0u64);
    let mut file = None;
    let streamed: Result<()> = async {
        while let Some(batch) = input.try_next().await? {
            rows += batch.num_rows() as u64;
            bytes += batch.get_array_memory_size() as u64;
            let batch = compact_views(batch)?;
            if let Some(file) = file.as_mut() {
                if tx.is_closed() {
                    return Err(reader_gone());
                }
                output.write_overflow(file, &batch)?;
                continue;
            }
            match tx
                .send_timeout(Ok(LiveItem::Batch(batch)), OVERFLOW_AFTER)
                .await
            {
                Ok(()) => {}
                Err(SendTimeoutError::Closed(_)) => return Err(reader_gone()),
                Err(SendTimeoutError::Timeout(item)) => {
                    let mut opened = output.open_overflow(&schema)?;
                    if let Ok(LiveItem::Batch(batch)) = item {
                        output.write_overflow(&mut opened, &batch)?;
                    }
                    file = Some(opened);
                }
            }
        }
        Ok(())
    }
    .await;
    let ended: Result<()> = match (streamed, file) {
        (Ok(()), Some(file)) => output.finish_overflow(file, &overflow),
        (Ok(()), None) => match tx.send_timeout(Ok(LiveItem::End), OVERFLOW_AFTER).await {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Closed(_)) => Err(reader_gone()),
            // No room for the end: an empty overflow file says it.
            Err(SendTimeoutError::Timeout(_)) => output
                .open_overflow(&schema)
                .and_then(|file| output.finish_overflow(file, &overflow)),
        },
        (Err(error), _) => Err(error),
    };
    if let Err(error) = ended {
        // The reader learns why: through the channel if it has room, else after draining it.
        let message = error.to_string();
        if tx
            .try_send(Err(DataFusionError::Execution(message.clone())))
            .is_err()
        {
            overflow.failed(message);
        }
        return Err(error);
    }
    Ok(RecordBatch::try_new(
        map_output_schema(),
        vec![
            Arc::new(UInt32Array::from(vec![0u32])),
            Arc::new(UInt64Array::from(vec![rows])),
            Arc::new(UInt64Array::from(vec![bytes])),
        ],
    )?)
}

fn reader_gone() -> DataFusionError {
    DataFusionError::Execution("the reader of the query result went away".into())
}

/// String and binary views of a sliced or filtered batch still point into the whole original data
/// buffers, which IPC would write out in full for every piece; copy out just the referenced bytes.
///
/// Nested columns (lists, maps, structs of them) of a sliced batch are copied too: their offsets
/// then start at zero, which is how IPC readers on the other side check them.
pub(crate) fn compact_views(batch: RecordBatch) -> Result<RecordBatch> {
    let needs_copy = batch.schema().fields().iter().any(|f| {
        matches!(f.data_type(), DataType::Utf8View | DataType::BinaryView)
            || f.data_type().is_nested()
    });
    if !needs_copy {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .map(|column| -> Result<ArrayRef> {
            Ok(match column.data_type() {
                DataType::Utf8View => Arc::new(column.as_string_view().gc()),
                DataType::BinaryView => Arc::new(column.as_binary_view().gc()),
                nested if nested.is_nested() => {
                    datafusion::arrow::compute::concat(&[column.as_ref()])?
                }
                _ => Arc::clone(column),
            })
        })
        .collect::<Result<_>>()?;
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// The overflow file of a live block, while it is written.
struct OverflowFile {
    writer: FileWriter<Checksummed<BufWriter<BudgetedFile>>>,
    path: PathBuf,
}

/// The files of one map attempt while they are written.
struct MapOutput {
    block: ShuffleBlock,
    work_dir: PathBuf,
    dir: PathBuf,
    num_outputs: usize,
    disk: Arc<DiskBudget>,
    compression: ShuffleCompression,
}

impl MapOutput {
    async fn write(
        self,
        input: SendableRecordBatchStream,
        partitioner: Option<BatchPartitioner>,
        write_time: Time,
    ) -> Result<RecordBatch> {
        // A write beyond the disk budget fails typed (`Error::DiskFull`, inside the I/O error).
        self.write_files(input, partitioner, write_time).await
    }

    /// The overflow file of a live block whose reader fell behind.
    fn open_overflow(&self, schema: &SchemaRef) -> Result<OverflowFile> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join("result-overflow.arrow");
        let file = BudgetedFile {
            file: File::create(&path)?,
            budget: Arc::clone(&self.disk),
            query: self.block.query_id.clone(),
        };
        let writer = FileWriter::try_new(Checksummed::new(BufWriter::new(file)), schema)?;
        Ok(OverflowFile { writer, path })
    }

    fn write_overflow(&self, file: &mut OverflowFile, batch: &RecordBatch) -> Result<()> {
        file.writer.write(batch).map_err(Into::into)
    }

    /// Completes the file and hands it to the reader.
    fn finish_overflow(&self, mut file: OverflowFile, overflow: &Overflow) -> Result<()> {
        finish_sealed(&mut file.writer).map_err(DataFusionError::from)?;
        overflow.complete(file.path);
        Ok(())
    }

    async fn write_files(
        self,
        mut input: SendableRecordBatchStream,
        mut partitioner: Option<BatchPartitioner>,
        write_time: Time,
    ) -> Result<RecordBatch> {
        let schema = input.schema();
        let opening = write_time.timer();
        std::fs::create_dir_all(&self.dir)?;
        let mut files = Vec::with_capacity(self.num_outputs);
        // IPC writes each array buffer on its own: a buffer per file that holds several batches
        // saves most write calls, within a few MiB per task however many files it writes.
        let buffer = (WRITE_BUFFERS_BYTES / self.num_outputs.max(1)).clamp(8 << 10, 256 << 10);
        for output_partition in 0..self.num_outputs {
            let final_path = self.block_path(output_partition);
            let tmp_path = final_path.with_extension("arrow.inprogress");
            let file = BudgetedFile {
                file: File::create(&tmp_path)?,
                budget: Arc::clone(&self.disk),
                query: self.block.query_id.clone(),
            };
            let writer = FileWriter::try_new_with_options(
                Checksummed::new(BufWriter::with_capacity(buffer, file)),
                &schema,
                self.compression.write_options()?,
            )?;
            files.push((writer, tmp_path, final_path, 0u64));
        }
        opening.done();
        while let Some(batch) = input.try_next().await? {
            match partitioner.as_mut() {
                Some(partitioner) => partitioner.partition(batch, |i, part| {
                    let _timer = write_time.timer();
                    files[i].3 += part.num_rows() as u64;
                    Ok(files[i].0.write(&compact_views(part)?)?)
                })?,
                None => {
                    let _timer = write_time.timer();
                    files[0].3 += batch.num_rows() as u64;
                    files[0].0.write(&compact_views(batch)?)?;
                }
            }
        }
        let _timer = write_time.timer();
        let mut rows = Vec::with_capacity(files.len());
        let mut bytes = Vec::with_capacity(files.len());
        for (mut writer, tmp_path, final_path, num_rows) in files {
            finish_sealed(&mut writer)?;
            drop(writer);
            // A reader only ever sees complete files: the rename commits this output partition.
            std::fs::rename(&tmp_path, &final_path)?;
            rows.push(num_rows);
            bytes.push(std::fs::metadata(&final_path)?.len());
        }
        let partitions: UInt32Array = (0..self.num_outputs as u32).collect();
        Ok(RecordBatch::try_new(
            map_output_schema(),
            vec![
                Arc::new(partitions),
                Arc::new(UInt64Array::from(rows)),
                Arc::new(UInt64Array::from(bytes)),
            ],
        )?)
    }

    fn block_path(&self, output_partition: usize) -> PathBuf {
        let block = ShuffleBlock {
            output_partition: output_partition as u32,
            ..self.block.clone()
        };
        block.path(&self.work_dir)
    }
}
