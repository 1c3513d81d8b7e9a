//! The Delta table a statement changes or reads the log of: a managed table (created here; its
//! commits go through it, one of this server at a time, and `VACUUM` waits for its writers) or
//! an external Delta table (at a location other engines write too; read afresh, and judged
//! against their commits by Delta's conflict rules alone).

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::TableProvider;
use datafusion::logical_expr::Expr;
use ember_delta::deltalake_core::DeltaTable;
use ember_delta::deltalake_core::kernel::Action;
use ember_delta::{CommitError, DeltaScanTable, ExternalDeltaTable, Operation};

use crate::catalog::ManagedTable;
use crate::error::Result;

/// A Delta table, managed or external.
#[derive(Clone, Copy)]
pub(crate) enum DeltaTarget<'a> {
    /// A table created here.
    Managed(&'a ManagedTable),
    /// A table at a location others may write too.
    External(&'a ExternalDeltaTable),
}

impl<'a> DeltaTarget<'a> {
    /// The Delta table `provider` is, if it is one.
    pub(crate) fn of(provider: &'a Arc<dyn TableProvider>) -> Option<Self> {
        if let Some(managed) = provider.downcast_ref::<ManagedTable>() {
            Some(Self::Managed(managed))
        } else {
            provider
                .downcast_ref::<ExternalDeltaTable>()
                .map(Self::External)
        }
    }

    /// The table's columns, with the types statements read and write.
    pub(crate) fn schema(&self) -> SchemaRef {
        match self {
            Self::Managed(managed) => managed.schema(),
            Self::External(external) => external.schema(),
        }
    }

    /// A column's default (managed tables keep them; Delta's log has none Ember reads).
    pub(crate) fn column_default(&self, column: &str) -> Option<&Expr> {
        match self {
            Self::Managed(managed) => managed.get_column_default(column),
            Self::External(_) => None,
        }
    }

    /// The newest version: for a managed table, the one this server committed or loaded; for
    /// an external one, what the log says now.
    pub(crate) async fn latest(&self) -> Result<DeltaScanTable> {
        Ok(match self {
            Self::Managed(managed) => managed.snapshot()?,
            Self::External(external) => external.latest().await?,
        })
    }

    /// The newest version as the Delta library's table.
    pub(crate) async fn table(&self) -> Result<DeltaTable> {
        Ok(self.latest().await?.table().clone())
    }

    /// Held while a statement writes files into the table until it commits them (`VACUUM` of
    /// a managed table waits for it; other engines' writers of an external table are beyond
    /// reach, as they are for Spark).
    pub(crate) async fn writing(&self) -> Option<tokio::sync::OwnedRwLockReadGuard<()>> {
        match self {
            Self::Managed(managed) => Some(managed.writing().await),
            Self::External(_) => None,
        }
    }

    /// Commits `actions` as `operation` to the version `read`, the statement read.
    pub(crate) async fn commit(
        &self,
        read: &DeltaScanTable,
        actions: Vec<Action>,
        operation: Operation,
    ) -> std::result::Result<(), CommitError> {
        match self {
            Self::Managed(managed) => managed.commit(read, actions, operation).await,
            Self::External(external) => external.commit(read, actions, operation).await,
        }
    }
}
