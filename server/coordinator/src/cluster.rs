//! The cluster manager's gRPC face: executors open a session, prove the cluster secret,
//! register, heartbeat and report.
//!
//! ```text
//!  open_session ─► Challenge ─► RegisterExecutor (checked: proof, claims, limits)
//!               ─► Registered { assigned id, coordinator's proof } ─► scheduler events
//! ```
//! A session that fails the challenge never reaches the scheduler: it sees no task, no peer and
//! no query. Everything an executor sends afterwards is tagged with the id and session the
//! coordinator assigned, so it can speak only for itself.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ember_planner::ids::{ExecutorId, QueryId};
use ember_protocol::membership::{self, ClusterKey};
use ember_protocol::proto::cluster_service_server::ClusterService;
use ember_protocol::proto::{
    Challenge, CoordinatorMessage, ExecutorMessage, RegisterExecutor, Registered, WorkerMessage,
    coordinator_message, executor_message,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::scheduler::{Event, ExecutorInfo, SchedulerHandle};
use crate::standalone::{WorkerStream, Workers};

/// Messages queued towards one executor before it is written off as not reading them.
pub(crate) const EXECUTOR_QUEUE: usize = 4096;

/// How long a new session may take to answer the challenge.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest host, host key or work dir an executor may claim.
const MAX_CLAIM_LEN: usize = 4096;

/// What one executor may claim when it registers (`coordinator.max_executor_*`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExecutorLimits {
    pub(crate) max_slots: usize,
    pub(crate) max_memory: u64,
}

/// Turns executor sessions into scheduler events.
#[derive(Debug)]
pub(crate) struct ClusterManagerService {
    scheduler: SchedulerHandle,
    key: Arc<ClusterKey>,
    limits: ExecutorLimits,
    sessions: AtomicU64,
    /// The standalone workers, when `cluster_manager.kind` is `standalone`.
    workers: Option<Arc<Workers>>,
}

impl ClusterManagerService {
    pub(crate) fn new(
        scheduler: SchedulerHandle,
        key: Arc<ClusterKey>,
        limits: ExecutorLimits,
        workers: Option<Arc<Workers>>,
    ) -> Self {
        Self {
            scheduler,
            key,
            limits,
            sessions: AtomicU64::new(0),
            workers,
        }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

fn coordinator_message(message: coordinator_message::Message) -> CoordinatorMessage {
    CoordinatorMessage {
        message: Some(message),
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterManagerService {
    type OpenSessionStream = SessionStream;
    type OpenWorkerSessionStream = WorkerStream;

    async fn open_worker_session(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::OpenWorkerSessionStream>, Status> {
        let Some(workers) = &self.workers else {
            return Err(Status::failed_precondition(
                "this coordinator takes no workers: its cluster_manager.kind is not standalone",
            ));
        };
        let peer = request.remote_addr().map(|a| a.ip().to_string());
        Ok(Response::new(workers.open(request.into_inner(), peer)))
    }

    async fn open_session(
        &self,
        request: Request<Streaming<ExecutorMessage>>,
    ) -> Result<Response<Self::OpenSessionStream>, Status> {
        let peer_ip = request.remote_addr().map(|a| a.ip().to_string());
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(EXECUTOR_QUEUE);
        let challenge = membership::nonce();
        // Nothing else is sent before the executor has answered.
        let _ = tx.try_send(Ok(coordinator_message(
            coordinator_message::Message::Challenge(Challenge {
                nonce: challenge.clone(),
            }),
        )));
        let session = self.sessions.fetch_add(1, Ordering::Relaxed);
        let context = SessionContext {
            scheduler: self.scheduler.clone(),
            key: Arc::clone(&self.key),
            limits: self.limits,
            session,
            peer_ip,
        };
        tokio::spawn(async move {
            let mut inbound = inbound;
            match tokio::time::timeout(
                REGISTER_TIMEOUT,
                context.register(&mut inbound, &challenge, &tx),
            )
            .await
            {
                Ok(Ok(executor_id)) => {
                    // The scheduler holds the session's only sender from here: when it writes
                    // the executor off, the stream ends.
                    drop(tx);
                    context.serve(inbound, executor_id).await;
                }
                Ok(Err(status)) => {
                    warn!(peer = ?context.peer_ip, reason = %status.message(), "executor refused");
                    let _ = tx.send(Err(status)).await;
                }
                Err(_) => {
                    let _ = tx
                        .send(Err(Status::deadline_exceeded(
                            "no registration within 10 s of the challenge",
                        )))
                        .await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One executor session, as the coordinator sees it.
struct SessionContext {
    scheduler: SchedulerHandle,
    key: Arc<ClusterKey>,
    limits: ExecutorLimits,
    session: u64,
    peer_ip: Option<String>,
}

impl SessionContext {
    /// Reads the registration, checks its proof and claims, assigns the executor an id and
    /// proves the secret back. The scheduler hears of the executor only when all of it passed.
    async fn register(
        &self,
        inbound: &mut Streaming<ExecutorMessage>,
        challenge: &[u8],
        tx: &mpsc::Sender<Result<CoordinatorMessage, Status>>,
    ) -> Result<ExecutorId, Status> {
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
        if !self.key.verify_executor(challenge, &register) {
            return Err(Status::unauthenticated(
                "the registration does not prove the cluster secret (auth.cluster_secret)",
            ));
        }
        let info = self.check_claims(&register)?;
        let proof = self
            .key
            .coordinator_proof(challenge, &register.nonce, &info.id.0);
        let registered =
            coordinator_message(coordinator_message::Message::Registered(Registered {
                executor_id: info.id.0.clone(),
                proof,
            }));
        tx.send(Ok(registered))
            .await
            .map_err(|_| Status::cancelled("session closed while registering"))?;
        info!(executor_id = %info.id, name = %register.name, peer = ?self.peer_ip, "executor proved the cluster secret");
        let executor_id = info.id.clone();
        // On the same queue as the session's later events, so the scheduler sees them in order.
        self.scheduler
            .send_from_executor(Event::ExecutorRegistered {
                info,
                session: self.session,
                tx: tx.clone(),
            })
            .await
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
        Ok(executor_id)
    }

    /// The executor as the scheduler will know it, if its claims are within bounds.
    fn check_claims(&self, register: &RegisterExecutor) -> Result<ExecutorInfo, Status> {
        let invalid = |message: String| Err(Status::invalid_argument(message));
        if register.flight_port == 0 || register.flight_port > u32::from(u16::MAX) {
            return invalid(format!(
                "flight port {} is out of range",
                register.flight_port
            ));
        }
        for (what, value) in [
            ("host", &register.host),
            ("host key", &register.host_key),
            ("work dir", &register.work_dir),
            ("allocation id", &register.allocation_id),
        ] {
            if value.len() > MAX_CLAIM_LEN {
                return invalid(format!("{what} is longer than {MAX_CLAIM_LEN} bytes"));
            }
        }
        let slots = register.slots as usize;
        if slots == 0 || slots > self.limits.max_slots {
            return Err(Status::resource_exhausted(format!(
                "an executor offers 1 to {} slots (coordinator.max_executor_slots), not {slots}",
                self.limits.max_slots
            )));
        }
        if register.memory > self.limits.max_memory {
            return Err(Status::resource_exhausted(format!(
                "an executor claims at most {} bytes of memory \
                 (coordinator.max_executor_memory), not {}",
                self.limits.max_memory, register.memory
            )));
        }
        let work_dir = std::path::PathBuf::from(&register.work_dir);
        if !register.work_dir.is_empty() && !work_dir.is_absolute() {
            return invalid("the work dir must be an absolute path".into());
        }
        let host = match (register.host.as_str(), &self.peer_ip) {
            ("" | "0.0.0.0", Some(ip)) => ip.clone(),
            (host, _) => host.to_string(),
        };
        Ok(ExecutorInfo {
            // Assigned here, never taken from the executor: no registration can take the id
            // (and so the tasks and outputs) of another.
            id: ExecutorId(format!("exec-{}", &QueryId::random().as_str()[..12])),
            host,
            flight_port: register.flight_port as u16,
            slots,
            cores: register.cores as usize,
            memory: register.memory,
            host_key: register.host_key.clone(),
            work_dir,
            allocation_id: register.allocation_id.clone(),
        })
    }

    /// Forwards the executor's messages, tagged with its id and session, until it goes.
    async fn serve(self, mut inbound: Streaming<ExecutorMessage>, executor_id: ExecutorId) {
        let session = self.session;
        let reason = loop {
            let event = match inbound.message().await {
                Ok(Some(message)) => match message.message {
                    Some(executor_message::Message::Heartbeat(beat)) => Event::Heartbeat {
                        executor_id: executor_id.clone(),
                        session,
                        active_tasks: beat.running_tasks,
                        memory_used: beat.memory_used,
                        disk_used: beat.disk_used,
                    },
                    Some(executor_message::Message::TaskStatus(status)) => Event::TaskStatus {
                        executor_id: executor_id.clone(),
                        session,
                        status,
                    },
                    Some(executor_message::Message::ResultServed(task)) => Event::ResultServed {
                        executor_id: executor_id.clone(),
                        session,
                        task,
                    },
                    Some(executor_message::Message::Decommissioning(decommissioning)) => {
                        info!(%executor_id, grace_ms = decommissioning.grace_ms, "executor is stopping gracefully");
                        Event::Decommissioning {
                            executor_id: executor_id.clone(),
                            session,
                        }
                    }
                    Some(executor_message::Message::Register(_)) | None => {
                        break "it sent an unexpected message".to_string();
                    }
                },
                Ok(None) => break "session closed".to_string(),
                Err(status) => break format!("session failed: {}", status.message()),
            };
            // Waits while the scheduler's queue of executor events is full: a flooding
            // executor slows only its own stream.
            if self.scheduler.send_from_executor(event).await.is_err() {
                return;
            }
        };
        let _ = self
            .scheduler
            .send_from_executor(Event::ExecutorLost {
                executor_id,
                session,
                reason,
            })
            .await;
    }
}
