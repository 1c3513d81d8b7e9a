//! `ember worker`: the `standalone` cluster manager's daemon, one per machine, as Spark's
//! standalone Worker. It opens a session to the coordinator, proves the cluster secret and
//! offers the machine's cores and memory; when the coordinator asks, it launches `ember
//! executor` child processes (each registering with the allocation id it was launched for),
//! supervises them and reports their exits, and kills them when asked.
//!
//! Its executors die with it (on Linux the kernel kills them when the worker dies, however it
//! dies) and with its session: a coordinator that lost the worker has written them off, so they
//! would only hold the machine. The worker then reconnects, with a growing pause.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use ember_protocol::membership::{self, ClusterCredentials};
use ember_protocol::proto::cluster_service_client::ClusterServiceClient;
use ember_protocol::proto::{
    ExecutorExited, ExecutorStarted, LaunchExecutor, RegisterWorker, WorkerMessage, worker_command,
    worker_message,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What a worker offers and how it starts executors.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// `host:port` of the coordinator's gRPC port.
    pub coordinator: String,
    /// Cores it offers (each executor slot takes one).
    pub cores: usize,
    /// Bytes of memory it offers.
    pub memory: u64,
    /// Its executors' work dirs go under it, one per allocation.
    pub work_dir: PathBuf,
    /// Proves membership; TLS for the coordinator's port.
    pub cluster: ClusterCredentials,
    /// Arguments every executor gets after its own (`--config`, `--data-dir`, ...).
    pub executor_args: Vec<String>,
    /// A name for logs.
    pub name: String,
    /// The executors' decommission grace period (`executor.decommission_grace_ms`): a
    /// released executor is killed if it has not exited a little after it.
    pub decommission_grace: Duration,
}

/// How long an executor may take to exit after SIGTERM beyond its decommission grace period.
const STOP_SLACK: Duration = Duration::from_secs(5);

/// One executor process the worker runs.
struct Child {
    /// Stops it (SIGTERM, then SIGKILL after the grace period); taken when used.
    kill: Option<oneshot::Sender<()>>,
    /// Ends when the process has exited (and its exit was reported).
    supervisor: tokio::task::JoinHandle<()>,
}

/// Serves the coordinator until `shutdown` completes, reconnecting when a session ends.
pub async fn run(
    options: WorkerOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.work_dir)?;
    tokio::pin!(shutdown);
    let mut pause = Duration::from_millis(500);
    // How long a stopping worker waits for its executors to decommission.
    let stop_wait = options.decommission_grace + STOP_SLACK + Duration::from_secs(1);
    let stopping = CancellationToken::new();
    loop {
        let mut children: HashMap<String, Child> = HashMap::new();
        let outcome = {
            let session = session(&options, &mut children, &stopping);
            tokio::pin!(session);
            tokio::select! {
                outcome = &mut session => Some(outcome),
                () = &mut shutdown => {
                    // The session stays open while its executors decommission, so that the
                    // coordinator hears of each as it goes.
                    info!(worker = %options.name, "worker stopping; decommissioning its executors");
                    stopping.cancel();
                    let _ = tokio::time::timeout(stop_wait, &mut session).await;
                    None
                }
            }
        };
        // Whatever ended the session, its executors go: the coordinator has written them off
        // (or is stopping). They get SIGTERM, so they decommission (at once when their
        // coordinator needs nothing more from them), and SIGKILL after the grace period.
        let count = children.len();
        let mut supervisors = vec![];
        for (_, mut child) in children.drain() {
            if let Some(kill) = child.kill.take() {
                let _ = kill.send(());
            }
            supervisors.push(child.supervisor);
        }
        if outcome.is_none() {
            let _ = tokio::time::timeout(stop_wait, futures::future::join_all(supervisors)).await;
        }
        match outcome {
            None => {
                info!(worker = %options.name, "worker stopped");
                return Ok(());
            }
            Some(Ok(registered)) => {
                if registered {
                    pause = Duration::from_millis(500);
                }
                warn!(worker = %options.name, executors = count, "the coordinator closed the session; reconnecting");
            }
            Some(Err(error)) => {
                warn!(worker = %options.name, %error, executors = count, "worker session failed; reconnecting");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = &mut shutdown => return Ok(()),
        }
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

/// One session: returns whether the worker registered (and so may reconnect at once). Once
/// `stopping` is cancelled it stops its executors and returns when they have all exited.
async fn session(
    options: &WorkerOptions,
    children: &mut HashMap<String, Child>,
    stopping: &CancellationToken,
) -> anyhow::Result<bool> {
    let scheme = ember_protocol::tls::scheme(options.cluster.tls.as_ref());
    let mut endpoint =
        tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", options.coordinator))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10));
    if let Some(tls) = &options.cluster.tls {
        endpoint = endpoint.tls_config(tls.client())?;
    }
    let channel = endpoint.connect().await?;
    let mut client = ClusterServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<WorkerMessage>(1024);
    let mut inbound = client
        .open_worker_session(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let send = |message: worker_message::Message| {
        let tx = tx.clone();
        async move {
            tx.send(WorkerMessage {
                message: Some(message),
            })
            .await
            .map_err(|_| anyhow::anyhow!("the session closed"))
        }
    };

    // The coordinator's challenge, our offer and proof, its proof back.
    let Some(worker_command::Command::Challenge(challenge)) =
        inbound.message().await?.and_then(|m| m.command)
    else {
        anyhow::bail!("the coordinator sent no challenge");
    };
    let host = hostname();
    let mut register = RegisterWorker {
        host,
        cores: options.cores as u32,
        memory: options.memory,
        work_dir: options.work_dir.display().to_string(),
        nonce: membership::nonce(),
        proof: vec![],
        name: options.name.clone(),
    };
    register.proof = options
        .cluster
        .key
        .worker_proof(&challenge.nonce, &register);
    let nonce = register.nonce.clone();
    send(worker_message::Message::Register(register)).await?;
    let Some(worker_command::Command::Registered(registered)) =
        inbound.message().await?.and_then(|m| m.command)
    else {
        anyhow::bail!("the coordinator did not register the worker");
    };
    if !options.cluster.key.verify_coordinator(
        &challenge.nonce,
        &nonce,
        &registered.worker_id,
        &registered.proof,
    ) {
        anyhow::bail!("the coordinator did not prove the cluster secret");
    }
    info!(worker = %options.name, worker_id = %registered.worker_id, coordinator = %options.coordinator, cores = options.cores, memory = options.memory, "worker registered");

    let (exits_tx, mut exits_rx) = mpsc::unbounded_channel::<(String, String, bool)>();
    let mut draining = false;
    loop {
        tokio::select! {
            () = stopping.cancelled(), if !draining => {
                draining = true;
                for child in children.values_mut() {
                    if let Some(kill) = child.kill.take() {
                        let _ = kill.send(());
                    }
                }
                if children.is_empty() {
                    return Ok(true);
                }
            }
            command = inbound.message() => {
                let Some(command) = command? else {
                    return Ok(true);
                };
                match command.command {
                    Some(worker_command::Command::Launch(launch)) => {
                        let allocation_id = launch.allocation_id.clone();
                        let refusal = if draining {
                            Some("refused: the worker is stopping")
                        } else if children.contains_key(&allocation_id) || !valid_id(&allocation_id) {
                            Some("refused: a duplicate or malformed allocation id")
                        } else {
                            None
                        };
                        if let Some(refusal) = refusal {
                            send(worker_message::Message::Exited(ExecutorExited {
                                allocation_id,
                                reason: refusal.into(),
                                clean: false,
                            }))
                            .await?;
                            continue;
                        }
                        match launch_executor(options, &launch, exits_tx.clone()) {
                            Ok((pid, child)) => {
                                children.insert(allocation_id.clone(), child);
                                send(worker_message::Message::Started(ExecutorStarted {
                                    allocation_id,
                                    pid,
                                }))
                                .await?;
                            }
                            Err(error) => {
                                warn!(%allocation_id, %error, "cannot start an executor");
                                send(worker_message::Message::Exited(ExecutorExited {
                                    allocation_id,
                                    reason: format!("cannot start: {error}"),
                                    clean: false,
                                }))
                                .await?;
                            }
                        }
                    }
                    Some(worker_command::Command::Kill(kill)) => {
                        if let Some(kill) = children
                            .get_mut(&kill.allocation_id)
                            .and_then(|child| child.kill.take())
                        {
                            let _ = kill.send(());
                        }
                    }
                    _ => anyhow::bail!("the coordinator sent an unexpected command"),
                }
            }
            Some((allocation_id, reason, clean)) = exits_rx.recv() => {
                children.remove(&allocation_id);
                info!(%allocation_id, %reason, "executor process ended");
                send(worker_message::Message::Exited(ExecutorExited { allocation_id, reason, clean })).await?;
                if draining && children.is_empty() {
                    return Ok(true);
                }
            }
        }
    }
}

/// Allocation ids name work dirs: letters, digits, `-` and `_` only.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Starts `ember executor` for `launch`; a task waits for it and reports its exit.
fn launch_executor(
    options: &WorkerOptions,
    launch: &LaunchExecutor,
    exits: mpsc::UnboundedSender<(String, String, bool)>,
) -> anyhow::Result<(u32, Child)> {
    let work_dir = options.work_dir.join(&launch.allocation_id);
    std::fs::create_dir_all(&work_dir)?;
    let log = std::fs::File::create(
        options
            .work_dir
            .join(format!("{}.log", launch.allocation_id)),
    )?;
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command
        .args(["executor", "--coordinator", &options.coordinator])
        .args(["--slots", &launch.slots.max(1).to_string()])
        .args(["--memory", &launch.memory.to_string()])
        .args(["--flight-port", "0"])
        .arg("--work-dir")
        .arg(&work_dir)
        .args(&options.executor_args)
        .env("EMBER_EXECUTOR_ALLOCATION_ID", &launch.allocation_id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    die_with_parent(&mut command);
    let mut child = command.spawn()?;
    let pid = child.id().unwrap_or(0);
    info!(allocation_id = %launch.allocation_id, pid, slots = launch.slots, memory = launch.memory, "executor started");
    let (kill, killed) = oneshot::channel::<()>();
    let allocation_id = launch.allocation_id.clone();
    let stop_wait = options.decommission_grace + STOP_SLACK;
    let supervisor = tokio::spawn(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            _ = killed => {
                // SIGTERM first: the executor decommissions, which ends at once when the
                // coordinator has written it off, and removes its files; SIGKILL if it hangs.
                if let Some(pid) = child.id() {
                    // SAFETY: sending a signal to our own child, which has not been reaped.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                }
                match tokio::time::timeout(stop_wait, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        let _ = child.start_kill();
                        child.wait().await
                    }
                }
            }
        };
        let (reason, clean) = match status {
            Ok(status) => (status.to_string(), status.success()),
            Err(error) => (error.to_string(), false),
        };
        let _ = exits.send((allocation_id, reason, clean));
    });
    Ok((
        pid,
        Child {
            kill: Some(kill),
            supervisor,
        },
    ))
}

/// On Linux the kernel kills the executor when the worker dies, however it dies.
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut tokio::process::Command) {
    // SAFETY: `prctl` is async-signal-safe, as a `pre_exec` closure must be; it only sets the
    // signal the child receives when its parent thread exits.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut tokio::process::Command) {}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
