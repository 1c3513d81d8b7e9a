//! PostgreSQL as Postgres clients expect it of a session, brought to the engine as a
//! [`ClientDialect`]: sessions start with `pg_catalog` and the Postgres functions
//! ([`crate::pg_compat`]), statements parse in the PostgreSQL dialect, client catalog queries
//! are rewritten to plan on DataFusion, run-time `::regclass` casts look their names up, and the
//! session answers Postgres variables (`SET`/`SHOW`/`RESET application_name`, `search_path`,
//! `statement_timeout`, `server_version`, ...) and `current_setting()`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::config::ConfigOptions;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::sql::parser::Statement as DFStatement;
use ember_coordinator::session::parse_duration;
use ember_coordinator::{
    ClientDialect, ClientSession, Command, Error, Output, QueryEngine, Result, SessionCommand,
};
use ember_planner::session::DEFAULT_SCHEMA;

use crate::pg_compat::{self, PG_SERVER_VERSION, PG_SERVER_VERSION_NUM};

/// The Postgres dialect; built once per server from the engine's base state.
#[derive(Debug)]
pub struct PostgresDialect {
    state: SessionState,
}

impl PostgresDialect {
    /// `pg_catalog`, the Postgres functions and the PostgreSQL parser over the engine's state.
    pub async fn new(engine: &QueryEngine) -> Result<Self> {
        let mut state = pg_compat::postgres_state(&engine.base_state(), engine.comments()).await?;
        state.config_mut().options_mut().sql_parser.dialect =
            datafusion::config::Dialect::PostgreSQL;
        Ok(Self { state })
    }
}

/// The Postgres variables a session set (`application_name`, `DateStyle`, ...), kept in its
/// config extensions. DataFusion's options and the settings Ember maps onto them (`search_path`,
/// `timezone`) are not here.
#[derive(Debug, Default)]
struct Variables {
    // A std Mutex: only touched briefly, never across an await.
    values: Mutex<HashMap<String, String>>,
}

impl Variables {
    fn of(session: &ClientSession) -> Arc<Variables> {
        let state = session.context().state_ref();
        let existing = state.read().config().get_extension::<Variables>();
        match existing {
            Some(variables) => variables,
            None => {
                let variables = Arc::new(Variables::default());
                state
                    .write()
                    .config_mut()
                    .set_extension(Arc::clone(&variables));
                variables
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.values.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, name: &str) -> Option<String> {
        self.lock().get(name).cloned()
    }
}

/// Settings the engine maps onto DataFusion's options; the rest are Postgres variables.
const SEARCH_PATH: &str = "search_path";
const TIMEZONE: &str = "timezone";
const STATEMENT_TIMEOUT: &str = "statement_timeout";

/// The most bytes a Postgres variable's value may have: values are kept per session.
const MAX_VALUE_BYTES: usize = 4096;
/// The most Postgres variables one session may set.
const MAX_VARIABLES: usize = 256;

#[async_trait]
impl ClientDialect for PostgresDialect {
    fn name(&self) -> &str {
        "postgres"
    }

    fn session_state(&self) -> SessionState {
        self.state.clone()
    }

    fn init_session(&self, session: &ClientSession) {
        let variables = Variables::of(session);
        session
            .context()
            .register_udf(ScalarUDF::from(CurrentSetting {
                variables,
                signature: signature(),
            }));
    }

    fn rewrite(&self, sql: &str, statements: Vec<DFStatement>) -> Vec<DFStatement> {
        pg_compat::postgres_compatible(sql, statements)
    }

    fn claims(&self, command: &SessionCommand) -> bool {
        match command {
            SessionCommand::Set { name, .. } => !name.contains('.') && name != TIMEZONE,
            SessionCommand::Show { name } => show_variable(name).is_some(),
            SessionCommand::Reset { name } => name.as_deref().is_none_or(|n| !n.contains('.')),
            SessionCommand::Transaction(_) => false,
        }
    }

    fn session_command(&self, session: &ClientSession, command: &SessionCommand) -> Result<Output> {
        let variables = Variables::of(session);
        match command {
            SessionCommand::Set { name, values } => {
                set(session, &variables, name, values)?;
                Ok(Output::done(Command::Set))
            }
            SessionCommand::Show { name } => {
                let name = show_variable(name).unwrap_or(name.as_str());
                let value = show(session, &variables, name).ok_or_else(|| {
                    Error::UndefinedObject(format!(
                        "unrecognized configuration parameter \"{name}\""
                    ))
                })?;
                Output::single_value(name, value)
            }
            SessionCommand::Reset { name } => {
                reset(session, &variables, name.as_deref());
                Ok(Output::done(Command::Reset))
            }
            SessionCommand::Transaction(_) => Err(Error::NotSupported(
                "transaction control is the engine's".into(),
            )),
        }
    }

    async fn before_planning(
        &self,
        session: &ClientSession,
        statement: &mut DFStatement,
    ) -> Result<()> {
        // `::regclass` casts the catalog rewrites left (of computed names) look names up.
        if pg_compat::regclass::rewrite(statement) {
            pg_compat::regclass::register(session.context(), &session.current_schema()).await?;
        }
        Ok(())
    }
}

/// The column a `SHOW` of a Postgres variable answers in, for a Describe before it runs.
pub(crate) fn shown_column(command: &SessionCommand) -> Option<&str> {
    match command {
        SessionCommand::Show { name } => show_variable(name),
        _ => None,
    }
}

/// The variable a `SHOW` names that this dialect answers (DataFusion answers `SHOW ALL`, its
/// own options and `SHOW TIME ZONE`).
fn show_variable(name: &str) -> Option<&str> {
    // The SQL-standard spelling of a variable.
    if name == "transaction isolation level" {
        return Some("transaction_isolation");
    }
    // DataFusion's and Ember's settings are the engine's to show.
    let engine = name.starts_with("datafusion.") || name.starts_with("ember.");
    (!engine && name != "all" && !name.contains(' ')).then_some(name)
}

fn set(
    session: &ClientSession,
    variables: &Variables,
    name: &str,
    values: &[String],
) -> Result<()> {
    // `SET name TO DEFAULT` is `RESET name`.
    if let [value] = values
        && value.eq_ignore_ascii_case("default")
    {
        reset(session, variables, Some(name));
        return Ok(());
    }
    if name == SEARCH_PATH {
        let schema = values
            .iter()
            .map(|s| s.trim())
            .find(|s| !s.is_empty() && *s != "$user")
            .unwrap_or(DEFAULT_SCHEMA);
        session.set_current_schema(schema);
        return Ok(());
    }
    let value = values.join(", ");
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::LimitExceeded(format!(
            "the value of {name} is longer than {MAX_VALUE_BYTES} bytes"
        )));
    }
    let timeout = match name {
        STATEMENT_TIMEOUT => Some(parse_duration(&value).ok_or_else(|| {
            Error::InvalidSettingValue(format!(
                "invalid value for parameter \"{name}\": \"{value}\""
            ))
        })?),
        _ => None,
    };
    let mut set = variables.lock();
    if set.len() >= MAX_VARIABLES && !set.contains_key(name) {
        return Err(Error::LimitExceeded(format!(
            "a session sets at most {MAX_VARIABLES} variables"
        )));
    }
    set.insert(name.to_string(), value);
    drop(set);
    // Applied only once the value is kept: SHOW and the guard agree.
    if let Some(timeout) = timeout {
        session.set_statement_timeout(Some(timeout));
    }
    Ok(())
}

/// What `SHOW name` answers, `None` for a variable nobody set that Ember does not know.
fn show(session: &ClientSession, variables: &Variables, name: &str) -> Option<String> {
    setting(name, session.context().state().config_options(), variables)
}

/// The value of setting `name` under `options`: the search path and time zone from the
/// session's options, other variables as set or as PostgreSQL defaults them.
fn setting(name: &str, options: &ConfigOptions, variables: &Variables) -> Option<String> {
    match name {
        SEARCH_PATH => Some(options.catalog.default_schema.clone()),
        TIMEZONE => Some(
            options
                .execution
                .time_zone
                .clone()
                .filter(|z| !z.is_empty())
                .unwrap_or_else(|| "UTC".into()),
        ),
        _ => variables
            .get(name)
            .or_else(|| default_variable(name).map(str::to_string)),
    }
}

/// `RESET name`, or `RESET ALL` for `None`: back to the value the session started with.
fn reset(session: &ClientSession, variables: &Variables, name: Option<&str>) {
    match name {
        None => {
            variables.lock().clear();
            session.set_statement_timeout(None);
            session.reset_options();
        }
        Some(SEARCH_PATH) => session.reset_option("datafusion.catalog.default_schema"),
        Some(TIMEZONE) => session.reset_option("datafusion.execution.time_zone"),
        Some(name) => {
            if name == STATEMENT_TIMEOUT {
                session.set_statement_timeout(None);
            }
            variables.lock().remove(name);
        }
    }
}

/// Values `SHOW` reports for variables a session has not set, as PostgreSQL would.
fn default_variable(name: &str) -> Option<&'static str> {
    Some(match name {
        "server_version" => PG_SERVER_VERSION,
        "server_version_num" => PG_SERVER_VERSION_NUM,
        "server_encoding" | "client_encoding" => "UTF8",
        "datestyle" => "ISO, MDY",
        "integer_datetimes" => "on",
        "standard_conforming_strings" => "on",
        "intervalstyle" => "postgres",
        "transaction_isolation" | "default_transaction_isolation" => "read committed",
        "application_name" => "",
        "extra_float_digits" => "1",
        STATEMENT_TIMEOUT => "0",
        "default_table_access_method" => "heap",
        _ => return None,
    })
}

fn signature() -> Signature {
    Signature::one_of(
        vec![
            TypeSignature::Exact(vec![DataType::Utf8]),
            TypeSignature::Exact(vec![DataType::Utf8, DataType::Boolean]),
        ],
        Volatility::Stable,
    )
}

/// `current_setting(name[, missing_ok])` of a session: what `SHOW name` answers for the
/// Postgres variables (the search path and time zone from the session's options), NULL for
/// one it does not know.
#[derive(Debug)]
struct CurrentSetting {
    signature: Signature,
    variables: Arc<Variables>,
}

impl PartialEq for CurrentSetting {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.variables, &other.variables)
    }
}

impl Eq for CurrentSetting {}

impl std::hash::Hash for CurrentSetting {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        "current_setting".hash(state);
    }
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let names = ColumnarValue::values_to_arrays(&args.args[..1])?;
        let names = names[0].as_string::<i32>();
        let values = names
            .iter()
            .map(|name| {
                setting(
                    &name?.to_ascii_lowercase(),
                    &args.config_options,
                    &self.variables,
                )
            })
            .collect::<StringArray>();
        Ok(ColumnarValue::Array(Arc::new(values)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dialect_claims_postgres_variables_only() {
        let dialect = PostgresDialect {
            state: datafusion::execution::SessionStateBuilder::new().build(),
        };
        let show = |name: &str| SessionCommand::Show { name: name.into() };
        let set = |name: &str| SessionCommand::Set {
            name: name.into(),
            values: vec!["x".into()],
        };
        assert!(dialect.claims(&show("server_version")));
        assert!(dialect.claims(&show("transaction isolation level")));
        assert!(!dialect.claims(&show("all")));
        assert!(!dialect.claims(&show("time zone")));
        assert!(!dialect.claims(&show("datafusion.execution.batch_size")));
        assert!(dialect.claims(&set("application_name")));
        assert!(dialect.claims(&set("search_path")));
        // DataFusion sets its own options and the time zone (after the engine's checks).
        assert!(!dialect.claims(&set("timezone")));
        assert!(!dialect.claims(&set("datafusion.execution.batch_size")));
        assert!(dialect.claims(&SessionCommand::Reset { name: None }));
        assert!(!dialect.claims(&SessionCommand::Reset {
            name: Some("datafusion.execution.batch_size".into())
        }));
        assert_eq!(
            show_variable("transaction isolation level"),
            Some("transaction_isolation")
        );
    }
}
