//! Prepared statements: planned once with their `$n` parameters (dataset and parameter schemas
//! reported at creation), parameters bound by DoPut as Arrow rows, run by GetFlightInfo or as
//! an update (once per bound row). Handles are random and belong to their user; closing one
//! does not touch the answers it already produced (their tickets stand alone).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::ActionCreatePreparedStatementResult;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::LogicalPlan;
use ember_protocol::credentials::{random_id, schema_to_bytes};
use futures::{StreamExt, TryStreamExt};
use tonic::Status;

use crate::auth::Caller;
use crate::status::status;
use ember_coordinator::Error;
use ember_coordinator::{ParsedStatement, returns_rows};

pub(crate) struct Prepared {
    user: String,
    pub(crate) parsed: ParsedStatement,
    /// The plan with placeholders; `None` for statements that run without planning ahead.
    plan: Option<LogicalPlan>,
    /// The type each parameter's value is cast to, `$1` first (`None`: as sent).
    parameter_types: Vec<Option<DataType>>,
    /// Rows of parameter values from the last bind; each row is one execution.
    // A std Mutex: replaced or cloned briefly, never across an await.
    bound: Mutex<Vec<Vec<ScalarValue>>>,
}

/// Every open prepared statement, by handle.
#[derive(Default)]
pub(crate) struct PreparedStatements {
    // A std Mutex: lookups, inserts and removals only.
    statements: Mutex<HashMap<Vec<u8>, Arc<Prepared>>>,
}

impl Prepared {
    /// The plans to run: one per bound row of parameters (the plan itself without any).
    pub(crate) fn bound_plans(&self) -> Result<Vec<Option<LogicalPlan>>, Status> {
        let Some(plan) = &self.plan else {
            return Ok(vec![None]);
        };
        let rows = self.bound.lock().map(|b| b.clone()).unwrap_or_default();
        if self.parameter_types.is_empty() || rows.is_empty() {
            if !self.parameter_types.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "the statement takes {} parameters; bind them first",
                    self.parameter_types.len()
                )));
            }
            return Ok(vec![Some(plan.clone())]);
        }
        rows.into_iter()
            .map(|values| {
                plan.clone()
                    .with_param_values(values)
                    .map(Some)
                    .map_err(|e| status(&Error::DataFusion(e)))
            })
            .collect()
    }

    /// The plan for a query: exactly one row of parameters (or none needed).
    pub(crate) fn query_plan(&self) -> Result<Option<LogicalPlan>, Status> {
        let mut plans = self.bound_plans()?;
        if plans.len() != 1 {
            return Err(Status::invalid_argument(format!(
                "a query runs with one row of parameters; {} were bound",
                plans.len()
            )));
        }
        Ok(plans.remove(0))
    }
}

impl PreparedStatements {
    /// Plans `parsed` and keeps it under a new handle.
    pub(crate) fn create(
        &self,
        caller: &Caller,
        parsed: ParsedStatement,
        plan: Option<LogicalPlan>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let parameter_types = match &plan {
            Some(plan) => parameter_types(plan).map_err(|e| status(&e))?,
            None => vec![],
        };
        let dataset = match &plan {
            Some(plan) if returns_rows(plan) => plan.schema().as_arrow().clone(),
            _ => Schema::empty(),
        };
        let parameters = Schema::new(
            parameter_types
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    Field::new(
                        format!("${}", i + 1),
                        t.clone().unwrap_or(DataType::Null),
                        true,
                    )
                })
                .collect::<Vec<_>>(),
        );
        let encode = |schema: &Schema| {
            schema_to_bytes(schema)
                .map_err(|e| Status::internal(format!("cannot encode a schema: {e}")))
        };
        let result = ActionCreatePreparedStatementResult {
            prepared_statement_handle: random_id(16).into(),
            dataset_schema: encode(&dataset)?.into(),
            parameter_schema: encode(&parameters)?.into(),
        };
        let prepared = Prepared {
            user: caller.user().to_string(),
            parsed,
            plan,
            parameter_types,
            bound: Mutex::new(vec![]),
        };
        self.lock().insert(
            result.prepared_statement_handle.to_vec(),
            Arc::new(prepared),
        );
        Ok(result)
    }

    /// The statement of `handle`, if it is the caller's.
    pub(crate) fn get(&self, caller: &Caller, handle: &[u8]) -> Result<Arc<Prepared>, Status> {
        match self.lock().get(handle) {
            Some(prepared) if prepared.user == caller.user() => Ok(Arc::clone(prepared)),
            _ => Err(Status::not_found(
                "no such prepared statement (closed, or never created)",
            )),
        }
    }

    pub(crate) fn close(&self, caller: &Caller, handle: &[u8]) -> Result<(), Status> {
        self.get(caller, handle)?;
        self.lock().remove(handle);
        Ok(())
    }

    /// Binds the parameter rows of a DoPut to `prepared`, at most [`MAX_PARAMETER_BYTES`] of
    /// them.
    pub(crate) async fn bind(
        &self,
        prepared: &Prepared,
        data: impl futures::Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static,
    ) -> Result<(), Status> {
        let mut stream =
            FlightRecordBatchStream::new_from_flight_data(data.map_err(FlightError::from));
        let mut batches: Vec<RecordBatch> = vec![];
        let mut bytes = 0usize;
        while let Some(batch) = stream.next().await {
            let batch = batch
                .map_err(|e| Status::invalid_argument(format!("malformed parameters: {e}")))?;
            bytes = bytes.saturating_add(batch.get_array_memory_size());
            if bytes > MAX_PARAMETER_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "bound parameters may take at most {MAX_PARAMETER_BYTES} bytes"
                )));
            }
            batches.push(batch);
        }
        let mut rows = vec![];
        for batch in &batches {
            if batch.num_columns() != prepared.parameter_types.len() {
                return Err(Status::invalid_argument(format!(
                    "the statement takes {} parameters, {} were bound",
                    prepared.parameter_types.len(),
                    batch.num_columns()
                )));
            }
            for row in 0..batch.num_rows() {
                let mut values = Vec::with_capacity(batch.num_columns());
                for (index, column) in batch.columns().iter().enumerate() {
                    let value = ScalarValue::try_from_array(column, row)
                        .map_err(|e| status(&Error::DataFusion(e)))?;
                    values.push(cast_parameter(
                        value,
                        prepared.parameter_types[index].as_ref(),
                        index,
                    )?);
                }
                rows.push(values);
            }
        }
        if let Ok(mut bound) = prepared.bound.lock() {
            *bound = rows;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Arc<Prepared>>> {
        self.statements.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The most Arrow data one DoPut may bind as parameters (rows of values, each run as one
/// execution of the statement).
pub(crate) const MAX_PARAMETER_BYTES: usize = 16 << 20;

/// A bound value cast to the type the plan expects for it.
fn cast_parameter(
    value: ScalarValue,
    target: Option<&DataType>,
    index: usize,
) -> Result<ScalarValue, Status> {
    match target {
        Some(target) if value.data_type() != *target && !value.is_null() => {
            value.cast_to(target).map_err(|e| {
                status(&Error::InvalidParameter(format!(
                    "invalid value for parameter ${}: {e}",
                    index + 1
                )))
            })
        }
        Some(target) if value.is_null() => {
            ScalarValue::try_from(target).map_err(|e| status(&Error::DataFusion(e)))
        }
        _ => Ok(value),
    }
}

/// The type DataFusion inferred for each parameter, `$1` first.
fn parameter_types(plan: &LogicalPlan) -> Result<Vec<Option<DataType>>, Error> {
    let types = plan.get_parameter_types()?;
    let position = |id: &str| id.strip_prefix('$')?.parse::<usize>().ok()?.checked_sub(1);
    let count = types
        .keys()
        .filter_map(|id| position(id))
        .map(|i| i + 1)
        .max()
        .unwrap_or(0);
    // Bounded before anything is sized by it (the engine refuses larger numbers too).
    if count > ember_coordinator::MAX_PARAMETERS {
        return Err(Error::Syntax(format!(
            "a statement takes at most {} parameters, not {count}",
            ember_coordinator::MAX_PARAMETERS
        )));
    }
    let mut out = vec![None; count];
    for (id, data_type) in types {
        if let Some(index) = position(&id) {
            out[index] = data_type;
        }
    }
    Ok(out)
}
