//! Cluster managers: the coordinator asks for executors and gets them. With the `local` backend
//! a lone `ember coordinator` starts its executors itself; `system.executors` shows each with
//! the allocation it was started for.

use std::time::{Duration, Instant};

use crate::common::{ProcessCluster, rows, tpch_data_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_coordinator_starts_its_executors_through_its_cluster_manager() {
    let env: Vec<(String, String)> = [
        ("EMBER_CLUSTER_MANAGER_KIND", "local"),
        ("EMBER_CLUSTER_MANAGER_EXECUTORS", "2"),
        ("EMBER_CLUSTER_MANAGER_EXECUTOR_SLOTS", "2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // No `ember executor` process: the coordinator's cluster manager starts both.
    let cluster = ProcessCluster::start_with_env(0, 0.01, &tpch_data_dir(0.01), &env);
    let client = cluster.connect(2).await;
    let executors = rows(
        &client
            .simple_query(
                "select status, slots, allocation_id from system.executors order by allocation_id",
            )
            .await
            .expect("system.executors"),
    );
    assert_eq!(executors.len(), 2, "{executors:?}");
    for executor in &executors {
        assert_eq!(executor[0].as_deref(), Some("alive"), "{executors:?}");
        assert_eq!(executor[1].as_deref(), Some("2"), "{executors:?}");
        assert!(
            executor[2]
                .as_deref()
                .is_some_and(|a| a.starts_with("local-")),
            "{executors:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        match client
            .simple_query("select count(*) from tpch.lineitem where l_quantity > 10")
            .await
        {
            Ok(messages) => break rows(&messages),
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("query failed: {e}\n{}", cluster.logs()),
        }
    };
    assert!(
        answer[0][0].as_deref().is_some_and(|n| n != "0"),
        "{answer:?}"
    );
}
