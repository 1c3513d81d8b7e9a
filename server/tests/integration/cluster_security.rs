//! A closed cluster: processes that do not hold the cluster secret cannot join, receive tasks or
//! read shuffle data, and members cannot claim more than the configuration allows.

use std::time::Duration;

use arrow_flight::Ticket;
use arrow_flight::flight_service_client::FlightServiceClient;
use ember_planner::ids::{QueryId, StageId};
use ember_planner::shuffle::ShuffleBlock;
use ember_protocol::credentials::now_ms;
use ember_protocol::membership::ClusterKey;
use ember_protocol::proto::{CoordinatorMessage, ShuffleTicket};
use ember_protocol::tickets::{encode_ticket, encode_ticket_until};
use prost::Message;

use crate::common::{ProcessCluster, rows, tpch_data_dir};

const SECRET: &str = "integration-test-cluster-secret";

/// A process speaking the cluster protocol: it answers the challenge with `proof_key`'s proof
/// (none when `None`) and reports what the coordinator sent it.
async fn rogue_register(
    grpc_port: u16,
    proof_key: Option<&ClusterKey>,
    slots: u32,
) -> Result<Vec<CoordinatorMessage>, tonic::Status> {
    let (_tx, mut inbound) =
        crate::common::open_executor_session(grpc_port, proof_key, slots).await?;
    let mut received = vec![];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), inbound.message()).await {
            Ok(Ok(Some(message))) => received.push(message),
            Ok(Ok(None)) | Err(_) => return Ok(received),
            Ok(Err(status)) => return Err(status),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_join_or_read_shuffle_data() {
    let data_dir = tpch_data_dir(0.01);
    let env = vec![
        ("EMBER_AUTH_CLUSTER_SECRET".to_string(), SECRET.to_string()),
        (
            "EMBER_COORDINATOR_MAX_EXECUTOR_SLOTS".to_string(),
            "16".to_string(),
        ),
    ];
    let cluster = ProcessCluster::start_with_env(2, 0.01, &data_dir, &env);
    let client = cluster.connect(2).await;
    let before = executors(&client).await;
    assert_eq!(before.len(), 2);

    // Without the secret: refused at the challenge, never listed, sent nothing but the refusal.
    let wrong = ClusterKey::from_secret("a-guessed-secret-of-some-length");
    for key in [None, Some(&wrong)] {
        let refusal = rogue_register(cluster.grpc_port, key, 64)
            .await
            .expect_err("a stranger is refused");
        assert_eq!(refusal.code(), tonic::Code::Unauthenticated, "{refusal:?}");
        assert!(
            refusal.message().contains("cluster secret"),
            "{}",
            refusal.message()
        );
    }
    // With the secret, a claim beyond coordinator.max_executor_slots is refused too.
    let member = ClusterKey::from_secret(SECRET);
    let refusal = rogue_register(cluster.grpc_port, Some(&member), u32::MAX)
        .await
        .expect_err("an absurd claim is refused");
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{refusal:?}"
    );
    assert!(
        refusal.message().contains("max_executor_slots"),
        "{}",
        refusal.message()
    );

    // Queries run on the real executors only; the cluster is as it was.
    let answer = rows(
        &client
            .simple_query("select count(*) from tpch.lineitem l join tpch.orders o on l.l_orderkey = o.o_orderkey")
            .await
            .expect("a distributed query"),
    );
    assert_eq!(answer[0][0].as_deref(), Some("60175"));
    assert_eq!(executors(&client).await, before);

    // Shuffle data: the executor's Flight port refuses unsigned, forged and expired tickets.
    let port = cluster.executor_ports[0];
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("an endpoint")
        .connect()
        .await
        .expect("the executor's Flight port answers");
    let mut flight = FlightServiceClient::new(channel);
    let block = ShuffleBlock {
        query_id: QueryId::random(),
        stage_id: StageId(0),
        map_partition: 0,
        attempt: 0,
        output_partition: 0,
    };
    let unsigned = ShuffleTicket {
        query_id: block.query_id.to_string(),
        expires_at_ms: u64::MAX,
        ..Default::default()
    };
    let refused = |ticket: Ticket| {
        let mut flight = flight.clone();
        async move {
            match flight.do_get(ticket).await {
                Ok(_) => panic!("the ticket was accepted"),
                Err(status) => status,
            }
        }
    };
    let status = refused(Ticket::new(unsigned.encode_to_vec())).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let status = refused(encode_ticket(&wrong, &block, false, "rogue")).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let mut tampered = encode_ticket(&member, &block, false, "rogue")
        .ticket
        .to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let status = refused(Ticket::new(tampered)).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let status = refused(encode_ticket_until(
        &member,
        &block,
        false,
        "late",
        now_ms() - 1,
    ))
    .await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{}", status.message());
    // A member's ticket passes the check and finds no such block.
    let status = flight
        .do_get(encode_ticket(&member, &block, false, "test"))
        .await
        .expect_err("no such block");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let _ = client
        .simple_query("select 1")
        .await
        .expect("still serving");
}

async fn executors(client: &tokio_postgres::Client) -> Vec<Vec<Option<String>>> {
    rows(
        &client
            .simple_query(
                "select executor_id, host, slots from system.executors order by executor_id",
            )
            .await
            .expect("system.executors"),
    )
}

/// TLS on every port: Postgres (psql verify-full) and Flight SQL (ADBC) on the client side,
/// the coordinator's gRPC and executor Flight inside the cluster, all against one CA made here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_port_speaks_tls() {
    let python = std::env::var_os("EMBER_TEST_PYTHON").unwrap_or_else(|| {
        panic!("EMBER_TEST_PYTHON is not set: run the tests with `bash scripts/test.sh`")
    });
    let certs = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) =
        ember_server::secrets::ephemeral_certificates(&["localhost", "127.0.0.1"]).expect("certs");
    let path = |name: &str| certs.path().join(name).display().to_string();
    for (name, pem) in [("ca.pem", &ca), ("cert.pem", &cert), ("key.pem", &key)] {
        std::fs::write(certs.path().join(name), pem).expect("write a certificate");
    }
    let flight_sql_port = crate::common::free_port();
    let env: Vec<(String, String)> = [
        ("EMBER_AUTH_CLUSTER_SECRET", SECRET.to_string()),
        (
            "EMBER_AUTH_FLIGHT_SECRET",
            "flight-sql-secret-for-tls".to_string(),
        ),
        ("EMBER_TLS_CERT_FILE", path("cert.pem")),
        ("EMBER_TLS_KEY_FILE", path("key.pem")),
        ("EMBER_TLS_CLUSTER_CA_FILE", path("ca.pem")),
        ("EMBER_TLS_CLUSTER_CERT_FILE", path("cert.pem")),
        ("EMBER_TLS_CLUSTER_KEY_FILE", path("key.pem")),
        (
            "EMBER_COORDINATOR_FLIGHT_SQL_PORT",
            flight_sql_port.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let cluster = ProcessCluster::start_with_env(2, 0.01, &tpch_data_dir(0.01), &env);
    // Executors joined over TLS (they verified the coordinator against the CA).
    let client = cluster.connect(2).await;
    let sql = "select l_returnflag, count(*) from tpch.lineitem group by l_returnflag order by 1";
    let expected = rows(&client.simple_query(sql).await.expect("a distributed query"));
    assert_eq!(expected.len(), 3);

    // psql checks the server's certificate and name.
    let psql = std::process::Command::new("psql")
        .arg(format!(
            "host=localhost port={} user=ember dbname=ember sslmode=verify-full sslrootcert={}",
            cluster.pg_port,
            path("ca.pem")
        ))
        .args([
            "-At",
            "-c",
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
        ])
        .args(["-c", "select count(*) from tpch.nation"])
        .output()
        .expect("run psql");
    let out = String::from_utf8_lossy(&psql.stdout);
    assert!(
        psql.status.success(),
        "psql verify-full: {out}\n{}",
        String::from_utf8_lossy(&psql.stderr)
    );
    assert_eq!(out.trim_end(), "25");

    // ADBC over grpc+tls, trusting the CA; result partitions come from the executors, over TLS.
    let script = r#"
import os, sys
import adbc_driver_flightsql.dbapi as flight_sql
from adbc_driver_flightsql import DatabaseOptions
conn = flight_sql.connect(os.environ["URI"], db_kwargs={
    DatabaseOptions.TLS_ROOT_CERTS.value: open(os.environ["CA"]).read(),
})
cur = conn.cursor()
cur.execute(os.environ["SQL"])
for row in cur.fetchall():
    print("|".join(str(v) for v in row))
conn.close()
"#;
    let adbc = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&python)
            .args(["-c", script])
            .env("URI", format!("grpc+tls://localhost:{flight_sql_port}"))
            .env("CA", path("ca.pem"))
            .env("SQL", sql)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the ADBC client took too long")
    .expect("run python");
    let stdout = String::from_utf8_lossy(&adbc.stdout);
    assert!(
        adbc.status.success(),
        "ADBC over TLS: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&adbc.stderr),
        cluster.logs()
    );
    let got: Vec<Vec<Option<String>>> = stdout
        .lines()
        .map(|line| line.split('|').map(|v| Some(v.to_string())).collect())
        .collect();
    assert_eq!(got, expected);

    // `ember sql` over TLS, trusting the CA.
    let shell = tokio::process::Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "sql",
            "--host",
            "localhost",
            "--port",
            &flight_sql_port.to_string(),
        ])
        .args(["--tls-ca", &path("ca.pem"), "--format", "csv", "-e", sql])
        .kill_on_drop(true)
        .output()
        .await
        .expect("run ember sql");
    let shown = String::from_utf8_lossy(&shell.stdout);
    assert!(
        shell.status.success(),
        "ember sql over TLS: {shown}\n{}",
        String::from_utf8_lossy(&shell.stderr)
    );
    assert_eq!(
        shown.lines().filter(|l| l.contains(',')).count(),
        4,
        "{shown}"
    );

    // The cluster port speaks TLS only: a plaintext stranger gets no further than TCP.
    let plaintext = tokio::time::timeout(
        Duration::from_secs(10),
        rogue_register(cluster.grpc_port, Some(&ClusterKey::from_secret(SECRET)), 1),
    )
    .await;
    assert!(
        !matches!(plaintext, Ok(Ok(_))),
        "a plaintext session was served: {plaintext:?}"
    );
}

/// Each client port admits `coordinator.max_connections` clients and each user
/// `max_sessions_per_user` Flight SQL sessions; beyond that a client is refused with a clear
/// error, and served again once there is room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ports_cap_connections_and_sessions() {
    let flight_sql_port = crate::common::free_port();
    let env: Vec<(String, String)> = [
        ("EMBER_COORDINATOR_MAX_CONNECTIONS", "3"),
        ("EMBER_COORDINATOR_MAX_SESSIONS_PER_USER", "2"),
        (
            "EMBER_COORDINATOR_FLIGHT_SQL_PORT",
            &flight_sql_port.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cluster = ProcessCluster::start_with_env(1, 0.01, &tpch_data_dir(0.01), &env);
    let as_user = |user: &'static str| {
        let port = cluster.pg_port;
        async move {
            let (client, connection) = tokio_postgres::connect(
                &format!("host=127.0.0.1 port={port} user={user} dbname=ember"),
                tokio_postgres::NoTls,
            )
            .await?;
            tokio::spawn(connection);
            Ok::<_, tokio_postgres::Error>(client)
        }
    };
    let refusal = |error: tokio_postgres::Error| {
        let db = error.as_db_error().expect("a Postgres error");
        assert_eq!(db.code().code(), "53300", "{db:?}");
        db.message().to_string()
    };
    let first = cluster.connect(1).await;
    first
        .batch_execute("create role if not exists alice login; create role if not exists bob login")
        .await
        .expect("roles created");
    let second = as_user("ember")
        .await
        .expect("a second connection of ember");
    // Two per user: the third of `ember` is refused, another user's is not.
    let message = refusal(as_user("ember").await.expect_err("a third of ember"));
    assert!(
        message.contains("too many connections for role \"ember\""),
        "{message}"
    );
    // The refused client held a slot of the port until its connection ended, which the client
    // can see before the server has counted it out.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let third = loop {
        match as_user("alice").await {
            Ok(client) => break client,
            Err(e)
                if e.as_db_error()
                    .is_some_and(|db| db.code().code() == "53300")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("alice's first: {e:?}"),
        }
    };
    // Three per port: a fourth client is refused whoever it is.
    let message = refusal(as_user("bob").await.expect_err("a fourth client"));
    assert!(message.contains("too many clients"), "{message}");
    for client in [&first, &second, &third] {
        client.simple_query("select 1").await.expect("still served");
    }
    drop(third);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let again = loop {
        match as_user("bob").await {
            Ok(client) => break client,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("room was not made: {e}"),
        }
    };
    again.simple_query("select 1").await.expect("served again");

    // Under trust a role must still exist to log in (28000), as in PostgreSQL.
    drop(again);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let refused = as_user("mallory").await.expect_err("an unknown role");
        let db = refused.as_db_error().expect("a Postgres error");
        if db.code().code() == "53300" && std::time::Instant::now() < deadline {
            // The port has not counted the last client out yet.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(db.code().code(), "28000", "{db:?}");
        assert!(
            db.message().contains("role \"mallory\" does not exist"),
            "{db:?}"
        );
        break;
    }

    // Flight SQL: two sessions of one user, the third refused while both are in use.
    let handshake = || async {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{flight_sql_port}"))
                .expect("an endpoint")
                .connect()
                .await
                .expect("the Flight SQL port answers");
        let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
        client.handshake("ember", "").await.map(|_| client)
    };
    let _one = handshake().await.expect("a first session");
    let _two = handshake().await.expect("a second session");
    let Err(error) = handshake().await else {
        panic!("a third session is refused");
    };
    let error = error.to_string();
    assert!(error.contains("max_sessions_per_user"), "{error}");
}
