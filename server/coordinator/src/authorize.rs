//! Access control where statements run: role and privilege statements change the catalog's
//! access section, and every plan is checked for the session's current role before it runs
//! (the catalog statements by what they create or drop, every plan by the tables it reads and
//! writes, `access::PlanAccess`).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::planner::object_name_to_table_reference;
use datafusion::sql::sqlparser::ast::ObjectName;
use ember_planner::session::DEFAULT_CATALOG;

use crate::access::{
    AccessControl, AccessStatement, PlanAccess, Published, ViewPlan, provider_address,
};
use crate::engine::QueryEngine;
use crate::error::{Error, Result};
use crate::output::{Command, Output};
use crate::session::ClientSession;

impl QueryEngine {
    /// Runs a role or privilege statement for the session's current role.
    pub(crate) async fn access_statement(
        &self,
        session: &ClientSession,
        statement: &AccessStatement,
    ) -> Result<Output> {
        let access = Arc::clone(self.catalog.access());
        if let AccessStatement::SetRole(target) = statement {
            self.set_role(session, &access, target.as_deref())?;
            return Ok(Output::done(Command::Set));
        }
        let role = session.current_role();
        let state = session.ctx.state();
        let options = state.config_options();
        let normalize = options.sql_parser.enable_ident_normalization;
        let default_schema = options.catalog.default_schema.clone();
        let published = access.published();
        let user_schemas = published.user_schemas();
        let provided = |schema: &str| {
            Error::PermissionDenied(format!(
                "schema {schema} is provided by Ember: every role may read it and none may change it"
            ))
        };
        let exists = |schema: &str| {
            self.base_catalog()
                .is_some_and(|c| c.schema_names().iter().any(|s| s == schema))
        };
        let resolve_table = |name: &ObjectName| -> Result<(String, String)> {
            let reference = object_name_to_table_reference(name.clone(), normalize)?;
            let resolved = reference.resolve(DEFAULT_CATALOG, &default_schema);
            if resolved.catalog.as_ref() != DEFAULT_CATALOG {
                return Err(Error::NotSupported(format!(
                    "catalog {} does not exist: Ember has the one catalog {DEFAULT_CATALOG}",
                    resolved.catalog
                )));
            }
            let key = (resolved.schema.to_string(), resolved.table.to_string());
            if !user_schemas.contains(&key.0) && exists(&key.0) {
                return Err(provided(&key.0));
            }
            if !published.tables.contains(&key) {
                return Err(Error::UndefinedTable(format!(
                    "relation \"{name}\" does not exist"
                )));
            }
            Ok(key)
        };
        let tables_in = |schema: &str| -> Result<Vec<String>> {
            if !user_schemas.contains(schema) {
                return Err(if exists(schema) {
                    provided(schema)
                } else {
                    Error::UndefinedObject(format!("schema \"{schema}\" does not exist"))
                });
            }
            let mut names: Vec<String> = published
                .tables
                .iter()
                .filter(|(s, _)| s == schema)
                .map(|(_, name)| name.clone())
                .collect();
            names.sort();
            Ok(names)
        };
        self.catalog
            .update(
                |file| {
                    statement.apply(&access, &mut file.access, &role, &resolve_table, &tables_in)
                },
                |_| Ok(()),
            )
            .await?;
        Ok(Output::done(match statement {
            AccessStatement::CreateRole { .. } => Command::CreateRole,
            AccessStatement::AlterRole { .. } => Command::AlterRole,
            AccessStatement::DropRole { .. } => Command::DropRole,
            AccessStatement::Grant { .. } | AccessStatement::GrantRole { .. } => Command::Grant,
            AccessStatement::Revoke { .. } | AccessStatement::RevokeRole { .. } => Command::Revoke,
            AccessStatement::SetRole(_) => Command::Set,
        }))
    }

    /// `SET ROLE`: to a role the session user belongs to (any role, for a superuser).
    fn set_role(
        &self,
        session: &ClientSession,
        access: &AccessControl,
        target: Option<&str>,
    ) -> Result<()> {
        let Some(target) = target else {
            session.identity.set_role(None);
            return Ok(());
        };
        if access.role(target).is_none() {
            return Err(Error::UndefinedObject(format!(
                "role \"{target}\" does not exist"
            )));
        }
        let user = session.user();
        if !(access.is_superuser(user) || access.memberships(user).contains(target)) {
            return Err(Error::PermissionDenied(format!(
                "permission denied to set role \"{target}\""
            )));
        }
        session.identity.set_role(Some(target.to_string()));
        Ok(())
    }

    /// Fails with 42501 unless the session's current role may run `plan`: create or drop what
    /// a catalog statement names, write files with `COPY ... TO`, and read and write every
    /// table the plan touches.
    pub(crate) async fn authorize(
        &self,
        session: &ClientSession,
        plan: &LogicalPlan,
    ) -> Result<()> {
        let access = self.catalog.access();
        let role = session.current_role();
        if access.is_superuser(&role) {
            return Ok(());
        }
        let published = access.published();
        let (tables, views) = self.catalog_providers(session, &published).await;
        PlanAccess {
            access,
            published: &published,
            user_schemas: published.user_schemas(),
            tables,
            views,
        }
        .check(plan, &role, &session.current_schema())
    }

    /// The providers of the catalog's tables and views (what plans read), by address, and the
    /// views by name.
    async fn catalog_providers(
        &self,
        session: &ClientSession,
        published: &Published,
    ) -> (
        HashMap<usize, (String, String)>,
        HashMap<(String, String), ViewPlan>,
    ) {
        let mut tables = HashMap::new();
        let mut views = HashMap::new();
        let Some(catalog) = session.ctx.catalog(DEFAULT_CATALOG) else {
            return (tables, views);
        };
        for (schema, name) in &published.tables {
            let Some(provider) = catalog.schema(schema) else {
                continue;
            };
            let Ok(Some(provider)) = provider.table(name).await else {
                continue;
            };
            tables.insert(provider_address(&provider), (schema.clone(), name.clone()));
            if let Some(default_schema) = published.views.get(&(schema.clone(), name.clone())) {
                views.insert(
                    (schema.clone(), name.clone()),
                    ViewPlan {
                        provider,
                        default_schema: default_schema.clone(),
                    },
                );
            }
        }
        (tables, views)
    }
}
