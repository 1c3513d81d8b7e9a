//! A client's session: its DataFusion context (settings, current schema), its dialect, cursors
//! and prepared statements, and what stops its running statement (a cancel request, a timeout).
//! The session commands every dialect shares live here: transaction control and DataFusion's
//! own settings, of which those that belong to the server are refused.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::config::{ConfigOptions, ExtensionOptions};
use datafusion::error::DataFusionError;
use datafusion::execution::{FunctionRegistry, SendableRecordBatchStream};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use ember_planner::session::EmberOptions;
use futures::StreamExt;
use tokio::sync::watch;

pub mod dialect;
mod identity;

pub use identity::Identity;
pub(crate) use identity::functions as identity_functions;

use crate::cursors::Cursors;
use crate::error::{Error, Result};
use crate::output::{Command, Output};
use crate::statement::SessionCommand;
use dialect::ClientDialect;

/// One client's session.
pub struct ClientSession {
    /// Random; shown as `system.queries.session_id` and by `ember_session_id()`.
    pub(crate) id: String,
    /// The user the frontend authenticated (`system.queries.user_name`); the first configured
    /// superuser until set.
    pub(crate) user: String,
    /// The user and the current role, as SQL functions and system tables see them.
    pub(crate) identity: Arc<Identity>,
    pub(crate) ctx: SessionContext,
    pub(crate) dialect: Arc<dyn ClientDialect>,
    pub(crate) cursors: Cursors,
    /// The SQL-level prepared statements (`PREPARE`) by name, with their plans: for
    /// `DEALLOCATE ALL`, and for the privilege check each `EXECUTE` repeats.
    // A std Mutex: only touched briefly, never across an await.
    pub(crate) prepared: Mutex<HashMap<String, LogicalPlan>>,
    /// DataFusion options this session set itself: planning leaves them as they are.
    // A std Mutex: only touched briefly, never across an await.
    pub(crate) options_set: Mutex<HashSet<String>>,
    /// How long a statement may run (none: no limit).
    // A std Mutex: only touched briefly, never across an await.
    pub(crate) statement_timeout: Mutex<Option<Duration>>,
    /// Bumped by each cancel request; a running statement stops when it changes.
    pub(crate) cancels: watch::Sender<u64>,
    /// The options the session started with, for `RESET`.
    pub(crate) initial_options: ConfigOptions,
    /// The frontend it came through (`pgwire`, `flight-sql`; `embedded` until told).
    pub(crate) frontend: String,
    /// The open sessions the monitor counts; this one leaves it when dropped.
    pub(crate) open_sessions: Arc<crate::monitor::Sessions>,
    /// Its temporary tables, removed when it ends.
    pub(crate) temp: crate::temp::TempTables,
}

impl Drop for ClientSession {
    fn drop(&mut self) {
        self.open_sessions.closed(&self.id);
    }
}

/// What stops a running statement: a cancel request for its session, or its timeout.
pub struct StatementGuard {
    cancels: watch::Receiver<u64>,
    deadline: Option<tokio::time::Instant>,
}

impl StatementGuard {
    /// Resolves when the statement must stop, with the error to report.
    pub async fn interrupted(&mut self) -> Error {
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
    pub async fn run<T>(
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
    pub fn guard_stream(self, stream: SendableRecordBatchStream) -> SendableRecordBatchStream {
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
    /// This session, run for `user` (whom the frontend authenticated).
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self.identity.set_user(&self.user);
        self
    }

    /// The role whose privileges the session's statements have: the session user, or the role
    /// `SET ROLE` chose.
    pub fn current_role(&self) -> String {
        self.identity.current_role()
    }

    /// This session, opened through `frontend` (`pgwire`, `flight-sql`): the monitoring API
    /// and the metrics count its sessions and queries by it.
    pub fn with_frontend(mut self, frontend: &str) -> Self {
        self.frontend = frontend.to_string();
        self.open_sessions.opened(&self.id, frontend);
        self
    }

    /// The frontend the session came through.
    pub fn frontend(&self) -> &str {
        &self.frontend
    }

    /// The user the session runs for.
    pub fn user(&self) -> &str {
        &self.user
    }
    /// The session's id (`system.queries.session_id`, `ember_session_id()`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The session's DataFusion context: its settings and the catalog it sees.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Stops the statement running in this session, if any (a Postgres CancelRequest).
    pub fn cancel(&self) {
        self.cancels.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A guard for a statement starting now: earlier cancel requests do not count.
    pub fn statement_guard(&self) -> StatementGuard {
        let timeout = *lock(&self.statement_timeout);
        StatementGuard {
            cancels: self.cancels.subscribe(),
            deadline: timeout.map(|timeout| tokio::time::Instant::now() + timeout),
        }
    }

    /// How long a statement may run from now on (`None`: no limit).
    pub fn set_statement_timeout(&self, timeout: Option<Duration>) {
        *lock(&self.statement_timeout) = timeout.filter(|t| !t.is_zero());
    }

    /// The schema unqualified names resolve in.
    pub fn current_schema(&self) -> String {
        self.ctx
            .state()
            .config_options()
            .catalog
            .default_schema
            .clone()
    }

    /// Makes `schema` the one unqualified names resolve in.
    pub fn set_current_schema(&self, schema: &str) {
        self.update_options(|options| options.catalog.default_schema = schema.to_string());
    }

    /// Changes the session's options as DataFusion's `SET` does: functions whose behaviour
    /// follows the options (the time zone of `now()`, `to_timestamp()`) are refreshed too.
    fn update_options(&self, change: impl FnOnce(&mut ConfigOptions)) {
        let state = self.ctx.state_ref();
        let mut state = state.write();
        change(state.config_mut().options_mut());
        let options = state.config().options();
        let updated: Vec<_> = state
            .scalar_functions()
            .values()
            .filter_map(|udf| udf.inner().with_updated_config(options).map(Arc::new))
            .collect();
        for udf in updated {
            // Replacing a function of the same name cannot fail.
            let _ = state.register_udf(udf);
        }
    }

    /// Sets one DataFusion option (`datafusion.*`, or Ember's `ember.*`) back to the value the session started with.
    pub fn reset_option(&self, name: &str) {
        lock(&self.options_set).remove(name);
        let initial = &self.initial_options;
        self.update_options(|options| match name {
            "datafusion.catalog.default_schema" => {
                options.catalog.default_schema = initial.catalog.default_schema.clone()
            }
            "datafusion.execution.time_zone" => {
                options.execution.time_zone = initial.execution.time_zone.clone()
            }
            _ => {
                // Entries of Ember's options (an extension) are listed without their prefix.
                let key = name.strip_prefix("ember.").unwrap_or(name);
                let value = initial
                    .entries()
                    .into_iter()
                    .find(|e| e.key == key)
                    .and_then(|e| e.value);
                if let Some(value) = value {
                    // The value was valid when the session started.
                    let _ = options.set(name, &value);
                }
            }
        });
    }

    /// Every option back to the values the session started with (`RESET ALL`).
    pub fn reset_options(&self) {
        lock(&self.options_set).clear();
        self.update_options(|options| *options = self.initial_options.clone());
    }

    /// The columns cursor `name` returns (for a Describe before its FETCH runs).
    pub fn cursor_schema(&self, name: &str) -> Option<datafusion::arrow::datatypes::SchemaRef> {
        self.cursors.schema(name)
    }

    /// Whether the session set this DataFusion option itself.
    pub(crate) fn has_set(&self, name: &str) -> bool {
        lock(&self.options_set).contains(name)
    }

    /// A SQL-level `PREPARE name AS plan` succeeded.
    pub(crate) fn remember_prepared(&self, name: &str, plan: LogicalPlan) {
        lock(&self.prepared).insert(name.to_string(), plan);
    }

    /// Whether the session has a SQL-level prepared statement `name`.
    pub(crate) fn has_prepared(&self, name: &str) -> bool {
        lock(&self.prepared).contains_key(name)
    }

    /// The plan of the SQL-level prepared statement `name`.
    pub(crate) fn prepared_plan(&self, name: &str) -> Option<LogicalPlan> {
        lock(&self.prepared).get(name).cloned()
    }

    /// A SQL-level `DEALLOCATE name` succeeded.
    pub(crate) fn forget_prepared(&self, name: &str) {
        lock(&self.prepared).remove(name);
    }

    /// The names of every SQL-level prepared statement, forgotten.
    pub(crate) fn take_prepared(&self) -> Vec<String> {
        lock(&self.prepared).drain().map(|(name, _)| name).collect()
    }

    /// Whether the engine answers `command` itself (for any dialect): transaction control,
    /// `RESET ALL`, and the checks on DataFusion settings.
    pub(crate) fn engine_claims(command: &SessionCommand) -> bool {
        match command {
            SessionCommand::Transaction(_) => true,
            SessionCommand::Set { name, .. } => is_datafusion_option(name),
            SessionCommand::Reset { name } => name.as_deref().is_none_or(is_datafusion_option),
            SessionCommand::Show { name } => name.starts_with("ember."),
        }
    }

    /// The session commands the engine answers for every dialect. `Ok(None)`: DataFusion
    /// applies it (a `SET` of an option the session may change, once recorded).
    pub(crate) fn engine_command(&self, command: &SessionCommand) -> Result<Option<Output>> {
        match command {
            SessionCommand::Transaction(transaction) => {
                if !transaction.in_block_after() {
                    self.cursors.end_transaction();
                }
                Ok(Some(Output::done(Command::Transaction(*transaction))))
            }
            SessionCommand::Set { name, values } if is_datafusion_option(name) => {
                check_settable(name)?;
                if let [value] = values.as_slice() {
                    check_size(name, value)?;
                }
                lock(&self.options_set).insert(name.clone());
                Ok(None)
            }
            SessionCommand::Reset { name: None } => {
                self.reset_options();
                Ok(Some(Output::done(Command::Reset)))
            }
            SessionCommand::Show { name } if name.starts_with("ember.") => {
                // DataFusion's SHOW knows only its own options.
                let key = &name["ember.".len()..];
                let value = self
                    .ctx
                    .state()
                    .config_options()
                    .extensions
                    .get::<EmberOptions>()
                    .and_then(|options| {
                        options
                            .entries()
                            .into_iter()
                            .find(|e| e.key == key)
                            .and_then(|e| e.value)
                    })
                    .ok_or_else(|| {
                        Error::UndefinedObject(format!(
                            "unrecognized configuration parameter \"{name}\""
                        ))
                    })?;
                Ok(Some(Output::single_value(name, value)?))
            }
            SessionCommand::Reset { name: Some(name) } if name.starts_with("ember.") => {
                // DataFusion resets only its own options, not an extension's.
                self.reset_option(name);
                Ok(Some(Output::done(Command::Reset)))
            }
            SessionCommand::Reset { name: Some(name) } if is_datafusion_option(name) => {
                // DataFusion resets its own options (to their defaults); the session forgets
                // that it changed it.
                lock(&self.options_set).remove(name);
                Ok(None)
            }
            _ => Ok(None),
        }
    }
}

/// A std Mutex guard, recovering from poisoning (the values stay consistent: each update is a
/// single insert, remove or assignment).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Options DataFusion's session config holds: its own, and Ember's (`ember.`, an extension).
fn is_datafusion_option(name: &str) -> bool {
    name.starts_with("datafusion.") || name.starts_with("ember.")
}

/// Refuses a change of a server-level DataFusion option (`name` as DataFusion applies it).
pub(crate) fn check_settable(name: &str) -> Result<()> {
    let name = name.to_ascii_lowercase();
    if is_datafusion_option(&name) && !session_may_set(&name) {
        return Err(Error::PermissionDenied(format!(
            "permission denied to set {name}: it is a server-level setting (see the server configuration)"
        )));
    }
    Ok(())
}

/// DataFusion's and Ember's options that size vectors, buffers, reservations or task counts on
/// the coordinator and the executors, with the most a session may set them to.
const SIZING_OPTIONS: [(&str, u64); 9] = [
    ("datafusion.execution.target_partitions", 1024),
    ("ember.max_shuffle_partitions", 1024),
    ("datafusion.execution.batch_size", 1 << 20),
    ("datafusion.execution.planning_concurrency", 1024),
    ("datafusion.execution.meta_fetch_concurrency", 1024),
    ("datafusion.execution.minimum_parallel_output_files", 1024),
    (
        "datafusion.execution.max_buffered_batches_per_output_file",
        1024,
    ),
    ("datafusion.execution.sort_spill_reservation_bytes", 1 << 30),
    (
        "datafusion.execution.sort_in_place_threshold_bytes",
        1 << 30,
    ),
];

/// Refuses a value of a sizing option beyond its limit, and a skew factor below 1 (values that
/// do not parse are DataFusion's to refuse).
pub(crate) fn check_size(name: &str, value: &str) -> Result<()> {
    let name = name.to_ascii_lowercase();
    if name == "ember.adaptive_skew_factor" {
        let factor = value.trim().trim_matches('\'').parse::<f64>();
        if factor.is_ok_and(|f| f.is_nan() || f < 1.0) {
            return Err(Error::InvalidSettingValue(format!(
                "{name} must be at least 1, not {value}"
            )));
        }
        return Ok(());
    }
    let Some((_, limit)) = SIZING_OPTIONS.iter().find(|(option, _)| *option == name) else {
        return Ok(());
    };
    let value = value.trim().trim_matches('\'');
    let too_large = match value.parse::<u64>() {
        Ok(number) => number > *limit,
        // Digits beyond what a u64 holds.
        Err(_) => !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()),
    };
    if too_large {
        return Err(Error::LimitExceeded(format!(
            "{name} is limited to {limit}, not {value}"
        )));
    }
    Ok(())
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
        || name.starts_with("ember.")
}

/// A duration setting as PostgreSQL and Ember read it: a number of milliseconds, or a number
/// with a unit (`us`, `ms`, `s`, `min`, `h`, `d`).
pub fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
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
    let millis = number * factor;
    // Bounded: a client's absurd value is refused, not wrapped.
    (millis.is_finite() && (0.0..=1e15).contains(&millis))
        .then(|| Duration::from_micros((millis * 1000.0).round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_postgres_reads_them() {
        let ms = |v: &str| parse_duration(v).map(|d| d.as_millis());
        assert_eq!(ms("1500"), Some(1500));
        assert_eq!(ms("2s"), Some(2000));
        assert_eq!(ms("1min"), Some(60_000));
        assert_eq!(ms("250ms"), Some(250));
        assert_eq!(ms("soon"), None);
        assert_eq!(ms("1e400"), None);
        assert_eq!(ms("99999999999999999999d"), None);
    }

    #[test]
    fn settings_that_size_buffers_are_bounded() {
        assert!(check_size("datafusion.execution.batch_size", "8192").is_ok());
        assert!(check_size("datafusion.execution.target_partitions", "1024").is_ok());
        assert!(check_size("ember.max_shuffle_partitions", "1025").is_err());
        let error = check_size("DATAFUSION.EXECUTION.TARGET_PARTITIONS", "1000000000")
            .expect_err("too many partitions");
        assert!(error.to_string().contains("limited to 1024"), "{error}");
        assert!(check_size("datafusion.execution.batch_size", "99999999999999999999999").is_err());
        // Not a number: DataFusion says why.
        assert!(check_size("datafusion.execution.batch_size", "many").is_ok());
        assert!(check_size("datafusion.execution.time_zone", "99999999999").is_ok());
    }

    #[test]
    fn server_level_settings_are_refused() {
        assert!(session_may_set("datafusion.execution.target_partitions"));
        assert!(session_may_set("datafusion.optimizer.prefer_hash_join"));
        assert!(!session_may_set("datafusion.runtime.memory_limit"));
        assert!(!session_may_set("datafusion.runtime.temp_directory"));
        assert!(!session_may_set("datafusion.catalog.information_schema"));
    }

    #[test]
    fn the_engine_claims_only_shared_commands() {
        use crate::statement::TransactionCommand;
        let set = |name: &str| SessionCommand::Set {
            name: name.into(),
            values: vec!["1".into()],
        };
        assert!(ClientSession::engine_claims(&set(
            "datafusion.execution.batch_size"
        )));
        assert!(!ClientSession::engine_claims(&set("application_name")));
        assert!(ClientSession::engine_claims(&SessionCommand::Reset {
            name: None
        }));
        assert!(ClientSession::engine_claims(&SessionCommand::Transaction(
            TransactionCommand::Begin
        )));
        assert!(!ClientSession::engine_claims(&SessionCommand::Show {
            name: "server_version".into()
        }));
    }
}
