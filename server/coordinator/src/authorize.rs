//! Access control where statements run: role and privilege statements change the catalog's
//! access section, and every plan is checked for the session's current role before it runs
//! (the catalog statements by what they create or drop, every plan by the tables it reads and
//! writes, `access::PlanAccess`).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::{SchemaReference, TableReference};
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::sql::planner::object_name_to_table_reference;
use datafusion::sql::sqlparser::ast::ObjectName;
use ember_planner::session::DEFAULT_CATALOG;

use crate::access::{
    AccessControl, AccessStatement, PlanAccess, Privileges, Published, Securable, ViewPlan,
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
        let default_schema = session.current_schema();
        match plan {
            LogicalPlan::Ddl(ddl) => {
                authorize_ddl(access, &published, &role, &default_schema, ddl)?;
            }
            LogicalPlan::Copy(_) => {
                access.require_server_files(&role, "pg_write_server_files", "COPY to a file")?;
            }
            _ => {}
        }
        let views = self.view_plans(session, &published).await;
        PlanAccess {
            access,
            user_schemas: published.user_schemas(),
            views,
        }
        .check(plan, &role, &default_schema)
    }

    /// The plans of the catalog's views, as DataFusion inlines them.
    async fn view_plans(
        &self,
        session: &ClientSession,
        published: &Published,
    ) -> HashMap<(String, String), ViewPlan> {
        let mut views = HashMap::new();
        for ((schema, name), default_schema) in &published.views {
            let reference = TableReference::full(DEFAULT_CATALOG, schema.as_str(), name.as_str());
            let Ok(provider) = session.ctx.table_provider(reference).await else {
                continue;
            };
            if let Some(plan) = provider.get_logical_plan() {
                views.insert(
                    (schema.clone(), name.clone()),
                    ViewPlan {
                        plan: plan.into_owned(),
                        default_schema: default_schema.clone(),
                    },
                );
            }
        }
        views
    }
}

/// What a catalog statement needs besides the tables its query reads: CREATE in the schema it
/// creates in (CREATE on the database for a schema), ownership of what it drops or replaces,
/// and reading server files for an external table.
fn authorize_ddl(
    access: &AccessControl,
    published: &Published,
    role: &str,
    default_schema: &str,
    ddl: &DdlStatement,
) -> Result<()> {
    let user_schemas = published.user_schemas();
    let object = |name: &TableReference| -> Option<(String, String)> {
        let resolved = name.clone().resolve(DEFAULT_CATALOG, default_schema);
        user_schemas
            .contains(resolved.schema.as_ref())
            .then(|| (resolved.schema.to_string(), resolved.table.to_string()))
    };
    let create_in = |name: &TableReference, replace: bool| -> Result<()> {
        let Some((schema, table)) = object(name) else {
            return Ok(());
        };
        access.require(role, &Securable::schema(&schema), Privileges::CREATE)?;
        if replace && published.tables.contains(&(schema.clone(), table.clone())) {
            access.require_owner(role, &Securable::table(&schema, &table))?;
        }
        Ok(())
    };
    let owner_of = |name: &TableReference| -> Result<()> {
        match object(name) {
            Some((schema, table))
                if published.tables.contains(&(schema.clone(), table.clone())) =>
            {
                access.require_owner(role, &Securable::table(&schema, &table))
            }
            _ => Ok(()),
        }
    };
    match ddl {
        DdlStatement::CreateExternalTable(cmd) => {
            access.require_server_files(role, "pg_read_server_files", "create external tables")?;
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
                SchemaReference::Bare { schema } | SchemaReference::Full { schema, .. } => schema,
            };
            if published.schemas.iter().any(|s| s == name.as_ref()) {
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
