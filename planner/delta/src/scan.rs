//! Reading a Delta table: the files of a snapshot, pruned by the statistics its log keeps,
//! planned as the same parquet scan (`DataSourceExec`) any file table gets, so the distributed
//! planner cuts and ships it like every other scan.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BooleanArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::stats::Precision;
use datafusion::common::{Column, DFSchema, ScalarValue, Statistics};
use datafusion::datasource::TableProvider;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::object_store::path::Path as StorePath;
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use deltalake_core::DeltaTable;
use deltalake_core::kernel::{LogDataHandler, LogicalFileView};
use ember_planner::float_stats::{FloatSafeFormat, is_float};
use url::Url;

use crate::library_error;

/// A Delta table as of one snapshot, read through Ember's parquet format.
#[derive(Debug)]
pub struct DeltaScanTable {
    table: DeltaTable,
    /// The table's columns in the order of its schema.
    schema: SchemaRef,
    /// Columns stored in the files, then partition columns: the order a file scan produces.
    file_schema: SchemaRef,
    partition_fields: Vec<FieldRef>,
}

impl DeltaScanTable {
    /// The table as `table`'s loaded snapshot has it.
    pub fn try_new(table: DeltaTable) -> Result<Self> {
        let snapshot = table.snapshot().map_err(library_error)?;
        let schema = snapshot.snapshot().arrow_schema();
        let partition_columns = snapshot.metadata().partition_columns().to_vec();
        let mut file_fields = vec![];
        let mut partition_fields = vec![];
        for field in schema.fields() {
            if partition_columns.contains(field.name()) {
                partition_fields.push(Arc::clone(field));
            } else {
                file_fields.push(Arc::clone(field));
            }
        }
        // Partition columns in the order the table declares them.
        partition_fields.sort_by_key(|f| partition_columns.iter().position(|c| c == f.name()));
        Ok(Self {
            table,
            schema,
            file_schema: Arc::new(Schema::new(file_fields)),
            partition_fields,
        })
    }

    /// Where in a file scan's output (file columns, then partition columns) each of the table's
    /// columns is.
    fn scan_index(&self, column: usize) -> usize {
        let name = self.schema.field(column).name();
        match self.file_schema.index_of(name) {
            Ok(i) => i,
            Err(_) => {
                self.file_schema.fields().len()
                    + self
                        .partition_fields
                        .iter()
                        .position(|f| f.name() == name)
                        .expect("every column is a file or a partition column")
            }
        }
    }

    /// The snapshot's files that `filters` may match, with their partition values.
    fn files(&self, state: &dyn Session, filters: &[Expr]) -> Result<Vec<PartitionedFile>> {
        let snapshot = self.table.snapshot().map_err(library_error)?;
        let log_data = snapshot.log_data();
        let keep = match conjunction(filters.iter().cloned()) {
            Some(predicate) => {
                let df_schema = DFSchema::try_from(Arc::clone(&self.schema))?;
                let physical = state.create_physical_expr(predicate, &df_schema)?;
                // A predicate statistics cannot judge keeps every file.
                match PruningPredicateBuilder::new()
                    .with_file_schema(Arc::clone(&self.schema))
                    .build(physical)
                {
                    Some(pruning) => Some(pruning.prune(&FloatSafeStatistics {
                        inner: &log_data,
                        schema: &self.schema,
                    })?),
                    None => None,
                }
            }
            None => None,
        };
        log_data
            .iter()
            .enumerate()
            .filter(|(i, _)| keep.as_ref().is_none_or(|k| k[*i]))
            .map(|(_, file)| self.partitioned_file(&file))
            .collect()
    }

    fn partitioned_file(&self, file: &LogicalFileView) -> Result<PartitionedFile> {
        let values = file.partition_values_map();
        let partition_values = self
            .partition_fields
            .iter()
            .map(|field| partition_value(field.data_type(), values.get(field.name())))
            .collect::<Result<Vec<_>>>()?;
        let path = file.path();
        // Paths in the log are relative to the table, or (shallow clones) absolute URLs.
        let table_url = self.table.table_url();
        let location = match Url::parse(&path) {
            // Read through the table's store: a file of another is refused, not looked up there.
            Ok(url)
                if url.scheme() != table_url.scheme()
                    || url.authority() != table_url.authority() =>
            {
                return Err(DataFusionError::Plan(format!(
                    "file {path} of the Delta table at {table_url} is not in the table's storage"
                )));
            }
            Ok(url) => StorePath::from_url_path(url.path()).map_err(library_error)?,
            Err(_) => {
                let root = StorePath::from_url_path(table_url.path()).map_err(library_error)?;
                root.parts()
                    .chain(file.object_store_path().parts())
                    .collect()
            }
        };
        Ok(
            PartitionedFile::new(location.to_string(), file.size().max(0) as u64)
                .with_partition_values(partition_values),
        )
    }

    /// The table's rows by the log's statistics (inexact: files without them count nothing).
    fn statistics(&self) -> Statistics {
        let rows = self
            .table
            .snapshot()
            .ok()
            .map(|s| {
                s.log_data()
                    .iter()
                    .filter_map(|f| f.num_records())
                    .sum::<usize>()
            })
            .unwrap_or(0);
        Statistics::new_unknown(&self.schema).with_num_rows(Precision::Inexact(rows))
    }
}

/// The log's statistics, without the min/max of float columns: like parquet's, they may leave
/// NaN out, and a bound without NaN would prune files a comparison matches.
struct FloatSafeStatistics<'a> {
    inner: &'a LogDataHandler<'a>,
    schema: &'a Schema,
}

impl FloatSafeStatistics<'_> {
    fn bounded(&self, column: &Column) -> bool {
        self.schema
            .field_with_name(&column.name)
            .is_ok_and(|f| !is_float(f.data_type()))
    }
}

impl PruningStatistics for FloatSafeStatistics<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bounded(column)
            .then(|| self.inner.min_values(column))
            .flatten()
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bounded(column)
            .then(|| self.inner.max_values(column))
            .flatten()
    }

    fn num_containers(&self) -> usize {
        self.inner.num_containers()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        self.inner.null_counts(column)
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        self.inner.row_counts()
    }

    fn contained(&self, column: &Column, values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        self.inner.contained(column, values)
    }
}

/// A partition value as the log writes it (a string, or null), as the column's type.
fn partition_value(data_type: &DataType, value: Option<&Option<String>>) -> Result<ScalarValue> {
    match value.and_then(|v| v.as_deref()) {
        None => ScalarValue::try_from(data_type),
        Some(text) => ScalarValue::Utf8(Some(text.to_string())).cast_to(data_type),
    }
}

/// The object store URL (scheme and authority) a table's files are read through.
pub fn object_store_url(table: &Url) -> Result<ObjectStoreUrl> {
    ObjectStoreUrl::parse(format!("{}://{}", table.scheme(), table.authority()))
}

#[async_trait]
impl TableProvider for DeltaScanTable {
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
        // Files are pruned by statistics; rows are filtered above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    fn statistics(&self) -> Option<Statistics> {
        Some(self.statistics())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let files = self.files(state, filters)?;
        if files.is_empty() {
            return Ok(Arc::new(EmptyExec::new(Arc::new(
                self.schema.project(&projection)?,
            ))));
        }
        let groups = FileGroup::new(files).split_files(state.config().target_partitions());
        let format = FloatSafeFormat::parquet(state);
        let table_schema = TableSchema::builder(Arc::clone(&self.file_schema))
            .with_table_partition_cols(
                self.partition_fields
                    .iter()
                    .map(|f| {
                        Arc::new(Field::new(f.name(), f.data_type().clone(), true)) as FieldRef
                    })
                    .collect::<Vec<_>>(),
            )
            .build();
        let source = format.file_source(table_schema);
        let url = object_store_url(self.table.table_url())?;
        let config = FileScanConfigBuilder::new(url, source)
            .with_file_groups(groups)
            .with_statistics(self.statistics())
            .with_projection_indices(Some(
                projection.iter().map(|c| self.scan_index(*c)).collect(),
            ))?
            .with_limit(limit)
            .build();
        format.create_physical_plan(state, config).await
    }
}
