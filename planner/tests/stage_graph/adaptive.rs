//! Adaptive execution re-planning stages of real TPC-H plans from given map output sizes.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::SessionContext;
use ember_planner::adaptive::{AdaptiveOptions, MapOutputSizes, adapt_stage};
use ember_planner::codec::{decode_plan, encode_plan};
use ember_planner::ids::StageId;
use ember_planner::shuffle::{ReadSpec, ShuffleReaderExec};
use ember_planner::stage::{Stage, StageGraph, StageKind};
use ember_planner::task::task_fragment;

use super::{check_wiring, context, graph, locations};

const MIB: u64 = 1 << 20;

/// Joins are shuffled on both sides, whatever their size, and even small files are split
/// among map tasks.
async fn shuffled_joins() -> SessionContext {
    let (ctx, _) = context(4).await;
    for set in [
        "set datafusion.optimizer.hash_join_single_partition_threshold = 0",
        "set datafusion.optimizer.hash_join_single_partition_threshold_rows = 0",
        "set datafusion.optimizer.repartition_file_min_size = 0",
    ] {
        ctx.sql(set).await.expect("set");
    }
    ctx
}

/// The first stage with a shuffled hash join, and its join.
fn join_stage(graph: &StageGraph) -> (&Stage, &HashJoinExec) {
    for stage in &graph.stages {
        let mut found = None;
        stage
            .plan
            .apply(|node| {
                if let Some(join) = node.downcast_ref::<HashJoinExec>()
                    && *join.partition_mode() == PartitionMode::Partitioned
                {
                    found = Some(());
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
        if found.is_some() {
            let join = find_join(&stage.plan).expect("found above");
            return (stage, join);
        }
    }
    panic!("no shuffled join in\n{}", graph.display());
}

fn find_join(plan: &Arc<dyn ExecutionPlan>) -> Option<&HashJoinExec> {
    if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
        return Some(join);
    }
    plan.children().into_iter().find_map(find_join)
}

/// The shuffle readers of a plan, in plan order.
fn readers(plan: &Arc<dyn ExecutionPlan>) -> Vec<&ShuffleReaderExec> {
    let mut found = vec![];
    collect_readers(plan, &mut found);
    found
}

fn collect_readers<'a>(plan: &'a Arc<dyn ExecutionPlan>, out: &mut Vec<&'a ShuffleReaderExec>) {
    if let Some(reader) = plan.downcast_ref::<ShuffleReaderExec>() {
        out.push(reader);
    }
    for child in plan.children() {
        collect_readers(child, out);
    }
}

/// Sizes of the map outputs of `stage`: `bytes(map, partition)`.
fn sizes(stage: &Stage, bytes: impl Fn(usize, usize) -> u64) -> MapOutputSizes {
    MapOutputSizes {
        bytes: (0..stage.num_tasks())
            .map(|m| {
                (0..stage.num_output_partitions())
                    .map(|p| bytes(m, p))
                    .collect()
            })
            .collect(),
        rows: 0,
    }
}

fn options(parallelism: usize) -> AdaptiveOptions {
    AdaptiveOptions {
        parallelism,
        ..AdaptiveOptions::default()
    }
}

#[tokio::test]
async fn small_partitions_are_coalesced_into_fewer_tasks() {
    let (ctx, _) = context(4).await;
    let mut graph = graph(
        &ctx,
        "select l_returnflag, count(*) from lineitem group by l_returnflag order by 1",
    )
    .await;
    // The final aggregation reads the partial one's hash shuffle.
    let stage = graph
        .stages
        .iter()
        .find(|s| s.kind != StageKind::Result && !s.inputs.is_empty())
        .expect("a stage reading a shuffle");
    let input = graph.stage(stage.inputs[0]);
    let (input_id, input_maps) = (input.id, input.num_tasks());
    let all: HashMap<_, _> = [(input.id, sizes(input, |_, _| 1000))].into();
    let adapted = adapt_stage(stage, &all, &options(4))
        .expect("adapt")
        .expect("re-planned");
    // 16 KB in all is far below a task's worth: one task reads every partition.
    assert_eq!(adapted.plan.output_partitioning().partition_count(), 1);
    assert!(
        adapted.notes[0].starts_with("coalesced 4 shuffle partitions"),
        "{:?}",
        adapted.notes
    );
    let reader = readers(&adapted.plan)[0];
    assert_eq!(
        reader.specs(),
        Some(&[ReadSpec::whole(0..4, input_maps)][..])
    );

    // The consumer now reads one map output, and the task's fragment travels with its specs.
    let stage_id = stage.id;
    graph.replace_plan(stage_id, adapted.plan).expect("replace");
    check_wiring(&graph);
    let stage = graph.stage(stage_id);
    let fragment = task_fragment(stage, 0, &locations(&graph, stage)).expect("fragment");
    let decoded = decode_plan(
        &encode_plan(Arc::clone(&fragment)).expect("encode"),
        &ctx.task_ctx(),
    )
    .expect("decode");
    assert_eq!(
        readers(&decoded)[0].specs(),
        Some(&[ReadSpec::whole(0..4, input_maps)][..])
    );

    // Partitions worth a task each stay as they are.
    let large: HashMap<_, _> = [(input_id, sizes(graph.stage(input_id), |_, _| 100 * MIB))].into();
    assert!(
        adapt_stage(graph.stage(stage_id), &large, &options(4))
            .expect("adapt")
            .is_none()
    );
}

#[tokio::test]
async fn a_skewed_partition_of_a_shuffled_join_is_split_by_map_ranges() {
    let ctx = shuffled_joins().await;
    let graph = graph(
        &ctx,
        "select count(*) from orders join lineitem on o_orderkey = l_orderkey",
    )
    .await;
    let (stage, join) = join_stage(&graph);
    let [left, right] = readers(&stage.plan)[..] else {
        panic!("two readers expected:\n{}", graph.display());
    };
    let left_stage = graph.stage(left.stage_id());
    let right_stage = graph.stage(right.stage_id());
    let right_maps = right_stage.num_tasks();
    assert!(right_maps > 1, "{}", graph.display());
    // Partition 2 of the probe side is 1 GiB over its map tasks; everything else 1 MiB.
    let all: HashMap<StageId, MapOutputSizes> = [
        (left_stage.id, sizes(left_stage, |_, _| MIB)),
        (
            right_stage.id,
            sizes(right_stage, |_, p| {
                if p == 2 {
                    1024 * MIB / right_maps as u64
                } else {
                    MIB
                }
            }),
        ),
    ]
    .into();
    let adapted = adapt_stage(stage, &all, &options(4))
        .expect("adapt")
        .expect("re-planned");
    let text = adapted.notes.join("\n");
    assert!(text.contains("partition 2 of stage"), "{text}");
    assert!(text.contains("(probe side) is skewed"), "{text}");
    let new_readers = readers(&adapted.plan);
    let (left_specs, right_specs) = (
        new_readers[0].specs().expect("specs"),
        new_readers[1].specs().expect("specs"),
    );
    assert_eq!(left_specs.len(), right_specs.len());
    assert_eq!(
        adapted.plan.output_partitioning().partition_count(),
        left_specs.len()
    );
    // Slices of partition 2 cover each probe-side map once, each with the whole build side.
    let slices: Vec<(&ReadSpec, &ReadSpec)> = left_specs
        .iter()
        .zip(right_specs)
        .filter(|(_, r)| r.partitions == (2..3))
        .collect();
    assert!(slices.len() > 1, "{left_specs:?} {right_specs:?}");
    let mut maps: Vec<u32> = slices.iter().flat_map(|(_, r)| r.maps.clone()).collect();
    maps.sort_unstable();
    assert_eq!(maps, (0..right_maps as u32).collect::<Vec<_>>());
    for (l, _) in &slices {
        assert_eq!(**l, ReadSpec::whole(2..3, left_stage.num_tasks()));
    }
    // Every other partition is read once, whole, on both sides.
    let rest: Vec<u32> = right_specs
        .iter()
        .filter(|s| s.partitions != (2..3))
        .flat_map(|s| {
            assert_eq!(s.maps, 0..right_maps as u32);
            s.partitions.clone()
        })
        .collect();
    assert_eq!(rest, vec![0, 1, 3]);
    assert!(matches!(
        join.join_type(),
        datafusion::common::JoinType::Inner
    ));

    // Turned off, the stage runs as planned.
    let off = AdaptiveOptions {
        enabled: false,
        ..options(4)
    };
    assert!(adapt_stage(stage, &all, &off).expect("adapt").is_none());
    // Without splitting, only the small partitions are coalesced.
    let no_skew = AdaptiveOptions {
        skew_join: false,
        ..options(4)
    };
    let coalesced = adapt_stage(stage, &all, &no_skew)
        .expect("adapt")
        .expect("coalesced");
    assert!(
        readers(&coalesced.plan)[1]
            .specs()
            .expect("specs")
            .iter()
            .all(|s| s.maps == (0..right_maps as u32))
    );
}

#[tokio::test]
async fn the_preserved_side_of_an_outer_join_is_never_split() {
    let ctx = shuffled_joins().await;
    let graph = graph(
        &ctx,
        "select count(*) from orders full join lineitem on o_orderkey = l_orderkey",
    )
    .await;
    let (stage, _) = join_stage(&graph);
    // Both sides skewed in partition 1.
    let all: HashMap<StageId, MapOutputSizes> = stage
        .inputs
        .iter()
        .map(|id| {
            let input = graph.stage(*id);
            (
                *id,
                sizes(input, |_, p| if p == 1 { 1024 * MIB } else { MIB }),
            )
        })
        .collect();
    let adapted = adapt_stage(stage, &all, &options(4))
        .expect("adapt")
        .expect("the skew is reported");
    for reader in readers(&adapted.plan) {
        for spec in reader.specs().unwrap_or_default() {
            assert_eq!(spec.maps, 0..reader.num_maps() as u32, "{spec:?}");
        }
    }
    let text = adapted.notes.join("\n");
    assert_eq!(text.matches("not split: a Full join").count(), 2, "{text}");

    // An empty input (no map tasks) leaves the stage as planned.
    let empty: HashMap<StageId, MapOutputSizes> = stage
        .inputs
        .iter()
        .map(|id| (*id, MapOutputSizes::default()))
        .collect();
    assert!(
        adapt_stage(stage, &empty, &options(4))
            .expect("adapt")
            .is_none()
    );
}

#[tokio::test]
async fn stages_of_file_scans_and_result_stages_keep_their_tasks() {
    let (ctx, _) = context(4).await;
    let graph = graph(
        &ctx,
        "select l_returnflag, count(*) from lineitem group by l_returnflag order by 1",
    )
    .await;
    let tiny: HashMap<StageId, MapOutputSizes> = graph
        .stages
        .iter()
        .map(|s| (s.id, sizes(s, |_, _| 1)))
        .collect();
    for stage in &graph.stages {
        let reads_a_shuffle = !stage.inputs.is_empty() && stage.kind != StageKind::Result;
        let adapted = adapt_stage(stage, &tiny, &options(4)).expect("adapt");
        assert_eq!(adapted.is_some(), reads_a_shuffle, "stage {}", stage.id);
    }
}
