//! The catalog statements DataFusion does not plan ([`CatalogStatement`]): `ALTER TABLE`/`ALTER
//! VIEW ... RENAME TO`, `ALTER TABLE ... ADD COLUMN` and `COMMENT ON`, each made durable in the
//! catalog file as the statements of [`crate::ddl`] are.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{Column, SchemaError, TableReference};
use datafusion::datasource::TableProvider;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::sql::planner::object_name_to_table_reference;
use datafusion::sql::sqlparser::ast::{ColumnDef, ObjectName as SqlObjectName};

use crate::access::Securable;
use crate::catalog::{CatalogObject, ManagedTable};
use crate::comments;
use crate::ddl::folds_names;
use crate::declared::TYPE_METADATA;
use crate::engine::QueryEngine;
use crate::error::{Error, Result};
use crate::output::{Command, Output};
use crate::session::ClientSession;
use crate::statement::{CatalogStatement, CommentOn, RelationKind};

impl QueryEngine {
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
}
