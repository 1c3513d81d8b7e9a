//! Managed tables: parquet files under the data dir whose list (the manifest) lives in the
//! catalog. A scan reads exactly the files of the manifest it was planned with, so a write
//! becomes visible all at once when the catalog commits the new manifest.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::Constraints;
use datafusion::datasource::TableProvider;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use ember_planner::float_stats::FloatSafeFormat;

use super::ManagedEntry;

/// A managed table as of one committed manifest.
#[derive(Debug)]
pub(crate) struct ManagedTable {
    entry: ManagedEntry,
    schema: SchemaRef,
    constraints: Constraints,
    defaults: HashMap<String, Expr>,
}

impl ManagedTable {
    /// The table of `entry`; functions in column defaults resolve in `functions`.
    pub(crate) fn try_new(
        entry: ManagedEntry,
        schema: SchemaRef,
        functions: &TaskContext,
    ) -> crate::error::Result<Self> {
        Ok(Self {
            constraints: entry.table_constraints(),
            defaults: entry.column_defaults(functions)?,
            entry,
            schema,
        })
    }

    fn options(state: &dyn Session) -> Result<ListingOptions> {
        Ok(
            ListingOptions::new(Arc::new(FloatSafeFormat::parquet(state)))
                .with_file_extension(".parquet"),
        )
    }

    /// A listing table over exactly the manifest's files.
    fn files_table(&self, state: &dyn Session) -> Result<Option<ListingTable>> {
        if self.entry.files.is_empty() {
            return Ok(None);
        }
        let urls = self
            .entry
            .files
            .iter()
            .map(|f| ListingTableUrl::parse(format!("{}{}", self.entry.location, f.path)))
            .collect::<Result<Vec<_>>>()?;
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(Self::options(state)?)
            .with_schema(Arc::clone(&self.schema));
        Ok(Some(ListingTable::try_new(config)?))
    }

    /// A listing table over the table's directory, which DataFusion plans writes into.
    fn directory_table(&self, state: &dyn Session) -> Result<ListingTable> {
        let config = ListingTableConfig::new(ListingTableUrl::parse(&self.entry.location)?)
            .with_listing_options(Self::options(state)?)
            .with_schema(Arc::clone(&self.schema));
        ListingTable::try_new(config)
    }
}

#[async_trait]
impl TableProvider for ManagedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
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
        // Parquet pruning uses the filters; the plan keeps them above the scan as well.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match self.files_table(state)? {
            Some(table) => table.scan(state, projection, filters, limit).await,
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
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // The engine turns the planned sink into a distributed write and commits the files it
        // produced into this table's manifest.
        self.directory_table(state)?
            .insert_into(state, input, insert_op)
            .await
    }
}
