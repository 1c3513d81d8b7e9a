//! Privileges checked at planning, over every node of a plan: the tables it scans (in
//! subqueries too), the tables it writes, the views it reads, and the catalog statements and
//! `COPY`s in it (wherever they sit: under `EXPLAIN` too). A view is read with its owner's
//! privileges, as in PostgreSQL: a role granted SELECT on a view reads it without any privilege
//! on the tables under it.
//!
//! A scanned table is identified by its provider, the object DataFusion reads, not by the name
//! in the plan (names resolve against a default schema that may have changed since the plan
//! was made). DataFusion inlines a view into the plan that reads it (its plan under an alias
//! named like the view); a view is recognised by that alias *and* a plan equal to the view's
//! that scans the very same providers, so no subquery a user writes passes for a view.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{SchemaReference, TableReference};
use datafusion::datasource::{TableType, source_as_provider};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, TableSource, WriteOp};
use ember_planner::session::DEFAULT_CATALOG;

use super::{AccessControl, Privileges, Published, Securable};
use crate::error::{Error, Result};

/// A view as the checks see it.
#[derive(Debug)]
pub(crate) struct ViewPlan {
    /// The view (its `get_logical_plan` is what DataFusion inlines).
    pub(crate) provider: Arc<dyn TableProvider>,
    /// The schema unqualified names in its definition refer to.
    pub(crate) default_schema: String,
}

/// Checks one plan for one role.
pub(crate) struct PlanAccess<'a> {
    pub(crate) access: &'a AccessControl,
    pub(crate) published: &'a Published,
    /// Schemas whose objects are checked: the default schema and those users created. The
    /// schemas Ember provides (`system`, `information_schema`, `pg_catalog`, `tpch`) are
    /// readable by every role, as PostgreSQL's catalogs are, and written by none.
    pub(crate) user_schemas: HashSet<String>,
    /// The catalog's tables and views by the address of their provider.
    pub(crate) tables: HashMap<usize, (String, String)>,
    /// Views, by schema and name.
    pub(crate) views: HashMap<(String, String), ViewPlan>,
}

/// The address that identifies a table: that of its provider.
pub(crate) fn provider_address(provider: &Arc<dyn TableProvider>) -> usize {
    Arc::as_ptr(provider) as *const () as usize
}

fn source_address(source: &Arc<dyn TableSource>) -> Option<usize> {
    source_as_provider(source)
        .ok()
        .map(|provider| provider_address(&provider))
}

/// The addresses of the tables `plan` scans, in order (subqueries included).
fn scanned(plan: &LogicalPlan) -> Vec<Option<usize>> {
    let mut addresses = vec![];
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            addresses.push(source_address(&scan.source));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    addresses
}

/// Whose privileges count, and how unqualified names resolve, where the walk is.
struct Scope<'s> {
    role: &'s str,
    default_schema: &'s str,
}

impl PlanAccess<'_> {
    /// Fails with 42501 at the first thing in `plan` that `role` may not do.
    pub(crate) fn check(&self, plan: &LogicalPlan, role: &str, default_schema: &str) -> Result<()> {
        self.walk(
            plan,
            &Scope {
                role,
                default_schema,
            },
            0,
        )
    }

    /// The schema and name `table` resolves to in `scope`, and whether access control
    /// governs that schema.
    fn resolve(&self, table: &TableReference, scope: &Scope) -> (String, String, bool) {
        let resolved = table.clone().resolve(DEFAULT_CATALOG, scope.default_schema);
        let governed = resolved.catalog.as_ref() == DEFAULT_CATALOG
            && self.user_schemas.contains(resolved.schema.as_ref());
        // An earlier version of a table (`t@v3`) is the table's to grant.
        let table = match ember_delta::TimeTravel::split(&resolved.table) {
            Some((table, _)) => table,
            None => &resolved.table,
        };
        (resolved.schema.to_string(), table.to_string(), governed)
    }

    /// The catalog object a scan reads: found by its provider, else (a table created a moment
    /// ago) by its name.
    fn scanned_object(
        &self,
        source: &Arc<dyn TableSource>,
        name: &TableReference,
        scope: &Scope,
    ) -> Option<(String, String)> {
        if let Some(key) = source_address(source).and_then(|a| self.tables.get(&a)) {
            return Some(key.clone());
        }
        let (schema, table, governed) = self.resolve(name, scope);
        governed.then_some((schema, table))
    }

    fn require_in_schema(
        &self,
        role: &str,
        schema: &str,
        name: &str,
        wanted: Privileges,
    ) -> Result<()> {
        self.access
            .require(role, &Securable::schema(schema), Privileges::USAGE)?;
        self.access
            .require(role, &Securable::table(schema, name), wanted)
    }

    /// The view `alias` over `input` is, if it is one.
    fn view<'v>(
        &'v self,
        alias: &TableReference,
        input: &LogicalPlan,
        scope: &Scope,
    ) -> Option<((String, String), &'v ViewPlan)> {
        let (schema, name, governed) = self.resolve(alias, scope);
        if !governed {
            return None;
        }
        let key = (schema, name);
        let view = self.views.get(&key)?;
        let plan = view.provider.get_logical_plan()?;
        let same = *plan == *input && {
            let (ours, theirs) = (scanned(&plan), scanned(input));
            ours.iter().all(Option::is_some) && ours == theirs
        };
        same.then_some((key, view))
    }

    fn walk(&self, plan: &LogicalPlan, scope: &Scope, depth: usize) -> Result<()> {
        // Plans are as deep as the SQL that made them, which the parser bounds; views nest
        // within that too. This only guards against a cycle the catalog should never hold.
        if depth > 4096 {
            return Err(Error::LimitExceeded("plan too deep to check".into()));
        }
        match plan {
            LogicalPlan::SubqueryAlias(alias) => {
                if let Some((key, view)) = self.view(&alias.alias, &alias.input, scope) {
                    self.require_in_schema(scope.role, &key.0, &key.1, Privileges::SELECT)?;
                    let owner = self.access.acl(&Securable::table(&key.0, &key.1)).owner;
                    return self.walk(
                        &alias.input,
                        &Scope {
                            role: &owner,
                            default_schema: &view.default_schema,
                        },
                        depth + 1,
                    );
                }
            }
            // A recursive query's work table is a temporary table named like its CTE.
            LogicalPlan::TableScan(scan) if scan.source.table_type() != TableType::Temporary => {
                if let Some((schema, name)) =
                    self.scanned_object(&scan.source, &scan.table_name, scope)
                {
                    self.require_in_schema(scope.role, &schema, &name, Privileges::SELECT)?;
                }
            }
            LogicalPlan::Dml(dml) => {
                let wanted = match &dml.op {
                    // Overwriting replaces the rows there were: DELETE too.
                    WriteOp::Insert(InsertOp::Overwrite | InsertOp::Replace) => {
                        Privileges::INSERT.union(Privileges::DELETE)
                    }
                    WriteOp::Insert(_) | WriteOp::Ctas => Privileges::INSERT,
                    WriteOp::Update => Privileges::UPDATE,
                    WriteOp::Delete => Privileges::DELETE,
                    WriteOp::Truncate => Privileges::TRUNCATE,
                    // MERGE and whatever DataFusion adds next: every kind of write.
                    _ => Privileges::INSERT
                        .union(Privileges::UPDATE)
                        .union(Privileges::DELETE),
                };
                let target = self.scanned_object(&dml.target, &dml.table_name, scope);
                match target {
                    // The session's own temporary table.
                    None if dml.target.table_type() == TableType::Temporary => {}
                    Some((schema, name)) => {
                        self.require_in_schema(scope.role, &schema, &name, wanted)?
                    }
                    None => {
                        let (schema, _, _) = self.resolve(&dml.table_name, scope);
                        return Err(Error::PermissionDenied(format!(
                            "schema {schema} is provided by Ember and cannot be changed"
                        )));
                    }
                }
            }
            LogicalPlan::Ddl(ddl) => self.check_ddl(ddl, scope)?,
            LogicalPlan::Copy(_) => self.access.require_server_files(
                scope.role,
                "pg_write_server_files",
                "COPY to a file",
            )?,
            _ => {}
        }
        for input in plan.inputs() {
            self.walk(input, scope, depth + 1)?;
        }
        let mut failure = None;
        let _ = plan.apply_subqueries(|subquery| match self.walk(subquery, scope, depth + 1) {
            Ok(()) => Ok(TreeNodeRecursion::Continue),
            Err(error) => {
                failure = Some(error);
                Ok(TreeNodeRecursion::Stop)
            }
        });
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// What a catalog statement needs besides the tables its query reads: CREATE in the schema
    /// it creates in (CREATE on the database for a schema), ownership of what it drops or
    /// replaces, and reading server files for an external table.
    fn check_ddl(&self, ddl: &DdlStatement, scope: &Scope) -> Result<()> {
        let (access, role) = (self.access, scope.role);
        let object = |name: &TableReference| -> Option<(String, String)> {
            let (schema, table, governed) = self.resolve(name, scope);
            governed.then_some((schema, table))
        };
        let exists = |schema: &str, table: &str| {
            self.published
                .tables
                .contains(&(schema.to_string(), table.to_string()))
        };
        let create_in = |name: &TableReference, replace: bool| -> Result<()> {
            let Some((schema, table)) = object(name) else {
                return Ok(());
            };
            access.require(role, &Securable::schema(&schema), Privileges::CREATE)?;
            if replace && exists(&schema, &table) {
                access.require_owner(role, &Securable::table(&schema, &table))?;
            }
            Ok(())
        };
        let owner_of = |name: &TableReference| -> Result<()> {
            match object(name) {
                Some((schema, table)) if exists(&schema, &table) => {
                    access.require_owner(role, &Securable::table(&schema, &table))
                }
                _ => Ok(()),
            }
        };
        match ddl {
            DdlStatement::CreateExternalTable(cmd) => {
                access.require_server_files(
                    role,
                    "pg_read_server_files",
                    "create external tables",
                )?;
                create_in(&cmd.name, cmd.or_replace)
            }
            DdlStatement::CreateMemoryTable(cmd) => create_in(&cmd.name, cmd.or_replace),
            DdlStatement::CreateView(cmd) => create_in(&cmd.name, cmd.or_replace),
            DdlStatement::CreateCatalogSchema(_) => {
                access.require(role, &Securable::Database, Privileges::CREATE)
            }
            DdlStatement::DropTable(cmd) => owner_of(&cmd.name),
            DdlStatement::DropView(cmd) => owner_of(&cmd.name),
            DdlStatement::DropCatalogSchema(cmd) => {
                let name = match &cmd.name {
                    SchemaReference::Bare { schema } | SchemaReference::Full { schema, .. } => {
                        schema
                    }
                };
                if self.published.schemas.iter().any(|s| s == name.as_ref()) {
                    access.require_owner(role, &Securable::schema(name))?;
                }
                Ok(())
            }
            DdlStatement::CreateIndex(cmd) => owner_of(&cmd.table),
            DdlStatement::CreateFunction(_) | DdlStatement::DropFunction(_) => Err(
                Error::PermissionDenied("only superusers may create or drop functions".into()),
            ),
            DdlStatement::CreateCatalog(_) => Ok(()),
        }
    }
}
