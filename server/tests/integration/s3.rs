//! Object storage: `s3://` locations on a local S3-compatible server (moto, installed by the
//! README's test command), read and written by the executors and the coordinator alike.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{ProcessCluster, free_port, rows};

/// A moto server on a free port; killed on drop.
struct Moto {
    port: u16,
    child: Child,
}

impl Moto {
    fn start() -> Self {
        let binary = std::env::var("EMBER_TEST_MOTO_SERVER").unwrap_or_else(|_| {
            panic!("EMBER_TEST_MOTO_SERVER is not set: run the tests with `bash scripts/test.sh`, which installs moto")
        });
        let port = free_port();
        let child = Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let moto = Moto { port, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    fn request(&self, method: &str, path: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "{method} {path}: {response}"
        );
        response
    }

    fn create_bucket(&self, bucket: &str) {
        self.request("PUT", &format!("/{bucket}"));
    }

    /// Keys of the bucket under `prefix`.
    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let response = self.request("GET", &format!("/{bucket}?list-type=2&prefix={prefix}"));
        response
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next().map(str::to_string))
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_on_s3_are_read_and_written_by_the_cluster() {
    let moto = Moto::start();
    moto.create_bucket("ember-test");
    moto.create_bucket("ember-private");
    let data = tempfile::tempdir().expect("temp dir");
    let data_dir = std::fs::canonicalize(data.path()).expect("data dir");
    let env: Vec<(String, String)> = [
        (
            "EMBER_STORAGE_S3_ENDPOINT",
            format!("http://127.0.0.1:{}", moto.port),
        ),
        ("EMBER_STORAGE_S3_REGION", "us-east-1".to_string()),
        ("EMBER_STORAGE_S3_ACCESS_KEY_ID", "test".to_string()),
        ("EMBER_STORAGE_S3_SECRET_ACCESS_KEY", "test".to_string()),
        ("EMBER_STORAGE_S3_ALLOW_HTTP", "true".to_string()),
        // The one bucket Ember may use; `ember-private` exists on the server but is not allowed.
        (
            "EMBER_STORAGE_ALLOWED_REMOTE",
            "s3://ember-test/".to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let cluster = ProcessCluster::start_with_env(2, 0.01, &data_dir, &env);
    let client = cluster.connect(2).await;
    let run = |sql: &'static str| {
        let client = &client;
        let logs = cluster.logs();
        async move {
            client
                .simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}\n{logs}"))
        }
    };
    // Written by the executors, one file per task, then read back by them.
    run("copy (select * from tpch.orders) to 's3://ember-test/orders/' stored as parquet").await;
    run("create external table s3_orders stored as parquet location 's3://ember-test/orders/'")
        .await;
    let got = rows(
        &run("select count(*), sum(o_orderkey), count(distinct o_custkey) from s3_orders").await,
    );
    let expected = rows(
        &run("select count(*), sum(o_orderkey), count(distinct o_custkey) from tpch.orders").await,
    );
    assert_eq!(got, expected);
    assert_eq!(got[0][0].as_deref(), Some("15000"));

    // Appending moves the new files into the table's prefix.
    run("insert into s3_orders select * from tpch.orders where o_orderkey < 100").await;
    let appended = rows(&run("select count(*) from s3_orders").await);
    let extra = rows(&run("select count(*) from tpch.orders where o_orderkey < 100").await);
    let extra: i64 = extra[0][0].as_deref().unwrap().parse().unwrap();
    assert_eq!(
        appended[0][0].as_deref(),
        Some((15000 + extra).to_string().as_str())
    );

    // One file, csv, and a join between S3 and local data.
    run("copy (select n_nationkey, n_name from tpch.nation order by n_nationkey) to 's3://ember-test/nation.csv' stored as csv options ('format.has_header' 'true')").await;
    run("create external table s3_nation stored as csv location 's3://ember-test/nation.csv' options ('format.has_header' 'true')").await;
    let joined = rows(
        &run("select n.n_name, count(*) from s3_orders o join tpch.customer c on o.o_custkey = c.c_custkey join s3_nation n on c.c_nationkey = n.n_nationkey group by n.n_name order by n.n_name limit 2").await,
    );
    assert_eq!(joined.len(), 2);
    assert_eq!(joined[0][0].as_deref(), Some("ALGERIA"));

    // A Delta table on S3, made here, partitioned: written by 6 clients at once, each commit
    // a new log version put only if absent (S3's conditional put), so none is lost.
    run(
        "create external table s3_lake (id bigint, region varchar) stored as delta \
         partitioned by (region) location 's3://ember-test/lake/'",
    )
    .await;
    let mut writers = vec![];
    for i in 0..6 {
        let port = cluster.pg_port;
        writers.push(tokio::spawn(async move {
            let client = crate::common::connect(port).await.expect("connect");
            client
                .simple_query(&format!(
                    "insert into s3_lake select o_orderkey, case when o_orderkey % 2 = 0 \
                     then 'even' else 'odd' end from tpch.orders where o_orderkey % 6 = {i}"
                ))
                .await
        }));
    }
    for writer in writers {
        writer
            .await
            .expect("a writer")
            .unwrap_or_else(|e| panic!("a concurrent insert into the Delta table: {e:?}"));
    }
    let lake = rows(
        &run("select region, count(*), sum(id) from s3_lake group by region order by region").await,
    );
    let expected = rows(
        &run(
            "select case when o_orderkey % 2 = 0 then 'even' else 'odd' end, count(*), \
              sum(o_orderkey) from tpch.orders group by 1 order by 1",
        )
        .await,
    );
    assert_eq!(lake, expected);
    let history = rows(&run("describe history s3_lake").await);
    assert_eq!(history.len(), 7, "{history:?}");
    let keys = moto.keys("ember-test", "lake/");
    assert!(
        keys.iter()
            .any(|k| k.starts_with("lake/region=odd/") && k.ends_with(".parquet")),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"lake/_delta_log/00000000000000000006.json".to_string()),
        "{keys:?}"
    );
    let old = rows(&run("select count(*) from s3_lake version as of 1").await);
    assert_ne!(old[0][0], lake[0][1]);

    // Buckets and schemes outside `storage.allowed_remote` are refused, however spelled.
    for sql in [
        "copy (select 1) to 's3://ember-private/x.csv' stored as csv",
        "create external table private stored as csv location 's3://ember-private/'",
        "create external table private stored as csv location ' S3://ember-private/x.csv'",
        "copy (select 1) to 's3://ember-test-other/x.csv' stored as csv",
    ] {
        let err = client
            .simple_query(sql)
            .await
            .expect_err(sql)
            .as_db_error()
            .map(|e| e.code().code().to_string());
        assert_eq!(err.as_deref(), Some("42501"), "{sql}");
    }
    assert!(moto.keys("ember-private", "").is_empty());

    // The writes left their files and nothing else: no staging objects.
    let keys = moto.keys("ember-test", "");
    assert!(
        keys.iter()
            .any(|k| k.starts_with("orders/") && k.ends_with(".parquet")),
        "{keys:?}"
    );
    assert!(keys.contains(&"nation.csv".to_string()), "{keys:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let staged: Vec<String> = moto
            .keys("ember-test", "")
            .into_iter()
            .filter(|k| k.contains("_ember_staging"))
            .collect();
        if staged.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "staging objects left: {staged:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
