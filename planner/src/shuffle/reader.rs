//! `ShuffleReaderExec`: the leaf that stands in for an upstream stage inside a downstream stage.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{StreamExt, TryStreamExt};

use super::{MapOutputLocation, ShuffleBlock, ShuffleEnv, ShuffleError, read_local_block};
use crate::ids::{QueryId, StageId};

/// The shuffle reader's metric of the Arrow bytes it read from map outputs.
pub const SHUFFLE_READ_BYTES: &str = "shuffle_read_bytes";

/// Which map outputs one reader partition consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Hash or round-robin shuffle: reader partition `p` reads output partition `p` of every map
    /// task.
    Shuffle {
        /// The number of reader partitions, equal to the output partitions of every map
        /// task.
        num_partitions: usize,
    },
    /// Gather and broadcast: reader partition `i` reads the single output of map task `i`, so the
    /// operator above (a merge or a coalesce) sees the upstream partitions as they were.
    PerMap,
}

/// Reads the committed map outputs of an upstream stage.
#[derive(Debug)]
pub struct ShuffleReaderExec {
    query_id: QueryId,
    stage_id: StageId,
    schema: SchemaRef,
    mode: ReadMode,
    num_maps: usize,
    /// One entry per map partition of the upstream stage, filled in when a task is launched.
    locations: Vec<MapOutputLocation>,
    metrics: ExecutionPlanMetricsSet,
    cache: Arc<PlanProperties>,
}

impl ShuffleReaderExec {
    /// A reader whose properties mirror those of the exchange it replaces, so the operators above
    /// see the same partitioning and ordering as in the single-node plan.
    pub fn new(
        query_id: QueryId,
        stage_id: StageId,
        mode: ReadMode,
        num_maps: usize,
        equivalence: EquivalenceProperties,
        partitioning: Partitioning,
    ) -> Self {
        let schema = Arc::clone(equivalence.schema());
        let cache = Arc::new(PlanProperties::new(
            equivalence,
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            query_id,
            stage_id,
            schema,
            mode,
            num_maps,
            locations: vec![],
            metrics: ExecutionPlanMetricsSet::new(),
            cache,
        }
    }

    /// A reader as decoded on an executor, with the properties the coordinator planned.
    pub fn decoded(
        query_id: QueryId,
        stage_id: StageId,
        mode: ReadMode,
        num_maps: usize,
        locations: Vec<MapOutputLocation>,
        equivalence: EquivalenceProperties,
        partitioning: Option<Partitioning>,
    ) -> Self {
        let num_partitions = match mode {
            ReadMode::Shuffle { num_partitions } => num_partitions,
            ReadMode::PerMap => num_maps,
        };
        let partitioning = partitioning
            .filter(|p| p.partition_count() == num_partitions)
            .unwrap_or(Partitioning::UnknownPartitioning(num_partitions));
        let mut reader = Self::new(
            query_id,
            stage_id,
            mode,
            num_maps,
            equivalence,
            partitioning,
        );
        reader.locations = locations;
        reader
    }

    /// The same reader, pointing at the given map outputs.
    pub fn with_locations(&self, locations: Vec<MapOutputLocation>) -> Self {
        Self {
            query_id: self.query_id.clone(),
            stage_id: self.stage_id,
            schema: Arc::clone(&self.schema),
            mode: self.mode,
            num_maps: self.num_maps,
            locations,
            metrics: ExecutionPlanMetricsSet::new(),
            cache: Arc::clone(&self.cache),
        }
    }

    /// The query whose shuffle files are read.
    pub fn query_id(&self) -> &QueryId {
        &self.query_id
    }

    /// The upstream stage whose map outputs are read.
    pub fn stage_id(&self) -> StageId {
        self.stage_id
    }

    /// Which blocks each reader partition consumes.
    pub fn mode(&self) -> ReadMode {
        self.mode
    }

    /// The number of map tasks of the upstream stage, so the number of locations a launched task
    /// needs.
    pub fn num_maps(&self) -> usize {
        self.num_maps
    }

    /// One location per upstream map partition; empty in the stage graph, filled in when a task is
    /// launched.
    pub fn locations(&self) -> &[MapOutputLocation] {
        &self.locations
    }

    /// The blocks that reader partition `partition` consumes, in order.
    fn blocks(&self, partition: usize) -> Result<Vec<(MapOutputLocation, ShuffleBlock)>> {
        if self.locations.len() != self.num_maps {
            return Err(DataFusionError::Internal(format!(
                "shuffle reader of stage {} has {} of {} map locations",
                self.stage_id,
                self.locations.len(),
                self.num_maps
            )));
        }
        let block = |loc: &MapOutputLocation, output_partition: usize| ShuffleBlock {
            query_id: self.query_id.clone(),
            stage_id: self.stage_id,
            map_partition: loc.map_partition,
            attempt: loc.attempt,
            output_partition: output_partition as u32,
        };
        Ok(match self.mode {
            ReadMode::Shuffle { .. } => self
                .locations
                .iter()
                .map(|loc| (loc.clone(), block(loc, partition)))
                .collect(),
            ReadMode::PerMap => {
                let loc = &self.locations[partition];
                vec![(loc.clone(), block(loc, 0))]
            }
        })
    }
}

impl DisplayAs for ShuffleReaderExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self.mode {
            ReadMode::Shuffle { num_partitions } => write!(
                f,
                "ShuffleReaderExec: stage={}, maps={}, partitions={num_partitions}",
                self.stage_id, self.num_maps
            ),
            ReadMode::PerMap => write!(
                f,
                "ShuffleReaderExec: stage={}, maps={}, partition per map",
                self.stage_id, self.num_maps
            ),
        }
    }
}

impl ExecutionPlan for ShuffleReaderExec {
    fn name(&self) -> &str {
        "ShuffleReaderExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
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
        if !children.is_empty() {
            return Err(DataFusionError::Internal(
                "ShuffleReaderExec has no children".into(),
            ));
        }
        Ok(self)
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
                DataFusionError::Internal("shuffle reader runs without a ShuffleEnv".into())
            })?;
        let blocks = self.blocks(partition)?;
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        // Arrow bytes of the batches read from map outputs (Spark's shuffle read).
        let bytes_read = MetricBuilder::new(&self.metrics).counter(SHUFFLE_READ_BYTES, partition);
        let schema = Arc::clone(&self.schema);
        // The next block is opened while the current one is read.
        let stream = futures::stream::iter(blocks)
            .map(move |(location, block)| {
                let env = Arc::clone(&env);
                let schema = Arc::clone(&schema);
                async move { open_block(&env, &location, block, schema).await }
            })
            .buffered(2)
            .try_flatten()
            .inspect_ok(move |batch| {
                output_rows.add(batch.num_rows());
                bytes_read.add(batch.get_array_memory_size());
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// Opens one block: from the local disk when this executor wrote it, else through the fetcher.
async fn open_block(
    env: &ShuffleEnv,
    location: &MapOutputLocation,
    block: ShuffleBlock,
    schema: SchemaRef,
) -> Result<SendableRecordBatchStream> {
    if location.executor_id == env.executor_id {
        let path = block.path(&env.work_dir);
        return read_local_block(&path).map_err(|e| {
            DataFusionError::External(Box::new(ShuffleError::FetchFailed {
                executor_id: location.executor_id.clone(),
                stage_id: block.stage_id,
                map_partition: block.map_partition,
                map_attempt: block.attempt,
                message: e.to_string(),
            }))
        });
    }
    if !location.host_key.is_empty()
        && location.host_key == env.host_key
        && env
            .peers
            .is_work_dir_of(&location.work_dir, &location.executor_id)
    {
        // Another executor on this machine, whose work dir names it: its committed file is
        // readable here. If it is not (a different mount namespace, say), Flight still is.
        if let Ok(stream) = read_local_block(&block.path(&location.work_dir)) {
            return Ok(stream);
        }
    }
    env.fetcher.fetch(location, block, schema).await
}
