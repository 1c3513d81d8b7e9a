//! DataFusion's dynamic filters, planned inside each task.
//!
//! In one process a hash join hands its probe side's scans a filter once its build side is
//! collected (the keys' bounds and membership), a TopK its running threshold and an aggregate
//! its running min/max: the scans skip the files, row groups and pages no row could pass. The
//! coordinator plans without them (`session::distributed_state`): a filter cannot cross a stage
//! boundary, and a DataFusion join waits for every probe partition of its plan to report its
//! build before it probes, while a task runs one partition. Each executor plans them for the
//! task it runs:
//!
//! ```text
//!  ShuffleWriterExec                     ShuffleWriterExec
//!    HashJoinExec (collect left)           TaskPartitionExec: partition p of N
//!      ShuffleReaderExec (broadcast)  =>     HashJoinExec (collect left)   -- waits for 1 report
//!      DataSourceExec: N groups                ShuffleReaderExec (broadcast)
//!                                              SinglePartitionExec: p        <- filter passes
//!                                                DataSourceExec: N groups   <- and lands here
//! ```
//!
//! Every hash join on the task's own partition is narrowed to that partition (a broadcast
//! join's probe side, both sides of a shuffled one), then DataFusion's `FilterPushdown(Post)`
//! rule plans the filters. A broadcast join thus prunes its own stage's scans; the joins whose
//! sides are other stages gain nothing and lose nothing.

use std::fmt;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{Partitioning, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_optimizer::filter_pushdown::FilterPushdown;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterDescription, FilterPushdownPhase, FilterPushdownPropagation,
};
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PartitionMode,
};
use datafusion::physical_plan::limit::LocalLimitExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    SendableRecordBatchStream,
};

use crate::joins::needs_global_build_state;
use crate::shuffle::ShuffleWriterExec;

/// The plan task `partition` runs, with DataFusion's dynamic filters as `options` allow them
/// (`datafusion.optimizer.enable_*dynamic_filter_pushdown`). A plan in which a join would
/// still wait for partitions other tasks run is returned as it came, without filters.
pub fn plan_task_filters(
    plan: Arc<dyn ExecutionPlan>,
    partition: usize,
    options: &ConfigOptions,
) -> Result<Arc<dyn ExecutionPlan>> {
    let optimizer = &options.optimizer;
    if !(optimizer.enable_join_dynamic_filter_pushdown
        || optimizer.enable_topk_dynamic_filter_pushdown
        || optimizer.enable_aggregate_dynamic_filter_pushdown)
    {
        return Ok(plan);
    }
    let narrowed = if optimizer.enable_join_dynamic_filter_pushdown
        && partition < plan.output_partitioning().partition_count()
    {
        narrow_joins(Arc::clone(&plan), partition)?
    } else {
        Arc::clone(&plan)
    };
    let filtered = FilterPushdown::new_post_optimization().optimize(narrowed, options)?;
    if waits_for_other_tasks(&filtered)? {
        return Ok(plan);
    }
    Ok(filtered)
}

/// Narrows each hash join that runs at `partition` of `plan` (which the task runs at
/// `partition`) to that one partition. Hand-written recursion: only the children an operator
/// runs at its own partition are followed, which `transform_down` cannot tell.
fn narrow_joins(plan: Arc<dyn ExecutionPlan>, partition: usize) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(join) = plan.downcast_ref::<HashJoinExec>()
        && let Some(children) = narrowed_join_children(join, partition)?
    {
        let narrowed = replace_children_if_necessary(Arc::clone(&plan), children)?;
        return Ok(Arc::new(TaskPartitionExec::new(narrowed, &plan, partition)));
    }
    let on_partition = children_on_partition(plan.as_ref());
    if on_partition.iter().all(|on| !on) {
        return Ok(plan);
    }
    let children = plan
        .children()
        .into_iter()
        .zip(on_partition)
        .map(|(child, on)| match on {
            true => narrow_joins(Arc::clone(child), partition),
            false => Ok(Arc::clone(child)),
        })
        .collect::<Result<Vec<_>>>()?;
    replace_children_if_necessary(plan, children)
}

/// The children of `join` narrowed to `partition`, or `None` when the join stays as planned:
/// a broadcast join whose outer, semi or anti output needs every probe partition's matches
/// (Ember gives those one probe task), or a join with a single partition already.
fn narrowed_join_children(
    join: &HashJoinExec,
    partition: usize,
) -> Result<Option<Vec<Arc<dyn ExecutionPlan>>>> {
    let left = join.left();
    let right = join.right();
    let num_right = right.output_partitioning().partition_count();
    Ok(match join.partition_mode() {
        PartitionMode::CollectLeft
            if num_right > 1 && !needs_global_build_state(join.join_type()) =>
        {
            let probe = narrow_joins(Arc::clone(right), partition)?;
            Some(vec![Arc::clone(left), single_partition(probe, partition)])
        }
        PartitionMode::Partitioned
            if num_right > 1 && left.output_partitioning().partition_count() == num_right =>
        {
            let build = narrow_joins(Arc::clone(left), partition)?;
            let probe = narrow_joins(Arc::clone(right), partition)?;
            Some(vec![
                single_partition(build, partition),
                single_partition(probe, partition),
            ])
        }
        _ => None,
    })
}

/// `plan`'s `partition` as a plan of one partition.
fn single_partition(plan: Arc<dyn ExecutionPlan>, partition: usize) -> Arc<dyn ExecutionPlan> {
    match plan.downcast_ref::<TaskPartitionExec>() {
        Some(task) if task.partition == partition => Arc::clone(&task.input),
        _ => Arc::new(SinglePartitionExec::new(plan, partition)),
    }
}

/// Which children `plan` runs at the partition it runs itself (and nothing else of them).
fn children_on_partition(plan: &dyn ExecutionPlan) -> Vec<bool> {
    let num_partitions = plan.output_partitioning().partition_count();
    let same_count = |child: &Arc<dyn ExecutionPlan>| {
        child.output_partitioning().partition_count() == num_partitions
    };
    let children = plan.children();
    // Operators whose partition `p` is made of their input's partition `p` alone.
    let partition_wise = plan.downcast_ref::<ShuffleWriterExec>().is_some()
        || plan.downcast_ref::<ProjectionExec>().is_some()
        || plan.downcast_ref::<FilterExec>().is_some()
        // Deprecated in DataFusion 55: matched by name.
        || plan.name() == "CoalesceBatchesExec"
        || plan.downcast_ref::<CooperativeExec>().is_some()
        || plan.downcast_ref::<LocalLimitExec>().is_some()
        || plan.downcast_ref::<AggregateExec>().is_some()
        || plan.downcast_ref::<SortExec>().is_some()
        || plan.downcast_ref::<BoundedWindowAggExec>().is_some()
        || plan.downcast_ref::<WindowAggExec>().is_some();
    if partition_wise {
        return children.into_iter().map(same_count).collect();
    }
    // Joins run their probe side (the right) at their own partition; a shuffled hash join
    // both sides. Their build sides are collected whole.
    let partitioned = plan
        .downcast_ref::<HashJoinExec>()
        .is_some_and(|join| *join.partition_mode() == PartitionMode::Partitioned);
    let probe_only = plan.downcast_ref::<HashJoinExec>().is_some()
        || plan.downcast_ref::<NestedLoopJoinExec>().is_some()
        || plan.downcast_ref::<CrossJoinExec>().is_some();
    match (partitioned, probe_only, children.as_slice()) {
        (true, _, [left, right]) => vec![same_count(left), same_count(right)],
        (false, true, [_, right]) => vec![false, same_count(right)],
        _ => vec![false; children.len()],
    }
}

/// Whether a join of `plan` carries a dynamic filter yet would wait for the build reports of
/// partitions this task does not run.
fn waits_for_other_tasks(plan: &Arc<dyn ExecutionPlan>) -> Result<bool> {
    plan.exists(|node| {
        Ok(node.downcast_ref::<HashJoinExec>().is_some_and(|join| {
            let reporting = match join.partition_mode() {
                PartitionMode::CollectLeft => join.right(),
                _ => join.left(),
            };
            !node.dynamic_expressions_produced().is_empty()
                && reporting.output_partitioning().partition_count() > 1
        }))
    })
}

/// Partition `partition` of its input as its only partition: the join above it sees one probe
/// partition, the task's. Executor-local: it never travels.
#[derive(Debug)]
pub struct SinglePartitionExec {
    input: Arc<dyn ExecutionPlan>,
    partition: usize,
    properties: Arc<PlanProperties>,
}

impl SinglePartitionExec {
    fn new(input: Arc<dyn ExecutionPlan>, partition: usize) -> Self {
        let properties = Arc::new(
            input
                .properties()
                .as_ref()
                .clone()
                .with_partitioning(Partitioning::UnknownPartitioning(1)),
        );
        Self {
            input,
            partition,
            properties,
        }
    }
}

/// A join narrowed to the task's partition `partition`, shown to the operators above as the
/// partition `partition` of the join as planned.
#[derive(Debug)]
pub struct TaskPartitionExec {
    input: Arc<dyn ExecutionPlan>,
    partition: usize,
    properties: Arc<PlanProperties>,
}

impl TaskPartitionExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        planned: &Arc<dyn ExecutionPlan>,
        partition: usize,
    ) -> Self {
        Self {
            input,
            partition,
            properties: Arc::clone(planned.properties()),
        }
    }
}

/// Whether `plan` is one of the task-local operators of this module, which the executor's
/// metrics skip so that they keep matching the stage plan the coordinator shows.
pub fn is_task_local(plan: &dyn ExecutionPlan) -> bool {
    plan.downcast_ref::<SinglePartitionExec>().is_some()
        || plan.downcast_ref::<TaskPartitionExec>().is_some()
}

/// The two operators differ only in which partition they ask of their input.
macro_rules! pass_through_exec {
    ($exec:ident, $name:literal, $input_partition:expr) => {
        impl DisplayAs for $exec {
            fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "{}: partition={}", $name, self.partition)
            }
        }

        impl ExecutionPlan for $exec {
            fn name(&self) -> &str {
                $name
            }

            fn properties(&self) -> &Arc<PlanProperties> {
                &self.properties
            }

            fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
                vec![&self.input]
            }

            fn apply_expressions(
                &self,
                _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
            ) -> Result<TreeNodeRecursion> {
                Ok(TreeNodeRecursion::Continue)
            }

            fn maintains_input_order(&self) -> Vec<bool> {
                vec![true]
            }

            fn with_new_children(
                self: Arc<Self>,
                mut children: Vec<Arc<dyn ExecutionPlan>>,
            ) -> Result<Arc<dyn ExecutionPlan>> {
                match (children.pop(), children.is_empty()) {
                    (Some(input), true) => Ok(Arc::new(Self {
                        input,
                        partition: self.partition,
                        properties: Arc::clone(&self.properties),
                    })),
                    _ => Err(DataFusionError::Internal(format!(
                        "{} takes one child",
                        $name
                    ))),
                }
            }

            fn execute(
                &self,
                partition: usize,
                context: Arc<TaskContext>,
            ) -> Result<SendableRecordBatchStream> {
                let input_partition: Option<usize> = $input_partition(self, partition);
                match input_partition {
                    Some(input) => self.input.execute(input, context),
                    None => Err(DataFusionError::Internal(format!(
                        "{} of partition {} cannot run partition {partition}",
                        $name, self.partition
                    ))),
                }
            }

            fn gather_filters_for_pushdown(
                &self,
                _phase: FilterPushdownPhase,
                parent_filters: Vec<Arc<dyn PhysicalExpr>>,
                _config: &ConfigOptions,
            ) -> Result<FilterDescription> {
                FilterDescription::from_children(parent_filters, &self.children())
            }

            fn handle_child_pushdown_result(
                &self,
                _phase: FilterPushdownPhase,
                child_pushdown_result: ChildPushdownResult,
                _config: &ConfigOptions,
            ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
                Ok(FilterPushdownPropagation::if_all(child_pushdown_result))
            }
        }
    };
}

pass_through_exec!(
    SinglePartitionExec,
    "SinglePartitionExec",
    |exec: &SinglePartitionExec, partition: usize| (partition == 0).then_some(exec.partition)
);
pass_through_exec!(
    TaskPartitionExec,
    "TaskPartitionExec",
    |exec: &TaskPartitionExec, partition: usize| (partition == exec.partition).then_some(0)
);
