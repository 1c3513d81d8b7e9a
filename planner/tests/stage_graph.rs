//! Stage cutting and task encoding on real TPC-H plans, with snapshots of the stage graphs.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNode;
use datafusion::physical_plan::{ExecutionPlan, displayable};
use datafusion::prelude::SessionContext;
use ember_planner::codec::{decode_plan, encode_plan};
use ember_planner::ids::{ExecutorId, QueryId, StageId};
use ember_planner::session::{distributed_config, distributed_state};
use ember_planner::shuffle::{MapOutputLocation, ReadMode, ShuffleReaderExec};
use ember_planner::stage::{Stage, StageGraph, StageKind};
use ember_planner::subquery::take_scalar_subqueries;
use ember_planner::task::task_fragment;
use ember_planner::tpch;

#[path = "stage_graph/adaptive.rs"]
mod adaptive;
#[path = "stage_graph/dynamic_filters.rs"]
mod dynamic_filters;
#[path = "stage_graph/row_group_splits.rs"]
mod row_group_splits;
#[path = "stage_graph/runtime_filter.rs"]
mod runtime_filter;

const SCALE: f64 = 0.01;

fn data_dir() -> PathBuf {
    // Tests run in parallel: generate once.
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("planner-tpch");
        let dir = tpch::generate(&base, SCALE).expect("generate tpch");
        std::fs::canonicalize(dir).expect("tpch dir")
    })
    .clone()
}

async fn context(target_partitions: usize) -> (SessionContext, PathBuf) {
    let dir = data_dir();
    let ctx = SessionContext::new_with_state(distributed_state(
        distributed_config(target_partitions),
        Arc::default(),
    ));
    tpch::register(&ctx, "tpch", &dir).await.expect("register");
    ctx.state_ref()
        .write()
        .config_mut()
        .options_mut()
        .catalog
        .default_schema = "tpch".into();
    (ctx, dir)
}

async fn graph(ctx: &SessionContext, sql: &str) -> StageGraph {
    let plan = ctx
        .sql(sql)
        .await
        .expect("plan")
        .create_physical_plan()
        .await
        .expect("physical plan");
    StageGraph::try_new(QueryId::parse("q").unwrap(), plan).expect("cut")
}

fn readers(plan: &Arc<dyn ExecutionPlan>) -> Vec<(StageId, ReadMode, usize)> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut found = vec![];
    plan.apply(|node| {
        if let Some(r) = node.downcast_ref::<ShuffleReaderExec>() {
            found.push((r.stage_id(), r.mode(), r.num_maps()));
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .unwrap();
    found
}

/// The files of each file scan of `plan` (in plan order), by file group.
fn scans(plan: &Arc<dyn ExecutionPlan>) -> Vec<Vec<Vec<String>>> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::source::DataSourceExec;
    let mut found = vec![];
    plan.apply(|node| {
        if let Some(config) = node
            .downcast_ref::<DataSourceExec>()
            .and_then(|s| s.data_source().downcast_ref::<FileScanConfig>())
        {
            found.push(
                config
                    .file_groups
                    .iter()
                    .map(|group| {
                        group
                            .files()
                            .iter()
                            .map(|f| format!("{}:{:?}", f.object_meta.location, f.range))
                            .collect()
                    })
                    .collect(),
            );
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .unwrap();
    found
}

/// Every reader agrees with the stage it reads: its map count is that stage's task count and a
/// shuffle reader has as many partitions as the writer produces.
fn check_wiring(graph: &StageGraph) {
    for stage in &graph.stages {
        for (input, mode, num_maps) in readers(&stage.plan) {
            assert!(input < stage.id, "stage {} reads a later stage", stage.id);
            let upstream = graph.stage(input);
            assert_eq!(num_maps, upstream.num_tasks(), "map count of stage {input}");
            match mode {
                ReadMode::Shuffle { num_partitions } => {
                    assert_eq!(num_partitions, upstream.num_output_partitions());
                    assert_eq!(upstream.kind, StageKind::Shuffle);
                }
                ReadMode::PerMap => assert_eq!(upstream.num_output_partitions(), 1),
            }
            assert!(stage.inputs.contains(&input));
        }
    }
    assert_eq!(graph.result_stage().kind, StageKind::Result);
    assert_eq!(graph.result_stage().num_output_partitions(), 1);
}

/// Made-up committed outputs of every map task of the stages `stage` reads.
fn locations(graph: &StageGraph, stage: &Stage) -> HashMap<StageId, Vec<MapOutputLocation>> {
    stage
        .inputs
        .iter()
        .map(|input| {
            let outputs = (0..graph.stage(*input).num_tasks() as u32)
                .map(|m| MapOutputLocation {
                    map_partition: m,
                    attempt: 0,
                    executor_id: ExecutorId(format!("e{}", m % 2)),
                    flight_address: "127.0.0.1:1".into(),
                    host_key: String::new(),
                    work_dir: PathBuf::new(),
                })
                .collect();
            (*input, outputs)
        })
        .collect()
}

fn snapshot_text(graph: &StageGraph, dir: &std::path::Path) -> String {
    let root = dir.display().to_string();
    graph
        .display()
        .replace(root.trim_start_matches('/'), "<tpch>")
}

#[tokio::test]
async fn tpch_stage_graphs() {
    let (ctx, dir) = context(4).await;
    for query in [1, 5, 18] {
        let graph = graph(&ctx, tpch::QUERIES[query - 1]).await;
        check_wiring(&graph);
        insta::assert_snapshot!(format!("tpch_q{query}"), snapshot_text(&graph, &dir));
    }
}

#[tokio::test]
async fn all_tpch_queries_cut_into_consistent_graphs() {
    let (ctx, _) = context(4).await;
    for sql in tpch::QUERIES {
        check_wiring(&graph(&ctx, sql).await);
    }
}

#[tokio::test]
async fn scalar_subqueries_of_one_operator_come_as_one_group() {
    let (ctx, _) = context(2).await;
    let physical = ctx
        .sql(
            "select p_partkey from part where p_size > (select min(n_nationkey) from nation) \
             and p_partkey < (select max(r_regionkey) * 1000 from region)",
        )
        .await
        .expect("plan")
        .create_physical_plan()
        .await
        .expect("physical plan");
    let (plan, groups) = take_scalar_subqueries(physical).expect("take");
    let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
    assert_eq!(
        sizes,
        vec![2],
        "{}",
        displayable(plan.as_ref()).indent(true)
    );
    assert!(
        !plan
            .exists(|n| Ok(n.name() == "ScalarSubqueryExec"))
            .unwrap(),
        "{}",
        displayable(plan.as_ref()).indent(true)
    );
}

#[tokio::test]
async fn aggregation_cuts_at_the_hash_shuffle_and_the_merge() {
    let (ctx, _) = context(4).await;
    let graph = graph(
        &ctx,
        "select l_returnflag, count(*) from lineitem group by 1 order by 1",
    )
    .await;
    let kinds: Vec<StageKind> = graph.stages.iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        vec![StageKind::Shuffle, StageKind::Gather, StageKind::Result]
    );
    assert_eq!(graph.stages[0].num_tasks(), 4);
    assert_eq!(graph.stages[0].num_output_partitions(), 4);
    assert_eq!(graph.stages[1].inputs, vec![StageId(0)]);
    assert_eq!(graph.result_stage().num_tasks(), 1);
}

#[tokio::test]
async fn broadcast_build_sides_are_their_own_stage() {
    let (ctx, _) = context(4).await;
    // Split even small files so the build side has several partitions to gather.
    ctx.sql("set datafusion.optimizer.repartition_file_min_size = 0")
        .await
        .expect("set");
    let graph = graph(
        &ctx,
        "select count(*) from lineitem join (select * from orders where o_orderkey < 1000) o \
         on l_orderkey = o_orderkey",
    )
    .await;
    check_wiring(&graph);
    let text = graph.display();
    let broadcast = graph
        .stages
        .iter()
        .find(|s| s.kind == StageKind::Broadcast)
        .unwrap_or_else(|| panic!("expected a broadcast stage:\n{text}"));
    // Every task of the consumer reads all of the broadcast stage's outputs.
    let consumer = graph.consumers(broadcast.id).next().expect("a consumer");
    assert!(consumer.num_tasks() > 1, "{text}");
}

#[tokio::test]
async fn outer_joins_never_split_a_collected_build_side() {
    let (ctx, _) = context(4).await;
    let graph = graph(
        &ctx,
        "select count(*) from (select * from orders where o_orderkey < 100) o \
         left join lineitem on l_orderkey = o_orderkey",
    )
    .await;
    check_wiring(&graph);
    for stage in &graph.stages {
        let text = displayable(stage.plan.as_ref()).indent(false).to_string();
        for line in text.lines().filter(|l| l.contains("HashJoinExec")) {
            let global = [
                "join_type=Left,",
                "join_type=LeftSemi",
                "join_type=LeftAnti",
                "join_type=Full",
            ];
            if line.contains("mode=CollectLeft") && global.iter().any(|t| line.contains(t)) {
                assert_eq!(stage.num_tasks(), 1, "split collect-left join: {line}");
            }
        }
    }
}

#[tokio::test]
async fn task_fragments_round_trip_and_carry_only_their_files() {
    let (ctx, dir) = context(4).await;
    let graph = graph(&ctx, tpch::QUERIES[2]).await;
    let task_ctx = ctx.task_ctx();
    let mut trimmed = 0;
    for stage in &graph.stages {
        let locations = locations(&graph, stage);
        for partition in 0..stage.num_tasks() {
            let fragment = task_fragment(stage, partition, &locations).expect("fragment");
            let bytes = encode_plan(Arc::clone(&fragment)).expect("encode");
            let decoded = decode_plan(&bytes, &task_ctx).expect("decode");
            let before = displayable(fragment.as_ref()).indent(false).to_string();
            let after = displayable(decoded.as_ref()).indent(false).to_string();
            assert_eq!(before, after, "stage {} partition {partition}", stage.id);
            for (_, _, num_maps) in readers(&decoded) {
                assert!(num_maps > 0);
            }
            // Each scan whose file groups match the stage's tasks carries exactly this task's
            // group, and nothing of the others'.
            let whole = scans(&stage.plan);
            let own = scans(&decoded);
            assert_eq!(whole.len(), own.len(), "stage {}", stage.id);
            for (stage_groups, task_groups) in whole.iter().zip(&own) {
                let task_files: BTreeSet<&String> = task_groups.iter().flatten().collect();
                if stage_groups.len() == stage.num_tasks() {
                    let expected: BTreeSet<&String> = stage_groups[partition].iter().collect();
                    // Files are split into byte ranges; a range is its own piece here.
                    assert_eq!(task_files, expected, "stage {} task {partition}", stage.id);
                    let others: BTreeSet<&String> = stage_groups
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != partition)
                        .flat_map(|(_, group)| group)
                        .collect();
                    assert!(!task_files.is_empty(), "task {partition} reads nothing");
                    assert!(
                        task_files.is_disjoint(&others),
                        "task {partition} of stage {} carries another task's files",
                        stage.id
                    );
                    trimmed += 1;
                } else {
                    let all: BTreeSet<&String> = stage_groups.iter().flatten().collect();
                    assert_eq!(task_files, all, "an unaligned scan keeps its files");
                }
            }
        }
    }
    // The checks above ran on real splits: the four tasks of a scan stage each read a part of
    // a table.
    assert!(
        trimmed >= 4,
        "only {trimmed} scans were trimmed to a task's files"
    );
    let _ = dir;
}

/// Task plan decoding on hostile bytes: random bytes, and real fragments with a byte flipped or
/// cut short, decode to a plan or an error; they never panic.
#[tokio::test]
async fn damaged_fragments_are_refused_without_panicking() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let (ctx, _) = context(2).await;
    let graph = graph(&ctx, tpch::QUERIES[2]).await;
    let locations: HashMap<StageId, Vec<MapOutputLocation>> = graph
        .stages
        .iter()
        .map(|stage| {
            let outputs = (0..stage.num_tasks() as u32)
                .map(|m| MapOutputLocation {
                    map_partition: m,
                    attempt: 0,
                    executor_id: ExecutorId("e".into()),
                    flight_address: "127.0.0.1:1".into(),
                    host_key: String::new(),
                    work_dir: PathBuf::new(),
                })
                .collect();
            (stage.id, outputs)
        })
        .collect();
    let fragments: Vec<Vec<u8>> = graph
        .stages
        .iter()
        .map(|stage| {
            let fragment = task_fragment(stage, 0, &locations).expect("fragment");
            encode_plan(fragment).expect("encode")
        })
        .collect();
    let task_ctx = ctx.task_ctx();
    let decodes_or_refuses = |bytes: &[u8]| {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = decode_plan(bytes, &task_ctx);
        }));
        prop_assert!(outcome.is_ok(), "decoding {} bytes panicked", bytes.len());
        Ok(())
    };
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..2048), |bytes| {
            decodes_or_refuses(&bytes)
        })
        .expect("random bytes");
    let damage = (
        0..fragments.len(),
        any::<prop::sample::Index>(),
        0u8..8,
        any::<bool>(),
    );
    runner
        .run(&damage, |(which, at, bit, cut)| {
            let mut bytes = fragments[which].clone();
            let at = at.index(bytes.len());
            if cut {
                bytes.truncate(at);
            } else {
                bytes[at] ^= 1 << bit;
            }
            decodes_or_refuses(&bytes)
        })
        .expect("damaged fragments");
}
