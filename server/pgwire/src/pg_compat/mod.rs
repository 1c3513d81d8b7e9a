//! What Postgres clients expect of the server beyond SQL: `pg_catalog` built live from Ember's
//! catalog (psql's `\d` family, pgJDBC's DatabaseMetaData, SQLAlchemy's inspector, BI tools),
//! the Postgres system functions they call, and the rewrites that let their catalog queries run
//! on DataFusion. The tables and most functions come from the datafusion-pg-catalog crate.

mod format;
mod functions;
mod information_schema;
mod keys;
mod psql;
pub(crate) mod regclass;
mod rewrites;

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Statement, VisitMut, visit_relations};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::setup_pg_catalog;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_pg_catalog::sql::rules::{SqlStatementRewriteRule, StripCallableQualifier};
use ember_coordinator::comments::Comments;
use ember_planner::session::DEFAULT_CATALOG;

use ember_coordinator::{Error, Result};
use format::Format;
use functions::{
    AnyConstant, ExpandArray, GetExpr, JsonBuildObject, KeyDefinition, constant_udf,
    function_signatures, signature_udf, to_regtype_udf, version_text,
};
use information_schema::InformationSchemaViews;
use rewrites::{
    CatalogLookups, Descriptions, KeepPlannableLookups, LikeEscape, OtherTempSchemas, RegprocNames,
    SetReturningArrays,
};

/// The PostgreSQL version Ember speaks for (catalog layout, protocol, functions).
pub(crate) const PG_SERVER_VERSION: &str = "16.6";
/// [`PG_SERVER_VERSION`] as `server_version_num` gives it (major * 10000 + minor).
pub(crate) const PG_SERVER_VERSION_NUM: &str = "160006";

/// `state` with `pg_catalog` and the Postgres functions: what every Postgres-wire session
/// starts from.
pub(crate) async fn postgres_state(
    state: &SessionState,
    comments: Arc<Comments>,
) -> Result<SessionState> {
    let ctx = SessionContext::new_with_state(state.clone());
    setup_pg_catalog(&ctx, DEFAULT_CATALOG, EmptyContextProvider)
        .map_err(|e| Error::DataFusion(*e))?;
    // Keys and column defaults of managed tables show in pg_catalog, built at each query.
    if let Some(catalog) = ctx.catalog(DEFAULT_CATALOG)
        && let Some(pg_catalog) = catalog.schema("pg_catalog")
    {
        let definitions = Arc::new(keys::KeyDefinitions::default());
        let keyed = keys::KeyedPgCatalog::new(
            pg_catalog,
            Arc::clone(ctx.state().catalog_list()),
            Arc::clone(&definitions),
            comments,
        );
        catalog.register_schema("pg_catalog", Arc::new(keyed))?;
        ctx.register_udf(ScalarUDF::from(KeyDefinition::index(&definitions)));
        ctx.register_udf(ScalarUDF::from(KeyDefinition::constraint(&definitions)));
    }
    ctx.register_udf(constant_udf(
        "version",
        vec![],
        ScalarValue::Utf8(Some(version_text())),
    ));
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
    ctx.register_udf(ScalarUDF::from(Format::new()));
    // Calls are rewritten into lookups in pg_description (`Descriptions`); one the rewrite
    // cannot read (named arguments) answers NULL, as for a column without a comment.
    ctx.register_udf(ScalarUDF::from(AnyConstant::new(
        "col_description",
        2,
        ScalarValue::Utf8(None),
    )));
    ctx.register_udf(ScalarUDF::from(ExpandArray::new()));
    ctx.register_udf(ScalarUDF::from(GetExpr::new()));
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
            // `current_user`, `session_user` and `current_role` are the session's own functions
            // (its login user and its current role differ after SET ROLE).
            user_rules: vec![Box::new(StripCallableQualifier)],
        }
    }

    /// `statements` (parsed from `sql`) with the known client catalog queries replaced, if the
    /// compatibility parser takes all of it.
    pub(crate) fn parse(&self, sql: &str, statements: &[Statement]) -> Option<Vec<Statement>> {
        // Two rewrites must come before the crate's: `'name'::regproc` must become the name
        // before it turns into an oid lookup, and plannable catalog lookups of select lists
        // must be kept from becoming NULL. The statements then go back to text, which the
        // crate reparses (its replacements of whole client queries work on the text).
        let mut statements = statements.to_vec();
        let mut lookups = KeepPlannableLookups::default();
        let mut regprocs = RegprocNames::default();
        for statement in &mut statements {
            let _ = statement.visit(&mut lookups);
            let _ = statement.visit(&mut regprocs);
        }
        let rewritten;
        let sql = if lookups.num_kept > 0 || regprocs.num_replaced > 0 {
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
            let _ = statement.visit(&mut SetReturningArrays);
            let _ = statement.visit(&mut CatalogLookups);
            let _ = statement.visit(&mut InformationSchemaViews);
            let _ = statement.visit(&mut OtherTempSchemas);
            let _ = statement.visit(&mut Descriptions);
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
        let _ = statement.visit(&mut Descriptions);
        statement
    }

    pub(crate) fn rewrite(&self, statement: Statement) -> Statement {
        let mut statement = statement;
        let _ = statement.visit(&mut RegprocNames::default());
        let _ = statement.visit(&mut KeepPlannableLookups::default());
        let mut statement = self.parser.rewrite(statement);
        let _ = statement.visit(&mut LikeEscape);
        let _ = statement.visit(&mut SetReturningArrays);
        let _ = statement.visit(&mut CatalogLookups);
        let _ = statement.visit(&mut InformationSchemaViews);
        let _ = statement.visit(&mut OtherTempSchemas);
        let _ = statement.visit(&mut Descriptions);
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

/// Postgres clients' SQL made plannable. Catalog queries of tools (they read `pg_catalog` or
/// `information_schema`): when every statement is plain SQL (nothing of DataFusion's own syntax
/// such as `CREATE EXTERNAL TABLE` or `COPY ... TO`), the compatibility parser of
/// datafusion-pg-catalog rereads the text (its replacements of whole client catalog queries,
/// psql's `\d` family say, work on the text), which replaces the queries DataFusion cannot plan
/// and rewrites the rest. Other statements only get the rewrites that keep their meaning: its
/// approximations of unsupported subqueries are right for catalog lookups but would change a
/// user's answers.
pub(crate) fn postgres_compatible(sql: &str, statements: Vec<DFStatement>) -> Vec<DFStatement> {
    if statements.len() == 1
        && let Some(replacement) = psql::replace(sql)
        && let Ok(mut parsed) = Parser::parse_sql(&PostgreSqlDialect {}, &replacement)
        && let Some(statement) = parsed.pop()
    {
        return vec![DFStatement::Statement(Box::new(statement))];
    }
    let compatibility = compatibility();
    let reads_catalog = statements.iter().any(|s| match s {
        DFStatement::Statement(inner) => reads_catalog(inner),
        _ => false,
    });
    let plain = statements
        .iter()
        .all(|s| matches!(s, DFStatement::Statement(_)));
    if reads_catalog && plain {
        let parsed: Vec<Statement> = statements
            .iter()
            .filter_map(|s| match s {
                DFStatement::Statement(inner) => Some(inner.as_ref().clone()),
                _ => None,
            })
            .collect();
        if let Some(replaced) = compatibility.parse(sql, &parsed)
            && replaced.len() == statements.len()
        {
            return replaced
                .into_iter()
                .map(|s| DFStatement::Statement(Box::new(s)))
                .collect();
        }
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

/// Shared by every Postgres session.
pub(crate) fn compatibility() -> &'static Compatibility {
    static COMPATIBILITY: std::sync::OnceLock<Compatibility> = std::sync::OnceLock::new();
    COMPATIBILITY.get_or_init(Compatibility::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn statement(sql: &str) -> Statement {
        Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .expect("valid SQL")
            .remove(0)
    }

    #[test]
    fn server_version_num_is_server_version() {
        let (major, minor) = PG_SERVER_VERSION.split_once('.').expect("major.minor");
        let num =
            major.parse::<u32>().expect("major") * 10_000 + minor.parse::<u32>().expect("minor");
        assert_eq!(PG_SERVER_VERSION_NUM, num.to_string());
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
        let _ = parsed.visit(&mut RegprocNames::default());
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

    #[test]
    fn conditions_on_the_outer_row_move_out_of_lookups() {
        let mut parsed = statement(
            "select (select d.adbin from pg_attrdef d where a.atthasdef \
             and d.adrelid = a.attrelid) from pg_attribute a",
        );
        let _ = parsed.visit(&mut CatalogLookups);
        assert!(parsed.to_string().contains(
            "CASE WHEN a.atthasdef THEN (SELECT max(d.adbin) FROM pg_attrdef d \
             WHERE d.adrelid = a.attrelid) END"
        ));
    }

    #[test]
    fn plannable_lookups_of_select_lists_keep_their_values() {
        let compatibility = Compatibility::new();
        let parse = |sql: &str| compatibility.parse(sql, &[statement(sql)]);
        let kept = parse(
            "select (select d.adbin from pg_catalog.pg_attrdef d \
             where d.adrelid = a.attrelid) as x from pg_catalog.pg_attribute a",
        )
        .expect("parses");
        assert!(kept[0].to_string().contains("SELECT max(d.adbin)"));
        // A correlation DataFusion cannot decorrelate stays NULL, as before.
        let dropped = parse(
            "select (select d.adbin from pg_catalog.pg_attrdef d \
             where d.adrelid <> a.attrelid) as x from pg_catalog.pg_attribute a",
        )
        .expect("parses");
        assert!(dropped[0].to_string().starts_with("SELECT NULL AS x"));
    }

    #[test]
    fn set_returning_array_functions_become_unnest() {
        let mut parsed = statement(
            "select (information_schema._pg_expandarray(i.indkey)).N, \
             generate_subscripts(i.indkey, 1) from pg_index i",
        );
        let _ = parsed.visit(&mut SetReturningArrays);
        assert_eq!(
            parsed.to_string(),
            "SELECT get_field((unnest(_pg_expandarray(i.indkey))), 'n'), \
             unnest(generate_series(array_lower(i.indkey, 1), array_upper(i.indkey, 1))) \
             FROM pg_index i"
        );
    }
}
