//! The query engine: SQL text in, statements planned with DataFusion, queries cut into stages and
//! run on the executors, answers streamed back. Shared by every frontend.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::CatalogProvider;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNode;
use datafusion::config::ConfigOptions;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{
    ColumnarValue, Deallocate, LogicalPlan, ScalarUDF, Statement, Volatility, create_udf,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::dialect::dialect_from_str;
use ember_executor::fetcher::FlightShuffleFetcher;
use ember_planner::ids::QueryId;
use ember_planner::paths::AllowedPaths;
use ember_planner::session::DEFAULT_CATALOG;
use ember_planner::stage::StageGraph;
use ember_planner::subquery::take_scalar_subqueries;
use futures::TryStreamExt;
use tokio::sync::mpsc;

use crate::catalog::CatalogStore;
use crate::cursors::CursorStatement;
use crate::error::{Error, Result};
use crate::pg_compat;
use crate::results::result_stream;
use crate::scheduler::{Event, SchedulerHandle, Submission};
pub use crate::session::ClientSession;
pub use crate::statement::ParsedStatement;

/// What a statement produced.
pub enum QueryOutput {
    /// Rows, streamed as the final stage produces them.
    Rows(SendableRecordBatchStream),
    /// A command tag such as `SET` or `CREATE VIEW`.
    Command(String),
    /// `BEGIN`: the client's transaction block opens (see [`ClientSession`] for what it means).
    TransactionStart(String),
    /// `COMMIT` or `ROLLBACK`: the block closes.
    TransactionEnd(String),
}

/// A query that has started: answered here, or by the result stage's tasks on the executors.
pub(crate) enum StartedQuery {
    Local(SendableRecordBatchStream),
    Distributed(DistributedQuery),
}

/// A submitted distributed query whose result stage nobody reads yet: the scheduler reports
/// where each partition's task runs and when it commits on `events_rx`.
pub(crate) struct DistributedQuery {
    pub(crate) schema: datafusion::arrow::datatypes::SchemaRef,
    pub(crate) query_id: QueryId,
    pub(crate) stage_id: ember_planner::ids::StageId,
    pub(crate) num_partitions: usize,
    pub(crate) events_rx: mpsc::UnboundedReceiver<crate::scheduler::ResultEvent>,
}

/// Plans and runs statements; holds the shared catalog.
pub struct QueryEngine {
    pub(crate) base_state: SessionState,
    /// `base_state` with `pg_catalog` and the Postgres functions, for Postgres-wire sessions.
    postgres_state: SessionState,
    scheduler: SchedulerHandle,
    fetcher: Arc<FlightShuffleFetcher>,
    pub(crate) catalog: Arc<CatalogStore>,
    pub(crate) allowed_paths: AllowedPaths,
}

impl QueryEngine {
    pub(crate) async fn new(
        mut base_state: SessionState,
        scheduler: SchedulerHandle,
        fetcher: Arc<FlightShuffleFetcher>,
        catalog: Arc<CatalogStore>,
        allowed_paths: AllowedPaths,
    ) -> Result<Self> {
        ember_planner::functions::register(&mut base_state)?;
        Ok(Self {
            postgres_state: pg_compat::postgres_state(&base_state).await?,
            base_state,
            scheduler,
            fetcher,
            catalog,
            allowed_paths,
        })
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
            let alive = self.scheduler.snapshot().await?.alive_executors();
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

    /// A new session sharing the server's catalog.
    pub fn new_session(&self) -> ClientSession {
        self.session_with(self.base_state.clone())
    }

    fn session_with(&self, state: SessionState) -> ClientSession {
        let id = crate::catalog::to_hex(&ember_executor::client_auth::random_id(8));
        let ctx = SessionContext::new_with_state(state);
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
        ClientSession {
            id,
            initial_options: ctx.state().config_options().as_ref().clone(),
            ctx,
            variables: Default::default(),
            cursors: Default::default(),
            prepared: Default::default(),
            cancels: tokio::sync::watch::channel(0).0,
            postgres: false,
        }
    }

    /// A session for a Postgres client: statements parse in the PostgreSQL dialect unless the
    /// client sets `datafusion.sql_parser.dialect`.
    pub fn new_postgres_session(&self) -> ClientSession {
        let mut state = self.postgres_state.clone();
        state.config_mut().options_mut().sql_parser.dialect =
            datafusion::config::Dialect::PostgreSQL;
        let mut session = self.session_with(state);
        session.postgres = true;
        let variables = Arc::clone(&session.variables);
        session
            .ctx
            .register_udf(ScalarUDF::from(crate::session::CurrentSetting::new(
                variables,
            )));
        session
    }

    /// Splits `sql` into statements, in the session's SQL dialect
    /// (`datafusion.sql_parser.dialect`, DataFusion's generic one unless set). `EXPLAIN
    /// DISTRIBUTED` is Ember's own and only stands alone.
    pub fn parse(&self, session: &ClientSession, sql: &str) -> Result<Vec<ParsedStatement>> {
        let (sql, explain_distributed) = match strip_explain_distributed(sql) {
            Some(inner) => (inner, true),
            None => (sql.to_string(), false),
        };
        let options = session.ctx.state().config_options().sql_parser.clone();
        let dialect = dialect_from_str(options.dialect).ok_or_else(|| {
            Error::NotSupported(format!("unknown SQL dialect {}", options.dialect))
        })?;
        let mut parser = DFParserBuilder::new(sql.as_str())
            .with_dialect(dialect.as_ref())
            .with_recursion_limit(options.recursion_limit.get())
            .build()?;
        let mut statements: Vec<DFStatement> = parser.parse_statements()?.into_iter().collect();
        if session.postgres {
            statements = postgres_compatible(&sql, statements);
        }
        for statement in &mut statements {
            crate::placeholders::number_question_marks(statement)?;
        }
        if explain_distributed && statements.len() != 1 {
            return Err(Error::NotSupported(
                "EXPLAIN DISTRIBUTED takes exactly one query".into(),
            ));
        }
        Ok(statements
            .into_iter()
            .map(|statement| ParsedStatement {
                statement,
                explain_distributed,
            })
            .collect())
    }

    /// Runs every statement of `sql`, stopping at the first error.
    pub async fn execute_sql(
        &self,
        session: &ClientSession,
        sql: &str,
    ) -> Result<Vec<QueryOutput>> {
        let mut outputs = vec![];
        for statement in self.parse(session, sql)? {
            outputs.push(self.execute(session, statement).await?);
        }
        Ok(outputs)
    }

    /// Runs one statement.
    pub async fn execute(
        &self,
        session: &ClientSession,
        parsed: ParsedStatement,
    ) -> Result<QueryOutput> {
        let ParsedStatement {
            statement,
            explain_distributed,
        } = parsed;
        let text = statement.to_string();
        if !explain_distributed && let Some(output) = session.session_command(&text)? {
            return Ok(output);
        }
        if let DFStatement::Statement(inner) = &statement
            && let Some(cursor) = CursorStatement::recognise(inner)?
        {
            return self.cursor_command(session, &text, cursor).await;
        }
        self.fit_partitions(session);
        let plan = self.to_plan(session, statement).await?;
        let state = session.ctx.state();
        if explain_distributed {
            let physical = state.create_physical_plan(&plan).await?;
            let graph = StageGraph::try_new(QueryId::random(), physical)?;
            return Ok(QueryOutput::Rows(explain_rows(vec![(
                "distributed_plan".into(),
                graph.display(),
            )])));
        }
        self.execute_plan(session, &text, plan).await
    }

    /// Plans a statement for the extended query protocol: the plan (with its `$n` placeholders)
    /// gives parameter and result types before anything runs. `None` for statements that are
    /// not planned ahead: session commands and `EXPLAIN DISTRIBUTED`.
    pub async fn plan_statement(
        &self,
        session: &ClientSession,
        parsed: &ParsedStatement,
    ) -> Result<Option<LogicalPlan>> {
        if parsed.explain_distributed || session.is_session_command(&parsed.sql()) {
            return Ok(None);
        }
        if let DFStatement::Statement(inner) = &parsed.statement
            && CursorStatement::recognise(inner)?.is_some()
        {
            return Ok(None);
        }
        self.fit_partitions(session);
        Ok(Some(self.to_plan(session, parsed.statement.clone()).await?))
    }

    /// Plans one statement in `session`. A Postgres session's `::regclass` casts that
    /// datafusion-pg-catalog leaves (of computed names) look the names up first.
    async fn to_plan(
        &self,
        session: &ClientSession,
        statement: DFStatement,
    ) -> Result<LogicalPlan> {
        let mut statement = statement;
        if session.postgres && pg_compat::regclass::rewrite(&mut statement) {
            pg_compat::regclass::register(&session.ctx, &session.current_schema()).await?;
        }
        Ok(session.ctx.state().statement_to_plan(statement).await?)
    }

    async fn cursor_command(
        &self,
        session: &ClientSession,
        text: &str,
        command: CursorStatement,
    ) -> Result<QueryOutput> {
        match command {
            CursorStatement::Declare { name, hold, query } => {
                self.fit_partitions(session);
                let plan = self.to_plan(session, DFStatement::Statement(query)).await?;
                let QueryOutput::Rows(stream) = self.run_query(session, text, plan).await? else {
                    return Err(Error::Syntax(
                        "a cursor needs a query that returns rows".into(),
                    ));
                };
                session.cursors.declare(name, hold, stream)?;
                Ok(QueryOutput::Command("DECLARE CURSOR".into()))
            }
            CursorStatement::Fetch { name, count } => session.cursors.fetch(&name, count).await,
            CursorStatement::Close { name } => {
                session.cursors.close(name.as_deref())?;
                Ok(QueryOutput::Command("CLOSE CURSOR".into()))
            }
        }
    }

    /// Runs a statement planned by [`Self::plan_statement`], its parameters bound.
    pub async fn execute_plan(
        &self,
        session: &ClientSession,
        text: &str,
        plan: LogicalPlan,
    ) -> Result<QueryOutput> {
        let text = text.to_string();
        let state = session.ctx.state();
        match &plan {
            LogicalPlan::Explain(explain) => {
                let physical = state.create_physical_plan(&explain.plan).await?;
                let graph = StageGraph::try_new(QueryId::random(), physical)?;
                let df = session.ctx.execute_logical_plan(plan.clone()).await?;
                let mut rows = collect_explain(df.collect().await?);
                rows.push(("distributed_plan".into(), graph.display()));
                Ok(QueryOutput::Rows(explain_rows(rows)))
            }
            LogicalPlan::Ddl(_) => self.execute_ddl(session, &text, plan).await,
            LogicalPlan::Dml(_) => self.insert(session, &text, plan).await,
            LogicalPlan::Copy(_) => self.copy(session, &text, plan).await,
            LogicalPlan::Statement(Statement::Deallocate(deallocate))
                if deallocate.name.eq_ignore_ascii_case("all")
                    && !text.contains(&format!("\"{}\"", deallocate.name)) =>
            {
                // `DEALLOCATE ALL` (psycopg sends it after DDL): every SQL-level prepared
                // statement of the session goes.
                for name in session.take_prepared() {
                    let plan = LogicalPlan::Statement(Statement::Deallocate(Deallocate { name }));
                    // A statement deallocated by name earlier is simply gone already.
                    if let Ok(df) = session.ctx.execute_logical_plan(plan).await {
                        df.collect().await?;
                    }
                }
                Ok(QueryOutput::Command("DEALLOCATE ALL".into()))
            }
            LogicalPlan::Statement(statement) => {
                let tag = command_tag(&text);
                let prepared = match statement {
                    Statement::Prepare(prepare) => Some(prepare.name.clone()),
                    _ => None,
                };
                let df = session.ctx.execute_logical_plan(plan).await?;
                df.collect().await?;
                if let Some(name) = prepared {
                    session.remember_prepared(&name);
                }
                Ok(QueryOutput::Command(tag))
            }
            _ => self.run_query(session, &text, plan).await,
        }
    }

    async fn run_query(
        &self,
        session: &ClientSession,
        sql: &str,
        plan: LogicalPlan,
    ) -> Result<QueryOutput> {
        let physical = session.ctx.state().create_physical_plan(&plan).await?;
        Ok(QueryOutput::Rows(
            self.run_with_join_fallback(session, sql, &plan, physical)
                .await?,
        ))
    }

    /// Runs an optimized physical plan: its scalar subqueries first, then the plan itself, on
    /// the executors when it reads files and here when it does not.
    pub(crate) async fn run_physical(
        &self,
        session: &ClientSession,
        sql: &str,
        physical: Arc<dyn ExecutionPlan>,
    ) -> Result<SendableRecordBatchStream> {
        Ok(match self.start_physical(session, sql, physical).await? {
            StartedQuery::Local(stream) => stream,
            StartedQuery::Distributed(query) => result_stream(
                query.schema,
                query.query_id,
                query.stage_id,
                query.num_partitions,
                query.events_rx,
                Arc::clone(&self.fetcher),
                self.scheduler.clone(),
            ),
        })
    }

    /// Plans and starts a query (a statement that returns rows), leaving it to the caller to
    /// read a distributed answer: the Flight SQL frontend hands its partitions to clients.
    pub(crate) async fn start_query(
        &self,
        session: &ClientSession,
        sql: &str,
        plan: LogicalPlan,
    ) -> Result<StartedQuery> {
        let physical = session.ctx.state().create_physical_plan(&plan).await?;
        self.start_physical(session, sql, physical).await
    }

    /// Like [`Self::run_physical`], but a distributed query's result stage is handed back
    /// unread.
    pub(crate) async fn start_physical(
        &self,
        session: &ClientSession,
        sql: &str,
        physical: Arc<dyn ExecutionPlan>,
    ) -> Result<StartedQuery> {
        let (physical, subqueries) = take_scalar_subqueries(physical)?;
        for subquery in subqueries {
            let value =
                Box::pin(self.scalar_value(session, sql, Arc::clone(&subquery.plan))).await?;
            subquery.resolve(value)?;
        }
        let state = session.ctx.state();
        if !scans_files(&physical)? || runs_on_coordinator(&physical)? {
            // Nothing to distribute (constants, VALUES, system tables), or a plan that has to
            // stay in one process (recursive queries feed their output back): answer here.
            return Ok(StartedQuery::Local(execute_stream(
                physical,
                session.ctx.task_ctx(),
            )?));
        }
        let query_id = QueryId::random();
        let graph = StageGraph::try_new(query_id.clone(), physical)?;
        let result_stage = graph.result_stage();
        let schema = result_stage.writer().input().schema();
        let num_partitions = result_stage.num_tasks();
        let result_stage_id = result_stage.id;
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        self.scheduler.send(Event::Submit(Submission {
            query_id: query_id.clone(),
            session_id: session.id.clone(),
            sql: sql.to_string(),
            graph,
            settings: changed_settings(state.config_options()),
            results_tx,
        }));
        Ok(StartedQuery::Distributed(DistributedQuery {
            schema,
            query_id,
            stage_id: result_stage_id,
            num_partitions,
            events_rx: results_rx,
        }))
    }

    pub(crate) fn scheduler(&self) -> &SchedulerHandle {
        &self.scheduler
    }

    pub(crate) fn fetcher(&self) -> &Arc<FlightShuffleFetcher> {
        &self.fetcher
    }

    /// The single value of a scalar subquery: NULL without rows, an error with several.
    async fn scalar_value(
        &self,
        session: &ClientSession,
        sql: &str,
        plan: Arc<dyn ExecutionPlan>,
    ) -> Result<ScalarValue> {
        let data_type = plan.schema().field(0).data_type().clone();
        let batches: Vec<RecordBatch> = self
            .run_physical(session, sql, plan)
            .await?
            .try_collect()
            .await
            .map_err(Error::from_datafusion)?;
        let mut value = None;
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            if value.is_some() || batch.num_rows() > 1 {
                return Err(Error::CardinalityViolation(
                    "more than one row returned by a subquery used as an expression".into(),
                ));
            }
            value = Some(ScalarValue::try_from_array(batch.column(0), 0)?);
        }
        match value {
            Some(value) => Ok(value),
            None => Ok(ScalarValue::try_from(&data_type)?),
        }
    }

    /// Plans for as many partitions as the cluster has slots, and broadcasts only join sides
    /// that fit a slot's memory comfortably, unless the session chose.
    fn fit_partitions(&self, session: &ClientSession) {
        let slots = self.scheduler.total_slots();
        let state = session.ctx.state_ref();
        let mut state = state.write();
        let options = state.config_mut().options_mut();
        if slots > 0 && !session.has_variable("datafusion.execution.target_partitions") {
            options.execution.target_partitions = slots;
        }
        let threshold = "datafusion.optimizer.hash_join_single_partition_threshold";
        if !session.has_variable(threshold) {
            // Every task builds its own hash table of a broadcast side.
            let slot_memory = self.scheduler.slot_memory();
            options.optimizer.hash_join_single_partition_threshold = match slot_memory {
                0 => BROADCAST_BYTES,
                memory => BROADCAST_BYTES.min(memory / 4),
            };
        }
    }
}

/// The largest join side (estimated bytes) sent whole to every task rather than shuffled, when
/// executors' memory allows (see `ember_planner::session::distributed_config`).
const BROADCAST_BYTES: usize = 32 << 20;

fn strip_explain_distributed(text: &str) -> Option<String> {
    let trimmed = text.trim_start();
    let lower = trimmed.to_ascii_lowercase();
    let rest = lower.strip_prefix("explain")?;
    let rest_trimmed = rest.trim_start();
    let rest = rest_trimmed.strip_prefix("distributed")?;
    let start = trimmed.len() - rest.len();
    Some(trimmed[start..].to_string())
}

/// Whether `plan` is a query, which runs through the scheduler, rather than a command or EXPLAIN.
pub(crate) fn is_query(plan: &LogicalPlan) -> bool {
    !matches!(
        plan,
        LogicalPlan::Ddl(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::Explain(_)
    )
}

/// Whether running `plan` yields rows (a query or EXPLAIN) rather than a command tag.
pub(crate) fn returns_rows(plan: &LogicalPlan) -> bool {
    is_query(plan) || matches!(plan, LogicalPlan::Explain(_))
}

pub(crate) fn command_tag(text: &str) -> String {
    let words: Vec<String> = text
        .split_whitespace()
        .take(3)
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let first = words.first().map(String::as_str).unwrap_or("");
    match first {
        "CREATE" | "DROP" | "ALTER" => {
            let object = match words.get(1).map(String::as_str) {
                Some("EXTERNAL") | Some("UNBOUNDED") => "TABLE",
                Some("OR") => words.get(2).map_or("VIEW", |_| "VIEW"),
                Some(other) => other,
                None => "",
            };
            format!("{first} {object}")
        }
        other => other.to_string(),
    }
}

/// Settings of this session that differ from DataFusion's defaults, shipped with every task.
fn changed_settings(options: &ConfigOptions) -> HashMap<String, String> {
    let defaults: HashMap<String, Option<String>> = ConfigOptions::default()
        .entries()
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    options
        .entries()
        .into_iter()
        .filter_map(|e| {
            let value = e.value?;
            let changed = defaults.get(&e.key) != Some(&Some(value.clone()));
            // Catalog settings only matter to the planner.
            (changed && !e.key.starts_with("datafusion.catalog.")).then_some((e.key, value))
        })
        .collect()
}

/// Postgres clients' SQL made plannable. Catalog queries of tools (they read `pg_catalog` or
/// `information_schema`): when every statement is plain SQL (nothing of DataFusion's own syntax
/// such as `CREATE EXTERNAL TABLE` or `COPY ... TO`), the Postgres compatibility parser rereads
/// it, which replaces psql's catalog queries DataFusion cannot plan and rewrites the rest. Other
/// statements only get the rewrites that keep their meaning: its approximations of unsupported
/// subqueries are right for catalog lookups but would change a user's answers.
fn postgres_compatible(sql: &str, statements: Vec<DFStatement>) -> Vec<DFStatement> {
    let compatibility = pg_compat::compatibility();
    let reads_catalog = statements.iter().any(|s| match s {
        DFStatement::Statement(inner) => pg_compat::reads_catalog(inner),
        _ => false,
    });
    let plain = statements
        .iter()
        .all(|s| matches!(s, DFStatement::Statement(_)));
    if reads_catalog
        && plain
        && let Some(replaced) = compatibility.parse(sql)
        && replaced.len() == statements.len()
    {
        return replaced
            .into_iter()
            .map(|s| DFStatement::Statement(Box::new(s)))
            .collect();
    }
    statements
        .into_iter()
        .map(|s| match s {
            DFStatement::Statement(inner) if reads_catalog => {
                DFStatement::Statement(Box::new(compatibility.rewrite(*inner)))
            }
            DFStatement::Statement(inner) => {
                DFStatement::Statement(Box::new(compatibility.rewrite_user(*inner)))
            }
            other => other,
        })
        .collect()
}

fn scans_files(plan: &Arc<dyn ExecutionPlan>) -> Result<bool> {
    Ok(plan.exists(|node| {
        Ok(node
            .downcast_ref::<DataSourceExec>()
            .is_some_and(|s| s.data_source().downcast_ref::<FileScanConfig>().is_some()))
    })?)
}

/// Plans whose operators cannot travel to executors: recursive queries (they loop their output
/// back through a work table shared in memory) and operators the task encoding does not know.
fn runs_on_coordinator(plan: &Arc<dyn ExecutionPlan>) -> Result<bool> {
    if plan.exists(|node| Ok(node.name() == "RecursiveQueryExec"))? {
        return Ok(true);
    }
    Ok(ember_planner::codec::encode_plan(Arc::clone(plan)).is_err())
}

fn collect_explain(batches: Vec<RecordBatch>) -> Vec<(String, String)> {
    use datafusion::arrow::array::AsArray;
    let mut rows = vec![];
    for batch in batches {
        if batch.num_columns() < 2 {
            continue;
        }
        let (Some(kinds), Some(plans)) = (
            batch.column(0).as_string_opt::<i32>(),
            batch.column(1).as_string_opt::<i32>(),
        ) else {
            continue;
        };
        for i in 0..batch.num_rows() {
            rows.push((kinds.value(i).to_string(), plans.value(i).to_string()));
        }
    }
    rows
}

fn explain_rows(rows: Vec<(String, String)>) -> SendableRecordBatchStream {
    let schema = Arc::new(Schema::new(vec![
        Field::new("plan_type", DataType::Utf8, false),
        Field::new("plan", DataType::Utf8, false),
    ]));
    let (kinds, plans): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from(kinds)),
            Arc::new(StringArray::from(plans)),
        ],
    );
    Box::pin(RecordBatchStreamAdapter::new(
        schema,
        futures::stream::iter(vec![batch.map_err(Into::into)]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_and_command_tags_are_recognised() {
        assert_eq!(
            strip_explain_distributed("EXPLAIN DISTRIBUTED SELECT 1").as_deref(),
            Some(" SELECT 1")
        );
        assert_eq!(command_tag("create external table t ..."), "CREATE TABLE");
        assert_eq!(command_tag("CREATE VIEW v AS SELECT 1"), "CREATE VIEW");
    }
}
