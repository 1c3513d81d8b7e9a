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
                    r[0],
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

    // Another engine appends: the next scan sees it, and the versions before stay readable.
    interop(&["write", location, "2"]);
    let expected = interop(&["summary", location]);
    assert_eq!(expected["version"], 2);
    assert_eq!(summary(&client, "sales").await, expected["regions"]);
    let first = interop(&["summary", location, "0"]);
    assert_eq!(
        summary(&client, "sales version as of 0").await,
        first["regions"]
    );
    let history = rows(
        &client
            .simple_query("describe history sales")
            .await
            .expect("describe history"),
    );
    assert_eq!(history.len(), 3, "{history:?}");
    assert_eq!(history[0][0].as_deref(), Some("2"));

    // Ember writes the table in place, into its partitions: deltalake reads what Ember reads.
    client
        .simple_query(
            "insert into sales select id + 100000, name, amount, day, region from sales \
             where region <> 'b'",
        )
        .await
        .expect("insert into the Delta table");
    let expected = interop(&["summary", location]);
    assert_eq!(expected["version"], 3);
    assert_eq!(summary(&client, "sales").await, expected["regions"]);
    let in_c = std::fs::read_dir(std::path::Path::new(location).join("region=c"))
        .expect("the partition's directory")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
        .count();
    assert!(
        in_c >= 2,
        "Ember's files are not in the partition's directory"
    );

    // The table survives a restart of the coordinator.
    drop(client);
    cluster.restart_coordinator();
    let client = cluster.connect(2).await;
    assert_eq!(summary(&client, "sales").await, expected["regions"]);

    // UPDATE, DELETE, MERGE and OPTIMIZE change it in place, a Delta version each (UPDATE
    // moving rows between partitions); deltalake reads what Ember reads.
    let changes = [
        (
            "update sales set amount = amount + 1000, region = 'd' where region = 'c' and id % 2 = 0",
            500,
        ),
        ("delete from sales where region = 'b' and id >= 600", 400),
        (
            "merge into sales using (values (2000, 5.0), (-1, 7.5)) as s(id, amount) \
             on sales.id = s.id when matched then update set amount = s.amount \
             when not matched then insert (id, name, amount, day, region) \
             values (s.id, 'new', s.amount, date '2024-02-01', 'e')",
            2,
        ),
    ];
    for (sql, count) in changes {
        let changed = client
            .execute(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)));
        assert_eq!(changed, count, "{sql}");
    }
    client
        .simple_query("optimize sales")
        .await
        .expect("optimize the Delta table");
    let changed = interop(&["summary", location]);
    assert_eq!(changed["version"], 7);
    assert_eq!(summary(&client, "sales").await, changed["regions"]);
    assert!(
        std::path::Path::new(location).join("region=d").is_dir(),
        "no directory of the partition rows moved to"
    );
    let operations = interop(&["history", location])["operations"].clone();
    assert_eq!(
        operations.as_array().map(|o| o[..4].to_vec()),
        Some(
            ["OPTIMIZE", "MERGE", "DELETE", "UPDATE"]
                .map(serde_json::Value::from)
                .to_vec()
        ),
        "{operations}"
    );

    // INSERT OVERWRITE replaces every file of the version it read.
    client
        .simple_query("insert overwrite sales select * from sales where region = 'a' and id < 100")
        .await
        .expect("overwrite the Delta table");
    let overwritten = interop(&["summary", location]);
    assert_eq!(
        overwritten["regions"],
        serde_json::json!([["a", 100, 937.5, 0, 99]])
    );
    assert_eq!(summary(&client, "sales").await, overwritten["regions"]);

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

/// The directory of managed table `name` in the warehouse of `data_dir`.
fn table_dir(data_dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    std::fs::read_dir(data_dir.join("warehouse/public"))
        .expect("the warehouse")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{name}-")))
        })
        .unwrap_or_else(|| panic!("no directory of table {name}"))
}

async fn one(client: &tokio_postgres::Client, sql: &str) -> String {
    rows(
        &client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}")),
    )[0][0]
        .clone()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_tables_are_delta_tables_that_update_and_delete_change() {
    let data = tempfile::tempdir().expect("temp dir");
    let data_dir = std::fs::canonicalize(data.path()).expect("data dir");
    let mut cluster = ProcessCluster::start(2, 0.01, &data_dir);
    let client = cluster.connect(2).await;
    for sql in [
        "create table li as select l_orderkey, l_linenumber, l_quantity, l_shipmode \
         from tpch.lineitem where l_orderkey % 2 = 0",
        "insert into li select l_orderkey, l_linenumber, l_quantity, l_shipmode \
         from tpch.lineitem where l_orderkey % 2 = 1",
    ] {
        client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}\n{}", cluster.logs()));
    }

    // Row counts as PostgreSQL reports them, and the rows single-node DataFusion computes.
    let ctx = crate::common::datafusion_tpch(0.01, &data_dir).await;
    let deleted = client
        .execute("delete from li where l_quantity > 40", &[])
        .await
        .expect("delete");
    let updated = client
        .execute(
            "update li set l_quantity = l_quantity + 100 where l_shipmode = 'AIR'",
            &[],
        )
        .await
        .expect("update");
    let expected_counts = crate::common::datafusion_rows(
        &ctx,
        "select count(*) filter (where l_quantity > 40), \
         count(*) filter (where l_quantity <= 40 and l_shipmode = 'AIR') from lineitem",
    )
    .await;
    assert_eq!(
        [Some(deleted.to_string()), Some(updated.to_string())].to_vec(),
        expected_counts[0]
    );
    let ember = rows(
        &client
            .simple_query(
                "select l_shipmode, count(*), cast(sum(l_quantity) as bigint) from li \
                 group by 1 order by 1",
            )
            .await
            .expect("summary"),
    );
    let expected = crate::common::datafusion_rows(
        &ctx,
        "select l_shipmode, count(*), cast(sum(case when l_shipmode = 'AIR' \
         then l_quantity + 100 else l_quantity end) as bigint) from lineitem \
         where l_quantity <= 40 group by 1 order by 1",
    )
    .await;
    assert_eq!(ember, expected);
    // Nothing matches: nothing is rewritten or committed.
    let none = client
        .execute("delete from li where l_orderkey < 0", &[])
        .await
        .expect("delete nothing");
    assert_eq!(none, 0);

    // The Python deltalake package reads the same rows and the same history.
    client
        .simple_query(
            "create table small as select cast(l_orderkey as bigint) as n from li where l_linenumber = 1",
        )
        .await
        .expect("create small");
    client
        .simple_query("delete from small where n % 3 = 0")
        .await
        .expect("delete from small");
    client
        .simple_query("update small set n = -n where n % 3 = 1")
        .await
        .expect("update small");
    let ours = rows(
        &client
            .simple_query("select count(*), sum(n) from small")
            .await
            .expect("small"),
    );
    let theirs = interop(&[
        "history",
        table_dir(&data_dir, "small").to_str().expect("UTF-8"),
    ]);
    assert_eq!(
        ours[0][0].as_deref(),
        Some(theirs["rows"].to_string().as_str())
    );
    assert_eq!(
        ours[0][1].as_deref(),
        Some(theirs["sum"].to_string().as_str())
    );
    assert_eq!(
        theirs["operations"],
        serde_json::json!(["UPDATE", "DELETE", "CREATE TABLE"])
    );

    // Eight clients insert at once: every row arrives.
    client
        .simple_query("create table c (n int)")
        .await
        .expect("create c");
    let mut inserts = vec![];
    for i in 0..8 {
        let port = cluster.pg_port;
        inserts.push(tokio::spawn(async move {
            let client = crate::common::connect(port).await.expect("connect");
            for j in 0..3 {
                client
                    .simple_query(&format!("insert into c values ({})", i * 10 + j))
                    .await
                    .expect("a concurrent insert");
            }
        }));
    }
    for insert in inserts {
        insert.await.expect("an inserting client");
    }
    assert_eq!(one(&client, "select count(distinct n) from c").await, "24");

    // Two updates of the same rows at once: both read one version, and the second to commit
    // loses with 40001. A pair may not overlap on its own; some pair does.
    let mut conflicted = false;
    for _ in 0..8 {
        let (a, b) = (
            crate::common::connect(cluster.pg_port).await.expect("a"),
            crate::common::connect(cluster.pg_port).await.expect("b"),
        );
        let sql = "update li set l_linenumber = l_linenumber + 1 where l_orderkey < 20000";
        let (ra, rb) = tokio::join!(a.execute(sql, &[]), b.execute(sql, &[]));
        for result in [&ra, &rb] {
            if let Err(error) = result {
                let code = error.code().map(|c| c.code().to_string());
                assert_eq!(code.as_deref(), Some("40001"), "{error}");
                assert!(message(error).contains("retry"), "{error}");
            }
        }
        assert!(
            ra.is_ok() || rb.is_ok(),
            "one of two conflicting updates commits"
        );
        if ra.is_err() || rb.is_err() {
            conflicted = true;
            break;
        }
    }
    assert!(
        conflicted,
        "no pair of updates conflicted\n{}",
        cluster.logs()
    );

    // A data dir of the earlier layout (files listed in the catalog, no log) is converted in
    // place at start; a file its manifest does not list was never committed and goes.
    client
        .simple_query("create table old as select * from li where l_orderkey < 1000")
        .await
        .expect("create old");
    client
        .simple_query("insert into old select * from li where l_orderkey >= 59000")
        .await
        .expect("insert into old");
    let check = "select count(*), cast(sum(l_quantity) as bigint), min(l_orderkey) from old";
    let before = rows(&client.simple_query(check).await.expect("check old"));
    drop(client);
    cluster.kill_coordinator();
    let dir = table_dir(&data_dir, "old");
    std::fs::remove_dir_all(dir.join("_delta_log")).expect("remove the log");
    let mut files = vec![];
    for entry in std::fs::read_dir(&dir).expect("table dir").flatten() {
        let name = entry.file_name().into_string().expect("UTF-8");
        if name.ends_with(".parquet") {
            let size = entry.metadata().expect("size").len();
            files.push(serde_json::json!({"path": name, "size": size}));
        }
    }
    assert!(files.len() >= 2, "{files:?}");
    let stray = dir.join("00000000000000000000-00000-uncommitted.parquet");
    std::fs::copy(dir.join(files[0]["path"].as_str().expect("a path")), &stray)
        .expect("a stray file");
    let catalog_path = data_dir.join("catalog/catalog.json");
    let mut catalog: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&catalog_path).expect("catalog")).expect("JSON");
    for object in catalog["objects"].as_array_mut().expect("objects") {
        if object["name"] == "old" {
            object["files"] = serde_json::Value::Array(files.clone());
        }
    }
    std::fs::write(&catalog_path, serde_json::to_vec(&catalog).expect("JSON")).expect("write");
    cluster.start_coordinator();
    let client = cluster.connect(2).await;
    let after = rows(&client.simple_query(check).await.expect("check converted"));
    assert_eq!(before, after, "\n{}", cluster.logs());
    assert!(dir.join("_delta_log").exists(), "no log after conversion");
    assert!(!stray.exists(), "the uncommitted file is still there");
    let catalog: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&catalog_path).expect("catalog")).expect("JSON");
    let old = catalog["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["name"] == "old")
        .expect("old in the catalog");
    assert!(old.get("files").is_none(), "the manifest stayed: {old}");
    // And it changes like any other table.
    let deleted = client
        .execute("delete from old where l_orderkey >= 59000", &[])
        .await
        .expect("delete from the converted table");
    assert!(deleted > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_tables_partitioned_by_columns_prune_and_deltalake_reads_their_partitions() {
    let data = tempfile::tempdir().expect("temp dir");
    let data_dir = std::fs::canonicalize(data.path()).expect("data dir");
    let cluster = ProcessCluster::start(2, 0.01, &data_dir);
    let client = cluster.connect(2).await;
    let run = |sql: String| {
        let client = &client;
        async move {
            client
                .simple_query(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)))
        }
    };
    // Spark's words; regions with characters paths escape, an empty one and nulls (Delta
    // reads an empty partition value as null). Amounts are quarters: sums are exact in any
    // order.
    run(
        "create table parted (id bigint, name text, amount double, day date, region text) \
         using delta partitioned by (region)"
            .into(),
    )
    .await;
    let region = "case o_orderkey % 5 when 0 then 'a' when 1 then 'eu/west=1' \
                  when 2 then 'x y%' when 3 then '' end";
    run(format!(
        "insert into parted select o_orderkey, o_clerk, cast(o_orderkey % 997 as double) * 0.25, \
         o_orderdate, {region} from tpch.orders"
    ))
    .await;
    let dir = table_dir(&data_dir, "parted");
    let dir_text = dir.to_str().expect("UTF-8").to_string();
    let theirs = interop(&["summary", &dir_text]);
    let ours = summary(&client, "parted").await;
    assert_eq!(ours, theirs["regions"]);
    assert_eq!(
        ours.as_array().map(|regions| regions.len()),
        Some(4),
        "{ours}"
    );
    assert_eq!(ours[3][0], serde_json::Value::Null, "{ours}");
    assert!(dir.join("region=a").is_dir(), "no directory of region a");
    let detail = rows(&run("describe detail parted".into()).await);
    assert_eq!(detail[0][7].as_deref(), Some("{region}"), "{detail:?}");

    // A point lookup on the partition column reads that partition's files only.
    let all = scanned_files(&client, "select * from parted").await;
    let in_a = scanned_files(&client, "select * from parted where region = 'a'").await;
    assert!(
        !in_a.is_empty() && in_a.len() < all.len(),
        "{in_a:?} of {all:?}"
    );
    assert!(in_a.iter().all(|f| f.contains("/region=a/")), "{in_a:?}");

    // UPDATE moves rows between partitions, DELETE empties one; deltalake reads the same.
    let moved = client
        .execute(
            "update parted set region = 'a', amount = amount + 1 where region = 'x y%'",
            &[],
        )
        .await
        .expect("update the partition column");
    let deleted = client
        .execute("delete from parted where region is null", &[])
        .await
        .expect("delete a partition");
    assert!(moved > 0 && deleted > 0, "{moved} {deleted}");
    let theirs = interop(&["summary", &dir_text]);
    let ours = summary(&client, "parted").await;
    assert_eq!(ours, theirs["regions"]);
    let regions: Vec<&serde_json::Value> = ours
        .as_array()
        .expect("regions")
        .iter()
        .map(|r| &r[0])
        .collect();
    assert_eq!(
        regions,
        [&serde_json::json!("a"), &serde_json::json!("eu/west=1")]
    );

    // OPTIMIZE compacts within each partition; the rows stay where they were.
    run("insert into parted select id + 1000000, name, amount, day, region from parted".into())
        .await;
    run("optimize parted".into()).await;
    assert_eq!(
        summary(&client, "parted").await,
        interop(&["summary", &dir_text])["regions"]
    );

    // What cannot be a partition column is refused with the reason.
    for (sql, reason) in [
        (
            "create table bad (a int, t timestamp) partitioned by (t)",
            "cannot partition by t",
        ),
        (
            "create table bad (a int) partitioned by (a)",
            "all its columns",
        ),
        (
            "create table bad (a int, b int) partitioned by (c)",
            "not a column",
        ),
        (
            "create table bad (a int) using parquet",
            "STORED AS PARQUET",
        ),
    ] {
        let error = client.simple_query(sql).await.expect_err(sql);
        assert!(message(&error).contains(reason), "{sql}: {error:?}");
    }
}

/// The parquet files in a table's directory (not its log's or staging's).
fn parquet_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .expect("the table's directory")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_tables_travel_in_time_and_are_compacted_and_vacuumed() {
    let data = tempfile::tempdir().expect("temp dir");
    let data_dir = std::fs::canonicalize(data.path()).expect("data dir");
    let cluster = ProcessCluster::start(2, 0.01, &data_dir);
    let client = cluster.connect(2).await;
    let run = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)))
        }
    };
    // Versions 0 to 3; each write adds files of its own.
    run("create table h as select cast(o_orderkey as bigint) as n from tpch.orders where o_orderkey < 20000").await;
    run("insert into h select cast(o_orderkey as bigint) from tpch.orders where o_orderkey >= 20000 and o_orderkey < 40000").await;
    run("insert into h select cast(o_orderkey as bigint) from tpch.orders where o_orderkey >= 40000").await;
    run("delete from h where n % 5 = 0").await;
    let count_sum = |version: Option<i64>| {
        let client = &client;
        async move {
            let from = match version {
                Some(v) => format!("h version as of {v}"),
                None => "h".to_string(),
            };
            let answer = rows(
                &client
                    .simple_query(&format!("select count(*), sum(n) from {from}"))
                    .await
                    .unwrap_or_else(|e| panic!("{from}: {}", message(&e))),
            );
            (answer[0][0].clone().unwrap(), answer[0][1].clone().unwrap())
        }
    };
    let dir = table_dir(&data_dir, "h");
    let dir_text = dir.to_str().expect("UTF-8").to_string();
    // Every version reads as deltalake reads it.
    for version in 0..=3 {
        let theirs = interop(&["history", &dir_text, &version.to_string()]);
        let ours = count_sum(Some(version)).await;
        assert_eq!(
            (ours.0, ours.1),
            (theirs["rows"].to_string(), theirs["sum"].to_string()),
            "version {version}"
        );
    }

    // The history, as deltalake gives it; a timestamp from it reads that version.
    let history = rows(
        &client
            .simple_query("describe history h")
            .await
            .expect("describe history"),
    );
    let theirs = interop(&["history", &dir_text]);
    let versions: Vec<i64> = history
        .iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect();
    let operations: Vec<String> = history.iter().map(|r| r[3].clone().unwrap()).collect();
    assert_eq!(serde_json::json!(versions), theirs["versions"]);
    assert_eq!(serde_json::json!(operations), theirs["operations"]);
    assert_eq!(versions, [3, 2, 1, 0]);
    // Each commit records its metrics: the DELETE, the rows it deleted; the INSERT, its rows.
    let metrics = |row: &Vec<Option<String>>| -> serde_json::Value {
        serde_json::from_str(row[8].as_deref().expect("operation metrics")).expect("JSON")
    };
    let rows_of = |(count, _): (String, String)| count.parse::<u64>().expect("a count");
    let deleted = rows_of(count_sum(Some(2)).await) - rows_of(count_sum(Some(3)).await);
    assert_eq!(
        metrics(&history[0])["numDeletedRows"],
        deleted,
        "{history:?}"
    );
    let inserted = rows_of(count_sum(Some(2)).await) - rows_of(count_sum(Some(1)).await);
    assert_eq!(
        metrics(&history[1])["numOutputRows"],
        inserted,
        "{history:?}"
    );
    // Statements' commits name who ran them (the cluster's superuser here), as on Spark.
    assert_eq!(history[0][2].as_deref(), Some("ember"), "{history:?}");
    assert_eq!(history[1][2].as_deref(), Some("ember"), "{history:?}");
    let limited = rows(
        &client
            .simple_query("describe history h limit 1")
            .await
            .expect("limit"),
    );
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0][3].as_deref(), Some("DELETE"));
    let second = history[2][1].clone().expect("a timestamp");
    let at = rows(
        &client
            .simple_query(&format!(
                "select count(*) from h timestamp as of '{second}'"
            ))
            .await
            .expect("timestamp as of"),
    );
    // The newest version committed by then (two commits may share a millisecond).
    let by_then = history
        .iter()
        .filter(|r| r[1].as_deref().is_some_and(|t| t <= second.as_str()))
        .filter_map(|r| r[0].as_deref()?.parse::<i64>().ok())
        .max();
    assert_eq!(at[0][0], Some(count_sum(by_then).await.0));

    // DESCRIBE DETAIL counts the files the log lists.
    let detail = rows(
        &client
            .simple_query("describe detail h")
            .await
            .expect("describe detail"),
    );
    assert_eq!(detail[0][0].as_deref(), Some("delta"));
    assert!(
        detail[0][4]
            .as_deref()
            .unwrap()
            .ends_with(dir.file_name().unwrap().to_str().unwrap()),
        "{detail:?}"
    );
    assert_eq!(detail[0][7].as_deref(), Some("{}"));
    let files: usize = detail[0][8].as_deref().unwrap().parse().unwrap();
    assert_eq!(
        serde_json::json!(files),
        interop(&["history", &dir_text])["files"]
    );
    assert!(files > 1, "{detail:?}");
    assert_eq!(detail[0][14].as_deref(), Some("3"));

    // RESTORE: version 4 has version 1's files; deltalake reads the same.
    let restored = rows(
        &client
            .simple_query("restore table h to version as of 1")
            .await
            .expect("restore"),
    );
    assert_eq!(restored.len(), 1);
    assert_eq!(count_sum(None).await, count_sum(Some(1)).await);
    let theirs = interop(&["history", &dir_text]);
    assert_eq!(theirs["operations"][0], "RESTORE");
    assert_eq!(theirs["rows"].to_string(), count_sum(None).await.0);

    // OPTIMIZE compacts every small file into one, on the executors, with the same rows.
    let before = count_sum(None).await;
    let optimized = rows(&client.simple_query("optimize h").await.expect("optimize"));
    let removed: usize = optimized[0][2].as_deref().unwrap().parse().unwrap();
    assert_eq!(optimized[0][1].as_deref(), Some("1"), "{optimized:?}");
    assert!(removed > 1, "{optimized:?}");
    assert_eq!(count_sum(None).await, before);
    let detail = rows(
        &client
            .simple_query("describe detail h")
            .await
            .expect("detail"),
    );
    assert_eq!(detail[0][8].as_deref(), Some("1"), "{detail:?}");
    let tasks = one(
        &client,
        "select count(*) from system.tasks t join system.queries q on t.query_id = q.query_id \
         where q.sql like 'OPTIMIZE%'",
    )
    .await;
    assert_ne!(tasks, "0", "OPTIMIZE ran no tasks");
    let theirs = interop(&["history", &dir_text]);
    assert_eq!(theirs["operations"][0], "OPTIMIZE");
    assert_eq!(theirs["rows"].to_string(), before.0);

    // VACUUM: refused below the table's retention; with it lowered, the files no version
    // within the period reads go, and the newest version still reads.
    let error = client
        .simple_query("vacuum h retain 0 hours")
        .await
        .expect_err("below the retention period");
    assert!(message(&error).contains("retention"), "{error:?}");
    run("alter table h set tblproperties ('delta.deletedFileRetentionDuration' = 'interval 0 hours')").await;
    let dry = rows(
        &client
            .simple_query("vacuum h retain 0 hours dry run")
            .await
            .expect("dry run"),
    );
    let on_disk = parquet_files(&dir);
    assert_eq!(dry.len(), on_disk - 1, "{dry:?}");
    let vacuumed = rows(
        &client
            .simple_query("vacuum h retain 0 hours")
            .await
            .expect("vacuum"),
    );
    assert_eq!(vacuumed.len(), dry.len(), "{vacuumed:?} {dry:?}");
    assert_eq!(parquet_files(&dir), 1);
    assert_eq!(count_sum(None).await, before);
    let theirs = interop(&["history", &dir_text]);
    assert_eq!(theirs["rows"].to_string(), before.0);

    // MERGE: deletes the matched rows, inserts the one that matches nothing; deltalake reads
    // the same table and a MERGE in its history.
    let small = one(&client, "select count(*) from h where n < 1000").await;
    let merged = client
        .execute(
            "merge into h using (select n from h where n < 1000 union all select 100000000) s              on h.n = s.n when matched then delete when not matched then insert values (s.n)",
            &[],
        )
        .await
        .expect("merge");
    assert_eq!(
        merged.to_string(),
        (small.parse::<u64>().unwrap() + 1).to_string()
    );
    let after = count_sum(None).await;
    let last = rows(
        &client
            .simple_query("describe history h limit 1")
            .await
            .expect("history"),
    );
    let recorded: serde_json::Value =
        serde_json::from_str(last[0][8].as_deref().expect("metrics")).expect("JSON");
    assert_eq!(recorded["numTargetRowsInserted"], 1, "{recorded}");
    assert_eq!(
        recorded["numTargetRowsDeleted"],
        small.parse::<u64>().unwrap(),
        "{recorded}"
    );
    let theirs = interop(&["history", &dir_text]);
    assert_eq!(theirs["operations"][0], "MERGE");
    assert_eq!(
        (theirs["rows"].to_string(), theirs["sum"].to_string()),
        after
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_while_writing_leaves_whole_versions_and_vacuum_cleans_up() {
    let data = tempfile::tempdir().expect("temp dir");
    let data_dir = std::fs::canonicalize(data.path()).expect("data dir");
    let mut cluster = ProcessCluster::start(2, 0.01, &data_dir);
    let client = cluster.connect(2).await;
    client
        .simple_query("create table k as select l_orderkey, l_partkey from tpch.lineitem where l_orderkey < 1000")
        .await
        .expect("create k");
    let count = |client: tokio_postgres::Client| async move {
        let n: u64 = one(&client, "select count(*) from k")
            .await
            .parse()
            .expect("a count");
        (client, n)
    };
    let (client, mut rows_before) = count(client).await;
    let batch: u64 = one(&client, "select count(*) from tpch.lineitem")
        .await
        .parse()
        .expect("a count");
    let dir = table_dir(&data_dir, "k");
    drop(client);
    // SIGKILL at points across a write: while the tasks write, while files move into the
    // table, while the log is written. Each time the table is at the version before or the
    // one after, never between; deltalake agrees.
    for delay in [150, 400, 700, 1000, 1400] {
        let port = cluster.pg_port;
        let insert = tokio::spawn(async move {
            let client = crate::common::connect(port).await.expect("connect");
            let _ = client
                .simple_query("insert into k select l_orderkey, l_partkey from tpch.lineitem")
                .await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        cluster.kill_coordinator();
        let _ = insert.await;
        cluster.start_coordinator();
        let client = cluster.connect(2).await;
        let (client, rows_after) = count(client).await;
        assert!(
            rows_after == rows_before || rows_after == rows_before + batch,
            "after a kill at {delay} ms: {rows_after} rows, not {rows_before} or {}",
            rows_before + batch
        );
        let theirs = interop(&["history", dir.to_str().expect("UTF-8")]);
        assert_eq!(
            theirs["rows"],
            serde_json::json!(rows_after),
            "after a kill at {delay} ms"
        );
        rows_before = rows_after;
        drop(client);
    }
    // Files of writes that never committed are left in the directory (a kill between the
    // files' move into the table and the commit leaves some; this one stands for them all);
    // VACUUM deletes them.
    let committed = std::fs::read_dir(&dir)
        .expect("the table's directory")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .expect("a data file");
    let stray = dir.join("01000000000000000000-00000-uncommitted_0.parquet");
    std::fs::copy(&committed, &stray).expect("a stray file");
    let client = cluster.connect(2).await;
    client
        .simple_query("alter table k set tblproperties ('delta.deletedFileRetentionDuration' = 'interval 0 hours')")
        .await
        .expect("set the retention");
    client
        .simple_query("vacuum k retain 0 hours")
        .await
        .expect("vacuum");
    let detail = rows(
        &client
            .simple_query("describe detail k")
            .await
            .expect("detail"),
    );
    let listed: usize = detail[0][8].as_deref().unwrap().parse().unwrap();
    assert_eq!(parquet_files(&dir), listed, "\n{}", cluster.logs());
    assert!(!stray.exists(), "VACUUM left the uncommitted file");
    let (_, rows_now) = count(client).await;
    assert_eq!(rows_now, rows_before);
}
