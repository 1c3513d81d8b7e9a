//! `pg_constraint`, `pg_index` and `pg_attrdef` built live from the PRIMARY KEY and UNIQUE
//! constraints and the column defaults that managed tables keep, so clients that reflect keys
//! (pgJDBC's `getPrimaryKeys`, SQLAlchemy's inspector, BI tools) see them. Each key also gets
//! the index relation PostgreSQL would create for it in `pg_class`; `pg_attribute.atthasdef`
//! says which columns have a default, and each column's type is the one it is sent as (with
//! `numeric(p,s)` and declared `varchar(n)` modifiers). `pg_tables` lists tables only and
//! `pg_views` lists the views, with their definitions (dbt tells tables from views by them);
//! `pg_description` adds the comments of `COMMENT ON`.
//! Every other table comes from datafusion-pg-catalog as is.

mod definitions;
mod relations;
mod rows;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::{CatalogProviderList, SchemaProvider};
use datafusion::common::{Constraint, ScalarValue};
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::{PgCatalogSchemaProvider, PgCatalogTable};
use ember_coordinator::comments::Comments;
use ember_planner::session::DEFAULT_CATALOG;
use futures::TryStreamExt;

pub(super) use definitions::KeyDefinitions;
use rows::{
    pg_attrdef_rows, pg_attrdef_schema, pg_constraint_rows, pg_constraint_schema, pg_index_rows,
    pg_index_schema, with_ember_attributes, with_index_relations,
};

/// The pg_catalog datafusion-pg-catalog registers.
type CratePgCatalog = PgCatalogSchemaProvider<Arc<dyn CatalogProviderList>, EmptyContextProvider>;

/// The access method of every index Ember lists (`pg_am`'s `btree`).
const BTREE_AM_OID: i32 = 403;

/// Oids of the objects a table's keys and defaults imply. They lie above the oids pg_catalog
/// hands out to schemas and tables (counting up from 16384), derived from the table's oid so
/// they stay the same from one catalog query to the next.
const DERIVED_OID_BASE: i64 = 1 << 30;
const OIDS_PER_TABLE: i64 = 1024;
/// Slots `2k` and `2k + 1` are the index and the constraint of the table's `k`-th key.
const MAX_KEYS: usize = 32;
/// Slot `DEFAULT_SLOTS + attnum` is the `pg_attrdef` row of a column.
const DEFAULT_SLOTS: i64 = 2 * MAX_KEYS as i64;

fn derived_oid(table_oid: i32, slot: i64) -> Option<i32> {
    let oid = DERIVED_OID_BASE + i64::from(table_oid) * OIDS_PER_TABLE + slot;
    (slot < OIDS_PER_TABLE).then_some(i32::try_from(oid).ok()?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LiveTable {
    Class,
    Attribute,
    Index,
    Constraint,
    Attrdef,
    Tables,
    Views,
    Description,
}

impl LiveTable {
    fn named(name: &str) -> Option<Self> {
        Some(match name {
            "pg_class" => Self::Class,
            "pg_attribute" => Self::Attribute,
            "pg_index" => Self::Index,
            "pg_constraint" => Self::Constraint,
            "pg_attrdef" => Self::Attrdef,
            "pg_tables" => Self::Tables,
            "pg_views" => Self::Views,
            "pg_description" => Self::Description,
            _ => return None,
        })
    }

    fn crate_name(self) -> &'static str {
        match self {
            Self::Class => "pg_class",
            Self::Attribute => "pg_attribute",
            Self::Index => "pg_index",
            Self::Constraint => "pg_constraint",
            Self::Attrdef => "pg_attrdef",
            Self::Tables => "pg_tables",
            Self::Views => "pg_views",
            Self::Description => "pg_description",
        }
    }
}

/// The pg_catalog schema: datafusion-pg-catalog's, with the tables of keys and defaults built
/// from Ember's catalog.
#[derive(Debug)]
pub(super) struct KeyedPgCatalog {
    inner: Arc<dyn SchemaProvider>,
    catalogs: Arc<dyn CatalogProviderList>,
    definitions: Arc<KeyDefinitions>,
    comments: Arc<Comments>,
}

impl KeyedPgCatalog {
    pub(super) fn new(
        inner: Arc<dyn SchemaProvider>,
        catalogs: Arc<dyn CatalogProviderList>,
        definitions: Arc<KeyDefinitions>,
        comments: Arc<Comments>,
    ) -> Self {
        Self {
            inner,
            catalogs,
            definitions,
            comments,
        }
    }
}

#[async_trait]
impl SchemaProvider for KeyedPgCatalog {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(live) = LiveTable::named(&name.to_ascii_lowercase()) else {
            return self.inner.table(name).await;
        };
        let schema = match live {
            LiveTable::Class => {
                let columns = crate_table(&self.inner, live.crate_name())?.schema();
                let mut fields = columns.fields().to_vec();
                // Storage options, which SQLAlchemy reads of indexes: none.
                let options = DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)));
                fields.push(Arc::new(Field::new("reloptions", options, true)));
                Arc::new(Schema::new_with_metadata(
                    fields,
                    columns.metadata().clone(),
                ))
            }
            LiveTable::Attribute
            | LiveTable::Tables
            | LiveTable::Views
            | LiveTable::Description => crate_table(&self.inner, live.crate_name())?.schema(),
            LiveTable::Index => pg_index_schema(),
            LiveTable::Constraint => pg_constraint_schema(),
            LiveTable::Attrdef => pg_attrdef_schema(),
        };
        let stream = Arc::new(LiveStream {
            live,
            schema: Arc::clone(&schema),
            inner: Arc::clone(&self.inner),
            catalogs: Arc::clone(&self.catalogs),
            definitions: Arc::clone(&self.definitions),
            comments: Arc::clone(&self.comments),
        });
        Ok(Some(Arc::new(StreamingTable::try_new(
            schema,
            vec![stream],
        )?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

fn crate_table(inner: &Arc<dyn SchemaProvider>, name: &str) -> Result<PgCatalogTable> {
    let provider = inner
        .downcast_ref::<CratePgCatalog>()
        .ok_or_else(|| DataFusionError::Internal("pg_catalog is not the one set up".into()))?;
    provider
        .build_table_by_name(name)?
        .ok_or_else(|| DataFusionError::Internal(format!("pg_catalog has no {name}")))
}

/// The rows datafusion-pg-catalog has for its table `name`.
async fn crate_rows(
    inner: &Arc<dyn SchemaProvider>,
    name: &str,
    ctx: Arc<TaskContext>,
) -> Result<Vec<RecordBatch>> {
    match crate_table(inner, name)? {
        PgCatalogTable::Dynamic(stream) => stream.execute(ctx).try_collect().await,
        PgCatalogTable::Static(table) => Ok(table.data().to_vec()),
        PgCatalogTable::Empty(_) => Ok(vec![]),
    }
}

#[derive(Debug)]
struct LiveStream {
    live: LiveTable,
    schema: SchemaRef,
    inner: Arc<dyn SchemaProvider>,
    catalogs: Arc<dyn CatalogProviderList>,
    definitions: Arc<KeyDefinitions>,
    comments: Arc<Comments>,
}

impl PartitionStream for LiveStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (live, schema) = (self.live, Arc::clone(&self.schema));
        let (inner, catalogs) = (Arc::clone(&self.inner), Arc::clone(&self.catalogs));
        let definitions = Arc::clone(&self.definitions);
        let comments = Arc::clone(&self.comments);
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            futures::stream::once(async move {
                match live {
                    LiveTable::Tables => {
                        let rows = crate_rows(&inner, live.crate_name(), ctx).await?;
                        return relations::without_views(&schema, rows, &catalogs).await;
                    }
                    LiveTable::Views => return relations::views(&schema, &catalogs).await,
                    _ => {}
                }
                let all = live_tables(&inner, &catalogs, Arc::clone(&ctx)).await?;
                let (tables, schemas) = (&all.keyed, &all.schemas);
                definitions.record(tables);
                match live {
                    LiveTable::Class => {
                        let rows = crate_rows(&inner, live.crate_name(), ctx).await?;
                        with_index_relations(&schema, rows, tables)
                    }
                    LiveTable::Attribute => {
                        let rows = crate_rows(&inner, live.crate_name(), ctx).await?;
                        with_ember_attributes(&schema, rows, tables, schemas)
                    }
                    LiveTable::Index => pg_index_rows(&schema, tables),
                    LiveTable::Constraint => pg_constraint_rows(&schema, tables),
                    LiveTable::Attrdef => pg_attrdef_rows(&schema, tables),
                    LiveTable::Description => {
                        let rows = crate_rows(&inner, live.crate_name(), ctx).await?;
                        relations::with_comments(
                            &schema,
                            rows,
                            &comments.all(),
                            &all.schemas,
                            &all.oids,
                        )
                    }
                    LiveTable::Tables | LiveTable::Views => unreachable!("answered above"),
                }
            }),
        ))
    }
}

/// A table with keys or column defaults, as pg_catalog numbers it.
struct KeyedTable {
    oid: i32,
    namespace_oid: i32,
    schema: String,
    name: String,
    columns: Vec<String>,
    keys: Vec<Key>,
    /// `(attnum, expression as SQL)`.
    defaults: Vec<(i16, String)>,
}

struct Key {
    primary: bool,
    /// Column indexes, in key order.
    columns: Vec<usize>,
}

impl KeyedTable {
    /// PostgreSQL's names: `t_pkey` for the primary key, `t_a_b_key` for UNIQUE (a, b).
    fn key_name(&self, key: &Key) -> String {
        if key.primary {
            return format!("{}_pkey", self.name);
        }
        let columns: Vec<&str> = key
            .columns
            .iter()
            .filter_map(|c| self.columns.get(*c).map(String::as_str))
            .collect();
        format!("{}_{}_key", self.name, columns.join("_"))
    }

    fn keys(&self) -> impl Iterator<Item = (i32, i32, &Key)> {
        self.keys.iter().enumerate().filter_map(|(k, key)| {
            let index_oid = derived_oid(self.oid, 2 * k as i64)?;
            let constraint_oid = derived_oid(self.oid, 2 * k as i64 + 1)?;
            Some((index_oid, constraint_oid, key))
        })
    }

    fn attnums(&self, key: &Key) -> Vec<i16> {
        key.columns
            .iter()
            .filter_map(|c| i16::try_from(c + 1).ok())
            .collect()
    }
}

/// The tables of Ember's catalog as pg_class numbers them.
#[derive(Default)]
struct LiveTables {
    /// The tables that have keys or defaults.
    keyed: Vec<KeyedTable>,
    /// Every table's columns, by its oid.
    schemas: HashMap<i32, SchemaRef>,
    /// Every table's oid, by schema and name.
    oids: HashMap<(String, String), i32>,
}

/// The tables of Ember's catalog, with the oids pg_class gives them.
async fn live_tables(
    inner: &Arc<dyn SchemaProvider>,
    catalogs: &Arc<dyn CatalogProviderList>,
    ctx: Arc<TaskContext>,
) -> Result<LiveTables> {
    let Some(catalog) = catalogs.catalog(DEFAULT_CATALOG) else {
        return Ok(LiveTables::default());
    };
    let mut relations = HashMap::new();
    for batch in crate_rows(inner, "pg_class", Arc::clone(&ctx)).await? {
        let oids = int32_column(&batch, "oid")?;
        let names = batch
            .column_by_name("relname")
            .map(|c| c.as_string::<i32>());
        let spaces = int32_column(&batch, "relnamespace")?;
        if let Some(names) = names {
            for row in 0..batch.num_rows() {
                relations
                    .entry(spaces.value(row))
                    .or_insert_with(Vec::new)
                    .push((names.value(row).to_string(), oids.value(row)));
            }
        }
    }
    let namespace_rows = namespaces(inner, ctx).await?;
    let mut tables = LiveTables::default();
    for (namespace_oid, schema_name) in namespace_rows {
        let Some(schema) = catalog.schema(&schema_name) else {
            continue;
        };
        for (name, oid) in relations.get(&namespace_oid).into_iter().flatten() {
            let Some(table) = schema.table(name).await? else {
                continue;
            };
            tables.schemas.insert(*oid, table.schema());
            tables
                .oids
                .insert((schema_name.clone(), name.clone()), *oid);
            let names = (schema_name.as_str(), name.as_str());
            if let Some(keyed) = keyed_table(table.as_ref(), *oid, namespace_oid, names) {
                tables.keyed.push(keyed);
            }
        }
    }
    Ok(tables)
}

/// `(oid, nspname)` of pg_namespace.
async fn namespaces(
    inner: &Arc<dyn SchemaProvider>,
    ctx: Arc<TaskContext>,
) -> Result<Vec<(i32, String)>> {
    let mut rows = vec![];
    for batch in crate_rows(inner, "pg_namespace", ctx).await? {
        let oids = int32_column(&batch, "oid")?;
        if let Some(names) = batch.column_by_name("nspname") {
            let names = names.as_string::<i32>();
            for row in 0..batch.num_rows() {
                rows.push((oids.value(row), names.value(row).to_string()));
            }
        }
    }
    Ok(rows)
}

fn int32_column<'a>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a datafusion::arrow::array::Int32Array> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_primitive_opt::<Int32Type>())
        .ok_or_else(|| DataFusionError::Internal(format!("pg_catalog has no int4 column {name}")))
}

fn keyed_table(
    table: &dyn TableProvider,
    oid: i32,
    namespace_oid: i32,
    (schema_name, name): (&str, &str),
) -> Option<KeyedTable> {
    let schema = table.schema();
    let keys: Vec<Key> = table
        .constraints()
        .map(|constraints| {
            constraints
                .iter()
                .map(|c| match c {
                    Constraint::PrimaryKey(columns) => Key {
                        primary: true,
                        columns: columns.clone(),
                    },
                    Constraint::Unique(columns) => Key {
                        primary: false,
                        columns: columns.clone(),
                    },
                })
                .take(MAX_KEYS)
                .collect()
        })
        .unwrap_or_default();
    let defaults: Vec<(i16, String)> = schema
        .fields()
        .iter()
        .enumerate()
        .filter_map(|(i, field)| {
            let expr = table.get_column_default(field.name())?;
            let sql = datafusion::sql::unparser::expr_to_sql(expr)
                .ok()?
                .to_string();
            // PostgreSQL prints a text constant with its type: 'x'::text.
            let sql = match expr {
                Expr::Literal(
                    ScalarValue::Utf8(Some(_))
                    | ScalarValue::Utf8View(Some(_))
                    | ScalarValue::LargeUtf8(Some(_)),
                    _,
                ) => format!("{sql}::text"),
                _ => sql,
            };
            Some((i16::try_from(i + 1).ok()?, sql))
        })
        .collect();
    if keys.is_empty() && defaults.is_empty() {
        return None;
    }
    Some(KeyedTable {
        oid,
        namespace_oid,
        schema: schema_name.to_string(),
        name: name.to_string(),
        columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
        keys,
        defaults,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_oids_stay_apart_and_in_range() {
        let table = 16_400;
        let index = derived_oid(table, 0).expect("in range");
        let constraint = derived_oid(table, 1).expect("in range");
        let default = derived_oid(table, DEFAULT_SLOTS + 3).expect("in range");
        assert!(index > 1 << 30 && index < constraint && constraint < default);
        assert!(derived_oid(table + 1, 0).expect("in range") > default);
        assert_eq!(derived_oid(table, OIDS_PER_TABLE), None);
        assert_eq!(derived_oid(i32::MAX, 0), None);
    }
}
