//! Running queries: a physical plan's scalar subqueries first, then the plan itself, here when
//! there is nothing to distribute and on the executors otherwise (cut into stages, handed to the
//! scheduler, its answer read back through a [`ResultHandle`]).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNode;
use datafusion::config::ConfigOptions;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use ember_planner::ids::QueryId;
use ember_planner::row_group_splits::split_on_row_groups;
use ember_planner::session::EmberOptions;
use ember_planner::shuffle_partitions::fit_shuffle_partitions;
use ember_planner::stage::StageGraph;
use ember_planner::subquery::take_scalar_subqueries;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use crate::engine::QueryEngine;
use crate::error::{Error, Result};
use crate::output::Output;
use crate::results::ResultHandle;
use crate::scheduler::{Event, Submission};
use crate::session::ClientSession;
use crate::statement::ParsedStatement;

/// Scalar subqueries of one query that run at the same time.
const CONCURRENT_SUBQUERIES: usize = 8;

/// A query that has started: answered here, or by the result stage's tasks on the executors.
pub enum StartedQuery {
    /// Computed on the coordinator (constants, system tables, plans that cannot travel).
    Local(SendableRecordBatchStream),
    /// Running on the executors; nobody reads its result stage yet.
    Distributed(ResultHandle),
}

impl QueryEngine {
    /// Plans and runs a query (a statement that returns rows); its answer streams.
    pub(crate) async fn run_query(
        &self,
        session: &ClientSession,
        parsed: &ParsedStatement,
        plan: LogicalPlan,
    ) -> Result<Output> {
        let physical = session.ctx.state().create_physical_plan(&plan).await?;
        Ok(Output::Rows(
            self.run_with_join_fallback(session, parsed.sql(), &plan, physical)
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
            StartedQuery::Distributed(handle) => handle.into_stream(),
        })
    }

    /// Plans and starts a query planned by [`QueryEngine::plan`], leaving it to the caller to
    /// read a distributed answer: the Flight SQL frontend hands its partitions to clients.
    pub async fn start_query(
        &self,
        session: &ClientSession,
        parsed: &ParsedStatement,
        plan: LogicalPlan,
    ) -> Result<StartedQuery> {
        // Frontends run prepared plans through here (see `execute_plan`).
        self.authorize(session, &plan).await?;
        let physical = session.ctx.state().create_physical_plan(&plan).await?;
        self.start_physical(session, parsed.sql(), physical).await
    }

    /// Like [`Self::run_physical`], but a distributed query's result stage is handed back
    /// unread.
    pub(crate) async fn start_physical(
        &self,
        session: &ClientSession,
        sql: &str,
        physical: Arc<dyn ExecutionPlan>,
    ) -> Result<StartedQuery> {
        // Executors check the fragments they run; plans that run here are checked here.
        self.allowed_paths.check_plan(&physical)?;
        let (physical, subqueries) = take_scalar_subqueries(physical)?;
        for group in subqueries {
            // A group's subqueries run at once, as DataFusion runs them; at most a few at a time
            // so that a query of many does not crowd out every other.
            futures::stream::iter(group)
                .map(|subquery| async move {
                    let value =
                        Box::pin(self.scalar_value(session, sql, Arc::clone(&subquery.plan)))
                            .await?;
                    subquery.resolve(value)?;
                    Ok::<_, Error>(())
                })
                .buffer_unordered(CONCURRENT_SUBQUERIES)
                .try_collect::<()>()
                .await?;
        }
        let state = session.ctx.state();
        if !distributes(&physical)? {
            // Nothing to distribute (constants, VALUES, system tables), or a plan that has to
            // stay in one process (recursive queries feed their output back): answer here.
            return Ok(StartedQuery::Local(execute_stream(
                physical,
                session.ctx.task_ctx(),
            )?));
        }
        let query_id = QueryId::random();
        let adaptive = ember_options(state.config_options());
        let graph = stage_graph(query_id.clone(), physical, &state).await?;
        let result_stage = graph.result_stage();
        let schema = result_stage.writer().input().schema();
        let num_partitions = result_stage.num_tasks();
        let result_stage_id = result_stage.id;
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        self.scheduler.send(Event::Submit(Submission {
            query_id: query_id.clone(),
            session_id: session.id.clone(),
            user: session.user.clone(),
            frontend: session.frontend.clone(),
            sql: sql.to_string(),
            graph,
            settings: changed_settings(state.config_options()),
            adaptive,
            results_tx,
        }));
        Ok(StartedQuery::Distributed(ResultHandle::new(
            query_id,
            result_stage_id,
            schema,
            num_partitions,
            self.scheduler.clone(),
            Arc::clone(&self.fetcher),
            results_rx,
        )))
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
            .await?;
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

    /// `EXPLAIN DISTRIBUTED`: the stage graph alone.
    pub(crate) async fn explain_distributed(
        &self,
        session: &ClientSession,
        plan: &LogicalPlan,
    ) -> Result<Output> {
        let state = session.ctx.state();
        let physical = state.create_physical_plan(plan).await?;
        let graph = stage_graph(QueryId::random(), physical, &state).await?;
        Ok(Output::Rows(explain_rows(vec![(
            "distributed_plan".into(),
            graph.display(),
        )])))
    }

    /// `EXPLAIN`: DataFusion's rows, and the stage graph as a `distributed_plan` row.
    pub(crate) async fn explain(
        &self,
        session: &ClientSession,
        plan: LogicalPlan,
    ) -> Result<Output> {
        let LogicalPlan::Explain(explain) = &plan else {
            return Err(Error::NotSupported("not an EXPLAIN".into()));
        };
        let state = session.ctx.state();
        let physical = state.create_physical_plan(&explain.plan).await?;
        let graph = stage_graph(QueryId::random(), physical, &state).await?;
        let df = session.ctx.execute_logical_plan(plan).await?;
        let mut rows = collect_explain(df.collect().await?);
        rows.push(("distributed_plan".into(), graph.display()));
        Ok(Output::Rows(explain_rows(rows)))
    }
}

/// The session's `ember.*` settings.
fn ember_options(options: &ConfigOptions) -> EmberOptions {
    options
        .extensions
        .get::<EmberOptions>()
        .cloned()
        .unwrap_or_default()
}

/// `physical` cut into stages: its parquet scans cut on row-group boundaries unless the session
/// turned that off, and without runtime filters where it turned those off.
async fn stage_graph(
    query_id: QueryId,
    physical: Arc<dyn ExecutionPlan>,
    state: &SessionState,
) -> Result<StageGraph> {
    let options = ember_options(state.config_options());
    let (physical, shuffle_partitions) = fit_shuffle_partitions(
        physical,
        options.shuffle_partition_bytes,
        options.max_shuffle_partitions,
    )?;
    if let Some(partitions) = shuffle_partitions {
        tracing::debug!(%query_id, partitions, "shuffles widened to fit a slot's memory");
    }
    let physical = if options.row_group_splits {
        split_on_row_groups(physical, state.runtime_env()).await?
    } else {
        physical
    };
    let mut graph = StageGraph::try_new(query_id, physical)?;
    if !options.adaptive || options.adaptive_runtime_filter_bytes == 0 {
        graph.drop_runtime_filters();
    }
    Ok(graph)
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
            // Catalog settings only matter to the planner, Ember's own (an extension, listed
            // without its prefix) to the coordinator.
            let shipped =
                e.key.starts_with("datafusion.") && !e.key.starts_with("datafusion.catalog.");
            (changed && shipped).then_some((e.key, value))
        })
        .collect()
}

/// Whether a plan runs on the executors: it reads files and every operator can travel.
pub(crate) fn distributes(plan: &Arc<dyn ExecutionPlan>) -> Result<bool> {
    Ok(scans_files(plan)? && !runs_on_coordinator(plan)?)
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

/// Rows of an EXPLAIN answer: `(plan_type, plan)`.
pub(crate) fn explain_rows(rows: Vec<(String, String)>) -> SendableRecordBatchStream {
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
