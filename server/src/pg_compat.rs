//! What Postgres clients expect of the server beyond SQL: `pg_catalog` built live from Ember's
//! catalog (psql's `\d` family, pgJDBC's DatabaseMetaData, SQLAlchemy's inspector, BI tools),
//! the Postgres system functions they call, and the rewrites that let their catalog queries run
//! on DataFusion. The tables and most functions come from the datafusion-pg-catalog crate.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::Int32Type;
use datafusion::common::ScalarValue;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, create_udf,
};
use datafusion::prelude::SessionContext;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    DataType as SqlDataType, Expr as SqlExpr, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentList, FunctionArguments, GroupByExpr, Ident, ObjectName, SelectItem, SetExpr,
    Statement, TableFactor, Value as SqlValue, VisitMut, VisitorMut, visit_relations,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::setup_pg_catalog;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_pg_catalog::sql::rules::{
    CurrentUserVariableToSessionUserFunctionCall, SqlStatementRewriteRule, StripCallableQualifier,
};
use ember_planner::session::DEFAULT_CATALOG;

use crate::error::{Error, Result};

/// The PostgreSQL version Ember speaks for (catalog layout, protocol, functions).
pub(crate) const PG_SERVER_VERSION: &str = "16.6";

/// `state` with `pg_catalog` and the Postgres functions: what every Postgres-wire session
/// starts from.
pub(crate) async fn postgres_state(state: &SessionState) -> Result<SessionState> {
    let ctx = SessionContext::new_with_state(state.clone());
    setup_pg_catalog(&ctx, DEFAULT_CATALOG, EmptyContextProvider)
        .map_err(|e| Error::DataFusion(*e))?;
    ctx.register_udf(ScalarUDF::from(PgVersion::new()));
    // Every object Ember lists is owned by its one role.
    ctx.register_udf(constant_udf(
        "pg_get_userbyid",
        vec![DataType::Int32],
        ScalarValue::Utf8(Some(OWNER.into())),
    ));
    for name in [
        "pg_function_is_visible",
        "pg_collation_is_visible",
        "pg_type_is_visible",
        "pg_opclass_is_visible",
        "pg_operator_is_visible",
        "pg_conversion_is_visible",
    ] {
        // The functions, types, collations and operators pg_catalog lists all live in
        // pg_catalog, which is always on the search path.
        ctx.register_udf(constant_udf(
            name,
            vec![DataType::Int32],
            ScalarValue::Boolean(Some(true)),
        ));
    }
    ctx.register_udf(to_regtype_udf(&ctx).await?);
    // Ember has no sequences, so no column has one: NULL, as PostgreSQL answers for a column
    // without one.
    ctx.register_udf(constant_udf(
        "pg_get_serial_sequence",
        vec![DataType::Utf8, DataType::Utf8],
        ScalarValue::Utf8(None),
    ));
    ctx.register_udf(ScalarUDF::from(JsonBuildObject::new()));
    let signatures = Arc::new(function_signatures(&ctx).await?);
    ctx.register_udf(signature_udf("pg_get_function_result", &signatures, |s| {
        &s.result
    }));
    ctx.register_udf(signature_udf(
        "pg_get_function_arguments",
        &signatures,
        |s| &s.arguments,
    ));
    ctx.register_udf(signature_udf(
        "pg_get_function_identity_arguments",
        &signatures,
        |s| &s.arguments,
    ));
    Ok(ctx.state())
}

/// A function whose answer is the same for every argument: what Ember's catalog knows of all
/// objects alike.
fn constant_udf(name: &str, arguments: Vec<DataType>, value: ScalarValue) -> ScalarUDF {
    create_udf(
        name,
        arguments,
        value.data_type(),
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            Ok(match args.first() {
                Some(ColumnarValue::Array(array)) => {
                    ColumnarValue::Array(value.to_array_of_size(array.len())?)
                }
                _ => ColumnarValue::Scalar(value.clone()),
            })
        }),
    )
}

/// `json_build_object(key, value, ...)`: a JSON object as text, keys and values in pairs.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

impl JsonBuildObject {
    fn new() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        if !args.args.len().is_multiple_of(2) {
            return datafusion::common::exec_err!(
                "argument list must have even number of elements"
            );
        }
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let mut objects = Vec::with_capacity(rows);
        for row in 0..rows {
            let mut object = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?;
                if key.is_null() {
                    return datafusion::common::exec_err!("null value not allowed for object key");
                }
                let key = match key {
                    ScalarValue::Utf8(Some(k))
                    | ScalarValue::Utf8View(Some(k))
                    | ScalarValue::LargeUtf8(Some(k)) => k,
                    other => other.to_string(),
                };
                object.insert(
                    key,
                    json_value(&ScalarValue::try_from_array(&pair[1], row)?),
                );
            }
            objects.push(serde_json::Value::Object(object).to_string());
        }
        Ok(ColumnarValue::Array(Arc::new(StringArray::from(objects))))
    }
}

fn json_value(value: &ScalarValue) -> serde_json::Value {
    use serde_json::Value as Json;
    if value.is_null() {
        return Json::Null;
    }
    match value {
        ScalarValue::Boolean(Some(b)) => Json::Bool(*b),
        ScalarValue::Int8(Some(v)) => Json::from(*v),
        ScalarValue::Int16(Some(v)) => Json::from(*v),
        ScalarValue::Int32(Some(v)) => Json::from(*v),
        ScalarValue::Int64(Some(v)) => Json::from(*v),
        ScalarValue::UInt8(Some(v)) => Json::from(*v),
        ScalarValue::UInt16(Some(v)) => Json::from(*v),
        ScalarValue::UInt32(Some(v)) => Json::from(*v),
        ScalarValue::UInt64(Some(v)) => Json::from(*v),
        ScalarValue::Float32(Some(v)) => Json::from(*v),
        ScalarValue::Float64(Some(v)) => Json::from(*v),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Json::String(s.clone()),
        other => Json::String(other.to_string()),
    }
}

/// `to_regtype(name)`: the oid of the type with that name (`int4` or `integer`), or NULL.
async fn to_regtype_udf(ctx: &SessionContext) -> Result<ScalarUDF> {
    let mut oids: HashMap<String, i32> = HashMap::new();
    let rows = query_rows(
        ctx,
        "select cast(oid as varchar), typname, format_type(oid, NULL) from pg_catalog.pg_type",
    )
    .await?;
    for row in rows {
        let Some(oid) = row[0].as_deref().and_then(|o| o.parse::<i32>().ok()) else {
            continue;
        };
        for name in row[1..].iter().flatten() {
            oids.entry(name.clone()).or_insert(oid);
        }
    }
    let oids = Arc::new(oids);
    Ok(create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let lookup = |name: Option<&str>| {
                let name = name?.trim().trim_start_matches("pg_catalog.");
                oids.get(&name.trim_matches('"').to_ascii_lowercase())
                    .copied()
            };
            Ok(match &args[0] {
                ColumnarValue::Scalar(value) => {
                    let name = match value {
                        ScalarValue::Utf8(v)
                        | ScalarValue::Utf8View(v)
                        | ScalarValue::LargeUtf8(v) => v.as_deref(),
                        _ => None,
                    };
                    ColumnarValue::Scalar(ScalarValue::Int32(lookup(name)))
                }
                ColumnarValue::Array(array) => {
                    let names = datafusion::arrow::compute::cast(array, &DataType::Utf8)?;
                    let names = names.as_string::<i32>();
                    ColumnarValue::Array(Arc::new(datafusion::arrow::array::Int32Array::from_iter(
                        names.iter().map(lookup),
                    )))
                }
            })
        }),
    ))
}

/// How psql's `\df` shows a function: its result type and its arguments.
struct FunctionSignature {
    result: String,
    arguments: String,
}

/// The signatures of the functions `pg_proc` lists, written as PostgreSQL writes them.
async fn function_signatures(ctx: &SessionContext) -> Result<HashMap<i32, FunctionSignature>> {
    let types: HashMap<String, String> = query_rows(
        ctx,
        "select cast(oid as varchar), format_type(oid, NULL) from pg_catalog.pg_type",
    )
    .await?
    .into_iter()
    .filter_map(|row| Some((row[0].clone()?, row[1].clone()?)))
    .collect();
    let type_name = |oid: &str| {
        types
            .get(oid.trim())
            .cloned()
            .unwrap_or_else(|| format!("oid({})", oid.trim()))
    };
    let list = |text: &Option<String>| -> Vec<String> {
        text.as_deref()
            .unwrap_or("")
            .trim_matches(|c| c == '[' || c == ']' || c == '{' || c == '}')
            .split(',')
            .map(|s| s.trim().trim_matches('\'').to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let rows = query_rows(
        ctx,
        "select cast(oid as varchar), cast(prorettype as varchar), cast(proretset as varchar), \
         proargtypes, proargnames, proallargtypes, proargmodes from pg_catalog.pg_proc",
    )
    .await?;
    let mut signatures = HashMap::new();
    for row in rows {
        let Some(oid) = row[0].as_deref().and_then(|o| o.parse::<i32>().ok()) else {
            continue;
        };
        let names = list(&row[4]);
        let modes = list(&row[6]);
        let all_types = list(&row[5]);
        let (arg_types, arg_modes): (Vec<String>, Vec<String>) = if all_types.is_empty() {
            let types: Vec<String> = row[3]
                .as_deref()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect();
            let modes = vec!["i".to_string(); types.len()];
            (types, modes)
        } else {
            (all_types, modes)
        };
        let mut arguments = vec![];
        let mut table = vec![];
        for (i, oid) in arg_types.iter().enumerate() {
            let mode = arg_modes.get(i).map(String::as_str).unwrap_or("i");
            let name = names.get(i).filter(|n| !n.is_empty());
            let typed = match name {
                Some(name) => format!("{name} {}", type_name(oid)),
                None => type_name(oid),
            };
            match mode {
                "t" => table.push(typed),
                "o" => arguments.push(format!("OUT {typed}")),
                "b" => arguments.push(format!("INOUT {typed}")),
                "v" => arguments.push(format!("VARIADIC {typed}")),
                _ => arguments.push(typed),
            }
        }
        let returns_set = row[2].as_deref() == Some("true");
        let result = if !table.is_empty() {
            format!("TABLE({})", table.join(", "))
        } else {
            let name = type_name(row[1].as_deref().unwrap_or(""));
            if returns_set {
                format!("SETOF {name}")
            } else {
                name
            }
        };
        signatures.insert(
            oid,
            FunctionSignature {
                result,
                arguments: arguments.join(", "),
            },
        );
    }
    Ok(signatures)
}

async fn query_rows(ctx: &SessionContext, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let batches = ctx.sql(sql).await?.collect().await?;
    let mut rows = vec![];
    let options = FormatOptions::default();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::DataFusion(e.into()))?;
        for i in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| c.is_valid(i).then(|| f.value(i).to_string()))
                    .collect(),
            );
        }
    }
    Ok(rows)
}

/// A function of a `pg_proc` oid answered from the signatures.
fn signature_udf(
    name: &str,
    signatures: &Arc<HashMap<i32, FunctionSignature>>,
    part: fn(&FunctionSignature) -> &String,
) -> ScalarUDF {
    let signatures = Arc::clone(signatures);
    create_udf(
        name,
        vec![DataType::Int32],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let lookup = |oid: Option<i32>| {
                oid.and_then(|oid| signatures.get(&oid))
                    .map(|s| part(s).clone())
            };
            Ok(match &args[0] {
                ColumnarValue::Scalar(ScalarValue::Int32(oid)) => {
                    ColumnarValue::Scalar(ScalarValue::Utf8(lookup(*oid)))
                }
                ColumnarValue::Scalar(_) => ColumnarValue::Scalar(ScalarValue::Utf8(None)),
                ColumnarValue::Array(array) => {
                    let oids = array.as_primitive::<Int32Type>();
                    ColumnarValue::Array(Arc::new(StringArray::from_iter(oids.iter().map(lookup))))
                }
            })
        }),
    )
}

/// The owner of every schema and table: Ember has one owner role, `ember`.
pub(crate) const OWNER: &str = "ember";

/// The rewrites of Postgres-specific SQL (qualified function names such as
/// `pg_catalog.version()`, `::regclass` casts, `ANY (array)`, psql's catalog queries) into SQL
/// DataFusion plans.
pub(crate) struct Compatibility {
    parser: PostgresCompatibilityParser,
    user_rules: Vec<Box<dyn SqlStatementRewriteRule>>,
}

impl Compatibility {
    pub(crate) fn new() -> Self {
        Self {
            parser: PostgresCompatibilityParser::new(),
            user_rules: vec![
                Box::new(StripCallableQualifier),
                Box::new(CurrentUserVariableToSessionUserFunctionCall),
            ],
        }
    }

    /// Parses `sql` with the known client catalog queries replaced, if the Postgres parser
    /// takes all of it.
    pub(crate) fn parse(&self, sql: &str) -> Option<Vec<Statement>> {
        // `'name'::regproc` must become the name before the crate turns it into an oid lookup.
        let rewritten;
        let sql = if sql.to_ascii_lowercase().contains("regproc") {
            let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
            for statement in &mut statements {
                let _ = statement.visit(&mut RegprocNames);
            }
            rewritten = statements
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(";\n");
            rewritten.as_str()
        } else {
            sql
        };
        let mut statements = self.parser.parse(sql).ok()?;
        for statement in &mut statements {
            let _ = statement.visit(&mut LikeEscape);
            let _ = statement.visit(&mut CatalogLookups);
        }
        Some(statements)
    }

    /// The rewrites that keep a user query's meaning: `pg_catalog.`-qualified function names
    /// (`pg_catalog.now()`, `pg_catalog.version()`), `current_user` and friends, and `LIKE`
    /// escape characters.
    pub(crate) fn rewrite_user(&self, mut statement: Statement) -> Statement {
        for rule in &self.user_rules {
            statement = rule.rewrite(statement);
        }
        let _ = statement.visit(&mut LikeEscape);
        statement
    }

    pub(crate) fn rewrite(&self, statement: Statement) -> Statement {
        let mut statement = statement;
        let _ = statement.visit(&mut RegprocNames);
        let mut statement = self.parser.rewrite(statement);
        let _ = statement.visit(&mut LikeEscape);
        let _ = statement.visit(&mut CatalogLookups);
        statement
    }
}

/// Whether `statement` reads Postgres system catalogs (`pg_catalog.*`, `information_schema.*`
/// or a `pg_*` table): a client tool's catalog query rather than a user's query.
pub(crate) fn reads_catalog(statement: &Statement) -> bool {
    visit_relations(statement, |name| {
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident())
            .map(|i| i.value.to_ascii_lowercase())
            .collect();
        let catalog = parts
            .iter()
            .any(|p| p == "pg_catalog" || p == "information_schema")
            || (parts.len() == 1 && parts[0].starts_with("pg_"));
        if catalog {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .is_break()
}

/// A correlated scalar subquery that looks up one value in `pg_catalog` (a column's default
/// in `pg_attrdef`, its collation in `pg_collation`), as client catalog queries do, is planned
/// as `max(value)`: DataFusion only plans correlated scalar subqueries that aggregate, and a
/// catalog lookup by key finds at most one row, so the answer is the same.
struct CatalogLookups;

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
struct RegprocNames;

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
struct LikeEscape;

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

/// `version()` as Postgres clients parse it (`PostgreSQL 16.6 ...`): SQLAlchemy and others read
/// the server version from it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgVersion {
    signature: Signature,
}

impl PgVersion {
    fn new() -> Self {
        Self {
            signature: Signature::nullary(Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for PgVersion {
    fn name(&self) -> &str {
        "version"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        _args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(format!(
            "PostgreSQL {PG_SERVER_VERSION} (Ember {}, Apache DataFusion {}) on {}-{}",
            env!("CARGO_PKG_VERSION"),
            datafusion::DATAFUSION_VERSION,
            std::env::consts::ARCH,
            std::env::consts::OS,
        )))))
    }
}

/// Shared by every Postgres session.
pub(crate) fn compatibility() -> &'static Compatibility {
    static COMPATIBILITY: std::sync::OnceLock<Compatibility> = std::sync::OnceLock::new();
    COMPATIBILITY.get_or_init(Compatibility::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(sql: &str) -> Statement {
        Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .expect("valid SQL")
            .remove(0)
    }

    #[test]
    fn catalog_queries_are_told_from_user_queries() {
        assert!(reads_catalog(&statement(
            "select * from pg_catalog.pg_class"
        )));
        assert!(reads_catalog(&statement(
            "select nspname from pg_namespace"
        )));
        assert!(reads_catalog(&statement(
            "select * from tpch.nation where exists (select 1 from information_schema.tables)"
        )));
        assert!(!reads_catalog(&statement("select * from tpch.nation")));
        assert!(!reads_catalog(&statement("select version()")));
    }

    #[test]
    fn user_queries_keep_their_subqueries() {
        let compatibility = Compatibility::new();
        let sql = "select a, (select max(b) from t2 where t2.k = t1.k) from t1";
        let rewritten = compatibility.rewrite_user(statement(sql));
        assert_eq!(rewritten.to_string(), statement(sql).to_string());
        let qualified = compatibility.rewrite_user(statement("select pg_catalog.version()"));
        assert_eq!(qualified.to_string(), "SELECT version()");
    }

    #[test]
    fn like_escape_characters_become_backslashes() {
        let rewritten =
            Compatibility::new().rewrite_user(statement("select 'a_b' like 'a/_b' escape '/'"));
        assert_eq!(
            rewritten.to_string(),
            "SELECT 'a_b' LIKE replace(replace('a/_b', '\\', '\\\\'), '/', '\\')"
        );
    }

    #[test]
    fn regproc_literals_become_function_names() {
        let mut parsed = statement("select typinput = 'pg_catalog.array_in'::regproc from pg_type");
        let _ = parsed.visit(&mut RegprocNames);
        assert_eq!(
            parsed.to_string(),
            "SELECT typinput = 'array_in' FROM pg_type"
        );
    }

    #[test]
    fn catalog_lookups_aggregate() {
        let mut parsed = statement(
            "select (select d.adbin from pg_attrdef d where d.adrelid = a.attrelid) from pg_attribute a",
        );
        let _ = parsed.visit(&mut CatalogLookups);
        assert!(
            parsed
                .to_string()
                .contains("SELECT max(d.adbin) FROM pg_attrdef")
        );
    }
}
