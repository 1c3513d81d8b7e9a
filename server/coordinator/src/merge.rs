//! `MERGE INTO target USING source ON ... WHEN [NOT] MATCHED [BY SOURCE] ...` into a Delta table
//! (managed or external), copy-on-write as Delta on Spark does it, every step a distributed
//! query:
//!
//! 1. the target's rows joined with the source (left-joined when `WHEN NOT MATCHED BY SOURCE`
//!    clauses act on the rows no source row matches): which files hold rows a clause changes
//!    (and how many), and whether a source row matched a target row more than once where it
//!    would change it (an error, as in the SQL standard);
//! 2. one write: the rows of those files, updated or deleted by the first clause that applies
//!    to each, and the source rows no target row matches, inserted by the first
//!    `WHEN NOT MATCHED` clause that applies;
//! 3. one Delta transaction removes the rewritten files and adds the written ones.
//!
//! Clause predicates that are NULL do not apply; rows no clause applies to stay as they are.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::common::{Column, TableReference};
use datafusion::datasource::provider_as_source;
use datafusion::functions_aggregate::expr_fn::{count_distinct, sum};
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::conditional_expressions::CaseBuilder;
use datafusion::logical_expr::dml::{
    MergeIntoAction, MergeIntoClause, MergeIntoClauseKind, MergeIntoOp,
};
use datafusion::logical_expr::{
    DmlStatement, Expr, ExprFunctionExt, JoinType, LogicalPlan, LogicalPlanBuilder, WriteOp, cast,
    col, lit, when,
};
use ember_delta::deltalake_core::protocol::{DeltaOperation, MergePredicate};
use ember_delta::{DeltaScanTable, Operation};

use crate::declared::check_column_constraints;
use crate::delta_target::DeltaTarget;
use crate::engine::QueryEngine;
use crate::error::{Error, Result};
use crate::output::{Command, Output};
use crate::session::ClientSession;
use crate::writes::{Target, added_files, commit_failure, remove_written};

/// The column naming each target row's file.
const FILE: &str = "__ember_file";
/// A target row's number within its file (for telling one row matched twice).
const ROW: &str = "__ember_row";
/// Present (true) on the source's side of a join: a target row with it was matched.
const MATCHED: &str = "__ember_matched";
/// The clause that applies to a row (1-based among its kind), 0 for none.
const CLAUSE: &str = "__ember_clause";

impl QueryEngine {
    /// `MERGE INTO` a Delta table; `sql` describes it.
    pub(crate) async fn merge(
        &self,
        session: &ClientSession,
        sql: &str,
        plan: LogicalPlan,
    ) -> Result<Output> {
        self.run_merge(session, sql, plan, None).await
    }

    /// `EXPLAIN MERGE ...`: DataFusion's plan of the statement, then the plans of Ember's steps
    /// (the query finding the files to change, the write, as if it changed every file) and the
    /// commit; nothing runs.
    pub(crate) async fn explain_merge(
        &self,
        session: &ClientSession,
        sql: &str,
        plan: LogicalPlan,
    ) -> Result<Output> {
        let mut steps = vec![(
            "logical_plan".to_string(),
            plan.display_indent().to_string(),
        )];
        self.run_merge(session, sql, plan, Some(&mut steps)).await?;
        Ok(Output::Rows(crate::query::explain_rows(steps)))
    }

    /// Runs a MERGE, or with `explain`, records its steps' plans there instead.
    async fn run_merge(
        &self,
        session: &ClientSession,
        sql: &str,
        plan: LogicalPlan,
        mut explain: Option<&mut Vec<(String, String)>>,
    ) -> Result<Output> {
        // DataFusion's analysis: conditions must be boolean, comparisons get their casts.
        let state = session.ctx.state();
        let plan = state
            .analyzer()
            .execute_and_check(plan, state.config_options(), |_, _| {})?;
        let LogicalPlan::Dml(DmlStatement {
            table_name,
            op: WriteOp::MergeInto(merge),
            input: source,
            ..
        }) = &plan
        else {
            return Err(Error::NotSupported(format!("not a MERGE: {sql}")));
        };
        let table = self.resolve_name(session, table_name)?;
        self.check_writable_schema(&table.schema).await?;
        let provider = session.ctx.table_provider(table_name.clone()).await?;
        let Some(delta) = DeltaTarget::of(&provider) else {
            return Err(Error::NotSupported(format!(
                "MERGE into table {table} is not supported: only into Delta tables (CREATE TABLE, or external STORED AS DELTA)"
            )));
        };
        let clauses = Clauses::of(merge)?;
        // Until its files are committed, VACUUM waits.
        let _writing = match explain {
            None => delta.writing().await,
            Some(_) => None,
        };
        let snapshot = delta.latest().await?;
        let optimized = |plan: &LogicalPlan| -> Result<String> {
            Ok(state.optimize(plan)?.display_indent().to_string())
        };
        let source = marked(source)?;
        let target = MergeTarget {
            name: table_name.clone(),
            snapshot: &snapshot,
            delta,
        };

        // 1. Which files the WHEN MATCHED clauses change.
        let mut touched: HashSet<String> = HashSet::new();
        let (mut changed, mut deleted) = (0u64, 0u64);
        if clauses.changes_rows() {
            // Rows no source row matches matter only to WHEN NOT MATCHED BY SOURCE clauses.
            let join = match clauses.by_source.is_empty() {
                true => JoinType::Inner,
                false => JoinType::Left,
            };
            let plan = target
                .numbered_scan()?
                .join_on(source.clone().build()?, join, [merge.on.clone()])?
                .project([
                    col(Column::new(Some(table_name.clone()), FILE)),
                    col(Column::new(Some(table_name.clone()), ROW)),
                    clauses.changing_clause()?.alias(CLAUSE),
                ])?
                .aggregate(
                    [col(FILE)],
                    [
                        sum(when(col(CLAUSE).gt(lit(0)), lit(1i64)).otherwise(lit(0i64))?)
                            .alias("changed"),
                        count_distinct(when(col(CLAUSE).gt(lit(0)), col(ROW)).end()?).alias("rows"),
                        sum(clauses.deletes(col(CLAUSE))).alias("deleted"),
                    ],
                )?
                .build()?;
            if let Some(steps) = explain.as_deref_mut() {
                steps.push(("merge_changed_files".into(), optimized(&plan)?));
                // Explained as if every file had rows to change.
                touched = snapshot
                    .matching_files(&state, &[])?
                    .into_iter()
                    .map(|f| f.path)
                    .collect();
            }
            let batches = match explain {
                None => self.collect(session, sql, &plan).await?,
                Some(_) => vec![],
            };
            for batch in batches {
                let files = batch.column(0).as_string::<i32>();
                let pairs = batch.column(1).as_primitive::<Int64Type>();
                let rows = batch.column(2).as_primitive::<Int64Type>();
                let gone = batch.column(3).as_primitive::<Int64Type>();
                for i in 0..batch.num_rows() {
                    let pairs = if pairs.is_null(i) { 0 } else { pairs.value(i) };
                    if pairs != rows.value(i) {
                        return Err(Error::CardinalityViolation(format!(
                            "MERGE matched a row of {table} with more than one source row: a target row can change once"
                        )));
                    }
                    if pairs > 0 {
                        touched.insert(files.value(i).to_string());
                        changed += pairs as u64;
                        deleted += if gone.is_null(i) {
                            0
                        } else {
                            gone.value(i) as u64
                        };
                    }
                }
            }
        }

        // 2. The rewritten files' rows and the inserted rows, in one write.
        let rewritten = match touched.is_empty() {
            true => None,
            false => Some(target.rewritten(&touched, &source, &merge.on, &clauses)?),
        };
        let inserted = match clauses.inserts.is_empty() {
            true => None,
            false => Some(target.inserted(&source, &merge.on, &clauses)?),
        };
        let written = match (rewritten, inserted) {
            (None, None) => return Ok(Output::wrote(Command::Merge, 0)),
            (Some(plan), None) | (None, Some(plan)) => plan,
            (Some(a), Some(b)) => LogicalPlanBuilder::from(a).union(b)?.build()?,
        };
        let written = check_column_constraints(Arc::new(written), &delta.schema())?;
        if let Some(steps) = explain {
            steps.push(("merge_write".into(), optimized(&written)?));
            steps.push((
                "merge_commit".into(),
                "one Delta transaction: remove the files with changed rows, add the files written"
                    .into(),
            ));
            return Ok(Output::done(Command::Merge));
        }
        let physical = state.create_physical_plan(&written).await?;
        let sink = snapshot.write_files(&state, physical).await?;
        let (rows_written, files) = self.write(session, sql, sink, Target::Directory).await?;
        // The rows written are the touched files' rows less those deleted, and the inserts.
        let kept: u64 = snapshot
            .matching_files(&state, &[])?
            .iter()
            .filter(|f| touched.contains(&f.path))
            .map(|f| f.rows.unwrap_or(0))
            .sum::<u64>()
            .saturating_sub(deleted);
        let inserted = rows_written.saturating_sub(kept);

        // 3. One commit.
        let committed = async {
            let mut actions = snapshot.remove_actions(&touched, true)?;
            actions.extend(added_files(session, &snapshot, &files).await?);
            delta
                .commit(
                    &snapshot,
                    actions,
                    Operation::with_metrics(
                        clauses.operation(&merge.on),
                        [
                            ("numTargetRowsInserted", inserted),
                            ("numTargetRowsUpdated", changed - deleted),
                            ("numTargetRowsDeleted", deleted),
                            ("numTargetFilesAdded", files.len() as u64),
                            ("numTargetFilesRemoved", touched.len() as u64),
                        ],
                    )
                    .by(session.user()),
                )
                .await
                .map_err(|e| commit_failure(&table, e))
        }
        .await;
        if let Err(error) = committed {
            remove_written(session, &snapshot, &files).await;
            return Err(error);
        }
        Ok(Output::wrote(Command::Merge, changed + inserted))
    }
}

/// The source's rows with a last column [`MATCHED`] (true).
fn marked(source: &LogicalPlan) -> Result<LogicalPlanBuilder> {
    let mut columns: Vec<Expr> = source
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    columns.push(lit(true).alias(MATCHED));
    Ok(LogicalPlanBuilder::from(source.clone()).project(columns)?)
}

/// The WHEN clauses by kind. The clauses that change target rows are numbered from 1: the
/// `WHEN MATCHED` ones, then the `WHEN NOT MATCHED BY SOURCE` ones; the inserting ones from 1
/// among themselves.
struct Clauses<'a> {
    matched: Vec<&'a MergeIntoClause>,
    by_source: Vec<&'a MergeIntoClause>,
    inserts: Vec<&'a MergeIntoClause>,
}

impl<'a> Clauses<'a> {
    fn of(merge: &'a MergeIntoOp) -> Result<Self> {
        let mut clauses = Clauses {
            matched: vec![],
            by_source: vec![],
            inserts: vec![],
        };
        for clause in &merge.clauses {
            match clause.kind.canonical() {
                MergeIntoClauseKind::Matched => clauses.matched.push(clause),
                MergeIntoClauseKind::NotMatchedBySource => {
                    if matches!(clause.action, MergeIntoAction::Insert { .. }) {
                        return Err(Error::Syntax(
                            "WHEN NOT MATCHED BY SOURCE takes UPDATE or DELETE: there is no source row to insert".into(),
                        ));
                    }
                    clauses.by_source.push(clause)
                }
                _ => clauses.inserts.push(clause),
            }
        }
        Ok(clauses)
    }

    /// The clauses that change target rows, numbered from 1.
    fn changing(&self) -> impl Iterator<Item = (i64, &&'a MergeIntoClause)> {
        self.matched
            .iter()
            .chain(&self.by_source)
            .enumerate()
            .map(|(i, c)| (i as i64 + 1, c))
    }

    /// Whether any clause changes target rows.
    fn changes_rows(&self) -> bool {
        !self.matched.is_empty() || !self.by_source.is_empty()
    }

    /// The number of the clause that applies to a row of the target left-joined with the
    /// source (the first applying `WHEN MATCHED` clause where a source row matched, the first
    /// applying `WHEN NOT MATCHED BY SOURCE` one where none did), else 0.
    fn changing_clause(&self) -> Result<Expr> {
        let matched = first_applying(&self.matched, 0)?;
        if self.by_source.is_empty() {
            return Ok(when(col(MATCHED).is_true(), matched).otherwise(lit(0i64))?);
        }
        let by_source = first_applying(&self.by_source, self.matched.len())?;
        Ok(when(col(MATCHED).is_true(), matched).otherwise(by_source)?)
    }

    /// 1 where `clause` numbers a clause that deletes, else 0.
    fn deletes(&self, clause: Expr) -> Expr {
        let deletes: Vec<Expr> = self
            .changing()
            .filter(|(_, c)| matches!(c.action, MergeIntoAction::Delete))
            .map(|(i, _)| lit(i))
            .collect();
        match deletes.is_empty() {
            true => lit(0i64),
            false => when(clause.in_list(deletes, false), lit(1i64))
                .otherwise(lit(0i64))
                .unwrap_or_else(|_| lit(0i64)),
        }
    }

    /// The commit's record of the statement.
    fn operation(&self, on: &Expr) -> DeltaOperation {
        let record = |clauses: &[&MergeIntoClause]| {
            clauses
                .iter()
                .map(|c| MergePredicate {
                    action_type: match c.action {
                        MergeIntoAction::Update(_) => "update",
                        MergeIntoAction::Delete => "delete",
                        MergeIntoAction::Insert { .. } => "insert",
                    }
                    .to_string(),
                    predicate: c.predicate.as_ref().map(|p| p.to_string()),
                })
                .collect()
        };
        DeltaOperation::Merge {
            // No predicate for conflict checks: the statement read the whole table.
            predicate: None,
            merge_predicate: Some(on.to_string()),
            matched_predicates: record(&self.matched),
            not_matched_predicates: record(&self.inserts),
            not_matched_by_source_predicates: record(&self.by_source),
        }
    }
}

/// `CASE WHEN p1 THEN first + 1 WHEN p2 THEN first + 2 ... ELSE 0 END` over `clauses` (a
/// clause without a predicate always applies; a NULL predicate does not).
fn first_applying(clauses: &[&MergeIntoClause], first: usize) -> Result<Expr> {
    let cases = clauses.iter().enumerate().map(|(i, clause)| {
        let applies = match &clause.predicate {
            Some(predicate) => predicate.clone().is_true(),
            None => lit(true),
        };
        (applies, lit((first + i) as i64 + 1))
    });
    case_of(cases, lit(0i64))
}

/// `CASE WHEN c1 THEN v1 WHEN c2 THEN v2 ... ELSE otherwise END`; `otherwise` alone without
/// cases.
fn case_of(cases: impl IntoIterator<Item = (Expr, Expr)>, otherwise: Expr) -> Result<Expr> {
    let mut builder: Option<CaseBuilder> = None;
    for (condition, value) in cases {
        builder = Some(match builder {
            None => when(condition, value),
            Some(mut b) => b.when(condition, value),
        });
    }
    match builder {
        Some(mut b) => Ok(b.otherwise(otherwise)?),
        None => Ok(otherwise),
    }
}

/// The target table of a `MERGE`, at the version it read.
struct MergeTarget<'a> {
    name: TableReference,
    snapshot: &'a DeltaScanTable,
    delta: DeltaTarget<'a>,
}

impl MergeTarget<'_> {
    fn scan(&self, table: DeltaScanTable) -> Result<LogicalPlanBuilder> {
        Ok(LogicalPlanBuilder::scan(
            self.name.clone(),
            provider_as_source(Arc::new(table)),
            None,
        )?)
    }

    /// Every target row with its file and its number within the file.
    fn numbered_scan(&self) -> Result<LogicalPlanBuilder> {
        let file = col(Column::new(Some(self.name.clone()), FILE));
        let number = row_number().partition_by(vec![file]).build()?.alias(ROW);
        let scan = self.scan(self.snapshot.clone().with_file_column(FILE))?;
        let mut columns: Vec<Expr> = scan
            .schema()
            .columns()
            .into_iter()
            .map(Expr::Column)
            .collect();
        // The window's output, named as a column of the target.
        columns.push(col(ROW).alias_qualified(Some(self.name.clone()), ROW));
        Ok(scan.window(vec![number])?.project(columns)?)
    }

    /// The target's columns: each name and the expression for it in `values`, or the column.
    fn columns(&self) -> Vec<(String, Expr)> {
        self.delta
            .schema()
            .fields()
            .iter()
            .map(|f| {
                let column = col(Column::new(Some(self.name.clone()), f.name()));
                (f.name().clone(), column)
            })
            .collect()
    }

    /// The rows of the `touched` files after the `WHEN MATCHED` clauses.
    fn rewritten(
        &self,
        touched: &HashSet<String>,
        source: &LogicalPlanBuilder,
        on: &Expr,
        clauses: &Clauses<'_>,
    ) -> Result<LogicalPlan> {
        let joined = self
            .scan(self.snapshot.clone().restricted_to(touched.clone()))?
            .join_on(source.clone().build()?, JoinType::Left, [on.clone()])?;
        let clause = clauses.changing_clause()?;
        let mut columns: Vec<Expr> = joined
            .schema()
            .columns()
            .into_iter()
            .map(Expr::Column)
            .collect();
        columns.push(clause.alias(CLAUSE));
        let mut rows = joined.project(columns)?;
        let deletes = clauses.deletes(col(CLAUSE));
        if deletes != lit(0i64) {
            rows = rows.filter(deletes.eq(lit(0i64)))?;
        }
        let schema = self.delta.schema();
        let values = self
            .columns()
            .into_iter()
            .map(|(name, old)| {
                let field = schema
                    .field_with_name(&name)
                    .map_err(|e| Error::DataFusion(e.into()))?;
                let updates = clauses.changing().filter_map(|(i, clause)| {
                    let MergeIntoAction::Update(assignments) = &clause.action else {
                        return None;
                    };
                    let (_, value) = assignments.iter().find(|(c, _)| c == &name)?;
                    Some((
                        col(CLAUSE).eq(lit(i)),
                        cast(value.clone(), field.data_type().clone()),
                    ))
                });
                let value = case_of(updates, old)?;
                Ok(value.alias(name))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(rows.project(values)?.build()?)
    }

    /// The source rows no target row matches, as the `WHEN NOT MATCHED` clauses insert them.
    fn inserted(
        &self,
        source: &LogicalPlanBuilder,
        on: &Expr,
        clauses: &Clauses<'_>,
    ) -> Result<LogicalPlan> {
        let target = self.scan(self.snapshot.clone())?.build()?;
        let unmatched = source
            .clone()
            .join_on(target, JoinType::LeftAnti, [on.clone()])?;
        let mut columns: Vec<Expr> = unmatched
            .schema()
            .columns()
            .into_iter()
            .map(Expr::Column)
            .collect();
        columns.push(first_applying(&clauses.inserts, 0)?.alias(CLAUSE));
        let rows = unmatched
            .project(columns)?
            .filter(col(CLAUSE).gt(lit(0i64)))?;
        let schema = self.delta.schema();
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        // Each clause's value for each column: as listed, by position without a list, or
        // the column's default (NULL without one).
        let mut per_clause: Vec<HashMap<String, Expr>> = vec![];
        for clause in &clauses.inserts {
            let MergeIntoAction::Insert { columns, values } = &clause.action else {
                return Err(Error::NotSupported(
                    "WHEN NOT MATCHED THEN takes INSERT".into(),
                ));
            };
            let listed: Vec<String> = match columns.is_empty() {
                true => names.clone(),
                false => columns.clone(),
            };
            if listed.len() != values.len() {
                return Err(Error::InvalidParameter(format!(
                    "MERGE ... INSERT names {} columns and gives {} values",
                    listed.len(),
                    values.len()
                )));
            }
            per_clause.push(listed.into_iter().zip(values.iter().cloned()).collect());
        }
        let values = schema
            .fields()
            .iter()
            .map(|field| {
                let name = field.name();
                let fallback = self
                    .delta
                    .column_default(name)
                    .cloned()
                    .unwrap_or(Expr::Literal(datafusion::common::ScalarValue::Null, None));
                let inserts = per_clause.iter().enumerate().map(|(i, values)| {
                    let value = values
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| fallback.clone());
                    (col(CLAUSE).eq(lit(i as i64 + 1)), value)
                });
                let value = case_of(inserts, fallback.clone())?;
                Ok(cast(value, field.data_type().clone()).alias(name))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(rows.project(values)?.build()?)
    }
}
