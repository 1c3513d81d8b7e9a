//! Answers waiting for their tickets. A GetFlightInfo starts its statement and leaves the answer
//! here; the FlightInfo's tickets name it:
//!
//! - a **held** answer (computed on the coordinator, metadata, or a distributed query relayed
//!   in proxy mode) is one stream, read by the first DoGet of its ticket;
//! - a **live** answer is a distributed query whose result stage nobody reads yet: one endpoint
//!   per partition, on the executor running its task, with the coordinator as the second
//!   location. Its driver follows the scheduler's reports (where each partition runs, when it
//!   commits, when a client has read it to its end) and releases the query when every partition
//!   has committed and been read, when it fails, when it is cancelled, or when nobody fetched it
//!   in time. A partition is read exactly once: by the client from its executor, or through the
//!   coordinator (a partition not yet launched when the FlightInfo went out, or one whose
//!   executor the client could not reach: clients such as ADBC try the next location then).
//!
//! Unlike the Postgres relay, which holds a partition back until its task commits and re-reads a
//! lost one from its new attempt, a client reading straight from an executor sees a task lost
//! mid-stream as an error: its rows went out as they were computed. A task lost before the
//! client opened its stream is re-run and served through the coordinator.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_flight::error::FlightError;
use arrow_flight::sql::{ProstMessageExt, TicketStatementQuery};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use datafusion::execution::SendableRecordBatchStream;
use ember_planner::ids::QueryId;
use ember_planner::shuffle::MapOutputLocation;
use ember_protocol::credentials::{
    HeldResult, ResultPartition, SigningKey, TicketClaims, TicketTarget, now_ms, random_id,
    schema_to_bytes,
};
use ember_protocol::flight_data::{FlightDataStream, encode};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tonic::Status;

use crate::status::{datafusion_status, status};
use ember_coordinator::{ResultEvent, ResultHandle, ResultPartitions};

/// How long a FlightInfo waits for the remaining result tasks once the first has launched;
/// partitions launched later are served through the coordinator.
const LAUNCH_GRACE: Duration = Duration::from_millis(500);

/// How long a live answer stays after its last partition committed when not every partition
/// has been read to its end. A partition small enough to fit the live channel commits before
/// anyone reads it, and releasing the query drops such unread channels on the executors, so
/// this bounds the wait for a client to open (or finish) the last ones. Executors report each
/// partition a client has read completely, so a client that reads everything releases the
/// query at once.
const RELEASE_LINGER: Duration = Duration::from_secs(30);

/// A timer's setting while it is off (far enough away never to fire).
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// How often the coordinator asks for a result partition to be re-run because it could not open
/// its stream, before giving up.
const MAX_REOPENS: usize = 3;

/// The Flight location telling a client to fetch through the connection it already has (here:
/// the coordinator, which can re-run a lost partition).
const REUSE_CONNECTION: &str = "arrow-flight-reuse-connection://?";

/// A held answer and whom it belongs to.
struct Held {
    stream: SendableRecordBatchStream,
    deadline: Instant,
}

/// What the driver of a live answer knows.
#[derive(Debug, Clone, Default)]
struct LiveState {
    /// The latest launched attempt of each partition.
    launched: BTreeMap<usize, MapOutputLocation>,
    num_committed: usize,
    /// Set when the query failed or ended before every partition committed.
    ended: Option<String>,
}

struct Live {
    user: String,
    /// Its partitions: opened here for clients that fetch through the coordinator.
    partitions: Arc<ResultPartitions>,
    state_rx: watch::Receiver<LiveState>,
    cancel: Notify,
    /// Partitions (and attempts) read to their end through the coordinator.
    served_tx: mpsc::UnboundedSender<(usize, u32)>,
}

/// The answers of every Flight SQL client, by ticket.
pub(crate) struct ResultStore {
    key: SigningKey,
    /// How clients dial executors for result partitions: `grpc+tls` when the cluster's ports
    /// speak TLS.
    executor_scheme: &'static str,
    requires_token: bool,
    fetch_timeout: Duration,
    // std Mutexes: lookups, inserts and removals only, never across an await.
    held: Mutex<HashMap<Vec<u8>, Held>>,
    live: Mutex<HashMap<QueryId, Arc<Live>>>,
}

impl ResultStore {
    pub(crate) fn new(
        key: SigningKey,
        requires_token: bool,
        fetch_timeout: Duration,
        executor_scheme: &'static str,
    ) -> Self {
        Self {
            key,
            executor_scheme,
            requires_token,
            fetch_timeout,
            held: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
        }
    }

    fn claims(&self, user: &str, target: TicketTarget) -> TicketClaims {
        TicketClaims {
            user: user.to_string(),
            expires_at_ms: now_ms() + self.fetch_timeout.as_millis() as u64,
            requires_token: self.requires_token,
            target: Some(target),
        }
    }

    fn ticket(&self, claims: &TicketClaims) -> Ticket {
        let handle = self.key.seal_ticket(claims);
        let query = TicketStatementQuery {
            statement_handle: handle.into(),
        };
        Ticket::new(query.as_any().encode_to_vec())
    }

    /// Keeps `stream` for one DoGet; the FlightInfo has one endpoint, on the coordinator.
    pub(crate) fn hold(
        &self,
        user: &str,
        stream: SendableRecordBatchStream,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let schema = stream.schema();
        let id = random_id(16);
        let ticket =
            self.ticket(&self.claims(user, TicketTarget::Held(HeldResult { id: id.clone() })));
        self.lock_held().insert(
            id,
            Held {
                stream,
                deadline: Instant::now() + self.fetch_timeout,
            },
        );
        flight_info(
            &schema,
            descriptor,
            vec![FlightEndpoint::new().with_ticket(ticket)],
            -1,
        )
    }

    /// Follows a distributed query's result stage and describes its partitions: endpoints on
    /// the executors running them, or on the coordinator for those not launched yet.
    pub(crate) async fn live(
        self: &Arc<Self>,
        user: &str,
        handle: ResultHandle,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let partitions = Arc::clone(handle.partitions());
        let schema = partitions.schema();
        let query_id = partitions.query_id().clone();
        let stage_id = partitions.stage_id();
        let num_partitions = partitions.num_partitions();
        let (state_tx, mut state_rx) = watch::channel(LiveState::default());
        let (served_tx, served_rx) = mpsc::unbounded_channel();
        let live = Arc::new(Live {
            user: user.to_string(),
            partitions,
            state_rx: state_rx.clone(),
            cancel: Notify::new(),
            served_tx,
        });
        self.lock_live().insert(query_id.clone(), Arc::clone(&live));
        tokio::spawn(drive(
            Arc::clone(self),
            Arc::clone(&live),
            handle,
            served_rx,
            state_tx,
        ));
        // Wait for the first result task (the stages before it have run by then), then a
        // little for its siblings, which the scheduler launches together when slots allow.
        let first = state_rx
            .wait_for(|s| s.ended.is_some() || !s.launched.is_empty() || num_partitions == 0)
            .await
            .map(|s| s.clone());
        let state = first.map_err(|_| Status::internal("the result driver stopped"))?;
        if let Some(error) = state.ended.filter(|_| state.launched.is_empty()) {
            return Err(Status::internal(error));
        }
        let _ = tokio::time::timeout(
            LAUNCH_GRACE,
            state_rx.wait_for(|s| s.ended.is_some() || s.launched.len() == num_partitions),
        )
        .await;
        let state = state_rx.borrow().clone();
        let schema_bytes = schema_to_bytes(&schema)
            .map_err(|e| Status::internal(format!("cannot encode the result schema: {e}")))?;
        let mut endpoints = Vec::with_capacity(num_partitions);
        for partition in 0..num_partitions {
            let location = state.launched.get(&partition);
            let target = ResultPartition {
                query_id: query_id.to_string(),
                stage_id: stage_id.0,
                partition: partition as u32,
                attempt: location.map(|l| l.attempt),
                schema: schema_bytes.clone(),
            };
            let ticket = self.ticket(&self.claims(user, TicketTarget::Partition(target)));
            let mut endpoint = FlightEndpoint::new().with_ticket(ticket);
            if let Some(location) = location {
                endpoint = endpoint
                    .with_location(format!(
                        "{}://{}",
                        self.executor_scheme, location.flight_address
                    ))
                    .with_location(REUSE_CONNECTION);
            }
            endpoints.push(endpoint);
        }
        flight_info(&schema, descriptor, endpoints, -1)
    }

    /// Streams what a ticket names to the coordinator's caller `user`.
    pub(crate) async fn fetch(
        &self,
        user: &str,
        handle: &[u8],
    ) -> Result<FlightDataStream, Status> {
        let claims = self
            .key
            .open_ticket(handle)
            .map_err(|e| ember_protocol::credentials::credential_status(&e))?;
        if claims.user != user {
            return Err(Status::permission_denied(
                "this ticket belongs to another user",
            ));
        }
        match claims.target {
            Some(TicketTarget::Held(held)) => {
                let held = self.lock_held().remove(&held.id).ok_or_else(|| {
                    Status::not_found("this result has been fetched already, cancelled or dropped")
                })?;
                let schema = held.stream.schema();
                let batches = held
                    .stream
                    .map_err(|e| FlightError::Tonic(Box::new(datafusion_status(e))));
                Ok(encode(schema, batches))
            }
            Some(TicketTarget::Partition(partition)) => self.fetch_partition(partition).await,
            None => Err(Status::invalid_argument("malformed ticket")),
        }
    }

    /// Relays one live partition: from the attempt the ticket names, or from whichever the
    /// scheduler launches.
    async fn fetch_partition(
        &self,
        partition: ResultPartition,
    ) -> Result<FlightDataStream, Status> {
        let query_id = QueryId::parse(&partition.query_id)
            .ok_or_else(|| Status::invalid_argument("malformed query id in ticket"))?;
        let live = self
            .lock_live()
            .get(&query_id)
            .cloned()
            .ok_or_else(|| Status::not_found("this result's query has ended"))?;
        let index = partition.partition as usize;
        let mut state_rx = live.state_rx.clone();
        // The latest attempt: a client falls back to the coordinator when it cannot reach the
        // executor its ticket names; that attempt is then re-run elsewhere (once its loss is
        // known, or at our request when it had already finished there).
        let mut tries = 0;
        let (stream, attempt) = loop {
            let state = state_rx
                .wait_for(|s| s.ended.is_some() || s.launched.contains_key(&index))
                .await
                .map_err(|_| Status::not_found("this result's query has ended"))?
                .clone();
            let Some(location) = state.launched.get(&index).cloned() else {
                return Err(Status::aborted(state.ended.unwrap_or_default()));
            };
            let opened = live.partitions.open(index, &location).await;
            match opened {
                Ok(stream) => break (stream, location.attempt),
                Err(error) if tries < MAX_REOPENS => {
                    tracing::debug!(%query_id, partition = index, attempt = location.attempt, %error, "cannot open a result partition; asking for a re-run");
                    tries += 1;
                    live.partitions.retry(index, location.attempt);
                    let replaced = state_rx.wait_for(|s| {
                        s.ended.is_some()
                            || s.launched.get(&index).map(|l| l.attempt) != Some(location.attempt)
                    });
                    if tokio::time::timeout(self.fetch_timeout, replaced)
                        .await
                        .is_err()
                    {
                        return Err(status(&error));
                    }
                }
                Err(error) => return Err(status(&error)),
            }
        };
        // Once read to its end without an error, the partition counts as served.
        let failed = Arc::new(AtomicBool::new(false));
        let (seen_failure, served_tx) = (Arc::clone(&failed), live.served_tx.clone());
        let end = futures::stream::once(async move {
            if !seen_failure.load(Ordering::Relaxed) {
                let _ = served_tx.send((index, attempt));
            }
        })
        .filter_map(|()| async { None });
        let batches = stream
            .inspect_err(move |_| failed.store(true, Ordering::Relaxed))
            .map_err(|e| FlightError::Tonic(Box::new(datafusion_status(e))))
            .chain(end);
        Ok(encode(live.partitions.schema(), batches))
    }

    /// Cancels what a ticket names (`CancelFlightInfo`); false if it is gone already.
    pub(crate) fn cancel(&self, user: &str, ticket: &Ticket) -> bool {
        let Some(handle) = ember_protocol::credentials::client_ticket_handle(ticket) else {
            return false;
        };
        let Ok(claims) = self.key.open_ticket(&handle) else {
            return false;
        };
        if claims.user != user {
            return false;
        }
        match claims.target {
            Some(TicketTarget::Held(held)) => self.lock_held().remove(&held.id).is_some(),
            Some(TicketTarget::Partition(partition)) => {
                let live = QueryId::parse(&partition.query_id)
                    .and_then(|id| self.lock_live().get(&id).cloned());
                match live {
                    Some(live) if live.user == user => {
                        live.cancel.notify_one();
                        true
                    }
                    _ => false,
                }
            }
            None => false,
        }
    }

    /// Drops held answers nobody fetched in time (their queries are released with them).
    pub(crate) fn drop_expired(&self) {
        let now = Instant::now();
        self.lock_held().retain(|_, held| held.deadline > now);
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<QueryId, Arc<Live>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Follows a live answer's query until it is done, then releases it.
async fn drive(
    store: Arc<ResultStore>,
    live: Arc<Live>,
    mut handle: ResultHandle,
    mut served_rx: mpsc::UnboundedReceiver<(usize, u32)>,
    state_tx: watch::Sender<LiveState>,
) {
    let num_partitions = live.partitions.num_partitions();
    // Set at the first launch: until then the client waits in GetFlightInfo.
    let deadline = tokio::time::sleep(NEVER);
    tokio::pin!(deadline);
    let linger = tokio::time::sleep(NEVER);
    tokio::pin!(linger);
    let mut committed = BTreeSet::new();
    // Partition attempts read to their end, by the client on an executor or through us.
    let mut served = BTreeSet::new();
    let is_current = |state_tx: &watch::Sender<LiveState>, partition: usize, attempt: u32| {
        state_tx
            .borrow()
            .launched
            .get(&partition)
            .map(|l| l.attempt)
            == Some(attempt)
    };
    let ended = loop {
        let all_committed = committed.len() == num_partitions;
        let all_served = (0..num_partitions).all(|p| {
            let attempt = state_tx.borrow().launched.get(&p).map(|l| l.attempt);
            attempt.is_some_and(|a| served.contains(&(p, a)))
        });
        if all_committed && all_served {
            break None;
        }
        tokio::select! {
            event = handle.next_event() => match event {
                Some(ResultEvent::Launched { partition, location }) => {
                    // The client's wait for its FlightInfo ends with the first launch (a query
                    // may queue behind others first): the time to fetch counts from there.
                    if state_tx.borrow().launched.is_empty() {
                        deadline.as_mut().reset(Instant::now() + store.fetch_timeout);
                    }
                    // A partition run again (its executor was lost before the client read it)
                    // is complete only once the new attempt commits, and is being fetched now.
                    if committed.remove(&partition) {
                        state_tx.send_modify(|s| s.num_committed = committed.len());
                        linger.as_mut().reset(Instant::now() + NEVER);
                        deadline.as_mut().reset(Instant::now() + store.fetch_timeout);
                    }
                    state_tx.send_modify(|s| { s.launched.insert(partition, location); });
                }
                Some(ResultEvent::Committed { partition, attempt }) => {
                    if is_current(&state_tx, partition, attempt) {
                        committed.insert(partition);
                        state_tx.send_modify(|s| s.num_committed = committed.len());
                        if committed.len() == num_partitions {
                            let wait = RELEASE_LINGER.min(store.fetch_timeout);
                            linger.as_mut().reset(Instant::now() + wait);
                        }
                    }
                }
                Some(ResultEvent::Served { partition, attempt }) => {
                    served.insert((partition, attempt));
                }
                Some(ResultEvent::Failed(error)) => break Some(error.to_string()),
                None => break Some("the scheduler stopped before the query finished".to_string()),
            },
            Some(read) = served_rx.recv() => {
                served.insert(read);
            }
            () = live.cancel.notified() => break Some("the query was cancelled".to_string()),
            // Every partition is complete; some were not read to their end in time.
            () = &mut linger => break None,
            () = &mut deadline, if !all_committed => {
                break Some("nobody fetched the result in time".to_string());
            }
        }
    };
    let query_id = live.partitions.query_id();
    if let Some(reason) = &ended {
        tracing::debug!(%query_id, %reason, "flight sql result ended early");
        state_tx.send_modify(|s| s.ended = Some(reason.clone()));
    }
    // Readers already streaming keep their `Live`; new tickets for it are refused from now on.
    live.partitions.release();
    store.lock_live().remove(query_id);
}

/// A FlightInfo with `schema` (the exact schema every DoGet of its endpoints announces).
pub(crate) fn flight_info(
    schema: &datafusion::arrow::datatypes::Schema,
    descriptor: FlightDescriptor,
    endpoints: Vec<FlightEndpoint>,
    total_records: i64,
) -> Result<FlightInfo, Status> {
    let mut info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("cannot encode the result schema: {e}")))?
        .with_descriptor(descriptor)
        .with_total_records(total_records)
        .with_ordered(endpoints.len() <= 1);
    for endpoint in endpoints {
        info = info.with_endpoint(endpoint);
    }
    Ok(info)
}

/// The signed handle inside a Flight SQL statement ticket.
pub(crate) fn ticket_handle(ticket: &TicketStatementQuery) -> Vec<u8> {
    ticket.statement_handle.to_vec()
}
