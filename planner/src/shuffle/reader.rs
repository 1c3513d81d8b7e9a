//! `ShuffleReaderExec`: the leaf that stands in for an upstream stage inside a downstream stage.

use std::ops::Range;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{Stream, StreamExt, TryStreamExt};

use super::{MapOutputLocation, ShuffleBlock, ShuffleEnv, ShuffleError, read_local_block};
use crate::ids::{QueryId, StageId};

/// The shuffle reader's metric of the Arrow bytes it read from map outputs.
pub const SHUFFLE_READ_BYTES: &str = "shuffle_read_bytes";

/// The shuffle reader's metric of the time the operator above it waited for its next batch:
/// opening, fetching and decoding map outputs, less what overlapped with the work above.
pub(crate) const FETCH_WAIT_TIME: &str = "fetch_wait_time";

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

/// What one reader partition reads once adaptive execution has re-planned its stage: output
/// partitions `partitions` of map tasks `maps` (Spark's `ShufflePartitionSpec`). Several
/// partitions with all maps are coalesced partitions; one partition with some of the maps is a
/// slice of a skewed partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadSpec {
    /// The upstream stage's output partitions read, in order.
    pub partitions: Range<u32>,
    /// The map tasks whose blocks of those partitions are read.
    pub maps: Range<u32>,
}

impl ReadSpec {
    /// Output partitions `partitions` of every one of `num_maps` map tasks.
    pub fn whole(partitions: Range<u32>, num_maps: usize) -> Self {
        Self {
            partitions,
            maps: 0..num_maps as u32,
        }
    }
}

/// Reads the committed map outputs of an upstream stage.
#[derive(Debug)]
pub struct ShuffleReaderExec {
    query_id: QueryId,
    stage_id: StageId,
    schema: SchemaRef,
    mode: ReadMode,
    num_maps: usize,
    /// Set by adaptive execution (shuffle mode only): reader partition `i` reads `specs[i]`
    /// instead of output partition `i` of every map.
    specs: Option<Arc<[ReadSpec]>>,
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
            specs: None,
            locations: vec![],
            metrics: ExecutionPlanMetricsSet::new(),
            cache,
        }
    }

    /// A reader as decoded on an executor, with the properties the coordinator planned.
    /// `specs` (adaptive execution's plan of its partitions, shuffle mode only) are checked
    /// against the upstream stage's partitions and maps.
    #[allow(clippy::too_many_arguments)]
    pub fn decoded(
        query_id: QueryId,
        stage_id: StageId,
        mode: ReadMode,
        num_maps: usize,
        specs: Option<Vec<ReadSpec>>,
        locations: Vec<MapOutputLocation>,
        equivalence: EquivalenceProperties,
        partitioning: Option<Partitioning>,
    ) -> Result<Self> {
        let num_partitions = match (&specs, mode) {
            (Some(specs), ReadMode::Shuffle { num_partitions }) => {
                check_specs(specs, num_partitions, num_maps)?;
                specs.len()
            }
            (Some(_), ReadMode::PerMap) => {
                return Err(DataFusionError::Internal(
                    "a reader of one map output per partition has no read specs".into(),
                ));
            }
            (None, ReadMode::Shuffle { num_partitions }) => num_partitions,
            (None, ReadMode::PerMap) => num_maps,
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
        reader.specs = specs.map(Arc::from);
        reader.locations = locations;
        Ok(reader)
    }

    /// The same reader, its partitions read as `specs` say (adaptive execution), claiming
    /// `partitioning` (whose partition count must be `specs.len()`).
    pub fn with_specs(&self, specs: Vec<ReadSpec>, partitioning: Partitioning) -> Result<Self> {
        let ReadMode::Shuffle { num_partitions } = self.mode else {
            return Err(DataFusionError::Internal(
                "only a shuffle reader's partitions can be re-planned".into(),
            ));
        };
        check_specs(&specs, num_partitions, self.num_maps)?;
        if partitioning.partition_count() != specs.len() {
            return Err(DataFusionError::Internal(format!(
                "{} read specs claimed as {} partitions",
                specs.len(),
                partitioning.partition_count()
            )));
        }
        let equivalence = self.cache.equivalence_properties().clone();
        let mut reader = Self::new(
            self.query_id.clone(),
            self.stage_id,
            self.mode,
            self.num_maps,
            equivalence,
            partitioning,
        );
        reader.specs = Some(Arc::from(specs));
        Ok(reader)
    }

    /// The same reader of an upstream stage that now runs `num_maps` tasks (adaptive execution
    /// re-planned it). A reader of one map output per partition has as many partitions.
    pub fn with_num_maps(&self, num_maps: usize) -> Result<Self> {
        if self.specs.is_some() {
            return Err(DataFusionError::Internal(
                "a re-planned reader's upstream stage cannot change its tasks".into(),
            ));
        }
        let equivalence = self.cache.equivalence_properties().clone();
        let partitioning = match self.mode {
            ReadMode::Shuffle { .. } => self.cache.partitioning.clone(),
            ReadMode::PerMap => Partitioning::UnknownPartitioning(num_maps),
        };
        Ok(Self::new(
            self.query_id.clone(),
            self.stage_id,
            self.mode,
            num_maps,
            equivalence,
            partitioning,
        ))
    }

    /// How adaptive execution re-planned the reader's partitions, if it did.
    pub fn specs(&self) -> Option<&[ReadSpec]> {
        self.specs.as_deref()
    }

    /// The same reader, pointing at the given map outputs.
    pub fn with_locations(&self, locations: Vec<MapOutputLocation>) -> Self {
        Self {
            query_id: self.query_id.clone(),
            stage_id: self.stage_id,
            schema: Arc::clone(&self.schema),
            mode: self.mode,
            num_maps: self.num_maps,
            specs: self.specs.clone(),
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
        if let Some(specs) = &self.specs {
            let spec = specs.get(partition).ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "shuffle reader of stage {} has no partition {partition}",
                    self.stage_id
                ))
            })?;
            let mut blocks = vec![];
            for output_partition in spec.partitions.clone() {
                for map in spec.maps.clone() {
                    let loc = &self.locations[map as usize];
                    blocks.push((loc.clone(), block(loc, output_partition as usize)));
                }
            }
            return Ok(blocks);
        }
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
            ReadMode::Shuffle { num_partitions } => {
                write!(
                    f,
                    "ShuffleReaderExec: stage={}, maps={}, partitions={num_partitions}",
                    self.stage_id, self.num_maps
                )?;
                match &self.specs {
                    Some(specs) => {
                        write!(f, ", adaptive=[{}]", display_specs(specs, self.num_maps))
                    }
                    None => Ok(()),
                }
            }
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
        // How long the operator above waited for batches (Spark's fetch wait time).
        let wait = MetricBuilder::new(&self.metrics).subset_time(FETCH_WAIT_TIME, partition);
        let schema = Arc::clone(&self.schema);
        // The next block is opened while the current one is read.
        let stream = futures::stream::iter(blocks)
            .map(move |(location, block)| {
                let env = Arc::clone(&env);
                let schema = Arc::clone(&schema);
                async move { open_block(&env, &location, block, schema).await }
            })
            .buffered(2)
            .try_flatten();
        let stream = TimedStream {
            inner: Box::pin(stream),
            wait,
            since: None,
        }
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

/// Checks that `specs` read only partitions and maps the upstream stage has.
fn check_specs(specs: &[ReadSpec], num_partitions: usize, num_maps: usize) -> Result<()> {
    let bad = specs.iter().find(|s| {
        s.partitions.is_empty()
            || s.maps.is_empty()
            || s.partitions.end as usize > num_partitions
            || s.maps.end as usize > num_maps
    });
    match bad {
        Some(spec) => Err(DataFusionError::Internal(format!(
            "read spec {spec:?} outside {num_partitions} partitions of {num_maps} maps"
        ))),
        None if specs.is_empty() => Err(DataFusionError::Internal(
            "a re-planned reader needs at least one read spec".into(),
        )),
        None => Ok(()),
    }
}

/// `0-3 | 4 maps 0-1 | 4 map 2 | 5-7`: each reader partition's output partitions, and the
/// map tasks read when not all of them.
fn display_specs(specs: &[ReadSpec], num_maps: usize) -> String {
    const SHOWN: usize = 16;
    let num_maps = num_maps as u32;
    let mut parts: Vec<String> = specs
        .iter()
        .take(SHOWN)
        .map(|s| {
            let partitions = if s.partitions.len() == 1 {
                s.partitions.start.to_string()
            } else {
                format!("{}-{}", s.partitions.start, s.partitions.end - 1)
            };
            if s.maps.start == 0 && s.maps.end == num_maps {
                partitions
            } else if s.maps.len() == 1 {
                format!("{partitions} map {}", s.maps.start)
            } else {
                format!("{partitions} maps {}-{}", s.maps.start, s.maps.end - 1)
            }
        })
        .collect();
    if specs.len() > SHOWN {
        parts.push(format!("... {} more", specs.len() - SHOWN));
    }
    parts.join(" | ")
}

/// A stream that adds to `wait` the time from each poll for a batch to the poll that returns
/// it (or the end), Pending polls in between included.
struct TimedStream<S> {
    inner: std::pin::Pin<Box<S>>,
    wait: Time,
    since: Option<Instant>,
}

impl<S: Stream> Stream for TimedStream<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        let since = *self.since.get_or_insert_with(Instant::now);
        let polled = self.inner.as_mut().poll_next(cx);
        if polled.is_ready() {
            self.wait.add_duration(since.elapsed());
            self.since = None;
        }
        polled
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
