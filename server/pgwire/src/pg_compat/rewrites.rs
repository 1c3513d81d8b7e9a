//! Ember's own rewrites of Postgres clients' SQL, applied with datafusion-pg-catalog's.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken;
use datafusion::sql::sqlparser::ast::{
    AccessExpr, BinaryOperator, CaseWhen, DataType as SqlDataType, Expr as SqlExpr, Function,
    FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments, GroupByExpr, Ident,
    ObjectName, Query, Select, SelectItem, SetExpr, TableFactor, Value as SqlValue, Visit, Visitor,
    VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// A correlated scalar subquery that looks up one value in `pg_catalog` (a column's default
/// in `pg_attrdef`, its collation in `pg_collation`), as client catalog queries do, is planned
/// as `max(value)`: DataFusion only plans correlated scalar subqueries that aggregate, and a
/// catalog lookup by key finds at most one row, so the answer is the same.
///
/// Conditions on the outer row alone move out of the subquery, which DataFusion can then
/// decorrelate where it cannot a non-equality in its WHERE: `(SELECT v FROM t WHERE o.a AND
/// t.k = o.k)` becomes `CASE WHEN o.a THEN (SELECT max(v) FROM t WHERE t.k = o.k) END`, NULL
/// exactly when the original is. A lookup whose value reads the outer row cannot be
/// decorrelated at all; it becomes NULL, as datafusion-pg-catalog makes those of a select list
/// (the ones clients send look up what Ember does not have, such as identity sequences).
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
#[derive(Default)]
pub(super) struct RegprocNames {
    /// Casts replaced so far.
    pub(super) num_replaced: usize,
}

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
            self.num_replaced += 1;
        }
        ControlFlow::Continue(())
    }
}

impl VisitorMut for CatalogLookups {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut SqlExpr) -> ControlFlow<()> {
        if let SqlExpr::Subquery(query) = expr
            && let SetExpr::Select(select) = query.body.as_mut()
        {
            match aggregate_lookup(select) {
                Lookup::NotOne => {}
                Lookup::Aggregated => {}
                Lookup::OnOuterRow(condition) => *expr = when(*condition, expr.clone()),
                Lookup::ReadsOuterRow => *expr = SqlExpr::value(SqlValue::Null),
            }
        }
        ControlFlow::Continue(())
    }
}

/// datafusion-pg-catalog replaces every correlated subquery of a select list with NULL, since
/// DataFusion cannot plan most of them as written. A catalog lookup that [`CatalogLookups`]
/// makes plannable (its correlation is equalities with the outer row, once the conditions on
/// the outer row alone move into the value) is rewritten here, before that rule runs, and
/// wrapped in parentheses, which the rule leaves alone: its value is then the real one.
#[derive(Default)]
pub(super) struct KeepPlannableLookups {
    /// How many lookups were kept.
    pub(super) num_kept: usize,
}

impl VisitorMut for KeepPlannableLookups {
    type Break = ();

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        let SetExpr::Select(select) = query.body.as_mut() else {
            return ControlFlow::Continue(());
        };
        for item in &mut select.projection {
            let (SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. }) = item
            else {
                continue;
            };
            let SqlExpr::Subquery(subquery) = expr else {
                continue;
            };
            let SetExpr::Select(lookup) = subquery.body.as_mut() else {
                continue;
            };
            if !decorrelates(lookup) {
                continue;
            }
            *expr = match aggregate_lookup(lookup) {
                Lookup::OnOuterRow(condition) => when(*condition, expr.clone()),
                _ => SqlExpr::Nested(Box::new(expr.clone())),
            };
            self.num_kept += 1;
        }
        ControlFlow::Continue(())
    }
}

/// Whether `select` is a correlated catalog lookup whose every condition on the outer row is
/// either on the outer row alone or an equality of an outer and an own expression.
fn decorrelates(select: &mut Select) -> bool {
    let local = local_relations(select);
    let Some(value) = lookup_value(select) else {
        return false;
    };
    if has_subquery(value) || names_outer_columns(value, &local) {
        return false;
    }
    let Some(selection) = &select.selection else {
        return false;
    };
    let mut correlated = false;
    for condition in conjuncts(selection.clone()) {
        if has_subquery(&condition) {
            return false;
        }
        if !names_outer_columns(&condition, &local) || on_outer_row_only(&condition, &local) {
            continue;
        }
        let SqlExpr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } = &condition
        else {
            return false;
        };
        let outer = |e: &SqlExpr| on_outer_row_only(e, &local);
        let own = |e: &SqlExpr| !names_outer_columns(e, &local);
        if !((outer(left) && own(right)) || (own(left) && outer(right))) {
            return false;
        }
        correlated = true;
    }
    correlated
}

/// Whether `expr` names a column qualified by a relation other than `local`'s.
fn names_outer_columns(expr: &SqlExpr, local: &[String]) -> bool {
    struct Outer<'a>(&'a [String]);
    impl Visitor for Outer<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &SqlExpr) -> ControlFlow<()> {
            match expr {
                SqlExpr::CompoundIdentifier(parts)
                    if parts.len() >= 2
                        && !self
                            .0
                            .contains(&parts[parts.len() - 2].value.to_ascii_lowercase()) =>
                {
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        }
    }
    expr.visit(&mut Outer(local)).is_break()
}

/// Whether `select` reads pg_catalog tables only (a catalog lookup).
fn reads_catalog_only(select: &Select) -> bool {
    !select.from.is_empty()
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
        })
}

/// The single value a catalog lookup selects, when it has exactly one and no GROUP BY.
fn lookup_value(select: &mut Select) -> Option<&mut SqlExpr> {
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    if !reads_catalog_only(select) || grouped || select.projection.len() != 1 {
        return None;
    }
    match &mut select.projection[0] {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => Some(e),
        _ => None,
    }
}

fn aggregate_name(expr: &SqlExpr) -> Option<String> {
    match expr {
        SqlExpr::Function(f) => Some(f.name.to_string().to_ascii_lowercase()),
        _ => None,
    }
}

/// What [`aggregate_lookup`] made of a subquery.
enum Lookup {
    /// Not a catalog lookup of one value, or one that aggregates already: left as it is.
    NotOne,
    /// Now `max(value)`.
    Aggregated,
    /// Now `max(value)`, to be read only when this condition on the outer row holds.
    OnOuterRow(Box<SqlExpr>),
    /// Its value reads the outer row, which DataFusion cannot decorrelate.
    ReadsOuterRow,
}

/// A lookup becomes `max(value)`, its conditions on the outer row alone taken out.
fn aggregate_lookup(select: &mut Select) -> Lookup {
    let local = local_relations(select);
    let Some(value) = lookup_value(select) else {
        return Lookup::NotOne;
    };
    let aggregated = aggregate_name(value).is_some_and(|name| {
        matches!(
            name.as_str(),
            "max"
                | "min"
                | "count"
                | "sum"
                | "avg"
                | "array_agg"
                | "string_agg"
                | "bool_and"
                | "bool_or"
                | "every"
        )
    });
    if aggregated {
        return Lookup::NotOne;
    }
    if names_outer_columns(value, &local) {
        return Lookup::ReadsOuterRow;
    }
    *value = call("max", vec![value.clone()]);
    let Some(selection) = select.selection.take() else {
        return Lookup::Aggregated;
    };
    let (outer, own): (Vec<SqlExpr>, Vec<SqlExpr>) = conjuncts(selection)
        .into_iter()
        .partition(|c| on_outer_row_only(c, &local));
    select.selection = own.into_iter().reduce(and);
    match outer.into_iter().reduce(and) {
        Some(condition) => Lookup::OnOuterRow(Box::new(condition)),
        None => Lookup::Aggregated,
    }
}

fn when(condition: SqlExpr, value: SqlExpr) -> SqlExpr {
    SqlExpr::Case {
        case_token: AttachedToken::empty(),
        end_token: AttachedToken::empty(),
        operand: None,
        conditions: vec![CaseWhen {
            condition,
            result: value,
        }],
        else_result: None,
    }
}

fn and(left: SqlExpr, right: SqlExpr) -> SqlExpr {
    SqlExpr::BinaryOp {
        left: Box::new(left),
        op: BinaryOperator::And,
        right: Box::new(right),
    }
}

fn conjuncts(expr: SqlExpr) -> Vec<SqlExpr> {
    match expr {
        SqlExpr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            let mut all = conjuncts(*left);
            all.extend(conjuncts(*right));
            all
        }
        SqlExpr::Nested(inner)
            if matches!(
                inner.as_ref(),
                SqlExpr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            conjuncts(*inner)
        }
        other => vec![other],
    }
}

/// The names the relations of `select`'s FROM go by (aliases and table names, lowercase).
fn local_relations(select: &Select) -> Vec<String> {
    let mut names = vec![];
    for table in &select.from {
        for relation in
            std::iter::once(&table.relation).chain(table.joins.iter().map(|j| &j.relation))
        {
            if let TableFactor::Table { name, alias, .. } = relation {
                if let Some(alias) = alias {
                    names.push(alias.name.value.to_ascii_lowercase());
                }
                if let Some(last) = name.0.last().and_then(|p| p.as_ident()) {
                    names.push(last.value.to_ascii_lowercase());
                }
            }
        }
    }
    names
}

fn has_subquery(expr: &SqlExpr) -> bool {
    struct Finder;
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &SqlExpr) -> ControlFlow<()> {
            match expr {
                SqlExpr::Subquery(_) | SqlExpr::Exists { .. } | SqlExpr::InSubquery { .. } => {
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        }
    }
    expr.visit(&mut Finder).is_break()
}

/// Whether `expr` reads columns of the outer query only: every column it names is qualified
/// by a relation the subquery does not have (an unqualified name might be the subquery's own).
fn on_outer_row_only(expr: &SqlExpr, local: &[String]) -> bool {
    struct Columns<'a> {
        local: &'a [String],
        num_outer: usize,
    }
    impl Visitor for Columns<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &SqlExpr) -> ControlFlow<()> {
            match expr {
                SqlExpr::Identifier(_)
                | SqlExpr::Subquery(_)
                | SqlExpr::Exists { .. }
                | SqlExpr::InSubquery { .. } => ControlFlow::Break(()),
                SqlExpr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                    let qualifier = parts[parts.len() - 2].value.to_ascii_lowercase();
                    if self.local.contains(&qualifier) {
                        ControlFlow::Break(())
                    } else {
                        self.num_outer += 1;
                        ControlFlow::Continue(())
                    }
                }
                _ => ControlFlow::Continue(()),
            }
        }
    }
    let mut columns = Columns {
        local,
        num_outer: 0,
    };
    expr.visit(&mut columns).is_continue() && columns.num_outer > 0
}

/// Set-returning array functions of client catalog queries, as DataFusion's `unnest`:
/// `information_schema._pg_expandarray(a)` (rows of `(x, n)`: element and position, as pgJDBC
/// reads index keys with) and `generate_subscripts(a, d)`; and the field access `(row).field`
/// they are read with, as `get_field`.
pub(super) struct SetReturningArrays;

impl VisitorMut for SetReturningArrays {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut SqlExpr) -> ControlFlow<()> {
        match expr {
            SqlExpr::Function(f) => {
                let name = f
                    .name
                    .0
                    .last()
                    .and_then(|p| p.as_ident())
                    .map(|i| i.value.to_ascii_lowercase());
                let args: Vec<SqlExpr> = match &f.args {
                    FunctionArguments::List(list) => list
                        .args
                        .iter()
                        .filter_map(|a| match a {
                            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
                            _ => None,
                        })
                        .collect(),
                    _ => return ControlFlow::Continue(()),
                };
                match (name.as_deref(), args.as_slice()) {
                    (Some("_pg_expandarray"), [array]) => {
                        *expr = call("unnest", vec![call("_pg_expandarray", vec![array.clone()])]);
                    }
                    (Some("generate_subscripts"), [array, dimension]) => {
                        let bound = |f| call(f, vec![array.clone(), dimension.clone()]);
                        let series = call(
                            "generate_series",
                            vec![bound("array_lower"), bound("array_upper")],
                        );
                        *expr = call("unnest", vec![series]);
                    }
                    _ => {}
                }
            }
            SqlExpr::CompoundFieldAccess { root, access_chain }
                if access_chain
                    .iter()
                    .all(|a| matches!(a, AccessExpr::Dot(SqlExpr::Identifier(_)))) =>
            {
                let mut value = (**root).clone();
                for access in access_chain.iter() {
                    if let AccessExpr::Dot(SqlExpr::Identifier(field)) = access {
                        // Unquoted names fold to lowercase, as Postgres folds them.
                        let name = match field.quote_style {
                            Some(_) => field.value.clone(),
                            None => field.value.to_ascii_lowercase(),
                        };
                        let name = SqlExpr::value(SqlValue::SingleQuotedString(name));
                        value = call("get_field", vec![value, name]);
                    }
                }
                *expr = value;
            }
            _ => {}
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

/// `pg_is_other_temp_schema(oid)`: whether the schema is another session's temporary schema
/// (each session's temporary tables live in `pg_temp_<its id>`). The call becomes a lookup in
/// `pg_namespace` against the session's own id; it reads no rows from a client.
pub(super) struct OtherTempSchemas;

impl VisitorMut for OtherTempSchemas {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut SqlExpr) -> ControlFlow<()> {
        let SqlExpr::Function(function) = expr else {
            return ControlFlow::Continue(());
        };
        let named = function
            .name
            .0
            .last()
            .and_then(|part| part.as_ident())
            .is_some_and(|ident| ident.value.eq_ignore_ascii_case("pg_is_other_temp_schema"));
        let FunctionArguments::List(list) = &function.args else {
            return ControlFlow::Continue(());
        };
        let [FunctionArg::Unnamed(FunctionArgExpr::Expr(oid))] = list.args.as_slice() else {
            return ControlFlow::Continue(());
        };
        if !named {
            return ControlFlow::Continue(());
        }
        let lookup = format!(
            "({oid}) IN (SELECT oid FROM pg_catalog.pg_namespace \
             WHERE starts_with(nspname, 'pg_temp_') \
             AND nspname <> concat('pg_temp_', ember_session_id()))"
        );
        if let Ok(replacement) = Parser::new(&PostgreSqlDialect {})
            .try_with_sql(&lookup)
            .and_then(|mut parser| parser.parse_expr())
        {
            *expr = SqlExpr::Nested(Box::new(replacement));
        }
        ControlFlow::Continue(())
    }
}

/// `col_description(table, column)` and `obj_description(table, 'pg_class')` read the comments
/// `COMMENT ON` keeps, from `pg_description` (a lookup by key, which the planner decorrelates):
/// PostgreSQL's definitions of them. `obj_description` of other catalogs' objects is NULL
/// (Ember keeps no comments on them).
pub(super) struct Descriptions;

/// The function a `col_description`/`obj_description` call is, if `expr` is one.
fn description_call(expr: &SqlExpr) -> Option<String> {
    let SqlExpr::Function(function) = expr else {
        return None;
    };
    let name = function
        .name
        .0
        .last()?
        .as_ident()?
        .value
        .to_ascii_lowercase();
    matches!(name.as_str(), "col_description" | "obj_description").then_some(name)
}

impl VisitorMut for Descriptions {
    type Break = ();

    /// An unaliased call in a select list keeps its column name (PostgreSQL names the column
    /// after the function), which the lookup replacing it would not; a second call of the same
    /// function in the list is numbered (a plan's columns need distinct names).
    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let SetExpr::Select(select) = query.body.as_mut() {
            let mut used = std::collections::HashMap::<String, usize>::new();
            for item in &mut select.projection {
                if let SelectItem::UnnamedExpr(expr) = item
                    && let Some(name) = description_call(expr)
                {
                    let count = used.entry(name.clone()).or_default();
                    *count += 1;
                    let alias = match *count {
                        1 => name,
                        n => format!("{name}_{n}"),
                    };
                    *item = SelectItem::ExprWithAlias {
                        expr: expr.clone(),
                        alias: Ident::new(alias),
                    };
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut SqlExpr) -> ControlFlow<()> {
        let SqlExpr::Function(function) = expr else {
            return ControlFlow::Continue(());
        };
        let Some(name) = function
            .name
            .0
            .last()
            .and_then(|part| part.as_ident())
            .map(|ident| ident.value.to_ascii_lowercase())
        else {
            return ControlFlow::Continue(());
        };
        let FunctionArguments::List(list) = &function.args else {
            return ControlFlow::Continue(());
        };
        let args: Vec<&SqlExpr> = list
            .args
            .iter()
            .filter_map(|arg| match arg {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                _ => None,
            })
            .collect();
        if args.len() != list.args.len() {
            return ControlFlow::Continue(());
        }
        let lookup = match (name.as_str(), args.as_slice()) {
            ("col_description", [table, column]) => Some(format!(
                "(SELECT max(description) FROM pg_catalog.pg_description \
                 WHERE objoid = ({table}) AND classoid = 1259 AND objsubid = ({column}))"
            )),
            ("obj_description", [object]) => Some(format!(
                "(SELECT max(description) FROM pg_catalog.pg_description \
                 WHERE objoid = ({object}) AND classoid = 1259 AND objsubid = 0)"
            )),
            ("obj_description", [object, SqlExpr::Value(catalog)]) => match &catalog.value {
                SqlValue::SingleQuotedString(c) if c == "pg_class" => Some(format!(
                    "(SELECT max(description) FROM pg_catalog.pg_description \
                     WHERE objoid = ({object}) AND classoid = 1259 AND objsubid = 0)"
                )),
                _ => Some("CAST(NULL AS TEXT)".to_string()),
            },
            _ => None,
        };
        if let Some(lookup) = lookup
            && let Ok(replacement) = Parser::new(&PostgreSqlDialect {})
                .try_with_sql(&lookup)
                .and_then(|mut parser| parser.parse_expr())
        {
            *expr = replacement;
        }
        ControlFlow::Continue(())
    }
}
