//! The query engine, the coordinator's facade for frontends: sessions, statements parsed once
//! into [`ParsedStatement`]s, planned with DataFusion and run — commands here, queries on the
//! executors (`query.rs`). Frontends call it and nothing behind it.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::CatalogProvider;
use datafusion::common::ScalarValue;
use datafusion::common::TableReference;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{
    ColumnarValue, DdlStatement, Deallocate as DeallocatePlan, LogicalPlan, Statement, Volatility,
    WriteOp, create_udf,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::planner::object_name_to_table_reference;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use ember_planner::paths::AllowedPaths;
use ember_planner::session::{DEFAULT_CATALOG, EmberOptions};
use ember_protocol::FlightShuffleFetcher;

use crate::catalog::CatalogStore;
use crate::error::{Error, Result};
use crate::output::{Command, Output};
use crate::scheduler::SchedulerHandle;
use crate::session::dialect::{ClientDialect, DataFusionDialect};
use crate::session::{ClientSession, check_settable, check_size};
use crate::statement::CursorStatement;
use crate::statement::{Deallocate, Parsed, ParsedStatement};

/// Plans and runs statements; holds the shared catalog.
pub struct QueryEngine {
    pub(crate) base_state: SessionState,
    /// Ember's own SQL, for sessions that ask for no other dialect.
    native: Arc<dyn ClientDialect>,
    pub(crate) scheduler: SchedulerHandle,
    pub(crate) fetcher: Arc<FlightShuffleFetcher>,
    pub(crate) catalog: Arc<CatalogStore>,
    pub(crate) allowed_paths: AllowedPaths,
    open_sessions: Arc<crate::monitor::Sessions>,
    monitor: crate::monitor::Monitor,
}

impl QueryEngine {
    pub(crate) fn new(
        mut base_state: SessionState,
        scheduler: SchedulerHandle,
        fetcher: Arc<FlightShuffleFetcher>,
        catalog: Arc<CatalogStore>,
        allowed_paths: AllowedPaths,
        monitor: crate::monitor::Monitor,
    ) -> Result<Self> {
        ember_planner::functions::register(&mut base_state)?;
        Ok(Self {
            open_sessions: Arc::clone(monitor.sessions()),
            monitor,
            native: Arc::new(DataFusionDialect::new(base_state.clone())),
            base_state,
            scheduler,
            fetcher,
            catalog,
            allowed_paths,
        })
    }

    /// The state every session derives from: the server's catalog, Ember's functions and the
    /// distributed planner settings. Dialects build their sessions' state from it.
    pub fn base_state(&self) -> SessionState {
        self.base_state.clone()
    }

    /// What the coordinator is doing (queries, stages, tasks, executors, metrics), and the
    /// cancelling of a query by id: for the web UI, the REST API and `/metrics`.
    pub fn monitor(&self) -> &crate::monitor::Monitor {
        &self.monitor
    }

    /// Roles and privileges: who may log in, and what each role may read and write.
    pub fn access(&self) -> &Arc<crate::access::AccessControl> {
        self.catalog.access()
    }

    /// Comments on tables, views and columns (`COMMENT ON`), for frontends' catalogs.
    pub fn comments(&self) -> Arc<crate::comments::Comments> {
        Arc::clone(self.catalog.comments())
    }

    /// Ember's one catalog, shared by all sessions.
    pub(crate) fn base_catalog(&self) -> Option<Arc<dyn CatalogProvider>> {
        self.base_state.catalog_list().catalog(DEFAULT_CATALOG)
    }

    /// Waits until at least `executors` executors are registered and alive.
    pub async fn wait_for_executors(
        &self,
        executors: usize,
        timeout: std::time::Duration,
    ) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let alive = self
                .scheduler
                .snapshot(crate::scheduler::SnapshotRequest::executors())
                .await?
                .alive_executors();
            if alive >= executors {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Unavailable(format!(
                    "{alive} of {executors} executors alive within {timeout:?}"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// A new session in Ember's own SQL (DataFusion's), sharing the server's catalog.
    pub fn new_session(&self) -> ClientSession {
        self.new_session_with(Arc::clone(&self.native))
    }

    /// A new session speaking `dialect`.
    pub fn new_session_with(&self, dialect: Arc<dyn ClientDialect>) -> ClientSession {
        let id = crate::catalog::to_hex(&ember_protocol::credentials::random_id(8));
        let ctx = SessionContext::new_with_state(dialect.session_state());
        // `ember_session_id()`: the id `system.queries.session_id` shows for this session's
        // queries, so a client can follow its own.
        let value = ScalarValue::Utf8(Some(id.clone()));
        ctx.register_udf(create_udf(
            "ember_session_id",
            vec![],
            DataType::Utf8,
            Volatility::Stable,
            Arc::new(move |_| Ok(ColumnarValue::Scalar(value.clone()))),
        ));
        // Until a frontend says who it authenticated, a session is the server's own.
        let user = self.catalog.access().bootstrap_superuser().to_string();
        let identity = Arc::new(crate::session::Identity::new(&user));
        ctx.state_ref()
            .write()
            .config_mut()
            .set_extension(Arc::clone(&identity));
        for function in crate::session::identity_functions(&identity, self.catalog.access()) {
            ctx.register_udf(function);
        }
        let session = ClientSession {
            id,
            user,
            identity,
            initial_options: ctx.state().config_options().as_ref().clone(),
            ctx,
            dialect: Arc::clone(&dialect),
            cursors: Default::default(),
            prepared: Default::default(),
            options_set: Default::default(),
            statement_timeout: Default::default(),
            cancels: tokio::sync::watch::channel(0).0,
            frontend: crate::monitor::EMBEDDED.to_string(),
            open_sessions: Arc::clone(&self.open_sessions),
            temp: Default::default(),
        };
        self.open_sessions
            .opened(&session.id, crate::monitor::EMBEDDED);
        dialect.init_session(&session);
        session
    }

    /// Splits `sql` into statements, in the session's SQL dialect
    /// (`datafusion.sql_parser.dialect`) and rewritten by its [`ClientDialect`]; `?`
    /// placeholders are numbered `$1`, `$2`, ...
    pub fn parse(&self, session: &ClientSession, sql: &str) -> Result<Vec<ParsedStatement>> {
        let options = session.ctx.state().config_options().sql_parser.clone();
        let parsed = crate::statement::parse_statements(sql, &options)?;
        // The dialect rewrites the statements DataFusion's parser made.
        let mut statements = vec![];
        let mut explain_flags = vec![];
        for parsed in &parsed {
            if let Parsed::Sql {
                statement,
                explain_distributed,
            } = parsed
            {
                statements.push(statement.clone());
                explain_flags.push(*explain_distributed);
            }
        }
        let count = statements.len();
        let mut statements = session.dialect.rewrite(sql, statements);
        if statements.len() != count {
            return Err(Error::NotSupported(format!(
                "the {} dialect turned {count} statements into {}",
                session.dialect.name(),
                statements.len()
            )));
        }
        for statement in &mut statements {
            crate::placeholders::number_question_marks(statement)?;
        }
        let mut rewritten = statements.into_iter().zip(explain_flags);
        parsed
            .into_iter()
            .map(|parsed| match parsed {
                Parsed::Delta(statement) => Ok(ParsedStatement::from_delta(statement)),
                Parsed::Catalog(statement) => Ok(ParsedStatement::from_catalog(statement)),
                Parsed::Sql { .. } => {
                    let (statement, explain) = rewritten
                        .next()
                        .ok_or_else(|| Error::NotSupported("a statement went missing".into()))?;
                    ParsedStatement::from_ast(statement, explain)
                }
            })
            .collect()
    }

    /// Runs every statement of `sql`, stopping at the first error.
    pub async fn execute_sql(&self, session: &ClientSession, sql: &str) -> Result<Vec<Output>> {
        let mut outputs = vec![];
        for statement in self.parse(session, sql)? {
            outputs.push(self.execute(session, &statement).await?);
        }
        Ok(outputs)
    }

    /// Whether `parsed` is a session command (answered without planning).
    pub fn is_session_command(&self, session: &ClientSession, parsed: &ParsedStatement) -> bool {
        parsed.session_command().is_some_and(|command| {
            session.dialect.claims(&command) || ClientSession::engine_claims(&command)
        })
    }

    /// Runs one statement.
    pub async fn execute(
        &self,
        session: &ClientSession,
        parsed: &ParsedStatement,
    ) -> Result<Output> {
        if let Some(command) = parsed.session_command() {
            if session.dialect.claims(&command) {
                return session.dialect.session_command(session, &command);
            }
            if let Some(output) = session.engine_command(&command)? {
                return Ok(output);
            }
        }
        if let Some(statement) = parsed.access() {
            return self.access_statement(session, statement).await;
        }
        if let Some(cursor) = parsed.cursor() {
            return self.cursor_command(session, parsed, cursor).await;
        }
        if let Some(statement) = parsed.delta() {
            return self.delta_statement(session, statement).await;
        }
        if let Some(statement) = parsed.catalog() {
            return self.catalog_statement(session, statement).await;
        }
        self.fit_partitions(session);
        let plan = self.to_plan(session, syntax_tree(parsed)?).await?;
        if parsed.is_explain_distributed() {
            self.authorize(session, &plan).await?;
            return self.explain_distributed(session, &plan).await;
        }
        self.execute_plan(session, parsed, plan).await
    }

    /// Plans a statement ahead of running it (for the extended query protocol and prepared
    /// statements): the plan, with its `$n` placeholders, gives parameter and result types
    /// before anything runs. `None` for statements that are not planned ahead: session
    /// commands, cursor statements, role and privilege statements, Delta and catalog statements and
    /// `EXPLAIN DISTRIBUTED`.
    pub async fn plan(
        &self,
        session: &ClientSession,
        parsed: &ParsedStatement,
    ) -> Result<Option<LogicalPlan>> {
        if parsed.is_explain_distributed()
            || parsed.cursor().is_some()
            || parsed.access().is_some()
            || parsed.delta().is_some()
            || parsed.catalog().is_some()
            || self.is_session_command(session, parsed)
        {
            return Ok(None);
        }
        self.fit_partitions(session);
        Ok(Some(self.to_plan(session, syntax_tree(parsed)?).await?))
    }

    /// Plans one statement in `session`, after its dialect had its say. A statement that reads
    /// a table the catalog does not have fails as an undefined table (42P01).
    async fn to_plan(
        &self,
        session: &ClientSession,
        statement: DFStatement,
    ) -> Result<LogicalPlan> {
        let mut statement = statement;
        session
            .dialect
            .before_planning(session, &mut statement)
            .await?;
        session.temp.qualify(&mut statement, || {
            Ok(self.temp_schema(session)?.name.clone())
        })?;
        let state = session.ctx.state();
        let read = tables_read(&state, &statement);
        let called = crate::statement::functions_called(&statement);
        match state.statement_to_plan(statement).await {
            Ok(plan) => Ok(plan),
            // DataFusion's words, with the type the catalog and the registry say it is.
            Err(error) if missing_table(&state, &read).is_some() => {
                Err(Error::UndefinedTable(Error::from(error).to_string()))
            }
            Err(error) if missing_function(&state, &called).is_some() => {
                Err(Error::UndefinedFunction(Error::from(error).to_string()))
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn cursor_command(
        &self,
        session: &ClientSession,
        parsed: &ParsedStatement,
        command: &CursorStatement,
    ) -> Result<Output> {
        match command {
            CursorStatement::Declare { name, hold, query } => {
                self.fit_partitions(session);
                let plan = self
                    .to_plan(session, DFStatement::Statement(query.clone()))
                    .await?;
                self.authorize(session, &plan).await?;
                let Output::Rows(stream) = self.run_query(session, parsed, plan).await? else {
                    return Err(Error::Syntax(
                        "a cursor needs a query that returns rows".into(),
                    ));
                };
                session.cursors.declare(name.clone(), *hold, stream)?;
                Ok(Output::done(Command::DeclareCursor))
            }
            CursorStatement::Fetch { name, count } => session.cursors.fetch(name, *count).await,
            CursorStatement::Close { name } => {
                session.cursors.close(name.as_deref())?;
                Ok(Output::done(Command::CloseCursor))
            }
        }
    }

    /// Runs a statement planned by [`Self::plan`], its parameters bound.
    pub async fn execute_plan(
        &self,
        session: &ClientSession,
        parsed: &ParsedStatement,
        plan: LogicalPlan,
    ) -> Result<Output> {
        // Checked where plans start running (here, `start_query`, cursors, EXPLAIN
        // DISTRIBUTED), not when they are planned: a prepared statement meets the privileges
        // of the moment it runs.
        self.authorize(session, &plan).await?;
        if let LogicalPlan::Analyze(analyze) = &plan
            && !is_query(&analyze.input)
        {
            // It would run the write or catalog change outside Ember's own paths.
            return Err(Error::NotSupported(
                "EXPLAIN ANALYZE runs queries only, not writes, COPY or catalog statements".into(),
            ));
        }
        match &plan {
            LogicalPlan::Explain(explain) if matches!(explain.plan.as_ref(), LogicalPlan::Dml(dml) if matches!(dml.op, WriteOp::MergeInto(_))) =>
            {
                // Ember runs MERGE (and UPDATE ... FROM, which runs as one) as distributed
                // steps of its own: it explains those.
                self.explain_merge(session, parsed.sql(), explain.plan.as_ref().clone())
                    .await
            }
            LogicalPlan::Explain(_) => self.explain(session, plan).await,
            LogicalPlan::Analyze(_) => self.explain_analyze(session, parsed, plan).await,
            LogicalPlan::Ddl(_) => self.execute_ddl(session, parsed, plan).await,
            LogicalPlan::Dml(dml) if matches!(dml.op, WriteOp::Insert(_)) => {
                self.insert(session, parsed.sql(), plan).await
            }
            LogicalPlan::Dml(dml) if matches!(dml.op, WriteOp::MergeInto(_)) => {
                let output = self.merge(session, parsed.sql(), plan).await?;
                // `UPDATE ... FROM` runs as a MERGE; its client hears `UPDATE n`.
                Ok(if parsed.is_update_from() {
                    output.retagged(Command::Update)
                } else {
                    output
                })
            }
            LogicalPlan::Dml(_) => self.modify(session, parsed.sql(), plan).await,
            LogicalPlan::Copy(_) => self.copy(session, parsed.sql(), plan).await,
            LogicalPlan::Statement(Statement::Deallocate(_))
                if parsed.deallocate() == Some(Deallocate::All) =>
            {
                // `DEALLOCATE ALL` (psycopg sends it after DDL): every SQL-level prepared
                // statement of the session goes.
                for name in session.take_prepared() {
                    let plan =
                        LogicalPlan::Statement(Statement::Deallocate(DeallocatePlan { name }));
                    // A statement deallocated by name earlier is simply gone already.
                    if let Ok(df) = session.ctx.execute_logical_plan(plan).await {
                        df.collect().await?;
                    }
                }
                Ok(Output::done(Command::DeallocateAll))
            }
            LogicalPlan::Statement(statement) => {
                // Whatever way the statement named it, DataFusion applies this option.
                if let Statement::SetVariable(set) = statement {
                    check_settable(&set.variable)?;
                    check_size(&set.variable, &set.value)?;
                }
                let command = statement_command(statement);
                // DataFusion's words, typed by the session's own record of its statements.
                match statement {
                    Statement::Prepare(prepare) if session.has_prepared(&prepare.name) => {
                        return Err(Error::DuplicatePreparedStatement(format!(
                            "Execution error: Prepared statement '{}' already exists",
                            prepare.name
                        )));
                    }
                    Statement::Execute(execute) if !session.has_prepared(&execute.name) => {
                        return Err(undefined_prepared(&execute.name));
                    }
                    Statement::Deallocate(deallocate)
                        if !session.has_prepared(&deallocate.name) =>
                    {
                        return Err(undefined_prepared(&deallocate.name));
                    }
                    _ => {}
                }
                // The prepared plan is checked again, for privileges revoked since PREPARE.
                if let Statement::Execute(execute) = statement
                    && let Some(prepared) = session.prepared_plan(&execute.name)
                {
                    self.authorize(session, &prepared).await?;
                }
                let effect = match statement {
                    Statement::Prepare(prepare) => {
                        Some((prepare.name.clone(), Some(prepare.input.as_ref().clone())))
                    }
                    Statement::Deallocate(deallocate) => Some((deallocate.name.clone(), None)),
                    _ => None,
                };
                let df = session.ctx.execute_logical_plan(plan).await?;
                df.collect().await?;
                match effect {
                    Some((name, Some(prepared))) => session.remember_prepared(&name, prepared),
                    Some((name, None)) => session.forget_prepared(&name),
                    None => {}
                }
                Ok(Output::done(command))
            }
            _ => self.run_query(session, parsed, plan).await,
        }
    }

    /// Plans for as many partitions as the cluster has slots, broadcasts only join sides that
    /// fit a slot's memory comfortably, and widens shuffles whose partitions would not, unless
    /// the session chose.
    fn fit_partitions(&self, session: &ClientSession) {
        let slots = self.scheduler.total_slots();
        let state = session.ctx.state_ref();
        let mut state = state.write();
        let options = state.config_mut().options_mut();
        if slots > 0 && !session.has_set("datafusion.execution.target_partitions") {
            options.execution.target_partitions = slots;
        }
        let threshold = "datafusion.optimizer.hash_join_single_partition_threshold";
        if !session.has_set(threshold) {
            // Every task builds its own hash table of a broadcast side.
            let configured = self
                .base_state
                .config_options()
                .optimizer
                .hash_join_single_partition_threshold;
            options.optimizer.hash_join_single_partition_threshold =
                match self.scheduler.slot_memory() {
                    0 => configured,
                    memory => configured.min(memory / 4),
                };
        }
        if !session.has_set("ember.shuffle_partition_bytes")
            && let Some(ember) = options.extensions.get_mut::<EmberOptions>()
        {
            ember.shuffle_partition_bytes = (self.scheduler.slot_memory() / 8) as u64;
        }
    }
}

/// The syntax tree of a statement DataFusion plans.
fn syntax_tree(parsed: &ParsedStatement) -> Result<DFStatement> {
    parsed
        .ast()
        .cloned()
        .ok_or_else(|| Error::NotSupported(format!("{} is not planned", parsed.sql())))
}

/// A prepared statement the session does not have, in DataFusion's words.
fn undefined_prepared(name: &str) -> Error {
    Error::UndefinedPreparedStatement(format!(
        "Execution error: Prepared statement '{name}' does not exist"
    ))
}

/// The command a statement plan (`SET`, `PREPARE`, transaction control, ...) is.
fn statement_command(statement: &Statement) -> Command {
    use crate::statement::TransactionCommand;
    match statement {
        Statement::TransactionStart(_) => Command::Transaction(TransactionCommand::Begin),
        Statement::TransactionEnd(end) => Command::Transaction(match end.conclusion {
            datafusion::logical_expr::TransactionConclusion::Commit => TransactionCommand::Commit,
            datafusion::logical_expr::TransactionConclusion::Rollback => {
                TransactionCommand::Rollback
            }
        }),
        Statement::SetVariable(_) => Command::Set,
        Statement::ResetVariable(_) => Command::Reset,
        Statement::Prepare(_) => Command::Prepare,
        Statement::Execute(_) => Command::Execute,
        Statement::Deallocate(_) => Command::Deallocate,
    }
}

/// The command a catalog plan is (for those that report nothing more).
pub(crate) fn ddl_command(ddl: &DdlStatement) -> Command {
    match ddl {
        DdlStatement::CreateExternalTable(_) | DdlStatement::CreateMemoryTable(_) => {
            Command::CreateTable
        }
        DdlStatement::CreateView(_) => Command::CreateView,
        DdlStatement::CreateCatalogSchema(_) | DdlStatement::CreateCatalog(_) => {
            Command::CreateSchema
        }
        DdlStatement::CreateIndex(_) => Command::CreateIndex,
        DdlStatement::DropTable(_) => Command::DropTable,
        DdlStatement::DropView(_) => Command::DropView,
        DdlStatement::DropCatalogSchema(_) => Command::DropSchema,
        DdlStatement::CreateFunction(_) => Command::CreateFunction,
        DdlStatement::DropFunction(_) => Command::DropFunction,
    }
}

/// The tables `statement` names other than the one it creates (CTE names aside).
fn tables_read(state: &SessionState, statement: &DFStatement) -> Vec<TableReference> {
    let created = match statement {
        DFStatement::CreateExternalTable(create) => Some(&create.name),
        DFStatement::Statement(inner) => match inner.as_ref() {
            SqlStatement::CreateTable(create) => Some(&create.name),
            SqlStatement::CreateView(create) => Some(&create.name),
            _ => None,
        },
        _ => None,
    };
    let normalize = state.config_options().sql_parser.enable_ident_normalization;
    let created =
        created.and_then(|name| object_name_to_table_reference(name.clone(), normalize).ok());
    let tables = state
        .resolve_table_references(statement)
        .unwrap_or_default();
    tables
        .into_iter()
        .filter(|table| Some(table) != created.as_ref())
        .collect()
}

/// One of `tables` the catalog does not have.
fn missing_table<'a>(
    state: &SessionState,
    tables: &'a [TableReference],
) -> Option<&'a TableReference> {
    tables.iter().find(|table| {
        // Table functions (`generate_series(1, 3)`) are relations too.
        if state.table_functions().contains_key(table.table()) {
            return false;
        }
        // As DataFusion resolves it (`information_schema` included).
        let exists = state
            .schema_for_ref((*table).clone())
            .is_ok_and(|schema| schema.table_exist(table.table()));
        !exists
    })
}

/// One of the functions `called` that no registry of the session has.
fn missing_function<'a>(state: &SessionState, called: &'a [String]) -> Option<&'a String> {
    called.iter().find(|name| {
        let name = name.as_str();
        // Planned by DataFusion's SQL planner itself, not looked up.
        const PLANNED: [&str; 1] = ["unnest"];
        !(PLANNED.contains(&name)
            || state.scalar_functions().contains_key(name)
            || state.aggregate_functions().contains_key(name)
            || state.window_functions().contains_key(name)
            || state.table_functions().contains_key(name))
    })
}

/// Whether `plan` is a query, which runs through the scheduler, rather than a command or EXPLAIN.
pub fn is_query(plan: &LogicalPlan) -> bool {
    !matches!(
        plan,
        LogicalPlan::Ddl(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::Explain(_)
    )
}

/// Whether running `plan` yields rows (a query or EXPLAIN) rather than an outcome.
pub fn returns_rows(plan: &LogicalPlan) -> bool {
    is_query(plan) || matches!(plan, LogicalPlan::Explain(_))
}
