//! Real Postgres clients against a running cluster: psql, pgJDBC, psycopg 3 and SQLAlchemy, each
//! driving its own programs from `tests/clients/`, and the catalog queries of DBeaver, Grafana
//! and Metabase. They use the extended query protocol, binary results, pg_catalog, SET/SHOW and
//! transactions the way applications do, so these tests prove the frontend works with them
//! rather than with our own idea of the protocol.
//!
//! The tools come from `bash scripts/test.sh`: psql, javac and java on PATH, pgJDBC's jar in
//! `EMBER_TEST_JDBC_JAR`, and a Python with psycopg and SQLAlchemy in `EMBER_TEST_PYTHON`.
//! `EMBER_TEST_BLESS=1` rewrites `psql_expected.txt` from the actual output, for review.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use crate::common::{ProcessCluster, assert_checks_passed};

/// How long one client program may run before it is killed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// A cluster of a coordinator and two executors on a data dir of its own. Each test gets one:
/// tests in this binary run concurrently, and generating TPC-H into a shared directory, or
/// sharing the catalog it keeps there, would race.
struct Cluster {
    cluster: ProcessCluster,
    _data: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let data_dir = std::fs::canonicalize(data.path()).expect("data dir");
        let cluster = ProcessCluster::start(2, 0.01, &data_dir);
        let _ready = cluster.connect(2).await;
        Self {
            cluster,
            _data: data,
        }
    }

    fn port(&self) -> u16 {
        self.cluster.pg_port
    }

    /// The end of the cluster's logs: the part that explains a failure, without drowning it.
    fn log_tail(&self) -> String {
        const KEEP: usize = 40_000;
        let logs = self.cluster.logs();
        if logs.len() <= KEEP {
            return logs;
        }
        let mut start = logs.len() - KEEP;
        while !logs.is_char_boundary(start) {
            start += 1;
        }
        format!("[... earlier log lines left out ...]\n{}", &logs[start..])
    }
}

/// A program from PATH; the message says how to get it when it is missing.
fn on_path(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("{program} is not on PATH: run the tests with `bash scripts/test.sh`, which installs it")
        })
}

fn from_env(var: &str, what: &str) -> PathBuf {
    let value = std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: run the tests with `bash scripts/test.sh`, which installs {what}")
    });
    let path = PathBuf::from(value);
    assert!(
        path.exists(),
        "{var} points at {}, which does not exist",
        path.display()
    );
    path
}

/// What a finished (or killed) client program left behind.
struct Outcome {
    description: String,
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    fn report(&self) -> String {
        let status = match self.status {
            Some(status) => status.to_string(),
            None => format!("killed after {} s", CLIENT_TIMEOUT.as_secs()),
        };
        format!(
            "{}\n{status}\n--- stdout\n{}\n--- stderr\n{}",
            self.description, self.stdout, self.stderr
        )
    }
}

/// Runs a program to completion or until `CLIENT_TIMEOUT`, whichever comes first. Output goes to
/// files rather than pipes, so a chatty program cannot block on a full pipe. With `merged`,
/// stdout and stderr share one file and so keep their relative order (psql's errors between its
/// results).
async fn run(mut command: tokio::process::Command, merged: bool) -> Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let stdout = std::fs::File::create(&out_path).expect("stdout file");
    let stderr = if merged {
        stdout.try_clone().expect("shared output file")
    } else {
        std::fs::File::create(&err_path).expect("stderr file")
    };
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {description}: {e}"));
    let status = match tokio::time::timeout(CLIENT_TIMEOUT, child.wait()).await {
        Ok(status) => Some(status.unwrap_or_else(|e| panic!("wait for {description}: {e}"))),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    };
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    Outcome {
        description,
        status,
        stdout: read(&out_path),
        stderr: if merged {
            String::new()
        } else {
            read(&err_path)
        },
    }
}

/// Asserts that a client program succeeded, with everything needed to see why not.
fn assert_succeeded(outcome: &Outcome, cluster: &Cluster) {
    assert!(
        outcome.succeeded(),
        "{}\n--- cluster logs\n{}",
        outcome.report(),
        cluster.log_tail()
    );
}

/// psql's output with what may differ between runs and machines taken out: line endings and
/// trailing blanks.
fn normalise(text: &str) -> String {
    text.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        .trim_end()
        .to_string()
        + "\n"
}

/// A line diff of two texts (longest common subsequence; the texts are a few hundred lines).
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_script_prints_the_expected_output() {
    let psql = on_path("psql");
    let cluster = Cluster::start().await;
    let dir = clients_dir();
    let mut command = tokio::process::Command::new(psql);
    // Run from the script's directory with a relative path, so psql's error prefixes
    // ("psql:psql_script.sql:37:") do not depend on where the checkout is.
    command
        .current_dir(&dir)
        .args(["-X", "-q", "-A", "-F", "|", "-v", "ON_ERROR_STOP=0"])
        .args(["-h", "127.0.0.1", "-p", &cluster.port().to_string()])
        .args(["-U", "ember", "-d", "ember", "-f", "psql_script.sql"])
        // Untranslated messages, UTF-8 as the client encoding, and nothing from the caller's
        // environment that changes how psql connects or prints.
        .env("LC_ALL", "C.UTF-8")
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGOPTIONS")
        .env_remove("PGCLIENTENCODING")
        .env_remove("PGTZ")
        .env_remove("PGDATESTYLE")
        .env_remove("PSQL_PAGER")
        .env_remove("PAGER");
    let outcome = run(command, true).await;
    assert_succeeded(&outcome, &cluster);

    let expected_path = dir.join("psql_expected.txt");
    let actual = normalise(&outcome.stdout);
    if std::env::var_os("EMBER_TEST_BLESS").is_some() {
        std::fs::write(&expected_path, &actual).expect("write psql_expected.txt");
        return;
    }
    let expected = normalise(&std::fs::read_to_string(&expected_path).expect("psql_expected.txt"));
    assert!(
        actual == expected,
        "psql output differs from psql_expected.txt (- expected, + actual; \
         EMBER_TEST_BLESS=1 rewrites the file):\n{}\n--- cluster logs\n{}",
        diff(&expected, &actual),
        cluster.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_checks_pass() {
    let javac = on_path("javac");
    let java = on_path("java");
    let jar = from_env("EMBER_TEST_JDBC_JAR", "pgJDBC (libpostgresql-jdbc-java)");

    // Compiled before the cluster starts: a compile error needs no cluster to be shown.
    let classes = tempfile::tempdir().expect("temp dir");
    let mut compile = tokio::process::Command::new(javac);
    compile
        .arg("-cp")
        .arg(&jar)
        .arg("-d")
        .arg(classes.path())
        .arg(clients_dir().join("JdbcClientTest.java"));
    let compiled = run(compile, false).await;
    assert!(compiled.succeeded(), "{}", compiled.report());

    let cluster = Cluster::start().await;
    let mut command = tokio::process::Command::new(java);
    command
        .arg("-cp")
        .arg(format!("{}:{}", jar.display(), classes.path().display()))
        .arg("JdbcClientTest")
        .arg(format!(
            "jdbc:postgresql://127.0.0.1:{}/ember",
            cluster.port()
        ));
    let outcome = run(command, false).await;
    assert_succeeded(&outcome, &cluster);
    // Five checks on each of two connection styles, two on one.
    assert_checks_passed(&outcome.stdout, 12, &outcome.report());
}

/// Runs a Python check program of `tests/clients` and requires its `expected` checks to pass.
async fn python_checks_pass(script: &str, expected: usize) {
    let python = from_env(
        "EMBER_TEST_PYTHON",
        "a Python with psycopg and SQLAlchemy (target/test-venv)",
    );
    let cluster = Cluster::start().await;
    let mut command = tokio::process::Command::new(python);
    command
        .arg(clients_dir().join(script))
        .arg(cluster.port().to_string())
        // No bytecode caches left in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let outcome = run(command, false).await;
    assert_succeeded(&outcome, &cluster);
    assert_checks_passed(&outcome.stdout, expected, &outcome.report());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_checks_pass() {
    python_checks_pass("test_psycopg.py", 13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_checks_pass() {
    python_checks_pass("test_sqlalchemy.py", 7).await;
}

/// The catalog queries of DBeaver, Grafana and Metabase, sent with psycopg.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bi_tool_catalog_queries_pass() {
    python_checks_pass("test_bi_tools.py", 7).await;
}
