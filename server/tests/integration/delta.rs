//! Delta Lake tables shared with other engines: the Python `deltalake` package (delta-rs)
//! writes, Ember reads them as external tables over its cluster, at each scan's newest
//! version, with files pruned by the log's statistics.

use crate::common::{ProcessCluster, python, rows, script, settings, tpch_data_dir};

/// Runs `delta_interop.py` with `args`; its last output line, as JSON.
fn interop(args: &[&str]) -> serde_json::Value {
    let output = std::process::Command::new(python())
        .arg(script("delta_interop.py"))
        .args(args)
        .output()
        .expect("run delta_interop.py");
    assert!(
        output.status.success(),
        "delta_interop.py {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("JSON from deltalake")
}

fn message(error: &tokio_postgres::Error) -> String {
    error
        .as_db_error()
        .map_or_else(|| error.to_string(), |e| e.message().to_string())
}

/// What Ember answers of the table, in `delta_interop.py summary`'s form.
async fn summary(client: &tokio_postgres::Client, table: &str) -> serde_json::Value {
    let answer = rows(
        &client
            .simple_query(&format!(
                "select region, count(*), round(sum(amount), 6), min(id), max(id) \
                 from {table} group by region order by region"
            ))
            .await
            .expect("the summary query"),
    );
    serde_json::Value::Array(
        answer
            .into_iter()
            .map(|r| {
                let text = |i: usize| r[i].clone().expect("no null");
                serde_json::json!([
                    text(0),
                    text(1).parse::<u64>().expect("a count"),
                    text(2).parse::<f64>().expect("a sum"),
                    text(3).parse::<i64>().expect("an id"),
                    text(4).parse::<i64>().expect("an id"),
                ])
            })
            .collect(),
    )
}

/// The data files the plan of `sql` scans (EXPLAIN may show the scan more than once).
async fn scanned_files(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let plan = rows(
        &client
            .simple_query(&format!("explain {sql}"))
            .await
            .expect("explain"),
    );
    let text: String = plan
        .iter()
        .filter_map(|r| r.get(1).cloned().flatten())
        .collect::<Vec<_>>()
        .join("\n");
    text.split(|c: char| c == '[' || c == ']' || c == ',' || c.is_whitespace())
        .filter(|w| w.ends_with(".parquet"))
        .map(str::to_string)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_deltalake_writes_are_read_over_the_cluster_at_their_newest_version() {
    let tables = tempfile::tempdir().expect("a temp dir");
    let location = tables.path().join("sales");
    let location = location.to_str().expect("a UTF-8 path");
    interop(&["write", location, "0"]);
    interop(&["write", location, "1"]);
    let data = tpch_data_dir(0.01);
    let allowed = format!("{},{}", tables.path().display(), data.display());
    let env = settings(&[("EMBER_STORAGE_ALLOWED_PATHS", allowed.as_str())]);
    let mut cluster = ProcessCluster::start_with_env(2, 0.01, &data, &env);
    let client = cluster.connect(2).await;
    client
        .simple_query(&format!(
            "create external table sales stored as delta location '{location}'"
        ))
        .await
        .expect("create the external Delta table");

    // Every column, as deltalake reads it.
    let expected = interop(&["summary", location]);
    assert_eq!(expected["version"], 1);
    assert_eq!(summary(&client, "sales").await, expected["regions"]);
    let columns = rows(
        &client
            .simple_query(
                "select column_name, data_type from information_schema.columns \
                 where table_name = 'sales' order by ordinal_position",
            )
            .await
            .expect("columns"),
    );
    let columns: Vec<(String, String)> = columns
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    assert_eq!(
        columns.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["id", "name", "amount", "day", "region"],
        "{columns:?}"
    );
    let nulls = rows(
        &client
            .simple_query("select count(*) - count(name), min(day), max(day) from sales")
            .await
            .expect("nulls and dates"),
    );
    assert_eq!(
        nulls[0],
        [
            Some("89".into()),
            Some("2024-01-01".into()),
            Some("2024-01-28".into())
        ]
    );
    // It ran on the executors: the scan is a stage of its own.
    let stages = rows(
        &client
            .simple_query(
                "select count(*) from system.stages s join system.queries q \
                 on s.query_id = q.query_id where q.sql like '%count(*) - count(name)%'",
            )
            .await
            .expect("stages"),
    );
    assert_ne!(stages[0][0].as_deref(), Some("1"), "{stages:?}");

    // Files are pruned by partition values and by the log's statistics.
    let all = scanned_files(&client, "select * from sales").await;
    assert_eq!(all.len(), 3, "{all:?}");
    let c = scanned_files(&client, "select * from sales where region = 'c'").await;
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(c[0].contains("region=c"), "{c:?}");
    let by_id = scanned_files(&client, "select * from sales where id = 742").await;
    assert_eq!(by_id.len(), 1, "{by_id:?}");
    assert!(by_id[0].contains("region=b"), "{by_id:?}");
    let point = rows(
        &client
            .simple_query("select name, amount, region from sales where id = 742")
            .await
            .expect("a point lookup"),
    );
    assert_eq!(
        point,
        [[
            Some("name-742".into()),
            Some("182.5".into()),
            Some("b".into())
        ]]
    );

    // Float bounds in the log leave NaN out: the log's statistics prune no file by them, and a
    // comparison answers as on the same parquet file read as a parquet table.
    let floats = tables.path().join("floats");
    let floats = floats.to_str().expect("a UTF-8 path");
    interop(&["nan", floats]);
    client
        .simple_query(&format!(
            "create external table floats stored as delta location '{floats}'"
        ))
        .await
        .expect("create the float table");
    let nan_query = "select count(*) from floats where x > 100";
    assert_eq!(scanned_files(&client, nan_query).await.len(), 1);
    let file = std::fs::read_dir(floats)
        .expect("the table's directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .expect("its parquet file");
    client
        .simple_query(&format!(
            "create external table floats_parquet stored as parquet location '{}'",
            file.display()
        ))
        .await
        .expect("the same file as a parquet table");
    let as_delta = rows(&client.simple_query(nan_query).await.expect("NaN via Delta"));
    let as_parquet = rows(
        &client
            .simple_query(&nan_query.replace("floats", "floats_parquet"))
            .await
            .expect("NaN via parquet"),
    );
    assert_eq!(as_delta, as_parquet);

    // Another engine appends: the next scan sees it.
    interop(&["write", location, "2"]);
    let expected = interop(&["summary", location]);
    assert_eq!(expected["version"], 2);
    assert_eq!(summary(&client, "sales").await, expected["regions"]);

    // The table survives a restart of the coordinator.
    drop(client);
    cluster.restart_coordinator();
    let client = cluster.connect(2).await;
    assert_eq!(summary(&client, "sales").await, expected["regions"]);

    // What is not a Delta table, or is given other columns, is refused with a reason.
    let plain = tables.path().join("plain");
    std::fs::create_dir_all(&plain).expect("a directory");
    let error = client
        .simple_query(&format!(
            "create external table plain stored as delta location '{}'",
            plain.display()
        ))
        .await
        .expect_err("not a Delta table");
    assert!(message(&error).contains("Delta table"), "{error:?}");
    let error = client
        .simple_query(&format!(
            "create external table wrong (x int) stored as delta location '{location}'"
        ))
        .await
        .expect_err("columns that are not the table's");
    assert!(message(&error).contains("columns"), "{error:?}");
}
