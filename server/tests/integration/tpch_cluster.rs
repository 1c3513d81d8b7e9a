//! The real `ember` binary as a coordinator and two executor processes on loopback, running all
//! 22 TPC-H queries at SF0.01, each answer compared with single-node DataFusion on the same files.

use std::time::Duration;

use crate::common::{
    ProcessCluster, compare, datafusion_rows, datafusion_tpch, rows, tpch_data_dir,
};

const SCALE: f64 = 0.01;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_answers_match_datafusion_and_tasks_spread_over_executors() {
    let data = tpch_data_dir(SCALE);
    let cluster = ProcessCluster::start(2, SCALE, &data);
    let client = cluster.connect(2).await;
    let reference = datafusion_tpch(SCALE, &data).await;
    client
        .simple_query("SET search_path = tpch")
        .await
        .expect("set search_path");

    let mut failures = vec![];
    for (i, sql) in ember_planner::tpch::QUERIES.iter().enumerate() {
        let query = i + 1;
        let ember = tokio::time::timeout(Duration::from_secs(120), client.simple_query(sql))
            .await
            .unwrap_or_else(|_| panic!("q{query} timed out\n{}", cluster.logs()));
        let ember = match ember {
            Ok(messages) => rows(&messages),
            Err(error) => {
                failures.push(format!("q{query}: ember failed: {error:?}"));
                continue;
            }
        };
        let expected = datafusion_rows(&reference, sql).await;
        let ordered = sql.to_ascii_lowercase().contains("order by");
        if let Err(diff) = compare(&ember, &expected, ordered) {
            failures.push(format!("q{query}: {diff}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 22 queries differ:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // A multi-stage query: its tasks must have run on both executors.
    let grouped = rows(
        &client
            .simple_query("select l_returnflag, count(*) from lineitem group by 1")
            .await
            .expect("grouped query"),
    );
    assert_eq!(grouped.len(), 3);
    let spread = rows(
        &client
            .simple_query(
                "select count(distinct t.executor_id), count(distinct t.stage_id) \
                 from system.tasks t join system.queries q on t.query_id = q.query_id \
                 where q.sql like '%l_returnflag, count(*)%' and t.status = 'succeeded'",
            )
            .await
            .expect("system.tasks"),
    );
    assert_eq!(
        spread[0][0].as_deref(),
        Some("2"),
        "tasks ran on both executors"
    );
    let stages: u32 = spread[0][1].as_deref().unwrap_or("0").parse().unwrap_or(0);
    assert!(stages >= 2, "the query had {stages} stages");

    // Losing an executor: the coordinator notices, shows it, and keeps answering with the rest.
    let mut cluster = cluster;
    cluster.executors[0].kill().expect("kill executor");
    let _ = cluster.executors[0].wait();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let lost = rows(
            &client
                .simple_query("select count(*) from system.executors where status = 'lost'")
                .await
                .expect("system.executors"),
        );
        if lost[0][0].as_deref() == Some("1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "executor loss went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = rows(
        &client
            .simple_query("select l_returnflag, count(*) from lineitem group by 1")
            .await
            .expect("query after executor loss"),
    );
    compare(&after, &grouped, false).expect("same answer on the surviving executor");
}
