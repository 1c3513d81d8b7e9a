//! PostgreSQL's joined writes, which DataFusion does not plan, as statements it does:
//!
//! - `DELETE FROM t USING s, ... WHERE cond` deletes the rows of `t` some row of the `USING`
//!   tables meets `cond` with: `DELETE FROM t WHERE EXISTS (SELECT 1 FROM s, ... WHERE cond)`.
//! - `UPDATE t SET c = e FROM s WHERE cond` updates the rows of `t` a row of `s` meets `cond`
//!   with: `MERGE INTO t USING s ON cond WHEN MATCHED THEN UPDATE SET c = e`. Where
//!   PostgreSQL would update a row with one of several source rows that match it, picked
//!   arbitrarily, Ember refuses the statement (the MERGE's cardinality error, 21000).
//!
//! And in `MERGE`, unqualified columns of `WHEN NOT MATCHED` clauses are the source's, as in
//! PostgreSQL (DataFusion would find them ambiguous).

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    Assignment, AssignmentTarget, Delete, Expr as SqlExpr, FromTable, Ident, Merge, MergeAction,
    MergeClause, MergeClauseKind, MergeInsertKind, MergeUpdateExpr, ObjectName, Query, SetExpr,
    Statement as SqlStatement, TableFactor, TableWithJoins, Update, UpdateTableFromKind, Value,
    visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::error::{Error, Result};

/// What a joined write became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rewritten {
    /// `UPDATE ... FROM`, now a `MERGE`.
    UpdateFrom,
    /// `DELETE ... USING`, now a `DELETE ... WHERE EXISTS`.
    DeleteUsing,
}

/// Rewrites a joined `UPDATE` or `DELETE` in place; says what it was.
pub(crate) fn rewrite(statement: &mut DFStatement) -> Result<Option<Rewritten>> {
    let DFStatement::Statement(inner) = statement else {
        return Ok(None);
    };
    match inner.as_mut() {
        SqlStatement::Delete(delete) if delete.using.is_some() => {
            delete_using(delete)?;
            Ok(Some(Rewritten::DeleteUsing))
        }
        SqlStatement::Update(update) if update.from.is_some() => {
            let merge = update_from(update)?;
            **inner = SqlStatement::Merge(merge);
            Ok(Some(Rewritten::UpdateFrom))
        }
        SqlStatement::Merge(merge) => {
            qualify_not_matched(merge);
            Ok(None)
        }
        _ => Ok(None),
    }
}

fn delete_using(delete: &mut Delete) -> Result<()> {
    if delete.returning.is_some() {
        return Err(Error::NotSupported(
            "DELETE ... RETURNING is not supported".into(),
        ));
    }
    unalias_target(delete);
    let using = delete.using.take().unwrap_or_default();
    let mut exists = select_one()?;
    if let SetExpr::Select(select) = exists.body.as_mut() {
        select.from = using;
        select.selection = delete.selection.take();
    }
    delete.selection = Some(SqlExpr::Exists {
        subquery: exists,
        negated: false,
    });
    Ok(())
}

/// DataFusion's DELETE drops the target's alias, which a correlated subquery then cannot
/// name: `DELETE FROM s.t AS d ... d.k` becomes `DELETE FROM s.t ... s.t.k`.
fn unalias_target(delete: &mut Delete) {
    let (FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables)) = &mut delete.from;
    let Some(TableWithJoins {
        relation: TableFactor::Table { name, alias, .. },
        ..
    }) = tables.first_mut()
    else {
        return;
    };
    let Some(alias) = alias.take() else {
        return;
    };
    let qualifier: Vec<Ident> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident().cloned())
        .collect();
    let names_alias = |ident: &Ident| match (alias.name.quote_style, ident.quote_style) {
        (None, None) => ident.value.eq_ignore_ascii_case(&alias.name.value),
        _ => ident.value == alias.name.value,
    };
    if let Some(selection) = &mut delete.selection {
        let _ = visit_expressions_mut(selection, |expr| {
            if let SqlExpr::CompoundIdentifier(parts) = expr
                && let [table, column] = parts.as_slice()
                && names_alias(table)
            {
                let mut qualified = qualifier.clone();
                qualified.push(column.clone());
                *parts = qualified;
            }
            ControlFlow::<()>::Continue(())
        });
    }
}

/// `SELECT 1`, whose FROM and WHERE the caller fills in.
fn select_one() -> Result<Box<Query>> {
    Ok(Parser::new(&GenericDialect {})
        .try_with_sql("SELECT 1")?
        .parse_query()?)
}

fn update_from(update: &mut Update) -> Result<Merge> {
    if update.returning.is_some() {
        return Err(Error::NotSupported(
            "UPDATE ... RETURNING is not supported".into(),
        ));
    }
    let from = match update.from.take() {
        Some(UpdateTableFromKind::AfterSet(from) | UpdateTableFromKind::BeforeSet(from)) => from,
        None => vec![],
    };
    let source = match <[TableWithJoins; 1]>::try_from(from) {
        Ok([TableWithJoins { relation, joins }]) if joins.is_empty() => relation,
        _ => {
            return Err(Error::NotSupported(
                "UPDATE ... FROM reads one table or subquery: join them in a subquery".into(),
            ));
        }
    };
    if !update.table.joins.is_empty() {
        return Err(Error::NotSupported(
            "UPDATE of a join is not supported".into(),
        ));
    }
    // `SET t.c = ...`: the target's column c.
    let assignments = std::mem::take(&mut update.assignments)
        .into_iter()
        .map(|assignment| {
            let target = match assignment.target {
                AssignmentTarget::ColumnName(ObjectName(mut parts)) if parts.len() > 1 => {
                    AssignmentTarget::ColumnName(ObjectName(parts.split_off(parts.len() - 1)))
                }
                other => other,
            };
            Assignment {
                target,
                value: assignment.value,
            }
        })
        .collect();
    let on = update
        .selection
        .take()
        .unwrap_or(SqlExpr::Value(Value::Boolean(true).into()));
    Ok(Merge {
        merge_token: update.update_token.clone(),
        optimizer_hints: vec![],
        into: true,
        table: update.table.relation.clone(),
        source,
        on: Box::new(on),
        clauses: vec![MergeClause {
            when_token: update.update_token.clone(),
            clause_kind: MergeClauseKind::Matched,
            predicate: None,
            action: MergeAction::Update(MergeUpdateExpr {
                update_token: update.update_token.clone(),
                assignments,
                update_predicate: None,
                delete_predicate: None,
            }),
        }],
        output: None,
    })
}

/// In `WHEN NOT MATCHED` clauses of a `MERGE`, unqualified columns are the source's, as in
/// PostgreSQL: no target row exists there to name (dbt's merge writes `VALUES ("id", ...)`
/// for source columns the target has too). Qualifies them with the source's name.
fn qualify_not_matched(merge: &mut Merge) {
    let source = match &merge.source {
        TableFactor::Table {
            alias: Some(alias), ..
        }
        | TableFactor::Derived {
            alias: Some(alias), ..
        } => alias.name.clone(),
        TableFactor::Table { name, .. } => match name.0.last().and_then(|p| p.as_ident()) {
            Some(ident) => ident.clone(),
            None => return,
        },
        _ => return,
    };
    let qualify = |expr: &mut SqlExpr| {
        let _ = visit_expressions_mut(expr, |e| {
            if let SqlExpr::Identifier(ident) = e {
                *e = SqlExpr::CompoundIdentifier(vec![source.clone(), ident.clone()]);
            }
            ControlFlow::<()>::Continue(())
        });
    };
    for clause in &mut merge.clauses {
        if !matches!(
            clause.clause_kind,
            MergeClauseKind::NotMatched | MergeClauseKind::NotMatchedByTarget
        ) {
            continue;
        }
        if let Some(predicate) = &mut clause.predicate {
            qualify(predicate);
        }
        if let MergeAction::Insert(insert) = &mut clause.action
            && let MergeInsertKind::Values(values) = &mut insert.kind
        {
            for row in &mut values.rows {
                for expr in row.content.iter_mut() {
                    qualify(expr);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::parser::DFParser;

    use super::*;

    fn rewritten(sql: &str) -> (Option<Rewritten>, String) {
        let mut statement = DFParser::parse_sql(sql)
            .expect("parses")
            .pop_front()
            .expect("a statement");
        let kind = rewrite(&mut statement).expect("rewrites");
        (kind, statement.to_string())
    }

    #[test]
    fn delete_using_becomes_delete_where_exists() {
        assert_eq!(
            rewritten("DELETE FROM t AS d USING s AS x, u WHERE x.k = d.k AND u.k = x.k"),
            (
                Some(Rewritten::DeleteUsing),
                "DELETE FROM t WHERE EXISTS (SELECT 1 FROM s AS x, u WHERE x.k = t.k AND u.k = x.k)"
                    .into()
            )
        );
        assert_eq!(rewritten("DELETE FROM t WHERE k = 1").0, None);
    }

    #[test]
    fn merge_inserts_read_the_source() {
        assert_eq!(
            rewritten(
                "MERGE INTO t USING s AS src ON t.k = src.k \
                 WHEN MATCHED THEN UPDATE SET v = v \
                 WHEN NOT MATCHED AND v > 0 THEN INSERT (k, v) VALUES (k, v + 1)"
            ),
            (
                None,
                "MERGE INTO t USING s AS src ON t.k = src.k \
                 WHEN MATCHED THEN UPDATE SET v = v \
                 WHEN NOT MATCHED AND src.v > 0 THEN INSERT (k, v) VALUES (src.k, src.v + 1)"
                    .into()
            )
        );
    }

    #[test]
    fn update_from_becomes_merge() {
        assert_eq!(
            rewritten("UPDATE t SET t.v = s.v, w = 1 FROM s WHERE s.k = t.k"),
            (
                Some(Rewritten::UpdateFrom),
                "MERGE INTO t USING s ON s.k = t.k WHEN MATCHED THEN UPDATE SET v = s.v, w = 1"
                    .into()
            )
        );
        let mut joined = DFParser::parse_sql("UPDATE t SET v = 1 FROM a JOIN b ON a.k = b.k")
            .expect("parses")
            .pop_front()
            .expect("a statement");
        assert!(rewrite(&mut joined).is_err());
    }
}
