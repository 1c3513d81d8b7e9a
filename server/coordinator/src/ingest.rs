//! Bulk ingest of Arrow batches a client sent (Flight SQL's `CommandStatementIngest`, ADBC's
//! `adbc_ingest`): appended to a table, replacing its rows, or a new table created from them
//! with their Arrow types, through the same distributed write and catalog commit as `INSERT`
//! and `CREATE TABLE AS`: all rows or none.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::MemTable;
use datafusion::common::{Column, ScalarValue, TableReference};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{
    CreateMemoryTable, DdlStatement, Expr, LogicalPlan, LogicalPlanBuilder, cast, col, lit,
};

use crate::ddl::already_exists;
use crate::engine::QueryEngine;
use crate::error::{Error, Result};
use crate::output::Output;
use crate::session::ClientSession;

/// What to do when the target table exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfTableExists {
    /// Refuse the ingest.
    Fail,
    /// Add the rows.
    Append,
    /// Replace the table's rows with these.
    Replace,
}

/// What to do when the target table does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfTableMissing {
    /// Create it with the batches' schema.
    Create,
    /// Refuse the ingest.
    Fail,
}

/// Rows for one table.
#[derive(Debug)]
pub struct Ingest {
    /// The target table, resolved against the session's current schema.
    pub table: TableReference,
    /// The batches' schema (they all have it).
    pub schema: SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
    /// When the table exists.
    pub if_exists: IfTableExists,
    /// When it does not.
    pub if_missing: IfTableMissing,
    /// A temporary table of the session (its name unqualified).
    pub temporary: bool,
}

impl QueryEngine {
    /// Writes the rows of `ingest`; returns what happened (the rows written).
    pub async fn ingest(&self, session: &ClientSession, ingest: Ingest) -> Result<Output> {
        let Ingest {
            table,
            schema,
            batches,
            if_exists,
            if_missing,
            temporary,
        } = ingest;
        let table = if temporary {
            if table.schema().is_some() {
                return Err(Error::NotSupported(format!(
                    "a temporary table is in the session's own schema: {table} names another"
                )));
            }
            let temp = self.temp_schema(session)?;
            TableReference::partial(temp.name.as_str(), table.table())
        } else {
            table
        };
        let ctx = session.context();
        let source = MemTable::try_new(Arc::clone(&schema), vec![batches])?;
        // Named outside Ember's catalog: access control checks the target, not the rows.
        let scan = LogicalPlanBuilder::scan(
            TableReference::full("client", "ingest", "rows"),
            provider_as_source(Arc::new(source)),
            None,
        )?
        .build()?;
        // What `system.queries` shows for it.
        let description = format!("-- ingest into {table}");
        if ctx.table_exist(table.clone())? {
            let op = match if_exists {
                IfTableExists::Append => InsertOp::Append,
                IfTableExists::Replace => InsertOp::Overwrite,
                IfTableExists::Fail => return Err(already_exists(&table)),
            };
            let target = ctx.table_provider(table.clone()).await?;
            let input = conform(scan, &target.schema())?;
            let plan =
                LogicalPlanBuilder::insert_into(input, table, provider_as_source(target), op)?
                    .build()?;
            self.authorize(session, &plan).await?;
            return self.insert(session, &description, plan).await;
        }
        if if_missing == IfTableMissing::Fail {
            return Err(Error::UndefinedTable(format!(
                "table {table} does not exist"
            )));
        }
        let create = CreateMemoryTable {
            name: table,
            constraints: Default::default(),
            input: Arc::new(scan),
            if_not_exists: false,
            or_replace: false,
            column_defaults: vec![],
            temporary: false,
        };
        self.authorize(
            session,
            &LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create.clone())),
        )
        .await?;
        self.create_table(session, &create, &[], &[], &description)
            .await
    }
}

/// The ingested columns matched to the table's by name and cast to its types; a column the
/// data lacks is NULL.
fn conform(scan: LogicalPlan, target: &Schema) -> datafusion::error::Result<LogicalPlan> {
    let input = Arc::clone(scan.schema());
    let exprs: Vec<Expr> = target
        .fields()
        .iter()
        .map(|field| {
            let value = if input.has_column_with_unqualified_name(field.name()) {
                col(Column::new_unqualified(field.name()))
            } else {
                lit(ScalarValue::Null)
            };
            cast(value, field.data_type().clone()).alias(field.name())
        })
        .collect();
    LogicalPlanBuilder::from(scan).project(exprs)?.build()
}
