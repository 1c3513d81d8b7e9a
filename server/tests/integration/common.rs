//! Test support: a real cluster of `ember` processes on loopback, and single-node DataFusion on
//! the same files to compare answers with.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{SessionConfig, SessionContext};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// A free loopback port (bound and released; the race with other processes is acceptable here).
pub fn free_port() -> u16 {
    // A port is free once it is handed out here, until its process binds it: never hand out
    // the same port twice (the kernel may offer a released port again at once).
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// The Flight SQL port a test asked for in `env`, else 0 (any free port).
pub fn flight_sql_port(env: &[(String, String)]) -> u16 {
    env.iter()
        .find(|(k, _)| k == "EMBER_COORDINATOR_FLIGHT_SQL_PORT")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The HTTP port a test asked for in `env`, else a free one.
fn http_port(env: &[(String, String)]) -> u16 {
    env.iter()
        .find(|(k, _)| k == "EMBER_HTTP_PORT")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(free_port)
}

/// A coordinator and executors, each a separate `ember` process; killed on drop.
pub struct ProcessCluster {
    pub pg_port: u16,
    /// The web UI, REST API and metrics.
    pub http_port: u16,
    pub grpc_port: u16,
    pub tpch_scale: f64,
    pub data_dir: PathBuf,
    pub env: Vec<(String, String)>,
    pub dir: tempfile::TempDir,
    pub coordinator: Child,
    pub executors: Vec<Child>,
    /// The Flight port of each executor (how `system.executors` tells them apart).
    pub executor_ports: Vec<u16>,
}

fn spawn_coordinator(
    log_dir: &Path,
    pg_port: u16,
    grpc_port: u16,
    http_port: u16,
    tpch_scale: f64,
    data_dir: &Path,
    env: &[(String, String)],
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join("coordinator.log"))
        .expect("log file");
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["coordinator", "--pg-port", &pg_port.to_string()])
        .args(["--port", &grpc_port.to_string()])
        // Each cluster its own Flight SQL port (EMBER_COORDINATOR_FLIGHT_SQL_PORT overrides).
        .args(["--flight-sql-port", &flight_sql_port(env).to_string()])
        .args(["--http-port", &http_port.to_string()])
        .args(["--tpch", &tpch_scale.to_string()])
        .arg("--data-dir")
        .arg(data_dir)
        // The data dir is shared by the tests; each cluster's event log is its own.
        .env("EMBER_HISTORY_DIR", log_dir.join("events"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start coordinator")
}

impl ProcessCluster {
    pub fn start(num_executors: usize, tpch_scale: f64, tpch_dir: &Path) -> Self {
        Self::start_with_env(num_executors, tpch_scale, tpch_dir, &[])
    }

    /// Like `start`, with extra environment variables (settings as `EMBER_<SECTION>_<KEY>`)
    /// for every process.
    pub fn start_with_env(
        num_executors: usize,
        tpch_scale: f64,
        tpch_dir: &Path,
        env: &[(String, String)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pg_port = free_port();
        let grpc_port = free_port();
        let http_port = http_port(env);
        // The coordinator generates nothing if the data is already there: point it at the
        // shared TPC-H directory through its data dir.
        let data_dir = tpch_dir.to_path_buf();
        let coordinator = spawn_coordinator(
            dir.path(),
            pg_port,
            grpc_port,
            http_port,
            tpch_scale,
            &data_dir,
            env,
        );
        let mut cluster = Self {
            pg_port,
            http_port,
            grpc_port,
            tpch_scale,
            data_dir,
            env: env.to_vec(),
            dir,
            coordinator,
            executors: vec![],
            executor_ports: vec![],
        };
        for i in 0..num_executors {
            let port = free_port();
            let child = cluster.spawn_executor(i, port);
            cluster.executors.push(child);
            cluster.executor_ports.push(port);
        }
        cluster
    }

    /// The work dir of executor `i`.
    pub fn work_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("executor-{i}"))
    }

    fn spawn_executor(&self, i: usize, flight_port: u16) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("executor-{i}.log")))
            .expect("log file");
        Command::new(env!("CARGO_BIN_EXE_ember"))
            .args([
                "executor",
                "--coordinator",
                &format!("127.0.0.1:{}", self.grpc_port),
            ])
            .args(["--slots", "2"])
            .args(["--flight-port", &flight_port.to_string()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--work-dir")
            .arg(self.work_dir(i))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start executor")
    }

    /// Kills executor `i` with SIGKILL (no chance to clean up).
    pub fn kill_executor(&mut self, i: usize) {
        let _ = self.executors[i].kill();
        let _ = self.executors[i].wait();
    }

    /// Starts executor `i` again on the same work dir, as a new process (a new incarnation).
    pub fn restart_executor(&mut self, i: usize) {
        self.kill_executor(i);
        let port = free_port();
        self.executors[i] = self.spawn_executor(i, port);
        self.executor_ports[i] = port;
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to executor `i`.
    pub fn signal_executor(&self, i: usize, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.executors[i].id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// The index of the executor serving Flight on `port`.
    pub fn executor_by_port(&self, port: u16) -> Option<usize> {
        self.executor_ports.iter().position(|p| *p == port)
    }

    /// Kills the coordinator (SIGKILL: no chance to clean up) and starts a new one on the same
    /// ports and data dir; the executors reconnect by themselves.
    pub fn restart_coordinator(&mut self) {
        self.kill_coordinator();
        self.start_coordinator();
    }

    /// Kills the coordinator with SIGKILL.
    pub fn kill_coordinator(&mut self) {
        let _ = self.coordinator.kill();
        let _ = self.coordinator.wait();
    }

    /// Starts a coordinator on the same ports and data dir (after [`Self::kill_coordinator`]).
    pub fn start_coordinator(&mut self) {
        self.coordinator = spawn_coordinator(
            self.dir.path(),
            self.pg_port,
            self.grpc_port,
            self.http_port,
            self.tpch_scale,
            &self.data_dir,
            &self.env,
        );
    }

    pub fn logs(&self) -> String {
        logs_in(self.dir.path())
    }

    /// Connects once the coordinator answers and `executors` executors are alive.
    pub async fn connect(&self, executors: usize) -> Client {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(client) = connect(self.pg_port).await {
                let alive = client
                    .simple_query("select count(*) from system.executors where status = 'alive'")
                    .await
                    .ok()
                    .and_then(|m| rows(&m).first().and_then(|r| r[0].clone()));
                if alive.as_deref() == Some(&executors.to_string()) {
                    return client;
                }
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not come up in time\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for child in self
            .executors
            .iter_mut()
            .chain(std::iter::once(&mut self.coordinator))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub async fn connect(port: u16) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=ember dbname=ember"),
        NoTls,
    )
    .await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The rows of a simple-query response as text cells.
pub fn rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Where the shared TPC-H test data lives (generated once per test binary run).
pub fn tpch_data_dir(scale: f64) -> PathBuf {
    // Tests of one binary run in parallel: one generates, the others wait for it.
    static GENERATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _generating = GENERATING.lock().unwrap_or_else(|e| e.into_inner());
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tpch-data");
    let tpch = base.join("tpch");
    ember_planner::tpch::generate(&tpch, scale).expect("generate tpch");
    base
}

/// A data dir of a test's own, with a copy of the TPC-H files of `scale` from the shared one
/// (`tpch`): for tests that create tables, since the shared data dir's catalog is every
/// test's. The directory goes with the returned guard.
pub fn private_data_dir(tpch: &Path, scale: f64) -> (tempfile::TempDir, PathBuf) {
    let data = tempfile::tempdir().expect("temp dir");
    let data_dir = std::fs::canonicalize(data.path()).expect("data dir");
    copy_dir(
        &ember_planner::tpch::scale_dir(&tpch.join("tpch"), scale),
        &ember_planner::tpch::scale_dir(&data_dir.join("tpch"), scale),
    );
    (data, data_dir)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("a directory");
    for entry in std::fs::read_dir(from).expect("a directory").flatten() {
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).expect("a copy");
        }
    }
}

/// The directory of the TPC-H files of `scale` under a data dir.
pub fn tpch_scale_dir(base: &Path, scale: f64) -> PathBuf {
    std::fs::canonicalize(ember_planner::tpch::scale_dir(&base.join("tpch"), scale))
        .expect("tpch dir")
}

/// Single-node DataFusion over the same TPC-H files.
pub async fn datafusion_tpch(scale: f64, base: &Path) -> SessionContext {
    let config = SessionConfig::new()
        .with_target_partitions(2)
        .with_default_catalog_and_schema("ember", "tpch")
        .with_information_schema(true);
    let ctx = SessionContext::new_with_config(config);
    let dir = std::fs::canonicalize(ember_planner::tpch::scale_dir(&base.join("tpch"), scale))
        .expect("tpch dir");
    ember_planner::tpch::register(&ctx, "tpch", &dir)
        .await
        .expect("register tpch");
    ctx
}

/// Single-node DataFusion's answer to `sql`, as text cells.
pub async fn datafusion_rows(ctx: &SessionContext, sql: &str) -> Vec<Vec<Option<String>>> {
    let batches = ctx
        .sql(sql)
        .await
        .expect("datafusion plans")
        .collect()
        .await
        .expect("datafusion runs");
    batches_to_rows(&batches)
}

/// DataFusion's answer as text cells, formatted like Postgres text values.
pub fn batches_to_rows(batches: &[RecordBatch]) -> Vec<Vec<Option<String>>> {
    let options = FormatOptions::default();
    let mut out = vec![];
    for batch in batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("formatter"))
            .collect();
        for row in 0..batch.num_rows() {
            out.push(
                batch
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(col, f)| col.is_valid(row).then(|| f.value(row).to_string()))
                    .collect(),
            );
        }
    }
    out
}

/// A cell normalised for comparison: numbers compare with a relative tolerance.
#[derive(Debug, Clone)]
pub enum Cell {
    Null,
    Number(f64),
    Text(String),
}

impl PartialEq for Cell {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Cell::Null, Cell::Null) => true,
            // NaN is a value both engines may answer (0/0 in a ratio), equal to itself here.
            (Cell::Number(a), Cell::Number(b)) => {
                a == b
                    || (a.is_nan() && b.is_nan())
                    || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
            }
            (Cell::Text(a), Cell::Text(b)) => a == b,
            _ => false,
        }
    }
}

fn cell(value: &Option<String>) -> Cell {
    match value {
        None => Cell::Null,
        Some(text) => match text.as_str() {
            "t" | "true" => Cell::Text("true".into()),
            "f" | "false" => Cell::Text("false".into()),
            other => match other.parse::<f64>() {
                Ok(n) if !other.is_empty() => Cell::Number(n),
                _ => Cell::Text(other.replacen('T', " ", 1)),
            },
        },
    }
}

fn sort_key(row: &[Cell]) -> String {
    format!("{row:?}")
}

/// Compares two answers: in order when `ordered`, as multisets otherwise.
pub fn compare(
    actual: &[Vec<Option<String>>],
    expected: &[Vec<Option<String>>],
    ordered: bool,
) -> Result<(), String> {
    if actual.len() != expected.len() {
        return Err(format!(
            "row count differs: got {}, expected {}",
            actual.len(),
            expected.len()
        ));
    }
    let normalise = |rows: &[Vec<Option<String>>]| -> Vec<Vec<Cell>> {
        rows.iter().map(|r| r.iter().map(cell).collect()).collect()
    };
    let mut a = normalise(actual);
    let mut e = normalise(expected);
    if !ordered {
        a.sort_by_key(|r| sort_key(r));
        e.sort_by_key(|r| sort_key(r));
    }
    for (i, (ra, re)) in a.iter().zip(&e).enumerate() {
        if ra != re {
            return Err(format!(
                "row {i} differs:\n  got      {ra:?}\n  expected {re:?}"
            ));
        }
    }
    Ok(())
}

/// Checks the `N passed, M failed` summary a client check program (Python, Java) prints last:
/// exactly `expected` checks passed, each with its own `ok` line, and none failed. A program
/// that ran fewer checks than it has (or none) fails here.
pub fn assert_checks_passed(stdout: &str, expected: usize, context: &str) {
    let summary = stdout
        .lines()
        .rev()
        .find_map(|line| {
            let (passed, failed) = line.trim().split_once(" passed, ")?;
            let failed = failed.strip_suffix(" failed")?;
            Some((passed.parse::<usize>().ok()?, failed.parse::<usize>().ok()?))
        })
        .unwrap_or_else(|| panic!("no `N passed, M failed` summary\n{context}"));
    let ok_lines = stdout.lines().filter(|l| l.starts_with("ok   ")).count();
    assert_eq!(
        (summary, ok_lines),
        ((expected, 0), expected),
        "expected {expected} checks to pass and none to fail\n{context}"
    );
}

/// Opens a cluster session on the coordinator's gRPC port the way an executor does, answering
/// the challenge with a registration offering `slots` slots, proved with `key` (a made-up proof
/// when `None`). Returns the way to send more and the coordinator's replies.
pub async fn open_executor_session(
    grpc_port: u16,
    key: Option<&ember_protocol::membership::ClusterKey>,
    slots: u32,
) -> Result<
    (
        tokio::sync::mpsc::Sender<ember_protocol::proto::ExecutorMessage>,
        tonic::Streaming<ember_protocol::proto::CoordinatorMessage>,
    ),
    tonic::Status,
> {
    use ember_protocol::proto::cluster_service_client::ClusterServiceClient;
    use ember_protocol::proto::{
        CoordinatorMessage, ExecutorMessage, RegisterExecutor, coordinator_message,
        executor_message,
    };
    let mut client = ClusterServiceClient::connect(format!("http://127.0.0.1:{grpc_port}"))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<ExecutorMessage>(64);
    let mut inbound = client
        .open_session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let challenge = match inbound.message().await? {
        Some(CoordinatorMessage {
            message: Some(coordinator_message::Message::Challenge(c)),
        }) => c.nonce,
        other => panic!("the session must open with a challenge, got {other:?}"),
    };
    let mut register = RegisterExecutor {
        host: "127.0.0.1".into(),
        flight_port: 9,
        slots,
        cores: 64,
        memory: 1 << 30,
        host_key: "rogue".into(),
        work_dir: "/nonexistent".into(),
        nonce: ember_protocol::membership::nonce(),
        proof: vec![0; 32],
        name: "rogue".into(),
        allocation_id: String::new(),
    };
    if let Some(key) = key {
        register.proof = key.executor_proof(&challenge, &register);
    }
    tx.send(ExecutorMessage {
        message: Some(executor_message::Message::Register(register)),
    })
    .await
    .map_err(|_| tonic::Status::cancelled("the session closed"))?;
    Ok((tx, inbound))
}

/// Waits until `n` executors are alive.
pub async fn wait_until_alive(cluster: &ProcessCluster, monitor: &Client, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let alive = rows(
            &monitor
                .simple_query("select count(*) from system.executors where status = 'alive'")
                .await
                .expect("system.executors"),
        );
        if alive[0][0].as_deref() == Some(&n.to_string()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "executors did not come back\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Settings as environment variables (`EMBER_<SECTION>_<KEY>`), for `start_with_env`.
pub fn settings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Waits up to `within` for `child` to exit; panics with `context` if it does not.
pub async fn wait_for_exit(
    child: &mut Child,
    within: Duration,
    context: impl Fn() -> String,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child process") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the process did not exit within {within:?}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `.log` files of a directory, each under its name.
pub fn logs_in(dir: &Path) -> String {
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                out.push_str(&format!("== {}\n", entry.path().display()));
                out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
    }
    out
}

/// The Python of the test venv (selenium, prometheus-client, jsonschema, deltalake, ...).
pub fn python() -> String {
    std::env::var("EMBER_TEST_PYTHON").expect(
        "EMBER_TEST_PYTHON names the Python that scripts/test.sh installs the test packages into",
    )
}

/// A helper script of these tests.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/integration/{name}"))
}
