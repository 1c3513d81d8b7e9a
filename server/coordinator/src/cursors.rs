//! SQL cursors (`DECLARE name CURSOR FOR query`, `FETCH`, `CLOSE`), as psycopg's server-side
//! cursors and psql's `FETCH_COUNT` use them. A cursor holds the query's result stream and
//! hands out rows as they are fetched, so a large result never sits in the coordinator's
//! memory; the query keeps running on the executors, throttled by the stream's back-pressure.
//! Cursors are forward-only (`NO SCROLL`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

use crate::error::{Error, Result};
use crate::output::Output;

struct Cursor {
    stream: SendableRecordBatchStream,
    /// Rows of the last batch not fetched yet.
    pending: Option<RecordBatch>,
    /// `WITH HOLD`: survives the end of the transaction block that declared it.
    hold: bool,
}

/// The open cursors of one session.
#[derive(Default)]
pub(crate) struct Cursors {
    // A std Mutex, never held across an await: a FETCH takes its cursor out while it reads.
    open: Mutex<HashMap<String, Cursor>>,
}

impl Cursors {
    pub(crate) fn declare(
        &self,
        name: String,
        hold: bool,
        stream: SendableRecordBatchStream,
    ) -> Result<()> {
        let mut open = self.open.lock().map_err(|_| poisoned())?;
        if open.contains_key(&name) {
            return Err(Error::DuplicateCursor(format!(
                "cursor \"{name}\" already exists"
            )));
        }
        open.insert(
            name,
            Cursor {
                stream,
                pending: None,
                hold,
            },
        );
        Ok(())
    }

    /// The columns cursor `name` returns, for a Describe before its FETCH runs.
    pub(crate) fn schema(&self, name: &str) -> Option<SchemaRef> {
        let open = self.open.lock().ok()?;
        open.get(name).map(|c| c.stream.schema())
    }

    /// The next `count` rows (all remaining ones when `None`) of cursor `name`.
    pub(crate) async fn fetch(&self, name: &str, count: Option<usize>) -> Result<Output> {
        let mut cursor = {
            let mut open = self.open.lock().map_err(|_| poisoned())?;
            open.remove(name).ok_or_else(|| {
                Error::UndefinedCursor(format!("cursor \"{name}\" does not exist"))
            })?
        };
        let schema = cursor.stream.schema();
        let mut wanted = count.unwrap_or(usize::MAX);
        let mut batches = vec![];
        let mut failure = None;
        while wanted > 0 {
            let batch = match cursor.pending.take() {
                Some(batch) => batch,
                None => match cursor.stream.next().await {
                    Some(Ok(batch)) => batch,
                    Some(Err(error)) => {
                        failure = Some(Error::from(error));
                        break;
                    }
                    None => break,
                },
            };
            if batch.num_rows() > wanted {
                batches.push(batch.slice(0, wanted));
                cursor.pending = Some(batch.slice(wanted, batch.num_rows() - wanted));
                wanted = 0;
            } else {
                wanted -= batch.num_rows();
                batches.push(batch);
            }
        }
        if let Some(error) = failure {
            // The query failed: the cursor is gone with it.
            return Err(error);
        }
        if let Ok(mut open) = self.open.lock() {
            open.insert(name.to_string(), cursor);
        }
        Ok(Output::Rows(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&schema),
            futures::stream::iter(batches.into_iter().map(Ok)),
        ))))
    }

    /// Closes cursor `name`, or all of them; closing stops their queries.
    pub(crate) fn close(&self, name: Option<&str>) -> Result<()> {
        let mut open = self.open.lock().map_err(|_| poisoned())?;
        match name {
            None => open.clear(),
            Some(name) => {
                open.remove(name).ok_or_else(|| {
                    Error::UndefinedCursor(format!("cursor \"{name}\" does not exist"))
                })?;
            }
        }
        Ok(())
    }

    /// The transaction block ended: cursors declared without `WITH HOLD` close, as in
    /// PostgreSQL.
    pub(crate) fn end_transaction(&self) {
        if let Ok(mut open) = self.open.lock() {
            open.retain(|_, cursor| cursor.hold);
        }
    }
}

fn poisoned() -> Error {
    Error::Unavailable("the session's cursors are unusable after a panic".into())
}
