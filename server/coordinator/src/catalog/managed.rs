//! Managed tables: Delta Lake tables under the data dir. The catalog keeps what Delta has no
//! place for (the exact Arrow types, constraints, column defaults); the table's files and
//! versions are its Delta log's. Executors write the files; the coordinator commits them, one
//! Delta transaction per statement, and this table moves to the version it committed.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::stats::Precision;
use datafusion::common::{Constraints, DataFusionError, Statistics};
use datafusion::datasource::TableProvider;
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use ember_delta::deltalake_core::DeltaTable;
use ember_delta::deltalake_core::kernel::Action;
use ember_delta::{CommitError, DeltaScanTable, Operation, SnapshotCache, TimeTravel};

use super::ManagedEntry;

/// A managed table at the newest version this server committed or loaded.
#[derive(Debug)]
pub(crate) struct ManagedTable {
    entry: ManagedEntry,
    schema: SchemaRef,
    constraints: Constraints,
    defaults: HashMap<String, Expr>,
    /// The newest version, read with the catalog's types; none for a table without columns
    /// (Delta has no such tables, and it holds no rows).
    current: RwLock<Option<DeltaScanTable>>,
    /// Held while this server commits to the table: its statements queue here rather than
    /// race for the log's next version (Delta's conflict rules still judge what they read).
    commits: Arc<tokio::sync::Mutex<()>>,
    /// Shared by statements writing files into the table's directory until they commit;
    /// `VACUUM` holds it alone, so it never takes a file about to be committed for an
    /// unreferenced one.
    writers: Arc<tokio::sync::RwLock<()>>,
    /// A session's temporary table.
    temporary: bool,
}

impl ManagedTable {
    /// The table of `entry` at the snapshot `delta`; functions in column defaults resolve in
    /// `functions`.
    pub(crate) fn try_new(
        entry: ManagedEntry,
        schema: SchemaRef,
        functions: &TaskContext,
        delta: Option<DeltaTable>,
    ) -> crate::error::Result<Self> {
        // The log must name the catalog's columns.
        let current = delta
            .map(|delta| DeltaScanTable::with_schema(delta, Arc::clone(&schema)))
            .transpose()?;
        Ok(Self {
            constraints: entry.table_constraints(),
            defaults: entry.column_defaults(functions)?,
            entry,
            schema,
            current: RwLock::new(current),
            commits: Arc::default(),
            writers: Arc::default(),
            temporary: false,
        })
    }

    /// The same table under another name: same files, versions and writers.
    pub(crate) fn renamed(&self, name: &str) -> Self {
        let mut entry = self.entry.clone();
        entry.name = name.to_string();
        Self {
            entry,
            schema: Arc::clone(&self.schema),
            constraints: self.constraints.clone(),
            defaults: self.defaults.clone(),
            current: RwLock::new(self.current()),
            commits: Arc::clone(&self.commits),
            writers: Arc::clone(&self.writers),
            temporary: self.temporary,
        }
    }

    /// This table as a session's temporary table.
    pub(crate) fn temporary(mut self) -> Self {
        self.temporary = true;
        self
    }

    /// Whether this is a session's temporary table.
    pub(crate) fn is_temporary(&self) -> bool {
        self.temporary
    }

    pub(crate) fn entry(&self) -> &ManagedEntry {
        &self.entry
    }

    /// The newest version; none for a table without columns.
    fn current(&self) -> Option<DeltaScanTable> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Commits `actions` as `operation` to the version `read` (what the statement read), one
    /// commit of this server at a time, and moves the table to the new version.
    pub(crate) async fn commit(
        &self,
        read: &DeltaScanTable,
        actions: Vec<Action>,
        operation: impl Into<Operation>,
    ) -> std::result::Result<(), CommitError> {
        let _turn = self.commits.lock().await;
        let committed = ember_delta::commit(read.table(), actions, operation).await?;
        let committed = DeltaScanTable::with_schema(committed, Arc::clone(&self.schema))?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(committed);
        Ok(())
    }

    /// Held while a statement writes files into the table and commits them.
    pub(crate) async fn writing(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        Arc::clone(&self.writers).read_owned().await
    }

    /// Runs `change` on the newest version, as the only commit of this server to the table
    /// (and, with `alone`, while no statement writes files into it), and moves the table to
    /// the version `change` returns.
    pub(crate) async fn change<T, F, Fut>(&self, alone: bool, change: F) -> crate::error::Result<T>
    where
        F: FnOnce(DeltaTable) -> Fut,
        Fut: std::future::Future<Output = crate::error::Result<(DeltaTable, T)>>,
    {
        let _alone = match alone {
            true => Some(Arc::clone(&self.writers).write_owned().await),
            false => None,
        };
        let _turn = self.commits.lock().await;
        let (changed, outcome) = change(self.snapshot()?.table().clone()).await?;
        let changed = DeltaScanTable::with_schema(changed, Arc::clone(&self.schema))?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(changed);
        Ok(outcome)
    }

    /// `ALTER TABLE ... ADD COLUMN`: once no statement writes into the table and none commits,
    /// `record` makes the wider schema durable in the catalog, then the log commits the new
    /// nullable columns (if it cannot, `record` puts the catalog's entry back). The table with
    /// them, to take this one's place.
    pub(crate) async fn add_columns<F, Fut>(
        &self,
        fields: Vec<Field>,
        record: F,
    ) -> crate::error::Result<ManagedTable>
    where
        F: Fn(ManagedEntry) -> Fut,
        Fut: std::future::Future<Output = crate::error::Result<()>>,
    {
        if let Some(field) = fields.iter().find(|f| !f.is_nullable()) {
            return Err(crate::error::Error::NotSupported(format!(
                "ADD COLUMN {} NOT NULL is not supported: the rows already in the table have no value for it",
                field.name()
            )));
        }
        let _alone = Arc::clone(&self.writers).write_owned().await;
        let _turn = self.commits.lock().await;
        let table = self.snapshot()?.table().clone();
        let mut columns: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        columns.extend(fields.iter().cloned());
        let schema = Arc::new(Schema::new_with_metadata(
            columns,
            self.schema.metadata().clone(),
        ));
        let entry = self.entry.with_arrow_schema(&schema)?;
        // The catalog first: a crash before the log commits leaves a log that restoring
        // completes ([`super::complete_columns`]).
        record(entry.clone()).await?;
        let added = match ember_delta::add_columns(table, &fields).await {
            Ok(added) => added,
            Err(error) => {
                record(self.entry.clone()).await?;
                return Err(error.into());
            }
        };
        Ok(Self {
            entry,
            current: RwLock::new(Some(DeltaScanTable::with_schema(
                added,
                Arc::clone(&schema),
            )?)),
            schema,
            constraints: self.constraints.clone(),
            defaults: self.defaults.clone(),
            commits: Arc::clone(&self.commits),
            writers: Arc::clone(&self.writers),
            temporary: self.temporary,
        })
    }

    /// The table as of an earlier version: read-only, with the catalog's types where the
    /// version has the same columns.
    pub(crate) async fn at(&self, at: TimeTravel, cache: &SnapshotCache) -> Result<DeltaScanTable> {
        let table = at.load(self.snapshot()?.table(), cache).await?;
        DeltaScanTable::with_schema(table.clone(), Arc::clone(&self.schema))
            .or_else(|_| DeltaScanTable::try_new(table))
    }

    /// The partition columns, in the order the table declares them.
    pub(crate) fn partition_columns(&self) -> Vec<String> {
        self.current()
            .map(|current| {
                current
                    .partition_fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A plan writing `input`'s rows (the table's columns) as new files into the table's
    /// directory, partitioned as the table is; the files are the statement's to commit.
    pub(crate) async fn write_files(
        &self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        ember_delta::write_files(
            state,
            &self.entry.location,
            &self.schema,
            &self.partition_columns(),
            input,
        )
        .await
    }

    /// The newest version, read with the catalog's types.
    pub(crate) fn snapshot(&self) -> Result<DeltaScanTable> {
        self.current().ok_or_else(|| {
            DataFusionError::Plan(format!(
                "table {}.{} has no columns, so it holds no rows to change",
                self.entry.schema, self.entry.name
            ))
        })
    }
}

#[async_trait]
impl TableProvider for ManagedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        if self.temporary {
            TableType::Temporary
        } else {
            TableType::Base
        }
    }

    fn constraints(&self) -> Option<&Constraints> {
        Some(&self.constraints)
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.defaults.get(column)
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Files are pruned by the log's statistics; the plan keeps the filters above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    fn statistics(&self) -> Option<Statistics> {
        match self.current() {
            None => Some(Statistics::new_unknown(&self.schema).with_num_rows(Precision::Exact(0))),
            Some(current) => TableProvider::statistics(&current),
        }
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match self.current() {
            Some(current) => current.scan(state, projection, filters, limit).await,
            None => {
                let schema = match projection {
                    Some(p) => Arc::new(self.schema.project(p)?),
                    None => Arc::clone(&self.schema),
                };
                Ok(Arc::new(EmptyExec::new(schema)))
            }
        }
    }

    async fn insert_into(
        &self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        _insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // The engine turns the planned sink into a distributed write and commits the files it
        // produced to this table's log (an overwrite removes the files it read then).
        self.write_files(state, input).await
    }
}
