//! Privileges checked at planning, over every table a plan touches: the tables it scans
//! (in subqueries too), the table it writes, the views it reads. A view is read with its
//! owner's privileges, as in PostgreSQL: a role granted SELECT on a view reads it without any
//! privilege on the tables under it.
//!
//! DataFusion inlines a view into the plan that reads it (its plan under an alias named like
//! the view), so a view is recognised by its alias *and* its whole plan: a subquery the user
//! wrote that equals a view's plan exactly reads exactly what the view does.

use std::collections::{HashMap, HashSet};

use datafusion::common::TableReference;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{LogicalPlan, WriteOp};
use ember_planner::session::DEFAULT_CATALOG;

use super::{AccessControl, Privileges, Securable};
use crate::error::{Error, Result};

/// A view as the checks see it.
#[derive(Debug)]
pub(crate) struct ViewPlan {
    /// Its plan, as DataFusion inlines it.
    pub(crate) plan: LogicalPlan,
    /// The schema unqualified names in its definition refer to.
    pub(crate) default_schema: String,
}

/// Checks one plan for one role.
pub(crate) struct PlanAccess<'a> {
    pub(crate) access: &'a AccessControl,
    /// Schemas whose objects are checked: the default schema and those users created. The
    /// schemas Ember provides (`system`, `information_schema`, `pg_catalog`, `tpch`) are
    /// readable by every role, as PostgreSQL's catalogs are.
    pub(crate) user_schemas: HashSet<String>,
    /// Views, by schema and name.
    pub(crate) views: HashMap<(String, String), ViewPlan>,
}

/// Whose privileges count, and how unqualified names resolve, where the walk is.
struct Scope<'s> {
    role: &'s str,
    default_schema: &'s str,
}

impl PlanAccess<'_> {
    /// Fails with 42501 at the first table `role` may not read or write as `plan` does.
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

    /// The user object `table` names (resolved in `scope`), if it is one.
    fn user_object(&self, table: &TableReference, scope: &Scope) -> Option<(String, String)> {
        let resolved = table.clone().resolve(DEFAULT_CATALOG, scope.default_schema);
        if resolved.catalog.as_ref() != DEFAULT_CATALOG
            || !self.user_schemas.contains(resolved.schema.as_ref())
        {
            return None;
        }
        Some((resolved.schema.to_string(), resolved.table.to_string()))
    }

    fn require_table(
        &self,
        table: &TableReference,
        scope: &Scope,
        wanted: Privileges,
    ) -> Result<()> {
        let Some((schema, name)) = self.user_object(table, scope) else {
            return Ok(());
        };
        self.require_in_schema(scope.role, &schema, &name, wanted)
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

    fn walk(&self, plan: &LogicalPlan, scope: &Scope, depth: usize) -> Result<()> {
        // Plans are as deep as the SQL that made them, which the parser bounds; views nest
        // within that too. This only guards against a cycle the catalog should never hold.
        if depth > 4096 {
            return Err(Error::LimitExceeded("plan too deep to check".into()));
        }
        match plan {
            LogicalPlan::SubqueryAlias(alias) => {
                if let Some((key, view)) = self
                    .user_object(&alias.alias, scope)
                    .and_then(|key| self.views.get(&key).map(|view| (key, view)))
                    .filter(|(_, view)| view.plan == *alias.input)
                {
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
                self.require_table(&scan.table_name, scope, Privileges::SELECT)?;
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
                self.require_table(&dml.table_name, scope, wanted)?;
            }
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
}
