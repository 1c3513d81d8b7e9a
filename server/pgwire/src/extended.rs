//! The extended query protocol: Parse plans the statement once (its `$n` parameters typed by
//! the client or inferred by DataFusion), Bind supplies values in text or binary, Describe
//! reports parameter and result types, Execute runs it and streams rows into the portal, which
//! pgwire hands out `max_rows` at a time (portal suspension, as pgJDBC's fetch size uses).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Cast, Expr, LogicalPlan, TryCast};
use futures::Sink;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::ExtendedQueryHandler;
use pgwire::api::results::{
    DescribePortalResponse, DescribeStatementResponse, FieldInfo, Response,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use rust_decimal::Decimal;

use ember_coordinator::{
    ClientSession, CursorStatement, Error, MAX_PARAMETERS, ParsedStatement, QueryEngine,
    SessionCommand, returns_rows,
};

use crate::{PgHandler, Sessions, encode, error_info, response};

/// A statement as Parse left it.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    parsed: ParsedStatement,
    /// The plan with placeholders; `None` for statements that run without planning ahead.
    plan: Option<LogicalPlan>,
    /// Postgres type of each parameter, `$1` first.
    parameter_types: Vec<Type>,
    /// Arrow type each parameter's value is cast to (what DataFusion inferred or the client
    /// declared).
    parameter_data_types: Vec<Option<DataType>>,
    /// PostgreSQL's names of the result columns the statement leaves unnamed.
    column_names: Option<Vec<Option<String>>>,
}

pub(crate) struct EmberQueryParser {
    engine: Arc<QueryEngine>,
    sessions: Arc<Sessions>,
}

impl EmberQueryParser {
    pub(crate) fn new(engine: Arc<QueryEngine>, sessions: Arc<Sessions>) -> Self {
        Self { engine, sessions }
    }
}

fn user_error(error: &Error) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(error)))
}

#[async_trait]
impl QueryParser for EmberQueryParser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let session = self.sessions.of(client);
        let mut statements = self
            .engine
            .parse(&session, sql)
            .map_err(|e| user_error(&e))?;
        let parsed = match statements.len() {
            0 => return Ok(None),
            1 => statements.remove(0),
            _ => {
                return Err(user_error(&Error::Syntax(
                    "cannot insert multiple commands into a prepared statement".into(),
                )));
            }
        };
        let plan = self
            .engine
            .plan(&session, &parsed)
            .await
            .map_err(|e| user_error(&e))?;
        let inferred: HashMap<usize, DataType> = match &plan {
            Some(plan) => inferred_parameter_types(plan).map_err(|e| user_error(&e))?,
            None => HashMap::new(),
        };
        let count = inferred
            .keys()
            .map(|i| i + 1)
            .max()
            .unwrap_or(0)
            .max(types.len());
        // Bounded before anything is sized by it (the engine refuses larger numbers too).
        if count > MAX_PARAMETERS {
            return Err(user_error(&Error::Syntax(format!(
                "a statement takes at most {MAX_PARAMETERS} parameters, not {count}"
            ))));
        }
        let writes = matches!(plan, Some(LogicalPlan::Dml(_)));
        let mut parameter_types = Vec::with_capacity(count);
        let mut parameter_data_types = Vec::with_capacity(count);
        for i in 0..count {
            let declared = types
                .get(i)
                .cloned()
                .flatten()
                .filter(|t| *t != Type::UNKNOWN && t.oid() != 0);
            // A type the client declared wins, as in PostgreSQL (`%s * 2` with a float stays a
            // float); the plan is coerced again once the values are in. Values written to
            // columns (INSERT ... VALUES ($1), UPDATE ... SET c = $1) take the column's type,
            // as PostgreSQL's assignment casts do: the write was planned for it.
            let declared_type = declared.as_ref().and_then(data_type_of);
            let data_type = if writes {
                inferred.get(&i).cloned().or(declared_type)
            } else {
                declared_type.or_else(|| inferred.get(&i).cloned())
            };
            let pg_type = declared.unwrap_or_else(|| match &data_type {
                Some(data_type) => encode::pg_type(data_type),
                // Nothing says what it is: Postgres would call it unknown and take text.
                None => Type::TEXT,
            });
            parameter_types.push(pg_type);
            parameter_data_types.push(data_type);
        }
        Ok(Some(Prepared {
            column_names: parsed
                .ast()
                .and_then(crate::column_names::postgres_column_names),
            parsed,
            plan,
            parameter_types,
            parameter_data_types,
        }))
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(statement.parameter_types.clone())
    }

    fn get_result_schema(
        &self,
        statement: &Prepared,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        // The handler's Describe also knows session state (a FETCH's cursor); this is what
        // the statement alone tells.
        let format = column_format.unwrap_or(&Format::UnifiedText);
        Ok(match &statement.plan {
            Some(plan) if returns_rows(plan) => encode::fields(
                plan.schema().as_arrow(),
                format,
                statement.column_names.as_deref(),
            ),
            _ => vec![],
        })
    }
}

/// Parameter types DataFusion inferred, by position; a parameter it left untyped but that is
/// cast (`$1::int`) takes the type of the cast, as PostgreSQL infers it.
fn inferred_parameter_types(plan: &LogicalPlan) -> Result<HashMap<usize, DataType>, Error> {
    let position = |id: &str| id.strip_prefix('$')?.parse::<usize>().ok()?.checked_sub(1);
    let mut types: HashMap<usize, DataType> = plan
        .get_parameter_types()?
        .into_iter()
        .filter_map(|(id, data_type)| Some((position(&id)?, data_type?)))
        .collect();
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::Cast(Cast { expr, field }) | Expr::TryCast(TryCast { expr, field }) = e
                    && let Expr::Placeholder(placeholder) = expr.as_ref()
                    && let Some(index) = position(&placeholder.id)
                {
                    types
                        .entry(index)
                        .or_insert_with(|| field.data_type().clone());
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(types)
}

/// The columns a statement returns, as far as known before it runs.
fn result_fields(
    statement: &Prepared,
    format: Option<&Format>,
    session: &ClientSession,
) -> Vec<FieldInfo> {
    let format = format.unwrap_or(&Format::UnifiedText);
    match &statement.plan {
        Some(plan) if returns_rows(plan) => encode::fields(
            plan.schema().as_arrow(),
            format,
            statement.column_names.as_deref(),
        ),
        Some(_) => vec![],
        None => {
            // `SHOW name` of a Postgres variable answers one text column, `FETCH` the columns
            // of its cursor; other statements that are not planned ahead return no rows.
            if let Some(command @ SessionCommand::Show { .. }) = statement.parsed.session_command()
                && let Some(name) = crate::dialect::shown_column(&command)
            {
                let schema = Schema::new(vec![Field::new(name, DataType::Utf8, false)]);
                return encode::fields(&schema, format, None);
            }
            match statement.parsed.cursor() {
                Some(
                    CursorStatement::Fetch { name, .. } | CursorStatement::Declare { name, .. },
                ) => session
                    .cursor_schema(name)
                    .map(|schema| encode::fields(&schema, format, None))
                    .unwrap_or_default(),
                // `DESCRIBE HISTORY`, `VACUUM`, ...: rows of a fixed shape.
                _ => match statement.parsed.delta().and_then(|d| d.result_schema()) {
                    Some(schema) => encode::fields(&schema, format, None),
                    None => vec![],
                },
            }
        }
    }
}

/// The Arrow type of a value the client declared as `pg_type`.
fn data_type_of(pg_type: &Type) -> Option<DataType> {
    Some(match *pg_type {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DataType::Utf8,
        Type::BYTEA => DataType::Binary,
        Type::DATE => DataType::Date32,
        Type::TIME => DataType::Time64(TimeUnit::Microsecond),
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        _ => return None,
    })
}

/// The value of parameter `index` of `portal`, decoded as the client sent it and cast to the
/// type the plan expects.
fn parameter_value(
    portal: &Portal<Prepared>,
    index: usize,
    pg_type: &Type,
    target: Option<&DataType>,
) -> PgWireResult<ScalarValue> {
    let value = match *pg_type {
        Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(index, pg_type)?),
        Type::INT2 => ScalarValue::Int16(portal.parameter::<i16>(index, pg_type)?),
        Type::INT4 => ScalarValue::Int32(portal.parameter::<i32>(index, pg_type)?),
        Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(index, pg_type)?),
        Type::OID => ScalarValue::Int64(portal.parameter::<u32>(index, pg_type)?.map(i64::from)),
        Type::FLOAT4 => ScalarValue::Float32(portal.parameter::<f32>(index, pg_type)?),
        Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(index, pg_type)?),
        Type::NUMERIC => match portal.parameter::<Decimal>(index, pg_type)? {
            Some(d) => ScalarValue::Decimal128(Some(d.mantissa()), 38, d.scale() as i8),
            None => ScalarValue::Decimal128(None, 38, 0),
        },
        Type::BYTEA => ScalarValue::Binary(portal.parameter::<Vec<u8>>(index, pg_type)?),
        Type::DATE => ScalarValue::Date32(
            portal
                .parameter::<NaiveDate>(index, pg_type)?
                .map(|d| (d - NaiveDate::default()).num_days() as i32),
        ),
        Type::TIME => ScalarValue::Time64Microsecond(
            portal.parameter::<NaiveTime>(index, pg_type)?.map(|t| {
                i64::from(t.num_seconds_from_midnight()) * 1_000_000
                    + i64::from(t.nanosecond() / 1000)
            }),
        ),
        Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<NaiveDateTime>(index, pg_type)?
                .map(|t| t.and_utc().timestamp_micros()),
            None,
        ),
        Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<DateTime<FixedOffset>>(index, pg_type)?
                .map(|t| t.timestamp_micros()),
            Some("+00:00".into()),
        ),
        // Text and every type without a native decoder arrive as their text form.
        _ => ScalarValue::Utf8(portal.parameter::<String>(index, &Type::TEXT)?),
    };
    let Some(target) = target else {
        return Ok(value);
    };
    if value.data_type() == *target {
        return Ok(value);
    }
    if let (ScalarValue::Utf8(Some(text)), DataType::Date32) = (&value, target)
        && let Some(date) = text.split_whitespace().next()
        && let Ok(date) = NaiveDate::parse_from_str(date, "%Y-%m-%d")
    {
        // pgJDBC sends a java.sql.Date untyped as `1995-09-16 +00`; PostgreSQL reads the date.
        return Ok(ScalarValue::Date32(Some(
            (date - NaiveDate::default()).num_days() as i32,
        )));
    }
    value.cast_to(target).map_err(|e| {
        user_error(&Error::InvalidParameter(format!(
            "invalid value for parameter ${}: {e}",
            index + 1
        )))
    })
}

/// The statement's plan with the portal's parameter values in place; `None` for statements
/// that are not planned ahead.
fn bound_plan(portal: &Portal<Prepared>) -> PgWireResult<Option<LogicalPlan>> {
    let statement = &portal.statement.statement;
    let Some(plan) = &statement.plan else {
        return Ok(None);
    };
    if statement.parameter_types.is_empty() {
        return Ok(Some(plan.clone()));
    }
    let mut values = Vec::with_capacity(statement.parameter_types.len());
    for (index, pg_type) in statement.parameter_types.iter().enumerate() {
        let target = statement.parameter_data_types[index].as_ref();
        values.push(parameter_value(portal, index, pg_type, target)?);
    }
    plan.clone()
        .with_param_values(values)
        .map(Some)
        .map_err(|e| user_error(&Error::DataFusion(e)))
}

#[async_trait]
impl ExtendedQueryHandler for PgHandler {
    type Statement = Prepared;
    type QueryParser = EmberQueryParser;

    fn query_parser(&self) -> Arc<EmberQueryParser> {
        Arc::clone(&self.parser)
    }

    async fn do_describe_statement<C>(
        &self,
        client: &mut C,
        target: &StoredStatement<Prepared>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.engine.monitor().metrics().request(crate::FRONTEND);
        let session = self.session(client);
        let statement = &target.statement;
        Ok(DescribeStatementResponse::new(
            statement.parameter_types.clone(),
            result_fields(statement, None, &session),
        ))
    }

    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // With the values bound, `SELECT $1` has the type of its value.
        let session = self.session(client);
        let format = &portal.result_column_format;
        Ok(DescribePortalResponse::new(match bound_plan(portal)? {
            Some(plan) if returns_rows(&plan) => encode::fields(
                plan.schema().as_arrow(),
                format,
                portal.statement.statement.column_names.as_deref(),
            ),
            _ => result_fields(&portal.statement.statement, Some(format), &session),
        }))
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = self.session(client);
        let statement = &portal.statement.statement;
        if let Some(refused) = crate::failed_transaction(client, &statement.parsed) {
            return Ok(refused);
        }
        let output = match bound_plan(portal)? {
            None => self.engine.execute(&session, &statement.parsed).await,
            Some(plan) => {
                self.engine
                    .execute_plan(&session, &statement.parsed, plan)
                    .await
            }
        };
        // A declared cursor is also a portal of the protocol: psycopg describes its columns
        // with a Describe of the portal named after the cursor.
        match statement.parsed.cursor() {
            Some(CursorStatement::Declare { name, .. }) if output.is_ok() => {
                let stored = StoredStatement::new(name.clone(), statement.clone(), vec![]);
                let cursor = Portal::new_cursor(name.clone(), Arc::new(stored));
                client.portal_store().put_portal(Arc::new(cursor));
            }
            Some(CursorStatement::Close { name: Some(name) }) => {
                client.portal_store().rm_portal(name);
            }
            _ => {}
        }
        Ok(match output {
            Ok(output) => response(
                output,
                &portal.result_column_format,
                statement.column_names.as_deref(),
            ),
            Err(error) => crate::error_response(&error),
        })
    }
}
