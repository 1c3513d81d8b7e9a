//! The `system` schema: Spark UI's tabs as SQL tables, read live from the scheduler.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::scheduler::snapshot as schemas;
use crate::scheduler::{SchedulerHandle, Snapshot};

/// The schema's name.
pub(crate) const SYSTEM_SCHEMA: &str = "system";

#[derive(Debug, Clone, Copy)]
enum SystemTable {
    Executors,
    Queries,
    Stages,
    Tasks,
}

impl SystemTable {
    const ALL: [(&'static str, SystemTable); 4] = [
        ("executors", SystemTable::Executors),
        ("queries", SystemTable::Queries),
        ("stages", SystemTable::Stages),
        ("tasks", SystemTable::Tasks),
    ];

    fn schema(self) -> SchemaRef {
        match self {
            SystemTable::Executors => schemas::executors_schema(),
            SystemTable::Queries => schemas::queries_schema(),
            SystemTable::Stages => schemas::stages_schema(),
            SystemTable::Tasks => schemas::tasks_schema(),
        }
    }

    fn rows(self, snapshot: Snapshot) -> datafusion::arrow::array::RecordBatch {
        match self {
            SystemTable::Executors => snapshot.executors,
            SystemTable::Queries => snapshot.queries,
            SystemTable::Stages => snapshot.stages,
            SystemTable::Tasks => snapshot.tasks,
        }
    }
}

/// Lists the system tables.
#[derive(Debug)]
pub(crate) struct SystemSchema {
    scheduler: SchedulerHandle,
}

impl SystemSchema {
    pub(crate) fn new(scheduler: SchedulerHandle) -> Self {
        Self { scheduler }
    }
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        SystemTable::ALL
            .iter()
            .map(|(n, _)| n.to_string())
            .collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(SystemTable::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, table)| {
                Arc::new(SystemTableProvider {
                    table: *table,
                    scheduler: self.scheduler.clone(),
                }) as Arc<dyn TableProvider>
            }))
    }

    fn table_exist(&self, name: &str) -> bool {
        SystemTable::ALL.iter().any(|(n, _)| *n == name)
    }
}

#[derive(Debug)]
struct SystemTableProvider {
    table: SystemTable,
    scheduler: SchedulerHandle,
}

#[async_trait]
impl TableProvider for SystemTableProvider {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let snapshot = self
            .scheduler
            .snapshot()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let rows = self.table.rows(snapshot);
        let table = MemTable::try_new(self.schema(), vec![vec![rows]])?;
        table.scan(state, projection, filters, limit).await
    }
}
