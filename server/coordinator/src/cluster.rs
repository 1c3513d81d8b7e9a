//! The cluster manager's gRPC face: executors open a session, register, heartbeat and report.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use ember_planner::ids::ExecutorId;
use ember_protocol::proto::cluster_service_server::ClusterService;
use ember_protocol::proto::{
    CoordinatorMessage, ExecutorMessage, Registered, coordinator_message, executor_message,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

use crate::scheduler::{Event, ExecutorInfo, SchedulerHandle};

/// Turns executor sessions into scheduler events.
#[derive(Debug)]
pub(crate) struct ClusterManagerService {
    scheduler: SchedulerHandle,
    sessions: AtomicU64,
}

impl ClusterManagerService {
    pub(crate) fn new(scheduler: SchedulerHandle) -> Self {
        Self {
            scheduler,
            sessions: AtomicU64::new(0),
        }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl ClusterService for ClusterManagerService {
    type OpenSessionStream = SessionStream;

    async fn open_session(
        &self,
        request: Request<Streaming<ExecutorMessage>>,
    ) -> Result<Response<Self::OpenSessionStream>, Status> {
        let peer_ip = request.remote_addr().map(|a| a.ip().to_string());
        let mut inbound = request.into_inner();
        let Some(first) = inbound.message().await? else {
            return Err(Status::invalid_argument(
                "session closed before registering",
            ));
        };
        let Some(executor_message::Message::Register(register)) = first.message else {
            return Err(Status::invalid_argument(
                "the first message of a session must register the executor",
            ));
        };
        if register.executor_id.is_empty() || register.flight_port == 0 {
            return Err(Status::invalid_argument(
                "registration needs an executor id and a flight port",
            ));
        }
        let host = match (register.host.as_str(), peer_ip) {
            ("" | "0.0.0.0", Some(ip)) => ip,
            (host, _) => host.to_string(),
        };
        let executor_id = ExecutorId(register.executor_id.clone());
        let info = ExecutorInfo {
            id: executor_id.clone(),
            host,
            flight_port: u16::try_from(register.flight_port)
                .map_err(|_| Status::invalid_argument("flight port out of range"))?,
            slots: (register.slots as usize).max(1),
            cores: register.cores as usize,
            memory: register.memory,
            host_key: register.host_key,
            work_dir: register.work_dir.into(),
        };
        let session = self.sessions.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Ok(CoordinatorMessage {
            message: Some(coordinator_message::Message::Registered(Registered {
                executor_id: register.executor_id,
            })),
        }));
        self.scheduler
            .send(Event::ExecutorRegistered { info, session, tx });
        let scheduler = self.scheduler.clone();
        tokio::spawn(async move {
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(message)) => match message.message {
                        Some(executor_message::Message::Heartbeat(beat)) => {
                            scheduler.send(Event::Heartbeat {
                                executor_id: executor_id.clone(),
                                session,
                                active_tasks: beat.running_tasks,
                            });
                        }
                        Some(executor_message::Message::TaskStatus(status)) => {
                            scheduler.send(Event::TaskStatus {
                                executor_id: executor_id.clone(),
                                session,
                                status,
                            });
                        }
                        Some(executor_message::Message::ResultServed(task)) => {
                            scheduler.send(Event::ResultServed {
                                executor_id: executor_id.clone(),
                                session,
                                task,
                            });
                        }
                        Some(executor_message::Message::Register(_)) | None => {
                            warn!(%executor_id, "unexpected message in executor session");
                        }
                    },
                    Ok(None) => break "session closed".to_string(),
                    Err(status) => break format!("session failed: {}", status.message()),
                }
            };
            scheduler.send(Event::ExecutorLost {
                executor_id,
                session,
                reason,
            });
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}
