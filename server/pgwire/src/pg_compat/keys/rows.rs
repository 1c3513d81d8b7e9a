//! The rows of the key tables: pg_index, pg_constraint and pg_attrdef of the keyed tables, the
//! index relations they add to pg_class and the `atthasdef` flags of pg_attribute.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, AsArray, BooleanArray, Int16Builder, Int32Array, Int32Builder, ListBuilder,
    RecordBatch, StringArray,
};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Int16Type, Int32Type, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion_pg_catalog::pg_catalog::oid_field::{kind, oid_field};

use super::{BTREE_AM_OID, DEFAULT_SLOTS, Key, KeyedTable, derived_oid, int32_column};
use pgwire::api::Type;

use crate::encode::{INT2VECTOR, PG_TYPE_METADATA, column_type};

/// pg_class with a row for the index of every key.
pub(super) fn with_index_relations(
    schema: &SchemaRef,
    crate_rows: Vec<RecordBatch>,
    tables: &[KeyedTable],
) -> Result<RecordBatch> {
    let mut rows = crate_rows
        .into_iter()
        .map(|batch| {
            let mut columns = batch.columns().to_vec();
            for field in &schema.fields()[columns.len()..] {
                columns.push(
                    ScalarValue::try_from(field.data_type())?.to_array_of_size(batch.num_rows())?,
                );
            }
            Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let indexes: Vec<(i32, String, i32, i16)> = tables
        .iter()
        .flat_map(|t| {
            t.keys().map(move |(index_oid, _, key)| {
                let width = i16::try_from(key.columns.len()).unwrap_or(i16::MAX);
                (index_oid, t.key_name(key), t.namespace_oid, width)
            })
        })
        .collect();
    if !indexes.is_empty() {
        let columns = schema
            .fields()
            .iter()
            .map(|field| {
                let values = indexes.iter().map(|(oid, name, namespace, width)| {
                    Ok(match field.name().as_str() {
                        "oid" | "relfilenode" => ScalarValue::Int32(Some(*oid)),
                        "relname" => ScalarValue::Utf8(Some(name.clone())),
                        "relnamespace" => ScalarValue::Int32(Some(*namespace)),
                        "relkind" => ScalarValue::Utf8(Some("i".into())),
                        "relam" => ScalarValue::Int32(Some(BTREE_AM_OID)),
                        "relnatts" => ScalarValue::Int16(Some(*width)),
                        "relpersistence" => ScalarValue::Utf8(Some("p".into())),
                        "relreplident" => ScalarValue::Utf8(Some("n".into())),
                        "relispopulated" => ScalarValue::Boolean(Some(true)),
                        _ if field.is_nullable() => ScalarValue::try_from(field.data_type())?,
                        _ => ScalarValue::new_default(field.data_type())?,
                    })
                });
                ScalarValue::iter_to_array(values.collect::<Result<Vec<_>>>()?)
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        rows.push(RecordBatch::try_new(Arc::clone(schema), columns)?);
    }
    let batch = concat_batches(schema, &rows)?;
    // psql's `\d` lists a table's indexes only when pg_class says it has some.
    let indexed: HashSet<i32> = tables
        .iter()
        .filter(|t| !t.keys.is_empty())
        .map(|t| t.oid)
        .collect();
    let Some(position) = schema
        .fields()
        .iter()
        .position(|f| f.name() == "relhasindex")
    else {
        return Ok(batch);
    };
    let oids = int32_column(&batch, "oid")?;
    let olds = batch
        .column(position)
        .as_boolean_opt()
        .ok_or_else(|| DataFusionError::Internal("pg_class.relhasindex is not bool".into()))?;
    let flags: BooleanArray = (0..batch.num_rows())
        .map(|row| Some(olds.value(row) || indexed.contains(&oids.value(row))))
        .collect();
    let mut columns = batch.columns().to_vec();
    columns[position] = Arc::new(flags);
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// pg_attribute with `atthasdef` true for the columns that have a default, and every column of
/// Ember's tables described as the type it is sent as (oid, modifier, length, alignment,
/// storage, dimensions), which the crate derives from a coarser mapping without modifiers.
pub(super) fn with_ember_attributes(
    schema: &SchemaRef,
    rows: Vec<RecordBatch>,
    tables: &[KeyedTable],
    schemas: &HashMap<i32, SchemaRef>,
) -> Result<RecordBatch> {
    let batch = concat_batches(schema, &rows)?;
    let with_default: HashSet<(i32, i16)> = tables
        .iter()
        .flat_map(|t| t.defaults.iter().map(move |(attnum, _)| (t.oid, *attnum)))
        .collect();
    let relids = int32_column(&batch, "attrelid")?;
    let attnums = batch
        .column_by_name("attnum")
        .and_then(|c| c.as_primitive_opt::<Int16Type>())
        .ok_or_else(|| DataFusionError::Internal("pg_attribute has no attnum".into()))?;
    let row_type = |row: usize| {
        let field = schemas
            .get(&relids.value(row))?
            .fields()
            .get(usize::try_from(attnums.value(row)).ok()?.checked_sub(1)?)?;
        Some(AttributeType::of(field))
    };
    let types: Vec<Option<AttributeType>> = (0..batch.num_rows()).map(row_type).collect();
    let mut columns = batch.columns().to_vec();
    for (position, field) in schema.fields().iter().enumerate() {
        let old = &columns[position];
        let replaced: Option<ArrayRef> = match field.name().as_str() {
            "atthasdef" => Some(Arc::new(
                (0..batch.num_rows())
                    .map(|row| {
                        Some(with_default.contains(&(relids.value(row), attnums.value(row))))
                    })
                    .collect::<BooleanArray>(),
            )),
            "atttypid" => Some(replace_i32(old, &types, |t| t.oid)?),
            "atttypmod" => Some(replace_i32(old, &types, |t| t.modifier)?),
            "attndims" => Some(replace_i32(old, &types, |t| t.dimensions)?),
            // int2: the cast below narrows it back.
            "attlen" => Some(replace_i32(old, &types, |t| i32::from(t.length))?),
            "attbyval" => {
                let olds = old.as_boolean_opt().ok_or_else(|| {
                    DataFusionError::Internal("pg_attribute.attbyval is not bool".into())
                })?;
                let values: BooleanArray = types
                    .iter()
                    .enumerate()
                    .map(|(row, t)| Some(t.map_or(olds.value(row), |t| t.by_value)))
                    .collect();
                Some(Arc::new(values))
            }
            "attalign" => Some(replace_char(old, &types, |t| t.align)?),
            "attstorage" => Some(replace_char(old, &types, |t| t.storage)?),
            _ => None,
        };
        if let Some(array) = replaced {
            columns[position] = cast(&array, field.data_type())?;
        }
    }
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// How pg_attribute describes a column of a type.
#[derive(Debug, Clone, Copy)]
struct AttributeType {
    oid: i32,
    modifier: i32,
    length: i16,
    by_value: bool,
    align: &'static str,
    storage: &'static str,
    dimensions: i32,
}

impl AttributeType {
    fn of(field: &Field) -> Self {
        let (pg_type, modifier) = column_type(field);
        let fixed = |length, align| Self {
            oid: pg_type.oid() as i32,
            modifier,
            length,
            by_value: length <= 8,
            align,
            storage: "p",
            dimensions: 0,
        };
        match pg_type {
            Type::BOOL => fixed(1, "c"),
            Type::INT2 => fixed(2, "s"),
            Type::INT4 | Type::FLOAT4 | Type::DATE => fixed(4, "i"),
            Type::INT8 | Type::FLOAT8 | Type::TIME | Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                fixed(8, "d")
            }
            Type::INTERVAL => Self {
                by_value: false,
                ..fixed(16, "d")
            },
            Type::INT2_VECTOR => Self {
                by_value: false,
                ..fixed(-1, "i")
            },
            Type::NUMERIC => Self {
                by_value: false,
                storage: "m",
                ..fixed(-1, "i")
            },
            Type::INT8_ARRAY | Type::FLOAT8_ARRAY => Self {
                by_value: false,
                storage: "x",
                dimensions: 1,
                ..fixed(-1, "d")
            },
            Type::BOOL_ARRAY
            | Type::INT2_ARRAY
            | Type::INT4_ARRAY
            | Type::FLOAT4_ARRAY
            | Type::DATE_ARRAY
            | Type::TEXT_ARRAY => Self {
                by_value: false,
                storage: "x",
                dimensions: 1,
                ..fixed(-1, "i")
            },
            // text, varchar, bpchar, bytea
            _ => Self {
                by_value: false,
                storage: "x",
                ..fixed(-1, "i")
            },
        }
    }
}

fn replace_i32(
    old: &ArrayRef,
    types: &[Option<AttributeType>],
    value: impl Fn(&AttributeType) -> i32,
) -> Result<ArrayRef> {
    let olds = cast(old, &DataType::Int32)?;
    let olds = olds.as_primitive::<Int32Type>();
    let values: Int32Array = types
        .iter()
        .enumerate()
        .map(|(row, t)| Some(t.as_ref().map_or(olds.value(row), &value)))
        .collect();
    Ok(Arc::new(values))
}

fn replace_char(
    old: &ArrayRef,
    types: &[Option<AttributeType>],
    value: impl Fn(&AttributeType) -> &'static str,
) -> Result<ArrayRef> {
    let olds = cast(old, &DataType::Utf8)?;
    let olds = olds.as_string::<i32>();
    let values: StringArray = types
        .iter()
        .enumerate()
        .map(|(row, t)| {
            Some(match t {
                Some(t) => value(t),
                None => olds.value(row),
            })
        })
        .collect();
    Ok(Arc::new(values))
}

/// An `int2vector` column: a list of int2 that goes out as `int2vector`.
fn int2vector(name: &str) -> Field {
    Field::new(name, int2_list(), false).with_metadata(HashMap::from([(
        PG_TYPE_METADATA.to_string(),
        INT2VECTOR.to_string(),
    )]))
}

fn int2_list() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Int16, true)))
}

fn int4_list() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true)))
}

pub(super) fn pg_index_schema() -> SchemaRef {
    let flag = |name: &str| Field::new(name, DataType::Boolean, false);
    Arc::new(Schema::new(vec![
        oid_field("indexrelid", kind::REGCLASS, false),
        oid_field("indrelid", kind::REGCLASS, false),
        Field::new("indnatts", DataType::Int16, false),
        Field::new("indnkeyatts", DataType::Int16, false),
        flag("indisunique"),
        flag("indnullsnotdistinct"),
        flag("indisprimary"),
        flag("indisexclusion"),
        flag("indimmediate"),
        flag("indisclustered"),
        flag("indisvalid"),
        flag("indcheckxmin"),
        flag("indisready"),
        flag("indislive"),
        flag("indisreplident"),
        int2vector("indkey"),
        Field::new("indcollation", int4_list(), false),
        Field::new("indclass", int4_list(), false),
        int2vector("indoption"),
        Field::new("indexprs", DataType::Utf8, true),
        Field::new("indpred", DataType::Utf8, true),
    ]))
}

pub(super) fn pg_constraint_schema() -> SchemaRef {
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    let flag = |name: &str| Field::new(name, DataType::Boolean, false);
    Arc::new(Schema::new(vec![
        oid_field("oid", kind::OID, false),
        text("conname", false),
        oid_field("connamespace", kind::REGNAMESPACE, false),
        text("contype", false),
        flag("condeferrable"),
        flag("condeferred"),
        flag("convalidated"),
        oid_field("conrelid", kind::REGCLASS, false),
        oid_field("contypid", kind::REGTYPE, false),
        oid_field("conindid", kind::REGCLASS, false),
        oid_field("conparentid", kind::OID, false),
        oid_field("confrelid", kind::REGCLASS, false),
        text("confupdtype", false),
        text("confdeltype", false),
        text("confmatchtype", false),
        flag("conislocal"),
        Field::new("coninhcount", DataType::Int16, false),
        flag("connoinherit"),
        Field::new("conkey", int2_list(), true),
        Field::new("confkey", int2_list(), true),
        text("conpfeqop", true),
        text("conppeqop", true),
        text("conffeqop", true),
        text("confdelsetcols", true),
        text("conexclop", true),
        text("conbin", true),
    ]))
}

pub(super) fn pg_attrdef_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        oid_field("oid", kind::OID, false),
        oid_field("adrelid", kind::REGCLASS, false),
        Field::new("adnum", DataType::Int16, false),
        Field::new("adbin", DataType::Utf8, false),
    ]))
}

fn int2_lists(lists: impl Iterator<Item = Option<Vec<i16>>>) -> ArrayRef {
    let mut builder = ListBuilder::new(Int16Builder::new());
    for list in lists {
        match list {
            Some(values) => {
                builder.values().append_slice(&values);
                builder.append(true);
            }
            None => builder.append(false),
        }
    }
    Arc::new(builder.finish())
}

fn int4_lists(lists: impl Iterator<Item = Vec<i32>>) -> ArrayRef {
    let mut builder = ListBuilder::new(Int32Builder::new());
    for values in lists {
        builder.values().append_slice(&values);
        builder.append(true);
    }
    Arc::new(builder.finish())
}

/// A batch of `schema` whose columns are given by name; the others are their type's default
/// (`false`, `0`, `''`) or NULL where the column is nullable.
fn batch_of(
    schema: &SchemaRef,
    num_rows: usize,
    mut given: HashMap<&str, ArrayRef>,
) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| match given.remove(field.name().as_str()) {
            Some(array) => Ok(array),
            None if field.is_nullable() => {
                Ok(ScalarValue::try_from(field.data_type())?.to_array_of_size(num_rows)?)
            }
            None => ScalarValue::new_default(field.data_type())?.to_array_of_size(num_rows),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

fn int32s(values: impl Iterator<Item = i32>) -> ArrayRef {
    Arc::new(datafusion::arrow::array::Int32Array::from_iter_values(
        values,
    ))
}

fn texts<S: AsRef<str>>(values: impl Iterator<Item = S>) -> ArrayRef {
    Arc::new(datafusion::arrow::array::StringArray::from_iter_values(
        values,
    ))
}

fn flags(values: impl Iterator<Item = bool>) -> ArrayRef {
    Arc::new(values.map(Some).collect::<BooleanArray>())
}

pub(super) fn pg_index_rows(schema: &SchemaRef, tables: &[KeyedTable]) -> Result<RecordBatch> {
    let keys: Vec<(&KeyedTable, i32, &Key)> = tables
        .iter()
        .flat_map(|t| t.keys().map(move |(index_oid, _, key)| (t, index_oid, key)))
        .collect();
    let width = |key: &Key| i16::try_from(key.columns.len()).unwrap_or(i16::MAX);
    let widths: ArrayRef = Arc::new(datafusion::arrow::array::Int16Array::from_iter_values(
        keys.iter().map(|(_, _, key)| width(key)),
    ));
    let always = || flags(keys.iter().map(|_| true));
    let given = HashMap::from([
        ("indexrelid", int32s(keys.iter().map(|(_, oid, _)| *oid))),
        ("indrelid", int32s(keys.iter().map(|(t, _, _)| t.oid))),
        ("indnatts", Arc::clone(&widths)),
        ("indnkeyatts", widths),
        ("indisunique", always()),
        (
            "indisprimary",
            flags(keys.iter().map(|(_, _, k)| k.primary)),
        ),
        ("indimmediate", always()),
        ("indisvalid", always()),
        ("indisready", always()),
        ("indislive", always()),
        (
            "indkey",
            int2_lists(keys.iter().map(|(t, _, k)| Some(t.attnums(k)))),
        ),
        (
            "indcollation",
            int4_lists(keys.iter().map(|(_, _, k)| vec![0; k.columns.len()])),
        ),
        (
            "indclass",
            int4_lists(keys.iter().map(|(_, _, k)| vec![0; k.columns.len()])),
        ),
        (
            "indoption",
            int2_lists(keys.iter().map(|(_, _, k)| Some(vec![0; k.columns.len()]))),
        ),
    ]);
    batch_of(schema, keys.len(), given)
}

pub(super) fn pg_constraint_rows(schema: &SchemaRef, tables: &[KeyedTable]) -> Result<RecordBatch> {
    let keys: Vec<(&KeyedTable, i32, i32, &Key)> = tables
        .iter()
        .flat_map(|t| {
            t.keys()
                .map(move |(index_oid, oid, key)| (t, index_oid, oid, key))
        })
        .collect();
    let space = || texts(keys.iter().map(|_| " "));
    let given = HashMap::from([
        ("oid", int32s(keys.iter().map(|(_, _, oid, _)| *oid))),
        (
            "conname",
            texts(keys.iter().map(|(t, _, _, k)| t.key_name(k))),
        ),
        (
            "connamespace",
            int32s(keys.iter().map(|(t, _, _, _)| t.namespace_oid)),
        ),
        (
            "contype",
            texts(
                keys.iter()
                    .map(|(_, _, _, k)| if k.primary { "p" } else { "u" }),
            ),
        ),
        ("convalidated", flags(keys.iter().map(|_| true))),
        ("conrelid", int32s(keys.iter().map(|(t, _, _, _)| t.oid))),
        (
            "conindid",
            int32s(keys.iter().map(|(_, index, _, _)| *index)),
        ),
        ("confupdtype", space()),
        ("confdeltype", space()),
        ("confmatchtype", space()),
        ("conislocal", flags(keys.iter().map(|_| true))),
        ("connoinherit", flags(keys.iter().map(|_| true))),
        (
            "conkey",
            int2_lists(keys.iter().map(|(t, _, _, k)| Some(t.attnums(k)))),
        ),
    ]);
    batch_of(schema, keys.len(), given)
}

pub(super) fn pg_attrdef_rows(schema: &SchemaRef, tables: &[KeyedTable]) -> Result<RecordBatch> {
    let defaults: Vec<(&KeyedTable, i16, &String)> = tables
        .iter()
        .flat_map(|t| {
            t.defaults
                .iter()
                .map(move |(attnum, sql)| (t, *attnum, sql))
        })
        .filter(|(t, attnum, _)| derived_oid(t.oid, DEFAULT_SLOTS + i64::from(*attnum)).is_some())
        .collect();
    let given = HashMap::from([
        (
            "oid",
            int32s(defaults.iter().filter_map(|(t, attnum, _)| {
                derived_oid(t.oid, DEFAULT_SLOTS + i64::from(*attnum))
            })),
        ),
        ("adrelid", int32s(defaults.iter().map(|(t, _, _)| t.oid))),
        (
            "adnum",
            Arc::new(datafusion::arrow::array::Int16Array::from_iter_values(
                defaults.iter().map(|(_, attnum, _)| *attnum),
            )) as ArrayRef,
        ),
        (
            "adbin",
            texts(defaults.iter().map(|(_, _, sql)| sql.as_str())),
        ),
    ]);
    batch_of(schema, defaults.len(), given)
}
