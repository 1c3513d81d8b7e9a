//! Live blocks: the result stage's output handed from a running task to a reader (the coordinator's
//! Flight fetch) through a bounded channel, so answers stream while they are computed.
//!
//! Either side may arrive first; the first to ask creates the channel. A reader that keeps up
//! gets every batch from memory. One that falls behind (a client reading slowly, a cursor
//! fetched now and then, the relay still busy with an earlier partition) does not hold the
//! task back: after the channel has been full for [`OVERFLOW_AFTER`], the task writes the rest
//! of its partition to an overflow file in its work dir and finishes, freeing its slot; the
//! reader drains the channel, then reads the file. A task that finishes sends
//! [`LiveItem::End`] last (or leaves a complete overflow file), so a reader can tell a complete
//! partition from one whose task was stopped (cancelled, its query released) half-way.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SendableRecordBatchStream;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::{ShuffleBlock, read_local_block_off_runtime};
use crate::ids::QueryId;

/// Batches in flight per live block.
const LIVE_CAPACITY: usize = 4;

/// How long a task waits for a reader to make room before it writes the rest of its partition
/// to an overflow file.
pub const OVERFLOW_AFTER: Duration = Duration::from_millis(100);

/// What goes through a live channel: the partition's batches, then its end.
#[derive(Debug)]
pub enum LiveItem {
    /// The next batch of the partition, in order.
    Batch(RecordBatch),
    /// The task produced its whole partition.
    End,
}

/// The task's side of a live channel. An `Err` item tells the reader why the task failed.
pub type LiveSender = mpsc::Sender<Result<LiveItem>>;
/// The reader's side of a live channel.
pub type LiveReceiver = mpsc::Receiver<Result<LiveItem>>;

/// Where the rest of a live block went when its reader fell behind. Set by the task before it
/// closes the channel, so a reader that finds the channel closed finds this already set.
#[derive(Debug, Default)]
pub struct Overflow {
    // A std Mutex: held only to set or take the outcome.
    state: Mutex<Option<Result<PathBuf, String>>>,
}

impl Overflow {
    /// The task wrote the rest of its partition to `path`, to the end.
    pub fn complete(&self, path: PathBuf) {
        *self.lock() = Some(Ok(path));
    }

    /// The task failed while writing its overflow file.
    pub fn failed(&self, message: String) {
        *self.lock() = Some(Err(message));
    }

    fn take(&self) -> Option<Result<PathBuf, String>> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Result<PathBuf, String>>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The task's end of a live block.
#[derive(Debug)]
pub struct LiveWriter {
    /// Carries the batches, then [`LiveItem::End`]. It is bounded: a send that stays blocked means
    /// the reader has fallen behind.
    pub tx: LiveSender,
    /// Shared with the reader: where the task says it put the rest of the partition once the
    /// reader fell behind, or why it failed.
    pub overflow: Arc<Overflow>,
}

/// The reader's end of a live block.
#[derive(Debug)]
pub struct LiveReader {
    rx: LiveReceiver,
    overflow: Arc<Overflow>,
}

impl LiveReader {
    /// A reader of a bare channel, with no overflow.
    #[cfg(test)]
    fn from_channel(rx: LiveReceiver) -> Self {
        Self {
            rx,
            overflow: Arc::default(),
        }
    }
}

/// The batches of a live block: the channel's, then its overflow file's. It ends cleanly only
/// after [`LiveItem::End`] or a complete overflow file; a channel closed without either (its
/// task stopped early) ends with an error, never as a short answer. `on_end` runs once the end
/// has been read.
pub fn live_batches(
    reader: LiveReader,
    on_end: impl FnOnce() + Send + 'static,
) -> impl Stream<Item = Result<RecordBatch>> + Send + 'static {
    futures::stream::unfold(
        Some(ReadState::Channel(reader, on_end)),
        |state| async move {
            match state? {
                ReadState::Channel(reader, on_end) => next_from_channel(reader, on_end).await,
                ReadState::File(file, on_end) => next_from_file(file, on_end).await,
            }
        },
    )
}

enum ReadState<F> {
    Channel(LiveReader, F),
    File(SendableRecordBatchStream, F),
}

type Next<F> = Option<(Result<RecordBatch>, Option<ReadState<F>>)>;

async fn next_from_channel<F: FnOnce()>(mut reader: LiveReader, on_end: F) -> Next<F> {
    match reader.rx.recv().await {
        Some(Ok(LiveItem::Batch(batch))) => {
            Some((Ok(batch), Some(ReadState::Channel(reader, on_end))))
        }
        Some(Ok(LiveItem::End)) => {
            on_end();
            None
        }
        Some(Err(error)) => Some((Err(error), None)),
        None => match reader.overflow.take() {
            Some(Ok(path)) => match read_local_block_off_runtime(path).await {
                Ok(file) => next_from_file(file, on_end).await,
                Err(error) => Some((Err(error), None)),
            },
            Some(Err(message)) => Some((Err(DataFusionError::Execution(message)), None)),
            None => Some((
                Err(DataFusionError::Execution(
                    "the task computing this result partition stopped before its end".into(),
                )),
                None,
            )),
        },
    }
}

async fn next_from_file<F: FnOnce()>(mut file: SendableRecordBatchStream, on_end: F) -> Next<F> {
    match file.next().await {
        Some(Ok(batch)) => Some((Ok(batch), Some(ReadState::File(file, on_end)))),
        Some(Err(error)) => Some((Err(error), None)),
        None => {
            on_end();
            None
        }
    }
}

#[derive(Debug)]
struct Entry {
    tx: Option<LiveSender>,
    rx: Option<LiveReceiver>,
    overflow: Arc<Overflow>,
}

/// Released queries remembered, so that a task launched just before its query was released
/// cannot open a channel nobody will ever read.
const RELEASED_REMEMBERED: usize = 1024;

/// The executor's live blocks, keyed by block.
#[derive(Debug, Default)]
pub struct LiveBlocks {
    // A std Mutex: held only to insert or take a channel end.
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    open: HashMap<ShuffleBlock, Entry>,
    released: VecDeque<QueryId>,
}

impl LiveBlocks {
    /// The writing end for `block` (once).
    pub fn sender(&self, block: &ShuffleBlock) -> Option<LiveWriter> {
        self.take(block, |e| {
            let tx = e.tx.take()?;
            Some(LiveWriter {
                tx,
                overflow: Arc::clone(&e.overflow),
            })
        })
    }

    /// The reading end for `block` (once).
    pub fn receiver(&self, block: &ShuffleBlock) -> Option<LiveReader> {
        self.take(block, |e| {
            let rx = e.rx.take()?;
            Some(LiveReader {
                rx,
                overflow: Arc::clone(&e.overflow),
            })
        })
    }

    fn take<T>(&self, block: &ShuffleBlock, f: impl FnOnce(&mut Entry) -> Option<T>) -> Option<T> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.released.contains(&block.query_id) {
            return None;
        }
        let entries = &mut entries.open;
        let entry = entries.entry(block.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(LIVE_CAPACITY);
            Entry {
                tx: Some(tx),
                rx: Some(rx),
                overflow: Arc::default(),
            }
        });
        let taken = f(entry);
        if entry.tx.is_none() && entry.rx.is_none() {
            entries.remove(block);
        }
        taken
    }

    /// Drops every channel end nobody took: the session they were opened for has ended.
    pub fn release_all(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.open.clear();
    }

    /// Drops every channel end of a query nobody took; a task still writing then fails, and
    /// so does one that asks for a channel of this query later.
    pub fn release_query(&self, query_id: &QueryId) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.open.retain(|block, _| &block.query_id != query_id);
        if entries.released.len() == RELEASED_REMEMBERED {
            entries.released.pop_front();
        }
        entries.released.push_back(query_id.clone());
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;
    use crate::ids::StageId;

    fn block(query: &str) -> ShuffleBlock {
        ShuffleBlock {
            query_id: QueryId::parse(query).unwrap(),
            stage_id: StageId(1),
            map_partition: 0,
            attempt: 0,
            output_partition: 0,
        }
    }

    #[tokio::test]
    async fn either_side_may_come_first() {
        let live = LiveBlocks::default();
        let rx = live.receiver(&block("a"));
        let tx = live.sender(&block("a"));
        assert!(
            live.sender(&block("a")).is_some(),
            "a fresh channel after both ends went"
        );
        let (tx, mut rx) = (tx.unwrap().tx, rx.unwrap().rx);
        let batch = RecordBatch::new_empty(std::sync::Arc::new(
            datafusion::arrow::datatypes::Schema::empty(),
        ));
        tx.send(Ok(LiveItem::Batch(batch))).await.unwrap();
        drop(tx);
        assert!(rx.recv().await.is_some());
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_channel_closed_before_its_end_is_an_error() {
        use futures::StreamExt;
        let batch = RecordBatch::new_empty(std::sync::Arc::new(
            datafusion::arrow::datatypes::Schema::empty(),
        ));
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));

        let (tx, rx) = mpsc::channel(4);
        tx.send(Ok(LiveItem::Batch(batch.clone()))).await.unwrap();
        tx.send(Ok(LiveItem::End)).await.unwrap();
        let flag = std::sync::Arc::clone(&ended);
        let items: Vec<_> = live_batches(LiveReader::from_channel(rx), move || {
            flag.store(true, std::sync::atomic::Ordering::SeqCst)
        })
        .collect()
        .await;
        assert_eq!(items.len(), 1);
        assert!(items[0].is_ok());
        assert!(ended.load(std::sync::atomic::Ordering::SeqCst));

        let (tx, rx) = mpsc::channel(4);
        tx.send(Ok(LiveItem::Batch(batch))).await.unwrap();
        drop(tx);
        let items: Vec<_> = live_batches(LiveReader::from_channel(rx), || panic!("not ended"))
            .collect()
            .await;
        assert_eq!(items.len(), 2);
        assert!(
            items[1]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("stopped before its end")
        );
    }

    #[test]
    fn release_drops_untaken_ends() {
        let live = LiveBlocks::default();
        let tx = live.sender(&block("a")).unwrap();
        live.release_query(&QueryId::parse("a").unwrap());
        assert!(tx.tx.is_closed());
        // A task of the released query that starts late gets no channel to block on.
        assert!(live.sender(&block("a")).is_none());
        assert!(live.sender(&block("b")).is_some());
    }

    #[tokio::test]
    async fn a_reader_that_fell_behind_reads_the_overflow_file_after_the_channel() {
        use datafusion::arrow::array::Int32Array;
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::arrow::ipc::writer::FileWriter;

        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int32, false)]));
        let batch = |values: Vec<i32>| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(Int32Array::from(values))],
            )
            .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overflow.arrow");
        let mut file = FileWriter::try_new(std::fs::File::create(&path).unwrap(), &schema).unwrap();
        file.write(&batch(vec![3, 4])).unwrap();
        file.write(&batch(vec![5])).unwrap();
        file.finish().unwrap();

        let live = LiveBlocks::default();
        let writer = live.sender(&block("c")).unwrap();
        writer
            .tx
            .send(Ok(LiveItem::Batch(batch(vec![1, 2]))))
            .await
            .unwrap();
        writer.overflow.complete(path);
        drop(writer);
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&ended);
        let reader = live.receiver(&block("c")).unwrap();
        let batches: Vec<RecordBatch> = live_batches(reader, move || {
            flag.store(true, std::sync::atomic::Ordering::SeqCst)
        })
        .try_collect()
        .await
        .unwrap();
        let values: Vec<i32> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int32Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(values, vec![1, 2, 3, 4, 5]);
        assert!(ended.load(std::sync::atomic::Ordering::SeqCst));
    }
}
