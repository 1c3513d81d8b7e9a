//! Writing new files into a Delta table: a plan of DataFusion's parquet sink, run on the
//! executors like any write, laid out as Delta writes tables (partition columns out of the
//! files, in Hive-style directories by value).

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::catalog::Session;
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::datasource::TableProvider;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::logical_expr::Operator;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CaseExpr, CastExpr, Column, IsNullExpr, Literal,
};
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;
use ember_planner::float_stats::FloatSafeFormat;

/// The directory name of a null partition value (Hive's, which Spark and delta-rs write).
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Whether Ember writes partitions by columns of `data_type`: their values have one text form
/// Delta's readers parse back (its partition value serialization).
pub fn is_partition_type(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Boolean
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Float32
            | DataType::Float64
            | DataType::Date32
            | DataType::Decimal128(_, _)
    )
}

/// Checks that `partition_columns` name distinct columns of `schema` Ember can partition by,
/// and leave at least one column for the files.
pub fn check_partition_columns(schema: &Schema, partition_columns: &[String]) -> Result<()> {
    for (i, column) in partition_columns.iter().enumerate() {
        if partition_columns[..i].contains(column) {
            return plan_err!("partition column {column} is named twice");
        }
        let Ok(field) = schema.field_with_name(column) else {
            return plan_err!("partition column {column} is not a column of the table");
        };
        if !is_partition_type(field.data_type()) {
            return plan_err!(
                "cannot partition by {column} of type {}: partition columns are strings, \
                 integers, booleans, dates, decimals or floats",
                field.data_type()
            );
        }
    }
    if !partition_columns.is_empty() && partition_columns.len() == schema.fields().len() {
        return plan_err!(
            "a table cannot be partitioned by all its columns: its files would hold none"
        );
    }
    Ok(())
}

/// The columns a table's files hold: `schema`'s but its partition columns.
pub fn file_schema(schema: &Schema, partition_columns: &[String]) -> Schema {
    Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .filter(|f| !partition_columns.contains(f.name()))
            .cloned()
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    )
}

/// A plan writing `input`'s rows, which hold the columns of `schema` (by name), as new parquet
/// files into the Delta table at `location` partitioned by `partition_columns`: each file
/// holds the other columns and sits in the directory of its partition values
/// (`region=eu/day=2024-01-01/...`, a null or empty value as [`NULL_PARTITION`], as Delta
/// reads an empty partition value as null). The plan answers with what the sink wrote; the
/// files are committed to the log from their paths.
pub async fn write_files(
    state: &dyn Session,
    location: &str,
    schema: &Schema,
    partition_columns: &[String],
    input: Arc<dyn ExecutionPlan>,
) -> Result<Arc<dyn ExecutionPlan>> {
    check_partition_columns(schema, partition_columns)?;
    let file_schema = Arc::new(file_schema(schema, partition_columns));
    let options = ListingOptions::new(Arc::new(FloatSafeFormat::parquet(state)))
        .with_file_extension(".parquet")
        .with_table_partition_cols(
            partition_columns
                .iter()
                .map(|c| (c.clone(), DataType::Utf8))
                .collect(),
        );
    let config = ListingTableConfig::new(ListingTableUrl::parse(location)?)
        .with_listing_options(options)
        .with_schema(Arc::clone(&file_schema));
    let sink = ListingTable::try_new(config)?;
    // The sink takes the files' columns, then each partition column as its directory text.
    let input_schema = input.schema();
    let column = |name: &str| -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(Column::new(name, input_schema.index_of(name)?)))
    };
    let mut columns = file_schema
        .fields()
        .iter()
        .map(|field| {
            Ok(ProjectionExpr::new(
                column(field.name())?,
                field.name().clone(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    for name in partition_columns {
        columns.push(ProjectionExpr::new(
            partition_text(column(name)?)?,
            name.clone(),
        ));
    }
    let input = Arc::new(ProjectionExec::try_new(columns, input)?);
    sink.insert_into(state, input, InsertOp::Append).await
}

/// A partition column's value as its directory names it: the value as text, a null or an
/// empty string as [`NULL_PARTITION`].
fn partition_text(value: Arc<dyn PhysicalExpr>) -> Result<Arc<dyn PhysicalExpr>> {
    let text: Arc<dyn PhysicalExpr> = Arc::new(CastExpr::new(value, DataType::Utf8, None));
    let literal = |s: &str| -> Arc<dyn PhysicalExpr> {
        Arc::new(Literal::new(ScalarValue::Utf8(Some(s.to_string()))))
    };
    let empty: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
        Arc::clone(&text),
        Operator::Eq,
        literal(""),
    ));
    let null: Arc<dyn PhysicalExpr> = Arc::new(IsNullExpr::new(Arc::clone(&text)));
    Ok(Arc::new(CaseExpr::try_new(
        None,
        vec![
            (null, literal(NULL_PARTITION)),
            (empty, literal(NULL_PARTITION)),
        ],
        Some(text),
    )?))
}
