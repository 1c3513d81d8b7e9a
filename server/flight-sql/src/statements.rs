//! Running statements for Flight SQL: a query's answer becomes a FlightInfo whose tickets read
//! it; DDL and DML report the rows they wrote.

use arrow_flight::{FlightDescriptor, FlightInfo};
use datafusion::arrow::datatypes::Schema;
use datafusion::logical_expr::LogicalPlan;
use tonic::Status;

use crate::auth::Caller;
use crate::results::flight_info;
use crate::service::EmberFlightSql;
use crate::status::status;
use ember_coordinator::{Outcome, Output, ParsedStatement, StartedQuery, is_query};

/// The rows a command reports to Flight SQL: those it wrote, 0 for DDL and session commands.
pub(crate) fn affected_rows(outcome: &Outcome) -> i64 {
    outcome
        .rows
        .map_or(0, |rows| i64::try_from(rows).unwrap_or(i64::MAX))
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
        let output = match plan {
            Some(plan) if is_query(&plan) => {
                let started = self
                    .engine
                    .start_query(session, &parsed, plan)
                    .await
                    .map_err(|e| status(&e))?;
                return self.describe_started(caller, started, descriptor).await;
            }
            Some(plan) => self.engine.execute_plan(session, &parsed, plan).await,
            None => self.engine.execute(session, &parsed).await,
        };
        match output.map_err(|e| status(&e))? {
            Output::Rows(stream) => self.results.hold(caller.user(), stream, descriptor),
            Output::Done(outcome) => flight_info(
                &Schema::empty(),
                descriptor,
                vec![],
                affected_rows(&outcome),
            ),
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
            StartedQuery::Distributed(handle) if self.proxy => {
                // The coordinator's relay, as for Postgres clients: one endpoint, here.
                self.results
                    .hold(caller.user(), handle.into_stream(), descriptor)
            }
            StartedQuery::Distributed(handle) => {
                self.results.live(caller.user(), handle, descriptor).await
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
        let output = match plan {
            Some(plan) => self.engine.execute_plan(session, &parsed, plan).await,
            None => self.engine.execute(session, &parsed).await,
        };
        match output.map_err(|e| status(&e))? {
            Output::Rows(mut stream) => {
                use futures::StreamExt;
                let mut rows = 0;
                while let Some(batch) = stream.next().await {
                    let batch = batch.map_err(crate::status::datafusion_status)?;
                    rows += batch.num_rows() as i64;
                }
                Ok(rows)
            }
            Output::Done(outcome) => Ok(affected_rows(&outcome)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_count_rows() {
        use ember_coordinator::Command;
        let outcome = |command, rows| Outcome { command, rows };
        assert_eq!(affected_rows(&outcome(Command::Insert, Some(42))), 42);
        assert_eq!(affected_rows(&outcome(Command::Copy, Some(7))), 7);
        assert_eq!(affected_rows(&outcome(Command::CreateTable, None)), 0);
        assert_eq!(affected_rows(&outcome(Command::Set, None)), 0);
        assert_eq!(
            affected_rows(&outcome(Command::Insert, Some(u64::MAX))),
            i64::MAX
        );
    }
}
