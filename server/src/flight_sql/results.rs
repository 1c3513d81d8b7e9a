//! Answers waiting for their tickets. A GetFlightInfo starts its statement and leaves the answer
//! here; the FlightInfo's tickets name it:
//!
//! - a **held** answer (computed on the coordinator, metadata, or a distributed query relayed
//!   in proxy mode) is one stream, read by the first DoGet of its ticket;
//! - a **live** answer is a distributed query whose result stage nobody reads yet: one endpoint
//!   per partition, on the executor running its task. Its driver follows the scheduler's
//!   reports (where each partition runs, when it commits) and releases the query when every
//!   partition has committed, when it fails, when it is cancelled, or when nobody fetched it in
//!   time. A partition is read exactly once: by the client from its executor, or through the
//!   coordinator (a partition not yet launched when the FlightInfo went out).
//!
//! Unlike the Postgres relay, which holds a partition back until its task commits and re-reads a
//! lost one from its new attempt, a client reading straight from an executor sees a lost task as
//! an error: its rows went out as they were computed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_flight::error::FlightError;
use arrow_flight::sql::{ProstMessageExt, TicketStatementQuery};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use ember_executor::client_auth::{
    self, HeldResult, ResultPartition, SigningKey, TicketClaims, TicketTarget, now_ms, random_id,
};
use ember_executor::client_results::{FlightDataStream, encode};
use ember_planner::ids::{QueryId, StageId};
use ember_planner::shuffle::{MapOutputLocation, ShuffleBlock};
use futures::TryStreamExt;
use prost::Message;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tonic::Status;

use super::status::{datafusion_status, status};
use crate::engine::{DistributedQuery, QueryEngine};
use crate::scheduler::{Event, ResultEvent};

/// How long a FlightInfo waits for the remaining result tasks once the first has launched;
/// partitions launched later are served through the coordinator.
const LAUNCH_GRACE: Duration = Duration::from_millis(500);

/// How long a live answer stays after its last partition committed. A partition small enough
/// to fit the live channel commits before anyone reads it, and releasing the query drops such
/// unread channels on the executors; the coordinator cannot see the client open them there.
/// Large partitions commit only once read (back-pressure), so this bounds the wait for a client
/// to open the small ones.
const RELEASE_LINGER: Duration = Duration::from_secs(30);

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
    query_id: QueryId,
    stage_id: StageId,
    num_partitions: usize,
    schema: SchemaRef,
    state_rx: watch::Receiver<LiveState>,
    cancel: Notify,
}

/// The answers of every Flight SQL client, by ticket.
pub(crate) struct ResultStore {
    key: SigningKey,
    requires_token: bool,
    fetch_timeout: Duration,
    // std Mutexes: lookups, inserts and removals only, never across an await.
    held: Mutex<HashMap<Vec<u8>, Held>>,
    live: Mutex<HashMap<QueryId, Arc<Live>>>,
}

impl ResultStore {
    pub(crate) fn new(key: SigningKey, requires_token: bool, fetch_timeout: Duration) -> Self {
        Self {
            key,
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
        engine: &Arc<QueryEngine>,
        user: &str,
        query: DistributedQuery,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let DistributedQuery {
            schema,
            query_id,
            stage_id,
            num_partitions,
            events_rx,
        } = query;
        let (state_tx, mut state_rx) = watch::channel(LiveState::default());
        let live = Arc::new(Live {
            user: user.to_string(),
            query_id: query_id.clone(),
            stage_id,
            num_partitions,
            schema: Arc::clone(&schema),
            state_rx: state_rx.clone(),
            cancel: Notify::new(),
        });
        self.lock_live().insert(query_id.clone(), Arc::clone(&live));
        tokio::spawn(drive(
            Arc::clone(self),
            Arc::clone(engine),
            Arc::clone(&live),
            events_rx,
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
        let schema_bytes = client_auth::schema_to_bytes(&schema)
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
                endpoint =
                    endpoint.with_location(format!("grpc+tcp://{}", location.flight_address));
            }
            endpoints.push(endpoint);
        }
        flight_info(&schema, descriptor, endpoints, -1)
    }

    /// Streams what a ticket names to the coordinator's caller `user`.
    pub(crate) async fn fetch(
        &self,
        engine: &QueryEngine,
        user: &str,
        handle: &[u8],
    ) -> Result<FlightDataStream, Status> {
        let claims = self
            .key
            .open_ticket(handle)
            .map_err(|e| ember_executor::client_results::credential_status(&e))?;
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
            Some(TicketTarget::Partition(partition)) => {
                self.fetch_partition(engine, partition).await
            }
            None => Err(Status::invalid_argument("malformed ticket")),
        }
    }

    /// Relays one live partition: from the attempt the ticket names, or from whichever the
    /// scheduler launches.
    async fn fetch_partition(
        &self,
        engine: &QueryEngine,
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
        let state = state_rx
            .wait_for(|s| s.ended.is_some() || s.launched.contains_key(&index))
            .await
            .map_err(|_| Status::not_found("this result's query has ended"))?
            .clone();
        let Some(location) = state.launched.get(&index).cloned() else {
            return Err(Status::aborted(state.ended.unwrap_or_default()));
        };
        let location = match partition.attempt {
            Some(attempt) if attempt != location.attempt => MapOutputLocation {
                attempt,
                ..location
            },
            _ => location,
        };
        let block = ShuffleBlock {
            query_id,
            stage_id: live.stage_id,
            map_partition: partition.partition,
            attempt: location.attempt,
            output_partition: 0,
        };
        let stream = engine
            .fetcher()
            .fetch_live(&location, block, Arc::clone(&live.schema))
            .await
            .map_err(|e| status(&crate::error::Error::from(e)))?;
        let batches = stream.map_err(|e| FlightError::Tonic(Box::new(datafusion_status(e))));
        Ok(encode(Arc::clone(&live.schema), batches))
    }

    /// Cancels what a ticket names (`CancelFlightInfo`); false if it is gone already.
    pub(crate) fn cancel(&self, user: &str, ticket: &Ticket) -> bool {
        let Some(handle) = ember_executor::client_results::client_ticket_handle(ticket) else {
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
    engine: Arc<QueryEngine>,
    live: Arc<Live>,
    mut events_rx: tokio::sync::mpsc::UnboundedReceiver<ResultEvent>,
    state_tx: watch::Sender<LiveState>,
) {
    let deadline = tokio::time::sleep(store.fetch_timeout);
    tokio::pin!(deadline);
    let mut committed = std::collections::BTreeSet::new();
    let ended = loop {
        if committed.len() == live.num_partitions {
            break None;
        }
        tokio::select! {
            event = events_rx.recv() => match event {
                Some(ResultEvent::Launched { partition, location }) => {
                    state_tx.send_modify(|s| { s.launched.insert(partition, location); });
                }
                Some(ResultEvent::Committed { partition, attempt }) => {
                    let current = state_tx.borrow().launched.get(&partition).map(|l| l.attempt);
                    if current == Some(attempt) {
                        committed.insert(partition);
                        state_tx.send_modify(|s| s.num_committed = committed.len());
                    }
                }
                Some(ResultEvent::Failed(error)) => break Some(error.to_string()),
                None => break Some("the scheduler stopped before the query finished".to_string()),
            },
            () = live.cancel.notified() => break Some("the query was cancelled".to_string()),
            () = &mut deadline => break Some("nobody fetched the result in time".to_string()),
        }
    };
    match &ended {
        Some(reason) => {
            tracing::debug!(query_id = %live.query_id, %reason, "flight sql result ended early");
            state_tx.send_modify(|s| s.ended = Some(reason.clone()));
        }
        None => {
            tokio::select! {
                () = tokio::time::sleep(RELEASE_LINGER.min(store.fetch_timeout)) => {}
                () = live.cancel.notified() => {}
            }
        }
    }
    engine.scheduler().send(Event::Release {
        query_id: live.query_id.clone(),
    });
    // Readers already streaming keep their `Live`; new tickets for it are refused from now on.
    store.lock_live().remove(&live.query_id);
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
