//! `::regclass` casts that datafusion-pg-catalog leaves: those of names computed at run time
//! (`format('%I.%I', schema, table)::regclass`, as Metabase writes), which cannot become a
//! subquery DataFusion decorrelates, and those of literals in queries that read no catalog
//! table (`select 'tpch.lineitem'::regclass`). They become `ember_regclass(expr)`, a function
//! holding the relation names of `pg_class` read just before the statement is planned (oids are
//! stable: `pg_class` keeps the ones it handed out). A name that is no relation is an error, as
//! in PostgreSQL; an oid (a number, or digits) passes through.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Int32Array};
use datafusion::arrow::datatypes::{DataType, Int32Type};
use datafusion::common::exec_err;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    DataType as SqlDataType, Expr as SqlExpr, Ident, ObjectName, Value as SqlValue, VisitMut,
    VisitorMut,
};

use super::functions::query_rows;
use ember_coordinator::Result;

const FUNCTION: &str = "ember_regclass";

/// Rewrites the run-time regclass casts of `statement`; true if it had any.
pub(crate) fn rewrite(statement: &mut DFStatement) -> bool {
    let DFStatement::Statement(inner) = statement else {
        return false;
    };
    let mut casts = RuntimeCasts { found: false };
    let _ = inner.visit(&mut casts);
    casts.found
}

struct RuntimeCasts {
    found: bool,
}

fn is_regclass(data_type: &SqlDataType) -> bool {
    match data_type {
        SqlDataType::Regclass => true,
        SqlDataType::Custom(name, _) => name
            .0
            .last()
            .and_then(|part| part.as_ident())
            .is_some_and(|ident| ident.value.eq_ignore_ascii_case("regclass")),
        _ => false,
    }
}

impl VisitorMut for RuntimeCasts {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut SqlExpr) -> ControlFlow<()> {
        if let SqlExpr::Cast {
            expr: operand,
            data_type,
            ..
        } = expr
            && is_regclass(data_type)
            && !matches!(operand.as_ref(), SqlExpr::Value(v) if matches!(v.value, SqlValue::Placeholder(_)))
        {
            self.found = true;
            let operand = std::mem::replace(operand.as_mut(), SqlExpr::value(SqlValue::Null));
            *expr = SqlExpr::Function(datafusion::sql::sqlparser::ast::Function {
                name: ObjectName::from(vec![Ident::new(FUNCTION)]),
                uses_odbc_syntax: false,
                parameters: datafusion::sql::sqlparser::ast::FunctionArguments::None,
                args: datafusion::sql::sqlparser::ast::FunctionArguments::List(
                    datafusion::sql::sqlparser::ast::FunctionArgumentList {
                        duplicate_treatment: None,
                        args: vec![datafusion::sql::sqlparser::ast::FunctionArg::Unnamed(
                            datafusion::sql::sqlparser::ast::FunctionArgExpr::Expr(operand),
                        )],
                        clauses: vec![],
                    },
                ),
                filter: None,
                null_treatment: None,
                over: None,
                within_group: vec![],
            });
        }
        ControlFlow::Continue(())
    }
}

/// Registers `ember_regclass` in `ctx` with the relations `pg_class` lists now; unqualified
/// names resolve in `current_schema`, then in `pg_catalog` (the search path).
pub(crate) async fn register(ctx: &SessionContext, current_schema: &str) -> Result<()> {
    let rows = query_rows(
        ctx,
        "select n.nspname, c.relname, cast(c.oid as varchar) from pg_catalog.pg_class c \
         join pg_catalog.pg_namespace n on c.relnamespace = n.oid",
    )
    .await?;
    let mut oids = HashMap::new();
    for row in rows {
        let [Some(schema), Some(name), Some(oid)] = [&row[0], &row[1], &row[2]] else {
            continue;
        };
        let Ok(oid) = oid.parse::<i32>() else {
            continue;
        };
        oids.insert((schema.clone(), name.clone()), oid);
    }
    ctx.register_udf(ScalarUDF::from(RegclassLookup {
        signature: Signature::any(1, Volatility::Stable),
        oids: Arc::new(oids),
        search_path: vec![current_schema.to_string(), "pg_catalog".to_string()],
    }));
    Ok(())
}

#[derive(Debug)]
struct RegclassLookup {
    signature: Signature,
    oids: Arc<HashMap<(String, String), i32>>,
    search_path: Vec<String>,
}

impl PartialEq for RegclassLookup {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.oids, &other.oids)
    }
}

impl Eq for RegclassLookup {}

impl std::hash::Hash for RegclassLookup {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        FUNCTION.hash(state);
    }
}

impl RegclassLookup {
    fn lookup(&self, name: &str) -> datafusion::error::Result<i32> {
        if let Ok(oid) = name.trim().parse::<i32>() {
            return Ok(oid);
        }
        let parts = parse_name(name);
        let found = match parts.as_slice() {
            [schema, relation] => self.oids.get(&(schema.clone(), relation.clone())).copied(),
            [relation] => self
                .search_path
                .iter()
                .find_map(|schema| self.oids.get(&(schema.clone(), relation.clone())).copied()),
            _ => None,
        };
        match found {
            Some(oid) => Ok(oid),
            None => exec_err!("relation \"{name}\" does not exist"),
        }
    }
}

/// A possibly qualified name as PostgreSQL reads it: bare parts lowercased, quoted parts as
/// written (`""` standing for `"`).
fn parse_name(name: &str) -> Vec<String> {
    let mut parts = vec![];
    let mut current = String::new();
    let mut chars = name.trim().chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                current.push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut current)),
            c if quoted => current.push(c),
            c => current.extend(c.to_lowercase()),
        }
    }
    parts.push(current);
    parts
}

impl ScalarUDFImpl for RegclassLookup {
    fn name(&self) -> &str {
        FUNCTION
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Int32)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let scalar = matches!(args.args[0], ColumnarValue::Scalar(_));
        let array = args.args[0].to_array(args.number_rows)?;
        let oids: Int32Array = if array.data_type().is_integer() {
            // An oid already: `oid::regclass` names the same relation.
            datafusion::arrow::compute::cast(&array, &DataType::Int32)?
                .as_primitive::<Int32Type>()
                .clone()
        } else {
            let names = datafusion::arrow::compute::cast(&array, &DataType::Utf8)?;
            names
                .as_string::<i32>()
                .iter()
                .map(|name| name.map(|n| self.lookup(n)).transpose())
                .collect::<datafusion::error::Result<_>>()?
        };
        if scalar {
            return Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::try_from_array(&oids, 0)?,
            ));
        }
        Ok(ColumnarValue::Array(Arc::new(oids)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_as_postgres_reads_them() {
        assert_eq!(parse_name("tools.accounts"), ["tools", "accounts"]);
        assert_eq!(
            parse_name("Tools.\"My \"\"T\"\".x\""),
            ["tools", "My \"T\".x"]
        );
        assert_eq!(parse_name("pg_class"), ["pg_class"]);
    }

    #[test]
    fn only_casts_of_computed_values_are_rewritten() {
        let mut statement = datafusion::sql::parser::DFParser::parse_sql(
            "select format('%I.%I', a, b)::regclass, 'x'::regclass, c::int, $1::regclass from t",
        )
        .unwrap()
        .pop_front()
        .unwrap();
        assert!(rewrite(&mut statement));
        assert_eq!(
            statement.to_string(),
            "SELECT ember_regclass(format('%I.%I', a, b)), ember_regclass('x'), c::INT, $1::REGCLASS FROM t"
        );
    }
}
