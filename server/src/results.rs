//! Streaming a query's answer: result partitions are fetched from the executors in order as
//! soon as their tasks commit, and relayed batch by batch with back-pressure.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use ember_executor::fetcher::FlightShuffleFetcher;
use ember_planner::ids::{QueryId, StageId};
use ember_planner::shuffle::{MapOutputLocation, ShuffleBlock, ShuffleFetcher};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::Error;
use crate::scheduler::{Event, ResultEvent, SchedulerHandle};

/// The client's view of a running query. Dropping it cancels the query.
pub(crate) fn result_stream(
    schema: SchemaRef,
    query_id: QueryId,
    stage_id: StageId,
    num_partitions: usize,
    events_rx: mpsc::UnboundedReceiver<ResultEvent>,
    fetcher: Arc<FlightShuffleFetcher>,
    scheduler: SchedulerHandle,
) -> SendableRecordBatchStream {
    let (batches_tx, batches_rx) = mpsc::channel(2);
    let relay = Relay {
        schema: Arc::clone(&schema),
        query_id,
        stage_id,
        num_partitions,
        fetcher,
    };
    tokio::spawn(async move {
        let query_id = relay.query_id.clone();
        if let Err(error) = relay.run(events_rx, &batches_tx).await {
            let _ = batches_tx
                .send(Err(DataFusionError::External(Box::new(error))))
                .await;
        }
        scheduler.send(Event::Release { query_id });
    });
    Box::pin(RecordBatchStreamAdapter::new(
        schema,
        ReceiverStream::new(batches_rx),
    ))
}

struct Relay {
    schema: SchemaRef,
    query_id: QueryId,
    stage_id: StageId,
    num_partitions: usize,
    fetcher: Arc<FlightShuffleFetcher>,
}

type BatchTx = mpsc::Sender<Result<RecordBatch, DataFusionError>>;

impl Relay {
    async fn run(
        &self,
        mut events_rx: mpsc::UnboundedReceiver<ResultEvent>,
        batches_tx: &BatchTx,
    ) -> Result<(), Error> {
        let mut ready: BTreeMap<usize, MapOutputLocation> = BTreeMap::new();
        let mut next = 0;
        while next < self.num_partitions {
            if let Some(location) = ready.remove(&next) {
                if !self.relay_partition(next, &location, batches_tx).await? {
                    return Ok(()); // the client went away
                }
                next += 1;
                continue;
            }
            let event = tokio::select! {
                event = events_rx.recv() => event,
                // The client went away while the query runs: stop waiting, which releases it.
                _ = batches_tx.closed() => return Ok(()),
            };
            match event {
                Some(ResultEvent::Partition {
                    partition,
                    location,
                }) => {
                    ready.insert(partition, location);
                }
                Some(ResultEvent::Failed(error)) => return Err(error),
                None => {
                    return Err(Error::Unavailable(
                        "the scheduler stopped before the query finished".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Relays one partition; `false` when the client no longer listens.
    async fn relay_partition(
        &self,
        partition: usize,
        location: &MapOutputLocation,
        batches_tx: &BatchTx,
    ) -> Result<bool, Error> {
        let block = ShuffleBlock {
            query_id: self.query_id.clone(),
            stage_id: self.stage_id,
            map_partition: partition as u32,
            attempt: location.attempt,
            output_partition: 0,
        };
        let mut stream = self
            .fetcher
            .fetch(location, block, Arc::clone(&self.schema))
            .await?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            if batches_tx.send(Ok(batch)).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
