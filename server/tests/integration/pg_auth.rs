//! Postgres authentication and TLS against a real coordinator: each method with a user stored
//! as a verifier made by `ember passwd`, right and wrong passwords (28P01), and psql over TLS
//! with `sslmode=verify-full`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{ProcessCluster, tpch_data_dir};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

/// `NAME:verifier` as `ember passwd` prints it.
fn user_entry(name: &str, password: &str, md5: bool) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ember"));
    command.args(["passwd", name]);
    if md5 {
        command.arg("--md5");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("ember passwd");
    writeln!(child.stdin.take().expect("stdin"), "{password}").expect("write password");
    let output = child.wait_with_output().expect("ember passwd output");
    assert!(output.status.success());
    let line = String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    assert!(line.starts_with(&format!("{name}:")), "{line}");
    assert!(
        !line.contains(password),
        "the password must not be stored: {line}"
    );
    line
}

async fn login(port: u16, user: &str, password: &str) -> Result<String, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user={user} password={password} dbname=ember"),
        NoTls,
    )
    .await?;
    tokio::spawn(connection);
    let row = client
        .query_one("select count(*) from tpch.region", &[])
        .await?;
    Ok(row.get::<_, i64>(0).to_string())
}

/// Waits until the coordinator accepts connections (any answer, even a refusal, will do).
async fn wait_for(cluster: &ProcessCluster, user: &str, password: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match login(cluster.pg_port, user, password).await {
            Ok(_) => return,
            Err(e) if e.code().is_some() => return,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("coordinator did not come up: {e}\n{}", cluster.logs()),
        }
    }
}

// One test, two parts: they share the generated TPC-H files, which two tests of one binary
// would race to create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_tls() {
    every_method_checks_passwords_against_verifiers().await;
    psql_connects_over_tls_with_verify_full().await;
}

async fn every_method_checks_passwords_against_verifiers() {
    let data = tpch_data_dir(0.01);
    for (method, md5) in [("scram-sha-256", false), ("md5", true), ("password", false)] {
        let users = [
            user_entry("alice", "wonderland", md5),
            user_entry("bob", "builder", md5),
        ]
        .join(",");
        let env = [
            ("EMBER_AUTH_METHOD".to_string(), method.to_string()),
            ("EMBER_AUTH_USERS".to_string(), users),
        ];
        let cluster = ProcessCluster::start_with_env(1, 0.01, &data, &env);
        wait_for(&cluster, "alice", "wonderland").await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match login(cluster.pg_port, "alice", "wonderland").await {
                Ok(regions) => {
                    assert_eq!(regions, "5", "{method}");
                    break;
                }
                // The executor may not have registered yet.
                Err(e)
                    if Instant::now() < deadline
                        && e.code() != Some(&SqlState::INVALID_PASSWORD) =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => panic!("{method}: alice could not log in: {e}\n{}", cluster.logs()),
            }
        }
        assert_eq!(
            login(cluster.pg_port, "bob", "builder")
                .await
                .expect(method),
            "5"
        );
        for (user, password) in [("alice", "builder"), ("bob", ""), ("mallory", "wonderland")] {
            let error = login(cluster.pg_port, user, password)
                .await
                .expect_err(&format!("{method}: {user} with a wrong password got in"));
            assert_eq!(
                error.code(),
                Some(&SqlState::INVALID_PASSWORD),
                "{method}: {user}: {error}"
            );
        }
        // A refused login leaves the server serving.
        assert_eq!(
            login(cluster.pg_port, "alice", "wonderland")
                .await
                .expect(method),
            "5"
        );
    }
}

async fn psql_connects_over_tls_with_verify_full() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    let generated = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl (the test command installs it)");
    assert!(generated.success(), "openssl could not make a certificate");
    let env = [
        ("EMBER_AUTH_METHOD".to_string(), "scram-sha-256".to_string()),
        (
            "EMBER_AUTH_USERS".to_string(),
            user_entry("alice", "wonderland", false),
        ),
        (
            "EMBER_TLS_CERT_FILE".to_string(),
            cert.display().to_string(),
        ),
        ("EMBER_TLS_KEY_FILE".to_string(), key.display().to_string()),
    ];
    let cluster = ProcessCluster::start_with_env(1, 0.01, &tpch_data_dir(0.01), &env);
    wait_for(&cluster, "alice", "wonderland").await;
    let psql = |sslmode: &str, password: &str| {
        Command::new("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg(format!(
                "host=localhost port={} user=alice dbname=ember sslmode={sslmode} sslrootcert={}",
                cluster.pg_port,
                cert.display()
            ))
            .args(["-c", "select count(*) from tpch.nation"])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    for sslmode in ["require", "verify-full"] {
        loop {
            let out = psql(sslmode, "wonderland");
            if out.status.success() {
                assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "25");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "psql sslmode={sslmode} failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let wrong = psql("verify-full", "guess");
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr)
            .to_ascii_lowercase()
            .contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
}
