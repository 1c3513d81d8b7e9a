//! The catalog survives a coordinator crash: schemas, managed tables (with the rows committed
//! before the crash, and columns added since), external tables and views (renamed or not, with
//! their comments) come back after SIGKILL and restart.

use crate::common::{ProcessCluster, rows};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_survives_a_coordinator_crash() {
    let data = tempfile::tempdir().expect("temp dir");
    let data_dir = std::fs::canonicalize(data.path()).expect("data dir");
    let mut cluster = ProcessCluster::start(2, 0.01, &data_dir);
    let client = cluster.connect(2).await;
    let out = data_dir.join("exports/nation/");
    let statements = [
        "create schema sales".to_string(),
        "create table sales.orders as select o_orderkey, o_custkey, o_totalprice from tpch.orders where o_orderkey < 1000".to_string(),
        "insert into sales.orders values (-1, -1, 1.5)".to_string(),
        "create view sales.big as select * from sales.orders where o_totalprice > 100000".to_string(),
        format!("copy (select * from tpch.nation) to '{}' stored as parquet", out.display()),
        format!("create external table sales.nation stored as parquet location '{}'", out.display()),
        "create table public.empty (a int, b varchar)".to_string(),
        "create table public.keyed (id int primary key, n int default 7)".to_string(),
        // Columns added, objects renamed and commented on keep their changes.
        "alter table sales.orders add column note varchar(8)".to_string(),
        "update sales.orders set note = 'minus' where o_orderkey = -1".to_string(),
        "create table public.renamed_from as select 1 as x".to_string(),
        "alter table public.renamed_from rename to renamed_to".to_string(),
        "create view public.v_old as select 2 as y".to_string(),
        "alter view public.v_old rename to v_new".to_string(),
        "comment on table sales.orders is 'kept'".to_string(),
    ];
    for sql in &statements {
        client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}\n{}", cluster.logs()));
    }
    let check = "select (select count(*) from sales.orders) as orders, \
                 (select count(*) from sales.big) as big, \
                 (select count(*) from sales.nation) as nations, \
                 (select count(*) from empty) as empty, \
                 (select sum(o_totalprice) from sales.orders) as total, \
                 (select max(note) from sales.orders) as note, \
                 (select sum(x) from renamed_to) as renamed, \
                 (select sum(y) from v_new) as view_renamed, \
                 (select max(d.description) from pg_description d \
                  join pg_class c on c.oid = d.objoid where c.relname = 'orders') as comment";
    let before = rows(&client.simple_query(check).await.expect("check"));
    assert_eq!(before[0][2].as_deref(), Some("25"));
    assert_eq!(before[0][3].as_deref(), Some("0"));
    assert_eq!(
        before[0][5..],
        ["minus", "1", "2", "kept"].map(|v| Some(v.to_string()))
    );

    // A query running when the coordinator dies ends with an error, not a hang; its shuffle
    // files do not outlive the crash.
    let long = "select count(*) from (select l_orderkey k from tpch.lineitem group by 1) a, \
                tpch.orders b where a.k + b.o_orderkey < 0";
    let running = tokio::spawn(async move { client.simple_query(long).await });
    let shuffle_files = |cluster: &ProcessCluster| {
        (0..2).any(|i| {
            std::fs::read_dir(cluster.work_dir(i).join("shuffle"))
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !shuffle_files(&cluster) {
        assert!(!running.is_finished(), "the long query ended by itself");
        assert!(
            std::time::Instant::now() < deadline,
            "the long query wrote no shuffle files"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    cluster.restart_coordinator();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), running)
        .await
        .expect("the client learns that its query is gone")
        .expect("query task");
    assert!(ended.is_err(), "the query cannot have finished");
    // The executors reconnect by themselves, as new incarnations that keep no old files.
    let client = cluster.connect(2).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while shuffle_files(&cluster) {
        assert!(
            std::time::Instant::now() < deadline,
            "shuffle files of the crashed coordinator's query are left"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let after = rows(
        &client
            .simple_query(check)
            .await
            .expect("check after restart"),
    );
    assert_eq!(before, after, "\n{}", cluster.logs());

    // Column defaults and the primary key came back with the table.
    client
        .simple_query("insert into public.keyed (id) values (1)")
        .await
        .expect("insert using the default");
    let keyed = rows(
        &client
            .simple_query("select id, n from public.keyed group by id")
            .await
            .expect("group by the primary key"),
    );
    assert_eq!(
        keyed,
        vec![vec![Some("1".to_string()), Some("7".to_string())]]
    );

    // A failed write changes nothing: the table keeps exactly its committed rows.
    let failed = client
        .simple_query("insert into sales.orders select o_orderkey, o_custkey, 1 / (o_orderkey - o_orderkey) from tpch.orders")
        .await;
    assert!(failed.is_err(), "division by zero should fail the insert");
    let after_failure = rows(
        &client
            .simple_query(check)
            .await
            .expect("check after failure"),
    );
    assert_eq!(before, after_failure);
    // Staging directories are removed in the background once the write has failed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let staging: Vec<_> = walk(&data_dir.join("warehouse"))
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("_ember_staging"))
            .collect();
        if staging.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "staged files left behind: {staging:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            out.push(entry.path());
            if entry.path().is_dir() {
                pending.push(entry.path());
            }
        }
    }
    out
}
