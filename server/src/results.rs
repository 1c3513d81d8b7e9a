//! Streaming a query's answer. The result stage's tasks hand their batches to live Flight streams
//! as they compute them; the relay reads the partitions in order, each from the moment its task
//! is launched, and passes the batches on with back-pressure. A partition counts only once its
//! task has also reported success, so a task that dies mid-stream fails the query instead of
//! silently truncating the answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use ember_executor::fetcher::FlightShuffleFetcher;
use ember_planner::ids::{QueryId, StageId};
use ember_planner::shuffle::{MapOutputLocation, ShuffleBlock};
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
        events_rx,
        launched: BTreeMap::new(),
        committed: BTreeSet::new(),
    };
    tokio::spawn(async move {
        let query_id = relay.query_id.clone();
        if let Err(error) = relay.run(&batches_tx).await {
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
    events_rx: mpsc::UnboundedReceiver<ResultEvent>,
    launched: BTreeMap<usize, MapOutputLocation>,
    committed: BTreeSet<usize>,
}

type BatchTx = mpsc::Sender<Result<RecordBatch, DataFusionError>>;

/// Whether the client still listens.
enum Flow {
    Continue,
    ClientGone,
}

impl Relay {
    async fn run(mut self, batches_tx: &BatchTx) -> Result<(), Error> {
        for partition in 0..self.num_partitions {
            let location = loop {
                if let Some(location) = self.launched.remove(&partition) {
                    break location;
                }
                if let Flow::ClientGone = self.next_event(batches_tx).await? {
                    return Ok(());
                }
            };
            match self.relay_partition(partition, &location, batches_tx).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::ClientGone) => return Ok(()),
                Err(stream_error) => return Err(self.task_error_or(stream_error).await),
            }
            while !self.committed.contains(&partition) {
                if let Flow::ClientGone = self.next_event(batches_tx).await? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// A stream that broke usually means its task failed: the scheduler's report of that failure
    /// carries the original error, so wait a little for it.
    async fn task_error_or(&mut self, stream_error: Error) -> Error {
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(5));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return stream_error,
                event = self.events_rx.recv() => match event {
                    Some(ResultEvent::Failed(error)) => return error,
                    Some(_) => continue,
                    None => return stream_error,
                },
            }
        }
    }

    /// Waits for the scheduler's next word, or for the client to go away.
    async fn next_event(&mut self, batches_tx: &BatchTx) -> Result<Flow, Error> {
        let event = tokio::select! {
            event = self.events_rx.recv() => event,
            _ = batches_tx.closed() => return Ok(Flow::ClientGone),
        };
        match event {
            Some(ResultEvent::Launched {
                partition,
                location,
            }) => {
                self.launched.insert(partition, location);
            }
            Some(ResultEvent::Committed { partition }) => {
                self.committed.insert(partition);
            }
            Some(ResultEvent::Failed(error)) => return Err(error),
            None => {
                return Err(Error::Unavailable(
                    "the scheduler stopped before the query finished".into(),
                ));
            }
        }
        Ok(Flow::Continue)
    }

    async fn relay_partition(
        &self,
        partition: usize,
        location: &MapOutputLocation,
        batches_tx: &BatchTx,
    ) -> Result<Flow, Error> {
        let block = ShuffleBlock {
            query_id: self.query_id.clone(),
            stage_id: self.stage_id,
            map_partition: partition as u32,
            attempt: location.attempt,
            output_partition: 0,
        };
        let mut stream = self
            .fetcher
            .fetch_live(location, block, Arc::clone(&self.schema))
            .await?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            if batches_tx.send(Ok(batch)).await.is_err() {
                return Ok(Flow::ClientGone);
            }
        }
        Ok(Flow::Continue)
    }
}
