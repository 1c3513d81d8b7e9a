//! The `kubernetes` cluster manager against the in-repo API server (`fake_kube`), whose kubelet
//! starts a real `ember executor` process per pod: pods from a template file with labels and an
//! owner, scaling up under a TPC-H load and down when idle, a pod deleted mid-query, orphans of
//! a killed coordinator removed by its successor, and nothing asked of the API but pods.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{
    ProcessCluster, compare, datafusion_rows, datafusion_tpch, rows, tpch_data_dir,
};
use crate::fake_kube::FakeKube;

const NAMESPACE: &str = "ember-test";
const SCALE: f64 = 0.01;

/// A pod template file as a user would write one: its own label, and the executors' settings
/// in the container's environment.
fn template(dir: &Path, data: &Path) -> std::path::PathBuf {
    let path = dir.join("executor-pod.yaml");
    let text = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  labels:\n    team: data\nspec:\n  containers:\n  \
         - name: executor\n    image: ember:test\n    env:\n    - name: EMBER_COORDINATOR_DATA_DIR\n      \
         value: {}\n    - name: EMBER_EXECUTOR_HEARTBEAT_INTERVAL_MS\n      value: \"250\"\n",
        data.display()
    );
    std::fs::write(&path, text).expect("write the template");
    path
}

fn coordinator_env(dir: &Path, data: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("EMBER_CLUSTER_MANAGER_KIND".into(), "kubernetes".into()),
        (
            "KUBECONFIG".into(),
            dir.join("kubeconfig").display().to_string(),
        ),
        (
            "EMBER_KUBERNETES_POD_TEMPLATE_FILE".into(),
            template(dir, data).display().to_string(),
        ),
        (
            "EMBER_KUBERNETES_COORDINATOR_POD".into(),
            "ember-coordinator-0".into(),
        ),
        ("EMBER_CLUSTER_MANAGER_EXECUTOR_SLOTS".into(), "1".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// The executor pods in the API now (those being deleted included).
fn executor_pods(fake: &FakeKube) -> Vec<Value> {
    fake.pods(NAMESPACE)
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/component"] == "executor")
        .collect()
}

fn names(pods: &[Value]) -> Vec<String> {
    pods.iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

async fn alive(client: &tokio_postgres::Client) -> usize {
    let found = rows(
        &client
            .simple_query("select count(*) from system.executors where status = 'alive'")
            .await
            .expect("system.executors"),
    );
    found[0][0]
        .as_deref()
        .unwrap_or("0")
        .parse()
        .expect("a count")
}

fn pod_logs(dir: &Path) -> String {
    crate::common::logs_in(dir)
}

/// Only pods, only in the coordinator's namespace: what `config/k8s/rbac.yaml` grants.
fn assert_only_pods_asked(fake: &FakeKube) {
    let prefix = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    let others: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| {
            let (method, path) = r.split_once(' ').unwrap_or_default();
            !(["GET", "POST", "DELETE"].contains(&method) && path.starts_with(&prefix))
        })
        .collect();
    assert!(others.is_empty(), "asked beyond pods: {others:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_pods_scale_with_a_tpch_load_survive_a_deletion_and_go_when_idle() {
    let data = tpch_data_dir(SCALE);
    let dir = tempfile::tempdir().expect("a dir");
    let fake = FakeKube::start(dir.path().to_path_buf()).await;
    let owner = fake.add_pod(NAMESPACE, "ember-coordinator-0");
    fake.kubeconfig(&dir.path().join("kubeconfig"), NAMESPACE);
    let env = coordinator_env(
        dir.path(),
        &data,
        &[
            ("EMBER_CLUSTER_MANAGER_EXECUTORS", "1"),
            ("EMBER_CLUSTER_MANAGER_DYNAMIC_ALLOCATION", "true"),
            ("EMBER_CLUSTER_MANAGER_MIN_EXECUTORS", "1"),
            ("EMBER_CLUSTER_MANAGER_MAX_EXECUTORS", "3"),
            ("EMBER_CLUSTER_MANAGER_SCHEDULER_BACKLOG_TIMEOUT_MS", "100"),
            (
                "EMBER_CLUSTER_MANAGER_SUSTAINED_SCHEDULER_BACKLOG_TIMEOUT_MS",
                "100",
            ),
            ("EMBER_CLUSTER_MANAGER_EXECUTOR_IDLE_TIMEOUT_MS", "5000"),
        ],
    );
    let cluster = ProcessCluster::start_with_env(0, SCALE, &data, &env);
    let logs = || format!("{}\n{}", cluster.logs(), pod_logs(dir.path()));
    let client = cluster.connect(1).await;

    // The minimum: one pod, from the template, labelled and owned by the coordinator's pod.
    let pods = executor_pods(&fake);
    assert_eq!(pods.len(), 1, "{pods:?}");
    let pod = &pods[0];
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(pod["metadata"]["labels"]["team"], "data");
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/instance"],
        "ember"
    );
    assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], owner.as_str());
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Pod");
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    assert_eq!(pod["spec"]["containers"][0]["image"], "ember:test");
    let allocation = pod["metadata"]["labels"]["ember.sql/allocation"]
        .as_str()
        .expect("an allocation label")
        .to_string();
    let listed = rows(
        &client
            .simple_query("select allocation_id from system.executors where status = 'alive'")
            .await
            .expect("system.executors"),
    );
    assert_eq!(listed, [[Some(allocation)]]);

    // A TPC-H load on one slot: more pods, up to the maximum, and exact answers.
    let reference = datafusion_tpch(SCALE, &data).await;
    let queries = [1usize, 3, 5, 9, 18];
    let load = {
        let port = cluster.pg_port;
        tokio::spawn(async move {
            let client = crate::common::connect(port).await.expect("a client");
            client
                .simple_query(
                    "set search_path = tpch; set datafusion.execution.target_partitions = 8",
                )
                .await
                .expect("set");
            let started = Instant::now();
            let mut answers = vec![];
            while started.elapsed() < Duration::from_secs(8) {
                for q in queries {
                    let sql = ember_planner::tpch::QUERIES[q - 1];
                    let answer = client.simple_query(sql).await.map(|m| rows(&m));
                    answers.push((q, answer));
                }
            }
            answers
        })
    };
    let mut most = 1;
    while !load.is_finished() {
        most = most.max(alive(&client).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (q, answer) in load.await.expect("the load") {
        let sql = ember_planner::tpch::QUERIES[q - 1];
        let answer =
            answer.unwrap_or_else(|e| panic!("q{q} failed under scaling: {e}\n{}", logs()));
        let expected = datafusion_rows(&reference, sql).await;
        compare(&answer, &expected, true).unwrap_or_else(|d| panic!("q{q}: {d}"));
    }
    assert!(most >= 2, "no pod was added under load\n{}", logs());
    assert!(most <= 3, "more than max_executors: {most}");

    // A pod deleted mid-query (kubectl delete pod): the answer is exact, the pod goes.
    let sql = ember_planner::tpch::QUERIES[8];
    let mut deleted = None;
    for _round in 0..10 {
        let query = {
            let client = crate::common::connect(cluster.pg_port)
                .await
                .expect("a client");
            client
                .simple_query(
                    "set search_path = tpch; set datafusion.execution.target_partitions = 8",
                )
                .await
                .expect("set");
            tokio::spawn(async move { client.simple_query(sql).await.map(|m| rows(&m)) })
        };
        while deleted.is_none() && !query.is_finished() {
            let running = rows(
                &client
                    .simple_query(
                        "select e.allocation_id from system.tasks t \
                         join system.queries q on t.query_id = q.query_id \
                         join system.executors e on t.executor_id = e.executor_id \
                         where q.status = 'running' and t.status = 'running' \
                         and e.status = 'alive' limit 1",
                    )
                    .await
                    .expect("system.tasks"),
            );
            if let Some(allocation) = running.first().and_then(|r| r[0].clone()) {
                let pod = executor_pods(&fake)
                    .into_iter()
                    .find(|p| {
                        p["metadata"]["labels"]["ember.sql/allocation"] == allocation.as_str()
                    })
                    .expect("the executor's pod");
                let name = pod["metadata"]["name"]
                    .as_str()
                    .expect("a name")
                    .to_string();
                assert!(fake.delete_pod(NAMESPACE, &name));
                deleted = Some(name);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let answer = query.await.expect("the query task");
        let answer =
            answer.unwrap_or_else(|e| panic!("q9 failed after a pod deletion: {e}\n{}", logs()));
        let expected = datafusion_rows(&reference, sql).await;
        compare(&answer, &expected, true).unwrap_or_else(|d| panic!("q9: {d}"));
        if deleted.is_some() {
            break;
        }
    }
    let deleted = deleted.expect("no query ran long enough to delete a pod under it");
    let deadline = Instant::now() + Duration::from_secs(30);
    while names(&executor_pods(&fake)).contains(&deleted) {
        assert!(
            Instant::now() < deadline,
            "the deleted pod stayed\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Idle: back to the minimum, the pods given back deleted from the API.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pods = executor_pods(&fake);
        if alive(&client).await == 1 && pods.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idle pods were not given back: {:?}\n{}",
            names(&pods),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_only_pods_asked(&fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_removes_the_pods_its_predecessor_left() {
    let data = tpch_data_dir(SCALE);
    let dir = tempfile::tempdir().expect("a dir");
    let fake = FakeKube::start(dir.path().to_path_buf()).await;
    fake.add_pod(NAMESPACE, "ember-coordinator-0");
    fake.kubeconfig(&dir.path().join("kubeconfig"), NAMESPACE);
    let env = coordinator_env(
        dir.path(),
        &data,
        &[("EMBER_CLUSTER_MANAGER_EXECUTORS", "2")],
    );
    let mut cluster = ProcessCluster::start_with_env(0, SCALE, &data, &env);
    let client = cluster.connect(2).await;
    drop(client);
    let before = names(&executor_pods(&fake));
    assert_eq!(before.len(), 2, "{before:?}");

    // SIGKILL: the coordinator deletes nothing; its pods are orphans.
    cluster.restart_coordinator();
    let client = cluster.connect(2).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = names(&executor_pods(&fake));
        if now.len() == 2 && now.iter().all(|n| !before.contains(n)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orphans stayed: {now:?} (before: {before:?})\n{}\n{}",
            cluster.logs(),
            pod_logs(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        cluster
            .logs()
            .contains("removing an executor pod an earlier coordinator left"),
        "{}",
        cluster.logs()
    );
    // The new pods serve queries.
    let reference = datafusion_tpch(SCALE, &data).await;
    let sql =
        "select l_returnflag, count(*), sum(l_quantity) from tpch.lineitem group by 1 order by 1";
    let answer = rows(&client.simple_query(sql).await.expect("a query"));
    compare(&answer, &datafusion_rows(&reference, sql).await, true).expect("the exact answer");
    assert_only_pods_asked(&fake);
}
