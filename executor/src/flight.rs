//! The executor's Arrow Flight service: `do_get` streams one committed shuffle block, a live
//! result block to the coordinator, or a live result partition to a Flight SQL client.

use std::path::PathBuf;
use std::pin::Pin;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use ember_planner::ids::{QueryId, StageId};
use ember_planner::shuffle::{LiveBlocks, ShuffleBlock, live_batches, read_local_block};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::client_auth::SigningKey;
use crate::proto::{ShuffleTicket, TaskId};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Serves the shuffle files under one work dir, and the live blocks of running result tasks.
#[derive(Debug, Clone)]
pub struct ShuffleFlightService {
    work_dir: PathBuf,
    live: Arc<LiveBlocks>,
    /// The key of the coordinator's Flight SQL tickets and tokens; without one, clients cannot
    /// fetch result partitions here.
    client_key: Option<SigningKey>,
    /// Result partitions a client has read to their end, for the coordinator.
    served_tx: mpsc::UnboundedSender<TaskId>,
}

impl ShuffleFlightService {
    pub fn new(
        work_dir: PathBuf,
        live: Arc<LiveBlocks>,
        client_key: Option<SigningKey>,
        served_tx: mpsc::UnboundedSender<TaskId>,
    ) -> Self {
        Self {
            work_dir,
            live,
            client_key,
            served_tx,
        }
    }
}

/// Encodes a block as a Flight ticket; `live` asks for the stream of a running task.
pub fn encode_ticket(block: &ShuffleBlock, live: bool) -> Ticket {
    let ticket = ShuffleTicket {
        query_id: block.query_id.to_string(),
        stage_id: block.stage_id.0,
        map_partition: block.map_partition,
        attempt: block.attempt,
        output_partition: block.output_partition,
        live,
    };
    Ticket::new(ticket.encode_to_vec())
}

fn decode_ticket(ticket: &Ticket) -> Result<(ShuffleBlock, bool), Status> {
    let ticket = ShuffleTicket::decode(ticket.ticket.as_ref())
        .map_err(|e| Status::invalid_argument(format!("malformed shuffle ticket: {e}")))?;
    let query_id = QueryId::parse(&ticket.query_id)
        .ok_or_else(|| Status::invalid_argument("malformed query id in shuffle ticket"))?;
    let block = ShuffleBlock {
        query_id,
        stage_id: StageId(ticket.stage_id),
        map_partition: ticket.map_partition,
        attempt: ticket.attempt,
        output_partition: ticket.output_partition,
    };
    Ok((block, ticket.live))
}

#[tonic::async_trait]
impl FlightService for ShuffleFlightService {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoExchangeStream = BoxStream<FlightData>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        if let Some(handle) = crate::client_results::client_ticket_handle(request.get_ref()) {
            let Some(key) = &self.client_key else {
                return Err(Status::failed_precondition(
                    "this executor serves no Flight SQL results (auth.flight_secret is not set)",
                ));
            };
            let stream = crate::client_results::serve(
                &self.live,
                key,
                &handle,
                request.metadata(),
                self.served_tx.clone(),
            )?;
            return Ok(Response::new(stream));
        }
        let (block, live) = decode_ticket(request.get_ref())?;
        if live {
            let receiver = self
                .live
                .receiver(&block)
                .ok_or_else(|| Status::already_exists("this result block is already being read"))?;
            let batches =
                live_batches(receiver, || {}).map_err(|e| FlightError::ExternalError(Box::new(e)));
            let stream = FlightDataEncoderBuilder::new()
                .build(batches)
                .map_err(|e| Status::internal(e.to_string()));
            return Ok(Response::new(stream.boxed()));
        }
        let path = block.path(&self.work_dir);
        if !path.exists() {
            return Err(Status::not_found(format!(
                "shuffle block stage {} map {}.{} partition {} of query {} is not here",
                block.stage_id,
                block.map_partition,
                block.attempt,
                block.output_partition,
                block.query_id
            )));
        }
        let batches = read_local_block(&path).map_err(|e| Status::internal(e.to_string()))?;
        let schema = batches.schema();
        let batches = batches.map_err(|e| FlightError::ExternalError(Box::new(e)));
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(|e| Status::internal(e.to_string()));
        Ok(Response::new(stream.boxed()))
    }

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "the shuffle service needs no handshake",
        ))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented(
            "the shuffle service lists no flights",
        ))
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented(
            "the shuffle service only serves do_get",
        ))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "the shuffle service only serves do_get",
        ))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented(
            "the shuffle service only serves do_get",
        ))
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented(
            "the shuffle service only serves do_get",
        ))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented(
            "the shuffle service only serves do_get",
        ))
    }

    async fn do_action(
        &self,
        _request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("the shuffle service has no actions"))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        Err(Status::unimplemented("the shuffle service has no actions"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_and_reject_garbage() {
        let block = ShuffleBlock {
            query_id: QueryId::parse("q1").unwrap(),
            stage_id: StageId(3),
            map_partition: 2,
            attempt: 1,
            output_partition: 7,
        };
        assert_eq!(
            decode_ticket(&encode_ticket(&block, true)).unwrap(),
            (block, true)
        );
        let evil = ShuffleTicket {
            query_id: "../../etc".into(),
            ..Default::default()
        };
        assert!(decode_ticket(&Ticket::new(evil.encode_to_vec())).is_err());
        assert!(decode_ticket(&Ticket::new(vec![0xff, 0xff, 0xff])).is_err());
    }
}
