//! `DELETE`, `UPDATE` and `TRUNCATE` of Delta tables (managed or external), copy-on-write as
//! Delta on Spark does them:
//!
//! 1. the files the predicate may match, by partition values and the log's statistics;
//! 2. a distributed query over those files finds the ones that hold matching rows, and how many
//!    (the statement's row count);
//! 3. a distributed write rewrites only those files: without the deleted rows, or with the
//!    new values;
//! 4. one Delta transaction removes the rewritten files and adds the new ones. Delta's conflict
//!    rules decide what a concurrent commit means: appends pass, a concurrent change of the
//!    same files is a serialization failure (40001) the client retries.
//!
//! A statement sees the table at the version it read; files it did not touch stay as they are.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::common::TableReference;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::provider_as_source;
use datafusion::functions_aggregate::count::count_all;
use datafusion::logical_expr::expr::Alias;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    DmlStatement, Expr, LogicalPlan, LogicalPlanBuilder, WriteOp, case, col, lit,
};
use datafusion::sql::unparser::expr_to_sql;
use ember_delta::deltalake_core::protocol::DeltaOperation;
use ember_delta::{DeltaScanTable, Operation, WrittenFile};
use futures::TryStreamExt;

use crate::ddl::ObjectName;
use crate::declared::check_column_constraints;
use crate::delta_target::DeltaTarget;
use crate::engine::QueryEngine;
use crate::error::{Error, Result};
use crate::output::{Command, Output};
use crate::session::ClientSession;
use crate::writes::{Target, added_files, commit_failure, remove_written};

/// The column that names each row's file in the query that finds the files to rewrite.
const FILE_COLUMN: &str = "__ember_file";

/// What a statement changes, read off DataFusion's plan of it.
struct Change {
    /// The name the statement's expressions qualify the table's columns with.
    scan: TableReference,
    /// Rows to change; none for all of them.
    predicate: Option<Expr>,
    /// `UPDATE`: the new value of each column (the column itself where it keeps its value).
    values: Option<Vec<Expr>>,
}

impl QueryEngine {
    /// `DELETE`, `UPDATE` or `TRUNCATE` of a table; `sql` describes it.
    pub(crate) async fn modify(
        &self,
        session: &ClientSession,
        sql: &str,
        plan: LogicalPlan,
    ) -> Result<Output> {
        let LogicalPlan::Dml(DmlStatement {
            table_name,
            op,
            input,
            ..
        }) = &plan
        else {
            return Err(Error::NotSupported(format!("not a change of rows: {sql}")));
        };
        let command = match op {
            WriteOp::Delete => Command::Delete,
            WriteOp::Update => Command::Update,
            WriteOp::Truncate => Command::Truncate,
            other => return Err(Error::NotSupported(format!("{other} is not supported"))),
        };
        let table = self.resolve_name(session, table_name)?;
        self.check_writable_schema(&table.schema).await?;
        let provider = session.ctx.table_provider(table_name.clone()).await?;
        let Some(target) = DeltaTarget::of(&provider) else {
            return Err(Error::NotSupported(format!(
                "{} of table {table} is not supported: only Delta tables (CREATE TABLE, or external STORED AS DELTA) change rows",
                match command {
                    Command::Update => "UPDATE",
                    Command::Delete => "DELETE",
                    _ => "TRUNCATE",
                }
            )));
        };
        let change = match op {
            WriteOp::Truncate => Change {
                scan: table_name.clone(),
                predicate: None,
                values: None,
            },
            _ => Change::of(input, table_name)?,
        };
        // Until its files are committed, VACUUM waits.
        let _writing = target.writing().await;
        let snapshot = target.latest().await?;
        let state = session.ctx.state();
        // Conjuncts with subqueries say nothing about single files.
        let pruning: Vec<Expr> = change
            .predicate
            .iter()
            .flat_map(split_conjunction)
            .filter_map(unqualified)
            .collect();
        let candidates = snapshot.matching_files(&state, &pruning)?;
        // Which files hold rows to change, and how many.
        let touched: Vec<(String, u64)> = match &change.predicate {
            None => candidates
                .iter()
                .map(|f| (f.path.clone(), f.rows.unwrap_or(0)))
                .collect(),
            Some(_) if candidates.is_empty() => vec![],
            Some(predicate) => {
                let paths = candidates.iter().map(|f| f.path.clone()).collect();
                self.matching_rows(session, sql, &snapshot, &change.scan, paths, predicate)
                    .await?
            }
        };
        let mut rows: u64 = touched.iter().map(|(_, n)| n).sum();
        if touched.is_empty() {
            return Ok(changed(command, 0));
        }
        if command == Command::Delete
            && change.predicate.is_none()
            && candidates.iter().any(|f| f.rows.is_none())
        {
            // Files without statistics: count what goes (TRUNCATE reports no count).
            rows = self
                .count_rows(session, sql, &snapshot, &change.scan)
                .await?;
        }
        let touched: HashSet<String> = touched.into_iter().map(|(path, _)| path).collect();
        let kept = snapshot.clone().restricted_to(touched.clone());
        // What the rewritten files hold.
        let scan = LogicalPlanBuilder::scan(
            change.scan.clone(),
            provider_as_source(Arc::new(kept)),
            None,
        )?;
        let rewritten = match (&change.predicate, &change.values) {
            // Everything goes: nothing to write.
            (None, None) => None,
            (Some(predicate), None) => Some(scan.filter(predicate.clone().is_not_true())?.build()?),
            (predicate, Some(values)) => Some(updated(scan, predicate.as_ref(), values)?),
        };
        let mut files = vec![];
        if let Some(plan) = rewritten {
            let plan = check_column_constraints(Arc::new(plan), &target.schema())?;
            let physical = state.create_physical_plan(&plan).await?;
            let sink = snapshot.write_files(&state, physical).await?;
            files = self.write(session, sql, sink, Target::Directory).await?.1;
        }
        let predicate = change
            .predicate
            .as_ref()
            .and_then(|p| predicate_text(&snapshot, p));
        let (kind, changed_rows) = match command {
            Command::Update => (DeltaOperation::Update { predicate }, "numUpdatedRows"),
            _ => (DeltaOperation::Delete { predicate }, "numDeletedRows"),
        };
        let operation = Operation::with_metrics(
            kind,
            [
                ("numRemovedFiles", touched.len() as u64),
                ("numAddedFiles", files.len() as u64),
                (changed_rows, rows),
            ],
        );
        if let Err(error) = self
            .commit_rewrite(
                session, &table, target, &snapshot, &touched, &files, operation,
            )
            .await
        {
            remove_written(session, &snapshot, &files).await;
            return Err(error);
        }
        Ok(changed(command, rows))
    }

    /// The files among `paths` that hold rows `predicate` matches, with how many each holds.
    async fn matching_rows(
        &self,
        session: &ClientSession,
        sql: &str,
        snapshot: &DeltaScanTable,
        scan: &TableReference,
        paths: HashSet<String>,
        predicate: &Expr,
    ) -> Result<Vec<(String, u64)>> {
        let tagged = snapshot
            .clone()
            .restricted_to(paths)
            .with_file_column(FILE_COLUMN);
        let plan =
            LogicalPlanBuilder::scan(scan.clone(), provider_as_source(Arc::new(tagged)), None)?
                .filter(predicate.clone())?
                .aggregate(
                    vec![col(format!("{scan}.{FILE_COLUMN}"))],
                    vec![count_all().alias("rows")],
                )?
                .build()?;
        let batches = self.collect(session, sql, &plan).await?;
        let mut touched = vec![];
        for batch in &batches {
            let files = batch.column(0).as_string::<i32>();
            let rows = batch.column(1).as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                touched.push((files.value(i).to_string(), rows.value(i).max(0) as u64));
            }
        }
        Ok(touched)
    }

    /// The rows of the snapshot, counted over the cluster.
    async fn count_rows(
        &self,
        session: &ClientSession,
        sql: &str,
        snapshot: &DeltaScanTable,
        scan: &TableReference,
    ) -> Result<u64> {
        let plan = LogicalPlanBuilder::scan(
            scan.clone(),
            provider_as_source(Arc::new(snapshot.clone())),
            None,
        )?
        .aggregate(Vec::<Expr>::new(), vec![count_all()])?
        .build()?;
        let batches = self.collect(session, sql, &plan).await?;
        Ok(batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| b.column(0).as_primitive::<Int64Type>().value(0).max(0) as u64)
            .sum())
    }

    /// The rows of a distributed query a statement runs for itself.
    pub(crate) async fn collect(
        &self,
        session: &ClientSession,
        sql: &str,
        plan: &LogicalPlan,
    ) -> Result<Vec<RecordBatch>> {
        let physical = session.ctx.state().create_physical_plan(plan).await?;
        Ok(self
            .run_physical(session, sql, physical)
            .await?
            .try_collect()
            .await?)
    }

    /// One transaction: the touched files leave, the rewritten ones come.
    #[allow(clippy::too_many_arguments)]
    async fn commit_rewrite(
        &self,
        session: &ClientSession,
        table: &ObjectName,
        target: DeltaTarget<'_>,
        snapshot: &DeltaScanTable,
        touched: &HashSet<String>,
        files: &[WrittenFile],
        operation: Operation,
    ) -> Result<()> {
        let mut actions = snapshot.remove_actions(touched, true)?;
        actions.extend(added_files(session, snapshot, files).await?);
        target
            .commit(snapshot, actions, operation.by(session.user()))
            .await
            .map_err(|e| commit_failure(table, e))?;
        Ok(())
    }
}

/// What a statement reports: a count, except for `TRUNCATE`.
fn changed(command: Command, rows: u64) -> Output {
    match command {
        Command::Truncate => Output::done(Command::Truncate),
        command => Output::wrote(command, rows),
    }
}

impl Change {
    /// Reads the predicate (and an `UPDATE`'s new values) off DataFusion's plan of a
    /// `DELETE` or `UPDATE`: `[Projection] -> [Filter] -> [SubqueryAlias] -> TableScan`.
    fn of(input: &LogicalPlan, table: &TableReference) -> Result<Self> {
        let (values, below) = match input {
            LogicalPlan::Projection(projection) => (
                Some(
                    projection
                        .expr
                        .iter()
                        .map(|e| match e {
                            Expr::Alias(Alias { expr, .. }) => expr.as_ref().clone(),
                            other => other.clone(),
                        })
                        .collect(),
                ),
                projection.input.as_ref(),
            ),
            other => (None, other),
        };
        let (predicate, below) = match below {
            LogicalPlan::Filter(filter) => (Some(filter.predicate.clone()), filter.input.as_ref()),
            other => (None, other),
        };
        let scan = match below {
            LogicalPlan::TableScan(scan) => scan.table_name.clone(),
            LogicalPlan::SubqueryAlias(alias)
                if matches!(alias.input.as_ref(), LogicalPlan::TableScan(_)) =>
            {
                alias.alias.clone()
            }
            LogicalPlan::Limit(_) => {
                return Err(Error::NotSupported(
                    "DELETE ... LIMIT is not supported".into(),
                ));
            }
            other => {
                return Err(Error::NotSupported(format!(
                    "this change of {table} is not supported (it reads {})",
                    other.display()
                )));
            }
        };
        Ok(Change {
            scan,
            predicate,
            values,
        })
    }
}

/// The rows of the touched files after an `UPDATE`: where the predicate holds, the new values;
/// elsewhere, the rows as they were. A predicate with a subquery is planned as two filtered
/// reads (subqueries are decorrelated in filters), any other as one read with `CASE`.
fn updated(
    scan: LogicalPlanBuilder,
    predicate: Option<&Expr>,
    values: &[Expr],
) -> Result<LogicalPlan> {
    let names: Vec<String> = scan
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let Some(predicate) = predicate else {
        return Ok(scan.project(aliased(values.to_vec(), &names))?.build()?);
    };
    if has_subquery(predicate) {
        let plan = scan.build()?;
        let changed = LogicalPlanBuilder::from(plan.clone())
            .filter(predicate.clone())?
            .project(aliased(values.to_vec(), &names))?
            .build()?;
        return Ok(LogicalPlanBuilder::from(plan)
            .filter(predicate.clone().is_not_true())?
            .union(changed)?
            .build()?);
    }
    let columns = scan.schema().columns();
    let values = values
        .iter()
        .zip(columns)
        .map(|(value, column)| {
            let old = Expr::Column(column);
            if value == &old {
                Ok(old)
            } else {
                Ok(case(predicate.clone().is_true())
                    .when(lit(true), value.clone())
                    .otherwise(old)?)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(scan.project(aliased(values, &names))?.build()?)
}

fn aliased(values: Vec<Expr>, names: &[String]) -> Vec<Expr> {
    values
        .into_iter()
        .zip(names)
        .map(|(value, name)| value.alias(name))
        .collect()
}

fn has_subquery(expr: &Expr) -> bool {
    expr.exists(|e| {
        Ok(matches!(
            e,
            Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)
        ))
    })
    .unwrap_or(true)
}

/// The predicate as the log records it (in the commit's parameters, and for Delta's conflict
/// checks), if the library reads it back; else none (the commit then conflicts only with
/// changes of the same files).
fn predicate_text(snapshot: &DeltaScanTable, predicate: &Expr) -> Option<String> {
    let text = expr_to_sql(&unqualified(predicate)?).ok()?.to_string();
    ember_delta::reads_predicate(snapshot.table(), &text).then_some(text)
}

/// `predicate` over the table's bare column names, as a table's files are pruned by; none if
/// it reads anything but the table's columns (a subquery's).
fn unqualified(predicate: &Expr) -> Option<Expr> {
    if has_subquery(predicate) {
        return None;
    }
    predicate
        .clone()
        .transform(|e| {
            Ok(match e {
                Expr::Column(c) => Transformed::yes(Expr::Column(c.name.into())),
                other => Transformed::no(other),
            })
        })
        .ok()
        .map(|t| t.data)
}
