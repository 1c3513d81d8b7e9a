//! The names PostgreSQL gives result columns the query did not name. DataFusion names an
//! unaliased expression by its text (`count(*)`, `a + 1`); PostgreSQL by its kind: a function
//! call by the function (`count`), a cast of a constant by the type (`int4`), `CASE` as `case`,
//! an operator as `?column?` (its `FigureColname`). Clients read columns by these names
//! (`row["count"]`), so Postgres sessions announce them. Only the names on the wire change:
//! PostgreSQL allows two columns of one name, which a DataFusion plan does not.

use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    DataType as SqlDataType, Expr, ObjectName, Query, SelectItem, SetExpr, Statement,
};

/// The PostgreSQL name of each result column of `statement`, where it names them by itself;
/// `None` for a column that keeps DataFusion's name (named by the query, or a column), or for
/// the whole statement when its columns cannot be told from its text (`SELECT *`).
pub(crate) fn postgres_column_names(statement: &DFStatement) -> Option<Vec<Option<String>>> {
    let DFStatement::Statement(statement) = statement else {
        return None;
    };
    let Statement::Query(query) = statement.as_ref() else {
        return None;
    };
    let names = query_names(query)?;
    names.iter().any(Option::is_some).then_some(names)
}

fn query_names(query: &Query) -> Option<Vec<Option<String>>> {
    set_expr_names(&query.body)
}

fn set_expr_names(body: &SetExpr) -> Option<Vec<Option<String>>> {
    match body {
        SetExpr::Select(select) => select
            .projection
            .iter()
            .map(|item| match item {
                SelectItem::UnnamedExpr(expr) => Some(unnamed(expr)),
                SelectItem::ExprWithAlias { .. } => Some(None),
                // How many columns a wildcard stands for is not in the text.
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => None,
                SelectItem::ExprWithAliases { .. } => None,
            })
            .collect(),
        SetExpr::Query(query) => query_names(query),
        // The left-most query names the columns of a UNION, INTERSECT or EXCEPT.
        SetExpr::SetOperation { left, .. } => set_expr_names(left),
        _ => None,
    }
}

/// The name of an unaliased expression, if PostgreSQL's differs from DataFusion's.
fn unnamed(expr: &Expr) -> Option<String> {
    match expr {
        // A column keeps its name in both.
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => None,
        _ => Some(figure(expr).map_or_else(|| "?column?".to_string(), |(name, _)| name)),
    }
}

/// PostgreSQL's name of `expr` and how strongly it names it (2: a column or function name,
/// 1: a type or keyword such as `case`), or `None` (`?column?`).
fn figure(expr: &Expr) -> Option<(String, u8)> {
    match expr {
        Expr::Identifier(ident) => Some((ident.value.clone(), 2)),
        Expr::CompoundIdentifier(parts) => parts.last().map(|i| (i.value.clone(), 2)),
        Expr::Nested(inner) => figure(inner),
        Expr::Function(function) => function_name(&function.name).map(|n| (n, 2)),
        Expr::Cast {
            expr, data_type, ..
        } => match figure(expr) {
            Some((name, 2)) => Some((name, 2)),
            _ => type_name(data_type).map(|n| (n, 1)),
        },
        Expr::TypedString(typed) => type_name(&typed.data_type).map(|n| (n, 1)),
        Expr::Case { .. } => Some(("case".into(), 1)),
        Expr::Array(_) => Some(("array".into(), 1)),
        Expr::Tuple(_) => Some(("row".into(), 1)),
        Expr::Exists { .. } => Some(("exists".into(), 2)),
        Expr::Subquery(query) => query_first_name(query),
        Expr::Extract { .. } => Some(("extract".into(), 2)),
        Expr::Substring { .. } => Some(("substring".into(), 2)),
        Expr::Position { .. } => Some(("position".into(), 2)),
        Expr::Overlay { .. } => Some(("overlay".into(), 2)),
        Expr::Trim { .. } => Some(("btrim".into(), 2)),
        Expr::Ceil { .. } => Some(("ceil".into(), 2)),
        Expr::Floor { .. } => Some(("floor".into(), 2)),
        Expr::Collate { expr, .. } => figure(expr),
        _ => None,
    }
}

/// A scalar subquery is named after its one column.
fn query_first_name(query: &Query) -> Option<(String, u8)> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    match select.projection.first()? {
        SelectItem::ExprWithAlias { alias, .. } => Some((alias.value.clone(), 2)),
        SelectItem::UnnamedExpr(expr) => figure(expr),
        _ => None,
    }
}

fn function_name(name: &ObjectName) -> Option<String> {
    let ident = name.0.last()?.as_ident()?;
    Some(if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    })
}

/// A type as PostgreSQL names it internally (`integer` is `int4`).
fn type_name(data_type: &SqlDataType) -> Option<String> {
    let name = match data_type {
        SqlDataType::SmallInt(_) | SqlDataType::Int2(_) => "int2",
        SqlDataType::Int(_) | SqlDataType::Integer(_) | SqlDataType::Int4(_) => "int4",
        SqlDataType::BigInt(_) | SqlDataType::Int8(_) => "int8",
        SqlDataType::Real | SqlDataType::Float4 => "float4",
        SqlDataType::Double(_) | SqlDataType::DoublePrecision | SqlDataType::Float8 => "float8",
        SqlDataType::Float(_) => "float8",
        SqlDataType::Numeric(_) | SqlDataType::Decimal(_) | SqlDataType::Dec(_) => "numeric",
        SqlDataType::Boolean | SqlDataType::Bool => "bool",
        SqlDataType::Text | SqlDataType::String(_) => "text",
        SqlDataType::Varchar(_) | SqlDataType::CharacterVarying(_) => "varchar",
        SqlDataType::Char(_) | SqlDataType::Character(_) => "bpchar",
        SqlDataType::Bytea => "bytea",
        SqlDataType::Date => "date",
        SqlDataType::Time(..) => "time",
        SqlDataType::Timestamp(_, tz) => match tz {
            datafusion::sql::sqlparser::ast::TimezoneInfo::WithTimeZone
            | datafusion::sql::sqlparser::ast::TimezoneInfo::Tz => "timestamptz",
            _ => "timestamp",
        },
        SqlDataType::Interval { .. } => "interval",
        SqlDataType::JSON => "json",
        SqlDataType::JSONB => "jsonb",
        SqlDataType::Uuid => "uuid",
        SqlDataType::Regclass => "regclass",
        SqlDataType::Custom(name, _) => return function_name(name),
        _ => return None,
    };
    Some(name.to_string())
}

#[cfg(test)]
mod tests {
    use datafusion::sql::parser::DFParser;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;

    use super::*;

    fn names(sql: &str) -> Option<Vec<Option<String>>> {
        let statement = DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {})
            .unwrap()
            .pop_front()
            .unwrap();
        postgres_column_names(&statement)
    }

    fn all(sql: &str) -> Vec<String> {
        names(sql)
            .unwrap()
            .into_iter()
            .map(|n| n.unwrap_or_else(|| "-".into()))
            .collect()
    }

    #[test]
    fn unnamed_columns_are_named_as_postgres_names_them() {
        // Each name is PostgreSQL 15's for the same query ("-": the query's own name).
        assert_eq!(
            all(
                "select count(*), a + 1, 1, 'x'::text, b::int, 1::integer, case when a then 1 end, \
                 pg_catalog.now(), sum(x) as total, a from t"
            ),
            [
                "count", "?column?", "?column?", "text", "b", "int4", "case", "now", "-", "-"
            ]
        );
        assert_eq!(
            all(
                "select coalesce(a, 0), (select max(b) from u), exists (select 1), date '2020-01-01', \
                 extract(year from d), trim(s), current_date, array[1]"
            ),
            [
                "coalesce",
                "max",
                "exists",
                "date",
                "extract",
                "btrim",
                "current_date",
                "array"
            ]
        );
        assert_eq!(all("select count(*) from a union select 1"), ["count"]);
        assert_eq!(names("select * from t"), None);
        assert_eq!(names("select a, b as c from t"), None);
        assert_eq!(names("insert into t values (1)"), None);
    }
}
