//! A client's session: its DataFusion context and the Postgres session commands (`SET`, `SHOW`)
//! that DataFusion does not know.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::config::ConfigOptions;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use tokio::sync::watch;

use crate::cursors::Cursors;
use crate::engine::QueryOutput;
use crate::error::{Error, Result};
use crate::pg_compat::{PG_SERVER_VERSION, PG_SERVER_VERSION_NUM};

/// One client's session: its DataFusion context and the Postgres-style variables it set.
pub struct ClientSession {
    /// Random; shown as `system.queries.session_id` and by `ember_session_id()`.
    pub(crate) id: String,
    pub(crate) ctx: SessionContext,
    /// Variables this session set: Postgres ones (application_name, ...) shown by SHOW, and
    /// DataFusion options, which the context applies as well.
    // A std Mutex: only touched briefly, never across an await.
    pub(crate) variables: Arc<Mutex<HashMap<String, String>>>,
    pub(crate) cursors: Cursors,
    /// Names of the SQL-level prepared statements (`PREPARE`), for `DEALLOCATE ALL`.
    // A std Mutex: only touched briefly, never across an await.
    pub(crate) prepared: Mutex<HashSet<String>>,
    /// Bumped by each cancel request; a running statement stops when it changes.
    pub(crate) cancels: watch::Sender<u64>,
    /// The options the session started with, for `RESET`.
    pub(crate) initial_options: ConfigOptions,
    /// A Postgres-wire session: Postgres clients' SQL is rewritten to plan on DataFusion.
    pub(crate) postgres: bool,
}

/// What stops a running statement: a cancel request for its session, or its
/// `statement_timeout`.
pub(crate) struct StatementGuard {
    cancels: watch::Receiver<u64>,
    deadline: Option<tokio::time::Instant>,
}

impl StatementGuard {
    /// Resolves when the statement must stop, with the error to report.
    pub(crate) async fn interrupted(&mut self) -> Error {
        let timeout = async {
            match self.deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = self.cancels.changed() => match changed {
                Ok(()) => Error::Cancelled,
                // The session is gone; nobody will read the answer anyway.
                Err(_) => std::future::pending().await,
            },
            () = timeout => Error::StatementTimeout,
        }
    }

    /// Runs `work` unless the statement is interrupted first.
    pub(crate) async fn run<T>(
        &mut self,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::select! {
            result = work => result,
            error = self.interrupted() => Err(error),
        }
    }

    /// `stream`, ending with the interruption's error if the statement is interrupted while
    /// rows still flow. Dropping the inner stream releases the query and stops its tasks.
    pub(crate) fn guard_stream(
        self,
        stream: SendableRecordBatchStream,
    ) -> SendableRecordBatchStream {
        let schema = stream.schema();
        let rows = futures::stream::unfold(Some((stream, self)), |state| async move {
            let (mut stream, mut guard) = state?;
            tokio::select! {
                item = stream.next() => item.map(|item| (item, Some((stream, guard)))),
                error = guard.interrupted() => {
                    drop(stream);
                    Some((Err(DataFusionError::External(Box::new(error))), None))
                }
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, rows))
    }
}

impl ClientSession {
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Stops the statement running in this session, if any (a Postgres CancelRequest).
    pub fn cancel(&self) {
        self.cancels.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A SQL-level `PREPARE name` succeeded.
    pub(crate) fn remember_prepared(&self, name: &str) {
        let mut prepared = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        prepared.insert(name.to_string());
    }

    /// The names of every SQL-level prepared statement, forgotten.
    pub(crate) fn take_prepared(&self) -> Vec<String> {
        let mut prepared = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        prepared.drain().collect()
    }

    /// A guard for a statement starting now: earlier cancel requests do not count.
    pub(crate) fn statement_guard(&self) -> StatementGuard {
        let timeout = self
            .variables
            .lock()
            .ok()
            .and_then(|v| v.get("statement_timeout").cloned())
            .and_then(|v| parse_duration_ms(&v))
            .filter(|ms| *ms > 0);
        StatementGuard {
            cancels: self.cancels.subscribe(),
            deadline: timeout
                .map(|ms| tokio::time::Instant::now() + std::time::Duration::from_millis(ms)),
        }
    }

    pub(crate) fn has_variable(&self, name: &str) -> bool {
        self.variables
            .lock()
            .map(|v| v.contains_key(name))
            .unwrap_or(false)
    }

    pub(crate) fn current_schema(&self) -> String {
        self.ctx
            .state()
            .config_options()
            .catalog
            .default_schema
            .clone()
    }

    /// Whether [`Self::session_command`] looks at `text` (a `SET`, or a `SHOW` it answers):
    /// such statements are never planned ahead of running.
    pub(crate) fn is_session_command(&self, text: &str) -> bool {
        parse_set(text).is_some()
            || parse_reset(text).is_some()
            || show_name(text).is_some()
            || transaction_tag(text).is_some()
    }

    /// Handles the Postgres session commands DataFusion does not know, and refuses changes to
    /// server-level settings.
    pub(crate) fn session_command(&self, text: &str) -> Result<Option<QueryOutput>> {
        if let Some((tag, opens)) = transaction_tag(text) {
            return Ok(Some(if opens {
                QueryOutput::TransactionStart(tag.into())
            } else {
                self.cursors.end_transaction();
                QueryOutput::TransactionEnd(tag.into())
            }));
        }
        if let Some(name) = parse_reset(text) {
            self.reset(name.as_deref());
            return Ok(Some(QueryOutput::Command("RESET".into())));
        }
        if let Some(name) = parse_reset_datafusion(text) {
            // DataFusion resets its own options; the session forgets that it changed it.
            if let Ok(mut vars) = self.variables.lock() {
                vars.remove(&name);
            }
            return Ok(None);
        }
        let Some((name, value)) = parse_set(text) else {
            return Ok(self.show(text));
        };
        if name.starts_with("datafusion.") && !session_may_set(&name) {
            return Err(Error::PermissionDenied(format!(
                "permission denied to set {name}: it is a server-level setting (see the server configuration)"
            )));
        }
        Ok(self.set(name, value))
    }

    /// `RESET name` (or `RESET ALL` for `None`): back to the value the session started with.
    fn reset(&self, name: Option<&str>) {
        if let Ok(mut vars) = self.variables.lock() {
            match name {
                Some(name) => {
                    vars.remove(name);
                }
                None => vars.clear(),
            }
        }
        let state = self.ctx.state_ref();
        let mut state = state.write();
        let options = state.config_mut().options_mut();
        match name {
            None => *options = self.initial_options.clone(),
            Some("search_path") => {
                options.catalog.default_schema = self.initial_options.catalog.default_schema.clone()
            }
            Some("timezone") => {
                options.execution.time_zone = self.initial_options.execution.time_zone.clone()
            }
            Some(name) if name.starts_with("datafusion.") => {
                let initial = self
                    .initial_options
                    .entries()
                    .into_iter()
                    .find(|e| e.key == name)
                    .and_then(|e| e.value);
                if let Some(value) = initial {
                    let _ = options.set(name, &value);
                }
            }
            Some(_) => {}
        }
    }

    fn set(&self, name: String, value: String) -> Option<QueryOutput> {
        if name == "search_path" {
            let schema = value
                .split(',')
                .map(|s| s.trim().trim_matches('"').trim_matches('\''))
                .find(|s| !s.is_empty() && *s != "$user")
                .unwrap_or(ember_planner::session::DEFAULT_SCHEMA)
                .to_string();
            let state = self.ctx.state_ref();
            state
                .write()
                .config_mut()
                .options_mut()
                .catalog
                .default_schema = schema;
            return Some(QueryOutput::Command("SET".into()));
        }
        if name.starts_with("datafusion.") || name == "timezone" {
            if let Ok(mut vars) = self.variables.lock() {
                vars.insert(name, value);
            }
            // DataFusion applies and validates it (`timezone` is its execution.time_zone).
            return None;
        }
        if let Ok(mut vars) = self.variables.lock() {
            vars.insert(name, value.trim_matches('\'').to_string());
        }
        Some(QueryOutput::Command("SET".into()))
    }

    fn show(&self, text: &str) -> Option<QueryOutput> {
        let name = show_name(text)?;
        let name = name.as_str();
        let value = if name == "search_path" {
            self.current_schema()
        } else if name == "timezone" {
            let state = self.ctx.state();
            let zone = state.config_options().execution.time_zone.clone();
            zone.filter(|z| !z.is_empty())
                .unwrap_or_else(|| "UTC".into())
        } else {
            let known = self.variables.lock().ok()?.get(name).cloned();
            known.or_else(|| default_variable(name).map(str::to_string))?
        };
        let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(StringArray::from(vec![value]))],
        )
        .ok()?;
        Some(QueryOutput::Rows(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::iter(vec![Ok(batch)]),
        ))))
    }
}

/// Transaction control: (command tag, whether it opens a block). Ember has no multi-statement
/// transactions: every statement commits when it completes, as in autocommit mode. `BEGIN` and
/// `COMMIT` are accepted so that clients which wrap their work in a transaction block run
/// unchanged; `ROLLBACK` closes the block but cannot undo statements that completed in it.
/// Savepoints are accepted likewise.
pub(crate) fn transaction_tag(text: &str) -> Option<(&'static str, bool)> {
    let lower = text.trim().trim_end_matches(';').to_ascii_lowercase();
    let mut words = lower.split_whitespace();
    let first = words.next()?;
    let second = words.next();
    Some(match (first, second) {
        ("begin", _) => ("BEGIN", true),
        ("start", Some("transaction")) => ("START TRANSACTION", true),
        ("commit" | "end", _) => ("COMMIT", false),
        ("rollback" | "abort", Some("to")) => ("ROLLBACK", true),
        ("rollback" | "abort", _) => ("ROLLBACK", false),
        ("savepoint", _) => ("SAVEPOINT", true),
        ("release", _) => ("RELEASE", true),
        _ => return None,
    })
}

/// The variable of a `SHOW` that Ember answers itself (DataFusion answers `SHOW ALL` and its
/// own options).
pub(crate) fn show_name(text: &str) -> Option<String> {
    let lower = text.trim().to_ascii_lowercase();
    let name = lower
        .strip_prefix("show ")?
        .trim()
        .trim_end_matches(';')
        .trim();
    // The SQL-standard spelling of a variable (DataFusion answers `SHOW TIME ZONE` itself).
    let name = match name
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .as_str()
    {
        "transaction isolation level" => "transaction_isolation".to_string(),
        other => other.to_string(),
    };
    if name.starts_with("datafusion.") || name == "all" || name.contains(' ') {
        return None;
    }
    Some(name)
}

/// DataFusion options a session may change: they shape its own plans and tasks. Runtime
/// options (memory limit, spill directory, caches) and catalog options belong to the server.
fn session_may_set(name: &str) -> bool {
    const SESSION_PREFIXES: [&str; 5] = [
        "datafusion.execution.",
        "datafusion.optimizer.",
        "datafusion.explain.",
        "datafusion.sql_parser.",
        "datafusion.format.",
    ];
    SESSION_PREFIXES.iter().any(|p| name.starts_with(p))
        || name == "datafusion.catalog.default_schema"
}

/// Values `SHOW` reports for variables a session has not set, as Postgres would.
fn default_variable(name: &str) -> Option<&'static str> {
    Some(match name {
        "server_version" => PG_SERVER_VERSION,
        "server_version_num" => PG_SERVER_VERSION_NUM,
        "server_encoding" | "client_encoding" => "UTF8",
        "datestyle" => "ISO, MDY",
        "timezone" => "UTC",
        "integer_datetimes" => "on",
        "standard_conforming_strings" => "on",
        "intervalstyle" => "postgres",
        "transaction_isolation" | "default_transaction_isolation" => "read committed",
        "application_name" => "",
        "extra_float_digits" => "1",
        "statement_timeout" => "0",
        "default_table_access_method" => "heap",
        _ => return None,
    })
}

/// `current_setting(name[, missing_ok])` of a session: what `SHOW name` answers for the
/// Postgres variables (the search path and time zone from the session's options), NULL for
/// one it does not know.
#[derive(Debug)]
pub(crate) struct CurrentSetting {
    signature: Signature,
    variables: Arc<Mutex<HashMap<String, String>>>,
}

impl CurrentSetting {
    pub(crate) fn new(variables: Arc<Mutex<HashMap<String, String>>>) -> Self {
        Self {
            signature: Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![DataType::Utf8]),
                    TypeSignature::Exact(vec![DataType::Utf8, DataType::Boolean]),
                ],
                Volatility::Stable,
            ),
            variables,
        }
    }

    fn value(&self, name: &str, options: &ConfigOptions) -> Option<String> {
        match name {
            "search_path" => Some(options.catalog.default_schema.clone()),
            "timezone" => Some(
                options
                    .execution
                    .time_zone
                    .clone()
                    .filter(|z| !z.is_empty())
                    .unwrap_or_else(|| "UTC".into()),
            ),
            _ => {
                let set = self.variables.lock().ok()?.get(name).cloned();
                set.or_else(|| default_variable(name).map(str::to_string))
            }
        }
    }
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
            .map(|name| self.value(&name?.to_ascii_lowercase(), &args.config_options))
            .collect::<StringArray>();
        Ok(ColumnarValue::Array(Arc::new(values)))
    }
}

/// A duration setting as Postgres reads it: a number of milliseconds, or a number with a unit
/// (`us`, `ms`, `s`, `min`, `h`, `d`), quoted or not.
fn parse_duration_ms(value: &str) -> Option<u64> {
    let value = value.trim().trim_matches('\'').trim();
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" => 1.0,
        "us" => 0.001,
        "s" => 1000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return None,
    };
    Some((number * factor).round() as u64)
}

/// `RESET name` of a Postgres variable → `Some(Some(name))`, `RESET ALL` → `Some(None)`.
/// Dotted names (`datafusion.*`) are DataFusion's options: DataFusion resets them, and refuses
/// namespaces it does not have.
fn parse_reset(text: &str) -> Option<Option<String>> {
    let name = reset_name(text)?;
    if name.contains('.') {
        return None;
    }
    Some((name != "all").then_some(name))
}

fn parse_reset_datafusion(text: &str) -> Option<String> {
    reset_name(text).filter(|name| name.contains('.'))
}

fn reset_name(text: &str) -> Option<String> {
    let lower = text.trim().trim_end_matches(';').to_ascii_lowercase();
    let name = lower.strip_prefix("reset ")?.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    Some(name.to_string())
}

/// `SET [SESSION|LOCAL] name {=|TO} value` → (lower-case name, value text).
fn parse_set(text: &str) -> Option<(String, String)> {
    let trimmed = text.trim().trim_end_matches(';');
    let lower = trimmed.to_ascii_lowercase();
    let mut rest = lower.strip_prefix("set ")?.trim_start();
    let mut offset = trimmed.len() - rest.len();
    for prefix in ["session ", "local "] {
        if let Some(r) = rest.strip_prefix(prefix) {
            offset += rest.len() - r.trim_start().len();
            rest = r.trim_start();
        }
    }
    let name_end = rest.find(|c: char| c.is_whitespace() || c == '=')?;
    let name = rest[..name_end].to_string();
    let after = &trimmed[offset + name_end..];
    let after_lower = after.trim_start().to_ascii_lowercase();
    let value = if after_lower.starts_with('=') {
        after.trim_start()[1..].trim()
    } else if after_lower.starts_with("to ") {
        after.trim_start()[3..].trim()
    } else {
        return None;
    };
    Some((name, value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_statements_are_recognised() {
        assert_eq!(
            parse_set("SET search_path TO tpch"),
            Some(("search_path".into(), "tpch".into()))
        );
        assert_eq!(
            parse_set("set session application_name = 'psql'"),
            Some(("application_name".into(), "'psql'".into()))
        );
        assert_eq!(parse_set("SELECT 1"), None);
    }

    #[test]
    fn session_commands_are_recognised() {
        assert_eq!(transaction_tag("BEGIN"), Some(("BEGIN", true)));
        assert_eq!(
            transaction_tag("start transaction read only"),
            Some(("START TRANSACTION", true))
        );
        assert_eq!(transaction_tag("commit;"), Some(("COMMIT", false)));
        assert_eq!(
            transaction_tag("ROLLBACK TO SAVEPOINT a"),
            Some(("ROLLBACK", true))
        );
        assert_eq!(transaction_tag("rollback"), Some(("ROLLBACK", false)));
        assert_eq!(transaction_tag("select 1"), None);
        assert_eq!(parse_reset("RESET ALL"), Some(None));
        assert_eq!(
            parse_reset("reset statement_timeout;"),
            Some(Some("statement_timeout".into()))
        );
        assert_eq!(
            show_name("SHOW TRANSACTION ISOLATION LEVEL").as_deref(),
            Some("transaction_isolation")
        );
        assert_eq!(show_name("show time zone"), None);
        assert_eq!(parse_reset("reset datafusion.execution.time_zone"), None);
        assert_eq!(show_name("SHOW datafusion.execution.batch_size"), None);
    }

    #[test]
    fn durations_read_as_postgres_reads_them() {
        assert_eq!(parse_duration_ms("1500"), Some(1500));
        assert_eq!(parse_duration_ms("'2s'"), Some(2000));
        assert_eq!(parse_duration_ms("1min"), Some(60_000));
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("soon"), None);
    }

    #[test]
    fn server_level_settings_are_refused() {
        assert!(session_may_set("datafusion.execution.target_partitions"));
        assert!(session_may_set("datafusion.optimizer.prefer_hash_join"));
        assert!(!session_may_set("datafusion.runtime.memory_limit"));
        assert!(!session_may_set("datafusion.runtime.temp_directory"));
        assert!(!session_may_set("datafusion.catalog.information_schema"));
    }
}
