//! The information_schema views PostgreSQL has and DataFusion does not (`table_constraints`,
//! `key_column_usage`), and the PostgreSQL columns of `columns` DataFusion's lacks
//! (`udt_schema`, `udt_name`, `is_identity`, ...), defined over pg_catalog as PostgreSQL defines
//! them. A catalog query naming one reads the view as a derived table of the same name.

use std::ops::ControlFlow;
use std::sync::OnceLock;

use datafusion::sql::sqlparser::ast::{
    Ident, Query, Statement, TableAlias, TableFactor, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

const TABLE_CONSTRAINTS: &str = "\
SELECT current_database() AS constraint_catalog, n.nspname AS constraint_schema, \
       c.conname AS constraint_name, current_database() AS table_catalog, \
       n.nspname AS table_schema, r.relname AS table_name, \
       CASE c.contype WHEN 'p' THEN 'PRIMARY KEY' WHEN 'u' THEN 'UNIQUE' \
                      WHEN 'f' THEN 'FOREIGN KEY' WHEN 'c' THEN 'CHECK' END AS constraint_type, \
       'NO' AS is_deferrable, 'NO' AS initially_deferred, 'YES' AS enforced, \
       'YES' AS nulls_distinct \
FROM pg_catalog.pg_constraint c \
JOIN pg_catalog.pg_class r ON r.oid = c.conrelid \
JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace";

const KEY_COLUMN_USAGE: &str = "\
SELECT current_database() AS constraint_catalog, k.nspname AS constraint_schema, \
       k.conname AS constraint_name, current_database() AS table_catalog, \
       k.nspname AS table_schema, k.relname AS table_name, a.attname AS column_name, \
       k.position AS ordinal_position, CAST(NULL AS INT) AS position_in_unique_constraint \
FROM (SELECT n.nspname, r.relname, c.conname, c.conrelid, \
             get_field(unnest(_pg_expandarray(c.conkey)), 'x') AS attnum, \
             get_field(unnest(_pg_expandarray(c.conkey)), 'n') AS position \
      FROM pg_catalog.pg_constraint c \
      JOIN pg_catalog.pg_class r ON r.oid = c.conrelid \
      JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace \
      WHERE c.contype IN ('p', 'u', 'f')) k \
JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.attnum";

// DataFusion's own view numbers columns from 0 and its numbers are unsigned 64-bit; PostgreSQL
// numbers from 1, its `cardinal_number`s are integers. The type columns follow pg_attribute, which
// has the type each column is sent as (`character varying`, `numeric` with its precision and
// scale, `ARRAY`), where DataFusion would name Arrow's types (`Utf8`, `Decimal128(15, 2)`).
const COLUMNS: &str = "\
SELECT c.table_catalog, c.table_schema, c.table_name, c.column_name, \
       CAST(c.ordinal_position + 1 AS INT) AS ordinal_position, c.column_default, c.is_nullable, \
       CASE WHEN t.atttypid IS NULL THEN c.data_type \
            WHEN t.attndims > 0 THEN 'ARRAY' \
            ELSE format_type(t.atttypid, NULL) END AS data_type, \
       CAST(CASE WHEN t.atttypid IS NULL THEN c.character_maximum_length \
                 WHEN t.atttypid IN (1042, 1043) AND t.atttypmod > 4 THEN t.atttypmod - 4 \
            END AS INT) AS character_maximum_length, \
       CAST(CASE WHEN t.atttypid IS NULL THEN c.character_octet_length \
                 WHEN t.atttypid IN (1042, 1043) AND t.atttypmod > 4 THEN (t.atttypmod - 4) * 4 \
                 WHEN t.atttypid IN (25, 1042, 1043) THEN 1073741824 \
            END AS INT) AS character_octet_length, \
       CAST(CASE WHEN t.atttypid IS NULL THEN c.numeric_precision \
                 WHEN t.atttypid = 21 THEN 16 WHEN t.atttypid = 23 THEN 32 \
                 WHEN t.atttypid = 20 THEN 64 WHEN t.atttypid = 700 THEN 24 \
                 WHEN t.atttypid = 701 THEN 53 \
                 WHEN t.atttypid = 1700 AND t.atttypmod > 4 THEN (t.atttypmod - 4) / 65536 \
            END AS INT) AS numeric_precision, \
       CAST(CASE WHEN t.atttypid IS NULL THEN c.numeric_precision_radix \
                 WHEN t.atttypid IN (20, 21, 23, 700, 701) THEN 2 \
                 WHEN t.atttypid = 1700 THEN 10 \
            END AS INT) AS numeric_precision_radix, \
       CAST(CASE WHEN t.atttypid IS NULL THEN c.numeric_scale \
                 WHEN t.atttypid IN (20, 21, 23) THEN 0 \
                 WHEN t.atttypid = 1700 AND t.atttypmod > 4 THEN (t.atttypmod - 4) % 65536 \
            END AS INT) AS numeric_scale, \
       CAST(CASE WHEN t.atttypid IS NULL THEN c.datetime_precision \
                 WHEN t.atttypid = 1082 THEN 0 \
                 WHEN t.atttypid IN (1083, 1114, 1184, 1186, 1266) THEN 6 \
            END AS INT) AS datetime_precision, \
       c.interval_type, \
       current_database() AS udt_catalog, 'pg_catalog' AS udt_schema, \
       t.typname AS udt_name, 'NO' AS is_identity, 'NEVER' AS is_generated, \
       'YES' AS is_updatable \
FROM information_schema.columns c \
LEFT JOIN (SELECT n.nspname, r.relname, a.attname, a.atttypid, a.atttypmod, a.attndims, \
                  ty.typname \
           FROM pg_catalog.pg_attribute a \
           JOIN pg_catalog.pg_class r ON r.oid = a.attrelid \
           JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace \
           JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid) t \
  ON t.nspname = c.table_schema AND t.relname = c.table_name AND t.attname = c.column_name";

fn view(name: &str) -> Option<&'static Query> {
    static VIEWS: OnceLock<Vec<(&'static str, Query)>> = OnceLock::new();
    let views = VIEWS.get_or_init(|| {
        [
            ("table_constraints", TABLE_CONSTRAINTS),
            ("key_column_usage", KEY_COLUMN_USAGE),
            ("columns", COLUMNS),
            // Ember's access control keeps them; the system table has SQL's columns.
            ("table_privileges", "SELECT * FROM system.table_privileges"),
        ]
        .into_iter()
        .filter_map(|(name, sql)| {
            // The definitions are constants, checked by the tests below.
            match Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?.pop()? {
                Statement::Query(query) => Some((name, *query)),
                _ => None,
            }
        })
        .collect()
    });
    views.iter().find(|(n, _)| *n == name).map(|(_, q)| q)
}

/// `information_schema.<view>` of a catalog query becomes the view's definition.
pub(super) struct InformationSchemaViews;

impl VisitorMut for InformationSchemaViews {
    type Break = ();

    fn post_visit_table_factor(&mut self, table: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } = table
        else {
            return ControlFlow::Continue(());
        };
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident())
            .map(|i| i.value.to_ascii_lowercase())
            .collect();
        let [schema, relation] = parts.as_slice() else {
            return ControlFlow::Continue(());
        };
        if schema != "information_schema" {
            return ControlFlow::Continue(());
        }
        let Some(query) = view(relation) else {
            return ControlFlow::Continue(());
        };
        let alias = alias.clone().unwrap_or(TableAlias {
            explicit: true,
            name: Ident::new(relation.as_str()),
            columns: vec![],
            at: None,
        });
        *table = TableFactor::Derived {
            lateral: false,
            subquery: Box::new(query.clone()),
            alias: Some(alias),
            sample: None,
        };
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::ast::SetExpr;

    use super::*;

    #[test]
    fn every_view_parses() {
        for name in ["table_constraints", "key_column_usage", "columns"] {
            let query = view(name).unwrap_or_else(|| panic!("{name} does not parse"));
            assert!(matches!(query.body.as_ref(), SetExpr::Select(_)), "{name}");
        }
    }
}
