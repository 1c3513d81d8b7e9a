//! Cluster managers: the coordinator asks for executors and gets them. With the `local` backend
//! a lone `ember coordinator` starts its executors itself; `system.executors` shows each with
//! the allocation it was started for.

use std::time::{Duration, Instant};

use crate::common::{ProcessCluster, rows, tpch_data_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_coordinator_starts_its_executors_through_its_cluster_manager() {
    let env = crate::common::settings(&[
        ("EMBER_CLUSTER_MANAGER_KIND", "local"),
        ("EMBER_CLUSTER_MANAGER_EXECUTORS", "2"),
        ("EMBER_CLUSTER_MANAGER_EXECUTOR_SLOTS", "2"),
    ]);
    // No `ember executor` process: the coordinator's cluster manager starts both.
    let cluster = ProcessCluster::start_with_env(0, 0.01, &tpch_data_dir(0.01), &env);
    let client = cluster.connect(2).await;
    let executors = rows(
        &client
            .simple_query(
                "select status, slots, allocation_id from system.executors \
                 where status = 'alive' order by allocation_id",
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

/// An allocation whose executor cannot register (it claims more memory than the coordinator
/// takes) is listed by the REST API, for the executors page, with why it went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_whose_executors_do_not_register_are_listed() {
    let env = crate::common::settings(&[
        ("EMBER_CLUSTER_MANAGER_KIND", "local"),
        ("EMBER_CLUSTER_MANAGER_EXECUTORS", "1"),
        ("EMBER_CLUSTER_MANAGER_EXECUTOR_MEMORY", "2147483648"),
        ("EMBER_COORDINATOR_MAX_EXECUTOR_MEMORY", "1073741824"),
        ("EMBER_CLUSTER_MANAGER_START_TIMEOUT_MS", "3000"),
    ]);
    let cluster = ProcessCluster::start_with_env(0, 0.01, &tpch_data_dir(0.01), &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut starting = false;
    let listed = loop {
        if let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", cluster.http_port)).await {
            drop(stream);
            let answer =
                crate::web_ui::http(cluster.http_port, "GET", "/api/v1/allocations", None, &[])
                    .await;
            assert_eq!(answer.status, 200, "{}", answer.body);
            let listed = answer.json();
            starting |= listed
                .as_array()
                .expect("a list")
                .iter()
                .any(|a| a["state"] == "starting" || a["state"] == "requested");
            // Started, refused at registration, given up after the start timeout: listed with
            // the reason.
            if let Some(gone) = listed
                .as_array()
                .expect("a list")
                .iter()
                .find(|a| a["state"] == "gone")
            {
                break gone.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no allocation was listed as gone\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        listed["allocation_id"]
            .as_str()
            .is_some_and(|a| a.starts_with("local-")),
        "{listed}"
    );
    assert!(starting, "never listed while it started");
    assert_eq!(listed["memory_bytes"], 2147483648u64, "{listed}");
    assert!(listed["reason"].is_string(), "{listed}");
    let executors =
        crate::web_ui::http(cluster.http_port, "GET", "/api/v1/executors", None, &[]).await;
    assert_eq!(executors.json(), serde_json::json!([]), "none registered");
}

/// `ember worker` processes, killed when dropped.
struct Workers(Vec<std::process::Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_worker(cluster: &ProcessCluster, i: usize) -> std::process::Child {
    let log = std::fs::File::create(cluster.dir.path().join(format!("worker-{i}.log")))
        .expect("worker log");
    std::process::Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["worker", "--coordinator"])
        .arg(format!("127.0.0.1:{}", cluster.grpc_port))
        .args(["--cores", "2", "--memory", "2GiB", "--data-dir"])
        .arg(&cluster.data_dir)
        .arg("--work-dir")
        .arg(cluster.dir.path().join(format!("worker-{i}")))
        .envs(cluster.env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start ember worker")
}

async fn alive_allocations(client: &tokio_postgres::Client) -> Vec<String> {
    rows(
        &client
            .simple_query(
                "select allocation_id from system.executors where status = 'alive' \
                 order by allocation_id",
            )
            .await
            .expect("system.executors"),
    )
    .into_iter()
    .filter_map(|row| row[0].clone())
    .collect()
}

/// Spark's standalone mode: a coordinator and two `ember worker`s and nothing else run a query;
/// the coordinator asks the workers (two cores each) for four one-slot executors, so each runs
/// two. A worker killed mid-query takes its executors with it: every answer stays exact, and
/// the lost executors are replaced on a worker with room (a third, started after the loss).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_workers_start_executors_and_a_lost_worker_is_replaced() {
    let env = crate::common::settings(&[
        ("EMBER_CLUSTER_MANAGER_KIND", "standalone"),
        ("EMBER_CLUSTER_MANAGER_EXECUTORS", "4"),
        ("EMBER_CLUSTER_MANAGER_EXECUTOR_SLOTS", "1"),
    ]);
    let cluster = ProcessCluster::start_with_env(0, 0.01, &tpch_data_dir(0.01), &env);
    let mut workers = Workers(vec![spawn_worker(&cluster, 0), spawn_worker(&cluster, 1)]);
    let client = cluster.connect(4).await;
    let before = alive_allocations(&client).await;
    assert_eq!(before.len(), 4, "{before:?}");
    assert!(
        before.iter().all(|a| a.starts_with("standalone-")),
        "{before:?}"
    );

    let sql = "select l_returnflag, l_linestatus, sum(l_quantity), count(*) \
               from tpch.lineitem group by 1, 2 order by 1, 2";
    let expected = rows(&client.simple_query(sql).await.expect("the query"));
    assert_eq!(expected.len(), 4, "{expected:?}");
    let runs = {
        let port = cluster.pg_port;
        tokio::spawn(async move {
            let client = crate::common::connect(port).await.expect("a second client");
            let mut answers = vec![];
            for _ in 0..6 {
                answers.push(client.simple_query(sql).await.map(|m| rows(&m)));
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SIGKILL: the worker cannot clean up; its executors die with it.
    let _ = workers.0[0].kill();
    let _ = workers.0[0].wait();
    for answer in runs.await.expect("the runs") {
        match answer {
            Ok(rows) => assert_eq!(rows, expected),
            Err(e) => panic!(
                "a query failed while a worker died: {e}\n{}",
                cluster.logs()
            ),
        }
    }
    // The survivor is full: the replacements go to a new worker.
    workers.0.push(spawn_worker(&cluster, 2));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let alive = alive_allocations(&client).await;
        if alive.len() == 4 && alive.iter().filter(|a| before.contains(a)).count() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "executors not replaced: {alive:?} (before {before:?})\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        rows(&client.simple_query(sql).await.expect("after the loss")),
        expected
    );
    // SIGTERM to a worker: its executors decommission (told they are drained, as nothing needs
    // them) before it exits, cleanly.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &workers.0[1].id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = crate::common::wait_for_exit(&mut workers.0[1], Duration::from_secs(40), || {
        cluster.logs()
    })
    .await;
    assert!(exit.success(), "{exit}\n{}", cluster.logs());
    let coordinator_log =
        std::fs::read_to_string(cluster.dir.path().join("coordinator.log")).unwrap_or_default();
    assert!(
        coordinator_log.matches("executor decommissioned").count() >= 2,
        "{}",
        cluster.logs()
    );
}

async fn alive_count(client: &tokio_postgres::Client) -> usize {
    alive_allocations(client).await.len()
}

/// Spark's dynamic allocation: tasks waiting for slots bring more executors (up to the
/// maximum), and executors idle past the timeout are given back (down to the minimum).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_allocation_scales_up_under_load_and_back_down_when_idle() {
    let env = crate::common::settings(&[
        ("EMBER_CLUSTER_MANAGER_KIND", "local"),
        ("EMBER_CLUSTER_MANAGER_EXECUTORS", "1"),
        ("EMBER_CLUSTER_MANAGER_EXECUTOR_SLOTS", "1"),
        ("EMBER_CLUSTER_MANAGER_DYNAMIC_ALLOCATION", "true"),
        ("EMBER_CLUSTER_MANAGER_MIN_EXECUTORS", "1"),
        ("EMBER_CLUSTER_MANAGER_MAX_EXECUTORS", "3"),
        ("EMBER_CLUSTER_MANAGER_SCHEDULER_BACKLOG_TIMEOUT_MS", "100"),
        (
            "EMBER_CLUSTER_MANAGER_SUSTAINED_SCHEDULER_BACKLOG_TIMEOUT_MS",
            "100",
        ),
        ("EMBER_CLUSTER_MANAGER_EXECUTOR_IDLE_TIMEOUT_MS", "1500"),
    ]);
    let cluster = ProcessCluster::start_with_env(0, 0.01, &tpch_data_dir(0.01), &env);
    let client = cluster.connect(1).await;
    // Load: two clients' queries of many tasks each on one slot, so tasks keep waiting for
    // longer than the backlog timeouts however fast one query is.
    let loads: Vec<_> = (0..2)
        .map(|_| {
            let port = cluster.pg_port;
            tokio::spawn(async move {
                let client = crate::common::connect(port).await.expect("a client");
                client
                    .simple_query("set datafusion.execution.target_partitions = 16")
                    .await
                    .expect("set");
                let started = Instant::now();
                let mut answers = vec![];
                while started.elapsed() < Duration::from_secs(6) {
                    answers.push(rows(
                        &client
                            .simple_query(
                                "select l_orderkey % 7, count(*) from tpch.lineitem \
                             group by 1 order by 1",
                            )
                            .await
                            .expect("a query under scaling"),
                    ));
                }
                answers
            })
        })
        .collect();
    let mut most = 1;
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        most = most.max(alive_count(&client).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for load in loads {
        let answers = load.await.expect("the load");
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "answers changed while scaling"
        );
    }
    assert!(
        most >= 2,
        "no executor was added under load\n{}",
        cluster.logs()
    );
    assert!(most <= 3, "more than max_executors: {most}");
    // Idle: back to the minimum; the ones given back are listed as gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive_count(&client).await > 1 {
        assert!(
            Instant::now() < deadline,
            "idle executors were not given back\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gone = rows(
        &client
            .simple_query("select count(*) from system.executors where status = 'gone'")
            .await
            .expect("system.executors"),
    );
    assert_ne!(gone[0][0].as_deref(), Some("0"), "{gone:?}");
}

/// Graceful decommission (Spark's): SIGTERM to an executor holding map outputs of a running
/// query. It takes no new tasks, finishes its own and serves its outputs until the query no
/// longer reads them; then it is told it is drained and exits cleanly. The answer is exact and
/// nothing it produced is recomputed (at most the tasks launched while the signal was on its
/// way run again elsewhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_decommissions_an_executor_without_recomputing_its_outputs() {
    const SCALE: f64 = 0.1;
    let data = tpch_data_dir(SCALE);
    let env = crate::common::settings(&[
        ("EMBER_COORDINATOR_EXECUTOR_TIMEOUT_MS", "2000"),
        ("EMBER_EXECUTOR_HEARTBEAT_INTERVAL_MS", "250"),
        ("EMBER_EXECUTOR_DECOMMISSION_GRACE_MS", "30000"),
    ]);
    let mut cluster = ProcessCluster::start_with_env(3, SCALE, &data, &env);
    let monitor = cluster.connect(3).await;
    let reference = crate::common::datafusion_tpch(SCALE, &data).await;
    let sql = ember_planner::tpch::QUERIES[8];
    let mut victim = None;
    let mut answer = None;
    for _round in 0..5 {
        let client = crate::common::connect(cluster.pg_port)
            .await
            .expect("a client");
        client
            .simple_query("set search_path = tpch")
            .await
            .expect("set");
        let query = tokio::spawn(async move { client.simple_query(sql).await });
        // An executor that holds a committed output of the running query, once another stage
        // has started reading.
        while !query.is_finished() {
            let holders = rows(
                &monitor
                    .simple_query(
                        "select e.flight_port from system.tasks t \
                         join system.queries q on t.query_id = q.query_id \
                         join system.executors e on t.executor_id = e.executor_id \
                         where q.status = 'running' and t.status = 'succeeded' \
                         and t.stage_id = 0 and e.status = 'alive' limit 1",
                    )
                    .await
                    .expect("system.tasks"),
            );
            if let Some(port) = holders.first().and_then(|r| r[0].as_deref()) {
                let port: u16 = port.parse().expect("a port");
                let i = cluster.executor_by_port(port).expect("one of ours");
                cluster.signal_executor(i, "TERM");
                victim = Some((i, port));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let result = query.await.expect("the query task");
        if victim.is_some() {
            answer = Some(result);
            break;
        }
    }
    let (i, port) = victim.expect("no round was long enough to signal an executor mid-query");
    let answer = rows(&answer.expect("an answer").expect("the query succeeds"));
    let expected = crate::common::datafusion_rows(&reference, sql).await;
    crate::common::compare(&answer, &expected, true).expect("the exact answer");
    // It exits by itself, cleanly, once drained.
    let dir = cluster.dir.path().to_path_buf();
    let status =
        crate::common::wait_for_exit(&mut cluster.executors[i], Duration::from_secs(30), || {
            crate::common::logs_in(&dir)
        })
        .await;
    assert!(status.success(), "{status}\n{}", cluster.logs());
    let listed = rows(
        &monitor
            .simple_query(&format!(
                "select status from system.executors where flight_port = {port}"
            ))
            .await
            .expect("system.executors"),
    );
    assert_eq!(
        listed,
        [[Some("gone".to_string())]],
        "decommissioned, not lost"
    );
    // Nothing it had produced ran again.
    let rerun = rows(
        &monitor
            .simple_query(
                "select count(*) from system.tasks t join system.queries q \
                 on t.query_id = q.query_id where q.sql like '%nation%' and t.attempt > 0",
            )
            .await
            .expect("system.tasks"),
    );
    let rerun: usize = rerun[0][0]
        .as_deref()
        .unwrap_or("0")
        .parse()
        .expect("a count");
    assert!(rerun <= 2, "{rerun} tasks ran again\n{}", cluster.logs());
    assert!(
        cluster.logs().contains("executor decommissioned"),
        "{}",
        cluster.logs()
    );
}

/// A decommissioning executor whose tasks outlast its grace period hands them back: they run
/// again elsewhere, the answer is exact, and the executor still exits cleanly. (The grace period
/// is a millisecond, so that whatever runs when the signal lands is handed back.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_outlasting_the_decommission_grace_period_are_handed_back() {
    const SCALE: f64 = 0.1;
    let data = tpch_data_dir(SCALE);
    let env = crate::common::settings(&[
        ("EMBER_COORDINATOR_EXECUTOR_TIMEOUT_MS", "2000"),
        ("EMBER_EXECUTOR_HEARTBEAT_INTERVAL_MS", "250"),
        ("EMBER_EXECUTOR_DECOMMISSION_GRACE_MS", "1"),
    ]);
    let mut cluster = ProcessCluster::start_with_env(2, SCALE, &data, &env);
    let monitor = cluster.connect(2).await;
    let reference = crate::common::datafusion_tpch(SCALE, &data).await;
    // Few, long join tasks (each side's rows meet about 30 of the other's per part).
    let sql = "select count(*), sum(l1.l_quantity * l2.l_quantity) from tpch.lineitem l1 \
               join tpch.lineitem l2 on l1.l_partkey = l2.l_partkey";
    let expected = crate::common::datafusion_rows(&reference, sql).await;
    let mut handed_back = false;
    for _round in 0..5 {
        let client = crate::common::connect(cluster.pg_port)
            .await
            .expect("a client");
        client
            .simple_query("set datafusion.execution.target_partitions = 2")
            .await
            .expect("set");
        let query = tokio::spawn(async move { client.simple_query(sql).await });
        let mut victim = None;
        while victim.is_none() && !query.is_finished() {
            let running = rows(
                &monitor
                    .simple_query(
                        "select e.flight_port from system.tasks t \
                         join system.queries q on t.query_id = q.query_id \
                         join system.executors e on t.executor_id = e.executor_id \
                         where q.status = 'running' and t.status = 'running' \
                         and e.status = 'alive' limit 1",
                    )
                    .await
                    .expect("system.tasks"),
            );
            if let Some(port) = running.first().and_then(|r| r[0].as_deref()) {
                let i = cluster
                    .executor_by_port(port.parse().expect("a port"))
                    .expect("one of ours");
                cluster.signal_executor(i, "TERM");
                victim = Some(i);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let outcome = query.await.expect("the query task");
        let answer = rows(&outcome.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs())));
        crate::common::compare(&answer, &expected, false).expect("the exact answer");
        let Some(i) = victim else { continue };
        let dir = cluster.dir.path().to_path_buf();
        let status = crate::common::wait_for_exit(
            &mut cluster.executors[i],
            Duration::from_secs(20),
            || crate::common::logs_in(&dir),
        )
        .await;
        assert!(status.success(), "{status}\n{}", cluster.logs());
        // A task handed back just as it finished has nothing left to run again: that round
        // does not count.
        let rerun = rows(
            &monitor
                .simple_query(
                    "select count(*) from system.tasks t join system.queries q \
                     on t.query_id = q.query_id where q.sql like '%l_partkey%' and t.attempt > 0",
                )
                .await
                .expect("system.tasks"),
        );
        if cluster
            .logs()
            .contains("handing back the tasks still running")
            && rerun[0][0].as_deref() != Some("0")
        {
            handed_back = true;
            break;
        }
        cluster.restart_executor(i);
        crate::common::wait_until_alive(&cluster, &monitor, 2).await;
    }
    assert!(
        handed_back,
        "no task was handed back and run again\n{}",
        cluster.logs()
    );
}
