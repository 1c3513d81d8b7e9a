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
use ember_planner::shuffle::{LiveBlocks, live_batches, read_local_block_off_runtime};
use futures::{Stream, StreamExt, TryStreamExt};
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use ember_protocol::credentials::{SigningKey, client_ticket_handle};
use ember_protocol::membership::ClusterKey;
use ember_protocol::proto::TaskId;
use ember_protocol::tickets::decode_ticket;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Serves the shuffle files under one work dir, and the live blocks of running result tasks.
#[derive(Debug, Clone)]
pub struct ShuffleFlightService {
    work_dir: PathBuf,
    live: Arc<LiveBlocks>,
    /// Checks the shuffle tickets of cluster members.
    cluster_key: ClusterKey,
    /// The key of the coordinator's Flight SQL tickets and tokens; without one, clients cannot
    /// fetch result partitions here.
    client_key: Option<SigningKey>,
    /// Result partitions a client has read to their end, for the coordinator.
    served_tx: mpsc::UnboundedSender<TaskId>,
}

impl ShuffleFlightService {
    /// Serves the shuffle files under `work_dir` and the live blocks of `live` to readers whose
    /// tickets `cluster_key` signed; client tickets are checked with `client_key` and partitions
    /// read to their end reported on `served_tx`.
    pub fn new(
        work_dir: PathBuf,
        live: Arc<LiveBlocks>,
        cluster_key: ClusterKey,
        client_key: Option<SigningKey>,
        served_tx: mpsc::UnboundedSender<TaskId>,
    ) -> Self {
        Self {
            work_dir,
            live,
            cluster_key,
            client_key,
            served_tx,
        }
    }
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
        if let Some(handle) = client_ticket_handle(request.get_ref()) {
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
        let (block, live, reader) = decode_ticket(&self.cluster_key, request.get_ref())?;
        tracing::trace!(%reader, query_id = %block.query_id, stage = %block.stage_id, "serving a shuffle block");
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
        let batches = read_local_block_off_runtime(path)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
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
