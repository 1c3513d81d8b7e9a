//! The persistent catalog: schemas, tables and views that users create, kept in
//! `<data_dir>/catalog/catalog.json` and registered with DataFusion's in-memory catalog.
//!
//! Every change writes a complete new file next to the old one, syncs it and renames it over
//! the old one, so a crash leaves either the old or the new catalog, never a torn one. The
//! store's lock serialises changes; the DataFusion catalog is updated under the same lock.
//!
//! | object         | what is stored                                   | restored by               |
//! |----------------|--------------------------------------------------|---------------------------|
//! | schema         | its name                                         | a memory schema provider  |
//! | external table | its `CREATE EXTERNAL TABLE` text                 | replaying the statement   |
//! | view           | its `CREATE VIEW` text                           | replaying the statement   |
//! | managed table  | Arrow schema, directory, constraints, defaults   | [`ManagedTable`] over the |
//! |                |                                                  | Delta log in the directory |
//!
//! A managed table's files and versions are its Delta log's. Tables written before managed
//! tables were Delta tables listed their files here (a manifest); at start each such table
//! is converted in place: a log whose first version adds the manifest's files.

mod managed;
mod versions;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::{CatalogProvider, MemorySchemaProvider};
use datafusion::common::{Constraint, Constraints};
use datafusion::execution::TaskContext;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::Expr;
use datafusion::prelude::SessionContext;
use datafusion_proto::logical_plan::DefaultLogicalExtensionCodec;
use datafusion_proto::logical_plan::from_proto::parse_expr;
use datafusion_proto::logical_plan::to_proto::serialize_expr;
use datafusion_proto::protobuf;
use ember_delta::WrittenFile;
use ember_delta::deltalake_core::DeltaTable;
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{info, warn};

pub(crate) use managed::ManagedTable;
pub(crate) use versions::VersionedCatalog;

use crate::access::{AccessControl, AccessFile, Published};
use crate::comments::{Comment, Comments};
use crate::error::{Error, Result};

const CATALOG_FILE: &str = "catalog.json";
/// Where a Delta table keeps its log.
pub(crate) const DELTA_LOG_DIR: &str = "_delta_log";
const FORMAT_VERSION: u32 = 1;

/// The catalog file's contents.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct CatalogFile {
    pub(crate) version: u32,
    /// Schemas created by users (the default schema always exists).
    #[serde(default)]
    pub(crate) schemas: Vec<String>,
    /// Tables and views, in creation order (views may refer to what came before them).
    #[serde(default)]
    pub(crate) objects: Vec<CatalogObject>,
    /// Roles, owners and grants.
    #[serde(default)]
    pub(crate) access: AccessFile,
    /// Comments on tables, views and columns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) comments: Vec<Comment>,
}

impl CatalogFile {
    /// What access control reads of this catalog.
    fn published(&self) -> Published {
        Published {
            access: self.access.clone(),
            schemas: self.schemas.clone(),
            tables: self
                .objects
                .iter()
                .map(|o| (o.key().0.to_string(), o.key().1.to_string()))
                .collect(),
            views: self
                .objects
                .iter()
                .filter_map(|o| match o {
                    CatalogObject::View(view) => Some((
                        (view.schema.clone(), view.name.clone()),
                        view.default_schema.clone(),
                    )),
                    _ => None,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum CatalogObject {
    External(StatementEntry),
    View(StatementEntry),
    Table(ManagedEntry),
}

/// An object restored by replaying the statement that created it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StatementEntry {
    pub(crate) schema: String,
    pub(crate) name: String,
    pub(crate) sql: String,
    /// The creating session's default schema, which unqualified names in `sql` refer to.
    pub(crate) default_schema: String,
    /// The name `sql` creates, when the object was renamed since (`ALTER ... RENAME TO`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) created_as: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ManagedEntry {
    pub(crate) schema: String,
    pub(crate) name: String,
    /// URL of the table's directory, ending with `/`.
    pub(crate) location: String,
    /// The Arrow schema, as datafusion-proto bytes in hex.
    pub(crate) arrow_schema: String,
    /// The manifest of a table written before managed tables were Delta tables; empty once
    /// it is converted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) files: Vec<ManagedFile>,
    /// Primary keys and unique constraints, by column index. Not enforced (as in DataFusion):
    /// they tell the planner which columns determine the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) constraints: Vec<TableConstraint>,
    /// `DEFAULT` expressions of columns, as datafusion-proto bytes in hex.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) defaults: Vec<ColumnDefault>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TableConstraint {
    PrimaryKey(Vec<usize>),
    Unique(Vec<usize>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ColumnDefault {
    pub(crate) column: String,
    pub(crate) expr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ManagedFile {
    /// Relative to the table's location.
    pub(crate) path: String,
    pub(crate) size: u64,
}

impl CatalogObject {
    pub(crate) fn key(&self) -> (&str, &str) {
        match self {
            CatalogObject::External(e) | CatalogObject::View(e) => (&e.schema, &e.name),
            CatalogObject::Table(t) => (&t.schema, &t.name),
        }
    }
}

impl ManagedEntry {
    pub(crate) fn new(schema: &str, name: &str, location: String, arrow: &Schema) -> Result<Self> {
        let proto: protobuf::Schema = arrow
            .try_into()
            .map_err(|e| Error::Unavailable(format!("cannot encode a table schema: {e}")))?;
        Ok(Self {
            schema: schema.to_string(),
            name: name.to_string(),
            location,
            arrow_schema: to_hex(&proto.encode_to_vec()),
            files: vec![],
            constraints: vec![],
            defaults: vec![],
        })
    }

    /// Keeps the constraints and column defaults of `CREATE TABLE`.
    pub(crate) fn with_constraints_and_defaults(
        mut self,
        constraints: &Constraints,
        defaults: &[(String, Expr)],
    ) -> Result<Self> {
        self.constraints = constraints
            .iter()
            .map(|c| match c {
                Constraint::PrimaryKey(columns) => TableConstraint::PrimaryKey(columns.clone()),
                Constraint::Unique(columns) => TableConstraint::Unique(columns.clone()),
            })
            .collect();
        self.defaults = defaults
            .iter()
            .map(|(column, expr)| {
                let node = serialize_expr(expr, &DefaultLogicalExtensionCodec {}).map_err(|e| {
                    Error::NotSupported(format!("cannot store the default of column {column}: {e}"))
                })?;
                Ok(ColumnDefault {
                    column: column.clone(),
                    expr: to_hex(&node.encode_to_vec()),
                })
            })
            .collect::<Result<_>>()?;
        Ok(self)
    }

    pub(crate) fn table_constraints(&self) -> Constraints {
        Constraints::new_unverified(
            self.constraints
                .iter()
                .map(|c| match c {
                    TableConstraint::PrimaryKey(columns) => Constraint::PrimaryKey(columns.clone()),
                    TableConstraint::Unique(columns) => Constraint::Unique(columns.clone()),
                })
                .collect(),
        )
    }

    /// The column defaults, with functions resolved in `functions`.
    pub(crate) fn column_defaults(&self, functions: &TaskContext) -> Result<HashMap<String, Expr>> {
        self.defaults
            .iter()
            .map(|d| {
                let corrupt = |e: &dyn std::fmt::Display| {
                    Error::Unavailable(format!(
                        "corrupt default of column {} of table {}.{}: {e}",
                        d.column, self.schema, self.name
                    ))
                };
                let bytes = from_hex(&d.expr).ok_or_else(|| corrupt(&"not hex"))?;
                let node =
                    protobuf::LogicalExprNode::decode(bytes.as_slice()).map_err(|e| corrupt(&e))?;
                let expr = parse_expr(&node, functions, &DefaultLogicalExtensionCodec {})
                    .map_err(|e| corrupt(&e))?;
                Ok((d.column.clone(), expr))
            })
            .collect()
    }

    /// This entry with the columns of `arrow`.
    pub(crate) fn with_arrow_schema(&self, arrow: &Schema) -> Result<Self> {
        let encoded = Self::new(&self.schema, &self.name, self.location.clone(), arrow)?;
        Ok(Self {
            arrow_schema: encoded.arrow_schema,
            ..self.clone()
        })
    }

    pub(crate) fn arrow_schema(&self) -> Result<SchemaRef> {
        let bytes = from_hex(&self.arrow_schema).ok_or_else(|| {
            Error::Unavailable(format!(
                "corrupt schema of table {}.{}",
                self.schema, self.name
            ))
        })?;
        let proto = protobuf::Schema::decode(bytes.as_slice()).map_err(|e| {
            Error::Unavailable(format!(
                "corrupt schema of table {}.{}: {e}",
                self.schema, self.name
            ))
        })?;
        let schema: Schema = (&proto).try_into().map_err(|e| {
            Error::Unavailable(format!(
                "corrupt schema of table {}.{}: {e}",
                self.schema, self.name
            ))
        })?;
        Ok(Arc::new(schema))
    }

    /// The local directory of the table, if it is on the local file system.
    pub(crate) fn local_dir(&self) -> Option<PathBuf> {
        let url = datafusion::datasource::listing::ListingTableUrl::parse(&self.location).ok()?;
        let url: &url::Url = url.as_ref();
        (url.scheme() == "file")
            .then(|| url.to_file_path().ok())
            .flatten()
    }
}

/// The catalog file and the lock that serialises changes to it.
pub(crate) struct CatalogStore {
    dir: PathBuf,
    /// Where managed tables are created: `<data_dir>/warehouse`.
    warehouse: PathBuf,
    state: Mutex<CatalogFile>,
    /// Roles and privileges, as of the last commit.
    access: Arc<AccessControl>,
    /// Comments, as of the last commit.
    comments: Arc<Comments>,
}

impl CatalogStore {
    /// Opens (or creates) the catalog under `data_dir`; `access` reads its roles and grants.
    pub(crate) fn open(data_dir: &Path, access: Arc<AccessControl>) -> Result<Self> {
        let dir = data_dir.join("catalog");
        std::fs::create_dir_all(&dir)?;
        let warehouse = data_dir.join("warehouse");
        std::fs::create_dir_all(&warehouse)?;
        let warehouse = std::fs::canonicalize(warehouse)?;
        let path = dir.join(CATALOG_FILE);
        // A temporary file left by a crash was never committed.
        let _ = std::fs::remove_file(dir.join(format!("{CATALOG_FILE}.tmp")));
        let file = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: CatalogFile = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Unavailable(format!("cannot read catalog {}: {e}", path.display()))
                })?;
                if file.version > FORMAT_VERSION {
                    return Err(Error::Unavailable(format!(
                        "catalog {} has format {} but this server reads up to {FORMAT_VERSION}",
                        path.display(),
                        file.version
                    )));
                }
                file
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CatalogFile {
                version: FORMAT_VERSION,
                ..Default::default()
            },
            Err(e) => return Err(e.into()),
        };
        access.publish(file.published());
        let comments = Arc::new(Comments::default());
        comments.publish(file.comments.clone());
        Ok(Self {
            dir,
            warehouse,
            state: Mutex::new(file),
            access,
            comments,
        })
    }

    /// Roles and privileges.
    pub(crate) fn access(&self) -> &Arc<AccessControl> {
        &self.access
    }

    /// Comments on tables, views and columns.
    pub(crate) fn comments(&self) -> &Arc<Comments> {
        &self.comments
    }

    pub(crate) fn warehouse(&self) -> &Path {
        &self.warehouse
    }

    /// Runs `change` on a copy of the catalog and commits the copy if it succeeds; then `apply`
    /// brings DataFusion's catalog in line. Both run under the store's lock, so concurrent
    /// changes reach DataFusion in the order they were committed.
    pub(crate) async fn update<R>(
        &self,
        change: impl FnOnce(&mut CatalogFile) -> Result<R>,
        apply: impl FnOnce(&R) -> Result<()>,
    ) -> Result<R> {
        let mut current = self.state.lock().await;
        let mut next = current.clone();
        let result = change(&mut next)?;
        self.persist(&next).await?;
        self.access.publish(next.published());
        self.comments.publish(next.comments.clone());
        *current = next;
        apply(&result)?;
        Ok(result)
    }

    /// A copy of the committed catalog.
    pub(crate) async fn snapshot(&self) -> CatalogFile {
        self.state.lock().await.clone()
    }

    async fn persist(&self, file: &CatalogFile) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(file)
            .map_err(|e| Error::Unavailable(format!("cannot encode catalog: {e}")))?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_atomically(&dir, CATALOG_FILE, &bytes))
            .await
            .map_err(|e| Error::Unavailable(format!("catalog write panicked: {e}")))??;
        Ok(())
    }

    /// Registers everything the catalog holds with DataFusion. Objects that cannot be restored
    /// (an external table whose files are gone, say) are reported and kept in the catalog.
    pub(crate) async fn restore(&self, state: &SessionState, catalog_name: &str) -> Result<()> {
        let file = self.snapshot().await;
        let ctx = SessionContext::new_with_state(state.clone());
        let catalog = ctx
            .catalog(catalog_name)
            .ok_or_else(|| Error::Unavailable("the default catalog is missing".into()))?;
        for schema in &file.schemas {
            catalog.register_schema(schema, Arc::new(MemorySchemaProvider::new()))?;
        }
        // Files of a manifest's table that the manifest does not list were never committed.
        self.remove_abandoned_files(&file);
        // Sessions' temporary tables end with the server.
        crate::temp::remove_leftovers(&self.warehouse);
        let mut restored = 0;
        let mut converted = vec![];
        for object in &file.objects {
            match restore_object(&ctx, catalog.as_ref(), object).await {
                Ok(was_converted) => {
                    restored += 1;
                    if was_converted {
                        converted.push(object.key());
                    }
                }
                Err(error) => {
                    let (schema, name) = object.key();
                    warn!(%schema, %name, %error, "cannot restore catalog object");
                }
            }
        }
        if !converted.is_empty() {
            // Their logs list the files now.
            self.update(
                |next| {
                    for object in &mut next.objects {
                        if let CatalogObject::Table(table) = object
                            && converted.contains(&(table.schema.as_str(), table.name.as_str()))
                        {
                            table.files.clear();
                        }
                    }
                    Ok(())
                },
                |_| Ok(()),
            )
            .await?;
        }
        info!(
            schemas = file.schemas.len(),
            objects = restored,
            converted = converted.len(),
            "catalog restored"
        );
        Ok(())
    }

    /// Deletes table directories in the warehouse no catalog entry refers to (tables whose
    /// creation never committed), staging directories of writes a crash cut short, and files
    /// of not yet converted tables that their manifest does not list. Files a Delta log no
    /// longer lists stay for time travel until `VACUUM`.
    fn remove_abandoned_files(&self, file: &CatalogFile) {
        let mut referenced = std::collections::HashSet::new();
        let mut table_dirs = std::collections::HashSet::new();
        let mut manifest_dirs = std::collections::HashSet::new();
        for object in &file.objects {
            if let CatalogObject::Table(table) = object
                && let Some(dir) = table.local_dir()
            {
                if !table.files.is_empty() && !dir.join(DELTA_LOG_DIR).exists() {
                    for f in &table.files {
                        referenced.insert(dir.join(&f.path));
                    }
                    manifest_dirs.insert(dir.clone());
                }
                table_dirs.insert(dir);
            }
        }
        let Ok(schemas) = std::fs::read_dir(&self.warehouse) else {
            return;
        };
        for schema_dir in schemas.flatten() {
            let Ok(tables) = std::fs::read_dir(schema_dir.path()) else {
                continue;
            };
            for table_dir in tables.flatten() {
                let path = table_dir.path();
                let known = table_dirs
                    .iter()
                    .any(|d| d.as_path() == path.as_path() || d.starts_with(&path));
                if !known {
                    info!(path = %path.display(), "removing table directory no catalog entry refers to");
                    let _ = std::fs::remove_dir_all(&path);
                    continue;
                }
                let staging = path.join(ember_planner::write::STAGING_DIR);
                if staging.exists() {
                    info!(path = %staging.display(), "removing the staging directory of an interrupted write");
                    let _ = std::fs::remove_dir_all(&staging);
                }
                if !manifest_dirs.contains(&path) {
                    continue;
                }
                for entry in walk_files(&path) {
                    if !referenced.contains(&entry) {
                        info!(path = %entry.display(), "removing uncommitted file");
                        let _ = std::fs::remove_file(&entry);
                    }
                }
            }
        }
    }
}

/// Registers `object` with DataFusion; says whether it was a table converted to Delta.
async fn restore_object(
    ctx: &SessionContext,
    catalog: &dyn CatalogProvider,
    object: &CatalogObject,
) -> Result<bool> {
    match object {
        CatalogObject::Table(entry) => {
            let schema = catalog.schema(&entry.schema).ok_or_else(|| {
                Error::Unavailable(format!(
                    "schema {} of table {} is missing",
                    entry.schema, entry.name
                ))
            })?;
            let (delta, converted) = open_or_convert(ctx, entry).await?;
            let delta = match delta {
                Some(table) => Some(complete_columns(table, entry.arrow_schema()?.as_ref()).await?),
                None => None,
            };
            let table = ManagedTable::try_new(
                entry.clone(),
                entry.arrow_schema()?,
                &ctx.task_ctx(),
                delta,
            )?;
            schema.register_table(entry.name.clone(), Arc::new(table))?;
            Ok(converted)
        }
        CatalogObject::External(entry) | CatalogObject::View(entry) => {
            let state = ctx.state_ref();
            state
                .write()
                .config_mut()
                .options_mut()
                .catalog
                .default_schema = entry.default_schema.clone();
            ctx.sql(&entry.sql).await?.collect().await?;
            if let Some(created_as) = &entry.created_as {
                // Renamed since: the statement registered it under its first name.
                let schema = catalog.schema(&entry.schema).ok_or_else(|| {
                    Error::Unavailable(format!("schema {} is missing", entry.schema))
                })?;
                let provider = schema
                    .deregister_table(created_as)?
                    .ok_or_else(|| Error::Unavailable(format!("{created_as} was not created")))?;
                schema.register_table(entry.name.clone(), provider)?;
            }
            Ok(false)
        }
    }
}

/// The log of a table whose `ALTER TABLE ... ADD COLUMN` the catalog recorded but a crash kept
/// from the log: it gets the columns the catalog has after its own.
async fn complete_columns(table: DeltaTable, schema: &Schema) -> Result<DeltaTable> {
    let logged = table
        .snapshot()
        .map_err(|e| Error::Unavailable(format!("cannot read a Delta log: {e}")))?
        .snapshot()
        .arrow_schema()
        .fields()
        .len();
    if logged >= schema.fields().len() {
        return Ok(table);
    }
    let missing: Vec<_> = schema.fields()[logged..]
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    warn!(
        columns = missing.len(),
        "completing an ADD COLUMN a crash cut short"
    );
    Ok(ember_delta::add_columns(table, &missing).await?)
}

/// The Delta table of a managed table; a table that has no log yet gets one whose first
/// version adds the files of its manifest (Delta's `CONVERT TO DELTA`, over the files the
/// manifest committed rather than whatever the directory holds). Says whether it converted.
async fn open_or_convert(
    ctx: &SessionContext,
    entry: &ManagedEntry,
) -> Result<(Option<DeltaTable>, bool)> {
    let schema = entry.arrow_schema()?;
    if schema.fields().is_empty() {
        // Delta has no tables without columns; such a table holds no rows.
        return Ok((None, false));
    }
    let url = ember_delta::table_url(&entry.location)?;
    if entry
        .local_dir()
        .is_some_and(|d| d.join(DELTA_LOG_DIR).exists())
    {
        return Ok((
            Some(ember_delta::open_table(&ctx.state(), &url).await?),
            false,
        ));
    }
    let store = ember_delta::table_store(&ctx.runtime_env(), &url)?;
    let files: Vec<WrittenFile> = entry
        .files
        .iter()
        .map(|f| WrittenFile {
            path: f.path.clone(),
            size: f.size,
        })
        .collect();
    let adds = ember_delta::add_actions(Arc::clone(&store), &url, &files, &schema).await?;
    let table = ember_delta::create_table(store, &url, &entry.name, &schema, vec![], adds).await?;
    info!(
        schema = %entry.schema,
        name = %entry.name,
        files = entry.files.len(),
        "managed table converted to a Delta table"
    );
    Ok((Some(table), true))
}

/// Every file below `dir`.
pub(crate) fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![];
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(path),
                Ok(_) => files.push(path),
                Err(_) => {}
            }
        }
    }
    files
}

/// Writes `name` in `dir` so that readers see the old or the new contents, never a mix: a
/// synced temporary file renamed over the old one, then the directory synced.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field};

    fn access() -> Arc<AccessControl> {
        Arc::new(AccessControl::new(&ember_config::EmberConfig::defaults().auth).unwrap())
    }

    #[tokio::test]
    async fn changes_survive_reopening_and_failed_changes_are_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = CatalogStore::open(dir.path(), access()).unwrap();
        let schema = Schema::new(vec![
            Field::new("a", DataType::Int32, false),
            Field::new("b", DataType::Utf8, true),
        ]);
        let entry = ManagedEntry::new("s", "t", "file:///x/".into(), &schema).unwrap();
        store
            .update(
                |f| {
                    f.schemas.push("s".into());
                    f.objects.push(CatalogObject::Table(entry));
                    Ok(())
                },
                |_| Ok(()),
            )
            .await
            .unwrap();
        let failed: Result<()> = store
            .update(
                |f| {
                    f.schemas.push("never".into());
                    Err(Error::NotSupported("no".into()))
                },
                |_| Ok(()),
            )
            .await;
        assert!(failed.is_err());
        drop(store);
        let store = CatalogStore::open(dir.path(), access()).unwrap();
        let file = store.snapshot().await;
        assert_eq!(file.schemas, vec!["s".to_string()]);
        let CatalogObject::Table(table) = &file.objects[0] else {
            panic!("expected a managed table");
        };
        assert_eq!(table.arrow_schema().unwrap().as_ref(), &schema);
        assert_eq!(
            from_hex(&to_hex(&[0, 1, 254, 255])),
            Some(vec![0, 1, 254, 255])
        );
    }
}
