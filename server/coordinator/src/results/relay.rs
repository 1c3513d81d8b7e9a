//! The relay: a query's answer as one stream. It reads the result partitions in order, each from
//! the moment its task is launched, and passes the batches on with back-pressure.
//!
//! A partition counts only once its task has also reported success, so a task that dies
//! mid-stream never truncates the answer silently. Its rows are held back until then, up to
//! `scheduler.result_buffer_bytes`: if the task is lost meanwhile (its executor killed, say), the
//! scheduler runs it again and the relay reads the new attempt from the start, so the client sees
//! every row exactly once. A partition larger than the buffer streams on; losing its task after
//! rows went out fails the query, since they cannot be taken back.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use ember_planner::shuffle::MapOutputLocation;
use ember_planner::sqlstate::SqlState;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info};

use super::{ResultEvent, ResultHandle};
use crate::error::{Error, TaskErrorKind};

/// The client's view of a running query. Dropping it releases the query.
pub(super) fn result_stream(handle: ResultHandle) -> SendableRecordBatchStream {
    let (batches_tx, batches_rx) = mpsc::channel(2);
    let schema = handle.partitions.schema();
    let relay = Relay {
        buffer_limit: handle.partitions.hold_back_bytes(),
        handle,
        launched: BTreeMap::new(),
        committed: BTreeSet::new(),
    };
    tokio::spawn(async move {
        let mut relay = relay;
        if let Err(error) = relay.run(&batches_tx).await {
            let _ = batches_tx.send(Err(error.into_datafusion())).await;
        }
        // Only now, the error delivered, the handle goes and the query is released.
        drop(relay);
    });
    Box::pin(RecordBatchStreamAdapter::new(
        schema,
        ReceiverStream::new(batches_rx),
    ))
}

struct Relay {
    handle: ResultHandle,
    buffer_limit: usize,
    /// The latest attempt launched for each partition.
    launched: BTreeMap<usize, MapOutputLocation>,
    /// Attempts that reported success, as (partition, attempt).
    committed: BTreeSet<(usize, u32)>,
}

type BatchTx = mpsc::Sender<Result<RecordBatch, DataFusionError>>;

/// Whether the client still listens.
enum Flow {
    Continue,
    ClientGone,
}

/// How reading one attempt of a partition ended.
enum Read {
    /// The stream ended; the rows count once the attempt reports success.
    Ended,
    /// The stream broke (its executor died, its task failed, ...).
    Broken(Error),
    /// The scheduler launched a newer attempt of this partition.
    Replaced,
    ClientGone,
}

/// Rows of the current partition not yet passed to the client.
#[derive(Default)]
struct Held {
    batches: Vec<RecordBatch>,
    bytes: usize,
    /// Some rows of this partition already went to the client: it can no longer be re-read.
    sent_any: bool,
}

impl Relay {
    async fn run(&mut self, batches_tx: &BatchTx) -> Result<(), Error> {
        for partition in 0..self.handle.partitions.num_partitions() {
            if let Flow::ClientGone = self.relay_partition(partition, batches_tx).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Relays one partition, following its task through re-runs while none of its rows has
    /// reached the client.
    async fn relay_partition(
        &mut self,
        partition: usize,
        batches_tx: &BatchTx,
    ) -> Result<Flow, Error> {
        let mut held = Held::default();
        loop {
            let location = loop {
                if let Some(location) = self.launched.get(&partition) {
                    break location.clone();
                }
                if let Flow::ClientGone = self.next_event(batches_tx).await? {
                    return Ok(Flow::ClientGone);
                }
            };
            let attempt = location.attempt;
            held.batches.clear();
            held.bytes = 0;
            let read = self
                .read_attempt(partition, &location, &mut held, batches_tx)
                .await?;
            let broken = match read {
                Read::ClientGone => return Ok(Flow::ClientGone),
                Read::Replaced => {
                    if held.sent_any {
                        return Err(lost_after_send(partition));
                    }
                    continue;
                }
                Read::Ended => false,
                Read::Broken(error) => {
                    debug!(query_id = %self.handle.partitions.query_id(), partition, attempt, %error, "result stream broke");
                    if held.sent_any {
                        return Err(self.task_error_or(lost_after_send(partition)).await);
                    }
                    self.ask_retry(partition, attempt);
                    true
                }
            };
            // Wait until this attempt is known to have succeeded, or has been replaced.
            loop {
                if self.is_replaced(partition, attempt) {
                    if held.sent_any {
                        return Err(lost_after_send(partition));
                    }
                    break;
                }
                if self.committed.contains(&(partition, attempt)) {
                    if !broken {
                        for batch in held.batches.drain(..) {
                            if batches_tx.send(Ok(batch)).await.is_err() {
                                return Ok(Flow::ClientGone);
                            }
                        }
                        return Ok(Flow::Continue);
                    }
                    // It finished, but its rows were lost on the way: run it again.
                    self.committed.remove(&(partition, attempt));
                    self.ask_retry(partition, attempt);
                }
                if let Flow::ClientGone = self.next_event(batches_tx).await? {
                    return Ok(Flow::ClientGone);
                }
            }
            info!(query_id = %self.handle.partitions.query_id(), partition, "reading a result partition again from its new attempt");
        }
    }

    /// Asks the scheduler to run this attempt of a partition again (it decides whether it must).
    fn ask_retry(&self, partition: usize, attempt: u32) {
        self.handle.partitions.retry(partition, attempt);
    }

    /// Whether the scheduler has launched an attempt newer than `attempt`.
    fn is_replaced(&self, partition: usize, attempt: u32) -> bool {
        self.launched
            .get(&partition)
            .is_some_and(|l| l.attempt != attempt)
    }

    /// Reads one attempt's stream, holding its rows back while they fit the buffer.
    async fn read_attempt(
        &mut self,
        partition: usize,
        location: &MapOutputLocation,
        held: &mut Held,
        batches_tx: &BatchTx,
    ) -> Result<Read, Error> {
        let opened = tokio::select! {
            opened = self.handle.partitions.open(partition, location) => opened,
            _ = batches_tx.closed() => return Ok(Read::ClientGone),
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(error) => return Ok(Read::Broken(error)),
        };
        loop {
            tokio::select! {
                batch = stream.next() => match batch {
                    None => return Ok(Read::Ended),
                    Some(Err(error)) => return Ok(Read::Broken(error.into())),
                    Some(Ok(batch)) => {
                        if batch.num_rows() == 0 {
                            continue;
                        }
                        if held.sent_any {
                            if batches_tx.send(Ok(batch)).await.is_err() {
                                return Ok(Read::ClientGone);
                            }
                            continue;
                        }
                        held.bytes += batch.get_array_memory_size();
                        held.batches.push(batch);
                        if held.bytes > self.buffer_limit {
                            // Too large to hold: stream on, giving up transparent re-runs.
                            held.sent_any = true;
                            for batch in held.batches.drain(..) {
                                if batches_tx.send(Ok(batch)).await.is_err() {
                                    return Ok(Read::ClientGone);
                                }
                            }
                        }
                    }
                },
                event = self.handle.next_event() => {
                    self.note(event)?;
                    if self.is_replaced(partition, location.attempt) {
                        return Ok(Read::Replaced);
                    }
                }
                _ = batches_tx.closed() => return Ok(Read::ClientGone),
            }
        }
    }

    /// Waits for the scheduler's next word, or for the client to go away.
    async fn next_event(&mut self, batches_tx: &BatchTx) -> Result<Flow, Error> {
        let event = tokio::select! {
            event = self.handle.next_event() => event,
            _ = batches_tx.closed() => return Ok(Flow::ClientGone),
        };
        self.note(event)?;
        Ok(Flow::Continue)
    }

    fn note(&mut self, event: Option<ResultEvent>) -> Result<(), Error> {
        match event {
            Some(ResultEvent::Launched {
                partition,
                location,
            }) => {
                self.launched.insert(partition, location);
            }
            Some(ResultEvent::Committed { partition, attempt }) => {
                self.committed.insert((partition, attempt));
            }
            // Only Flight SQL clients fetch partitions from executors themselves.
            Some(ResultEvent::Served { .. }) => {}
            Some(ResultEvent::Failed(error)) => return Err(error),
            None => {
                return Err(Error::Unavailable(
                    "the scheduler stopped before the query finished".into(),
                ));
            }
        }
        Ok(())
    }

    /// The scheduler's report of a failure carries the original error: prefer it to the broken
    /// stream's, waiting a little for it.
    async fn task_error_or(&mut self, fallback: Error) -> Error {
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(5));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return fallback,
                event = self.handle.next_event() => match self.note(event) {
                    Err(error) => return error,
                    Ok(()) => continue,
                },
            }
        }
    }
}

/// The error of a partition whose task was lost after some of its rows reached the client.
fn lost_after_send(partition: usize) -> Error {
    Error::Task {
        kind: TaskErrorKind::ExecutorLost,
        sqlstate: SqlState::SYSTEM_ERROR,
        message: format!(
            "the task computing result partition {partition} was lost after part of its rows \
             had been sent; the query cannot be resumed (partitions up to \
             scheduler.result_buffer_bytes survive such losses)"
        ),
    }
}
