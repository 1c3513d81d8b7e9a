//! Result partitions served straight to Flight SQL clients: the coordinator hands a client one
//! endpoint per result partition, on the executor whose task computes it, with a signed ticket
//! (see [`crate::client_auth`]). The executor checks the ticket (and the client's token, when the
//! server authenticates clients) and streams the partition's live batches, as it would to the
//! coordinator's relay; for any one partition only one of them ever reads it.

use std::pin::Pin;

use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use arrow_flight::sql::{Any, TicketStatementQuery};
use arrow_flight::{FlightData, Ticket};
use datafusion::arrow::datatypes::SchemaRef;
use ember_planner::ids::{QueryId, StageId};
use ember_planner::shuffle::{LiveBlocks, ShuffleBlock, live_batches};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::client_auth::{
    self, CredentialError, SigningKey, TicketClaims, TicketTarget, is_client_ticket,
};
use crate::proto::TaskId;

pub type FlightDataStream =
    Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// The signed part of a Flight SQL ticket (`TicketStatementQuery` in an `Any`), if `ticket` is
/// one of the tickets the coordinator gives clients.
pub fn client_ticket_handle(ticket: &Ticket) -> Option<Vec<u8>> {
    let any = Any::decode(ticket.ticket.as_ref()).ok()?;
    let query: TicketStatementQuery = any.unpack().ok()??;
    is_client_ticket(&query.statement_handle).then(|| query.statement_handle.to_vec())
}

/// The status a refused credential gets: the client must authenticate (again).
pub fn credential_status(error: &CredentialError) -> Status {
    match error {
        CredentialError::Malformed(_) => Status::invalid_argument(error.to_string()),
        CredentialError::BadSignature(_) | CredentialError::Expired(_) => {
            Status::unauthenticated(error.to_string())
        }
    }
}

/// The Bearer token of a request, if it sent one.
pub fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// Checks that the caller may use `claims`: a token sent along must be valid and of the same
/// user, and one must be sent when the ticket requires it.
pub fn check_bearer(
    key: &SigningKey,
    claims: &TicketClaims,
    metadata: &MetadataMap,
) -> Result<(), Status> {
    match bearer_token(metadata) {
        Some(token) => {
            let token = key.verify_token(token).map_err(|e| credential_status(&e))?;
            if token.user != claims.user {
                return Err(Status::permission_denied(
                    "this ticket belongs to another user",
                ));
            }
            Ok(())
        }
        None if claims.requires_token => Err(Status::unauthenticated(
            "a Bearer token from the Flight SQL handshake is required",
        )),
        None => Ok(()),
    }
}

/// Streams the live result partition a client ticket names; once the client has read it to its
/// end, tells the coordinator through `served_tx` (it may then release the query at once).
pub(crate) fn serve(
    live: &LiveBlocks,
    key: &SigningKey,
    handle: &[u8],
    metadata: &MetadataMap,
    served_tx: mpsc::UnboundedSender<TaskId>,
) -> Result<FlightDataStream, Status> {
    let claims = key.open_ticket(handle).map_err(|e| credential_status(&e))?;
    check_bearer(key, &claims, metadata)?;
    let Some(TicketTarget::Partition(partition)) = claims.target else {
        return Err(Status::invalid_argument(
            "this ticket is served by the coordinator, not by an executor",
        ));
    };
    let attempt = partition.attempt.ok_or_else(|| {
        Status::invalid_argument("this ticket is served by the coordinator, not by an executor")
    })?;
    let query_id = QueryId::parse(&partition.query_id)
        .ok_or_else(|| Status::invalid_argument("malformed query id in ticket"))?;
    let schema: SchemaRef = Arc::new(
        client_auth::schema_from_bytes(&partition.schema)
            .map_err(|e| Status::invalid_argument(format!("malformed schema in ticket: {e}")))?,
    );
    let block = ShuffleBlock {
        query_id,
        stage_id: StageId(partition.stage_id),
        map_partition: partition.partition,
        attempt,
        output_partition: 0,
    };
    let receiver = live.receiver(&block).ok_or_else(|| {
        Status::failed_precondition(
            "this result partition has already been fetched, or its query has ended",
        )
    })?;
    let task = TaskId {
        query_id: partition.query_id,
        stage_id: partition.stage_id,
        partition: partition.partition,
        attempt,
    };
    let batches = live_batches(receiver, move || {
        // No session to the coordinator right now: it will release the query on its own.
        let _ = served_tx.send(task);
    })
    .map_err(|e| FlightError::ExternalError(Box::new(e)));
    Ok(encode(schema, batches))
}

/// Batches as Flight data with exactly `schema` (dictionaries sent as dictionaries), so every
/// endpoint of a result announces the schema its `FlightInfo` did.
pub fn encode(
    schema: SchemaRef,
    batches: impl Stream<Item = Result<datafusion::arrow::array::RecordBatch, FlightError>>
    + Send
    + 'static,
) -> FlightDataStream {
    FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .with_dictionary_handling(DictionaryHandling::Resend)
        .build(batches)
        .map_err(|e| match e {
            FlightError::Tonic(status) => *status,
            other => Status::internal(other.to_string()),
        })
        .boxed()
}
