//! Dynamic filters planned inside one task: each partition of a TPC-H join run as its own
//! task, with the answers of the plan run whole.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::util::display::array_value_to_string;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNode;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, collect, displayable};
use datafusion::prelude::SessionContext;
use ember_planner::dynamic_filters::plan_task_filters;
use futures::TryStreamExt;

use super::context;

/// A TPC-H context whose scans read only the partition they are asked for, as in a task.
async fn task_context() -> SessionContext {
    let (ctx, _) = context(4).await;
    ctx.sql("set datafusion.execution.enable_file_stream_work_stealing = false")
        .await
        .expect("set");
    ctx
}

async fn physical(ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
    ctx.sql(sql)
        .await
        .expect("plan")
        .create_physical_plan()
        .await
        .expect("physical plan")
}

fn text(plan: &Arc<dyn ExecutionPlan>) -> String {
    displayable(plan.as_ref()).indent(true).to_string()
}

fn joins(plan: &Arc<dyn ExecutionPlan>) -> Vec<(PartitionMode, usize, bool)> {
    let mut found = vec![];
    plan.apply(|node| {
        if let Some(join) = node.downcast_ref::<HashJoinExec>() {
            found.push((
                *join.partition_mode(),
                join.right().output_partitioning().partition_count(),
                !node.dynamic_expressions_produced().is_empty(),
            ));
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })
    .unwrap();
    found
}

/// The rows of partition `partition` of `plan`, as sorted strings; a join waiting for
/// partitions that never run fails the test instead of hanging it.
async fn run_partition(
    plan: &Arc<dyn ExecutionPlan>,
    partition: usize,
    ctx: &SessionContext,
) -> Vec<String> {
    let stream = plan.execute(partition, ctx.task_ctx()).expect("execute");
    let batches: Vec<_> =
        tokio::time::timeout(Duration::from_secs(60), stream.try_collect::<Vec<_>>())
            .await
            .expect("the task finished")
            .expect("batches");
    rows(&batches)
}

fn rows(batches: &[datafusion::arrow::record_batch::RecordBatch]) -> Vec<String> {
    let mut rows = vec![];
    for batch in batches {
        for row in 0..batch.num_rows() {
            let values: Vec<String> = batch
                .columns()
                .iter()
                .map(|c| array_value_to_string(c, row).unwrap())
                .collect();
            rows.push(values.join("|"));
        }
    }
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_join_filters_the_probe_scan_of_each_task() {
    let ctx = task_context().await;
    let plan = physical(
        &ctx,
        "select l_orderkey, l_linenumber, p_name from lineitem join part on l_partkey = p_partkey \
         where p_size = 7 and p_brand = 'Brand#12'",
    )
    .await;
    assert!(!text(&plan).contains("DynamicFilter"), "{}", text(&plan));
    assert_eq!(joins(&plan), vec![(PartitionMode::CollectLeft, 4, false)]);
    let expected = rows(&collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap());
    assert!(!expected.is_empty());

    let num_partitions = plan.output_partitioning().partition_count();
    let mut actual = vec![];
    for partition in 0..num_partitions {
        let task = plan_task_filters(Arc::clone(&plan), partition, &ConfigOptions::default())
            .expect("filters");
        // The join waits for its own probe partition only, and the scan holds its filter.
        assert_eq!(joins(&task), vec![(PartitionMode::CollectLeft, 1, true)]);
        assert_eq!(task.output_partitioning().partition_count(), num_partitions);
        let before = text(&task);
        assert!(
            before.contains("predicate=DynamicFilter [ empty ]"),
            "{before}"
        );
        actual.extend(run_partition(&task, partition, &ctx).await);
        // The build side's keys reached the scan.
        let after = text(&task);
        assert!(after.contains("DynamicFilter [ l_partkey@"), "{after}");
    }
    actual.sort();
    assert_eq!(actual, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_that_need_every_partition_keep_no_filter() {
    let ctx = task_context().await;
    // The build side's unmatched rows come out after the last probe partition: Ember gives
    // such joins one probe task, and within a task the join is left as planned.
    let plan = physical(
        &ctx,
        "select p_partkey, l_orderkey from part left join lineitem \
         on l_partkey = p_partkey and l_quantity > 49 where p_size = 7",
    )
    .await;
    let planned = joins(&plan);
    assert!(
        planned
            .iter()
            .any(|(mode, probes, _)| *mode == PartitionMode::CollectLeft && *probes > 1)
            || planned
                .iter()
                .any(|(mode, _, _)| *mode == PartitionMode::Partitioned),
        "{planned:?}"
    );
    for partition in 0..plan.output_partitioning().partition_count() {
        let task = plan_task_filters(Arc::clone(&plan), partition, &ConfigOptions::default())
            .expect("filters");
        for (mode, probes, filtered) in joins(&task) {
            let reports = if mode == PartitionMode::CollectLeft {
                probes
            } else {
                1
            };
            assert!(!filtered || reports == 1, "{}", text(&task));
        }
        run_partition(&task, partition, &ctx).await;
    }
}

#[tokio::test]
async fn switched_off_the_task_runs_the_plan_as_planned() {
    let ctx = task_context().await;
    let plan = physical(
        &ctx,
        "select l_orderkey from lineitem join part on l_partkey = p_partkey where p_size = 7",
    )
    .await;
    let mut options = ConfigOptions::default();
    options
        .set(
            "datafusion.optimizer.enable_dynamic_filter_pushdown",
            "false",
        )
        .unwrap();
    let task = plan_task_filters(Arc::clone(&plan), 1, &options).expect("filters");
    assert!(Arc::ptr_eq(&task, &plan));
}
