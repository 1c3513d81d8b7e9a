//! The `standalone` cluster manager, as Spark's standalone mode has it: one `ember worker`
//! daemon per machine opens a session to the coordinator, proves the cluster secret and offers
//! the machine's cores and memory; the coordinator asks it to launch executor processes (each
//! registering with the allocation id it was launched for) and to kill them; the worker reports
//! their starts and exits. A worker whose session ends is lost, and its executors with it.
//!
//! ```text
//!  ember worker ──OpenWorkerSession──► Challenge ─► RegisterWorker (proof, cores, memory)
//!               ◄── WorkerRegistered { id, proof } ◄──
//!  Allocator ─request─► Workers ──LaunchExecutor──► worker ──spawns──► ember executor ──┐
//!            ◄─Started / Exited── Workers ◄──ExecutorStarted / ExecutorExited──          │
//!  scheduler ◄──────────────── registers with its allocation id (ClusterService) ◄──────┘
//! ```

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ember_protocol::membership::{self, ClusterKey};
use ember_protocol::proto::{
    Challenge, KillExecutor, LaunchExecutor, RegisterWorker, WorkerCommand, WorkerMessage,
    WorkerRegistered, worker_command, worker_message,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::{info, warn};

use crate::cluster_manager::{AllocationEvent, AllocationEvents, ClusterManager, ExecutorRequest};
use crate::error::{Error, Result};

/// Commands queued towards one worker.
const WORKER_QUEUE: usize = 1024;
/// How long a new worker session may take to answer the challenge.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest host, name or work dir a worker may claim.
const MAX_CLAIM_LEN: usize = 4096;
/// Most cores one worker may offer.
const MAX_WORKER_CORES: u32 = 65_536;

pub(crate) type WorkerStream = Pin<Box<dyn Stream<Item = Result<WorkerCommand, Status>> + Send>>;
type WorkerTx = mpsc::Sender<Result<WorkerCommand, Status>>;

/// The connected workers and the executors placed on them.
#[derive(Debug)]
pub(crate) struct Workers {
    key: Arc<ClusterKey>,
    max_workers: usize,
    state: Mutex<State>,
    next: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    workers: HashMap<String, Worker>,
    placed: HashMap<String, Placed>,
}

#[derive(Debug)]
struct Worker {
    name: String,
    cores: usize,
    memory: u64,
    tx: WorkerTx,
}

#[derive(Debug)]
struct Placed {
    worker: String,
    slots: usize,
    memory: u64,
    events: AllocationEvents,
}

impl State {
    /// Cores and memory of `worker_id` not given to executors.
    fn free(&self, worker_id: &str, worker: &Worker) -> (usize, u64) {
        let (cores, memory) = self
            .placed
            .values()
            .filter(|p| p.worker == worker_id)
            .fold((0, 0), |(c, m), p| (c + p.slots, m + p.memory));
        (
            worker.cores.saturating_sub(cores),
            worker.memory.saturating_sub(memory),
        )
    }
}

fn command(command: worker_command::Command) -> WorkerCommand {
    WorkerCommand {
        command: Some(command),
    }
}

impl Workers {
    pub(crate) fn new(key: Arc<ClusterKey>, max_workers: usize) -> Arc<Self> {
        Arc::new(Self {
            key,
            max_workers,
            state: Mutex::default(),
            next: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves one worker's session: the challenge, its registration, then its reports until
    /// the stream ends.
    pub(crate) fn open(
        self: &Arc<Self>,
        inbound: Streaming<WorkerMessage>,
        peer: Option<String>,
    ) -> WorkerStream {
        let (tx, rx) = mpsc::channel(WORKER_QUEUE);
        let challenge = membership::nonce();
        let _ = tx.try_send(Ok(command(worker_command::Command::Challenge(Challenge {
            nonce: challenge.clone(),
        }))));
        let workers = Arc::clone(self);
        tokio::spawn(async move {
            let mut inbound = inbound;
            match tokio::time::timeout(
                REGISTER_TIMEOUT,
                workers.register(&mut inbound, &challenge, &tx),
            )
            .await
            {
                Ok(Ok(worker_id)) => {
                    drop(tx);
                    workers.serve(inbound, &worker_id).await;
                }
                Ok(Err(status)) => {
                    warn!(?peer, reason = %status.message(), "worker refused");
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
        Box::pin(ReceiverStream::new(rx))
    }

    async fn register(
        &self,
        inbound: &mut Streaming<WorkerMessage>,
        challenge: &[u8],
        tx: &WorkerTx,
    ) -> std::result::Result<String, Status> {
        let Some(first) = inbound.message().await? else {
            return Err(Status::invalid_argument(
                "session closed before registering",
            ));
        };
        let Some(worker_message::Message::Register(register)) = first.message else {
            return Err(Status::invalid_argument(
                "the first message of a worker session must register the worker",
            ));
        };
        if !self.key.verify_worker(challenge, &register) {
            return Err(Status::unauthenticated(
                "the registration does not prove the cluster secret (auth.cluster_secret)",
            ));
        }
        check_claims(&register)?;
        let worker_id = format!(
            "worker-{}-{}",
            &crate::catalog::to_hex(&ember_protocol::credentials::random_id(4)),
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        {
            let mut state = self.lock();
            if state.workers.len() >= self.max_workers {
                return Err(Status::resource_exhausted(format!(
                    "the coordinator has the maximum of {} workers (coordinator.max_executors)",
                    self.max_workers
                )));
            }
            state.workers.insert(
                worker_id.clone(),
                Worker {
                    name: register.name.clone(),
                    cores: register.cores as usize,
                    memory: register.memory,
                    tx: tx.clone(),
                },
            );
        }
        let proof = self
            .key
            .coordinator_proof(challenge, &register.nonce, &worker_id);
        tx.send(Ok(command(worker_command::Command::Registered(
            WorkerRegistered {
                worker_id: worker_id.clone(),
                proof,
            },
        ))))
        .await
        .map_err(|_| Status::cancelled("session closed while registering"))?;
        info!(%worker_id, name = %register.name, host = %register.host, cores = register.cores, memory = register.memory, "worker registered");
        Ok(worker_id)
    }

    async fn serve(&self, mut inbound: Streaming<WorkerMessage>, worker_id: &str) {
        let reason = loop {
            let message = match inbound.message().await {
                Ok(Some(message)) => message,
                Ok(None) => break "its session closed".to_string(),
                Err(status) => break format!("its session failed: {}", status.message()),
            };
            match message.message {
                Some(worker_message::Message::Started(started)) => {
                    let state = self.lock();
                    // Only for what this worker runs.
                    if let Some(placed) = state
                        .placed
                        .get(&started.allocation_id)
                        .filter(|p| p.worker == worker_id)
                    {
                        placed.events.send(AllocationEvent::Started {
                            allocation_id: started.allocation_id,
                        });
                    }
                }
                Some(worker_message::Message::Exited(exited)) => {
                    let mut state = self.lock();
                    let ours = state
                        .placed
                        .get(&exited.allocation_id)
                        .is_some_and(|p| p.worker == worker_id);
                    if ours && let Some(placed) = state.placed.remove(&exited.allocation_id) {
                        placed.events.send(AllocationEvent::Exited {
                            allocation_id: exited.allocation_id,
                            reason: truncate(exited.reason),
                            clean: exited.clean,
                        });
                    }
                }
                Some(worker_message::Message::Register(_)) | None => {
                    break "it sent an unexpected message".to_string();
                }
            }
        };
        warn!(%worker_id, %reason, "worker lost; its executors are lost with it");
        let mut state = self.lock();
        state.workers.remove(worker_id);
        let lost: Vec<String> = state
            .placed
            .iter()
            .filter(|(_, p)| p.worker == worker_id)
            .map(|(id, _)| id.clone())
            .collect();
        for allocation_id in lost {
            if let Some(placed) = state.placed.remove(&allocation_id) {
                placed.events.send(AllocationEvent::Exited {
                    allocation_id,
                    reason: format!("worker {worker_id} lost: {reason}"),
                    clean: false,
                });
            }
        }
    }
}

fn truncate(mut reason: String) -> String {
    if reason.len() > 1024 {
        let mut end = 1024;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

fn check_claims(register: &RegisterWorker) -> std::result::Result<(), Status> {
    for (what, value) in [
        ("host", &register.host),
        ("name", &register.name),
        ("work dir", &register.work_dir),
    ] {
        if value.len() > MAX_CLAIM_LEN {
            return Err(Status::invalid_argument(format!(
                "{what} is longer than {MAX_CLAIM_LEN} bytes"
            )));
        }
    }
    if register.cores == 0 || register.cores > MAX_WORKER_CORES {
        return Err(Status::invalid_argument(format!(
            "a worker offers 1 to {MAX_WORKER_CORES} cores, not {}",
            register.cores
        )));
    }
    Ok(())
}

#[async_trait]
impl ClusterManager for Workers {
    fn name(&self) -> &'static str {
        "standalone"
    }

    /// Places the executor on the worker with the most free cores that fits it: `slots` cores
    /// (0: all the worker's free cores, as Spark's standalone mode gives by default) and
    /// `memory` bytes (0: the worker's memory in proportion to the cores taken).
    async fn request(&self, request: ExecutorRequest, events: AllocationEvents) -> Result<()> {
        let mut state = self.lock();
        let candidates: Vec<(String, usize, u64, usize, u64)> = state
            .workers
            .iter()
            .map(|(id, w)| {
                let (cores, memory) = state.free(id, w);
                (id.clone(), cores, memory, w.cores, w.memory)
            })
            .collect();
        let fits = |(_, cores, memory, total_cores, total_memory): &(_, usize, u64, usize, u64)| {
            let slots = if request.slots == 0 {
                *cores
            } else {
                request.slots
            };
            let wanted = if request.memory == 0 {
                total_memory / (*total_cores).max(1) as u64 * slots as u64
            } else {
                request.memory
            };
            slots > 0 && slots <= *cores && wanted <= *memory
        };
        let Some((worker_id, cores, _, total_cores, total_memory)) = candidates
            .iter()
            .filter(|c| fits(c))
            .max_by_key(|(id, cores, ..)| (*cores, std::cmp::Reverse(id.clone())))
            .cloned()
        else {
            return Err(Error::Unavailable(format!(
                "no standalone worker has room for an executor of {} slots: {} workers connected",
                request.slots,
                state.workers.len()
            )));
        };
        let slots = if request.slots == 0 {
            cores
        } else {
            request.slots
        };
        let memory = if request.memory == 0 {
            total_memory / total_cores.max(1) as u64 * slots as u64
        } else {
            request.memory
        };
        let worker = &state.workers[&worker_id];
        let launch = command(worker_command::Command::Launch(LaunchExecutor {
            allocation_id: request.allocation_id.clone(),
            slots: slots as u32,
            memory,
        }));
        worker.tx.try_send(Ok(launch)).map_err(|_| {
            Error::Unavailable(format!("worker {} is not reading its session", worker.name))
        })?;
        info!(allocation_id = %request.allocation_id, %worker_id, slots, memory, "executor placed on a worker");
        state.placed.insert(
            request.allocation_id,
            Placed {
                worker: worker_id,
                slots,
                memory,
                events,
            },
        );
        Ok(())
    }

    async fn release(&self, allocation_id: &str) -> Result<()> {
        let state = self.lock();
        if let Some(placed) = state.placed.get(allocation_id)
            && let Some(worker) = state.workers.get(&placed.worker)
        {
            let _ = worker
                .tx
                .try_send(Ok(command(worker_command::Command::Kill(KillExecutor {
                    allocation_id: allocation_id.to_string(),
                }))));
        }
        Ok(())
    }

    async fn shutdown(&self) {
        let state = self.lock();
        for (allocation_id, placed) in &state.placed {
            if let Some(worker) = state.workers.get(&placed.worker) {
                let _ =
                    worker
                        .tx
                        .try_send(Ok(command(worker_command::Command::Kill(KillExecutor {
                            allocation_id: allocation_id.clone(),
                        }))));
            }
        }
    }
}
