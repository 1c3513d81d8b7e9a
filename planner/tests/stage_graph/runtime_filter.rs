//! Runtime filters across stages on real TPC-H plans: which stages get one, and the probe
//! stage re-planned once its build side proved small.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use ember_planner::adaptive::{AdaptiveOptions, MapOutputSizes, adapt_stage};
use ember_planner::codec::{decode_plan, encode_plan};
use ember_planner::shuffle::ShuffleReaderExec;
use ember_planner::stage::{Stage, StageGraph};
use ember_planner::task::task_fragment;

use super::{check_wiring, context, graph, locations};

const MIB: u64 = 1 << 20;

/// Customers with a large balance and no order: an anti join Ember shuffles on both sides,
/// whose build side (the customers) is filtered.
const ANTI: &str = "select c_custkey from customer where c_acctbal > 9000 \
                    and not exists (select 1 from orders where o_custkey = c_custkey)";

/// Small files split among four map tasks, so joins have partitions to shuffle.
async fn split_files() -> datafusion::prelude::SessionContext {
    let (ctx, _) = context(4).await;
    ctx.sql("set datafusion.optimizer.repartition_file_min_size = 0")
        .await
        .expect("set");
    ctx
}

fn filtered_stage(graph: &StageGraph) -> &Stage {
    graph
        .stages
        .iter()
        .find(|s| !s.runtime_filters.is_empty())
        .unwrap_or_else(|| panic!("no stage with a runtime filter:\n{}", graph.display()))
}

fn sizes(stage: &Stage, bytes: u64) -> MapOutputSizes {
    MapOutputSizes {
        bytes: vec![vec![bytes; stage.num_output_partitions()]; stage.num_tasks()],
        rows: 0,
    }
}

/// The joins of `plan`: mode, type, and the stage the build side reads (if a reader).
fn joins(plan: &Arc<dyn ExecutionPlan>) -> Vec<(PartitionMode, JoinType, Option<u32>)> {
    let mut found = vec![];
    plan.apply(|node| {
        if let Some(join) = node.downcast_ref::<HashJoinExec>() {
            let mut build = None;
            join.left().apply(|n| {
                if let Some(r) = n.downcast_ref::<ShuffleReaderExec>() {
                    build = Some(r.stage_id().0);
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
            found.push((*join.partition_mode(), *join.join_type(), build));
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .unwrap();
    found
}

#[tokio::test]
async fn the_probe_stage_of_a_shuffled_join_waits_for_its_filtered_build_side() {
    let ctx = split_files().await;
    let mut graph = graph(&ctx, ANTI).await;
    check_wiring(&graph);
    let probe = filtered_stage(&graph);
    let build = probe.runtime_filters[0].build;
    // The orders stage now waits for the customers' stage, though it does not read it yet.
    assert!(probe.inputs.contains(&build));
    assert!(build < probe.id);
    assert!(joins(&probe.plan).is_empty());
    assert!(
        graph
            .display()
            .contains(&format!("runtime_filters_from=[{build}]")),
        "{}",
        graph.display()
    );

    // Turned off, the stage runs as soon as it would have.
    let probe_id = probe.id;
    graph.drop_runtime_filters();
    assert!(graph.stage(probe_id).runtime_filters.is_empty());
    assert!(!graph.stage(probe_id).inputs.contains(&build));
    check_wiring(&graph);
}

#[tokio::test]
async fn a_small_build_side_filters_the_probe_rows_before_the_shuffle() {
    let ctx = split_files().await;
    let mut graph = graph(&ctx, ANTI).await;
    let probe = filtered_stage(&graph);
    let probe_id = probe.id;
    let build = graph.stage(probe.runtime_filters[0].build);
    let all: HashMap<_, _> = [(build.id, sizes(build, 1000))].into();
    let adapted = adapt_stage(probe, &all, &AdaptiveOptions::default())
        .expect("adapt")
        .expect("re-planned");
    assert!(
        adapted
            .notes
            .iter()
            .any(|n| n.starts_with("runtime filter:")),
        "{:?}",
        adapted.notes
    );
    // The stage keeps its rows whose keys the whole build side has: a broadcast semi join.
    assert_eq!(
        joins(&adapted.plan),
        vec![(
            PartitionMode::CollectLeft,
            JoinType::RightSemi,
            Some(build.id.0)
        )]
    );
    assert_eq!(adapted.plan.schema(), probe.plan.schema());
    assert_eq!(
        adapted.plan.output_partitioning().partition_count(),
        probe.num_tasks()
    );

    // Its tasks travel with the build side's map outputs.
    graph.replace_plan(probe_id, adapted.plan).expect("replace");
    check_wiring(&graph);
    let stage = graph.stage(probe_id);
    let fragment = task_fragment(stage, 0, &locations(&graph, stage)).expect("fragment");
    let decoded =
        decode_plan(&encode_plan(fragment).expect("encode"), &ctx.task_ctx()).expect("decode");
    assert_eq!(joins(&decoded).len(), 1);
}

#[tokio::test]
async fn a_large_build_side_filters_only_when_it_kept_few_of_its_tables_rows() {
    let ctx = split_files().await;
    let graph = graph(&ctx, ANTI).await;
    let probe = filtered_stage(&graph);
    let filter = &probe.runtime_filters[0];
    // The build side scans `customer`: SF0.01's 1,500 rows.
    assert_eq!(filter.build_source_rows, Some(1500));
    let build = graph.stage(filter.build);
    // `bytes` written in all, spread over its map tasks and partitions.
    let cells = (build.num_tasks() * build.num_output_partitions()) as u64;
    let adapt = |bytes: u64, rows: u64| {
        let all: HashMap<_, _> = [(
            build.id,
            MapOutputSizes {
                rows,
                ..sizes(build, bytes / cells)
            },
        )]
        .into();
        adapt_stage(probe, &all, &AdaptiveOptions::default())
            .expect("adapt")
            .expect("a note")
    };
    // Most of its table, over `runtime_filter_bytes`: no filter.
    let adapted = adapt(100 * MIB, 900);
    assert!(Arc::ptr_eq(&adapted.plan, &probe.plan));
    assert!(
        adapted.notes[0].starts_with("no runtime filter")
            && adapted.notes[0].contains("60% of its largest table's rows, over 16.0 MiB")
            && !adapted.notes[0].contains("quarter"),
        "{:?}",
        adapted.notes
    );
    // A tenth of it: the filter is worth its size, up to `selective_runtime_filter_bytes`.
    let adapted = adapt(100 * MIB, 150);
    assert!(
        adapted.notes[0].starts_with("runtime filter:") && adapted.notes[0].contains("10%"),
        "{:?}",
        adapted.notes
    );
    assert_eq!(joins(&adapted.plan).len(), 1);
    // Over the larger bound, the note names that bound.
    let adapted = adapt(300 * MIB, 150);
    assert!(Arc::ptr_eq(&adapted.plan, &probe.plan));
    assert!(
        adapted.notes[0].ends_with(
            "10% of its largest table's rows, over 256.0 MiB \
             (the bound for a side that kept at most a quarter)"
        ),
        "{:?}",
        adapted.notes
    );
}

#[tokio::test]
async fn only_filtered_build_sides_and_filterable_joins_make_runtime_filters() {
    let ctx = split_files().await;
    // Every customer: no filter, nothing to gain.
    let unfiltered = graph(
        &ctx,
        "select c_custkey from customer \
         where not exists (select 1 from orders where o_custkey = c_custkey)",
    )
    .await;
    assert!(
        unfiltered
            .stages
            .iter()
            .all(|s| s.runtime_filters.is_empty())
    );
    // A full join keeps every probe row.
    let full = graph(
        &ctx,
        "select c_custkey, o_orderkey from customer full join orders \
         on o_custkey = c_custkey and c_acctbal > 9000",
    )
    .await;
    assert!(full.stages.iter().all(|s| s.runtime_filters.is_empty()));
}
