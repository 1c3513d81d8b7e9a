//! Live blocks: the result stage's output handed from a running task to a reader (the coordinator's
//! Flight fetch) through a bounded channel, so answers stream while they are computed.
//!
//! Either side may arrive first; the first to ask creates the channel. Back-pressure reaches the
//! task: it pauses when the client reads slowly. A task that finishes sends [`LiveItem::End`]
//! last, so a reader can tell a complete partition from one whose task was stopped (cancelled,
//! its query released) and dropped the channel half-way.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use datafusion::arrow::array::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use futures::Stream;
use tokio::sync::mpsc;

use super::ShuffleBlock;
use crate::ids::QueryId;

/// Batches in flight per live block.
const LIVE_CAPACITY: usize = 4;

/// What goes through a live channel: the partition's batches, then its end.
#[derive(Debug)]
pub enum LiveItem {
    Batch(RecordBatch),
    /// The task produced its whole partition.
    End,
}

pub type LiveSender = mpsc::Sender<Result<LiveItem>>;
pub type LiveReceiver = mpsc::Receiver<Result<LiveItem>>;

/// The batches of a live channel. It ends cleanly only after [`LiveItem::End`]; a channel
/// closed before that (its task stopped early) ends with an error, never as a short answer.
/// `on_end` runs once the end has been read.
pub fn live_batches(
    receiver: LiveReceiver,
    on_end: impl FnOnce() + Send + 'static,
) -> impl Stream<Item = Result<RecordBatch>> + Send + 'static {
    futures::stream::unfold(Some((receiver, Some(on_end))), |state| async move {
        let (mut receiver, mut on_end) = state?;
        match receiver.recv().await {
            Some(Ok(LiveItem::Batch(batch))) => Some((Ok(batch), Some((receiver, on_end)))),
            Some(Ok(LiveItem::End)) => {
                if let Some(on_end) = on_end.take() {
                    on_end();
                }
                None
            }
            Some(Err(error)) => Some((Err(error), None)),
            None => Some((
                Err(DataFusionError::Execution(
                    "the task computing this result partition stopped before its end".into(),
                )),
                None,
            )),
        }
    })
}

#[derive(Debug)]
struct Entry {
    tx: Option<LiveSender>,
    rx: Option<LiveReceiver>,
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
    pub fn sender(&self, block: &ShuffleBlock) -> Option<LiveSender> {
        self.take(block, |e| e.tx.take())
    }

    /// The reading end for `block` (once).
    pub fn receiver(&self, block: &ShuffleBlock) -> Option<LiveReceiver> {
        self.take(block, |e| e.rx.take())
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
        let (tx, mut rx) = (tx.unwrap(), rx.unwrap());
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
        let items: Vec<_> = live_batches(rx, move || {
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
        let items: Vec<_> = live_batches(rx, || panic!("not ended")).collect().await;
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
        assert!(tx.is_closed());
        // A task of the released query that starts late gets no channel to block on.
        assert!(live.sender(&block("a")).is_none());
        assert!(live.sender(&block("b")).is_some());
    }
}
