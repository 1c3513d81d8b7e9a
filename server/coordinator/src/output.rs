//! What a statement produced: rows, or a typed outcome (which command ran and how many rows it
//! wrote). Each frontend words outcomes its own way: pgwire as command tags (`INSERT 0 5`),
//! Flight SQL as a count of affected rows. A distributed query's rows come from its result
//! stage, whose progress a [`crate::ResultHandle`] reports as [`ResultEvent`]s.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

use ember_planner::shuffle::MapOutputLocation;

use crate::error::{Error, Result};
use crate::statement::TransactionCommand;

/// What running a statement produced.
pub enum Output {
    /// Rows, streamed as the final stage produces them.
    Rows(SendableRecordBatchStream),
    /// A command that returns no rows.
    Done(Outcome),
}

impl Output {
    /// An outcome that wrote no rows.
    pub fn done(command: Command) -> Self {
        Output::Done(Outcome {
            command,
            rows: None,
        })
    }

    /// An outcome that wrote `rows` rows.
    pub fn wrote(command: Command, rows: u64) -> Self {
        Output::Done(Outcome {
            command,
            rows: Some(rows),
        })
    }

    /// The same outcome, reported as `command`.
    pub(crate) fn retagged(self, command: Command) -> Self {
        match self {
            Output::Done(outcome) => Output::Done(Outcome { command, ..outcome }),
            other => other,
        }
    }

    /// One row with one text column `name` holding `value` (`SHOW name`).
    pub fn single_value(name: &str, value: String) -> Result<Self> {
        let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]));
        Self::batch(schema, vec![Arc::new(StringArray::from(vec![value]))])
    }

    /// The rows of one batch of `columns`.
    pub fn batch(schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<Self> {
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns)
            .map_err(|e| crate::Error::DataFusion(e.into()))?;
        Ok(Output::Rows(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::iter(vec![Ok(batch)]),
        ))))
    }
}

/// A command's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Which command ran.
    pub command: Command,
    /// Rows it wrote (inserted, copied, created), for commands that write rows.
    pub rows: Option<u64>,
}

/// The commands Ember runs that return no rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `INSERT` (also `INSERT OVERWRITE` and Flight SQL ingest into an existing table).
    Insert,
    /// `COPY (query) TO ...`.
    Copy,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `TRUNCATE`.
    Truncate,
    /// `MERGE`.
    Merge,
    /// `CREATE TABLE ... AS query` (and Flight SQL ingest into a new table).
    CreateTableAs,
    /// `CREATE [EXTERNAL] TABLE`.
    CreateTable,
    /// `CREATE VIEW`.
    CreateView,
    /// `CREATE SCHEMA`.
    CreateSchema,
    /// `CREATE INDEX`.
    CreateIndex,
    /// `CREATE FUNCTION`.
    CreateFunction,
    /// `DROP TABLE`.
    DropTable,
    /// `DROP VIEW`.
    DropView,
    /// `DROP SCHEMA`.
    DropSchema,
    /// `DROP FUNCTION`.
    DropFunction,
    /// `ALTER TABLE`.
    AlterTable,
    /// `ALTER VIEW`.
    AlterView,
    /// `COMMENT ON`.
    Comment,
    /// `CREATE ROLE`, `CREATE USER`.
    CreateRole,
    /// `ALTER ROLE`, `ALTER USER`.
    AlterRole,
    /// `DROP ROLE`, `DROP USER`.
    DropRole,
    /// `GRANT` (of privileges or of roles).
    Grant,
    /// `REVOKE` (of privileges or of roles).
    Revoke,
    /// `SET` (also `SET ROLE`, `RESET ROLE`).
    Set,
    /// `RESET`.
    Reset,
    /// `PREPARE`.
    Prepare,
    /// `EXECUTE`.
    Execute,
    /// `DEALLOCATE name`.
    Deallocate,
    /// `DEALLOCATE ALL`.
    DeallocateAll,
    /// `DECLARE name CURSOR FOR ...`.
    DeclareCursor,
    /// `CLOSE name` or `CLOSE ALL`.
    CloseCursor,
    /// Transaction control.
    Transaction(TransactionCommand),
}

/// What the scheduler reports about a query's result stage.
#[derive(Debug)]
pub enum ResultEvent {
    /// An attempt of a result partition's task was launched there: its rows can be streamed
    /// now. A later attempt of the same partition replaces an earlier one.
    Launched {
        /// The result partition.
        partition: usize,
        /// Where its task runs, and which attempt it is.
        location: MapOutputLocation,
    },
    /// That attempt of a result partition's task has succeeded: its stream ended complete.
    Committed {
        /// The result partition.
        partition: usize,
        /// The attempt that succeeded.
        attempt: u32,
    },
    /// A client has read that attempt of a result partition to its end, straight from its
    /// executor.
    Served {
        /// The result partition.
        partition: usize,
        /// The attempt that was read.
        attempt: u32,
    },
    /// The query failed (or was cancelled, or the coordinator is stopping).
    Failed(Error),
}
