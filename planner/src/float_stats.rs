//! Parquet as DataFusion reads it, except that float columns never claim exact bounds.
//!
//! Parquet leaves NaN out of float min/max statistics, as its specification requires. DataFusion
//! takes exact statistics at their word: a file whose float column has min == max is read as a
//! constant column (the scan substitutes the value for every row, so `1.1, NaN` reads back as
//! `1.1, 1.1`), and `max(x)` is answered from the footer without reading the column. Every Ember
//! table is parquet, so a float column holding NaN would silently change. The format here marks
//! float bounds as inexact; pruning still uses them, answers no longer trust them.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::stats::Precision;
use datafusion::common::{GetExt, Statistics};
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::parquet::{ParquetFormat, ParquetFormatFactory};
use datafusion::datasource::file_format::{FileFormat, FileFormatFactory};
use datafusion::datasource::physical_plan::{FileScanConfig, FileSinkConfig, FileSource};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result;
use datafusion::physical_expr::LexRequirement;
use datafusion::physical_plan::ExecutionPlan;
use object_store::{ObjectMeta, ObjectStore};

/// Creates [`FloatSafeFormat`]s around DataFusion's parquet format; registered under `parquet`.
#[derive(Debug, Default)]
pub struct FloatSafeParquetFactory {
    inner: ParquetFormatFactory,
}

impl GetExt for FloatSafeParquetFactory {
    fn get_ext(&self) -> String {
        self.inner.get_ext()
    }
}

impl FileFormatFactory for FloatSafeParquetFactory {
    fn create(
        &self,
        state: &dyn Session,
        format_options: &HashMap<String, String>,
    ) -> Result<Arc<dyn FileFormat>> {
        Ok(Arc::new(FloatSafeFormat::new(
            self.inner.create(state, format_options)?,
        )))
    }

    fn default(&self) -> Arc<dyn FileFormat> {
        Arc::new(FloatSafeFormat::new(self.inner.default()))
    }
}

/// A file format that reports the statistics of `inner` with float bounds made inexact.
#[derive(Debug)]
pub struct FloatSafeFormat {
    inner: Arc<dyn FileFormat>,
}

impl FloatSafeFormat {
    /// Wraps `inner`, normally DataFusion's parquet format.
    pub fn new(inner: Arc<dyn FileFormat>) -> Self {
        Self { inner }
    }

    /// DataFusion's parquet format with `session`'s parquet options, wrapped.
    pub fn parquet(session: &dyn Session) -> Self {
        Self::new(Arc::new(
            ParquetFormat::default().with_options(session.default_table_options().parquet.clone()),
        ))
    }
}

/// Whether min/max statistics of `data_type` may leave NaN out (parquet's and Delta's do).
pub fn is_float(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Float16 | DataType::Float32 | DataType::Float64
    )
}

/// Float min/max of `statistics` become inexact: the file may hold NaN beyond them.
pub fn loosen_float_bounds(mut statistics: Statistics, schema: &SchemaRef) -> Statistics {
    for (field, column) in schema
        .fields()
        .iter()
        .zip(statistics.column_statistics.iter_mut())
    {
        if is_float(field.data_type()) {
            column.min_value = std::mem::take(&mut column.min_value).to_inexact();
            column.max_value = std::mem::take(&mut column.max_value).to_inexact();
            if matches!(column.sum_value, Precision::Exact(_)) {
                column.sum_value = std::mem::take(&mut column.sum_value).to_inexact();
            }
        }
    }
    statistics
}

#[async_trait]
impl FileFormat for FloatSafeFormat {
    fn get_ext(&self) -> String {
        self.inner.get_ext()
    }

    fn get_ext_with_compression(&self, compression: &FileCompressionType) -> Result<String> {
        self.inner.get_ext_with_compression(compression)
    }

    fn compression_type(&self) -> Option<FileCompressionType> {
        self.inner.compression_type()
    }

    async fn infer_schema(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        objects: &[ObjectMeta],
    ) -> Result<SchemaRef> {
        self.inner.infer_schema(state, store, objects).await
    }

    async fn infer_stats(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> Result<Statistics> {
        let statistics = self
            .inner
            .infer_stats(state, store, Arc::clone(&table_schema), object)
            .await?;
        Ok(loosen_float_bounds(statistics, &table_schema))
    }

    async fn infer_ordering(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> Result<Option<datafusion::physical_expr::LexOrdering>> {
        self.inner
            .infer_ordering(state, store, table_schema, object)
            .await
    }

    async fn infer_stats_and_ordering(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> Result<datafusion::datasource::file_format::FileMeta> {
        let mut meta = self
            .inner
            .infer_stats_and_ordering(state, store, Arc::clone(&table_schema), object)
            .await?;
        meta.statistics = loosen_float_bounds(meta.statistics, &table_schema);
        Ok(meta)
    }

    async fn create_physical_plan(
        &self,
        state: &dyn Session,
        conf: FileScanConfig,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.create_physical_plan(state, conf).await
    }

    async fn create_writer_physical_plan(
        &self,
        input: Arc<dyn ExecutionPlan>,
        state: &dyn Session,
        conf: FileSinkConfig,
        order_requirements: Option<LexRequirement>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner
            .create_writer_physical_plan(input, state, conf, order_requirements)
            .await
    }

    fn file_source(&self, table_schema: TableSchema) -> Arc<dyn FileSource> {
        self.inner.file_source(table_schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::common::ScalarValue;
    use datafusion::common::stats::ColumnStatistics;

    #[test]
    fn float_bounds_become_inexact_and_others_stay_exact() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("f", DataType::Float64, true),
            Field::new("i", DataType::Int64, true),
        ]));
        let column = |v: ScalarValue| {
            ColumnStatistics::new_unknown()
                .with_min_value(Precision::Exact(v.clone()))
                .with_max_value(Precision::Exact(v))
        };
        let mut statistics = Statistics::new_unknown(&schema);
        statistics.column_statistics = vec![
            column(ScalarValue::Float64(Some(1.1))),
            column(ScalarValue::Int64(Some(7))),
        ];
        let loosened = loosen_float_bounds(statistics, &schema);
        assert_eq!(
            loosened.column_statistics[0].min_value,
            Precision::Inexact(ScalarValue::Float64(Some(1.1)))
        );
        assert_eq!(
            loosened.column_statistics[0].max_value,
            Precision::Inexact(ScalarValue::Float64(Some(1.1)))
        );
        assert_eq!(
            loosened.column_statistics[1].min_value,
            Precision::Exact(ScalarValue::Int64(Some(7)))
        );
    }
}
