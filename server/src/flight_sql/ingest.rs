//! `CommandStatementIngest` (ADBC's `adbc_ingest`): Arrow batches appended to a managed table,
//! or a new table created from them (keeping their Arrow types), through the same distributed
//! write and catalog commit as `INSERT` and `CREATE TABLE AS`: all rows or none.

use std::sync::Arc;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{CommandStatementIngest, TableExistsOption, TableNotExistOption};
use datafusion::arrow::array::RecordBatch;
use datafusion::catalog::MemTable;
use datafusion::common::TableReference;
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{
    CreateMemoryTable, DdlStatement, Expr, LogicalPlan, LogicalPlanBuilder, cast, col, lit,
};
use futures::{StreamExt, TryStreamExt};
use tonic::Status;

use super::auth::Caller;
use super::service::EmberFlightSql;
use super::status::status;
use crate::error::Error;

fn df_status(error: datafusion::error::DataFusionError) -> Status {
    status(&Error::DataFusion(error))
}

impl EmberFlightSql {
    pub(crate) async fn ingest(
        &self,
        caller: &Caller,
        command: CommandStatementIngest,
        data: PeekableFlightDataStream,
    ) -> Result<i64, Status> {
        if command.temporary {
            return Err(Status::unimplemented("temporary tables are not supported"));
        }
        if command.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let mut stream =
            FlightRecordBatchStream::new_from_flight_data(data.map_err(FlightError::from));
        let mut batches: Vec<RecordBatch> = vec![];
        while let Some(batch) = stream.next().await {
            batches
                .push(batch.map_err(|e| Status::invalid_argument(format!("malformed data: {e}")))?);
        }
        let schema = match (stream.schema(), batches.first()) {
            (Some(schema), _) => Arc::clone(schema),
            (None, Some(batch)) => batch.schema(),
            (None, None) => return Err(Status::invalid_argument("the ingest sent no schema")),
        };
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
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
        let if_exists = TableExistsOption::try_from(options.if_exists)
            .unwrap_or(TableExistsOption::Unspecified);
        let if_not_exist = TableNotExistOption::try_from(options.if_not_exist)
            .unwrap_or(TableNotExistOption::Unspecified);
        let session = &caller.session.session;
        let ctx = session.context();
        let source = MemTable::try_new(Arc::clone(&schema), vec![batches]).map_err(df_status)?;
        let scan = LogicalPlanBuilder::scan("ingest", provider_as_source(Arc::new(source)), None)
            .and_then(LogicalPlanBuilder::build)
            .map_err(df_status)?;
        let exists = ctx.table_exist(table.clone()).map_err(df_status)?;
        let plan = if exists {
            let op = match if_exists {
                TableExistsOption::Append => InsertOp::Append,
                TableExistsOption::Replace => InsertOp::Overwrite,
                TableExistsOption::Fail | TableExistsOption::Unspecified => {
                    return Err(Status::already_exists(format!(
                        "table {table} already exists"
                    )));
                }
            };
            let target = ctx.table_provider(table.clone()).await.map_err(df_status)?;
            let input = conform(scan, &target.schema()).map_err(df_status)?;
            LogicalPlanBuilder::insert_into(input, table.clone(), provider_as_source(target), op)
                .and_then(LogicalPlanBuilder::build)
                .map_err(df_status)?
        } else {
            if if_not_exist == TableNotExistOption::Fail {
                return Err(Status::not_found(format!("table {table} does not exist")));
            }
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(CreateMemoryTable {
                name: table.clone(),
                constraints: Default::default(),
                input: Arc::new(scan),
                if_not_exists: false,
                or_replace: false,
                column_defaults: vec![],
                temporary: false,
            }))
        };
        let text = format!("INGEST INTO {table}");
        self.engine
            .execute_plan(session, &text, plan)
            .await
            .map_err(|e| status(&e))?;
        Ok(rows as i64)
    }
}

/// The ingested columns matched to the table's by name and cast to its types; a column the
/// data lacks is NULL.
fn conform(
    scan: LogicalPlan,
    target: &datafusion::arrow::datatypes::Schema,
) -> datafusion::error::Result<LogicalPlan> {
    let input = Arc::clone(scan.schema());
    let exprs: Vec<Expr> = target
        .fields()
        .iter()
        .map(|field| {
            let value = if input.has_column_with_unqualified_name(field.name()) {
                col(datafusion::common::Column::new_unqualified(field.name()))
            } else {
                lit(datafusion::common::ScalarValue::Null)
            };
            cast(value, field.data_type().clone()).alias(field.name())
        })
        .collect();
    LogicalPlanBuilder::from(scan).project(exprs)?.build()
}
