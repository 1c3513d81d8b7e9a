//! Result partitions served straight to Flight SQL clients: the coordinator hands a client one
//! endpoint per result partition, on the executor whose task computes it, with a signed ticket
//! (see `ember_protocol::credentials`). The executor checks the ticket (and the client's token, when the
//! server authenticates clients) and streams the partition's live batches, as it would to the
//! coordinator's relay; for any one partition only one of them ever reads it.

use std::sync::Arc;

use arrow_flight::error::FlightError;
use datafusion::arrow::datatypes::SchemaRef;
use ember_planner::ids::{QueryId, StageId};
use ember_planner::shuffle::{LiveBlocks, ShuffleBlock, live_batches};
use ember_protocol::credentials::{
    self, SigningKey, TicketTarget, check_bearer, credential_status,
};
use ember_protocol::flight_data::{FlightDataStream, encode};
use ember_protocol::proto::TaskId;
use futures::TryStreamExt;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::metadata::MetadataMap;

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
        credentials::schema_from_bytes(&partition.schema)
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
