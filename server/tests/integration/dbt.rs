//! dbt, with its unmodified Postgres adapter (dbt-postgres), runs a project of its own over
//! TPC-H against Ember end to end (`dbt_project/`): `seed`, `run` (views, tables, incremental
//! models by delete+insert and by merge, run twice; descriptions kept as comments),
//! `snapshot` (twice, around a change), `test`, `docs generate`. Every table dbt builds is compared with single-node DataFusion's
//! answer over the same files.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    ProcessCluster, compare, datafusion_rows, datafusion_tpch, private_data_dir, python, rows,
    tpch_data_dir,
};

const SCALE: f64 = 0.01;
/// The first run takes orders up to this day; the second run, all of them.
const FIRST_RUN_THROUGH: &str = "1995-06-30";
/// How long one dbt command may take.
const DBT_TIMEOUT: Duration = Duration::from_secs(240);

/// The project, in the source tree (dbt writes its target and logs elsewhere).
fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/integration/dbt_project")
}

/// Runs `dbt <args>` against the profile in `work`; its output, and whether it succeeded.
fn dbt(work: &Path, args: &[&str]) -> (bool, String) {
    let dbt = Path::new(&python())
        .parent()
        .expect("the venv's bin directory")
        .join("dbt");
    let mut child = Command::new(dbt)
        .args(args)
        .arg("--project-dir")
        .arg(project())
        .arg("--profiles-dir")
        .arg(work)
        .env("DBT_TARGET_PATH", work.join("target"))
        .env("DBT_LOG_PATH", work.join("logs"))
        .env("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        .env("DBT_VERSION_CHECK", "false")
        .env("DBT_PARTIAL_PARSE", "false")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dbt (scripts/test.sh installs it in the test venv)");
    let deadline = Instant::now() + DBT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for dbt") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("dbt {args:?} took longer than {DBT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = child.wait_with_output().expect("dbt's output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (status.success(), text)
}

/// Runs `dbt <args>`, which must succeed with `summary` (`PASS=6 WARN=0 ERROR=0`) in its
/// last lines.
fn dbt_ok(work: &Path, args: &[&str], summary: &str) -> String {
    let (ok, output) = dbt(work, args);
    assert!(
        ok && output.contains(summary),
        "dbt {args:?} should end with {summary}:\n{output}"
    );
    output
}

async fn query(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    rows(
        &client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbt_builds_tests_snapshots_and_documents_a_project_over_tpch() {
    let tpch = tpch_data_dir(SCALE);
    let (_data, data_dir) = private_data_dir(&tpch, SCALE);
    let cluster = ProcessCluster::start(2, SCALE, &data_dir);
    let client = cluster.connect(2).await;
    let reference = datafusion_tpch(SCALE, &tpch).await;

    let work = tempfile::tempdir().expect("temp dir");
    let work = work.path();
    std::fs::write(
        work.join("profiles.yml"),
        format!(
            "ember:\n  target: dev\n  outputs:\n    dev:\n      type: postgres\n      \
             host: 127.0.0.1\n      port: {}\n      user: ember\n      password: ''\n      \
             dbname: ember\n      schema: analytics\n      threads: 2\n",
            cluster.pg_port
        ),
    )
    .expect("write profiles.yml");

    dbt_ok(work, &["seed"], "PASS=2 WARN=0 ERROR=0");

    // First run: views, tables, and the incremental models built from the orders up to a day.
    let vars = format!("{{orders_through: '{FIRST_RUN_THROUGH}'}}");
    dbt_ok(work, &["run", "--vars", &vars], "PASS=6 WARN=0 ERROR=0");
    let first = query(
        &client,
        "select count(*), max(order_date) from analytics.daily_orders",
    )
    .await;
    let expected = datafusion_rows(
        &reference,
        &format!(
            "select count(distinct o_orderdate), max(o_orderdate) from orders \
             where o_orderdate <= date '{FIRST_RUN_THROUGH}'"
        ),
    )
    .await;
    compare(&first, &expected, true).expect("the first run's days");

    // Second run, over every order: the incremental models add to what the first run built
    // (delete+insert of the newest day, MERGE of the newest month).
    dbt_ok(work, &["run"], "PASS=6 WARN=0 ERROR=0");
    let checks = [
        (
            "select order_date, orders, revenue from analytics.daily_orders",
            "select o_orderdate, count(*), sum(o_totalprice) from orders group by o_orderdate",
        ),
        (
            "select order_key, customer_key, status, total_price, order_date \
             from analytics.order_status",
            "select o_orderkey, o_custkey, o_orderstatus, o_totalprice, o_orderdate from orders",
        ),
        (
            "select customer_key, name, segment, nation, orders, revenue \
             from analytics.customer_revenue",
            "select c_custkey, c_name, c_mktsegment, n_name, count(o_orderkey), \
             coalesce(sum(o_totalprice), 0) from customer \
             join nation on c_nationkey = n_nationkey \
             left join orders on o_custkey = c_custkey \
             group by c_custkey, c_name, c_mktsegment, n_name",
        ),
        (
            "select segment, revenue from analytics.segment_performance",
            "select c_mktsegment, sum(o_totalprice) from customer \
             join orders on o_custkey = c_custkey group by c_mktsegment",
        ),
    ];
    for (ember, datafusion) in checks {
        let actual = query(&client, ember).await;
        let expected = datafusion_rows(&reference, datafusion).await;
        compare(&actual, &expected, false).unwrap_or_else(|e| panic!("{ember}: {e}"));
    }
    // The incremental models were changed in place, not rebuilt: their histories hold the
    // second run's delete and write, and the merge.
    let operations = |table: &str| {
        let client = &client;
        let sql = format!("describe history analytics.{table}");
        async move {
            query(client, &sql)
                .await
                .into_iter()
                .filter_map(|row| row[3].clone())
                .collect::<Vec<String>>()
        }
    };
    let daily = operations("daily_orders").await;
    assert_eq!(
        daily.first().map(String::as_str),
        Some("WRITE"),
        "{daily:?}"
    );
    assert!(daily.iter().any(|op| op == "DELETE"), "{daily:?}");
    let merged = operations("order_status").await;
    assert_eq!(
        merged.first().map(String::as_str),
        Some("MERGE"),
        "{merged:?}"
    );

    // Snapshots: a change between two snapshots closes the old version and opens a new one.
    dbt_ok(work, &["snapshot"], "PASS=1 WARN=0 ERROR=0");
    client
        .simple_query(
            "update analytics.customer_tiers set tier = 'platinum' where customer_key = 1",
        )
        .await
        .expect("change a tier");
    dbt_ok(work, &["snapshot"], "PASS=1 WARN=0 ERROR=0");
    let history = query(
        &client,
        "select customer_key, tier, dbt_valid_to is null \
         from snapshots.customer_tiers_snapshot order by customer_key, dbt_valid_from",
    )
    .await;
    let expected: Vec<Vec<Option<String>>> = [
        ("1", "gold", "f"),
        ("1", "platinum", "t"),
        ("2", "silver", "t"),
        ("3", "bronze", "t"),
        ("4", "gold", "t"),
        ("5", "silver", "t"),
    ]
    .iter()
    .map(|(k, t, c)| {
        vec![
            Some(k.to_string()),
            Some(t.to_string()),
            Some(c.to_string()),
        ]
    })
    .collect();
    assert_eq!(history, expected);

    // Tests: all pass; a duplicate day makes the uniqueness test fail, as it should.
    dbt_ok(work, &["test"], "PASS=14 WARN=0 ERROR=0");
    client
        .simple_query(
            "insert into analytics.daily_orders \
             select order_date, orders, revenue from analytics.daily_orders limit 1",
        )
        .await
        .expect("add a duplicate day");
    let (ok, output) = dbt(work, &["test", "--select", "daily_orders"]);
    assert!(
        !ok && output.contains("FAIL 1 unique_daily_orders_order_date"),
        "a duplicate day fails the uniqueness test:\n{output}"
    );

    // Docs: the catalog dbt reads from pg_catalog has every relation with its columns.
    dbt_ok(work, &["docs", "generate"], "Catalog written");
    let catalog: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(work.join("target/catalog.json")).expect("catalog.json"),
    )
    .expect("catalog.json is JSON");
    let columns = |node: &str| -> Vec<(String, String)> {
        let mut columns: Vec<(usize, String, String)> = catalog["nodes"][node]["columns"]
            .as_object()
            .unwrap_or_else(|| panic!("{node} in the catalog: {catalog}"))
            .values()
            .map(|c| {
                (
                    c["index"].as_u64().unwrap_or_default() as usize,
                    c["name"].as_str().unwrap_or_default().to_string(),
                    c["type"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        columns.sort();
        columns.into_iter().map(|(_, n, t)| (n, t)).collect()
    };
    let named = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    };
    assert_eq!(
        columns("seed.ember_tpch.segment_targets"),
        named(&[
            ("segment", "character varying(10)"),
            ("target_revenue", "numeric(15,2)"),
            ("owner", "text"),
        ])
    );
    assert_eq!(
        columns("model.ember_tpch.daily_orders"),
        named(&[
            ("order_date", "date"),
            ("orders", "bigint"),
            ("revenue", "numeric(25,2)"),
        ])
    );
    for node in [
        "model.ember_tpch.stg_orders",
        "model.ember_tpch.stg_customers",
        "model.ember_tpch.customer_revenue",
        "model.ember_tpch.segment_performance",
        "model.ember_tpch.order_status",
        "seed.ember_tpch.customer_tiers",
        "snapshot.ember_tpch.customer_tiers_snapshot",
    ] {
        assert!(
            !columns(node).is_empty(),
            "{node} has columns in the catalog"
        );
    }
    assert_eq!(
        catalog["nodes"]["model.ember_tpch.stg_orders"]["metadata"]["type"],
        "VIEW"
    );
    // persist_docs: the models' descriptions went in as comments and come back in the catalog.
    let revenue = &catalog["nodes"]["model.ember_tpch.customer_revenue"];
    assert_eq!(
        revenue["metadata"]["comment"],
        "Orders and revenue per customer."
    );
    assert_eq!(
        revenue["columns"]["customer_key"]["comment"],
        "The customer's key, from TPC-H's customer table."
    );
    let orders = &catalog["nodes"]["model.ember_tpch.stg_orders"];
    assert_eq!(orders["metadata"]["comment"], "TPC-H orders, renamed.");
    assert_eq!(
        orders["columns"]["order_key"]["comment"],
        "The order's key."
    );

    // dbt's sessions have ended: their temporary tables are gone, schemas and files.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let schemas = query(
            &client,
            "select nspname from pg_namespace where starts_with(nspname, 'pg_temp_')",
        )
        .await;
        let dirs: Vec<_> = std::fs::read_dir(data_dir.join("warehouse"))
            .expect("the warehouse")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("pg_temp_"))
            .collect();
        if schemas.is_empty() && dirs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "temporary schemas {schemas:?} and directories {} outlived their sessions",
            dirs.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
