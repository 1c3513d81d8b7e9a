//! Memory limits on real executor processes (TPC-H SF0.1, 24 MiB per executor): aggregations
//! and sorts spill to the work dir and still return DataFusion's answers; a hash join whose build
//! side cannot fit is run again with sort-merge joins, unless its shuffles are given partitions
//! that fit; what cannot fit at all (an aggregation state that cannot spill) fails with SQLSTATE
//! 53200, and the executors keep answering afterwards.

use std::time::Duration;

use crate::common::{
    ProcessCluster, compare, datafusion_rows, datafusion_tpch, rows, tpch_data_dir,
};

const SCALE: f64 = 0.1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_memory_spills_and_refuses_what_cannot_fit() {
    let data = tpch_data_dir(SCALE);
    // One shuffle partition per slot, as on a cluster whose memory fits its data, so that the
    // aggregation and the sort spill and the join falls back; widened shuffles are tried last.
    let env = [
        ("EMBER_EXECUTOR_MEMORY", "25165824"),
        ("EMBER_COORDINATOR_MAX_SHUFFLE_PARTITIONS", "0"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let cluster = ProcessCluster::start_with_env(2, SCALE, &data, &env);
    let client = cluster.connect(2).await;
    let reference = datafusion_tpch(SCALE, &data).await;
    client
        .simple_query("SET search_path = tpch")
        .await
        .expect("settings");

    let queries = [
        // ~600k groups of strings: the aggregation spills.
        (
            "select l_comment, count(*), sum(l_quantity) from lineitem \
             group by l_comment order by 2 desc, 1 limit 20",
            true,
        ),
        // One sort of the whole table.
        (
            "select count(*), max(rn), sum(rn * l_orderkey) from (select l_orderkey, \
             row_number() over (order by l_comment, l_orderkey, l_linenumber) rn from lineitem)",
            false,
        ),
        (ember_planner::tpch::QUERIES[17], true),
        // 600k strings on the build side of a hash join do not fit: sort-merge joins do.
        (
            "select count(*) from lineitem a join lineitem b on a.l_comment = b.l_comment",
            false,
        ),
    ];
    for (sql, ordered) in queries {
        let answer = tokio::time::timeout(Duration::from_secs(180), client.simple_query(sql))
            .await
            .unwrap_or_else(|_| panic!("timed out: {sql}\n{}", cluster.logs()))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}\n{}", cluster.logs()));
        let expected = datafusion_rows(&reference, sql).await;
        compare(&rows(&answer), &expected, ordered).unwrap_or_else(|diff| panic!("{sql}: {diff}"));
    }
    let spilled = rows(
        &client
            .simple_query(
                "select count(distinct query_id), sum(spilled_bytes) from system.tasks \
                 where spilled_bytes > 0",
            )
            .await
            .expect("system.tasks"),
    );
    assert!(
        spilled[0][0]
            .as_deref()
            .unwrap_or("0")
            .parse::<u32>()
            .unwrap_or(0)
            >= 2,
        "the aggregation and the sort spilled: {spilled:?}"
    );
    // Each task's peak is what it held of its executor's pool at most: the spilling aggregation
    // filled its share (megabytes), never more than the pool; its stage shows the largest.
    let peaks = rows(
        &client
            .simple_query(
                "select t.stage_id, max(t.peak_memory_bytes), max(s.peak_memory_bytes) \
                 from system.tasks t join system.stages s \
                   on s.query_id = t.query_id and s.stage_id = t.stage_id \
                 where t.query_id = (select query_id from system.queries \
                                     where sql ilike 'select l_comment, count(*)%') \
                 group by t.stage_id order by t.stage_id",
            )
            .await
            .expect("peak memory"),
    );
    let number = |cell: &Option<String>| cell.as_deref().unwrap_or("0").parse::<u64>().unwrap();
    let largest = peaks.iter().map(|row| number(&row[1])).max().unwrap_or(0);
    assert!(
        largest > 1 << 20 && largest <= 25165824,
        "the aggregation's tasks held megabytes, within the pool: {peaks:?}"
    );
    for row in &peaks {
        assert_eq!(
            number(&row[1]),
            number(&row[2]),
            "stage peak is its largest task's"
        );
    }

    // With shuffles widened to fit an eighth of a slot's memory per partition, the join's build
    // side fits: it runs once, as a hash join, on more partitions than slots.
    let join =
        "select count(*) as widened from lineitem a join lineitem b on a.l_comment = b.l_comment";
    client
        .simple_query("SET ember.max_shuffle_partitions = 64")
        .await
        .expect("set");
    let answer = client.simple_query(join).await.expect("the widened join");
    compare(
        &rows(&answer),
        &datafusion_rows(&reference, join).await,
        false,
    )
    .unwrap_or_else(|diff| panic!("{join}: {diff}"));
    let runs = rows(
        &client
            .simple_query(
                "select q.status, max(s.output_partitioning) from system.queries q \
                 join system.stages s on s.query_id = q.query_id \
                 where q.sql ilike '%as widened%' and s.output_partitioning like 'Hash%' \
                 group by q.query_id, q.status",
            )
            .await
            .expect("system.queries"),
    );
    assert_eq!(runs.len(), 1, "one run, no fallback: {runs:?}");
    assert_eq!(runs[0][0].as_deref(), Some("succeeded"), "{runs:?}");
    let partitions: usize = runs[0][1]
        .as_deref()
        .and_then(|p| p.rsplit(", ").next())
        .and_then(|n| n.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("a hash partitioning: {runs:?}"));
    assert!((3..=64).contains(&partitions), "{runs:?}");
    let explain = rows(
        &client
            .simple_query(&format!("explain {join}"))
            .await
            .expect("explain"),
    );
    assert!(
        explain.iter().any(|r| r[1]
            .as_deref()
            .unwrap_or("")
            .contains(&format!(", {partitions})"))),
        "EXPLAIN shows the widened shuffles: {explain:?}"
    );
    client
        .simple_query("RESET ember.max_shuffle_partitions")
        .await
        .expect("reset");

    // One group holding every comment four times over (~70 MB): an aggregation without GROUP BY
    // cannot spill its state.
    // (Joins always fit now: a hash join that cannot is run again as a sort-merge join, and
    // sort-merge and nested-loop joins spill.)
    let error = client
        .simple_query("select string_agg(repeat(l_comment, 4), ',') is null from lineitem")
        .await
        .expect_err("the aggregation cannot fit");
    let db = error.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "53200", "{db:?}");
    assert!(
        db.message().contains("not enough resources") && db.message().contains("memory pool"),
        "the message says what ran out: {}",
        db.message()
    );

    // The executors stay healthy.
    let count = rows(
        &client
            .simple_query("select count(*) from lineitem")
            .await
            .expect("a query after the failure"),
    );
    assert_eq!(count[0][0].as_deref(), Some("600572"));
    let alive = rows(
        &client
            .simple_query("select count(*) from system.executors where status = 'alive'")
            .await
            .expect("system.executors"),
    );
    assert_eq!(alive[0][0].as_deref(), Some("2"));
}

/// At most one query runs and one waits; a third is refused at once. A work dir budget far too
/// small for a shuffle fails the query with 53100, and the executor answers afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_control_and_the_disk_budget() {
    let data = tpch_data_dir(0.01);
    let env = [
        ("EMBER_SCHEDULER_MAX_RUNNING_QUERIES", "1"),
        ("EMBER_SCHEDULER_MAX_QUEUED_QUERIES", "1"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let cluster = ProcessCluster::start_with_env(1, 0.01, &data, &env);
    let monitor = cluster.connect(1).await;

    // A query that runs until cancelled (it writes no shuffle files while it runs).
    let long = "select count(*) from tpch.lineitem a, tpch.lineitem b \
                where a.l_orderkey + b.l_orderkey < 0";
    let mut clients = vec![];
    for _ in 0..2 {
        let client = crate::common::connect(cluster.pg_port)
            .await
            .expect("connect");
        let cancel = client.cancel_token();
        let running = tokio::spawn(async move { client.simple_query(long).await });
        clients.push((cancel, running));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let states = rows(
        &monitor
            .simple_query(
                "select status, count(*) from system.queries \
                 where status in ('running', 'queued') group by 1 order by 1",
            )
            .await
            .expect("system.queries"),
    );
    assert_eq!(
        states,
        vec![
            vec![Some("queued".to_string()), Some("1".to_string())],
            vec![Some("running".to_string()), Some("1".to_string())],
        ]
    );
    let refused = monitor
        .simple_query(long)
        .await
        .expect_err("the queue is full");
    let db = refused.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "53000", "{db:?}");
    assert!(
        db.message().contains("too many queries"),
        "{}",
        db.message()
    );
    for (cancel, running) in clients {
        cancel
            .cancel_query(tokio_postgres::NoTls)
            .await
            .expect("cancel");
        let error = running.await.expect("task").expect_err("cancelled");
        assert_eq!(error.code().map(|c| c.code()), Some("57014"));
    }

    drop(monitor);
    drop(cluster);

    // 200 kB cannot hold lineitem's shuffle.
    let env =
        [("EMBER_EXECUTOR_MAX_DISK_BYTES", "200000")].map(|(k, v)| (k.to_string(), v.to_string()));
    let cluster = ProcessCluster::start_with_env(1, 0.01, &data, &env);
    let monitor = cluster.connect(1).await;
    let full = monitor
        .simple_query(
            "select l_comment, count(*) from tpch.lineitem group by 1 order by 2 desc limit 1",
        )
        .await
        .expect_err("the shuffle does not fit");
    let db = full.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "53100", "{db:?}");
    assert!(
        db.message().contains("executor.max_disk_bytes"),
        "{}",
        db.message()
    );
    let nations = rows(
        &monitor
            .simple_query("select n_regionkey, count(*) from tpch.nation group by 1 order by 1")
            .await
            .expect("a small shuffle still fits"),
    );
    assert_eq!(nations.len(), 5);
}

/// A client that reads its result slowly (here a cursor fetched a little at a time) does not
/// hold task slots: the result tasks write what the client has not read yet to their work dir
/// and finish, so other queries run at once; the cursor still reads every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_do_not_hold_task_slots() {
    let data = tpch_data_dir(SCALE);
    let env = [("EMBER_EXECUTOR_SLOTS", "1")].map(|(k, v)| (k.to_string(), v.to_string()));
    let cluster = ProcessCluster::start_with_env(2, SCALE, &data, &env);
    let monitor = cluster.connect(2).await;
    let reader = crate::common::connect(cluster.pg_port)
        .await
        .expect("connect");
    reader
        .batch_execute(
            "begin; declare slow cursor for \
             select l_orderkey, l_comment from tpch.lineitem where l_orderkey % 3 = 0",
        )
        .await
        .expect("declare");
    let first = rows(
        &reader
            .simple_query("fetch 5 from slow")
            .await
            .expect("fetch"),
    );
    assert_eq!(first.len(), 5);

    // Both slots are free again although the cursor has read only 5 rows.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let tasks = rows(
            &monitor
                .simple_query(
                    "select count(*), sum(case when t.status = 'succeeded' then 1 else 0 end) \
                     from system.tasks t join system.queries q on t.query_id = q.query_id \
                     where lower(q.sql) like '%declare slow%'",
                )
                .await
                .expect("system.tasks"),
        );
        if tasks[0][0].as_deref() != Some("0") && tasks[0][0] == tasks[0][1] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cursor's result tasks still run (tasks, succeeded): {tasks:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let other = tokio::time::timeout(
        Duration::from_secs(30),
        monitor.simple_query("select count(*) from tpch.orders where o_orderkey % 2 = 0"),
    )
    .await
    .unwrap_or_else(|_| panic!("a second query waited for the cursor\n{}", cluster.logs()))
    .expect("second query");
    assert_eq!(rows(&other)[0][0].as_deref(), Some("75000"));

    let rest = rows(
        &reader
            .simple_query("fetch all from slow")
            .await
            .expect("fetch all"),
    );
    let reference = datafusion_tpch(SCALE, &data).await;
    let expected = datafusion_rows(
        &reference,
        "select count(*) from lineitem where l_orderkey % 3 = 0",
    )
    .await;
    assert_eq!(
        Some((first.len() + rest.len()).to_string()),
        expected[0][0].clone(),
        "the cursor read every row"
    );
    reader
        .batch_execute("close slow; commit")
        .await
        .expect("close");
}
