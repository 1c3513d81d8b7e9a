//! Runtime filters across stages: the probe side of a shuffled join, filtered by the keys of
//! its build side before it is shuffled.
//!
//! A join whose sides are both shuffled (a build side estimated too large to broadcast, or an
//! outer, semi or anti join whose build rows Ember cannot broadcast) moves every probe row
//! through disk and Flight, though only the rows whose keys the build side has can matter. When
//! the build side is filtered (a predicate in its stages), its stage runs before the probe
//! side's; once it proves small (adaptive execution's exact sizes), the probe stage reads all of
//! it and keeps only the rows whose keys it holds before writing them (a semi join within each
//! task), and each task's dynamic filters (`dynamic_filters`) carry the same keys into the probe
//! stage's scans. Spark injects a bloom filter or a semi join where the creating side is
//! selective (`InjectRuntimeFilter`); here the set is exact.
//!
//! ```text
//!  stage J: HashJoinExec (partitioned) of reader(B) and reader(P)
//!
//!  stage P as planned             stage P once B ran and is small
//!    ShuffleWriterExec (keys)       ShuffleWriterExec (keys)
//!      ... scan                       HashJoinExec (collect left, right semi)
//!                                       CoalescePartitionsExec
//!                                         ShuffleReaderExec (B, all of it)
//!                                       ... scan
//! ```

use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{JoinType, NullEquality};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::PhysicalExprRef;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::{ExecutionPlan, StatisticsArgs, StatisticsContext};

use crate::ids::StageId;
use crate::shuffle::{ReadMode, ShuffleReaderExec, ShuffleWriterExec};

/// A filter a stage's output can take from the build side of the shuffled join that reads it
/// (found by `StageGraph::try_new`).
#[derive(Debug, Clone)]
pub struct RuntimeFilter {
    /// The stage whose output is the join's build side; the filtered stage waits for it.
    pub build: StageId,
    /// The join's reader of that stage, whose keys are `build_keys`.
    build_reader: Arc<dyn ExecutionPlan>,
    /// The join keys over the build stage's output...
    build_keys: Vec<PhysicalExprRef>,
    /// ...and over the filtered stage's output.
    probe_keys: Vec<PhysicalExprRef>,
    null_equality: NullEquality,
    /// The rows of the largest table the build stage (or a stage it reads) scans, as the
    /// planner knows them: what the build side's exact rows are a share of.
    pub build_source_rows: Option<u64>,
}

/// The probe stage of a shuffled `join` and the filter its build stage offers it: only for
/// joins whose output no probe row without a matching key changes.
pub(crate) fn join_filter(join: &HashJoinExec) -> Option<(StageId, RuntimeFilter)> {
    let (_, probe_filterable) = join.join_type().on_lr_is_preserved();
    if *join.partition_mode() != PartitionMode::Partitioned || join.null_aware || !probe_filterable
    {
        return None;
    }
    let build = join.left().downcast_ref::<ShuffleReaderExec>()?;
    let probe = join.right().downcast_ref::<ShuffleReaderExec>()?;
    let shuffled = |r: &ShuffleReaderExec| matches!(r.mode(), ReadMode::Shuffle { .. });
    if !shuffled(build) || !shuffled(probe) || build.stage_id() == probe.stage_id() {
        return None;
    }
    Some((
        probe.stage_id(),
        RuntimeFilter {
            build: build.stage_id(),
            build_reader: Arc::clone(join.left()),
            build_keys: join.on().iter().map(|(l, _)| Arc::clone(l)).collect(),
            probe_keys: join.on().iter().map(|(_, r)| Arc::clone(r)).collect(),
            null_equality: join.null_equality(),
            build_source_rows: None,
        },
    ))
}

/// Whether `plan` filters rows by a predicate (a filter, or a scan's): a build side that does
/// may be a small part of what the probe side's keys reach.
pub(crate) fn has_predicate(plan: &Arc<dyn ExecutionPlan>) -> Result<bool> {
    plan.exists(|node| {
        Ok(node.downcast_ref::<FilterExec>().is_some()
            || node
                .downcast_ref::<DataSourceExec>()
                .and_then(|s| s.data_source().downcast_ref::<FileScanConfig>())
                .is_some_and(|config| config.file_source().filter().is_some()))
    })
}

/// The rows of the largest table `plan` scans (DataFusion's statistics: the footers' counts).
pub(crate) fn largest_scan_rows(plan: &Arc<dyn ExecutionPlan>) -> Result<Option<u64>> {
    let statistics = StatisticsContext::new();
    let mut largest = None;
    plan.apply(|node| {
        if node.is::<DataSourceExec>()
            && let Ok(estimate) = statistics.compute(node.as_ref(), &StatisticsArgs::new())
            && let Some(rows) = estimate.num_rows.get_value()
        {
            largest = largest.max(Some(*rows as u64));
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(largest)
}

/// `plan` (a stage's) with the rows of its output whose keys the build stage (of
/// `num_build_maps` map tasks) lacks filtered out before they are written.
pub(crate) fn apply_runtime_filter(
    plan: &Arc<dyn ExecutionPlan>,
    filter: &RuntimeFilter,
    num_build_maps: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    let Some(writer) = plan.downcast_ref::<ShuffleWriterExec>() else {
        return Ok(Arc::clone(plan));
    };
    let Some(reader) = filter.build_reader.downcast_ref::<ShuffleReaderExec>() else {
        return Err(DataFusionError::Internal(
            "a runtime filter's build side is not a shuffle reader".into(),
        ));
    };
    let build: Arc<dyn ExecutionPlan> = Arc::new(CoalescePartitionsExec::new(Arc::new(
        reader.with_num_maps(num_build_maps)?,
    )));
    let on = filter
        .build_keys
        .iter()
        .zip(&filter.probe_keys)
        .map(|(b, p)| (Arc::clone(b), Arc::clone(p)))
        .collect();
    let semi: Arc<dyn ExecutionPlan> = Arc::new(HashJoinExec::try_new(
        build,
        Arc::clone(writer.input()),
        on,
        None,
        &JoinType::RightSemi,
        None,
        PartitionMode::CollectLeft,
        filter.null_equality,
        false,
    )?);
    replace_children_if_necessary(Arc::clone(plan), vec![semi])
}
