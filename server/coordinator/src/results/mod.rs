//! A running distributed query's answer, as frontends read it. The result stage's tasks hand
//! their batches to live Flight streams on their executors; a [`ResultHandle`] follows the
//! scheduler's reports on them and lets its holder open a partition's stream, ask for a lost
//! partition to be run again, and release the query (which happens at the latest when the last
//! reference goes):
//!
//! ```text
//!  scheduler ── ResultEvent (launched, committed, served, failed) ──► ResultHandle::next_event
//!  ResultPartitions::open(partition, location) ── Flight do_get (live) ──► executor
//!  ResultPartitions::retry(partition, attempt) ──► scheduler runs it again
//!  drop / release() ──► scheduler releases the query: tasks stop, files go
//! ```
//!
//! [`ResultHandle::into_stream`] is the coordinator's relay (`relay.rs`), which reads the
//! partitions in order with exactly-once delivery across task losses; the Postgres frontend and
//! Flight SQL in proxy mode use it. Flight SQL's direct mode hands partitions to clients instead.

mod relay;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use ember_planner::ids::{QueryId, StageId};
use ember_planner::shuffle::{MapOutputLocation, ShuffleBlock};
use ember_protocol::FlightShuffleFetcher;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
pub use crate::output::ResultEvent;
use crate::scheduler::{Event, SchedulerHandle};

/// A distributed query whose result stage is running: the scheduler's reports on it, and its
/// partitions.
pub struct ResultHandle {
    partitions: Arc<ResultPartitions>,
    events_rx: mpsc::UnboundedReceiver<ResultEvent>,
}

/// The result partitions of a running query: open one, have one run again, release them all.
/// Shared by whoever reads them; the query is released when the last reference goes, if not
/// before.
pub struct ResultPartitions {
    query_id: QueryId,
    stage_id: StageId,
    schema: SchemaRef,
    num_partitions: usize,
    scheduler: SchedulerHandle,
    fetcher: Arc<FlightShuffleFetcher>,
    released: AtomicBool,
}

impl ResultHandle {
    pub(crate) fn new(
        query_id: QueryId,
        stage_id: StageId,
        schema: SchemaRef,
        num_partitions: usize,
        scheduler: SchedulerHandle,
        fetcher: Arc<FlightShuffleFetcher>,
        events_rx: mpsc::UnboundedReceiver<ResultEvent>,
    ) -> Self {
        Self {
            partitions: Arc::new(ResultPartitions {
                query_id,
                stage_id,
                schema,
                num_partitions,
                scheduler,
                fetcher,
                released: AtomicBool::new(false),
            }),
            events_rx,
        }
    }

    /// The partitions, to open and retry from elsewhere.
    pub fn partitions(&self) -> &Arc<ResultPartitions> {
        &self.partitions
    }

    /// The scheduler's next report; `None` once it has stopped.
    pub async fn next_event(&mut self) -> Option<ResultEvent> {
        self.events_rx.recv().await
    }

    /// The answer as one stream: the partitions in order, each exactly once (see `relay.rs`).
    /// Dropping the stream releases the query.
    pub fn into_stream(self) -> SendableRecordBatchStream {
        relay::result_stream(self)
    }
}

impl ResultPartitions {
    /// The query.
    pub fn query_id(&self) -> &QueryId {
        &self.query_id
    }

    /// The result stage.
    pub fn stage_id(&self) -> StageId {
        self.stage_id
    }

    /// The schema of every partition.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// How many partitions the answer has.
    pub fn num_partitions(&self) -> usize {
        self.num_partitions
    }

    /// Bytes of a partition a reader may hold back until its task has finished (so that a lost
    /// task can be re-run without the client seeing rows twice).
    pub fn hold_back_bytes(&self) -> usize {
        self.scheduler.result_buffer_bytes()
    }

    /// Streams the attempt of `partition` that runs at `location`, as its task produces it. An
    /// executor that cannot be reached, or a task that ends before its stream does, is an error
    /// of the stream.
    pub async fn open(
        &self,
        partition: usize,
        location: &MapOutputLocation,
    ) -> Result<SendableRecordBatchStream> {
        let block = ShuffleBlock {
            query_id: self.query_id.clone(),
            stage_id: self.stage_id,
            map_partition: u32::try_from(partition)
                .map_err(|_| Error::InvalidParameter(format!("no result partition {partition}")))?,
            attempt: location.attempt,
            output_partition: 0,
        };
        Ok(self
            .fetcher
            .fetch_live(location, block, Arc::clone(&self.schema))
            .await?)
    }

    /// Asks the scheduler to run this attempt of `partition` again because its stream could not
    /// be read to its end; it decides whether it must (the attempt may be running on a live
    /// executor still, or be replaced already).
    pub fn retry(&self, partition: usize, attempt: u32) {
        self.scheduler.send(Event::RetryResult {
            query_id: self.query_id.clone(),
            partition,
            attempt,
        });
    }

    /// The reader is done (or gone): the query's tasks stop and its files go. Idempotent.
    pub fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.scheduler.send(Event::Release {
                query_id: self.query_id.clone(),
            });
        }
    }
}

impl Drop for ResultPartitions {
    fn drop(&mut self) {
        self.release();
    }
}
