//! Catalog statements: DataFusion checks and applies them to its in-memory catalog, the
//! [`CatalogStore`] makes them durable. Schemas Ember provides itself (`system`,
//! `information_schema`, `tpch`) are read-only.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Column, SchemaError, SchemaReference, TableReference};
use datafusion::datasource::TableProvider;
use datafusion::datasource::source_as_provider;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::sql::sqlparser::ast::ColumnDef;
use ember_planner::session::{DEFAULT_CATALOG, DEFAULT_SCHEMA};

use datafusion::sql::planner::object_name_to_table_reference;
use datafusion::sql::sqlparser::ast::ObjectName as SqlObjectName;

use crate::access::Securable;
use crate::catalog::{CatalogObject, ManagedTable, StatementEntry};
use crate::comments;
use crate::declared::TYPE_METADATA;
use crate::engine::{QueryEngine, ddl_command};
use crate::error::{Error, Result};
use crate::output::{Command, Output};
use crate::session::ClientSession;
use crate::statement::{CatalogStatement, CommentOn, ParsedStatement, RelationKind};
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
                self.create_table(session, cmd, parsed.declared_columns(), text)
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

    /// Runs a catalog statement DataFusion has no plan for.
    pub(crate) async fn catalog_statement(
        &self,
        session: &ClientSession,
        statement: &CatalogStatement,
    ) -> Result<Output> {
        match statement {
            CatalogStatement::Rename {
                kind,
                if_exists,
                name,
                new_name,
            } => {
                self.rename(session, *kind, *if_exists, name, new_name)
                    .await
            }
            CatalogStatement::Comment { on, name, text } => {
                self.comment(session, *on, name, text.as_deref()).await
            }
            CatalogStatement::AddColumns {
                table,
                columns,
                if_not_exists,
            } => {
                self.add_columns(session, table, columns, if_not_exists)
                    .await
            }
        }
    }

    /// `ALTER TABLE t ADD COLUMN c type, ...` of a managed table, by its owner: nullable
    /// columns after the table's own (as Delta adds them), NULL in the rows there are.
    async fn add_columns(
        &self,
        session: &ClientSession,
        name: &SqlObjectName,
        columns: &[ColumnDef],
        if_not_exists: &[bool],
    ) -> Result<Output> {
        let normalize = folds_names(session);
        let (reference, target) = self.table_named(session, name)?;
        let file = self.catalog.snapshot().await;
        let key = (target.schema.as_str(), target.name.as_str());
        match file.objects.iter().find(|o| o.key() == key) {
            Some(CatalogObject::Table(_)) => {}
            Some(CatalogObject::View(_)) => {
                return Err(Error::WrongObjectType(format!(
                    "\"{}\" is not a table",
                    target.name
                )));
            }
            Some(CatalogObject::External(_)) => {
                return Err(Error::NotSupported(format!(
                    "ADD COLUMN of external table {target} is not supported: only of tables made by CREATE TABLE"
                )));
            }
            None if !self.object_exists(session, &reference).await => {
                return Err(Error::UndefinedTable(format!(
                    "relation \"{target}\" does not exist"
                )));
            }
            None => {
                self.check_writable_schema(&target.schema).await?;
                return Err(Error::NotSupported(format!("{target} cannot be changed")));
            }
        }
        self.catalog.access().require_owner(
            &session.current_role(),
            &Securable::table(&target.schema, &target.name),
        )?;
        let schema_provider = self.schema_provider(&target.schema)?;
        let provider = schema_provider.table(&target.name).await?.ok_or_else(|| {
            Error::UndefinedTable(format!("relation \"{target}\" does not exist"))
        })?;
        let managed = provider
            .downcast_ref::<ManagedTable>()
            .ok_or_else(|| Error::NotSupported(format!("{target} cannot be changed")))?;
        // The columns' types as CREATE TABLE gives them (declared varchar(n) kept).
        let existing = managed.schema();
        let mut wanted = vec![];
        for (column, if_not_exists) in columns.iter().zip(if_not_exists) {
            let name = match column.name.quote_style {
                None if normalize => column.name.value.to_lowercase(),
                _ => column.name.value.clone(),
            };
            let taken = existing.field_with_name(&name).is_ok()
                || wanted.iter().any(|c: &&ColumnDef| c.name.value == name);
            match (taken, if_not_exists) {
                (true, true) => continue,
                (true, false) => {
                    return Err(Error::DataFusion(DataFusionError::SchemaError(
                        Box::new(SchemaError::DuplicateUnqualifiedField { name }),
                        Box::new(None),
                    )));
                }
                _ => wanted.push(column),
            }
        }
        if wanted.is_empty() {
            return Ok(Output::done(Command::AlterTable));
        }
        let definition = format!(
            "CREATE TABLE ember_added_columns ({})",
            wanted
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let parsed = self
            .parse(session, &definition)?
            .pop()
            .ok_or_else(|| Error::Syntax(format!("cannot read the columns of {definition}")))?;
        let ast = parsed
            .ast()
            .cloned()
            .ok_or_else(|| Error::Syntax(format!("cannot read the columns of {definition}")))?;
        let LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) =
            session.ctx.state().statement_to_plan(ast).await?
        else {
            return Err(Error::Syntax(format!(
                "cannot read the columns of {definition}"
            )));
        };
        if !create.column_defaults.is_empty() || !create.constraints.is_empty() {
            return Err(Error::NotSupported(
                "ADD COLUMN ... DEFAULT, PRIMARY KEY or UNIQUE is not supported: the rows already in the table would need values or checks written".into(),
            ));
        }
        let declared = parsed.declared_columns();
        let fields: Vec<Field> = create
            .input
            .schema()
            .as_arrow()
            .fields()
            .iter()
            .enumerate()
            .map(|(i, field)| {
                let mut field = field.as_ref().clone();
                if let Some(Some(declared)) = declared.get(i)
                    && matches!(field.data_type(), DataType::Utf8 | DataType::Utf8View)
                {
                    let mut metadata = field.metadata().clone();
                    metadata.insert(TYPE_METADATA.to_string(), declared.metadata());
                    field = field.with_metadata(metadata);
                }
                field
            })
            .collect();
        let added = managed
            .add_columns(fields, |entry| async move {
                self.catalog
                    .update(
                        |file| {
                            let key = (entry.schema.as_str(), entry.name.as_str());
                            let object = file
                                .objects
                                .iter_mut()
                                .find(|o| o.key() == key)
                                .ok_or_else(|| {
                                    Error::UndefinedTable(format!(
                                        "relation \"{}\" does not exist",
                                        entry.name
                                    ))
                                })?;
                            *object = CatalogObject::Table(entry.clone());
                            Ok(())
                        },
                        |_| Ok(()),
                    )
                    .await
            })
            .await?;
        schema_provider.deregister_table(&target.name)?;
        schema_provider.register_table(target.name.clone(), Arc::new(added))?;
        Ok(Output::done(Command::AlterTable))
    }

    /// `COMMENT ON {TABLE | VIEW | COLUMN} ... IS ...`, as in PostgreSQL: only the owner may;
    /// the comment lasts as long as the object (renames included).
    async fn comment(
        &self,
        session: &ClientSession,
        on: CommentOn,
        name: &SqlObjectName,
        text: Option<&str>,
    ) -> Result<Output> {
        let normalize = folds_names(session);
        let (table, column) = match on {
            CommentOn::Column => {
                let mut parts = name.0.clone();
                let column = parts
                    .pop()
                    .and_then(|p| p.as_ident().cloned())
                    .filter(|_| !parts.is_empty())
                    .ok_or_else(|| {
                        Error::Syntax(format!(
                            "COMMENT ON COLUMN names a table's column (table.column), not {name}"
                        ))
                    })?;
                let column = match column.quote_style {
                    None if normalize => column.value.to_lowercase(),
                    _ => column.value,
                };
                (SqlObjectName(parts), Some(column))
            }
            CommentOn::Table | CommentOn::View => (name.clone(), None),
        };
        let (reference, target) = self.table_named(session, &table)?;
        let file = self.catalog.snapshot().await;
        let key = (target.schema.as_str(), target.name.as_str());
        let Some(object) = file.objects.iter().find(|o| o.key() == key) else {
            if !self.object_exists(session, &reference).await {
                return Err(Error::UndefinedTable(format!(
                    "relation \"{target}\" does not exist"
                )));
            }
            self.check_writable_schema(&target.schema).await?;
            return Err(Error::NotSupported(format!(
                "comments on {target} are not kept: only on tables and views of the catalog"
            )));
        };
        let is_view = matches!(object, CatalogObject::View(_));
        match (on, is_view) {
            (CommentOn::View, false) => {
                return Err(Error::WrongObjectType(format!(
                    "\"{}\" is not a view",
                    target.name
                )));
            }
            (CommentOn::Table, true) => {
                return Err(Error::WrongObjectType(format!(
                    "\"{}\" is not a table: use COMMENT ON VIEW",
                    target.name
                )));
            }
            _ => {}
        }
        if let Some(column) = &column {
            let provider = session.ctx.table_provider(reference.clone()).await?;
            if provider.schema().field_with_name(column).is_err() {
                return Err(Error::DataFusion(DataFusionError::SchemaError(
                    Box::new(SchemaError::FieldNotFound {
                        field: Box::new(Column::new(Some(reference.clone()), column)),
                        valid_fields: vec![],
                    }),
                    Box::new(None),
                )));
            }
        }
        self.catalog.access().require_owner(
            &session.current_role(),
            &Securable::table(&target.schema, &target.name),
        )?;
        self.catalog
            .update(
                |file| {
                    let key = (target.schema.as_str(), target.name.as_str());
                    if !file.objects.iter().any(|o| o.key() == key) {
                        return Err(Error::UndefinedTable(format!(
                            "relation \"{target}\" does not exist"
                        )));
                    }
                    comments::set(
                        &mut file.comments,
                        &target.schema,
                        &target.name,
                        column.as_deref(),
                        text,
                    );
                    Ok(())
                },
                |_| Ok(()),
            )
            .await?;
        Ok(Output::done(Command::Comment))
    }

    /// `ALTER {TABLE | VIEW} name RENAME TO new_name`, as in PostgreSQL: only the owner may;
    /// the object keeps its schema, data, owner and grants. Its files stay where they are.
    async fn rename(
        &self,
        session: &ClientSession,
        kind: RelationKind,
        if_exists: bool,
        name: &SqlObjectName,
        new_name: &SqlObjectName,
    ) -> Result<Output> {
        let command = match kind {
            RelationKind::Table => Command::AlterTable,
            RelationKind::View => Command::AlterView,
        };
        let (reference, target) = self.table_named(session, name)?;
        let new_reference = object_name_to_table_reference(new_name.clone(), folds_names(session))?;
        let new = match &new_reference {
            TableReference::Bare { table } => table.to_string(),
            _ => {
                let resolved = self.resolve_name(session, &new_reference)?;
                if resolved.schema != target.schema {
                    return Err(Error::NotSupported(format!(
                        "RENAME TO cannot move {target} to schema {}: the new name is in the same schema",
                        resolved.schema
                    )));
                }
                resolved.name
            }
        };
        let file = self.catalog.snapshot().await;
        let key = (target.schema.as_str(), target.name.as_str());
        let Some(object) = file.objects.iter().find(|o| o.key() == key) else {
            if !self.object_exists(session, &reference).await {
                return if if_exists {
                    Ok(Output::done(command))
                } else {
                    Err(Error::UndefinedTable(format!(
                        "relation \"{target}\" does not exist"
                    )))
                };
            }
            self.check_writable_schema(&target.schema).await?;
            return Err(Error::NotSupported(format!("{target} cannot be renamed")));
        };
        if kind == RelationKind::View && !matches!(object, CatalogObject::View(_)) {
            return Err(Error::WrongObjectType(format!(
                "\"{}\" is not a view: use ALTER TABLE to rename it",
                target.name
            )));
        }
        self.catalog.access().require_owner(
            &session.current_role(),
            &Securable::table(&target.schema, &target.name),
        )?;
        let taken = TableReference::partial(target.schema.as_str(), new.as_str());
        if self.object_exists(session, &taken).await {
            return Err(Error::DuplicateTable(format!(
                "relation \"{new}\" already exists"
            )));
        }
        let schema_provider = self.schema_provider(&target.schema)?;
        self.catalog
            .update(
                |file| {
                    if file
                        .objects
                        .iter()
                        .any(|o| o.key() == (target.schema.as_str(), new.as_str()))
                    {
                        return Err(Error::DuplicateTable(format!(
                            "relation \"{new}\" already exists"
                        )));
                    }
                    let object = file
                        .objects
                        .iter_mut()
                        .find(|o| o.key() == (target.schema.as_str(), target.name.as_str()))
                        .ok_or_else(|| {
                            Error::UndefinedTable(format!("relation \"{target}\" does not exist"))
                        })?;
                    match object {
                        CatalogObject::Table(table) => table.name = new.clone(),
                        CatalogObject::External(entry) | CatalogObject::View(entry) => {
                            // Its statement creates the first name; restoring renames it.
                            let first = entry.created_as.take().unwrap_or(entry.name.clone());
                            entry.created_as = (first != new).then_some(first);
                            entry.name = new.clone();
                        }
                    }
                    file.access
                        .renamed_table(&target.schema, &target.name, &new);
                    comments::renamed(&mut file.comments, &target.schema, &target.name, &new);
                    Ok(())
                },
                |_| {
                    let provider =
                        schema_provider
                            .deregister_table(&target.name)?
                            .ok_or_else(|| {
                                Error::UndefinedTable(format!(
                                    "relation \"{target}\" does not exist"
                                ))
                            })?;
                    let provider = match provider.downcast_ref::<ManagedTable>() {
                        Some(managed) => Arc::new(managed.renamed(&new)),
                        None => provider,
                    };
                    schema_provider.register_table(new.clone(), provider)?;
                    Ok(())
                },
            )
            .await?;
        Ok(Output::done(command))
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
