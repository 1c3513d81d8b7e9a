//! A closed cluster: processes that do not hold the cluster secret cannot join, receive tasks or
//! read shuffle data, and members cannot claim more than the configuration allows.

use std::time::Duration;

use arrow_flight::Ticket;
use arrow_flight::flight_service_client::FlightServiceClient;
use ember_planner::ids::{QueryId, StageId};
use ember_planner::shuffle::ShuffleBlock;
use ember_protocol::credentials::now_ms;
use ember_protocol::membership::{self, ClusterKey};
use ember_protocol::proto::cluster_service_client::ClusterServiceClient;
use ember_protocol::proto::{
    CoordinatorMessage, ExecutorMessage, RegisterExecutor, ShuffleTicket, coordinator_message,
    executor_message,
};
use ember_protocol::tickets::{encode_ticket, encode_ticket_until};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::common::{ProcessCluster, rows, tpch_data_dir};

const SECRET: &str = "integration-test-cluster-secret";

/// A process speaking the cluster protocol: it answers the challenge with `proof_key`'s proof
/// (none when `None`) and reports what the coordinator sent it.
async fn rogue_register(
    grpc_port: u16,
    proof_key: Option<&ClusterKey>,
    slots: u32,
) -> Result<Vec<CoordinatorMessage>, tonic::Status> {
    let mut client = ClusterServiceClient::connect(format!("http://127.0.0.1:{grpc_port}"))
        .await
        .expect("the coordinator's gRPC port answers");
    let (tx, rx) = mpsc::channel::<ExecutorMessage>(16);
    let mut inbound = client
        .open_session(ReceiverStream::new(rx))
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
        memory: 1 << 40,
        host_key: "rogue".into(),
        work_dir: "/".into(),
        nonce: membership::nonce(),
        proof: vec![0; 32],
        name: "rogue".into(),
    };
    if let Some(key) = proof_key {
        register.proof = key.executor_proof(&challenge, &register);
    }
    tx.send(ExecutorMessage {
        message: Some(executor_message::Message::Register(register)),
    })
    .await
    .expect("send the registration");
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
