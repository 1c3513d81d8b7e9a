//! Temporary tables, as in PostgreSQL: `CREATE TEMPORARY TABLE` makes a table only its session
//! sees, gone when the session ends (dbt's incremental models and snapshots stage their rows
//! in them).
//!
//! A session's temporary tables are managed tables (written by executors, committed as Delta
//! tables) in a schema of its own, `pg_temp_<session id>`, under the warehouse directory of the
//! same name; the catalog file never lists them. The schema is registered when the session
//! creates its first temporary table, and it and its files are removed when the session ends
//! (and at start, what a crash left). Names resolve as PostgreSQL's search path has it: an
//! unqualified name the session has a temporary table of is that table, and `pg_temp.t` names
//! it explicitly; other sessions' temporary schemas cannot be reached.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use datafusion::catalog::{CatalogProvider, MemorySchemaProvider, SchemaProvider};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    Ident, ObjectName, ObjectNamePart, ObjectType, Query, Statement as SqlStatement, Visit,
    VisitMut, Visitor, VisitorMut,
};
use tracing::warn;

use crate::error::{Error, Result};

/// What the names of sessions' temporary schemas start with.
pub(crate) const TEMP_SCHEMA_PREFIX: &str = "pg_temp_";
/// The name of the session's own temporary schema, whatever its number.
const OWN_TEMP_SCHEMA: &str = "pg_temp";

/// A session's temporary tables; none until it creates one.
#[derive(Debug, Default)]
pub(crate) struct TempTables {
    // A std Mutex: only touched briefly, never across an await.
    schema: Mutex<Option<Arc<TempSchema>>>,
}

/// The schema of a session's temporary tables, removed with its files when dropped.
#[derive(Debug)]
pub(crate) struct TempSchema {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) tables: Arc<MemorySchemaProvider>,
    catalog: Arc<dyn CatalogProvider>,
}

impl Drop for TempSchema {
    fn drop(&mut self) {
        let _ = self.catalog.deregister_schema(&self.name, true);
        if let Err(error) = std::fs::remove_dir_all(&self.dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %self.dir.display(), %error, "cannot remove temporary tables' files");
        }
    }
}

impl TempTables {
    /// The session's temporary schema, registered in `catalog` (its files under `warehouse`)
    /// if this is its first temporary table.
    pub(crate) fn schema(
        &self,
        session_id: &str,
        catalog: Arc<dyn CatalogProvider>,
        warehouse: &Path,
    ) -> Result<Arc<TempSchema>> {
        let mut schema = self.schema.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(schema) = schema.as_ref() {
            return Ok(Arc::clone(schema));
        }
        let name = format!("{TEMP_SCHEMA_PREFIX}{session_id}");
        let dir = warehouse.join(&name);
        std::fs::create_dir_all(&dir)?;
        let tables = Arc::new(MemorySchemaProvider::new());
        catalog.register_schema(&name, Arc::clone(&tables) as Arc<dyn SchemaProvider>)?;
        let created = Arc::new(TempSchema {
            name,
            dir,
            tables,
            catalog,
        });
        *schema = Some(Arc::clone(&created));
        Ok(created)
    }

    /// The name of the session's temporary schema, if it has one.
    fn name(&self) -> Option<String> {
        let schema = self.schema.lock().unwrap_or_else(|e| e.into_inner());
        schema.as_ref().map(|s| s.name.clone())
    }

    /// The names of the session's temporary tables.
    fn table_names(&self) -> HashSet<String> {
        let schema = self.schema.lock().unwrap_or_else(|e| e.into_inner());
        schema
            .as_ref()
            .map(|s| s.tables.table_names().into_iter().collect())
            .unwrap_or_default()
    }

    /// Points the names in `statement` at the session's temporary tables, as PostgreSQL's
    /// search path does: `pg_temp.t`, and an unqualified `t` the session has a temporary table
    /// of (unless a CTE of the statement is named so). `CREATE TEMPORARY TABLE t` creates in
    /// the temporary schema, which it registers first (`register`), as a table of that schema
    /// (which is what makes it temporary; the planner has no temporary tables). Refers no
    /// name to another session's temporary schema.
    pub(crate) fn qualify(
        &self,
        statement: &mut DFStatement,
        register: impl FnOnce() -> Result<String>,
    ) -> Result<()> {
        let DFStatement::Statement(inner) = statement else {
            if let DFStatement::Explain(explain) = statement {
                return self.qualify(&mut explain.statement, register);
            }
            return Ok(());
        };
        // `CREATE TABLE pg_temp.t` makes a temporary table too, as in PostgreSQL.
        let creates_temporary = matches!(inner.as_ref(), SqlStatement::CreateTable(c)
            if c.temporary || matches!(c.name.0.as_slice(), [schema, _] if part_is(schema, OWN_TEMP_SCHEMA)));
        let own = if creates_temporary {
            Some(register()?)
        } else {
            self.name()
        };
        let tables = self.table_names();
        let mut ctes = CteNames::default();
        let _ = Visit::visit(inner.as_ref(), &mut ctes);
        let mut qualifier = Qualifier {
            own: own.as_deref(),
            tables: &tables,
            ctes: &ctes.0,
            error: None,
        };
        if let SqlStatement::CreateTable(create) = inner.as_mut()
            && creates_temporary
        {
            // The planner makes no temporary tables: the schema says what the table is.
            create.temporary = false;
            match create.name.0.as_slice() {
                [_] => {}
                [schema, _] if part_is(schema, OWN_TEMP_SCHEMA) => {}
                _ => {
                    return Err(Error::NotSupported(format!(
                        "cannot create temporary relation {} in a non-temporary schema",
                        create.name
                    )));
                }
            }
            qualifier.qualify(&mut create.name, true);
        }
        if let SqlStatement::Drop {
            object_type: ObjectType::Table | ObjectType::View,
            names,
            ..
        } = inner.as_mut()
        {
            for name in names {
                qualifier.qualify(name, false);
            }
        }
        // What `CREATE TABLE` (not temporary) and `CREATE VIEW` create is in the default
        // schema, even if a temporary table has that name: they keep their names.
        let created = match inner.as_ref() {
            SqlStatement::CreateTable(create) if !creates_temporary => Some(create.name.clone()),
            SqlStatement::CreateView(create) => Some(create.name.clone()),
            _ => None,
        };
        let _ = VisitMut::visit(inner.as_mut(), &mut qualifier);
        if let Some(name) = created {
            match inner.as_mut() {
                SqlStatement::CreateTable(create) => create.name = name,
                SqlStatement::CreateView(create) => create.name = name,
                _ => {}
            }
        }
        match qualifier.error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl TempTables {
    /// Points a table name of a statement DataFusion does not plan (`ALTER TABLE`, `COMMENT
    /// ON`, `DESCRIBE HISTORY`, ...) at the session's temporary table, as [`Self::qualify`]
    /// does the names of a planned statement.
    pub(crate) fn qualify_name(&self, name: &mut ObjectName) -> Result<()> {
        let own = self.name();
        let tables = self.table_names();
        let ctes = HashSet::new();
        let mut qualifier = Qualifier {
            own: own.as_deref(),
            tables: &tables,
            ctes: &ctes,
            error: None,
        };
        qualifier.qualify(name, false);
        match qualifier.error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Deletes the temporary tables' directories a crash left in `warehouse`.
pub(crate) fn remove_leftovers(warehouse: &Path) {
    let Ok(entries) = std::fs::read_dir(warehouse) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(TEMP_SCHEMA_PREFIX)
            && let Err(error) = std::fs::remove_dir_all(entry.path())
        {
            warn!(path = %entry.path().display(), %error, "cannot remove temporary tables' files");
        }
    }
}

fn part_is(part: &ObjectNamePart, name: &str) -> bool {
    part.as_ident()
        .is_some_and(|ident| ident.value.eq_ignore_ascii_case(name))
}

/// The names the statement's CTEs define.
#[derive(Default)]
struct CteNames(HashSet<String>);

impl Visitor for CteNames {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                let name = &cte.alias.name;
                self.0.insert(match name.quote_style {
                    Some(_) => name.value.clone(),
                    None => name.value.to_lowercase(),
                });
            }
        }
        ControlFlow::Continue(())
    }
}

struct Qualifier<'a> {
    own: Option<&'a str>,
    tables: &'a HashSet<String>,
    ctes: &'a HashSet<String>,
    error: Option<Error>,
}

impl Qualifier<'_> {
    /// `name` qualified by the session's temporary schema, if it names a temporary table
    /// (`creating`: the one `CREATE TEMPORARY TABLE` makes).
    fn qualify(&mut self, name: &mut ObjectName, creating: bool) {
        let parts = &mut name.0;
        let schema_index = match parts.len() {
            2 => 0,
            3 => 1,
            _ => {
                // Unqualified: the session's temporary table of that name, if there is one.
                let Some(own) = self.own else { return };
                let Some(table) = parts.first().and_then(|p| p.as_ident()) else {
                    return;
                };
                // Unquoted names are folded to lower case, as the planner folds them.
                let key = match table.quote_style {
                    Some(_) => table.value.clone(),
                    None => table.value.to_lowercase(),
                };
                let temporary =
                    creating || (self.tables.contains(&key) && !self.ctes.contains(&key));
                if temporary {
                    parts.insert(0, ObjectNamePart::Identifier(Ident::new(own)));
                }
                return;
            }
        };
        let Some(schema) = parts[schema_index].as_ident() else {
            return;
        };
        let lower = schema.value.to_lowercase();
        if lower == OWN_TEMP_SCHEMA {
            match self.own {
                Some(own) => parts[schema_index] = ObjectNamePart::Identifier(Ident::new(own)),
                None if self.error.is_none() => {
                    self.error = Some(Error::UndefinedTable(format!(
                        "relation \"{name}\" does not exist: the session has no temporary tables"
                    )));
                }
                None => {}
            }
        } else if lower.starts_with(TEMP_SCHEMA_PREFIX)
            && self.own != Some(lower.as_str())
            && self.error.is_none()
        {
            self.error = Some(Error::PermissionDenied(
                "cannot access temporary tables of other sessions".into(),
            ));
        }
    }
}

impl VisitorMut for Qualifier<'_> {
    type Break = ();

    fn pre_visit_relation(&mut self, relation: &mut ObjectName) -> ControlFlow<()> {
        self.qualify(relation, false);
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::parser::DFParser;

    use super::*;

    fn qualified(temp: &TempTables, sql: &str) -> Result<String> {
        let mut statement = DFParser::parse_sql(sql)
            .expect("parses")
            .pop_front()
            .expect("a statement");
        temp.qualify(&mut statement, || Ok("pg_temp_s1".into()))?;
        Ok(statement.to_string())
    }

    fn with_tables(names: &[&str]) -> TempTables {
        let temp = TempTables::default();
        let catalog: Arc<dyn CatalogProvider> =
            Arc::new(datafusion::catalog::MemoryCatalogProvider::new());
        let dir = tempfile::tempdir().expect("temp dir");
        let schema = temp.schema("s1", catalog, dir.path()).expect("schema");
        for name in names {
            let table = datafusion::datasource::empty::EmptyTable::new(Arc::new(
                datafusion::arrow::datatypes::Schema::empty(),
            ));
            schema
                .tables
                .register_table(name.to_string(), Arc::new(table))
                .expect("registers");
        }
        temp
    }

    #[test]
    fn unqualified_names_of_temporary_tables_resolve_to_the_session_schema() {
        let temp = with_tables(&["staged"]);
        assert_eq!(
            qualified(&temp, "SELECT * FROM staged JOIN other ON true").unwrap(),
            "SELECT * FROM pg_temp_s1.staged JOIN other ON true"
        );
        assert_eq!(
            qualified(&temp, "DELETE FROM t USING staged WHERE t.a = staged.a").unwrap(),
            "DELETE FROM t USING pg_temp_s1.staged WHERE t.a = staged.a"
        );
        assert_eq!(
            qualified(&temp, "INSERT INTO t SELECT * FROM pg_temp.staged").unwrap(),
            "INSERT INTO t SELECT * FROM pg_temp_s1.staged"
        );
        assert_eq!(
            qualified(&temp, "DROP TABLE staged").unwrap(),
            "DROP TABLE pg_temp_s1.staged"
        );
        // A CTE of that name hides the table; a qualified name is another schema's.
        assert_eq!(
            qualified(&temp, "WITH staged AS (SELECT 1) SELECT * FROM staged").unwrap(),
            "WITH staged AS (SELECT 1) SELECT * FROM staged"
        );
        assert_eq!(
            qualified(&temp, "SELECT * FROM public.staged").unwrap(),
            "SELECT * FROM public.staged"
        );
    }

    #[test]
    fn temporary_tables_are_created_in_the_session_schema_only() {
        let temp = TempTables::default();
        assert_eq!(
            qualified(&temp, "CREATE TEMPORARY TABLE t AS SELECT 1").unwrap(),
            "CREATE TABLE pg_temp_s1.t AS SELECT 1"
        );
        assert_eq!(
            qualified(&temp, "CREATE TABLE pg_temp.u (a INT)").unwrap(),
            "CREATE TABLE pg_temp_s1.u (a INT)"
        );
        assert!(qualified(&temp, "CREATE TEMPORARY TABLE public.t AS SELECT 1").is_err());
        // Without temporary tables, `pg_temp.t` names nothing.
        assert!(matches!(
            qualified(&temp, "SELECT * FROM pg_temp.t"),
            Err(Error::UndefinedTable(_))
        ));
    }

    #[test]
    fn other_sessions_temporary_schemas_are_out_of_reach() {
        let temp = with_tables(&["t"]);
        assert!(matches!(
            qualified(&temp, "SELECT * FROM pg_temp_other.t"),
            Err(Error::PermissionDenied(_))
        ));
        assert!(qualified(&temp, "SELECT * FROM pg_temp_s1.t").is_ok());
    }
}
