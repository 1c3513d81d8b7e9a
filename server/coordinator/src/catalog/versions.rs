//! The server's catalog as DataFusion resolves names in it: besides the tables it holds, a
//! Delta table's earlier versions, named as Delta on Spark names them (`t@v3`,
//! `t@20261207100000000`; the statement parser turns `t VERSION AS OF 3` and
//! `t TIMESTAMP AS OF '...'` into these names).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, MemorySchemaProvider, SchemaProvider};
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};
use ember_delta::{ExternalDeltaTable, SnapshotCache, TimeTravel};

use super::ManagedTable;

/// A catalog whose schemas of tables resolve versioned table names.
#[derive(Debug)]
pub(crate) struct VersionedCatalog {
    inner: Arc<dyn CatalogProvider>,
    /// Earlier versions read recently.
    snapshots: SnapshotCache,
}

impl VersionedCatalog {
    /// `inner`, its schemas of tables (DataFusion's in-memory schemas, which hold the
    /// catalog's tables) resolving versioned names; other schemas (system tables, client
    /// catalogs) stay as they are.
    /// Versions read are kept in `snapshots`.
    pub(crate) fn new(inner: Arc<dyn CatalogProvider>, snapshots: SnapshotCache) -> Result<Self> {
        for name in inner.schema_names() {
            if let Some(schema) = inner.schema(&name)
                && schema.downcast_ref::<MemorySchemaProvider>().is_some()
            {
                inner.register_schema(
                    &name,
                    Arc::new(VersionedSchema {
                        inner: schema,
                        snapshots: snapshots.clone(),
                    }),
                )?;
            }
        }
        Ok(Self { inner, snapshots })
    }
}

impl CatalogProvider for VersionedCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.inner.schema_names()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.inner.schema(name)
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        let schema: Arc<dyn SchemaProvider> = match schema.downcast_ref::<MemorySchemaProvider>() {
            Some(_) => Arc::new(VersionedSchema {
                inner: schema,
                snapshots: self.snapshots.clone(),
            }),
            None => schema,
        };
        self.inner.register_schema(name, schema)
    }

    fn deregister_schema(
        &self,
        name: &str,
        cascade: bool,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        self.inner.deregister_schema(name, cascade)
    }
}

/// A schema that also resolves the versions of its Delta tables.
#[derive(Debug)]
struct VersionedSchema {
    inner: Arc<dyn SchemaProvider>,
    snapshots: SnapshotCache,
}

#[async_trait]
impl SchemaProvider for VersionedSchema {
    fn owner_name(&self) -> Option<&str> {
        self.inner.owner_name()
    }

    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(table) = self.inner.table(name).await? {
            return Ok(Some(table));
        }
        let Some((base, at)) = TimeTravel::split(name) else {
            return Ok(None);
        };
        let Some(table) = self.inner.table(base).await? else {
            return Ok(None);
        };
        let versioned = if let Some(managed) = table.downcast_ref::<ManagedTable>() {
            managed.at(at, &self.snapshots).await?
        } else if let Some(external) = table.downcast_ref::<ExternalDeltaTable>() {
            external.at(at, &self.snapshots).await?
        } else {
            return Err(DataFusionError::Plan(format!(
                "table {base} is not a Delta table: it has no {at}"
            )));
        };
        Ok(Some(Arc::new(versioned)))
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        self.inner.register_table(name, table)
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        self.inner.deregister_table(name)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
            || TimeTravel::split(name).is_some_and(|(base, _)| self.inner.table_exist(base))
    }
}
