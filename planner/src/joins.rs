//! Making collect-left joins safe to split across tasks.
//!
//! In `CollectLeft` mode DataFusion builds the hash table once and shares it, with a bitmap of
//! matched build rows, among all probe partitions of one process; the last probe partition to
//! finish emits the build rows that outer, semi and anti joins need. Split over tasks, no task
//! is ever last and those rows are lost. Such joins become partitioned joins (both sides
//! shuffled on the keys), or, when that is not possible, run their probe side in one task.

use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_expr::Partitioning;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::joins::{HashJoinExec, NestedLoopJoinExec, PartitionMode};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

/// Join types whose output depends on which build rows matched across all probe partitions.
pub(crate) fn needs_global_build_state(join_type: &JoinType) -> bool {
    matches!(
        join_type,
        JoinType::Left
            | JoinType::LeftSemi
            | JoinType::LeftAnti
            | JoinType::LeftMark
            | JoinType::Full
    )
}

/// Rewrites every join that cannot run split over tasks.
pub fn distribute_joins(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(plan
        .transform_up(|node| {
            if let Some(join) = node.downcast_ref::<HashJoinExec>()
                && *join.partition_mode() == PartitionMode::CollectLeft
                && needs_global_build_state(join.join_type())
                && join.right().output_partitioning().partition_count() > 1
            {
                return Ok(Transformed::yes(partition_hash_join(join)?));
            }
            if let Some(join) = node.downcast_ref::<NestedLoopJoinExec>()
                && needs_global_build_state(join.join_type())
                && join.right().output_partitioning().partition_count() > 1
            {
                let right: Arc<dyn ExecutionPlan> =
                    Arc::new(CoalescePartitionsExec::new(Arc::clone(join.right())));
                let plan = replace_children_if_necessary(
                    Arc::clone(&node),
                    vec![Arc::clone(join.left()), right],
                )?;
                return Ok(Transformed::yes(plan));
            }
            Ok(Transformed::no(node))
        })?
        .data)
}

fn partition_hash_join(join: &HashJoinExec) -> Result<Arc<dyn ExecutionPlan>> {
    let right = Arc::clone(join.right());
    if join.null_aware {
        // NOT IN must see every build row, NULLs included: keep one probe task.
        let right: Arc<dyn ExecutionPlan> = Arc::new(CoalescePartitionsExec::new(right));
        return join
            .builder()
            .with_new_children(vec![Arc::clone(join.left()), right])?
            .build_exec();
    }
    let num_partitions = right.output_partitioning().partition_count();
    // The build side was gathered for collection; it is shuffled instead now.
    let left = match join.left().downcast_ref::<CoalescePartitionsExec>() {
        Some(coalesce) => Arc::clone(coalesce.input()),
        None => Arc::clone(join.left()),
    };
    let left_keys = join.on().iter().map(|(l, _)| Arc::clone(l)).collect();
    let right_keys = join.on().iter().map(|(_, r)| Arc::clone(r)).collect();
    let left: Arc<dyn ExecutionPlan> = Arc::new(RepartitionExec::try_new(
        left,
        Partitioning::Hash(left_keys, num_partitions),
    )?);
    let right: Arc<dyn ExecutionPlan> = Arc::new(RepartitionExec::try_new(
        right,
        Partitioning::Hash(right_keys, num_partitions),
    )?);
    join.builder()
        .with_partition_mode(PartitionMode::Partitioned)
        .with_new_children(vec![left, right])?
        .recompute_properties()
        .build_exec()
}
