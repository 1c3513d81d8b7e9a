//! Property-based fuzzing of the server's inputs through real sockets: the Postgres message
//! stream, Flight SQL commands and tickets, and the cluster protocol. Each runs a bounded number
//! of cases against one cluster; afterwards the cluster still answers correctly.

use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, FlightDescriptor, Ticket};
use ember_protocol::membership::ClusterKey;
use ember_protocol::proto::{
    ExecutorMessage, Heartbeat, RegisterExecutor, TaskId, TaskStatus, TaskSucceeded,
    executor_message, task_status,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{ProcessCluster, rows, tpch_data_dir};

const SECRET: &str = "fuzzing-cluster-secret-0123456789";
const CASES: u32 = 48;

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    })
}

/// A Postgres frontend message: a type byte, a length (sometimes a lie) and a body.
fn pg_message() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(b"QPBEDSHCXFdcfpx\0".to_vec()),
        prop::collection::vec(any::<u8>(), 0..256),
        any::<Option<u32>>(),
    )
        .prop_map(|(kind, body, lie)| {
            let len = lie.unwrap_or(body.len() as u32 + 4);
            let mut message = vec![kind];
            message.extend_from_slice(&len.to_be_bytes());
            message.extend_from_slice(&body);
            message
        })
}

fn startup() -> Vec<u8> {
    let mut body = 196608u32.to_be_bytes().to_vec();
    for part in ["user", "ember", "database", "ember"] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    message.extend_from_slice(&body);
    message
}

async fn pg_case(port: u16, with_startup: bool, messages: Vec<Vec<u8>>, raw: Vec<u8>) {
    let Ok(mut socket) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return;
    };
    let mut bytes = if with_startup { startup() } else { vec![] };
    bytes.extend(messages.concat());
    bytes.extend(raw);
    let _ = socket.write_all(&bytes).await;
    let mut sink = vec![0; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(100), socket.read(&mut sink)).await;
}

/// Random executor messages, as a member gone wrong might send them.
fn executor_message() -> impl Strategy<Value = ExecutorMessage> {
    let task = (".{0,40}", any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
        |(query_id, stage_id, partition, attempt)| TaskId {
            query_id,
            stage_id,
            partition,
            attempt,
        },
    );
    prop_oneof![
        any::<u32>().prop_map(
            |running_tasks| executor_message::Message::Heartbeat(Heartbeat {
                running_tasks,
                ..Default::default()
            })
        ),
        task.clone().prop_map(|task| {
            executor_message::Message::TaskStatus(TaskStatus {
                task: Some(task),
                elapsed_us: 1,
                result: Some(task_status::Result::Succeeded(TaskSucceeded::default())),
            })
        }),
        task.prop_map(executor_message::Message::ResultServed),
        Just(executor_message::Message::Register(
            RegisterExecutor::default()
        )),
    ]
    .prop_map(|message| ExecutorMessage {
        message: Some(message),
    })
}

/// One session: registers (with the secret when `member`, else with a made-up proof), then
/// sends `messages`, then hangs up.
async fn cluster_case(port: u16, member: bool, slots: u32, messages: Vec<ExecutorMessage>) {
    let key = ClusterKey::from_secret(SECRET);
    let Ok((tx, mut inbound)) =
        crate::common::open_executor_session(port, member.then_some(&key), slots).await
    else {
        return;
    };
    for message in messages {
        if tx.send(message).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(50), inbound.message()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_leave_the_cluster_serving() {
    let flight_sql_port = crate::common::free_port();
    let env: Vec<(String, String)> = [
        ("EMBER_AUTH_CLUSTER_SECRET", SECRET.to_string()),
        (
            "EMBER_COORDINATOR_FLIGHT_SQL_PORT",
            flight_sql_port.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let cluster = ProcessCluster::start_with_env(1, 0.01, &tpch_data_dir(0.01), &env);
    let client = cluster.connect(1).await;
    let check = "select count(*), sum(o_totalprice) from tpch.orders";
    let expected = rows(&client.simple_query(check).await.expect("before"));
    let handle = tokio::runtime::Handle::current();

    // The Postgres message stream.
    let pg_port = cluster.pg_port;
    let strategy = (
        any::<bool>(),
        prop::collection::vec(pg_message(), 0..6),
        prop::collection::vec(any::<u8>(), 0..64),
    );
    let mut cases = runner();
    tokio::task::block_in_place(|| {
        cases.run(&strategy, |(with_startup, messages, raw)| {
            handle.block_on(pg_case(pg_port, with_startup, messages, raw));
            Ok(())
        })
    })
    .expect("postgres cases");

    // Flight SQL: random tickets, commands and actions.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{flight_sql_port}"))
            .expect("an endpoint")
            .connect()
            .await
            .expect("the Flight SQL port answers");
    let flight = FlightServiceClient::new(channel);
    let strategy = (prop::collection::vec(any::<u8>(), 0..512), ".{0,32}");
    tokio::task::block_in_place(|| {
        runner().run(&strategy, |(bytes, action)| {
            let mut flight = flight.clone();
            handle.block_on(async move {
                let _ = flight.do_get(Ticket::new(bytes.clone())).await;
                let _ = flight
                    .get_flight_info(FlightDescriptor::new_cmd(bytes.clone()))
                    .await;
                let _ = flight.do_action(Action::new(action, bytes)).await;
            });
            Ok(())
        })
    })
    .expect("flight sql cases");

    // The cluster protocol: strangers and a member gone wrong.
    let grpc_port = cluster.grpc_port;
    let strategy = (
        any::<bool>(),
        1u32..4,
        prop::collection::vec(executor_message(), 0..16),
    );
    tokio::task::block_in_place(|| {
        runner().run(&strategy, |(member, slots, messages)| {
            handle.block_on(cluster_case(grpc_port, member, slots, messages));
            Ok(())
        })
    })
    .expect("cluster cases");

    // Everything above was refused or ignored: the same answer, from a fresh client too.
    let fresh = crate::common::connect(cluster.pg_port)
        .await
        .expect("the coordinator is still up");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match fresh.simple_query(check).await {
            Ok(messages) => {
                assert_eq!(rows(&messages), expected);
                break;
            }
            Err(error) if std::time::Instant::now() < deadline => {
                // A task sent to a fuzzing member is re-run once that member is written off.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = error;
            }
            Err(error) => panic!("after fuzzing: {error}\n{}", cluster.logs()),
        }
    }
    assert_eq!(
        rows(&client.simple_query(check).await.expect("the first client")),
        expected
    );
}
