//! Catalog statements: DataFusion checks and applies them to its in-memory catalog, the
//! [`CatalogStore`] makes them durable. Schemas Ember provides itself (`system`,
//! `information_schema`, `tpch`) are read-only.

use std::sync::Arc;

use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{SchemaReference, TableReference};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use ember_planner::session::{DEFAULT_CATALOG, DEFAULT_SCHEMA};

use datafusion::sql::planner::object_name_to_table_reference;
use datafusion::sql::sqlparser::ast::ObjectName as SqlObjectName;

use crate::access::Securable;
use crate::catalog::{CatalogObject, ManagedTable, StatementEntry};
use crate::comments;
use crate::engine::{QueryEngine, ddl_command};
use crate::error::{Error, Result};
use crate::output::{Command, Output};
use crate::session::ClientSession;
use crate::statement::ParsedStatement;
use crate::temp::{TEMP_SCHEMA_PREFIX, TempSchema};

/// A table or view name resolved against the session's default schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectName {
    pub(crate) schema: String,
    pub(crate) name: String,
}

impl std::fmt::Display for ObjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

impl QueryEngine {
    /// Resolves `name`; only Ember's one catalog exists.
    pub(crate) fn resolve_name(
        &self,
        session: &ClientSession,
        name: &TableReference,
    ) -> Result<ObjectName> {
        let state = session.ctx.state();
        let options = &state.config_options().catalog;
        let resolved = name
            .clone()
            .resolve(&options.default_catalog, &options.default_schema);
        if resolved.catalog.as_ref() != DEFAULT_CATALOG {
            return Err(Error::NotSupported(format!(
                "catalog {} does not exist: Ember has the one catalog {DEFAULT_CATALOG}",
                resolved.catalog
            )));
        }
        Ok(ObjectName {
            schema: resolved.schema.to_string(),
            name: resolved.table.to_string(),
        })
    }

    /// The schema of the session's temporary tables, made if it has none yet.
    pub(crate) fn temp_schema(&self, session: &ClientSession) -> Result<Arc<TempSchema>> {
        let catalog = self
            .base_catalog()
            .ok_or_else(|| Error::Unavailable("the default catalog is missing".into()))?;
        session
            .temp
            .schema(&session.id, catalog, self.catalog.warehouse())
    }

    /// The provider of a schema of Ember's catalog.
    pub(crate) fn schema_provider(&self, schema: &str) -> Result<Arc<dyn SchemaProvider>> {
        self.base_catalog()
            .and_then(|c| c.schema(schema))
            .ok_or_else(|| Error::UndefinedObject(format!("schema {schema} does not exist")))
    }

    /// `name` as the session's parser reads it (a table reference), and what it resolves to.
    pub(crate) fn table_named(
        &self,
        session: &ClientSession,
        name: &SqlObjectName,
    ) -> Result<(TableReference, ObjectName)> {
        let mut name = name.clone();
        session.temp.qualify_name(&mut name)?;
        let reference = object_name_to_table_reference(name, folds_names(session))?;
        let resolved = self.resolve_name(session, &reference)?;
        Ok((reference, resolved))
    }

    /// Only the default schema, schemas users created and the session's temporary schema (the
    /// only one its names can reach) hold user objects.
    pub(crate) async fn check_writable_schema(&self, schema: &str) -> Result<()> {
        if schema == DEFAULT_SCHEMA || schema.starts_with(TEMP_SCHEMA_PREFIX) {
            return Ok(());
        }
        let file = self.catalog.snapshot().await;
        if file.schemas.iter().any(|s| s == schema) {
            return Ok(());
        }
        let exists = self
            .base_catalog()
            .is_some_and(|c| c.schema_names().iter().any(|s| s == schema));
        Err(if exists {
            Error::PermissionDenied(format!(
                "schema {schema} is provided by Ember and cannot be changed"
            ))
        } else {
            Error::UndefinedObject(format!("schema {schema} does not exist"))
        })
    }

    /// Runs a catalog statement; its SQL is kept to restore views and external tables after
    /// a restart.
    pub(crate) async fn execute_ddl(
        &self,
        session: &ClientSession,
        parsed: &ParsedStatement,
        plan: LogicalPlan,
    ) -> Result<Output> {
        let text = parsed.sql();
        let LogicalPlan::Ddl(ddl) = &plan else {
            return Err(Error::NotSupported(format!(
                "not a catalog statement: {text}"
            )));
        };
        let default_schema = session.current_schema();
        match ddl {
            DdlStatement::CreateExternalTable(cmd) => {
                let target = self.resolve_name(session, &cmd.name)?;
                self.check_writable_schema(&target.schema).await?;
                for location in &cmd.locations {
                    self.allowed_paths.check_location(location)?;
                }
                if cmd.temporary {
                    return Err(Error::NotSupported(
                        "temporary tables are not supported".into(),
                    ));
                }
                let existed = self.object_exists(session, &cmd.name).await;
                if existed && !cmd.if_not_exists && !cmd.or_replace {
                    return Err(Error::DuplicateTable(format!(
                        "Execution error: External table '{}' already exists",
                        cmd.name
                    )));
                }
                self.run_datafusion(session, plan.clone()).await?;
                if !(existed && cmd.if_not_exists) {
                    self.record(
                        session,
                        &cmd.name,
                        CatalogObject::External(StatementEntry {
                            schema: target.schema,
                            name: target.name,
                            sql: text.to_string(),
                            default_schema,
                            created_as: None,
                        }),
                    )
                    .await?;
                }
                Ok(Output::done(Command::CreateTable))
            }
            DdlStatement::CreateView(cmd) => {
                let target = self.resolve_name(session, &cmd.name)?;
                self.check_writable_schema(&target.schema).await?;
                if cmd.temporary {
                    return Err(Error::NotSupported(
                        "temporary views are not supported".into(),
                    ));
                }
                if !cmd.or_replace && self.object_exists(session, &cmd.name).await {
                    return Err(already_exists(&cmd.name));
                }
                if let Some(table) = temporary_table_read(&cmd.input) {
                    return Err(Error::NotSupported(format!(
                        "view {} cannot read temporary table {table}: Ember has no temporary views",
                        cmd.name
                    )));
                }
                self.run_datafusion(session, plan.clone()).await?;
                self.record(
                    session,
                    &cmd.name,
                    CatalogObject::View(StatementEntry {
                        schema: target.schema,
                        name: target.name,
                        sql: text.to_string(),
                        default_schema,
                        created_as: None,
                    }),
                )
                .await?;
                Ok(Output::done(Command::CreateView))
            }
            DdlStatement::CreateMemoryTable(cmd) => {
                self.create_table(
                    session,
                    cmd,
                    parsed.declared_columns(),
                    parsed.partitioned_by(),
                    text,
                )
                .await
            }
            DdlStatement::CreateCatalogSchema(cmd) => {
                let reference = match cmd.schema_name.split_once('.') {
                    Some((catalog, schema)) => SchemaReference::Full {
                        schema: schema.into(),
                        catalog: catalog.into(),
                    },
                    None => SchemaReference::Bare {
                        schema: cmd.schema_name.as_str().into(),
                    },
                };
                let name = schema_name(&reference)?;
                let exists = self
                    .base_catalog()
                    .is_some_and(|c| c.schema_names().contains(&name));
                if exists {
                    return if cmd.if_not_exists {
                        Ok(Output::done(Command::CreateSchema))
                    } else {
                        // DataFusion's wording, typed.
                        Err(Error::DuplicateSchema(format!(
                            "Execution error: Schema '{name}' already exists"
                        )))
                    };
                }
                let catalog = self.base_catalog();
                let owner = session.current_role();
                self.catalog
                    .update(
                        |file| {
                            file.schemas.push(name.clone());
                            file.access.created(Securable::schema(&name), &owner);
                            Ok(())
                        },
                        |_| {
                            if let Some(catalog) = catalog {
                                catalog.register_schema(
                                    &name,
                                    Arc::new(MemorySchemaProvider::new()),
                                )?;
                            }
                            Ok(())
                        },
                    )
                    .await?;
                Ok(Output::done(Command::CreateSchema))
            }
            DdlStatement::CreateCatalog(_) => Err(Error::NotSupported(format!(
                "CREATE DATABASE is not supported: Ember has the one catalog {DEFAULT_CATALOG}; use CREATE SCHEMA"
            ))),
            DdlStatement::DropTable(cmd) => {
                self.drop_object(
                    session,
                    &cmd.name,
                    cmd.if_exists,
                    plan.clone(),
                    Command::DropTable,
                )
                .await
            }
            DdlStatement::DropView(cmd) => {
                self.drop_object(
                    session,
                    &cmd.name,
                    cmd.if_exists,
                    plan.clone(),
                    Command::DropView,
                )
                .await
            }
            DdlStatement::DropCatalogSchema(cmd) => {
                let name = schema_name(&cmd.name)?;
                let file = self.catalog.snapshot().await;
                if !file.schemas.contains(&name) {
                    let exists = self
                        .base_catalog()
                        .is_some_and(|c| c.schema_names().contains(&name));
                    return match (exists, cmd.if_exists) {
                        (false, true) => Ok(Output::done(Command::DropSchema)),
                        (false, false) => Err(Error::UndefinedObject(format!(
                            "schema {name} does not exist"
                        ))),
                        (true, _) => Err(Error::PermissionDenied(format!(
                            "schema {name} is provided by Ember and cannot be dropped"
                        ))),
                    };
                }
                let owned: Vec<CatalogObject> = file
                    .objects
                    .iter()
                    .filter(|o| o.key().0 == name)
                    .cloned()
                    .collect();
                let catalog = self.base_catalog();
                let non_empty = catalog
                    .as_ref()
                    .and_then(|c| c.schema(&name))
                    .is_some_and(|s| !s.table_names().is_empty());
                if non_empty && !cmd.cascade {
                    return Err(Error::DependentObjects(format!(
                        "cannot drop schema {name} because it contains tables or views; use DROP SCHEMA ... CASCADE"
                    )));
                }
                self.catalog
                    .update(
                        |file| {
                            file.schemas.retain(|s| *s != name);
                            file.objects.retain(|o| o.key().0 != name);
                            file.access.dropped_schema(&name);
                            comments::dropped(&mut file.comments, &name, None);
                            Ok(())
                        },
                        |_| {
                            if let Some(catalog) = catalog {
                                catalog.deregister_schema(&name, true)?;
                            }
                            Ok(())
                        },
                    )
                    .await?;
                for object in owned {
                    self.remove_table_files(&object);
                }
                Ok(Output::done(Command::DropSchema))
            }
            other => {
                self.run_datafusion(session, plan.clone()).await?;
                Ok(Output::done(ddl_command(other)))
            }
        }
    }

    async fn drop_object(
        &self,
        session: &ClientSession,
        name: &TableReference,
        if_exists: bool,
        plan: LogicalPlan,
        command: Command,
    ) -> Result<Output> {
        let target = self.resolve_name(session, name)?;
        if !self.object_exists(session, name).await {
            return if if_exists {
                Ok(Output::done(command))
            } else {
                // DataFusion's wording, typed.
                let what = if command == Command::DropView {
                    "View"
                } else {
                    "Table"
                };
                Err(Error::UndefinedTable(format!(
                    "Execution error: {what} '{name}' doesn't exist."
                )))
            };
        }
        self.check_writable_schema(&target.schema).await?;
        if target.schema.starts_with(TEMP_SCHEMA_PREFIX) {
            // A temporary table (the session has no temporary views): not in the catalog file.
            if command == Command::DropView {
                return Err(Error::WrongObjectType(format!(
                    "\"{}\" is not a view: use DROP TABLE to remove a table",
                    target.name
                )));
            }
            let temp = self.temp_schema(session)?;
            if let Some(table) = temp.tables.deregister_table(&target.name)?
                && let Some(dir) = table
                    .downcast_ref::<ManagedTable>()
                    .and_then(|t| t.entry().local_dir())
                && dir.starts_with(&temp.dir)
            {
                let _ = std::fs::remove_dir_all(dir);
            }
            return Ok(Output::done(command));
        }
        // As in PostgreSQL, even with IF EXISTS: `DROP TABLE` of a view is an error (dbt
        // chooses between the two by what the catalog says the object is).
        let is_view = self.catalog.snapshot().await.objects.iter().any(|o| {
            matches!(o, CatalogObject::View(_))
                && o.key() == (target.schema.as_str(), target.name.as_str())
        });
        match (command == Command::DropView, is_view) {
            (false, true) => {
                return Err(Error::WrongObjectType(format!(
                    "\"{}\" is not a table: use DROP VIEW to remove a view",
                    target.name
                )));
            }
            (true, false) => {
                return Err(Error::WrongObjectType(format!(
                    "\"{}\" is not a view: use DROP TABLE to remove a table",
                    target.name
                )));
            }
            _ => {}
        }
        // DataFusion deregisters it.
        self.run_datafusion(session, plan).await?;
        let removed =
            self.catalog
                .update(
                    |file| {
                        let position = file.objects.iter().position(|o| {
                            o.key() == (target.schema.as_str(), target.name.as_str())
                        });
                        file.access.dropped_table(&target.schema, &target.name);
                        comments::dropped(&mut file.comments, &target.schema, Some(&target.name));
                        Ok(position.map(|i| file.objects.remove(i)))
                    },
                    |_| Ok(()),
                )
                .await?;
        if let Some(object) = removed {
            self.remove_table_files(&object);
        }
        Ok(Output::done(command))
    }

    /// Deletes a dropped managed table's directory.
    pub(crate) fn remove_table_files(&self, object: &CatalogObject) {
        if let CatalogObject::Table(table) = object
            && let Some(dir) = table.local_dir()
            && dir.starts_with(self.catalog.warehouse())
            && let Err(error) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!(path = %dir.display(), %error, "cannot remove a dropped table's files");
        }
    }

    pub(crate) async fn object_exists(
        &self,
        session: &ClientSession,
        name: &TableReference,
    ) -> bool {
        session.ctx.table_exist(name.clone()).unwrap_or(false)
    }

    /// Records an object DataFusion has just registered; undoes the registration if the
    /// catalog cannot be written.
    async fn record(
        &self,
        session: &ClientSession,
        name: &TableReference,
        object: CatalogObject,
    ) -> Result<()> {
        let key = (object.key().0.to_string(), object.key().1.to_string());
        let owner = session.current_role();
        let result = self
            .catalog
            .update(
                |file| {
                    file.objects
                        .retain(|o| (o.key().0, o.key().1) != (key.0.as_str(), key.1.as_str()));
                    file.objects.push(object);
                    file.access
                        .created_if_new(Securable::table(&key.0, &key.1), &owner);
                    Ok(())
                },
                |_| Ok(()),
            )
            .await;
        if result.is_err() {
            let _ = session.ctx.deregister_table(name.clone());
        }
        result
    }

    async fn run_datafusion(&self, session: &ClientSession, plan: LogicalPlan) -> Result<()> {
        self.run_datafusion_ctx(&session.ctx, plan).await
    }

    async fn run_datafusion_ctx(
        &self,
        ctx: &datafusion::prelude::SessionContext,
        plan: LogicalPlan,
    ) -> Result<()> {
        ctx.execute_logical_plan(plan).await?.collect().await?;
        Ok(())
    }
}

/// Whether the session's parser folds unquoted names to lower case.
pub(crate) fn folds_names(session: &ClientSession) -> bool {
    session
        .ctx
        .state()
        .config_options()
        .sql_parser
        .enable_ident_normalization
}

/// A session's temporary table `plan` reads, if it reads one (a view over it would outlive it).
fn temporary_table_read(plan: &LogicalPlan) -> Option<TableReference> {
    let mut found = None;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && source_as_provider(&scan.source)
                .ok()
                .and_then(|p| {
                    p.downcast_ref::<ManagedTable>()
                        .map(ManagedTable::is_temporary)
                })
                .unwrap_or(false)
        {
            found = Some(scan.table_name.clone());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

fn schema_name(reference: &SchemaReference) -> Result<String> {
    match reference {
        SchemaReference::Bare { schema } => Ok(schema.to_string()),
        SchemaReference::Full { schema, catalog } if catalog.as_ref() == DEFAULT_CATALOG => {
            Ok(schema.to_string())
        }
        SchemaReference::Full { catalog, .. } => Err(Error::NotSupported(format!(
            "catalog {catalog} does not exist: Ember has the one catalog {DEFAULT_CATALOG}"
        ))),
    }
}

/// A table or view that exists already, in DataFusion's words.
pub(crate) fn already_exists(name: &TableReference) -> Error {
    Error::DuplicateTable(format!("Execution error: Table '{name}' already exists"))
}
