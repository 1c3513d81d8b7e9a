//! `CREATE EXTERNAL TABLE ... STORED AS DELTA LOCATION '...'`: a Delta table another engine
//! may write too. Each scan reads the table's newest version.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProviderFactory};
use datafusion::common::{DataFusionError, Result, plan_err};
use datafusion::datasource::TableProvider;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{CreateExternalTable, Expr, TableProviderFilterPushDown, TableType};
use datafusion::object_store::ObjectStore;
use datafusion::physical_plan::ExecutionPlan;
use deltalake_core::kernel::Action;
use deltalake_core::{DeltaTable, DeltaTableBuilder};
use tokio::sync::Mutex;
use url::Url;

use crate::commit::{
    CommitError, Operation, WrittenFile, add_actions, commit, create_table, write_operation,
};
use crate::library_error;
use crate::scan::{DeltaScanTable, object_store_url};
use crate::snapshots::SnapshotCache;
use crate::time_travel::TimeTravel;
use crate::write::check_partition_columns;

/// Opens the Delta table at `url` (its newest version) through the object store `session`
/// has registered for it.
pub async fn open_table(session: &dyn Session, url: &Url) -> Result<DeltaTable> {
    crate::register_log_stores();
    let store = table_store(session.runtime_env(), url)?;
    DeltaTableBuilder::from_url(url.clone())
        .map_err(library_error)?
        .with_storage_backend(store, url.clone())
        .load()
        .await
        .map_err(|e| DataFusionError::Plan(format!("cannot open the Delta table at {url}: {e}")))
}

/// Whether a Delta log is at `url`.
async fn has_log(session: &dyn Session, url: &Url) -> Result<bool> {
    use futures::StreamExt;
    let store = table_store(session.runtime_env(), url)?;
    let root =
        datafusion::object_store::path::Path::from_url_path(url.path()).map_err(library_error)?;
    let log = root.join("_delta_log");
    Ok(store.list(Some(&log)).next().await.transpose()?.is_some())
}

/// The object store `runtime` has registered for the table at `url`.
pub fn table_store(runtime: &RuntimeEnv, url: &Url) -> Result<Arc<dyn ObjectStore>> {
    runtime.object_store(object_store_url(url)?)
}

/// The URL of a table location: a URL, or a local path (made absolute), ending in `/`.
pub fn table_url(location: &str) -> Result<Url> {
    let url = match Url::parse(location) {
        Ok(url) if url.scheme().len() > 1 => url,
        // Not a URL (or a Windows drive letter): a local directory.
        _ => {
            let path = std::path::absolute(location)
                .map_err(|e| DataFusionError::Plan(format!("bad location {location}: {e}")))?;
            Url::from_directory_path(&path)
                .map_err(|_| DataFusionError::Plan(format!("bad location {location}")))?
        }
    };
    let mut url = url;
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    Ok(url)
}

/// Makes the providers of `STORED AS DELTA` tables.
#[derive(Debug, Default)]
pub struct DeltaTableFactory;

#[async_trait]
impl TableProviderFactory for DeltaTableFactory {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let [location] = cmd.locations.as_slice() else {
            return plan_err!("a Delta table has one location");
        };
        let url = table_url(location)?;
        let table = if cmd.schema.fields().is_empty() || has_log(state, &url).await? {
            open_table(state, &url).await?
        } else {
            // Columns and no table there: a new, empty table (as Spark's `CREATE TABLE ...
            // USING DELTA LOCATION` makes one).
            let store = table_store(state.runtime_env(), &url)?;
            let schema = cmd.schema.as_arrow();
            check_partition_columns(schema, &cmd.table_partition_cols)?;
            let name = cmd.name.table();
            create_table(
                store,
                &url,
                name,
                schema,
                cmd.table_partition_cols.clone(),
                vec![],
            )
            .await?
        };
        let logged = table
            .snapshot()
            .map_err(library_error)?
            .metadata()
            .partition_columns()
            .to_vec();
        if !cmd.table_partition_cols.is_empty() && cmd.table_partition_cols != logged {
            return plan_err!(
                "the Delta table at {url} is partitioned by ({}), not ({}): its log says, omit PARTITIONED BY",
                logged.join(", "),
                cmd.table_partition_cols.join(", ")
            );
        }
        let schema = DeltaScanTable::try_new(table.clone())?.schema();
        if !cmd.schema.fields().is_empty() {
            let declared: Vec<&String> = cmd.schema.fields().iter().map(|f| f.name()).collect();
            let actual: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
            if declared != actual {
                return plan_err!(
                    "the columns given ({}) are not the Delta table's ({}): omit them, the log has them",
                    declared
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    actual
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Ok(Arc::new(ExternalDeltaTable {
            url,
            schema,
            table: Mutex::new(table),
        }))
    }
}

/// An external Delta table: read at its newest version by each scan.
#[derive(Debug)]
pub struct ExternalDeltaTable {
    url: Url,
    schema: SchemaRef,
    table: Mutex<DeltaTable>,
}

impl ExternalDeltaTable {
    /// The table as of its newest version.
    pub async fn latest(&self) -> Result<DeltaScanTable> {
        let mut table = self.table.lock().await;
        table.update_incremental(None).await.map_err(|e| {
            DataFusionError::Execution(format!("cannot read the Delta table at {}: {e}", self.url))
        })?;
        let current = DeltaScanTable::try_new(table.clone())?;
        if current.schema() != self.schema {
            return plan_err!(
                "the Delta table at {} has changed its columns since it was created here: \
                 drop and create the external table again",
                self.url
            );
        }
        Ok(current)
    }

    /// Commits files (`rows` rows) a statement wrote into the table's directory: appended, or
    /// replacing the files of the newest version (`overwrite`). Delta's conflict rules judge
    /// the commit against what other engines committed meanwhile.
    pub async fn commit_files(
        &self,
        runtime: &RuntimeEnv,
        files: &[WrittenFile],
        rows: u64,
        overwrite: bool,
        user: &str,
    ) -> std::result::Result<(), CommitError> {
        let read = self.latest().await?;
        let store = table_store(runtime, &self.url)?;
        let adds = add_actions(store, &self.url, files, &read.file_schema()).await?;
        let mut actions: Vec<Action> = adds.into_iter().map(Action::Add).collect();
        if overwrite {
            actions.extend(read.remove_all()?);
        }
        self.commit(
            &read,
            actions,
            write_operation(overwrite, rows, files).by(user),
        )
        .await
    }

    /// Commits `actions` as `operation` to the version `read` (what the statement read):
    /// Delta's conflict rules judge them against what others committed since.
    pub async fn commit(
        &self,
        read: &DeltaScanTable,
        actions: Vec<Action>,
        operation: impl Into<Operation>,
    ) -> std::result::Result<(), CommitError> {
        let committed = commit(read.table(), actions, operation).await?;
        *self.table.lock().await = committed;
        Ok(())
    }

    /// The table as of an earlier version (with that version's columns).
    pub async fn at(&self, at: TimeTravel, cache: &SnapshotCache) -> Result<DeltaScanTable> {
        let table = self.table.lock().await.clone();
        DeltaScanTable::try_new(at.load(&table, cache).await?)
    }
}

#[async_trait]
impl TableProvider for ExternalDeltaTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    /// A sink writing into the table's directory, partitioned as the table is (Hive-style
    /// directories); the engine runs it on the executors and commits what it wrote with
    /// [`Self::commit_files`].
    async fn insert_into(
        &self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        _insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Overwrites replace the log's files at commit; the files are appended.
        self.latest().await?.write_files(state, input).await
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.latest()
            .await?
            .scan(state, projection, filters, limit)
            .await
    }
}
