//! Ember's own rewrites of Postgres clients' SQL, applied with datafusion-pg-catalog's.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    DataType as SqlDataType, Expr as SqlExpr, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentList, FunctionArguments, GroupByExpr, Ident, ObjectName, SelectItem, SetExpr,
    TableFactor, Value as SqlValue, VisitorMut,
};

/// A correlated scalar subquery that looks up one value in `pg_catalog` (a column's default
/// in `pg_attrdef`, its collation in `pg_collation`), as client catalog queries do, is planned
/// as `max(value)`: DataFusion only plans correlated scalar subqueries that aggregate, and a
/// catalog lookup by key finds at most one row, so the answer is the same.
pub(super) struct CatalogLookups;

fn call(name: &str, args: Vec<SqlExpr>) -> SqlExpr {
    SqlExpr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// `'pg_catalog.array_in'::regproc` becomes `'array_in'`: pg_catalog keeps function
/// references (`typinput`, `typoutput`, ...) as function names, so the name is what compares
/// equal.
pub(super) struct RegprocNames;

impl VisitorMut for RegprocNames {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut SqlExpr) -> ControlFlow<()> {
        if let SqlExpr::Cast {
            expr: inner,
            data_type: SqlDataType::Custom(type_name, _),
            ..
        } = expr
            && let SqlExpr::Value(value) = inner.as_ref()
            && let SqlValue::SingleQuotedString(function) = &value.value
            && type_name
                .0
                .last()
                .and_then(|part| part.as_ident())
                .is_some_and(|ident| ident.value.eq_ignore_ascii_case("regproc"))
        {
            let bare = function.rsplit('.').next().unwrap_or(function).to_string();
            *expr = SqlExpr::value(SqlValue::SingleQuotedString(bare));
        }
        ControlFlow::Continue(())
    }
}

impl VisitorMut for CatalogLookups {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut SqlExpr) -> ControlFlow<()> {
        let SqlExpr::Subquery(query) = expr else {
            return ControlFlow::Continue(());
        };
        let SetExpr::Select(select) = query.body.as_mut() else {
            return ControlFlow::Continue(());
        };
        let reads_catalog_only = !select.from.is_empty()
            && select.from.iter().all(|t| {
                std::iter::once(&t.relation)
                    .chain(t.joins.iter().map(|j| &j.relation))
                    .all(|relation| match relation {
                        TableFactor::Table {
                            name, args: None, ..
                        } => name
                            .0
                            .last()
                            .and_then(|part| part.as_ident())
                            .is_some_and(|ident| ident.value.starts_with("pg_")),
                        _ => false,
                    })
            });
        let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
        if !reads_catalog_only || grouped || select.projection.len() != 1 {
            return ControlFlow::Continue(());
        }
        let item = &mut select.projection[0];
        let value = match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
            _ => return ControlFlow::Continue(()),
        };
        let aggregated = matches!(value, SqlExpr::Function(f) if matches!(
            f.name.to_string().to_ascii_lowercase().as_str(),
            "max" | "min" | "count" | "sum" | "avg" | "array_agg" | "string_agg" | "bool_and"
                | "bool_or" | "every"
        ));
        if !aggregated {
            *value = call("max", vec![value.clone()]);
        }
        ControlFlow::Continue(())
    }
}

/// `x LIKE p ESCAPE 'c'` with an escape character other than DataFusion's backslash becomes
/// `x LIKE p'` where `p'` is `p` with backslashes escaped and `c` turned into a backslash.
pub(super) struct LikeEscape;

impl VisitorMut for LikeEscape {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut SqlExpr) -> ControlFlow<()> {
        if let SqlExpr::Like {
            pattern,
            escape_char,
            ..
        }
        | SqlExpr::ILike {
            pattern,
            escape_char,
            ..
        } = expr
            && let Some(SqlValue::SingleQuotedString(escape)) =
                escape_char.as_ref().map(|e| &e.value)
            && escape != "\\"
            && escape.chars().count() == 1
        {
            let text = |s: &str| SqlExpr::value(SqlValue::SingleQuotedString(s.to_string()));
            let backslashes_escaped = call(
                "replace",
                vec![(**pattern).clone(), text("\\"), text("\\\\")],
            );
            **pattern = call(
                "replace",
                vec![backslashes_escaped, text(escape), text("\\")],
            );
            *escape_char = None;
        }
        ControlFlow::Continue(())
    }
}
