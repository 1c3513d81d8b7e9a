//! `CommandStatementIngest` (ADBC's `adbc_ingest`): the client's Arrow batches, read and handed
//! to the engine's ingest (`ember_coordinator::ingest`), which appends them to a table or creates
//! one from them through the same distributed write and catalog commit as `INSERT` and
//! `CREATE TABLE AS`: all rows or none.

use std::sync::Arc;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{CommandStatementIngest, TableExistsOption, TableNotExistOption};
use datafusion::arrow::array::RecordBatch;
use datafusion::common::TableReference;
use ember_coordinator::Output;
use ember_coordinator::ingest::{IfTableExists, IfTableMissing, Ingest};
use futures::{StreamExt, TryStreamExt};
use tonic::Status;

use crate::auth::Caller;
use crate::service::EmberFlightSql;
use crate::status::status;

impl EmberFlightSql {
    pub(crate) async fn ingest(
        &self,
        caller: &Caller,
        command: CommandStatementIngest,
        data: PeekableFlightDataStream,
    ) -> Result<i64, Status> {
        if command.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let mut stream =
            FlightRecordBatchStream::new_from_flight_data(data.map_err(FlightError::from));
        let mut batches: Vec<RecordBatch> = vec![];
        let mut bytes = 0usize;
        while let Some(batch) = stream.next().await {
            let batch =
                batch.map_err(|e| Status::invalid_argument(format!("malformed data: {e}")))?;
            bytes = bytes.saturating_add(batch.get_array_memory_size());
            if bytes > self.max_ingest_bytes {
                return Err(Status::resource_exhausted(format!(
                    "an ingest may send at most {} bytes of Arrow data \
                     (coordinator.max_ingest_bytes); send it in parts",
                    self.max_ingest_bytes
                )));
            }
            batches.push(batch);
        }
        let schema = match (stream.schema(), batches.first()) {
            (Some(schema), _) => Arc::clone(schema),
            (None, Some(batch)) => batch.schema(),
            (None, None) => return Err(Status::invalid_argument("the ingest sent no schema")),
        };
        let table = match (&command.catalog, &command.schema) {
            (Some(catalog), Some(schema)) => {
                TableReference::full(catalog.as_str(), schema.as_str(), command.table.as_str())
            }
            (None, Some(schema)) => {
                TableReference::partial(schema.as_str(), command.table.as_str())
            }
            _ => TableReference::bare(command.table.as_str()),
        };
        let options = command.table_definition_options.unwrap_or_default();
        let if_exists = match TableExistsOption::try_from(options.if_exists) {
            Ok(TableExistsOption::Append) => IfTableExists::Append,
            Ok(TableExistsOption::Replace) => IfTableExists::Replace,
            _ => IfTableExists::Fail,
        };
        let if_missing = match TableNotExistOption::try_from(options.if_not_exist) {
            Ok(TableNotExistOption::Fail) => IfTableMissing::Fail,
            _ => IfTableMissing::Create,
        };
        let ingest = Ingest {
            table,
            schema,
            batches,
            if_exists,
            if_missing,
            temporary: command.temporary,
        };
        let output = self
            .engine
            .ingest(&caller.session.session, ingest)
            .await
            .map_err(|e| status(&e))?;
        match output {
            Output::Done(outcome) => Ok(crate::statements::affected_rows(&outcome)),
            Output::Rows(_) => Err(Status::internal("an ingest answered rows")),
        }
    }
}
