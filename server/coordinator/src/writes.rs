//! Writes: `INSERT`, `CREATE TABLE [AS]` and `COPY ... TO`. DataFusion plans the sink; the
//! engine turns it into a [`DistributedSinkExec`] whose tasks stage files on the executors, and
//! commits the staged files of a successful write here, at the coordinator:
//!
//! | target                   | commit                                                     |
//! |--------------------------|------------------------------------------------------------|
//! | managed table            | files moved into its directory, then one Delta transaction |
//! |                          | adds them (readers see all or nothing)                     |
//! | external Delta table     | the same, against the table's newest version               |
//! | external table, COPY dir | files moved into the directory                             |
//! | COPY to one file         | the one staged file renamed to the target                  |
//!
//! Whatever happens, the staging directory is removed afterwards; a failed or cancelled write
//! leaves nothing visible.

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Schema, UInt64Type};
use datafusion::catalog::SchemaProvider;
use datafusion::common::{Constraint, SchemaError};
use datafusion::datasource::TableProvider;
use datafusion::datasource::listing::{ListingTable, ListingTableUrl};
use datafusion::datasource::sink::DataSinkExec;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{CreateMemoryTable, DmlStatement, LogicalPlan, WriteOp};
use datafusion::object_store::path::Path as StorePath;
use datafusion::object_store::{ObjectStore, ObjectStoreExt};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::sqlparser::ast::Ident;
use ember_delta::deltalake_core::kernel::Action;
use ember_delta::{CommitError, DeltaScanTable, ExternalDeltaTable, WrittenFile};
use ember_planner::ids::QueryId;
use ember_planner::write::{DistributedSinkExec, STAGING_DIR};
use futures::TryStreamExt;

use crate::access::Securable;
use crate::catalog::{CatalogObject, ManagedEntry, ManagedTable};
use crate::ddl::ObjectName;
use crate::ddl::{already_exists, folds_names};
use crate::declared::{DeclaredString, TYPE_METADATA, check_column_constraints};
use crate::engine::QueryEngine;
use crate::error::{Error, Result};
use crate::output::{Command, Output};
use crate::session::ClientSession;
use crate::temp::TEMP_SCHEMA_PREFIX;

/// Where a write's files go when it commits.
pub(crate) enum Target {
    /// Into a Delta table's log: a managed table, or an external one other engines may write.
    Delta { table: ObjectName, overwrite: bool },
    /// Into the sink's directory (an external table, a new managed table, `COPY` to a
    /// directory), or renamed to the sink's one file (`COPY` to a file).
    Directory,
}

/// What the write tasks produced: rows written and staged files (relative to the staging
/// directory, whose first component is the task's own directory).
struct Staged {
    rows: u64,
    files: Vec<String>,
}

impl QueryEngine {
    /// `INSERT INTO table ...`; `sql` describes it (in `system.queries`).
    pub(crate) async fn insert(
        &self,
        session: &ClientSession,
        sql: &str,
        plan: LogicalPlan,
    ) -> Result<Output> {
        let LogicalPlan::Dml(DmlStatement { table_name, op, .. }) = &plan else {
            return Err(Error::NotSupported(format!("not an insert: {sql}")));
        };
        let insert_op = match op {
            WriteOp::Insert(op) => *op,
            other => {
                return Err(Error::NotSupported(format!(
                    "{other} is not supported: Ember tables are written by INSERT, CREATE TABLE AS and COPY"
                )));
            }
        };
        let table = self.resolve_name(session, table_name)?;
        self.check_writable_schema(&table.schema).await?;
        let provider = session.ctx.table_provider(table_name.clone()).await?;
        let is_delta = provider.downcast_ref::<ManagedTable>().is_some()
            || provider.downcast_ref::<ExternalDeltaTable>().is_some();
        let target = if is_delta {
            Target::Delta {
                table,
                overwrite: insert_op == InsertOp::Overwrite,
            }
        } else if provider.downcast_ref::<ListingTable>().is_some() {
            if insert_op != InsertOp::Append {
                return Err(Error::NotSupported(format!(
                    "{insert_op} into external table {table} is not supported; only appends are"
                )));
            }
            Target::Directory
        } else {
            return Err(Error::NotSupported(format!(
                "table {table} cannot be written: only tables created with CREATE TABLE and external file tables can"
            )));
        };
        let plan = match plan {
            LogicalPlan::Dml(mut dml) => {
                // Overwrites of Delta tables remove the files of the version read at commit;
                // the files are appended.
                if matches!(target, Target::Delta { .. }) {
                    dml.op = WriteOp::Insert(InsertOp::Append);
                }
                dml.input = check_column_constraints(dml.input, &provider.schema())?;
                LogicalPlan::Dml(dml)
            }
            plan => plan,
        };
        // Until its files are committed, VACUUM waits.
        let _writing = match provider.downcast_ref::<ManagedTable>() {
            Some(managed) => Some(managed.writing().await),
            None => None,
        };
        let physical = session.ctx.state().create_physical_plan(&plan).await?;
        let (rows, _) = self.write(session, sql, physical, target).await?;
        Ok(Output::wrote(Command::Insert, rows))
    }

    /// `COPY (query) TO 'location'`.
    pub(crate) async fn copy(
        &self,
        session: &ClientSession,
        sql: &str,
        plan: LogicalPlan,
    ) -> Result<Output> {
        let LogicalPlan::Copy(copy) = &plan else {
            return Err(Error::NotSupported(format!("not a copy: {sql}")));
        };
        self.allowed_paths.check_location(&copy.output_url)?;
        let physical = session.ctx.state().create_physical_plan(&plan).await?;
        // Decided by DistributedSinkExec from the target's form; `write` looks again.
        let (rows, _) = self
            .write(session, sql, physical, Target::Directory)
            .await?;
        Ok(Output::wrote(Command::Copy, rows))
    }

    /// `CREATE TABLE name (columns)` and `CREATE TABLE name AS query`: a managed table under
    /// the warehouse, created with its data in one catalog commit. `declared` names the
    /// `varchar`/`char` columns (by position) the statement declared; `sql` describes it.
    pub(crate) async fn create_table(
        &self,
        session: &ClientSession,
        cmd: &CreateMemoryTable,
        declared: &[Option<DeclaredString>],
        partitioned_by: &[Ident],
        sql: &str,
    ) -> Result<Output> {
        let name = self.resolve_name(session, &cmd.name)?;
        self.check_writable_schema(&name.schema).await?;
        // Planning put a temporary table's name in the session's temporary schema.
        let temp = if name.schema.starts_with(TEMP_SCHEMA_PREFIX) {
            let temp = self.temp_schema(session)?;
            if name.schema != temp.name {
                return Err(Error::NotSupported(format!(
                    "cannot create temporary relation {name} in a non-temporary schema"
                )));
            }
            Some(temp)
        } else {
            None
        };
        if cmd.or_replace && cmd.if_not_exists {
            // DataFusion's words, typed.
            return Err(Error::Syntax(
                "Execution error: 'IF NOT EXISTS' cannot coexist with 'REPLACE'".into(),
            ));
        }
        // The table keeps unqualified names only: a join's `t.a` and `u.a` would collide.
        let fields = cmd.input.schema().fields();
        if let Some(duplicate) = fields
            .iter()
            .enumerate()
            .find(|(i, f)| fields[..*i].iter().any(|g| g.name() == f.name()))
        {
            return Err(Error::DataFusion(DataFusionError::SchemaError(
                Box::new(SchemaError::DuplicateUnqualifiedField {
                    name: duplicate.1.name().clone(),
                }),
                Box::new(None),
            )));
        }
        if self.object_exists(session, &cmd.name).await {
            if cmd.if_not_exists {
                return Ok(Output::done(Command::CreateTable));
            }
            if !cmd.or_replace {
                return Err(already_exists(&cmd.name));
            }
        }
        let parent = match &temp {
            Some(temp) => temp.dir.clone(),
            None => self.catalog.warehouse().join(&name.schema),
        };
        // A primary key's columns are NOT NULL, as in PostgreSQL (and checked on every write).
        let key_columns: Vec<usize> = cmd
            .constraints
            .iter()
            .filter_map(|c| match c {
                Constraint::PrimaryKey(columns) => Some(columns.clone()),
                Constraint::Unique(_) => None,
            })
            .flatten()
            .collect();
        let input_schema = cmd.input.schema().as_arrow();
        let declared = (declared.len() == input_schema.fields().len()).then_some(declared);
        let schema = Arc::new(Schema::new_with_metadata(
            input_schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let mut field = f.as_ref().clone();
                    if key_columns.contains(&i) {
                        field = field.with_nullable(false);
                    }
                    if let Some(declared) = declared.and_then(|d| d[i])
                        && matches!(f.data_type(), DataType::Utf8 | DataType::Utf8View)
                    {
                        let mut metadata = field.metadata().clone();
                        metadata.insert(TYPE_METADATA.to_string(), declared.metadata());
                        field = field.with_metadata(metadata);
                    }
                    Arc::new(field)
                })
                .collect::<Vec<_>>(),
            input_schema.metadata().clone(),
        ));
        let folds = folds_names(session);
        let partition_columns: Vec<String> = partitioned_by
            .iter()
            .map(|column| match column.quote_style {
                None if folds => column.value.to_lowercase(),
                _ => column.value.clone(),
            })
            .collect();
        ember_delta::check_partition_columns(&schema, &partition_columns)?;
        let dir = parent.join(format!("{}-{:016x}", name.name, rand::random::<u64>()));
        std::fs::create_dir_all(&dir)?;
        let location = ListingTableUrl::parse(format!("{}/", dir.display()))?
            .as_str()
            .to_string();
        let entry = ManagedEntry::new(&name.schema, &name.name, location, &schema)?
            .with_constraints_and_defaults(&cmd.constraints, &cmd.column_defaults)?;
        let state = session.ctx.state();
        let has_rows = !matches!(
            cmd.input.as_ref(),
            LogicalPlan::EmptyRelation(empty) if !empty.produce_one_row
        );
        let mut rows = 0;
        let mut files = vec![];
        if has_rows {
            let input = check_column_constraints(Arc::clone(&cmd.input), &schema)?;
            let input = state.create_physical_plan(&input).await?;
            let sink = ember_delta::write_files(
                &state,
                &entry.location,
                &schema,
                &partition_columns,
                input,
            )
            .await?;
            match self.write(session, sql, sink, Target::Directory).await {
                Ok((count, written)) => {
                    rows = count;
                    files = written;
                }
                Err(error) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(error);
                }
            }
        }
        let delta = async {
            if schema.fields().is_empty() {
                // Delta has no tables without columns; such a table holds no rows.
                return Ok(None);
            }
            let url = ember_delta::table_url(&entry.location)?;
            let store = ember_delta::table_store(&session.ctx.runtime_env(), &url)?;
            let file_schema = ember_delta::file_schema(&schema, &partition_columns);
            let adds =
                ember_delta::add_actions(Arc::clone(&store), &url, &files, &file_schema).await?;
            let table = ember_delta::create_table(
                store,
                &url,
                &name.name,
                &schema,
                partition_columns.clone(),
                adds,
            )
            .await?;
            Ok::<_, Error>(Some(table))
        }
        .await;
        let delta = match delta {
            Ok(delta) => delta,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(error);
            }
        };
        if let Some(temp) = temp {
            let table = ManagedTable::try_new(
                entry,
                Arc::clone(&schema),
                &TaskContext::from(&state),
                delta,
            )?
            .temporary();
            if let Some(old) = temp.tables.deregister_table(&name.name)?
                && let Some(old) = old.downcast_ref::<ManagedTable>()
                && let Some(dir) = old.entry().local_dir()
            {
                let _ = std::fs::remove_dir_all(dir);
            }
            temp.tables
                .register_table(name.name.clone(), Arc::new(table))?;
            return Ok(if has_rows {
                Output::wrote(Command::CreateTableAs, rows)
            } else {
                Output::done(Command::CreateTable)
            });
        }
        let catalog = self.base_catalog();
        let owner = session.current_role();
        let committed =
            self.catalog
                .update(
                    |file| {
                        let key = (name.schema.as_str(), name.name.as_str());
                        let position = file.objects.iter().position(|o| o.key() == key);
                        // Another session may have created the table while this one wrote.
                        if position.is_some() && !cmd.or_replace {
                            return Err(already_exists(&cmd.name));
                        }
                        let old = position.map(|i| file.objects.remove(i));
                        file.objects.push(CatalogObject::Table(entry.clone()));
                        file.access
                            .created_if_new(Securable::table(&name.schema, &name.name), &owner);
                        Ok(old)
                    },
                    |_| {
                        let schema_provider = catalog
                            .and_then(|c| c.schema(&name.schema))
                            .ok_or_else(|| {
                                Error::UndefinedObject(format!(
                                    "schema {} does not exist",
                                    name.schema
                                ))
                            })?;
                        schema_provider.deregister_table(&name.name)?;
                        schema_provider.register_table(
                            name.name.clone(),
                            Arc::new(ManagedTable::try_new(
                                entry.clone(),
                                Arc::clone(&schema),
                                &TaskContext::from(&state),
                                delta.clone(),
                            )?),
                        )?;
                        Ok(())
                    },
                )
                .await;
        match committed {
            Ok(old) => {
                if let Some(old) = old {
                    self.remove_table_files(&old);
                }
            }
            Err(error) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(error);
            }
        }
        Ok(if has_rows {
            Output::wrote(Command::CreateTableAs, rows)
        } else {
            Output::done(Command::CreateTable)
        })
    }

    /// Runs a planned sink as a distributed write and commits it; returns the rows written and
    /// the files it moved into place (which a new managed table's first version adds).
    pub(crate) async fn write(
        &self,
        session: &ClientSession,
        sql: &str,
        physical: Arc<dyn ExecutionPlan>,
        target: Target,
    ) -> Result<(u64, Vec<WrittenFile>)> {
        let Some(sink) = physical.downcast_ref::<DataSinkExec>() else {
            return Err(Error::NotSupported(format!(
                "cannot write with this plan: {}",
                physical.name()
            )));
        };
        let directory = target_directory(sink)?;
        self.allowed_paths.check_location(directory.as_str())?;
        let staging = format!("{}{STAGING_DIR}/{}/", directory.as_str(), QueryId::random());
        let exec = Arc::new(DistributedSinkExec::try_from_sink(sink, &staging)?);
        let single_file = exec.single_file().map(str::to_string);
        let store = session
            .ctx
            .runtime_env()
            .object_store(directory.object_store())?;
        let guard = StagingGuard {
            store: Arc::clone(&store),
            url: ListingTableUrl::parse(&staging)?,
        };
        let batches: Vec<RecordBatch> = self
            .run_physical(session, sql, exec)
            .await?
            .try_collect()
            .await?;
        let staged = Staged::from_batches(&batches);
        let staging_prefix = guard.url.prefix().clone();
        let mut moved = vec![];
        // Committed names sort in commit order, then task order: listings sort by name, so
        // scans read rows in the order they were written.
        let commit = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let result = async {
            for file in &staged.files {
                let from = child(&staging_prefix, file)?;
                let relative = match &single_file {
                    Some(_) => String::new(),
                    None => committed_name(file, commit),
                };
                let to = match &single_file {
                    Some(_) => sink_target(sink)?.prefix().clone(),
                    None => child(directory.prefix(), &relative)?,
                };
                store
                    .rename(&from, &to)
                    .await
                    .map_err(datafusion::error::DataFusionError::from)?;
                let size = store
                    .head(&to)
                    .await
                    .map_err(datafusion::error::DataFusionError::from)?
                    .size;
                moved.push((
                    to,
                    WrittenFile {
                        path: relative,
                        size,
                    },
                ));
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(error) = result {
            let paths = moved.iter().map(|(p, _)| p.clone()).collect();
            delete_all(&store, paths).await;
            return Err(error);
        }
        self.invalidate_listings(directory.prefix());
        let files: Vec<WrittenFile> = moved.iter().map(|(_, f)| f.clone()).collect();
        let committed = match target {
            Target::Delta { table, overwrite } => {
                self.commit_write(session, &table, &files, staged.rows, overwrite)
                    .await
            }
            Target::Directory => Ok(()),
        };
        if let Err(error) = committed {
            let paths = moved.iter().map(|(p, _)| p.clone()).collect();
            delete_all(&store, paths).await;
            return Err(error);
        }
        drop(guard);
        Ok((staged.rows, moved.into_iter().map(|(_, f)| f).collect()))
    }

    /// Commits `files` (in the table's directory, `rows` rows) to a managed or external Delta
    /// table: appended, or replacing the files of the version the statement read (a managed
    /// table) or of its newest version (an external one, which others may write too).
    async fn commit_write(
        &self,
        session: &ClientSession,
        table: &ObjectName,
        files: &[WrittenFile],
        rows: u64,
        overwrite: bool,
    ) -> Result<()> {
        let provider = self.managed_table(table).await?;
        let committed = if let Some(managed) = provider.downcast_ref::<ManagedTable>() {
            let snapshot = managed.snapshot()?;
            let mut actions = added_files(session, &snapshot, files).await?;
            if overwrite {
                actions.extend(snapshot.remove_all()?);
            }
            let operation = ember_delta::write_operation(overwrite, rows, files).by(session.user());
            managed.commit(&snapshot, actions, operation).await
        } else if let Some(external) = provider.downcast_ref::<ExternalDeltaTable>() {
            external
                .commit_files(
                    &session.ctx.runtime_env(),
                    files,
                    rows,
                    overwrite,
                    session.user(),
                )
                .await
        } else {
            return Err(Error::UndefinedTable(format!(
                "{table} is no longer a Delta table"
            )));
        };
        committed.map_err(|e| commit_failure(table, e))
    }

    /// The provider registered for a managed table (the one commits move forward).
    pub(crate) async fn managed_table(&self, table: &ObjectName) -> Result<Arc<dyn TableProvider>> {
        let missing =
            || Error::UndefinedTable(format!("table {table} was dropped while being written"));
        let schema = self
            .base_catalog()
            .and_then(|c| c.schema(&table.schema))
            .ok_or_else(missing)?;
        schema.table(&table.name).await?.ok_or_else(missing)
    }

    /// Forgets cached listings at or below a written directory.
    fn invalidate_listings(&self, prefix: &StorePath) {
        let runtime = self.base_state.runtime_env();
        if let Some(cache) = runtime.cache_manager.get_list_files_cache() {
            for key in cache.list_entries().into_keys() {
                let key_path = key.path.as_ref();
                let written = prefix.as_ref();
                if key_path.starts_with(written) || written.starts_with(key_path) {
                    cache.remove(&key);
                }
            }
        }
    }
}

impl Staged {
    fn from_batches(batches: &[RecordBatch]) -> Self {
        let mut staged = Staged {
            rows: 0,
            files: vec![],
        };
        for batch in batches {
            let rows = batch.column(0).as_primitive::<UInt64Type>();
            let files = batch.column(1).as_list::<i32>();
            for i in 0..batch.num_rows() {
                staged.rows += rows.value(i);
                let names = files.value(i);
                let names = names.as_string::<i32>();
                staged
                    .files
                    .extend(names.iter().flatten().map(str::to_string));
            }
        }
        staged
    }
}

/// The `add` actions of files a statement wrote into the Delta table it read at `read`, with
/// the statistics their footers give.
pub(crate) async fn added_files(
    session: &ClientSession,
    read: &DeltaScanTable,
    files: &[WrittenFile],
) -> Result<Vec<Action>> {
    let url = read.table().table_url();
    let store = ember_delta::table_store(&session.ctx.runtime_env(), url)?;
    let adds = ember_delta::add_actions(store, url, files, &read.file_schema()).await?;
    Ok(adds.into_iter().map(Action::Add).collect())
}

/// Deletes files a statement wrote into the Delta table it read at `read` but did not commit.
pub(crate) async fn remove_written(
    session: &ClientSession,
    read: &DeltaScanTable,
    files: &[WrittenFile],
) {
    let paths = async {
        let url = read.table().table_url();
        let store = ember_delta::table_store(&session.ctx.runtime_env(), url)?;
        let root = StorePath::from_url_path(url.path())
            .map_err(|e| Error::DataFusion(DataFusionError::External(Box::new(e))))?;
        let paths = files
            .iter()
            .map(|f| child(&root, &f.path))
            .collect::<Result<Vec<_>>>()?;
        Ok::<_, Error>((store, paths))
    }
    .await;
    match paths {
        Ok((store, paths)) => delete_all(&store, paths).await,
        Err(error) => tracing::warn!(%error, "cannot delete the files of a failed change"),
    }
}

/// A commit that failed: a lost race is a serialization failure the client may retry.
pub(crate) fn commit_failure(table: &ObjectName, error: CommitError) -> Error {
    match error {
        CommitError::Conflict(reason) => Error::SerializationFailure(format!(
            "could not serialize access to table {table} due to a concurrent write ({reason}); retry the statement"
        )),
        CommitError::Failed(error) => error.into(),
    }
}

/// `task-<p>-<rand>/[dirs/]name` → `[dirs/]<commit>-<p>-name`.
fn committed_name(staged: &str, commit: u128) -> String {
    let (task_dir, rest) = staged.split_once('/').unwrap_or(("", staged));
    let task: u64 = task_dir
        .strip_prefix("task-")
        .and_then(|t| t.split('-').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_default();
    let (dirs, name) = match rest.rsplit_once('/') {
        Some((dirs, name)) => (format!("{dirs}/"), name),
        None => (String::new(), rest),
    };
    format!("{dirs}{commit:020}-{task:05}-{name}")
}

/// The URL of the sink's target as DataFusion planned it.
fn sink_target(sink: &DataSinkExec) -> Result<ListingTableUrl> {
    let config = ember_planner::write::file_sink(sink.sink())
        .ok_or_else(|| {
            Error::NotSupported("only parquet, csv and json files can be written".into())
        })?
        .config();
    config
        .table_paths
        .first()
        .cloned()
        .ok_or_else(|| Error::NotSupported("a write without a target".into()))
}

/// The directory a write lands in: the target itself, or the parent of a one-file target.
fn target_directory(sink: &DataSinkExec) -> Result<ListingTableUrl> {
    let target = sink_target(sink)?;
    if target.is_collection() {
        return Ok(target);
    }
    let text = target.as_str();
    let parent = text.rsplit_once('/').map(|(p, _)| p).unwrap_or(text);
    Ok(ListingTableUrl::parse(format!("{parent}/"))?)
}

fn child(base: &StorePath, relative: &str) -> Result<StorePath> {
    let joined = if base.as_ref().is_empty() {
        relative.to_string()
    } else if relative.is_empty() {
        base.as_ref().to_string()
    } else {
        format!("{}/{relative}", base.as_ref())
    };
    StorePath::parse(joined)
        .map_err(|e| Error::DataFusion(datafusion::error::DataFusionError::External(Box::new(e))))
}

async fn delete_all(store: &Arc<dyn ObjectStore>, paths: Vec<StorePath>) {
    for path in paths {
        if let Err(error) = store.delete(&path).await {
            tracing::warn!(%path, %error, "cannot delete a written file");
        }
    }
}

/// Removes a write's staging directory when the write ends, however it ends.
struct StagingGuard {
    store: Arc<dyn ObjectStore>,
    url: ListingTableUrl,
}

impl Drop for StagingGuard {
    fn drop(&mut self) {
        let store = Arc::clone(&self.store);
        let url = self.url.clone();
        let remove = async move {
            let local: &url::Url = url.as_ref();
            if local.scheme() == "file"
                && let Ok(path) = local.to_file_path()
            {
                let _ = tokio::fs::remove_dir_all(&path).await;
                // The shared staging directory goes too once no other write uses it.
                if let Some(parent) = path.parent() {
                    let _ = tokio::fs::remove_dir(parent).await;
                }
                return;
            }
            let paths: Vec<StorePath> = store
                .list(Some(url.prefix()))
                .map_ok(|m| m.location)
                .try_collect()
                .await
                .unwrap_or_default();
            delete_all(&store, paths).await;
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(remove);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_names_sort_by_commit_then_task() {
        assert_eq!(
            committed_name("task-3-00ab/x_0.parquet", 42),
            "00000000000000000042-00003-x_0.parquet"
        );
        assert_eq!(
            committed_name("task-12-ff/k=1/y.csv", 7),
            "k=1/00000000000000000007-00012-y.csv"
        );
        assert!(committed_name("task-2-a/z", 9) < committed_name("task-10-a/a", 9));
        assert!(committed_name("task-9-a/z", 9) < committed_name("task-0-a/a", 10));
    }
}
