//! Cutting a physical plan into a graph of shuffle-bounded stages.
//!
//! ```text
//!   single-node plan                          stage graph
//!   SortPreservingMergeExec                   stage 2 (result, 1 task)
//!     SortExec                                  ShuffleWriterExec single
//!       AggregateExec final                       SortPreservingMergeExec
//!         RepartitionExec hash(k) ──cut──►          ShuffleReaderExec stage 1, per map
//!           AggregateExec partial             stage 1 (gather input, 4 tasks)
//!             DataSourceExec                    ShuffleWriterExec single
//!                                                 SortExec / AggregateExec final
//!                                                   ShuffleReaderExec stage 0, hash
//!                                             stage 0 (shuffle, 4 tasks)
//!                                               ShuffleWriterExec hash(k)
//!                                                 AggregateExec partial / DataSourceExec
//! ```

use std::fmt::Write as _;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::physical_expr::{EquivalenceProperties, LexOrdering, Partitioning};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PartitionMode,
};
use datafusion::physical_plan::recursive_query::RecursiveQueryExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, displayable};

use crate::ids::{QueryId, StageId};
use crate::runtime_filter::{RuntimeFilter, has_predicate, join_filter, largest_scan_rows};
use crate::shuffle::{ReadMode, ShuffleReaderExec, ShuffleWriterExec};

/// What a stage's output is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    /// Hash- (or round-robin-) partitioned for the next stage's tasks.
    Shuffle,
    /// Merged into one partition by the next stage.
    Gather,
    /// The build side of a join, read whole by every task of the next stage.
    Broadcast,
    /// The query's answer, streamed to the client.
    Result,
}

impl StageKind {
    /// The lower-case name shown by `EXPLAIN DISTRIBUTED` and the scheduler's snapshot.
    pub fn as_str(&self) -> &'static str {
        match self {
            StageKind::Shuffle => "shuffle",
            StageKind::Gather => "gather",
            StageKind::Broadcast => "broadcast",
            StageKind::Result => "result",
        }
    }
}

/// One stage: a plan fragment rooted at a [`ShuffleWriterExec`], run as one task per partition.
#[derive(Debug, Clone)]
pub struct Stage {
    /// The stage's index in [`StageGraph::stages`].
    pub id: StageId,
    /// What the output is for, which decides how the next stage reads it.
    pub kind: StageKind,
    /// The fragment, rooted at its [`ShuffleWriterExec`]. Its [`ShuffleReaderExec`] leaves have no
    /// map locations yet; each task's copy gets them when the task is launched.
    pub plan: Arc<dyn ExecutionPlan>,
    /// The stages whose outputs this one reads, in plan order, then the build stages of its
    /// runtime filters.
    pub inputs: Vec<StageId>,
    /// Filters its output may take from the build side of the shuffled join that reads it,
    /// once that side's stage has run (`runtime_filter`).
    pub runtime_filters: Vec<RuntimeFilter>,
}

impl Stage {
    /// One task per partition of the fragment.
    pub fn num_tasks(&self) -> usize {
        self.plan.output_partitioning().partition_count()
    }

    /// The writer at the root of the fragment.
    pub fn writer(&self) -> &ShuffleWriterExec {
        self.plan
            .downcast_ref::<ShuffleWriterExec>()
            .expect("every stage is rooted at a ShuffleWriterExec (built by StageGraph)")
    }

    /// How many output partitions each task of this stage writes.
    pub fn num_output_partitions(&self) -> usize {
        self.writer().num_output_partitions()
    }
}

/// A query's stages in topological order: every stage comes after its inputs, and the last stage
/// produces the result.
#[derive(Debug, Clone)]
pub struct StageGraph {
    /// The query whose plan was cut; its id names the query's shuffle files on every executor.
    pub query_id: QueryId,
    /// Indexed by [`StageId`]: every stage after its inputs, the result stage last.
    pub stages: Vec<Stage>,
}

impl StageGraph {
    /// Cuts an optimized physical plan into stages.
    pub fn try_new(query_id: QueryId, plan: Arc<dyn ExecutionPlan>) -> Result<Self> {
        let mut cutter = Cutter {
            query_id: query_id.clone(),
            stages: vec![],
        };
        let root = cutter.cut(crate::joins::distribute_joins(plan)?)?;
        cutter.add_stage(root, None, StageKind::Result)?;
        plan_runtime_filters(&mut cutter.stages)?;
        Ok(Self {
            query_id,
            stages: cutter.stages,
        })
    }

    /// The stage with id `id`; panics if the graph has none.
    pub fn stage(&self, id: StageId) -> &Stage {
        &self.stages[id.0 as usize]
    }

    /// The last stage, which streams the query's answer.
    pub fn result_stage(&self) -> &Stage {
        self.stages
            .last()
            .expect("a stage graph always has a result stage")
    }

    /// Drops every runtime filter, and the waits for build stages they added: for sessions
    /// that turned them off.
    pub fn drop_runtime_filters(&mut self) {
        for stage in &mut self.stages {
            let builds: Vec<StageId> = stage.runtime_filters.drain(..).map(|f| f.build).collect();
            stage.inputs.retain(|input| !builds.contains(input));
        }
    }

    /// The stages that read the output of `id`.
    pub fn consumers(&self, id: StageId) -> impl Iterator<Item = &Stage> {
        self.stages.iter().filter(move |s| s.inputs.contains(&id))
    }

    /// Replaces stage `id`'s plan by one adaptive execution re-planned, which may run another
    /// number of tasks: the stages reading its output are told how many map tasks it has now.
    pub fn replace_plan(&mut self, id: StageId, plan: Arc<dyn ExecutionPlan>) -> Result<()> {
        let num_maps = plan.output_partitioning().partition_count();
        let mut consumers = vec![];
        for stage in self.stages.iter().filter(|s| s.inputs.contains(&id)) {
            let plan = Arc::clone(&stage.plan)
                .transform_up(|node| match node.downcast_ref::<ShuffleReaderExec>() {
                    Some(reader) if reader.stage_id() == id => {
                        let reader: Arc<dyn ExecutionPlan> =
                            Arc::new(reader.with_num_maps(num_maps)?);
                        Ok(Transformed::yes(reader))
                    }
                    _ => Ok(Transformed::no(node)),
                })?
                .data;
            consumers.push((stage.id, plan));
        }
        // Nothing changes unless every consumer could be re-planned.
        self.stages[id.0 as usize].plan = plan;
        for (consumer, plan) in consumers {
            self.stages[consumer.0 as usize].plan = plan;
        }
        Ok(())
    }

    /// Human-readable rendering used by `EXPLAIN DISTRIBUTED` and the snapshot tests.
    pub fn display(&self) -> String {
        let mut out = String::new();
        for stage in self.stages.iter().rev() {
            let inputs = if stage.inputs.is_empty() {
                "none".to_string()
            } else {
                let ids: Vec<String> = stage.inputs.iter().map(|s| s.to_string()).collect();
                ids.join(", ")
            };
            let output = match stage.writer().output_partitioning() {
                Some(p) => format!("{p}"),
                None => "single".to_string(),
            };
            let filters = if stage.runtime_filters.is_empty() {
                String::new()
            } else {
                let ids: Vec<String> = stage
                    .runtime_filters
                    .iter()
                    .map(|f| f.build.to_string())
                    .collect();
                format!(" runtime_filters_from=[{}]", ids.join(", "))
            };
            let _ = writeln!(
                out,
                "Stage {} [{}] tasks={} output={} inputs=[{}]{filters}",
                stage.id,
                stage.kind.as_str(),
                stage.num_tasks(),
                output,
                inputs
            );
            for line in displayable(stage.plan.as_ref())
                .indent(false)
                .to_string()
                .lines()
            {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }
}

struct Cutter {
    query_id: QueryId,
    stages: Vec<Stage>,
}

impl Cutter {
    /// Walks bottom-up, replacing exchanges by readers of new stages. Hand-written rather than
    /// `transform_up` because recursive queries must stay whole: their work table lives in memory.
    fn cut(&mut self, plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        if plan.is::<RecursiveQueryExec>() {
            return Ok(plan);
        }
        let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
        let plan = if children.is_empty() {
            plan
        } else {
            let mut new_children = Vec::with_capacity(children.len());
            for child in children {
                new_children.push(self.cut(child)?);
            }
            replace_children_if_necessary(plan, new_children)?
        };

        if let Some(repartition) = plan.downcast_ref::<RepartitionExec>() {
            return self.cut_shuffle(repartition);
        }
        let merges = plan.is::<CoalescePartitionsExec>() || plan.is::<SortPreservingMergeExec>();
        if merges && plan.children()[0].output_partitioning().partition_count() > 1 {
            let input = Arc::clone(plan.children()[0]);
            let reader = self.cut_gather(input)?;
            return replace_children_if_necessary(plan, vec![reader]);
        }
        self.label_broadcast(&plan);
        Ok(plan)
    }

    fn cut_shuffle(&mut self, repartition: &RepartitionExec) -> Result<Arc<dyn ExecutionPlan>> {
        let input = Arc::clone(repartition.input());
        let partitioning = repartition.partitioning().clone();
        let num_maps = input.output_partitioning().partition_count();
        let num_partitions = partitioning.partition_count();
        let stage_id = self.add_stage(input, Some(partitioning.clone()), StageKind::Shuffle)?;
        let mut equivalence = repartition.properties().equivalence_properties().clone();
        let ordering = equivalence.output_ordering();
        if repartition.preserve_order() {
            // Blocks are concatenated, not merged: drop the claim and re-sort each partition.
            equivalence = EquivalenceProperties::new(repartition.schema());
        }
        let reader: Arc<dyn ExecutionPlan> = Arc::new(ShuffleReaderExec::new(
            self.query_id.clone(),
            stage_id,
            ReadMode::Shuffle { num_partitions },
            num_maps,
            equivalence,
            partitioning,
        ));
        match ordering {
            Some(ordering) if repartition.preserve_order() => Ok(resort(ordering, reader)),
            _ => Ok(reader),
        }
    }

    fn cut_gather(&mut self, input: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        let num_maps = input.output_partitioning().partition_count();
        let equivalence = input.equivalence_properties().clone();
        let stage_id = self.add_stage(input, None, StageKind::Gather)?;
        Ok(Arc::new(ShuffleReaderExec::new(
            self.query_id.clone(),
            stage_id,
            ReadMode::PerMap,
            num_maps,
            equivalence,
            Partitioning::UnknownPartitioning(num_maps),
        )))
    }

    /// A gather feeding the collected side of a join is a broadcast: every task reads all of it.
    fn label_broadcast(&mut self, plan: &Arc<dyn ExecutionPlan>) {
        let collected_left = plan
            .downcast_ref::<HashJoinExec>()
            .is_some_and(|j| *j.partition_mode() == PartitionMode::CollectLeft)
            || plan.is::<CrossJoinExec>()
            || plan.is::<NestedLoopJoinExec>();
        if !collected_left {
            return;
        }
        let left = plan.children()[0];
        let Some(coalesce) = left.downcast_ref::<CoalescePartitionsExec>() else {
            return;
        };
        if let Some(reader) = coalesce.input().downcast_ref::<ShuffleReaderExec>() {
            self.stages[reader.stage_id().0 as usize].kind = StageKind::Broadcast;
        }
    }

    fn add_stage(
        &mut self,
        input: Arc<dyn ExecutionPlan>,
        partitioning: Option<Partitioning>,
        kind: StageKind,
    ) -> Result<StageId> {
        let id = StageId(self.stages.len() as u32);
        let inputs = input_stages(&input)?;
        let writer = ShuffleWriterExec::try_new(input, self.query_id.clone(), id, partitioning)?;
        // The answer streams to the coordinator while it is computed.
        let writer = if kind == StageKind::Result {
            writer.with_live_output()?
        } else {
            writer
        };
        self.stages.push(Stage {
            id,
            kind,
            plan: Arc::new(writer),
            inputs,
            runtime_filters: vec![],
        });
        Ok(id)
    }
}

/// Gives each stage that a shuffled join reads as its probe side a runtime filter from the
/// join's build stage when that stage is filtered, and makes it wait for that stage. `stages`
/// are in id order, every stage after its inputs; a build stage always precedes its probe
/// stage (it is cut first), so the order stays one.
fn plan_runtime_filters(stages: &mut [Stage]) -> Result<()> {
    let mut found: Vec<(StageId, RuntimeFilter)> = vec![];
    for stage in stages.iter() {
        stage.plan.apply(|node| {
            if let Some(join) = node.downcast_ref::<HashJoinExec>()
                && let Some(filter) = join_filter(join)
            {
                found.push(filter);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
    }
    if found.is_empty() {
        return Ok(());
    }
    // In id order, every stage after its inputs: whether it or a stage it reads filters rows.
    let mut filtered: Vec<bool> = Vec::with_capacity(stages.len());
    // ...and the rows of the largest table it or a stage it reads scans.
    let mut source_rows: Vec<Option<u64>> = Vec::with_capacity(stages.len());
    for stage in stages.iter() {
        let reads_filtered = stage.inputs.iter().any(|input| filtered[input.0 as usize]);
        filtered.push(reads_filtered || has_predicate(&stage.plan)?);
        let read = stage
            .inputs
            .iter()
            .map(|input| source_rows[input.0 as usize]);
        source_rows.push(read.fold(largest_scan_rows(&stage.plan)?, Ord::max));
    }
    for (probe, mut filter) in found {
        if filter.build >= probe || !filtered[filter.build.0 as usize] {
            continue;
        }
        let stage = &mut stages[probe.0 as usize];
        if stage.kind != StageKind::Shuffle || stage.inputs.contains(&filter.build) {
            continue;
        }
        filter.build_source_rows = source_rows[filter.build.0 as usize];
        stage.inputs.push(filter.build);
        stage.runtime_filters.push(filter);
    }
    Ok(())
}

fn resort(ordering: LexOrdering, input: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    Arc::new(SortExec::new(ordering, input).with_preserve_partitioning(true))
}

/// The stages read by a fragment, in plan order, without duplicates.
fn input_stages(plan: &Arc<dyn ExecutionPlan>) -> Result<Vec<StageId>> {
    let mut inputs = vec![];
    plan.apply(|node| {
        if let Some(reader) = node.downcast_ref::<ShuffleReaderExec>()
            && !inputs.contains(&reader.stage_id())
        {
            inputs.push(reader.stage_id());
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(inputs)
}
