//! The executor process: its session with the coordinator, its slots and its Flight service.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use std::num::NonZeroUsize;

use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionContext;
use ember_planner::cache::CacheLimits;
use ember_planner::ids::{ExecutorId, QueryId, TaskAttempt};
use ember_planner::paths::AllowedPaths;
use ember_planner::shuffle::{
    DiskBudget, LiveBlocks, ShuffleCompression, local_host_key, query_dir,
};
use ember_planner::storage::{EmberObjectStores, S3Options};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tracing::{debug, info, warn};

use crate::cpu_runtime::CpuRuntime;
use crate::flight::ShuffleFlightService;
use crate::task_runner::{TaskRunner, cancelled};
use crate::{Error, Result};
use ember_protocol::FlightShuffleFetcher;
use ember_protocol::credentials::SigningKey;
use ember_protocol::membership::{self, ClusterCredentials};
use ember_protocol::proto::cluster_service_client::ClusterServiceClient;
use ember_protocol::proto::{
    CoordinatorMessage, Decommissioning, ExecutorMessage, Heartbeat, LaunchTask, RegisterExecutor,
    TaskId, coordinator_message, executor_message,
};

/// How an executor is set up.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// `host:port` of the coordinator's gRPC service.
    pub coordinator: String,
    /// The host peers and the coordinator use to reach this executor's Flight service.
    pub advertise_host: String,
    /// Shuffle files live under `<work_dir>/shuffle`; spills under `<work_dir>/tmp`.
    pub work_dir: PathBuf,
    /// Tasks that run at once.
    pub slots: usize,
    /// Bytes of memory shared by the slots; 0 means unbounded.
    pub memory: u64,
    /// Bytes of shuffle files and, separately, of spill files the work dir may hold; 0 means
    /// no limit.
    pub max_disk_bytes: u64,
    /// How map outputs are compressed on disk.
    pub shuffle_compression: ShuffleCompression,
    /// How often the executor tells the coordinator it is alive.
    pub heartbeat_interval: Duration,
    /// The largest gRPC message sent or received (task fragments, shuffle batches).
    pub max_message_size: usize,
    /// Proves this executor a member of the cluster, checks the coordinator's answer, signs and
    /// checks shuffle tickets; and TLS for the cluster's ports.
    pub cluster: ClusterCredentials,
    /// Where the files fragments scan or write may lie (the `storage.*` settings); the work
    /// dir is added to its internal directories.
    pub allowed_paths: AllowedPaths,
    /// Sizes of the parquet metadata cache (the other caches serve planning).
    pub cache: CacheLimits,
    /// How to reach `s3://` locations.
    pub s3: S3Options,
    /// The coordinator's key for Flight SQL tickets: clients holding one fetch result
    /// partitions straight from this executor.
    pub client_key: Option<SigningKey>,
    /// The allocation a cluster manager started this executor for (`executor.allocation_id`;
    /// empty when started by hand).
    pub allocation_id: String,
    /// How long a decommissioning executor lets its tasks run before handing them back.
    pub decommission_grace: Duration,
}

impl ExecutorOptions {
    /// From the configuration: `executor.*` (`slots` 0: one per core; `memory` 0: 60% of the
    /// machine's), the storage and cache settings, and `auth.flight_secret` to check the
    /// tickets of Flight SQL clients. `coordinator` is its `host:port`.
    pub fn from_config(
        config: &ember_config::EmberConfig,
        coordinator: String,
        work_dir: PathBuf,
        cluster: ClusterCredentials,
    ) -> Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Self {
            coordinator,
            cluster,
            advertise_host: config.executor.bind_host.clone(),
            work_dir,
            slots: match config.executor.slots {
                0 => cores,
                slots => slots,
            },
            memory: match config.executor.memory {
                0 => default_memory(),
                memory => memory,
            },
            max_disk_bytes: config.executor.max_disk_bytes,
            // Checked when the configuration was read.
            shuffle_compression: ShuffleCompression::parse(&config.executor.shuffle_compression)
                .unwrap_or_default(),
            heartbeat_interval: Duration::from_millis(config.executor.heartbeat_interval_ms),
            max_message_size: config.coordinator.max_message_size,
            allowed_paths: AllowedPaths::from_config(config, &[])?,
            cache: CacheLimits::from_config(&config.cache),
            s3: S3Options::from_config(&config.storage),
            // Flight SQL clients fetch result partitions from executors with the coordinator's
            // tickets: a stand-alone executor needs the shared secret to check them.
            client_key: (!config.auth.flight_secret.is_empty())
                .then(|| SigningKey::from_secret(&config.auth.flight_secret)),
            allocation_id: config.executor.allocation_id.clone(),
            decommission_grace: Duration::from_millis(config.executor.decommission_grace_ms),
        })
    }
}

/// Memory for an executor that was given none: 60% of the machine's, the rest left to the
/// operating system, buffers and the coordinator (0, no limit, where it cannot be read).
pub fn default_memory() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .unwrap_or(0);
    total_kib * 1024 / 10 * 6
}

/// One executor. `run` serves until `shutdown` completes.
#[derive(Debug)]
pub struct Executor {
    /// A name for logs; the coordinator assigns the executor's id at each registration.
    name: String,
    options: ExecutorOptions,
    flight_listener: TcpListener,
    decommission: CancellationToken,
}

/// Tasks launched in this session, waiting for a slot or running; cancelling the token stops one.
type RunningTasks = Arc<Mutex<HashMap<TaskAttempt, CancellationToken>>>;

impl Executor {
    /// An executor whose Flight service will use the already-bound `flight_listener`.
    pub fn new(options: ExecutorOptions, flight_listener: TcpListener) -> Self {
        ember_protocol::tls::install_crypto_provider();
        let name = format!("executor-{}", &QueryId::random().as_str()[..8]);
        Self {
            name,
            options,
            flight_listener,
            decommission: CancellationToken::new(),
        }
    }

    /// Cancelling it decommissions the executor gracefully (what SIGTERM does): it takes no new
    /// tasks, finishes those it runs within `decommission_grace` (handing back the rest), serves
    /// its shuffle outputs until the coordinator says no query needs them, and `run` returns.
    pub fn decommission_token(&self) -> CancellationToken {
        self.decommission.clone()
    }

    /// The executor's name in logs (its id in `system.executors` is the coordinator's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Registers with the coordinator (again after every lost session), runs the tasks it
    /// launches and serves shuffle blocks until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let Self {
            name,
            options,
            flight_listener,
            decommission,
        } = self;
        let flight_port = flight_listener.local_addr()?.port();
        // A new incarnation owns nothing that an earlier one left behind.
        let shuffle_root = options.work_dir.join("shuffle");
        if shuffle_root.exists() {
            info!(path = %shuffle_root.display(), "removing orphaned shuffle files");
            let _ = std::fs::remove_dir_all(&shuffle_root);
        }
        std::fs::create_dir_all(&shuffle_root)?;
        // Peers on this machine open our files by this path.
        let options = ExecutorOptions {
            work_dir: std::fs::canonicalize(&options.work_dir)?,
            ..options
        };
        let host_key = local_host_key();
        let tmp_dir = options.work_dir.join("tmp");
        std::fs::create_dir_all(&tmp_dir)?;
        // Shuffle and spill files are never a table's.
        let allowed_paths = Arc::new(
            options
                .allowed_paths
                .clone()
                .with_internal(std::slice::from_ref(&options.work_dir)),
        );

        let mut runtime = RuntimeEnvBuilder::new()
            .with_temp_file_path(&tmp_dir)
            .with_cache_manager(options.cache.cache_config())
            .with_object_store_registry(Arc::new(EmberObjectStores::new(
                options.s3.clone(),
                Arc::clone(&allowed_paths),
            )));
        if options.memory > 0 {
            // Shared fairly by the slots: each spilling operator may use its share, and the
            // error of one that cannot names the largest consumers.
            runtime = runtime.with_memory_pool(Arc::new(TrackConsumersPool::new(
                FairSpillPool::new(options.memory as usize),
                NonZeroUsize::new(5).expect("non-zero"),
            )));
        }
        if options.max_disk_bytes > 0 {
            runtime = runtime.with_max_temp_directory_size(options.max_disk_bytes);
        }
        let mut base_state =
            SessionContext::new_with_config_rt(Default::default(), runtime.build_arc()?).state();
        ember_planner::functions::register(&mut base_state)?;
        let live = Arc::new(LiveBlocks::default());
        let runner = Arc::new(TaskRunner {
            base: base_state,
            work_dir: options.work_dir.clone(),
            host_key: host_key.clone(),
            fetcher: Arc::new(FlightShuffleFetcher::new(
                options.max_message_size,
                &options.cluster,
                name.clone(),
            )),
            live: Arc::clone(&live),
            disk: Arc::new(DiskBudget::new(options.max_disk_bytes)),
            compression: options.shuffle_compression,
            peers: Arc::default(),
            sort_spill_reservation: (options.memory > 0).then(|| {
                let per_slot = options.memory as usize / options.slots.max(1);
                (per_slot / 8).min(10 << 20)
            }),
            allowed_paths,
        });
        let cpu = Arc::new(CpuRuntime::new(&name, options.slots)?);

        let (flight_stop_tx, flight_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (served_tx, served_rx) = mpsc::unbounded_channel();
        let flight = FlightServiceServer::new(ShuffleFlightService::new(
            options.work_dir.clone(),
            Arc::clone(&live),
            options.cluster.key.clone(),
            options.client_key.clone(),
            served_tx,
        ))
        .max_decoding_message_size(options.max_message_size)
        .max_encoding_message_size(options.max_message_size);
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = &options.cluster.tls {
            server = server
                .tls_config(tls.server())
                .map_err(|e| Error::Protocol(format!("cluster TLS: {e}")))?;
        }
        let flight_server = tokio::spawn(server.add_service(flight).serve_with_incoming_shutdown(
            TcpIncoming::from(flight_listener).with_nodelay(Some(true)),
            async {
                let _ = flight_stop_rx.await;
            },
        ));
        info!(executor = %name, flight_port, slots = options.slots, "executor started");

        let session = Session {
            name: name.clone(),
            options: options.clone(),
            flight_port,
            host_key,
            runner,
            cpu,
            served_rx: tokio::sync::Mutex::new(served_rx),
            decommission: decommission.clone(),
        };
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                result = session.serve() => {
                    match result {
                        Ok(SessionEnd::Drained) => {
                            info!(executor = %name, "decommissioned: the coordinator needs nothing more from this executor");
                            break;
                        }
                        Ok(SessionEnd::Closed) => {
                            info!(executor = %name, "coordinator closed the session");
                            backoff = Duration::from_millis(100);
                        }
                        Err(Error::Refused(reason)) => warn!(executor = %name, %reason, "the coordinator refused this executor"),
                        Err(error) => debug!(executor = %name, %error, "cannot reach coordinator"),
                    }
                }
            }
            // A decommissioning executor does not come back.
            if decommission.is_cancelled() {
                break;
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = decommission.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        let _ = flight_stop_tx.send(());
        // Readers still streaming get a moment to finish; the process does not wait for them.
        let _ = tokio::time::timeout(FLIGHT_STOP_WAIT, flight_server).await;
        let _ = std::fs::remove_dir_all(&shuffle_root);
        info!(executor = %name, "executor stopped");
        Ok(())
    }
}

/// One connection to the coordinator.
struct Session {
    name: String,
    options: ExecutorOptions,
    flight_port: u16,
    host_key: String,
    runner: Arc<TaskRunner>,
    cpu: Arc<CpuRuntime>,
    /// Result partitions clients have read from this executor (see `ShuffleFlightService`);
    /// the current session forwards them to the coordinator.
    served_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<TaskId>>,
    /// Cancelled when the executor is to decommission.
    decommission: CancellationToken,
}

/// How a session ended without an error.
enum SessionEnd {
    /// The coordinator closed it (or wrote the executor off): register again.
    Closed,
    /// Decommissioned: exit.
    Drained,
}

/// How long an executor waits for the coordinator to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stopping executor lets readers finish their shuffle streams.
const FLIGHT_STOP_WAIT: Duration = Duration::from_secs(5);

/// How long a decommissioning executor waits for the reports of the tasks it hands back.
const HAND_BACK_WAIT: Duration = Duration::from_secs(2);

impl Session {
    async fn serve(&self) -> Result<SessionEnd> {
        let scheme = ember_protocol::tls::scheme(self.options.cluster.tls.as_ref());
        let endpoint = format!("{scheme}://{}", self.options.coordinator);
        let mut endpoint = tonic::transport::Endpoint::from_shared(endpoint)
            .map_err(|e| Error::Protocol(e.to_string()))?
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(tls) = &self.options.cluster.tls {
            // The coordinator must present a certificate of the cluster's CA.
            endpoint = endpoint.tls_config(tls.client())?;
        }
        let channel = endpoint.connect().await?;
        let mut client = ClusterServiceClient::new(channel)
            .max_decoding_message_size(self.options.max_message_size)
            .max_encoding_message_size(self.options.max_message_size);
        let (tx, rx) = mpsc::channel::<ExecutorMessage>(1024);
        let mut inbound = client
            .open_session(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let id = self.join(&mut inbound, &tx).await?;
        info!(executor = %self.name, executor_id = %id, coordinator = %self.options.coordinator, "registered");
        // Each session is a new incarnation: the coordinator has written off whatever an earlier
        // one produced (its queries ended with the old session, or their outputs were recomputed
        // elsewhere), so those files only take space.
        self.remove_shuffle_files().await;
        // Peers on this machine read our committed files only from a work dir that names us.
        write_work_dir_marker(&self.options.work_dir, &id)?;

        let running: RunningTasks = Arc::default();
        let slots = Arc::new(Semaphore::new(self.options.slots.max(1)));
        let mut heartbeat = tokio::time::interval(self.options.heartbeat_interval);
        let mut served_rx = self.served_rx.lock().await;
        // When decommissioning: the end of the grace period.
        let mut draining: Option<tokio::time::Instant> = None;
        let result = loop {
            let deadline = draining.unwrap_or_else(|| {
                tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600)
            });
            tokio::select! {
                Some(task) = served_rx.recv() => {
                    let served = executor_message::Message::ResultServed(task);
                    if tx.send(message(served)).await.is_err() {
                        break Ok(SessionEnd::Closed);
                    }
                }
                _ = heartbeat.tick() => {
                    let running_tasks = lock(&running).len() as u32;
                    let runtime = self.runner.base.runtime_env();
                    let beat = executor_message::Message::Heartbeat(Heartbeat {
                        running_tasks,
                        memory_used: runtime.memory_pool.reserved() as u64,
                        disk_used: self.runner.disk.used()
                            + runtime.disk_manager.used_disk_space(),
                    });
                    if tx.send(message(beat)).await.is_err() {
                        break Ok(SessionEnd::Closed);
                    }
                }
                _ = self.decommission.cancelled(), if draining.is_none() => {
                    let grace = self.options.decommission_grace;
                    draining = Some(tokio::time::Instant::now() + grace);
                    info!(executor = %self.name, running = lock(&running).len(), grace_ms = grace.as_millis() as u64, "decommissioning: no new tasks, finishing those running");
                    let notice = executor_message::Message::Decommissioning(Decommissioning {
                        grace_ms: grace.as_millis() as u64,
                    });
                    if tx.send(message(notice)).await.is_err() {
                        break Ok(SessionEnd::Closed);
                    }
                }
                () = tokio::time::sleep_until(deadline), if draining.is_some() => {
                    self.hand_back(&running).await;
                    // The reports go out while the session stays open; the coordinator says
                    // `Drained` once it has taken them, unless outputs here are still needed.
                    let _ = tokio::time::timeout(HAND_BACK_WAIT, drained(&mut inbound)).await;
                    break Ok(SessionEnd::Drained);
                }
                received = inbound.message() => match received {
                    Ok(Some(msg)) => {
                        if self.handle(msg, &id, &tx, &running, &slots, draining.is_some()) {
                            break Ok(SessionEnd::Drained);
                        }
                    }
                    Ok(None) => break Ok(SessionEnd::Closed),
                    Err(status) => break Err(Error::Status(status)),
                },
            }
        };
        // Without a coordinator no result can be reported: stop everything that still runs.
        for (_, token) in lock(&running).drain() {
            token.cancel();
        }
        self.runner.live.release_all();
        result
    }

    /// The grace period is over: stops the tasks still running, whose reports (cancelled) tell
    /// the coordinator to run them elsewhere, and waits briefly for those reports to go out.
    async fn hand_back(&self, running: &RunningTasks) {
        let tokens: Vec<CancellationToken> = lock(running).values().cloned().collect();
        if tokens.is_empty() {
            return;
        }
        warn!(executor = %self.name, tasks = tokens.len(), "decommission grace period over: handing back the tasks still running");
        for token in tokens {
            token.cancel();
        }
        let waited = tokio::time::Instant::now();
        while !lock(running).is_empty() && waited.elapsed() < HAND_BACK_WAIT {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn remove_shuffle_files(&self) {
        self.runner.disk.clear();
        let root = self.options.work_dir.join("shuffle");
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&root) else {
                return;
            };
            for entry in entries.flatten() {
                if let Err(error) = std::fs::remove_dir_all(entry.path()) {
                    warn!(path = %entry.path().display(), %error, "cannot remove shuffle files");
                }
            }
        })
        .await;
    }

    /// Answers the coordinator's challenge with this executor's offer and proof, and checks
    /// the coordinator's proof in return: the id it assigns is taken only from a coordinator
    /// that holds the cluster secret.
    async fn join(
        &self,
        inbound: &mut tonic::Streaming<CoordinatorMessage>,
        tx: &mpsc::Sender<ExecutorMessage>,
    ) -> Result<ExecutorId> {
        let challenge = match inbound.message().await? {
            Some(CoordinatorMessage {
                message: Some(coordinator_message::Message::Challenge(challenge)),
            }) => challenge.nonce,
            _ => return Err(Error::Refused("the coordinator sent no challenge".into())),
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut register = RegisterExecutor {
            host: self.options.advertise_host.clone(),
            flight_port: u32::from(self.flight_port),
            slots: self.options.slots as u32,
            cores: cores as u32,
            memory: self.options.memory,
            host_key: self.host_key.clone(),
            work_dir: self.options.work_dir.display().to_string(),
            nonce: membership::nonce(),
            proof: vec![],
            name: self.name.clone(),
            allocation_id: self.options.allocation_id.clone(),
        };
        register.proof = self
            .options
            .cluster
            .key
            .executor_proof(&challenge, &register);
        let nonce = register.nonce.clone();
        tx.send(message(executor_message::Message::Register(register)))
            .await
            .map_err(|_| Error::Protocol("session closed before registering".into()))?;
        let registered = match inbound.message().await {
            Ok(Some(CoordinatorMessage {
                message: Some(coordinator_message::Message::Registered(registered)),
            })) => registered,
            Ok(_) => return Err(Error::Refused("the coordinator closed the session".into())),
            Err(status) => return Err(Error::Refused(status.message().to_string())),
        };
        if registered.executor_id.is_empty()
            || !self.options.cluster.key.verify_coordinator(
                &challenge,
                &nonce,
                &registered.executor_id,
                &registered.proof,
            )
        {
            return Err(Error::Refused(
                "the coordinator did not prove the cluster secret (auth.cluster_secret)".into(),
            ));
        }
        Ok(ExecutorId(registered.executor_id))
    }

    /// Acts on one message of the coordinator; true when it says this executor is drained
    /// (decommissioned, whether on a signal or by its cluster manager) and may exit.
    fn handle(
        &self,
        msg: CoordinatorMessage,
        id: &ExecutorId,
        tx: &mpsc::Sender<ExecutorMessage>,
        running: &RunningTasks,
        slots: &Arc<Semaphore>,
        draining: bool,
    ) -> bool {
        match msg.message {
            Some(coordinator_message::Message::Drained(_)) => return true,
            Some(coordinator_message::Message::LaunchTask(launch)) if draining => {
                // Sent before the coordinator heard of the decommission: handed back at once.
                if let Some(task_id) = launch.task {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let status = executor_message::Message::TaskStatus(cancelled(task_id));
                        let _ = tx.send(message(status)).await;
                    });
                }
            }
            Some(coordinator_message::Message::LaunchTask(launch)) => {
                self.launch(
                    launch,
                    id,
                    tx.clone(),
                    Arc::clone(running),
                    Arc::clone(slots),
                );
            }
            Some(coordinator_message::Message::CancelTask(cancel)) => {
                if let Some(attempt) = cancel.task.as_ref().and_then(|t| t.to_attempt())
                    && let Some(token) = lock(running).get(&attempt)
                {
                    debug!(task = %attempt, "cancelling task");
                    token.cancel();
                }
            }
            Some(coordinator_message::Message::CancelQuery(cancel)) => {
                abort_query(running, &cancel.query_id);
                if let Some(query_id) = QueryId::parse(&cancel.query_id) {
                    self.runner.live.release_query(&query_id);
                }
            }
            Some(coordinator_message::Message::ReleaseQuery(release)) => {
                abort_query(running, &release.query_id);
                if let Some(query_id) = QueryId::parse(&release.query_id) {
                    self.runner.live.release_query(&query_id);
                    let dir = query_dir(&self.options.work_dir, &query_id);
                    let disk = Arc::clone(&self.runner.disk);
                    tokio::task::spawn_blocking(move || {
                        if dir.exists()
                            && let Err(error) = std::fs::remove_dir_all(&dir)
                        {
                            warn!(path = %dir.display(), %error, "cannot remove shuffle files");
                        }
                        disk.release(&query_id);
                    });
                }
            }
            Some(
                coordinator_message::Message::Registered(_)
                | coordinator_message::Message::Challenge(_),
            )
            | None => {}
        }
        false
    }

    fn launch(
        &self,
        launch: LaunchTask,
        id: &ExecutorId,
        tx: mpsc::Sender<ExecutorMessage>,
        running: RunningTasks,
        slots: Arc<Semaphore>,
    ) {
        let Some(task_id) = launch.task.clone() else {
            warn!("launch without a task id");
            return;
        };
        let Some(attempt) = task_id.to_attempt() else {
            warn!(?task_id, "launch with a malformed task id");
            return;
        };
        let runner = Arc::clone(&self.runner);
        let executor_id = id.clone();
        let cpu = Arc::clone(&self.cpu);
        let token = CancellationToken::new();
        lock(&running).insert(attempt.clone(), token.clone());
        tokio::spawn(async move {
            let status = tokio::select! {
                permit = slots.acquire_owned() => match permit {
                    Ok(_permit) => {
                        let mut handle = cpu.spawn(async move { runner.run(launch, executor_id).await });
                        let joined = tokio::select! {
                            joined = &mut handle => joined,
                            _ = token.cancelled() => {
                                // The slot (and the report that frees it on the coordinator)
                                // only goes once the task's plan is dropped and its memory
                                // returned to the pool, so the next task finds it free.
                                handle.abort();
                                let _ = (&mut handle).await;
                                Ok(cancelled(task_id.clone()))
                            }
                        };
                        match joined {
                            Ok(status) => status,
                            Err(error) if error.is_cancelled() => cancelled(task_id),
                            Err(error) => {
                                warn!(task = %attempt, %error, "task panicked");
                                crate::task_runner::TaskRunner::panicked(
                                    task_id,
                                    &error.to_string(),
                                )
                            }
                        }
                    }
                    Err(_) => cancelled(task_id),
                },
                _ = token.cancelled() => cancelled(task_id),
            };
            // Sent before the task leaves `running`: a decommissioning executor handing tasks
            // back waits for `running` to empty, and so for these reports to be queued.
            let _ = tx
                .send(message(executor_message::Message::TaskStatus(status)))
                .await;
            lock(&running).remove(&attempt);
        });
    }
}

/// Reads the session until the coordinator says the executor is drained (or the session ends).
async fn drained(inbound: &mut tonic::Streaming<CoordinatorMessage>) {
    while let Ok(Some(message)) = inbound.message().await {
        if matches!(
            message.message,
            Some(coordinator_message::Message::Drained(_))
        ) {
            return;
        }
    }
}

fn abort_query(running: &RunningTasks, query_id: &str) {
    for (attempt, token) in lock(running).iter() {
        if attempt.query_id.as_str() == query_id {
            token.cancel();
        }
    }
}

/// Writes `<work_dir>/executor.id`: peers on this machine read committed shuffle files from a
/// work dir only when it names the executor the coordinator says wrote them.
fn write_work_dir_marker(work_dir: &std::path::Path, id: &ExecutorId) -> Result<()> {
    let marker = work_dir.join(ember_planner::shuffle::WORK_DIR_MARKER);
    let staged = work_dir.join(format!("{}.new", ember_planner::shuffle::WORK_DIR_MARKER));
    std::fs::write(&staged, id.0.as_bytes())?;
    std::fs::rename(&staged, &marker)?;
    Ok(())
}

fn message(message: executor_message::Message) -> ExecutorMessage {
    ExecutorMessage {
        message: Some(message),
    }
}

/// Locks the running-task map; it holds plain data, so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
