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
use datafusion::sql::sqlparser::ast::{
    CloseCursor, Declare, DeclareType, FetchDirection, Statement, Value,
};
use futures::StreamExt;

use crate::engine::QueryOutput;
use crate::error::{Error, Result};

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

/// A cursor statement, recognised before planning (DataFusion does not plan them).
pub(crate) enum CursorStatement {
    Declare {
        name: String,
        hold: bool,
        query: Box<Statement>,
    },
    Fetch {
        name: String,
        count: Option<usize>,
    },
    Close {
        name: Option<String>,
    },
}

impl CursorStatement {
    /// The cursor statement `statement` is, if it is one; unsupported forms are errors.
    pub(crate) fn recognise(statement: &Statement) -> Result<Option<Self>> {
        Ok(Some(match statement {
            Statement::Declare { stmts } => {
                let [
                    Declare {
                        names,
                        declare_type: Some(DeclareType::Cursor),
                        for_query: Some(query),
                        hold,
                        scroll,
                        ..
                    },
                ] = stmts.as_slice()
                else {
                    return Ok(None);
                };
                if *scroll == Some(true) {
                    return Err(Error::NotSupported(
                        "cursors are forward-only: SCROLL is not supported".into(),
                    ));
                }
                let [name] = names.as_slice() else {
                    return Ok(None);
                };
                CursorStatement::Declare {
                    name: name.value.clone(),
                    hold: *hold == Some(true),
                    query: Box::new(Statement::Query(query.clone())),
                }
            }
            Statement::Fetch {
                name, direction, ..
            } => {
                let count = match direction {
                    FetchDirection::Next => Some(1),
                    FetchDirection::Count { limit }
                    | FetchDirection::Forward { limit: Some(limit) } => Some(count(&limit.value)?),
                    FetchDirection::Forward { limit: None } => Some(1),
                    FetchDirection::All | FetchDirection::ForwardAll => None,
                    other => {
                        return Err(Error::NotSupported(format!(
                            "cursors are forward-only: FETCH {other} is not supported"
                        )));
                    }
                };
                CursorStatement::Fetch {
                    name: name.value.clone(),
                    count,
                }
            }
            Statement::Close { cursor } => CursorStatement::Close {
                name: match cursor {
                    CloseCursor::All => None,
                    CloseCursor::Specific { name } => Some(name.value.clone()),
                },
            },
            _ => return Ok(None),
        }))
    }
}

fn count(value: &Value) -> Result<usize> {
    match value {
        Value::Number(n, _) => n
            .parse()
            .map_err(|_| Error::Syntax(format!("invalid FETCH count {n}"))),
        other => Err(Error::Syntax(format!("invalid FETCH count {other}"))),
    }
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
    pub(crate) async fn fetch(&self, name: &str, count: Option<usize>) -> Result<QueryOutput> {
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
                        failure = Some(Error::from_datafusion(error));
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
        Ok(QueryOutput::Rows(Box::pin(RecordBatchStreamAdapter::new(
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
