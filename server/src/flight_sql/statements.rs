//! Running statements for Flight SQL: a query's answer becomes a FlightInfo whose tickets read
//! it; DDL and DML report the rows they wrote.

use std::sync::Arc;

use arrow_flight::{FlightDescriptor, FlightInfo};
use datafusion::arrow::datatypes::Schema;
use datafusion::logical_expr::LogicalPlan;
use tonic::Status;

use super::auth::Caller;
use super::results::flight_info;
use super::service::EmberFlightSql;
use super::status::status;
use crate::engine::{ParsedStatement, QueryOutput, StartedQuery, is_query};

/// The rows a command tag reports (`INSERT 0 5`, `COPY 7`), 0 for DDL.
pub(crate) fn affected_rows(tag: &str) -> i64 {
    let mut words = tag.split_whitespace();
    match words.next() {
        Some("INSERT" | "COPY" | "UPDATE" | "DELETE" | "SELECT") => {
            words.last().and_then(|n| n.parse().ok()).unwrap_or(0)
        }
        _ => 0,
    }
}

impl EmberFlightSql {
    /// The one statement of `sql`, parsed in the caller's session.
    pub(crate) fn parse_one(&self, caller: &Caller, sql: &str) -> Result<ParsedStatement, Status> {
        let mut statements = self
            .engine
            .parse(&caller.session.session, sql)
            .map_err(|e| status(&e))?;
        match statements.len() {
            1 => Ok(statements.remove(0)),
            0 => Err(Status::invalid_argument(
                "the request contains no statement",
            )),
            n => Err(Status::invalid_argument(format!(
                "the request contains {n} statements; send one at a time"
            ))),
        }
    }

    /// Runs a statement (planned ahead or not) and describes its answer: a query's rows behind
    /// the FlightInfo's endpoints, a command's count in `total_records` and no endpoint.
    pub(crate) async fn run_for_info(
        &self,
        caller: &Caller,
        parsed: ParsedStatement,
        plan: Option<LogicalPlan>,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let session = &caller.session.session;
        let sql = parsed.sql();
        let output = match plan {
            Some(plan) if is_query(&plan) => {
                let started = self
                    .engine
                    .start_query(session, &sql, plan)
                    .await
                    .map_err(|e| status(&e))?;
                return self.describe_started(caller, started, descriptor).await;
            }
            Some(plan) => self.engine.execute_plan(session, &sql, plan).await,
            None => self.engine.execute(session, parsed).await,
        };
        match output.map_err(|e| status(&e))? {
            QueryOutput::Rows(stream) => self.results.hold(caller.user(), stream, descriptor),
            QueryOutput::Command(tag)
            | QueryOutput::TransactionStart(tag)
            | QueryOutput::TransactionEnd(tag) => {
                flight_info(&Schema::empty(), descriptor, vec![], affected_rows(&tag))
            }
        }
    }

    async fn describe_started(
        &self,
        caller: &Caller,
        started: StartedQuery,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        match started {
            StartedQuery::Local(stream) => self.results.hold(caller.user(), stream, descriptor),
            StartedQuery::Distributed(query) if self.proxy => {
                // The coordinator's relay, as for Postgres clients: one endpoint, here.
                let stream = crate::results::result_stream(
                    query.schema,
                    query.query_id,
                    query.stage_id,
                    query.num_partitions,
                    query.events_rx,
                    Arc::clone(self.engine.fetcher()),
                    self.engine.scheduler().clone(),
                );
                self.results.hold(caller.user(), stream, descriptor)
            }
            StartedQuery::Distributed(query) => {
                self.results
                    .live(&self.engine, caller.user(), query, descriptor)
                    .await
            }
        }
    }

    /// Runs a statement for its effect; returns the rows it wrote (0 for DDL). A query's rows
    /// are read and dropped.
    pub(crate) async fn run_update(
        &self,
        caller: &Caller,
        parsed: ParsedStatement,
        plan: Option<LogicalPlan>,
    ) -> Result<i64, Status> {
        let session = &caller.session.session;
        let sql = parsed.sql();
        let output = match plan {
            Some(plan) => self.engine.execute_plan(session, &sql, plan).await,
            None => self.engine.execute(session, parsed).await,
        };
        match output.map_err(|e| status(&e))? {
            QueryOutput::Rows(mut stream) => {
                use futures::StreamExt;
                let mut rows = 0;
                while let Some(batch) = stream.next().await {
                    let batch = batch.map_err(super::status::datafusion_status)?;
                    rows += batch.num_rows() as i64;
                }
                Ok(rows)
            }
            QueryOutput::Command(tag)
            | QueryOutput::TransactionStart(tag)
            | QueryOutput::TransactionEnd(tag) => Ok(affected_rows(&tag)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_tags_count_rows() {
        assert_eq!(affected_rows("INSERT 0 42"), 42);
        assert_eq!(affected_rows("COPY 7"), 7);
        assert_eq!(affected_rows("CREATE TABLE"), 0);
        assert_eq!(affected_rows("SET"), 0);
    }
}
