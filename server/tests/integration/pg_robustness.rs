//! Hostile and broken Postgres-protocol input against a real coordinator: random bytes, absurd
//! and truncated frames, messages in the wrong state, clients that vanish mid-result. None of it
//! may crash or wedge the server; a well-behaved client keeps getting right answers throughout.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{ProcessCluster, rows, tpch_data_dir};

/// A startup message for user and database `ember`, protocol 3.0.
fn startup() -> Vec<u8> {
    let mut body = vec![];
    body.extend_from_slice(&196_608_i32.to_be_bytes());
    for part in ["user", "ember", "database", "ember"] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    message.extend(body);
    message
}

/// A message of type `tag` whose length field says `length`, followed by `body`.
fn message(tag: u8, length: i32, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', (body.len() + 4) as i32, &body)
}

/// Sends `bytes` (in pieces, as a slow or broken client would), reads whatever comes back for
/// a moment, then drops the connection.
async fn throw(port: u16, bytes: Vec<u8>) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return;
    };
    for piece in bytes.chunks(7) {
        if stream.write_all(piece).await.is_err() {
            return;
        }
    }
    let mut sink = vec![0u8; 64 * 1024];
    let _ = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut sink)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_protocol_input_leaves_other_clients_served() {
    let cluster = ProcessCluster::start(1, 0.01, &tpch_data_dir(0.01));
    let client = cluster.connect(1).await;
    let check = "select count(*), sum(n_regionkey) from tpch.nation";
    let expected = vec![vec![Some("25".to_string()), Some("50".to_string())]];
    assert_eq!(
        rows(&client.simple_query(check).await.expect("check")),
        expected
    );

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut attacks: Vec<Vec<u8>> = vec![];
    // Random bytes of several sizes, before any startup.
    for size in [1, 3, 8, 64, 4096, 70_000] {
        attacks.push((0..size).map(|_| rng.random::<u8>()).collect());
    }
    // A startup message claiming an absurd length, a negative one, and one cut short.
    attacks.push(i32::MAX.to_be_bytes().to_vec());
    attacks.push(
        (-5_i32)
            .to_be_bytes()
            .iter()
            .chain(&[0u8; 16])
            .copied()
            .collect(),
    );
    attacks.push(startup()[..10].to_vec());
    // After a good startup: a query frame with an absurd length, one whose length is shorter
    // than its text, an unknown message type, and random bytes.
    let after_startup = |tail: Vec<u8>| [startup(), tail].concat();
    attacks.push(after_startup(message(b'Q', i32::MAX, b"select 1\0")));
    attacks.push(after_startup(message(
        b'Q',
        6,
        b"select 1 from tpch.nation\0",
    )));
    attacks.push(after_startup(message(b'z', 8, b"abcd")));
    attacks.push(after_startup(message(b'P', -1, b"")));
    attacks.push(after_startup(
        (0..512).map(|_| rng.random::<u8>()).collect(),
    ));
    // Extended-protocol messages out of order: Execute and Bind of things never parsed.
    attacks.push(after_startup(
        [
            message(b'E', 9, b"nope\0\0\0\0\0"),
            message(b'B', 12, b"p\0s\0\0\0\0\0"),
            message(b'S', 4, b""),
        ]
        .concat(),
    ));
    // An SSL request followed by garbage instead of a handshake.
    attacks.push(
        [8_i32.to_be_bytes(), 80_877_103_i32.to_be_bytes()]
            .concat()
            .into_iter()
            .chain((0..100).map(|_| rng.random::<u8>()))
            .collect(),
    );
    // A client that starts a large result and vanishes after reading a little of it.
    attacks.push(after_startup(query("select * from tpch.lineitem")));

    let grpc_port = cluster.grpc_port;
    let pg_port = cluster.pg_port;
    let mut tasks = vec![];
    for (i, attack) in attacks.into_iter().enumerate() {
        tasks.push(tokio::spawn(throw(pg_port, attack.clone())));
        // The coordinator's gRPC port gets the same treatment.
        if i % 3 == 0 {
            tasks.push(tokio::spawn(throw(grpc_port, attack)));
        }
        // Between attacks, the well-behaved client is answered correctly.
        assert_eq!(
            rows(
                &client
                    .simple_query(check)
                    .await
                    .expect("check during attacks")
            ),
            expected,
            "\n{}",
            cluster.logs()
        );
    }
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }

    // The server is up, old and new connections work, and the abandoned large query is gone.
    let fresh = cluster.connect(1).await;
    assert_eq!(
        rows(&fresh.simple_query(check).await.expect("new client")),
        expected
    );
    assert_eq!(
        rows(&client.simple_query(check).await.expect("old client")),
        expected
    );
    // Statements whose values would size allocations are refused with the limit named, before
    // anything is allocated; the session carries on.
    for (sql, limit) in [
        (
            "select format('%100000000000000s', 'x')",
            "limited to 1048576",
        ),
        (
            "select $4294967296::int",
            "parameters are numbered $1 to $65535",
        ),
        ("select repeat('x', 100000000000)", "limited to 67108864"),
        // Run by the executors, on a table's rows.
        (
            "select lpad(n_name, 2147483647) from tpch.nation",
            "limited to 67108864",
        ),
        (
            "select rpad(n_name, 100000000, 'ab') from tpch.nation",
            "limited to 67108864",
        ),
        (
            "set datafusion.execution.target_partitions = 1000000000",
            "limited to 1024",
        ),
        (
            "set datafusion.execution.batch_size = 99999999999999",
            "limited to 1048576",
        ),
    ] {
        let error = fresh.simple_query(sql).await.expect_err(sql);
        let db = error.as_db_error().expect("a database error");
        assert!(db.message().contains(limit), "{sql}: {}", db.message());
        assert!(
            ["54000", "42601"].contains(&db.code().code()),
            "{sql}: {}",
            db.code().code()
        );
    }
    let extended = fresh.prepare("select $4294967296::int").await;
    assert!(
        extended.is_err(),
        "a Parse of an absurd parameter number is refused"
    );
    assert_eq!(
        rows(
            &fresh
                .simple_query(check)
                .await
                .expect("after refused limits")
        ),
        expected
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let running = rows(
            &fresh
                .simple_query(
                    "select count(*) from system.queries \
                     where status = 'running' and sql like '%tpch.lineitem%'",
                )
                .await
                .expect("system.queries"),
        );
        if running == vec![vec![Some("0".to_string())]] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "queries still running after their clients left: {running:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
