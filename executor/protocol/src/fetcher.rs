//! Fetching shuffle blocks and live result partitions from executors through Arrow Flight: the
//! executors' readers use it for their peers' outputs, the coordinator for result partitions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use ember_planner::shuffle::{MapOutputLocation, ShuffleBlock, ShuffleError, ShuffleFetcher};
use futures::TryStreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::membership::{ClusterCredentials, ClusterKey};
use crate::tickets::encode_ticket;
use crate::tls::ClusterTls;

/// A Flight client per peer, connected lazily and reused.
#[derive(Debug)]
pub struct FlightShuffleFetcher {
    max_message_size: usize,
    /// Signs the ticket of every block this fetcher asks for.
    key: ClusterKey,
    /// Who reads, as the tickets name it.
    reader: String,
    /// TLS towards the executors, when the cluster uses it.
    tls: Option<ClusterTls>,
    // A std Mutex: held only to look up or insert a channel, never across an await.
    channels: Mutex<HashMap<String, Channel>>,
}

impl FlightShuffleFetcher {
    /// A fetcher whose gRPC messages may be up to `max_message_size` bytes, signing its tickets
    /// with the cluster's key as `reader` and dialling with the cluster's TLS.
    pub fn new(
        max_message_size: usize,
        cluster: &ClusterCredentials,
        reader: impl Into<String>,
    ) -> Self {
        Self {
            max_message_size,
            key: cluster.key.clone(),
            reader: reader.into(),
            tls: cluster.tls.clone(),
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, address: &str) -> std::result::Result<FlightServiceClient<Channel>, String> {
        let mut channels = self.channels.lock().map_err(|e| e.to_string())?;
        let channel = match channels.get(address) {
            Some(channel) => channel.clone(),
            None => {
                let scheme = crate::tls::scheme(self.tls.as_ref());
                let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
                    .map_err(|e| e.to_string())?
                    .tcp_nodelay(true);
                if let Some(tls) = &self.tls {
                    endpoint = endpoint
                        .tls_config(tls.client())
                        .map_err(|e| e.to_string())?;
                }
                let channel = endpoint.connect_lazy();
                channels.insert(address.to_string(), channel.clone());
                channel
            }
        };
        Ok(FlightServiceClient::new(channel)
            .max_decoding_message_size(self.max_message_size)
            .max_encoding_message_size(self.max_message_size))
    }
}

#[async_trait]
impl ShuffleFetcher for FlightShuffleFetcher {
    async fn fetch(
        &self,
        location: &MapOutputLocation,
        block: ShuffleBlock,
        schema: SchemaRef,
    ) -> Result<SendableRecordBatchStream> {
        self.do_get(location, block, schema, false).await
    }
}

impl FlightShuffleFetcher {
    /// Streams the output of a running (live) result task.
    pub async fn fetch_live(
        &self,
        location: &MapOutputLocation,
        block: ShuffleBlock,
        schema: SchemaRef,
    ) -> Result<SendableRecordBatchStream> {
        self.do_get(location, block, schema, true).await
    }

    async fn do_get(
        &self,
        location: &MapOutputLocation,
        block: ShuffleBlock,
        schema: SchemaRef,
        live: bool,
    ) -> Result<SendableRecordBatchStream> {
        let failed = {
            let executor_id = location.executor_id.clone();
            let stage_id = block.stage_id;
            let map_partition = block.map_partition;
            let map_attempt = block.attempt;
            move |message: String| {
                DataFusionError::External(Box::new(ShuffleError::FetchFailed {
                    executor_id: executor_id.clone(),
                    stage_id,
                    map_partition,
                    map_attempt,
                    message,
                }))
            }
        };
        let mut client = self
            .client(&location.flight_address)
            .map_err(|e| failed(e.clone()))?;
        let response = client
            .do_get(encode_ticket(&self.key, &block, live, &self.reader))
            .await
            .map_err(|status| failed(status.message().to_string()))?;
        let expected = Arc::clone(&schema);
        let stream = FlightRecordBatchStream::new_from_flight_data(
            response.into_inner().map_err(FlightError::from),
        )
        .map_err(move |e| failed(e.to_string()))
        .and_then(move |batch| futures::future::ready(conform(batch, &expected)));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Flight sends dictionary columns as plain values; the plan on this side expects the types it
/// planned with, so such columns are cast back.
fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                Ok(datafusion::arrow::compute::cast(column, field.data_type())?)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}
