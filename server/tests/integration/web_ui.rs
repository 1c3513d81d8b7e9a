//! The HTTP frontend from the outside: the REST API checked against the OpenAPI document in
//! `docs/`, `/metrics` read by Prometheus' own parser while queries run, EXPLAIN ANALYZE over
//! the cluster, credentials and who may cancel what, and the web UI driven in headless
//! Chromium (screenshots under `target/tmp/web-ui/`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{ProcessCluster, python, rows, script, settings, tpch_data_dir};

const SCALE: f64 = 0.01;

/// A query of many tasks that each take a while: a hash join of `lineitem` with 40 copies of
/// itself on `l_suppkey`, partitioned 24 ways.
fn long_query() -> String {
    let copies: Vec<String> = (1..=40).map(|i| format!("({i})")).collect();
    format!(
        "select a.l_suppkey % 7, count(*) from tpch.lineitem a join \
         (select l_suppkey from tpch.lineitem, (values {}) v(x)) b \
         on a.l_suppkey = b.l_suppkey group by 1",
        copies.join(",")
    )
}

const LONG_QUERY_SETTINGS: &str = "set datafusion.execution.target_partitions = 24; \
     set datafusion.optimizer.hash_join_single_partition_threshold = 0; \
     set datafusion.optimizer.hash_join_single_partition_threshold_rows = 0";

/// An HTTP/1.1 answer: status, headers (lower-case names) and body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One request on its own connection.
pub(crate) async fn http(
    port: u16,
    method: &str,
    path: &str,
    credentials: Option<(&str, &str)>,
    extra: &[(&str, &str)],
) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the HTTP port");
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some((user, password)) = credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        request.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut raw = vec![];
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 30 s")
        .expect("read answer");
    let text = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers and body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// Runs a helper script; panics with its output unless it succeeds; returns its last line.
async fn run_python(args: &[String]) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new(python())
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the script ends within 240 s")
    .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().last().unwrap_or_default().to_string()
}

/// Every sample of `/metrics`, as parsed by the Prometheus client's OpenMetrics parser.
async fn scrape(port: u16) -> serde_json::Value {
    let line = run_python(&[
        script("web_api.py").display().to_string(),
        "metrics".into(),
        format!("http://127.0.0.1:{port}/metrics"),
    ])
    .await;
    serde_json::from_str(&line).expect("samples as JSON")
}

fn sample(samples: &serde_json::Value, key: &str) -> f64 {
    samples[key].as_f64().unwrap_or(0.0)
}

/// The id of the latest query whose SQL contains `needle`, with its counts of stages and tasks
/// in `system.stages` and `system.tasks`.
async fn query_counts(client: &tokio_postgres::Client, needle: &str) -> (String, usize, usize) {
    let found = rows(
        &client
            .simple_query(&format!(
                "select query_id from system.queries where sql like '%{needle}%' \
                 and sql not like '%system.queries%' order by submitted_at desc limit 1"
            ))
            .await
            .expect("system.queries"),
    );
    let id = found[0][0].clone().expect("a query id");
    let count = |table: &str| {
        let sql = format!("select count(*) from system.{table} where query_id = '{id}'");
        async move {
            rows(&client.simple_query(&sql).await.expect("count"))[0][0]
                .clone()
                .expect("a count")
                .parse::<usize>()
                .expect("a number")
        }
    };
    let stages = count("stages").await;
    let tasks = count("tasks").await;
    (id, stages, tasks)
}

/// Waits until the latest query with `needle` in its SQL runs and has finished a stage.
async fn running_query(client: &tokio_postgres::Client, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = rows(
            &client
                .simple_query(&format!(
                    "select q.query_id from system.queries q join system.stages s \
                     on s.query_id = q.query_id where q.status = 'running' \
                     and q.sql like '%{needle}%' and s.status = 'succeeded' limit 1"
                ))
                .await
                .expect("system.queries"),
        );
        if let Some(id) = found.first().and_then(|r| r[0].clone()) {
            return id;
        }
        assert!(Instant::now() < deadline, "the long query never got going");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the long query on its own connection as `user`; resolves to its outcome.
async fn start_long_query(
    pg_port: u16,
    user: &str,
    password: &str,
) -> tokio::task::JoinHandle<Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>>
{
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={pg_port} user={user} password={password} dbname=ember"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(LONG_QUERY_SETTINGS)
        .await
        .expect("settings");
    tokio::spawn(async move { client.simple_query(&long_query()).await })
}

/// The four parts share one cluster's generated data; they run one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_ui_rest_api_metrics_and_browser() {
    let mut cluster = ProcessCluster::start(2, SCALE, &tpch_data_dir(SCALE));
    let client = cluster.connect(2).await;
    rest_api_and_metrics_follow_queries(&cluster, &client).await;
    let (finished, cancelled) = the_web_ui_in_a_real_browser(&cluster, &client).await;
    history_after_a_restart(&mut cluster, client, &finished, &cancelled).await;
    drop(cluster);
    credentials_and_who_may_cancel().await;
}

async fn rest_api_and_metrics_follow_queries(
    cluster: &ProcessCluster,
    client: &tokio_postgres::Client,
) {
    let port = cluster.http_port;
    let before = scrape(port).await;
    client
        .simple_query("set search_path = tpch")
        .await
        .expect("search_path");
    let q3 = ember_planner::tpch::QUERIES[2];
    let answer = rows(&client.simple_query(q3).await.expect("TPC-H q3"));
    assert_eq!(answer.len(), 10, "q3 answers its top 10");
    let (id, stages, tasks) = query_counts(client, "l_orderkey").await;
    assert!(
        stages >= 3 && tasks >= stages,
        "{stages} stages, {tasks} tasks"
    );

    // The detail has what the system tables have.
    let detail = http(port, "GET", &format!("/api/v1/queries/{id}"), None, &[]).await;
    assert_eq!(detail.status, 200, "{}", detail.body);
    let detail = detail.json();
    assert_eq!(detail["state"], "succeeded");
    assert_eq!(detail["frontend"], "pgwire");
    assert_eq!(detail["result_rows"], 10);
    let detail_stages = detail["stages"].as_array().expect("stages");
    assert_eq!(detail_stages.len(), stages);
    let detail_tasks: usize = detail_stages
        .iter()
        .map(|s| s["tasks"].as_array().expect("tasks").len())
        .sum();
    assert_eq!(detail_tasks, tasks);
    let scans_rows = detail_stages.iter().any(|s| {
        s["operators"]
            .as_array()
            .expect("operators")
            .iter()
            .any(|o| {
                o["name"] == "DataSourceExec" && o["metrics"]["output_rows"].as_u64() > Some(0)
            })
    });
    assert!(scans_rows, "operator metrics arrive from the executors");
    let path = detail["critical_path"].as_array().expect("critical path");
    assert_eq!(
        path.last().and_then(|s| s.as_u64()),
        Some(stages as u64 - 1),
        "the critical path ends at the result stage"
    );

    // Listed, searchable, filterable; an unknown id is a 404 with a SQLSTATE.
    let listed = http(
        port,
        "GET",
        "/api/v1/queries?state=succeeded&search=L_ORDERKEY",
        None,
        &[],
    )
    .await;
    assert_eq!(listed.status, 200);
    assert!(
        listed
            .json()
            .as_array()
            .expect("a list")
            .iter()
            .any(|q| q["query_id"] == id.as_str()),
        "{}",
        listed.body
    );
    let none = http(
        port,
        "GET",
        "/api/v1/queries?state=failed&search=l_orderkey",
        None,
        &[],
    )
    .await;
    assert!(!none.body.contains(&id));
    let missing = http(port, "GET", "/api/v1/queries/0123456789abcdef", None, &[]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["sqlstate"], "42704");
    let hostile = http(
        port,
        "GET",
        "/api/v1/queries/..%2F..%2Fetc%2Fpasswd",
        None,
        &[],
    )
    .await;
    assert_eq!(hostile.status, 404, "{}", hostile.body);
    let long_search = format!("/api/v1/queries?search={}", "x".repeat(5000));
    assert_eq!(http(port, "GET", &long_search, None, &[]).await.status, 400);

    // Every answer fits the OpenAPI document in docs/.
    let openapi = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    run_python(&[
        script("web_api.py").display().to_string(),
        "validate".into(),
        format!("http://127.0.0.1:{port}"),
        openapi.display().to_string(),
        id.clone(),
    ])
    .await;

    // The counters moved with the query.
    let after = scrape(port).await;
    let ended = r#"ember_queries_ended_total{frontend="pgwire",state="succeeded"}"#;
    assert!(
        sample(&after, ended) >= sample(&before, ended) + 1.0,
        "{after}"
    );
    let started = "ember_tasks_started_total";
    assert!(sample(&after, started) >= sample(&before, started) + tasks as f64);
    let written = "ember_shuffle_write_bytes_total";
    assert!(sample(&after, written) > sample(&before, written));
    let read = "ember_shuffle_read_bytes_total";
    assert!(sample(&after, read) > sample(&before, read));
    let requests = r#"ember_requests_total{frontend="pgwire"}"#;
    assert!(sample(&after, requests) > sample(&before, requests));
    assert!(sample(&after, r#"ember_connections{frontend="pgwire"}"#) >= 1.0);
    assert_eq!(sample(&after, r#"ember_executors{state="alive"}"#), 2.0);
    assert!(
        sample(
            &after,
            r#"ember_query_duration_seconds_count{frontend="pgwire"}"#
        ) >= 1.0
    );

    // EXPLAIN ANALYZE runs on the cluster and answers per stage and per operator.
    let analyzed = rows(
        &client
            .simple_query(&format!("explain analyze {q3}"))
            .await
            .expect("explain analyze"),
    );
    let stage_rows = analyzed
        .iter()
        .filter(|r| r[1].as_deref().is_some_and(|o| o.starts_with("Stage ")))
        .count();
    assert!(stage_rows >= 3, "{analyzed:?}");
    let scan_rows: u64 = analyzed
        .iter()
        .filter(|r| {
            r[1].as_deref()
                .is_some_and(|o| o.contains("DataSourceExec"))
        })
        .filter_map(|r| r[3].as_deref().and_then(|n| n.parse::<u64>().ok()))
        .sum();
    assert!(scan_rows > 0, "{analyzed:?}");
}

/// Returns the finished query's id, with its stage and task counts, and the cancelled one's.
async fn the_web_ui_in_a_real_browser(
    cluster: &ProcessCluster,
    client: &tokio_postgres::Client,
) -> ((String, usize, usize), String) {
    let (finished, stages, tasks) = query_counts(client, "l_orderkey").await;
    let long = start_long_query(cluster.pg_port, "ember", "").await;
    let long_id = running_query(client, "l_suppkey % 7").await;
    let screenshots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-ui");
    let _ = std::fs::remove_dir_all(&screenshots);
    let args = serde_json::json!({
        "base_url": format!("http://127.0.0.1:{}", cluster.http_port),
        "finished": {"id": finished, "stages": stages, "tasks": tasks},
        "long": {"id": long_id},
        "executors": 2,
        "screenshots": screenshots,
    });
    let seen = run_python(&[script("web_ui.py").display().to_string(), args.to_string()]).await;
    let seen: serde_json::Value = serde_json::from_str(&seen).expect("what the browser saw");
    assert_eq!(seen["stage_nodes"], stages);
    assert_eq!(seen["task_rows"], tasks);
    let error = tokio::time::timeout(Duration::from_secs(10), long)
        .await
        .expect("the cancelled query ends")
        .expect("query task")
        .expect_err("a cancelled query fails");
    assert_eq!(
        error.code().map(|c| c.code()),
        Some("57014"),
        "the client is told its query was cancelled: {error:?}"
    );
    for shot in [
        "queries",
        "query",
        "long-query-running",
        "long-query-cancelled",
        "executors",
        "cluster",
    ] {
        assert!(
            screenshots.join(format!("{shot}.png")).exists(),
            "screenshot {shot}"
        );
    }
    ((finished, stages, tasks), long_id)
}

/// After the coordinator is killed and started again, finished queries show with the same
/// detail from the event log (REST and browser), and one that was running shows as ended by
/// the restart.
async fn history_after_a_restart(
    cluster: &mut ProcessCluster,
    client: tokio_postgres::Client,
    finished: &(String, usize, usize),
    cancelled: &str,
) {
    let port = cluster.http_port;
    let detail = |id: String| async move {
        let answer = http(port, "GET", &format!("/api/v1/queries/{id}"), None, &[]).await;
        assert_eq!(answer.status, 200, "{id}: {}", answer.body);
        answer.json()
    };
    let before = [
        detail(finished.0.clone()).await,
        detail(cancelled.to_string()).await,
    ];
    assert_eq!(before[1]["state"], "cancelled");
    // One is running when the coordinator is killed.
    let running = start_long_query(cluster.pg_port, "ember", "").await;
    let interrupted = running_query(&client, "l_suppkey % 7").await;
    assert_ne!(interrupted, cancelled);
    drop(client);
    cluster.restart_coordinator();
    let _client = cluster.connect(2).await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the interrupted query's client hears of it")
        .expect("query task");
    assert!(outcome.is_err(), "the query ran on past the kill");

    // The same stages, tasks, operators and times, read back from the event log.
    let after = [
        detail(finished.0.clone()).await,
        detail(cancelled.to_string()).await,
    ];
    assert_eq!(before[0], after[0], "the finished query's detail changed");
    assert_eq!(before[1], after[1], "the cancelled query's detail changed");
    let ended = detail(interrupted.clone()).await;
    assert_eq!(ended["state"], "failed", "{ended}");
    assert_eq!(ended["sqlstate"], "57P01", "{ended}");
    assert!(
        ended["error"]
            .as_str()
            .is_some_and(|e| e.contains("coordinator stopped")),
        "{ended}"
    );
    assert!(
        ended["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .flat_map(|s| s["tasks"].as_array().expect("tasks"))
            .all(|t| t["state"] != "running"),
        "nothing still runs in a query the restart ended: {ended}"
    );
    let listed = http(port, "GET", "/api/v1/queries", None, &[]).await.json();
    for id in [finished.0.as_str(), cancelled, interrupted.as_str()] {
        assert!(
            listed
                .as_array()
                .expect("a list")
                .iter()
                .any(|q| q["query_id"] == id),
            "{id} is not listed after the restart"
        );
    }
    // A query of the history has ended: a cancel is a conflict.
    let cancel = http(
        port,
        "POST",
        &format!("/api/v1/queries/{cancelled}/cancel"),
        None,
        &[("X-Requested-By", "test")],
    )
    .await;
    assert_eq!(cancel.status, 409, "{}", cancel.body);

    // The log itself: JSON lines from submission to the end.
    let log = std::fs::read_to_string(
        cluster
            .dir
            .path()
            .join("events")
            .join(format!("{}.jsonl", finished.0)),
    )
    .expect("the finished query's event log");
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is a JSON object"))
        .collect();
    assert_eq!(events[0]["event"], "query_submitted");
    assert_eq!(events.last().expect("events")["event"], "query_ended");
    for kind in ["task_started", "task_ended", "stage_started", "stage_ended"] {
        assert!(events.iter().any(|e| e["event"] == kind), "no {kind} event");
    }

    // The browser shows it as before: one DAG node per stage, one row per task.
    let screenshots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-ui");
    let args = serde_json::json!({
        "base_url": format!("http://127.0.0.1:{port}"),
        "finished": {"id": finished.0, "stages": finished.1, "tasks": finished.2},
        "history": true,
        "screenshots": screenshots,
    });
    let seen = run_python(&[script("web_ui.py").display().to_string(), args.to_string()]).await;
    let seen: serde_json::Value = serde_json::from_str(&seen).expect("what the browser saw");
    assert_eq!(seen["stage_nodes"], finished.1);
    assert_eq!(seen["task_rows"], finished.2);
    assert!(screenshots.join("history-query.png").exists());
}

/// Under password authentication: no credentials, or wrong ones, get a Basic challenge; a user
/// sees only their own queries and cancels only those.
async fn credentials_and_who_may_cancel() {
    let verifier = |name: &str, password: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["passwd", name])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("ember passwd");
        use std::io::Write;
        writeln!(child.stdin.take().expect("stdin"), "{password}").expect("password");
        String::from_utf8(child.wait_with_output().expect("verifier").stdout)
            .expect("utf-8")
            .trim()
            .to_string()
    };
    let users = [verifier("alice", "wonderland"), verifier("bob", "builder")].join(",");
    let env = settings(&[
        ("EMBER_AUTH_METHOD", "scram-sha-256"),
        ("EMBER_AUTH_USERS", &users),
    ]);
    let cluster = ProcessCluster::start_with_env(2, SCALE, &tpch_data_dir(SCALE), &env);
    let port = cluster.http_port;
    let deadline = Instant::now() + Duration::from_secs(60);
    let alice = Some(("alice", "wonderland"));
    loop {
        let ready = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok();
        if ready
            && http(port, "GET", "/api/v1/executors", alice, &[])
                .await
                .json()
                .as_array()
                .is_some_and(|e| e.len() == 2)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "executors did not register\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (credentials, what) in [
        (None, "no credentials"),
        (Some(("alice", "builder")), "a wrong password"),
        (Some(("mallory", "wonderland")), "an unknown user"),
    ] {
        for path in ["/api/v1/queries", "/metrics", "/"] {
            let answer = http(port, "GET", path, credentials, &[]).await;
            assert_eq!(answer.status, 401, "{what} on {path}");
            assert!(
                answer
                    .header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Basic")),
                "{what} on {path}: a Basic challenge"
            );
        }
    }
    let page = http(port, "GET", "/", alice, &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/ui/app.js"));
    assert!(page.header("content-security-policy").is_some());

    let long = start_long_query(cluster.pg_port, "alice", "wonderland").await;
    let bob = Some(("bob", "builder"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let listed = http(port, "GET", "/api/v1/queries?state=running", alice, &[])
            .await
            .json();
        if let Some(id) = listed
            .as_array()
            .and_then(|l| l.first())
            .and_then(|q| q["query_id"].as_str())
        {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "alice's query never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Bob neither sees nor cancels it; a cancel without the header is refused.
    let theirs = http(port, "GET", "/api/v1/queries", bob, &[]).await;
    assert!(!theirs.body.contains(&id), "{}", theirs.body);
    assert_eq!(
        http(port, "GET", &format!("/api/v1/queries/{id}"), bob, &[])
            .await
            .status,
        404
    );
    let cancel = format!("/api/v1/queries/{id}/cancel");
    let by_bob = http(port, "POST", &cancel, bob, &[("X-Requested-By", "test")]).await;
    assert_eq!(by_bob.status, 404, "{}", by_bob.body);
    let unheaded = http(port, "POST", &cancel, alice, &[]).await;
    assert_eq!(unheaded.status, 403, "{}", unheaded.body);
    let by_alice = http(port, "POST", &cancel, alice, &[("X-Requested-By", "test")]).await;
    assert_eq!(by_alice.status, 202, "{}", by_alice.body);
    let error = tokio::time::timeout(Duration::from_secs(10), long)
        .await
        .expect("the cancelled query ends")
        .expect("query task")
        .expect_err("a cancelled query fails");
    assert_eq!(error.code().map(|c| c.code()), Some("57014"), "{error:?}");
    let again = http(port, "POST", &cancel, alice, &[("X-Requested-By", "test")]).await;
    assert_eq!(again.status, 409, "{}", again.body);
}
