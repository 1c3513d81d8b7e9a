//! Catalog metadata for Flight SQL: catalogs, schemas, tables (with their Arrow schemas), table
//! types, keys and the SQL types Ember accepts, read from the caller's session (so they are
//! what its queries see).

use std::sync::Arc;

use arrow_flight::sql::metadata::{
    GetCatalogsBuilder, GetDbSchemasBuilder, GetTablesBuilder, XdbcTypeInfo, XdbcTypeInfoData,
    XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    CommandGetDbSchemas, CommandGetPrimaryKeys, CommandGetTables, Nullable, Searchable,
    XdbcDataType, XdbcDatetimeSubcode,
};
use datafusion::arrow::array::{Int32Builder, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::Constraint;
use datafusion::datasource::TableType;
use tonic::Status;

use ember_coordinator::ClientSession;

/// Table types Ember has: tables (managed and external), views, and its own system tables.
pub(crate) const TABLE_TYPES: [&str; 3] = ["TABLE", "VIEW", "SYSTEM TABLE"];

fn arrow_status(error: impl std::fmt::Display) -> Status {
    Status::internal(format!("cannot build metadata: {error}"))
}

fn table_type_name(schema: &str, table_type: TableType) -> &'static str {
    match (schema, table_type) {
        ("information_schema" | "system" | "pg_catalog", _) => "SYSTEM TABLE",
        (_, TableType::View) => "VIEW",
        (_, TableType::Base | TableType::Temporary) => "TABLE",
    }
}

pub(crate) fn catalogs(session: &ClientSession) -> Result<RecordBatch, Status> {
    let mut builder = GetCatalogsBuilder::new();
    for name in session.context().catalog_names() {
        builder.append(name);
    }
    builder.build().map_err(arrow_status)
}

pub(crate) fn db_schemas(
    session: &ClientSession,
    command: CommandGetDbSchemas,
) -> Result<RecordBatch, Status> {
    let mut builder = command.into_builder();
    let ctx = session.context();
    for catalog_name in ctx.catalog_names() {
        if let Some(catalog) = ctx.catalog(&catalog_name) {
            for schema in catalog.schema_names() {
                builder.append(&catalog_name, schema);
            }
        }
    }
    builder.build().map_err(arrow_status)
}

/// The schema of a `CommandGetDbSchemas` answer.
pub(crate) fn db_schemas_schema() -> SchemaRef {
    GetDbSchemasBuilder::new(None::<String>, None::<String>).schema()
}

pub(crate) async fn tables(
    session: &ClientSession,
    command: CommandGetTables,
) -> Result<RecordBatch, Status> {
    let mut builder: GetTablesBuilder = command.into_builder();
    let ctx = session.context();
    for catalog_name in ctx.catalog_names() {
        let Some(catalog) = ctx.catalog(&catalog_name) else {
            continue;
        };
        for schema_name in catalog.schema_names() {
            let Some(schema) = catalog.schema(&schema_name) else {
                continue;
            };
            let mut names = schema.table_names();
            names.sort();
            for table_name in names {
                // A table that fails to open (its files gone, say) is left out, not fatal.
                let Ok(Some(table)) = schema.table(&table_name).await else {
                    continue;
                };
                let table_type = table_type_name(&schema_name, table.table_type());
                builder
                    .append(
                        &catalog_name,
                        &schema_name,
                        &table_name,
                        table_type,
                        &table.schema(),
                    )
                    .map_err(arrow_status)?;
            }
        }
    }
    builder.build().map_err(arrow_status)
}

pub(crate) fn tables_schema(include_schema: bool) -> SchemaRef {
    GetTablesBuilder::new(
        None::<String>,
        None::<String>,
        None::<String>,
        Vec::<String>::new(),
        include_schema,
    )
    .schema()
}

pub(crate) fn catalogs_schema() -> SchemaRef {
    GetCatalogsBuilder::new().schema()
}

pub(crate) fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

/// The primary key of a table (managed tables keep theirs).
pub(crate) async fn primary_keys(
    session: &ClientSession,
    command: CommandGetPrimaryKeys,
) -> Result<RecordBatch, Status> {
    let ctx = session.context();
    let state = ctx.state();
    let options = state.config_options();
    let catalog_name = command
        .catalog
        .unwrap_or_else(|| options.catalog.default_catalog.clone());
    let schema_name = command
        .db_schema
        .unwrap_or_else(|| options.catalog.default_schema.clone());
    let mut catalog_col = StringBuilder::new();
    let mut schema_col = StringBuilder::new();
    let mut table_col = StringBuilder::new();
    let mut column_col = StringBuilder::new();
    let mut key_col = StringBuilder::new();
    let mut sequence_col = Int32Builder::new();
    let table = ctx
        .catalog(&catalog_name)
        .and_then(|c| c.schema(&schema_name));
    let table = match table {
        Some(schema) => schema.table(&command.table).await.ok().flatten(),
        None => None,
    };
    if let Some(table) = table
        && let Some(constraints) = table.constraints()
    {
        let schema = table.schema();
        for constraint in constraints.iter() {
            if let Constraint::PrimaryKey(indices) = constraint {
                for (sequence, index) in indices.iter().enumerate() {
                    catalog_col.append_value(&catalog_name);
                    schema_col.append_value(&schema_name);
                    table_col.append_value(&command.table);
                    column_col.append_value(schema.field(*index).name());
                    key_col.append_null();
                    sequence_col.append_value(sequence as i32 + 1);
                }
            }
        }
    }
    RecordBatch::try_new(
        primary_keys_schema(),
        vec![
            Arc::new(catalog_col.finish()),
            Arc::new(schema_col.finish()),
            Arc::new(table_col.finish()),
            Arc::new(column_col.finish()),
            Arc::new(key_col.finish()),
            Arc::new(sequence_col.finish()),
        ],
    )
    .map_err(arrow_status)
}

/// The columns of imported, exported and cross-reference key answers.
pub(crate) fn foreign_keys_schema() -> SchemaRef {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        text("pk_catalog_name", true),
        text("pk_db_schema_name", true),
        text("pk_table_name", false),
        text("pk_column_name", false),
        text("fk_catalog_name", true),
        text("fk_db_schema_name", true),
        text("fk_table_name", false),
        text("fk_column_name", false),
        Field::new("key_sequence", DataType::Int32, false),
        text("fk_key_name", true),
        text("pk_key_name", true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}

/// Ember has no foreign keys: the answer is always empty.
pub(crate) fn foreign_keys() -> RecordBatch {
    RecordBatch::new_empty(foreign_keys_schema())
}

/// The SQL types Ember accepts in DDL and casts, with their JDBC/ODBC descriptions.
pub(crate) fn xdbc_types() -> Result<XdbcTypeInfoData, Status> {
    let mut builder = XdbcTypeInfoDataBuilder::new();
    let number = |name: &str, data_type: XdbcDataType, size: i32, exact: bool| XdbcTypeInfo {
        type_name: name.into(),
        data_type,
        column_size: Some(size),
        nullable: Nullable::NullabilityNullable,
        searchable: Searchable::Full,
        unsigned_attribute: Some(false),
        fixed_prec_scale: exact,
        auto_increment: Some(false),
        local_type_name: Some(name.into()),
        sql_data_type: data_type,
        num_prec_radix: Some(if data_type == XdbcDataType::XdbcDecimal {
            10
        } else {
            2
        }),
        minimum_scale: exact.then_some(0),
        maximum_scale: exact.then_some(if data_type == XdbcDataType::XdbcDecimal {
            38
        } else {
            0
        }),
        ..Default::default()
    };
    let quoted =
        |name: &str, data_type: XdbcDataType, size: Option<i32>, prefix: &str| XdbcTypeInfo {
            type_name: name.into(),
            data_type,
            column_size: size,
            literal_prefix: Some(prefix.into()),
            literal_suffix: Some("'".into()),
            nullable: Nullable::NullabilityNullable,
            case_sensitive: data_type == XdbcDataType::XdbcVarchar,
            searchable: Searchable::Full,
            local_type_name: Some(name.into()),
            sql_data_type: data_type,
            ..Default::default()
        };
    builder.append(XdbcTypeInfo {
        type_name: "BOOLEAN".into(),
        data_type: XdbcDataType::XdbcBit,
        column_size: Some(1),
        nullable: Nullable::NullabilityNullable,
        searchable: Searchable::Full,
        local_type_name: Some("BOOLEAN".into()),
        sql_data_type: XdbcDataType::XdbcBit,
        ..Default::default()
    });
    builder.append(number("TINYINT", XdbcDataType::XdbcTinyint, 3, true));
    builder.append(number("SMALLINT", XdbcDataType::XdbcSmallint, 5, true));
    builder.append(number("INTEGER", XdbcDataType::XdbcInteger, 10, true));
    builder.append(number("BIGINT", XdbcDataType::XdbcBigint, 19, true));
    builder.append(number("REAL", XdbcDataType::XdbcReal, 24, false));
    builder.append(number("DOUBLE", XdbcDataType::XdbcDouble, 53, false));
    let mut decimal = number("DECIMAL", XdbcDataType::XdbcDecimal, 38, true);
    decimal.create_params = Some(vec!["precision".into(), "scale".into()]);
    builder.append(decimal);
    builder.append(quoted(
        "VARCHAR",
        XdbcDataType::XdbcVarchar,
        Some(i32::MAX),
        "'",
    ));
    builder.append(quoted(
        "BYTEA",
        XdbcDataType::XdbcVarbinary,
        Some(i32::MAX),
        "X'",
    ));
    let datetime = |name: &str, code: XdbcDatetimeSubcode, size: i32| XdbcTypeInfo {
        datetime_subcode: Some(code),
        ..quoted(
            name,
            XdbcDataType::XdbcDatetime,
            Some(size),
            &format!("{name} '"),
        )
    };
    // XDBC_SUBCODE_DATE is an alias of XDBC_SUBCODE_YEAR (1) in FlightSql.proto.
    builder.append(datetime("DATE", XdbcDatetimeSubcode::XdbcSubcodeYear, 10));
    builder.append(datetime("TIME", XdbcDatetimeSubcode::XdbcSubcodeTime, 15));
    builder.append(datetime(
        "TIMESTAMP",
        XdbcDatetimeSubcode::XdbcSubcodeTimestamp,
        26,
    ));
    builder.append(XdbcTypeInfo {
        type_name: "INTERVAL".into(),
        data_type: XdbcDataType::XdbcInterval,
        literal_prefix: Some("INTERVAL '".into()),
        literal_suffix: Some("'".into()),
        nullable: Nullable::NullabilityNullable,
        searchable: Searchable::Basic,
        local_type_name: Some("INTERVAL".into()),
        sql_data_type: XdbcDataType::XdbcInterval,
        ..Default::default()
    });
    builder.build().map_err(arrow_status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn every_listed_type_is_accepted_by_the_sql_planner() {
        let types = xdbc_types().unwrap().record_batch(None).unwrap();
        let names = types
            .column_by_name("type_name")
            .unwrap()
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .unwrap()
            .clone();
        assert!(datafusion::arrow::array::Array::len(&names) >= 14);
        let ctx = SessionContext::new();
        for name in names.iter().flatten() {
            ctx.sql(&format!("select cast(null as {name})"))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
