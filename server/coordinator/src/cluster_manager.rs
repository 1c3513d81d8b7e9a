//! The cluster-manager seam: the coordinator asks a [`ClusterManager`] for executors and learns
//! when their processes start and end, as Spark's driver asks its cluster manager. Every
//! backend shares one executor lifecycle, which `system.executors` shows:
//!
//! ```text
//!  requested ──► starting ──► alive (registered) ──► decommissioning ──► gone
//!      │  the backend        │  the executor proved      │  no new tasks      │ process ended,
//!      │  accepted it        │  the secret, named its     │                    │ released, or
//!      └─────────────────────┴─ allocation id ───────────┴────────────────────┴─ lost
//! ```
//! The [`Allocator`] owns the allocations: it asks the backend for as many executors as the
//! target (`cluster_manager.executors`), matches registrations to allocations by the id the
//! backend gave the executor (`executor.allocation_id`), tells the scheduler at once when an
//! allocation's process ends, and asks for a replacement. Backends (`local`, in process;
//! `standalone` workers; Kubernetes) live outside the coordinator and implement the trait; with
//! none (`static`), executors are started by hand and register themselves.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::error::Result;
use crate::scheduler::{ExecutorStatus, SchedulerHandle};

/// What an executor is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorRequest {
    /// The executor registers with it (`executor.allocation_id`).
    pub allocation_id: String,
    /// Task slots (0: the backend decides, one per core it gives).
    pub slots: usize,
    /// Bytes of memory (0: the backend decides).
    pub memory: u64,
}

/// What a backend reports about an allocation's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocationEvent {
    /// The process has started (it will register).
    Started {
        /// The allocation.
        allocation_id: String,
    },
    /// The process has ended, or cannot start.
    Exited {
        /// The allocation.
        allocation_id: String,
        /// Exit status or error, for `system.executors` and logs.
        reason: String,
        /// It exited with status 0 (it decommissioned, or stopped when asked): not a failure
        /// that should slow down the next requests.
        clean: bool,
    },
}

/// Where a backend sends [`AllocationEvent`]s.
#[derive(Debug, Clone)]
pub struct AllocationEvents(mpsc::UnboundedSender<AllocationEvent>);

impl AllocationEvents {
    /// Reports an event (nothing happens once the coordinator has stopped).
    pub fn send(&self, event: AllocationEvent) {
        let _ = self.0.send(event);
    }
}

/// A source of executors.
#[async_trait]
pub trait ClusterManager: Send + Sync + Debug {
    /// Its name, as `cluster_manager.kind` says it.
    fn name(&self) -> &'static str;

    /// Starts an executor for `request`; returns once the start is under way. The process
    /// reports through `events` and registers with `request.allocation_id`.
    async fn request(&self, request: ExecutorRequest, events: AllocationEvents) -> Result<()>;

    /// Stops the executor of `allocation_id` (an `Exited` event follows).
    async fn release(&self, allocation_id: &str) -> Result<()>;

    /// Stops every executor it started (the coordinator is stopping).
    async fn shutdown(&self) {}
}

/// Where an allocation is in the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AllocationState {
    Requested,
    Starting,
    Registered,
    /// Being given back (or stopping on a signal): it takes no new tasks and goes once no
    /// running query needs it. It no longer counts towards the target.
    Decommissioning,
    Gone,
}

impl AllocationState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AllocationState::Requested => "requested",
            AllocationState::Starting => "starting",
            AllocationState::Registered => "alive",
            AllocationState::Decommissioning => "decommissioning",
            AllocationState::Gone => "gone",
        }
    }
}

/// One allocation, as `system.executors` lists it until it registers (and after it is gone).
#[derive(Debug, Clone)]
pub(crate) struct Allocation {
    pub(crate) request: ExecutorRequest,
    pub(crate) state: AllocationState,
    pub(crate) since: Instant,
    /// Why it is gone.
    pub(crate) reason: Option<String>,
}

impl Allocation {
    /// Counts towards the target: requested, starting or registered.
    fn counts(&self) -> bool {
        !matches!(
            self.state,
            AllocationState::Gone | AllocationState::Decommissioning
        )
    }
}

/// The allocations, shared with the system tables.
#[derive(Debug, Default)]
pub(crate) struct Allocations(Mutex<BTreeMap<String, Allocation>>);

impl Allocations {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Allocation>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every allocation that is not registered (those that are appear as executors).
    pub(crate) fn unregistered(&self) -> Vec<(String, Allocation)> {
        self.lock()
            .iter()
            .filter(|(_, a)| a.state != AllocationState::Registered)
            .map(|(id, a)| (id.clone(), a.clone()))
            .collect()
    }
}

/// How many executors to keep, and what each gets.
#[derive(Debug, Clone)]
pub struct AllocationPolicy {
    /// Executors the allocator keeps requested or running (the initial number with dynamic
    /// allocation).
    pub executors: usize,
    /// Scaling with the load, if on.
    pub dynamic: Option<DynamicAllocation>,
    /// Slots of each (0: the backend decides).
    pub slots: usize,
    /// Memory of each (0: the backend decides).
    pub memory: u64,
    /// How long an executor may take to register before it is given up.
    pub start_timeout: Duration,
    /// How long a gone allocation stays listed.
    pub gone_retention: Duration,
}

/// Spark's dynamic allocation: more executors while tasks wait, fewer when they idle.
#[derive(Debug, Clone)]
pub struct DynamicAllocation {
    /// Fewest executors kept.
    pub min: usize,
    /// Most executors asked for.
    pub max: usize,
    /// How long tasks wait for a slot before more executors are asked for.
    pub backlog_timeout: Duration,
    /// Between further requests while the backlog lasts (each asks for twice as many).
    pub sustained_backlog_timeout: Duration,
    /// How long an executor may idle before it is given back.
    pub idle_timeout: Duration,
}

impl AllocationPolicy {
    /// From `cluster_manager.*`.
    pub fn from_config(config: &ember_config::EmberConfig) -> Self {
        let c = &config.cluster_manager;
        Self {
            executors: c.executors,
            dynamic: c.dynamic_allocation.then(|| DynamicAllocation {
                min: c.min_executors,
                max: c.max_executors,
                backlog_timeout: Duration::from_millis(c.scheduler_backlog_timeout_ms),
                sustained_backlog_timeout: Duration::from_millis(
                    c.sustained_scheduler_backlog_timeout_ms,
                ),
                idle_timeout: Duration::from_millis(c.executor_idle_timeout_ms),
            }),
            slots: c.executor_slots,
            memory: c.executor_memory,
            start_timeout: Duration::from_millis(c.start_timeout_ms),
            gone_retention: Duration::from_millis(config.coordinator.lost_executor_retention_ms),
        }
    }
}

/// Keeps the policy's executors running through a backend.
pub(crate) struct Allocator {
    manager: Arc<dyn ClusterManager>,
    policy: AllocationPolicy,
    scheduler: SchedulerHandle,
    allocations: Arc<Allocations>,
    events_tx: mpsc::UnboundedSender<AllocationEvent>,
    events_rx: mpsc::UnboundedReceiver<AllocationEvent>,
    next: u64,
    /// Starts that failed (or processes that ended) in a row: each doubles the wait before the
    /// next request, up to [`MAX_BACKOFF`], so a backend that cannot start executors is not
    /// asked four times a second.
    failures: u32,
    backoff_until: Instant,
    /// Requests the cluster manager refused in a row.
    refusals: u32,
    /// How many executors to keep now (the policy's number unless dynamic allocation moves it).
    target: usize,
    /// Since when tasks have waited for a slot, how many executors the next request adds, and
    /// when it is due.
    backlog_since: Option<Instant>,
    ramp: usize,
    next_ramp: Instant,
    /// Since when each allocated executor has run nothing.
    idle_since: std::collections::HashMap<String, Instant>,
    /// Allocations given back on purpose: their exits are no failures.
    releasing: std::collections::HashSet<String>,
}

/// The longest wait between requests after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest wait between requests the cluster manager refused.
const MAX_REFUSAL_BACKOFF: Duration = Duration::from_secs(2);

/// How often the allocator compares what runs with what it wants.
const TICK: Duration = Duration::from_millis(250);

impl Allocator {
    pub(crate) fn new(
        manager: Arc<dyn ClusterManager>,
        policy: AllocationPolicy,
        scheduler: SchedulerHandle,
        allocations: Arc<Allocations>,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Self {
            target: policy_target(&policy),
            manager,
            policy,
            scheduler,
            allocations,
            events_tx,
            events_rx,
            next: 0,
            failures: 0,
            backoff_until: Instant::now(),
            refusals: 0,
            backlog_since: None,
            ramp: 0,
            next_ramp: Instant::now(),
            idle_since: Default::default(),
            releasing: Default::default(),
        }
    }

    /// Runs until `stop` completes, then has the backend stop its executors.
    pub(crate) async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        info!(
            backend = self.manager.name(),
            executors = self.policy.executors,
            "cluster manager allocating executors"
        );
        tokio::pin!(stop);
        let mut ticker = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                () = &mut stop => break,
                Some(event) = self.events_rx.recv() => self.event(event),
                _ = ticker.tick() => self.reconcile().await,
            }
        }
        self.manager.shutdown().await;
    }

    fn event(&mut self, event: AllocationEvent) {
        let mut allocations = self.allocations.lock();
        match event {
            AllocationEvent::Started { allocation_id } => {
                if let Some(a) = allocations.get_mut(&allocation_id)
                    && a.state == AllocationState::Requested
                {
                    a.state = AllocationState::Starting;
                    a.since = Instant::now();
                }
            }
            AllocationEvent::Exited {
                allocation_id,
                reason,
                clean,
            } => {
                if let Some(a) = allocations.get_mut(&allocation_id)
                    && a.state != AllocationState::Gone
                {
                    info!(%allocation_id, %reason, clean, "executor process ended");
                    // A clean exit (a pod deleted and its executor decommissioned before the
                    // allocator saw it decommissioning, say) is no failure.
                    if !self.releasing.remove(&allocation_id) && !clean {
                        self.failures += 1;
                        self.backoff_until = Instant::now() + backoff(self.failures);
                    }
                    a.state = AllocationState::Gone;
                    a.since = Instant::now();
                    a.reason = Some(reason.clone());
                    // Its tasks are recomputed now, not when its heartbeats would have stopped.
                    self.scheduler
                        .allocation_gone(allocation_id, format!("its process ended: {reason}"));
                }
            }
        }
    }

    /// Brings what runs in line with the policy: registrations matched, lost executors and
    /// starts that took too long written off, replacements requested, the gone forgotten.
    async fn reconcile(&mut self) {
        let Ok(registered) = self.scheduler.allocations().await else {
            return;
        };
        // An executor that lost its session registers again as a new incarnation of the same
        // allocation: the allocation is as alive as its liveliest incarnation.
        let mut by_allocation: BTreeMap<String, ExecutorStatus> = BTreeMap::new();
        for (allocation_id, _executor_id, status) in registered {
            let rank = |s: &ExecutorStatus| match s {
                ExecutorStatus::Alive => 2,
                ExecutorStatus::Decommissioning => 1,
                ExecutorStatus::Lost | ExecutorStatus::Gone => 0,
            };
            let entry = by_allocation.entry(allocation_id).or_insert(status);
            if rank(&status) > rank(entry) {
                *entry = status;
            }
        }
        let mut to_release = vec![];
        let wanted = {
            let mut allocations = self.allocations.lock();
            for (allocation_id, status) in &by_allocation {
                let Some(a) = allocations.get_mut(allocation_id) else {
                    continue;
                };
                match (a.state, status) {
                    (
                        AllocationState::Requested | AllocationState::Starting,
                        ExecutorStatus::Alive,
                    ) => {
                        a.state = AllocationState::Registered;
                        a.since = Instant::now();
                        self.failures = 0;
                    }
                    (AllocationState::Decommissioning, ExecutorStatus::Alive) => {
                        // A new incarnation (it lost its session and registered again) of an
                        // executor being given back: decommission it too (idempotent).
                        self.scheduler.decommission(allocation_id.clone());
                    }
                    (
                        AllocationState::Requested
                        | AllocationState::Starting
                        | AllocationState::Registered,
                        ExecutorStatus::Decommissioning,
                    ) => {
                        // Stopping on a signal (its pod deleted, say): replaced at once, and
                        // its exit is no failure.
                        info!(%allocation_id, "executor is decommissioning; replacing it");
                        a.state = AllocationState::Decommissioning;
                        a.since = Instant::now();
                        self.releasing.insert(allocation_id.clone());
                    }
                    (
                        AllocationState::Registered | AllocationState::Decommissioning,
                        ExecutorStatus::Lost | ExecutorStatus::Gone,
                    ) => {
                        // Lost (heartbeats stopped), or decommissioned: make sure its process
                        // goes too.
                        let reason = if a.state == AllocationState::Decommissioning {
                            "decommissioned"
                        } else {
                            "lost"
                        };
                        a.state = AllocationState::Gone;
                        a.since = Instant::now();
                        a.reason = Some(reason.into());
                        to_release.push(allocation_id.clone());
                    }
                    _ => {}
                }
            }
            for (allocation_id, a) in allocations.iter_mut() {
                let pending = matches!(
                    a.state,
                    AllocationState::Requested | AllocationState::Starting
                );
                if pending && a.since.elapsed() > self.policy.start_timeout {
                    warn!(%allocation_id, "executor did not register in time; giving it up");
                    a.state = AllocationState::Gone;
                    a.since = Instant::now();
                    a.reason = Some("did not register in time".into());
                    to_release.push(allocation_id.clone());
                }
            }
            let retention = self.policy.gone_retention;
            allocations
                .retain(|_, a| a.state != AllocationState::Gone || a.since.elapsed() < retention);
            let live = allocations.values().filter(|a| a.counts()).count();
            self.target.saturating_sub(live)
        };
        if self.policy.dynamic.is_some() {
            self.scale().await;
        }
        for allocation_id in to_release {
            self.releasing.insert(allocation_id.clone());
            if let Err(error) = self.manager.release(&allocation_id).await {
                warn!(%allocation_id, %error, "cannot release an executor");
            }
        }
        if Instant::now() < self.backoff_until {
            return;
        }
        for _ in 0..wanted {
            self.request().await;
        }
    }

    /// Dynamic allocation: raises the target while tasks wait for slots (by 1, 2, 4, ... per
    /// interval), and lowers it by the executors idle past the timeout, which are decommissioned:
    /// one that holds no shuffle output a running query needs goes at once, one that does takes
    /// no new tasks and goes when its readers have finished.
    async fn scale(&mut self) {
        let Some(dynamic) = self.policy.dynamic.clone() else {
            return;
        };
        let Ok(load) = self.scheduler.load().await else {
            return;
        };
        let now = Instant::now();
        let live = self
            .allocations
            .lock()
            .values()
            .filter(|a| a.counts())
            .count();
        if load.pending_tasks > 0 {
            let since = *self.backlog_since.get_or_insert(now);
            let due = if self.ramp == 0 {
                now.duration_since(since) >= dynamic.backlog_timeout
            } else {
                now >= self.next_ramp
            };
            if due {
                self.ramp = if self.ramp == 0 { 1 } else { self.ramp * 2 };
                self.next_ramp = now + dynamic.sustained_backlog_timeout;
                // No more than the waiting tasks can use.
                let slots = load
                    .executors
                    .iter()
                    .map(|e| e.slots)
                    .max()
                    .unwrap_or(self.policy.slots)
                    .max(1);
                let useful = load.pending_tasks.div_ceil(slots);
                let target = (live + self.ramp.min(useful)).min(dynamic.max);
                if target > self.target {
                    info!(
                        from = self.target,
                        to = target,
                        pending_tasks = load.pending_tasks,
                        "tasks are waiting: asking for more executors"
                    );
                    self.target = target;
                }
            }
        } else {
            self.backlog_since = None;
            self.ramp = 0;
        }
        let mut idle: Vec<(bool, Instant, String)> = vec![];
        // Only executors the allocator holds as registered may be given back (not one already
        // decommissioning, nor one of an allocation it wrote off).
        let registered: std::collections::HashSet<String> = self
            .allocations
            .lock()
            .iter()
            .filter(|(_, a)| a.state == AllocationState::Registered)
            .map(|(id, _)| id.clone())
            .collect();
        for executor in load
            .executors
            .iter()
            .filter(|e| registered.contains(&e.allocation_id))
        {
            if executor.running > 0 {
                self.idle_since.remove(&executor.allocation_id);
                continue;
            }
            let since = *self
                .idle_since
                .entry(executor.allocation_id.clone())
                .or_insert(now);
            if now.duration_since(since) >= dynamic.idle_timeout {
                // Those without outputs a running query still reads go first.
                idle.push((
                    executor.holds_outputs,
                    since,
                    executor.allocation_id.clone(),
                ));
            }
        }
        let present: std::collections::HashSet<&str> = load
            .executors
            .iter()
            .map(|e| e.allocation_id.as_str())
            .collect();
        self.idle_since
            .retain(|id, _| present.contains(id.as_str()));
        idle.sort();
        for (holds_outputs, _, allocation_id) in idle {
            if self.target <= dynamic.min || load.pending_tasks > 0 {
                break;
            }
            self.target -= 1;
            info!(%allocation_id, to = self.target, holds_outputs, "executor idle: decommissioning it");
            if let Some(a) = self.allocations.lock().get_mut(&allocation_id) {
                a.state = AllocationState::Decommissioning;
                a.since = now;
                a.reason = Some("idle: given back".into());
            }
            self.idle_since.remove(&allocation_id);
            self.releasing.insert(allocation_id.clone());
            // The scheduler tells it to stop once drained; the allocation is released then.
            self.scheduler.decommission(allocation_id);
        }
    }

    async fn request(&mut self) {
        self.next += 1;
        let request = ExecutorRequest {
            allocation_id: format!(
                "{}-{}-{}",
                self.manager.name(),
                &crate::catalog::to_hex(&ember_protocol::credentials::random_id(4)),
                self.next
            ),
            slots: self.policy.slots,
            memory: self.policy.memory,
        };
        let id = request.allocation_id.clone();
        self.allocations.lock().insert(
            id.clone(),
            Allocation {
                request: request.clone(),
                state: AllocationState::Requested,
                since: Instant::now(),
                reason: None,
            },
        );
        let events = AllocationEvents(self.events_tx.clone());
        if let Err(error) = self.manager.request(request, events).await {
            // Said once per run of refusals (no worker has room, say), not at every retry.
            if self.refusals == 0 {
                warn!(allocation_id = %id, %error, "the cluster manager could not start an executor; retrying");
            }
            self.refusals += 1;
            // Nothing was started: nothing to list.
            self.allocations.lock().remove(&id);
            // Capacity may come any moment (a worker connecting): retry within a second or two,
            // where failed processes back off up to MAX_BACKOFF.
            self.backoff_until = Instant::now() + backoff(self.refusals).min(MAX_REFUSAL_BACKOFF);
        } else {
            if self.refusals > 0 {
                info!(
                    refusals = self.refusals,
                    "the cluster manager starts executors again"
                );
            }
            self.refusals = 0;
        }
    }
}

/// The executors to start with.
fn policy_target(policy: &AllocationPolicy) -> usize {
    match &policy.dynamic {
        Some(dynamic) => policy
            .executors
            .clamp(dynamic.min, dynamic.max.max(dynamic.min)),
        None => policy.executors,
    }
}

/// The wait before the next request after `failures` failures in a row.
fn backoff(failures: u32) -> Duration {
    (TICK * 2u32.saturating_pow(failures.min(16))).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{Scheduler, SchedulerConfig};

    /// Records requests and releases; every start succeeds.
    #[derive(Debug, Default)]
    struct FakeManager {
        requests: Mutex<Vec<(ExecutorRequest, AllocationEvents)>>,
        released: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl ClusterManager for FakeManager {
        fn name(&self) -> &'static str {
            "fake"
        }

        async fn request(&self, request: ExecutorRequest, events: AllocationEvents) -> Result<()> {
            events.send(AllocationEvent::Started {
                allocation_id: request.allocation_id.clone(),
            });
            self.requests.lock().unwrap().push((request, events));
            Ok(())
        }

        async fn release(&self, allocation_id: &str) -> Result<()> {
            self.released
                .lock()
                .unwrap()
                .push(allocation_id.to_string());
            Ok(())
        }
    }

    #[tokio::test]
    async fn allocations_are_kept_at_the_target_and_replaced_when_they_end_or_stall() {
        let config = ember_config::EmberConfig::defaults();
        let (scheduler, handle) =
            Scheduler::new(SchedulerConfig::from_config(&config), Default::default());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(scheduler.run(crate::stopped(stop_rx.clone())));
        let manager = Arc::new(FakeManager::default());
        let allocations = Arc::new(Allocations::default());
        let policy = AllocationPolicy {
            executors: 2,
            dynamic: None,
            slots: 3,
            memory: 1 << 30,
            start_timeout: Duration::from_millis(1500),
            gone_retention: Duration::from_secs(60),
        };
        let allocator = Allocator::new(
            Arc::clone(&manager) as Arc<dyn ClusterManager>,
            policy,
            handle,
            Arc::clone(&allocations),
        );
        let task = tokio::spawn(allocator.run(crate::stopped(stop_rx)));
        let states = || {
            let mut states: Vec<&'static str> = allocations
                .unregistered()
                .iter()
                .map(|(_, a)| a.state.as_str())
                .collect();
            states.sort();
            states
        };
        let wait_for = |count: usize| {
            let manager = Arc::clone(&manager);
            async move {
                for _ in 0..100 {
                    if manager.requests.lock().unwrap().len() >= count {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!("fewer than {count} requests");
            }
        };
        // Two requests with the policy's size, both starting (nothing registers here).
        wait_for(2).await;
        {
            let requests = manager.requests.lock().unwrap();
            assert!(
                requests
                    .iter()
                    .all(|(r, _)| r.slots == 3 && r.memory == 1 << 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(states(), ["starting", "starting"]);
        // One process ends: it is gone, and replaced (after a short backoff).
        let (first, events) = {
            let requests = manager.requests.lock().unwrap();
            (requests[0].0.allocation_id.clone(), requests[0].1.clone())
        };
        events.send(AllocationEvent::Exited {
            allocation_id: first.clone(),
            reason: "exit status 137".into(),
            clean: false,
        });
        wait_for(3).await;
        assert!(states().contains(&"gone"));
        assert_eq!(states().iter().filter(|s| **s == "starting").count(), 2);
        // Starts that never register are given up (and released) after the timeout.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!manager.released.lock().unwrap().is_empty());
        assert!(manager.requests.lock().unwrap().len() >= 4);
        let _ = stop_tx.send(true);
        task.await.expect("the allocator stops");
    }
}
