//! Reading a Delta table: the files of a snapshot, pruned by the statistics its log keeps,
//! planned as the same parquet scan (`DataSourceExec`) any file table gets, so the distributed
//! planner cuts and ships it like every other scan.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::array::{ArrayRef, BooleanArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::stats::Precision;
use datafusion::common::{Column, ColumnStatistics, DFSchema, ScalarValue, Statistics};
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
use deltalake_core::kernel::{Action, LogDataHandler, LogicalFileView};
use ember_planner::float_stats::{FloatSafeFormat, is_float};
use url::Url;

use crate::commit::has_delta_type;
use crate::library_error;

/// A Delta table as of one snapshot, read through Ember's parquet format.
#[derive(Debug, Clone)]
pub struct DeltaScanTable {
    table: DeltaTable,
    /// The table's columns in the order of its schema (and the file column, if asked for).
    schema: SchemaRef,
    /// Columns stored in the files, then partition columns: the order a file scan produces.
    file_schema: SchemaRef,
    partition_fields: Vec<FieldRef>,
    /// Only these files (paths as [`LogicalFileView::path`] gives them) are read.
    only: Option<Arc<HashSet<String>>>,
    /// Each of these groups of files is read by one partition of the scan, in this order
    /// (compaction: each task writes one group's rows into one file).
    groups: Option<Arc<Vec<Vec<String>>>>,
    /// A last column holding each row's file path.
    file_column: Option<FieldRef>,
}

/// A file's partition values, by column, sorted.
type PartitionValues = Vec<(String, String)>;

/// A file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// As [`LogicalFileView::path`] gives it: relative to the table, decoded.
    pub path: String,
    /// Its rows, if its statistics say.
    pub rows: Option<u64>,
}

impl DeltaScanTable {
    /// The table as `table`'s loaded snapshot has it.
    pub fn try_new(table: DeltaTable) -> Result<Self> {
        let schema = table
            .snapshot()
            .map_err(library_error)?
            .snapshot()
            .arrow_schema();
        Self::with_schema(table, schema)
    }

    /// The table with the columns of `schema`, which must name the snapshot's columns: for
    /// a table whose Arrow types Ember keeps (the log knows Delta's types only).
    pub fn with_schema(table: DeltaTable, schema: SchemaRef) -> Result<Self> {
        let snapshot = table.snapshot().map_err(library_error)?;
        let logged = snapshot.snapshot().arrow_schema();
        let names = |s: &Schema| {
            s.fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
        };
        if names(&logged) != names(&schema) {
            return Err(DataFusionError::Plan(format!(
                "the Delta table at {} has the columns ({}), not ({})",
                table.table_url(),
                names(&logged).join(", "),
                names(&schema).join(", ")
            )));
        }
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
            only: None,
            groups: None,
            file_column: None,
        })
    }

    /// The columns stored in the files (the table's columns but its partition columns).
    pub fn file_schema(&self) -> SchemaRef {
        Arc::clone(&self.file_schema)
    }

    /// The partition columns, in the order the table declares them.
    pub fn partition_fields(&self) -> &[FieldRef] {
        &self.partition_fields
    }

    /// The snapshot this table reads.
    pub fn table(&self) -> &DeltaTable {
        &self.table
    }

    /// The same table, reading only the files of `groups`, each group in one partition.
    pub fn grouped(mut self, groups: Vec<Vec<String>>) -> Self {
        self.only = Some(Arc::new(groups.iter().flatten().cloned().collect()));
        self.groups = Some(Arc::new(groups));
        self
    }

    /// Groups of the files `filters` may match that compaction would merge: within each
    /// partition, files smaller than `target_size` bytes, packed smallest first into groups
    /// of at most `target_size` bytes; only groups of two or more files.
    pub fn compaction_groups(
        &self,
        state: &dyn Session,
        filters: &[Expr],
        target_size: u64,
    ) -> Result<Vec<Vec<String>>> {
        let mut partitions: std::collections::BTreeMap<PartitionValues, Vec<(u64, String)>> =
            Default::default();
        for file in self.selected(state, filters)? {
            let size = file.size().max(0) as u64;
            if size >= target_size {
                continue;
            }
            let mut values: Vec<(String, String)> = file
                .partition_values_map()
                .into_iter()
                .map(|(k, v)| (k, v.unwrap_or_default()))
                .collect();
            values.sort();
            partitions
                .entry(values)
                .or_default()
                .push((size, file.path().into_owned()));
        }
        let mut groups = vec![];
        for mut files in partitions.into_values() {
            files.sort();
            let mut group: Vec<String> = vec![];
            let mut bytes = 0;
            for (size, path) in files {
                if !group.is_empty() && bytes + size > target_size {
                    groups.push(std::mem::take(&mut group));
                    bytes = 0;
                }
                bytes += size;
                group.push(path);
            }
            groups.push(group);
        }
        groups.retain(|group| group.len() > 1);
        Ok(groups)
    }

    /// The same table, reading only `files`.
    pub fn restricted_to(mut self, files: HashSet<String>) -> Self {
        self.only = Some(Arc::new(files));
        self
    }

    /// The same table with a last column `name` holding the path of each row's file.
    pub fn with_file_column(mut self, name: &str) -> Self {
        let field: FieldRef = Arc::new(Field::new(name, DataType::Utf8, false));
        let mut fields = self.schema.fields().to_vec();
        fields.push(Arc::clone(&field));
        self.schema = Arc::new(Schema::new_with_metadata(
            fields,
            self.schema.metadata().clone(),
        ));
        self.file_column = Some(field);
        self
    }

    /// A plan writing `input`'s rows (the table's columns, by name) as new files into the
    /// table's directory, partitioned as the table is; the files are the caller's to commit.
    pub async fn write_files(
        &self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let partition_columns: Vec<String> = self
            .partition_fields
            .iter()
            .map(|f| f.name().clone())
            .collect();
        crate::write::write_files(
            state,
            self.table.table_url().as_str(),
            &self.table_schema(),
            &partition_columns,
            input,
        )
        .await
    }

    /// The snapshot's files that `filters` may match, by partition values and statistics.
    pub fn matching_files(
        &self,
        state: &dyn Session,
        filters: &[Expr],
    ) -> Result<Vec<SnapshotFile>> {
        Ok(self
            .selected(state, filters)?
            .into_iter()
            .map(|file| SnapshotFile {
                path: file.path().into_owned(),
                rows: file.num_records().map(|n| n as u64),
            })
            .collect())
    }

    /// The `remove` actions of every file of the snapshot (an overwrite).
    pub fn remove_all(&self) -> Result<Vec<Action>> {
        let snapshot = self.table.snapshot().map_err(library_error)?;
        Ok(snapshot
            .log_data()
            .iter()
            .map(|file| Action::Remove(file.remove_action(true)))
            .collect())
    }

    /// The `remove` actions of the snapshot's files among `paths`; `data_change` false for
    /// a rearrangement of the same rows (compaction).
    pub fn remove_actions(
        &self,
        paths: &HashSet<String>,
        data_change: bool,
    ) -> Result<Vec<Action>> {
        let snapshot = self.table.snapshot().map_err(library_error)?;
        Ok(snapshot
            .log_data()
            .iter()
            .filter(|file| paths.contains(file.path().as_ref()))
            .map(|file| Action::Remove(file.remove_action(data_change)))
            .collect())
    }

    /// Where in a file scan's output (file columns, then partition columns) each of the table's
    /// columns is.
    fn scan_index(&self, column: usize) -> usize {
        if self.file_column.is_some() && column == self.schema.fields().len() - 1 {
            return self.file_schema.fields().len() + self.partition_fields.len();
        }
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
        self.selected(state, filters)?
            .iter()
            .map(|file| self.partitioned_file(file))
            .collect()
    }

    /// The scan's partitions when the table reads given groups of files.
    fn file_groups(&self, state: &dyn Session, groups: &[Vec<String>]) -> Result<Vec<FileGroup>> {
        let mut by_path = std::collections::HashMap::new();
        for file in self.selected(state, &[])? {
            by_path.insert(file.path().into_owned(), self.partitioned_file(&file)?);
        }
        Ok(groups
            .iter()
            .map(|group| {
                group
                    .iter()
                    .filter_map(|path| by_path.remove(path))
                    .collect::<Vec<_>>()
            })
            .filter(|group| !group.is_empty())
            .map(FileGroup::new)
            .collect())
    }

    /// The snapshot's files to read for `filters`.
    fn selected(&self, state: &dyn Session, filters: &[Expr]) -> Result<Vec<LogicalFileView>> {
        let snapshot = self.table.snapshot().map_err(library_error)?;
        let log_data = snapshot.log_data();
        // The file column says nothing statistics know.
        let file_column = self.file_column.as_ref().map(|f| f.name().as_str());
        let filters = filters
            .iter()
            .filter(|f| {
                file_column.is_none_or(|name| !f.column_refs().iter().any(|c| c.name == name))
            })
            .cloned();
        let table_schema = self.table_schema();
        let keep = match conjunction(filters) {
            Some(predicate) => {
                let df_schema = DFSchema::try_from(Arc::clone(&table_schema))?;
                let physical = state.create_physical_expr(predicate, &df_schema)?;
                // A predicate statistics cannot judge keeps every file.
                match PruningPredicateBuilder::new()
                    .with_file_schema(Arc::clone(&table_schema))
                    .build(physical)
                {
                    Some(pruning) => Some(pruning.prune(&FloatSafeStatistics {
                        inner: &log_data,
                        schema: &table_schema,
                    })?),
                    None => None,
                }
            }
            None => None,
        };
        Ok(log_data
            .iter()
            .enumerate()
            .filter(|(i, _)| keep.as_ref().is_none_or(|k| k[*i]))
            .map(|(_, file)| file)
            .filter(|file| {
                self.only
                    .as_ref()
                    .is_none_or(|only| only.contains(file.path().as_ref()))
            })
            .collect())
    }

    /// The table's own columns (without the file column).
    fn table_schema(&self) -> SchemaRef {
        match &self.file_column {
            None => Arc::clone(&self.schema),
            Some(_) => {
                let n = self.schema.fields().len() - 1;
                Arc::new(Schema::new_with_metadata(
                    self.schema.fields()[..n].to_vec(),
                    self.schema.metadata().clone(),
                ))
            }
        }
    }

    fn partitioned_file(&self, file: &LogicalFileView) -> Result<PartitionedFile> {
        let values = file.partition_values_map();
        let partition_values = self
            .partition_fields
            .iter()
            .map(|field| partition_value(field.data_type(), values.get(field.name())))
            .chain(
                self.file_column
                    .iter()
                    .map(|_| Ok(ScalarValue::Utf8(Some(file.path().into_owned())))),
            )
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
        // The location as it is: parsed again from text, its `%` would be encoded once more.
        let meta = datafusion::object_store::ObjectMeta {
            location,
            last_modified: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
            size: file.size().max(0) as u64,
            e_tag: None,
            version: None,
        };
        Ok(PartitionedFile::new_from_meta(meta).with_partition_values(partition_values))
    }

    /// The table's statistics by its log: rows (exact when every file counts its rows), bytes
    /// on disk, and each column's null count and bounds (inexact: the log's bounds may be
    /// truncated or rounded outwards).
    fn table_statistics(&self) -> Statistics {
        let Ok(snapshot) = self.table.snapshot() else {
            return Statistics::new_unknown(&self.schema);
        };
        let log_data = snapshot.log_data();
        let (mut rows, mut bytes, mut counted) = (0usize, 0usize, true);
        for file in log_data.iter() {
            bytes += file.size().max(0) as usize;
            match file.num_records() {
                Some(n) => rows += n,
                None => counted = false,
            }
        }
        // A restricted table reads fewer files than the log's totals describe.
        let exact = counted && self.only.is_none();
        let stats = FloatSafeStatistics {
            inner: &log_data,
            schema: &self.schema,
        };
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|field| {
                let column = Column::new_unqualified(field.name());
                let mut statistics = ColumnStatistics::new_unknown();
                if self.file_column.as_ref().is_some_and(|f| f == field) {
                    return statistics;
                }
                if let Some(nulls) = stats.null_counts(&column).and_then(|a| total(&a)) {
                    statistics.null_count = if exact {
                        Precision::Exact(nulls)
                    } else {
                        Precision::Inexact(nulls)
                    };
                }
                let wanted = field.data_type();
                let bound = |values: Option<ArrayRef>, least: bool| {
                    values
                        .and_then(|v| extreme(&v, least))
                        .and_then(|v| v.cast_to(wanted).ok())
                        .map_or(Precision::Absent, Precision::Inexact)
                };
                statistics.min_value = bound(stats.min_values(&column), true);
                statistics.max_value = bound(stats.max_values(&column), false);
                statistics
            })
            .collect();
        Statistics {
            num_rows: if exact {
                Precision::Exact(rows)
            } else {
                Precision::Inexact(rows)
            },
            total_byte_size: Precision::Inexact(bytes),
            column_statistics: columns,
        }
    }
}

/// The sum of a column of per-file counts, if every file has one.
fn total(counts: &ArrayRef) -> Option<usize> {
    if counts.null_count() > 0 {
        return None;
    }
    let counts = datafusion::arrow::compute::cast(counts, &DataType::UInt64).ok()?;
    let counts = counts.as_primitive::<datafusion::arrow::datatypes::UInt64Type>();
    Some(counts.values().iter().map(|n| *n as usize).sum())
}

/// The least (or greatest) of per-file bounds, if every file has one.
fn extreme(values: &ArrayRef, least: bool) -> Option<ScalarValue> {
    if values.is_empty() || values.null_count() > 0 {
        return None;
    }
    let mut best = ScalarValue::try_from_array(values, 0).ok()?;
    for i in 1..values.len() {
        let value = ScalarValue::try_from_array(values, i).ok()?;
        let better = match value.partial_cmp(&best)? {
            std::cmp::Ordering::Less => least,
            std::cmp::Ordering::Greater => !least,
            std::cmp::Ordering::Equal => false,
        };
        if better {
            best = value;
        }
    }
    Some(best)
}

/// The log's statistics, without the min/max of float columns: like parquet's, they may leave
/// NaN out, and a bound without NaN would prune files a comparison matches.
struct FloatSafeStatistics<'a> {
    inner: &'a LogDataHandler<'a>,
    schema: &'a Schema,
}

impl FloatSafeStatistics<'_> {
    fn bounded(&self, column: &Column) -> bool {
        self.schema.field_with_name(&column.name).is_ok_and(|f| {
            !is_float(f.data_type()) && !f.data_type().is_nested() && has_delta_type(f)
        })
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
        self.schema
            .field_with_name(&column.name)
            .is_ok_and(|f| !f.data_type().is_nested())
            .then(|| self.inner.null_counts(column))
            .flatten()
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        self.inner.row_counts()
    }

    fn contained(&self, column: &Column, values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        self.inner.contained(column, values)
    }
}

/// A partition value as the log writes it (a string, or null), as the column's type: an empty
/// string is a null, as Delta's partition value serialization has it.
fn partition_value(data_type: &DataType, value: Option<&Option<String>>) -> Result<ScalarValue> {
    match value.and_then(|v| v.as_deref()) {
        None | Some("") => ScalarValue::try_from(data_type),
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
        Some(self.table_statistics())
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
        let mut statistics = self.table_statistics();
        if files.len()
            < self
                .table
                .snapshot()
                .map_err(library_error)?
                .log_data()
                .num_files()
        {
            // Pruned: the log's totals bound what the scan reads.
            statistics = statistics.to_inexact();
        }
        if files.is_empty() {
            return Ok(Arc::new(EmptyExec::new(Arc::new(
                self.schema.project(&projection)?,
            ))));
        }
        let groups = match &self.groups {
            None => FileGroup::new(files).split_files(state.config().target_partitions()),
            Some(groups) => self.file_groups(state, groups)?,
        };
        let format = FloatSafeFormat::parquet(state);
        let table_schema = TableSchema::builder(Arc::clone(&self.file_schema))
            .with_table_partition_cols(
                self.partition_fields
                    .iter()
                    .cloned()
                    .chain(self.file_column.iter().cloned())
                    .collect::<Vec<_>>(),
            )
            .build();
        let source = format.file_source(table_schema);
        let url = object_store_url(self.table.table_url())?;
        let config = FileScanConfigBuilder::new(url, source)
            .with_file_groups(groups)
            .with_statistics(statistics)
            .with_projection_indices(Some(
                projection.iter().map(|c| self.scan_index(*c)).collect(),
            ))?
            .with_limit(limit)
            .build();
        format.create_physical_plan(state, config).await
    }
}
