//! `pg_tables` and `pg_views` as PostgreSQL has them: tables in one, views (with their
//! definitions) in the other. datafusion-pg-catalog lists views among the tables and has no
//! views; clients that tell the two apart by these (dbt) need them right. And the comments of
//! tables, views and columns in `pg_description`.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, AsArray, BooleanArray, Int32Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::CatalogProviderList;
use datafusion::datasource::view::ViewTable;
use datafusion::error::{DataFusionError, Result};
use ember_coordinator::comments::Comment;
use ember_planner::session::DEFAULT_CATALOG;

/// `pg_class`'s own oid: the catalog a table's comment is in.
const PG_CLASS_OID: i32 = 1259;

/// The owner datafusion-pg-catalog's `pg_tables` names.
const OWNER: &str = "postgres";

/// `pg_tables`' rows without the views of Ember's catalog.
pub(super) async fn without_views(
    schema: &SchemaRef,
    rows: Vec<RecordBatch>,
    catalogs: &Arc<dyn CatalogProviderList>,
) -> Result<RecordBatch> {
    let batch = concat_batches(schema, &rows)?;
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .map(|c| c.as_string::<i32>().clone())
            .ok_or_else(|| DataFusionError::Internal(format!("pg_tables has no {name}")))
    };
    let (schemas, names) = (column("schemaname")?, column("tablename")?);
    let catalog = catalogs.catalog(DEFAULT_CATALOG);
    let mut keep = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let table = match catalog.as_ref().and_then(|c| c.schema(schemas.value(row))) {
            Some(schema) => schema.table(names.value(row)).await?,
            None => None,
        };
        keep.push(table.is_none_or(|t| t.downcast_ref::<ViewTable>().is_none()));
    }
    Ok(filter_record_batch(&batch, &BooleanArray::from(keep))?)
}

/// `pg_views`: every view of Ember's catalog, with the query that defines it.
pub(super) async fn views(
    schema: &SchemaRef,
    catalogs: &Arc<dyn CatalogProviderList>,
) -> Result<RecordBatch> {
    let (mut schemas, mut names, mut definitions) = (vec![], vec![], vec![]);
    if let Some(catalog) = catalogs.catalog(DEFAULT_CATALOG) {
        for schema_name in catalog.schema_names() {
            let Some(provider) = catalog.schema(&schema_name) else {
                continue;
            };
            let mut tables = provider.table_names();
            tables.sort();
            for name in tables {
                let Some(table) = provider.table(&name).await? else {
                    continue;
                };
                // Views users created (Ember's own system tables are tables to clients).
                let Some(view) = table.downcast_ref::<ViewTable>() else {
                    continue;
                };
                let definition = view.definition().cloned();
                schemas.push(schema_name.clone());
                names.push(name);
                definitions.push(definition);
            }
        }
    }
    let owners = vec![OWNER; names.len()];
    Ok(RecordBatch::try_new(
        Arc::clone(schema),
        vec![
            Arc::new(StringArray::from(schemas)),
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(owners)),
            Arc::new(StringArray::from(definitions)),
        ],
    )?)
}

/// `pg_description`'s rows with a row for each comment of `COMMENT ON`: on the table's
/// `pg_class` row (`objsubid` 0), or on its column (`objsubid` its number).
pub(super) fn with_comments(
    schema: &SchemaRef,
    rows: Vec<RecordBatch>,
    comments: &[Comment],
    columns: &HashMap<i32, SchemaRef>,
    oids: &HashMap<(String, String), i32>,
) -> Result<RecordBatch> {
    let (mut objoids, mut subids, mut texts) = (vec![], vec![], vec![]);
    for comment in comments {
        let Some(oid) = oids.get(&(comment.schema.clone(), comment.table.clone())) else {
            continue;
        };
        let subid = match &comment.column {
            None => 0,
            Some(column) => match columns.get(oid).and_then(|s| s.index_of(column).ok()) {
                Some(index) => i32::try_from(index + 1).unwrap_or(i32::MAX),
                None => continue,
            },
        };
        objoids.push(*oid);
        subids.push(subid);
        texts.push(comment.text.clone());
    }
    let classoids = vec![PG_CLASS_OID; objoids.len()];
    let ours: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(objoids)),
        Arc::new(Int32Array::from(classoids)),
        Arc::new(Int32Array::from(subids)),
        Arc::new(StringArray::from(texts)),
    ];
    // In the crate's column types.
    let columns = schema
        .fields()
        .iter()
        .zip(ours)
        .map(|(field, array)| cast(&array, field.data_type()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut batches = rows;
    batches.push(RecordBatch::try_new(Arc::clone(schema), columns)?);
    Ok(concat_batches(schema, &batches)?)
}
