//! Postgres system functions clients call that datafusion-pg-catalog does not provide, or
//! provides differently from what Ember's catalog says.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Int32Array, ListArray, StringArray, StructArray};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Int32Type, Int64Type};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, create_udf,
};
use datafusion::prelude::SessionContext;

use super::PG_SERVER_VERSION;
use super::keys::KeyDefinitions;
use ember_coordinator::{Error, Result};

/// A function whose answer is the same for every argument: what Ember's catalog knows of all
/// objects alike.
pub(super) fn constant_udf(name: &str, arguments: Vec<DataType>, value: ScalarValue) -> ScalarUDF {
    create_udf(
        name,
        arguments,
        value.data_type(),
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            Ok(match args.first() {
                Some(ColumnarValue::Array(array)) => {
                    ColumnarValue::Array(value.to_array_of_size(array.len())?)
                }
                _ => ColumnarValue::Scalar(value.clone()),
            })
        }),
    )
}

/// Like [`constant_udf`], for any arguments of any type (`arity` of them).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct AnyConstant {
    name: String,
    signature: Signature,
    value: ScalarValue,
}

impl AnyConstant {
    pub(super) fn new(name: &str, arity: usize, value: ScalarValue) -> Self {
        Self {
            name: name.to_string(),
            signature: Signature::any(arity, Volatility::Stable),
            value,
        }
    }
}

impl ScalarUDFImpl for AnyConstant {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.value.data_type())
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        Ok(match args.args.first() {
            Some(ColumnarValue::Array(_)) => {
                ColumnarValue::Array(self.value.to_array_of_size(args.number_rows)?)
            }
            _ => ColumnarValue::Scalar(self.value.clone()),
        })
    }
}

/// `json_build_object(key, value, ...)`: a JSON object as text, keys and values in pairs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct JsonBuildObject {
    signature: Signature,
}

impl JsonBuildObject {
    pub(super) fn new() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        if !args.args.len().is_multiple_of(2) {
            return datafusion::common::exec_err!(
                "argument list must have even number of elements"
            );
        }
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let mut objects = Vec::with_capacity(rows);
        for row in 0..rows {
            let mut object = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?;
                if key.is_null() {
                    return datafusion::common::exec_err!("null value not allowed for object key");
                }
                let key = match key {
                    ScalarValue::Utf8(Some(k))
                    | ScalarValue::Utf8View(Some(k))
                    | ScalarValue::LargeUtf8(Some(k)) => k,
                    other => other.to_string(),
                };
                object.insert(
                    key,
                    json_value(&ScalarValue::try_from_array(&pair[1], row)?),
                );
            }
            objects.push(serde_json::Value::Object(object).to_string());
        }
        Ok(ColumnarValue::Array(Arc::new(StringArray::from(objects))))
    }
}

fn json_value(value: &ScalarValue) -> serde_json::Value {
    use serde_json::Value as Json;
    if value.is_null() {
        return Json::Null;
    }
    match value {
        ScalarValue::Boolean(Some(b)) => Json::Bool(*b),
        ScalarValue::Int8(Some(v)) => Json::from(*v),
        ScalarValue::Int16(Some(v)) => Json::from(*v),
        ScalarValue::Int32(Some(v)) => Json::from(*v),
        ScalarValue::Int64(Some(v)) => Json::from(*v),
        ScalarValue::UInt8(Some(v)) => Json::from(*v),
        ScalarValue::UInt16(Some(v)) => Json::from(*v),
        ScalarValue::UInt32(Some(v)) => Json::from(*v),
        ScalarValue::UInt64(Some(v)) => Json::from(*v),
        ScalarValue::Float32(Some(v)) => Json::from(*v),
        ScalarValue::Float64(Some(v)) => Json::from(*v),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Json::String(s.clone()),
        other => Json::String(other.to_string()),
    }
}

/// `_pg_expandarray(array)` as one value: the list of `(x, n)` pairs, each element with its
/// position from 1, that `information_schema._pg_expandarray` returns as rows (the
/// rewrite of client queries unnests it).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct ExpandArray {
    signature: Signature,
}

impl ExpandArray {
    pub(super) fn new() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }

    fn pair(element: &DataType) -> Fields {
        Fields::from(vec![
            Field::new("x", element.clone(), true),
            Field::new("n", DataType::Int32, false),
        ])
    }
}

impl ScalarUDFImpl for ExpandArray {
    fn name(&self) -> &str {
        "_pg_expandarray"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> datafusion::error::Result<DataType> {
        match args.first() {
            Some(DataType::List(element)) => Ok(DataType::List(Arc::new(Field::new_list_field(
                DataType::Struct(Self::pair(element.data_type())),
                true,
            )))),
            other => datafusion::common::plan_err!("_pg_expandarray takes an array, not {other:?}"),
        }
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let lists = arrays[0].as_list::<i32>();
        let DataType::List(element) = lists.data_type() else {
            return datafusion::common::exec_err!("_pg_expandarray takes an array");
        };
        let positions: Int32Array = lists
            .offsets()
            .windows(2)
            .flat_map(|w| 1..=(w[1] - w[0]))
            .collect();
        let pairs = StructArray::try_new(
            Self::pair(element.data_type()),
            vec![Arc::clone(lists.values()), Arc::new(positions)],
            None,
        )?;
        let field = Arc::new(Field::new_list_field(pairs.data_type().clone(), true));
        let list = ListArray::try_new(
            field,
            lists.offsets().clone(),
            Arc::new(pairs),
            lists.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

/// `pg_get_expr(expression, relation[, pretty])`: the expression as SQL. Ember's pg_catalog
/// keeps expressions (column defaults) as SQL text already.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct GetExpr {
    signature: Signature,
}

impl GetExpr {
    pub(super) fn new() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for GetExpr {
    fn name(&self) -> &str {
        "pg_get_expr"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        match args.args.first() {
            Some(expression) => expression.cast_to(&DataType::Utf8, None),
            None => datafusion::common::exec_err!("pg_get_expr takes an expression"),
        }
    }
}

/// `pg_get_indexdef(oid[, column, pretty])` and `pg_get_constraintdef(oid[, pretty])` of the
/// indexes and constraints of keys; NULL for other oids.
#[derive(Debug)]
pub(super) struct KeyDefinition {
    name: &'static str,
    signature: Signature,
    definitions: Arc<KeyDefinitions>,
}

impl KeyDefinition {
    pub(super) fn index(definitions: &Arc<KeyDefinitions>) -> Self {
        Self::new("pg_get_indexdef", definitions)
    }

    pub(super) fn constraint(definitions: &Arc<KeyDefinitions>) -> Self {
        Self::new("pg_get_constraintdef", definitions)
    }

    fn new(name: &'static str, definitions: &Arc<KeyDefinitions>) -> Self {
        Self {
            name,
            signature: Signature::variadic_any(Volatility::Stable),
            definitions: Arc::clone(definitions),
        }
    }
}

impl PartialEq for KeyDefinition {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && Arc::ptr_eq(&self.definitions, &other.definitions)
    }
}

impl Eq for KeyDefinition {}

impl std::hash::Hash for KeyDefinition {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for KeyDefinition {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(oids) = arrays.first() else {
            return datafusion::common::exec_err!("{} takes an oid", self.name);
        };
        let oids = datafusion::arrow::compute::cast(oids, &DataType::Int64)?;
        let oids = oids.as_primitive::<Int64Type>();
        // Column 0 (or none given) asks for the whole index definition.
        let columns = match arrays.get(1) {
            Some(c) if self.name == "pg_get_indexdef" => {
                Some(datafusion::arrow::compute::cast(c, &DataType::Int64)?)
            }
            _ => None,
        };
        let definitions: StringArray = (0..rows)
            .map(|row| {
                let oid = oids.is_valid(row).then(|| oids.value(row))?;
                let definition = self.definitions.get(i32::try_from(oid).ok()?)?;
                if self.name == "pg_get_constraintdef" {
                    return definition.constraint_definition();
                }
                let column = columns
                    .as_ref()
                    .map(|c| c.as_primitive::<Int64Type>())
                    .filter(|c| c.is_valid(row))
                    .map_or(0, |c| c.value(row));
                if column == 0 {
                    definition.index_definition()
                } else {
                    definition.index_column(column)
                }
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(definitions)))
    }
}

/// `to_regtype(name)`: the oid of the type with that name (`int4` or `integer`), or NULL.
pub(super) async fn to_regtype_udf(ctx: &SessionContext) -> Result<ScalarUDF> {
    let mut oids: HashMap<String, i32> = HashMap::new();
    let rows = query_rows(
        ctx,
        "select cast(oid as varchar), typname, format_type(oid, NULL) from pg_catalog.pg_type",
    )
    .await?;
    for row in rows {
        let Some(oid) = row[0].as_deref().and_then(|o| o.parse::<i32>().ok()) else {
            continue;
        };
        for name in row[1..].iter().flatten() {
            oids.entry(name.clone()).or_insert(oid);
        }
    }
    let oids = Arc::new(oids);
    Ok(create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let lookup = |name: Option<&str>| {
                let name = name?.trim().trim_start_matches("pg_catalog.");
                oids.get(&name.trim_matches('"').to_ascii_lowercase())
                    .copied()
            };
            Ok(match &args[0] {
                ColumnarValue::Scalar(value) => {
                    let name = match value {
                        ScalarValue::Utf8(v)
                        | ScalarValue::Utf8View(v)
                        | ScalarValue::LargeUtf8(v) => v.as_deref(),
                        _ => None,
                    };
                    ColumnarValue::Scalar(ScalarValue::Int32(lookup(name)))
                }
                ColumnarValue::Array(array) => {
                    let names = datafusion::arrow::compute::cast(array, &DataType::Utf8)?;
                    let names = names.as_string::<i32>();
                    ColumnarValue::Array(Arc::new(datafusion::arrow::array::Int32Array::from_iter(
                        names.iter().map(lookup),
                    )))
                }
            })
        }),
    ))
}

/// How psql's `\df` shows a function: its result type and its arguments.
pub(super) struct FunctionSignature {
    pub(super) result: String,
    pub(super) arguments: String,
}

/// The signatures of the functions `pg_proc` lists, written as PostgreSQL writes them.
pub(super) async fn function_signatures(
    ctx: &SessionContext,
) -> Result<HashMap<i32, FunctionSignature>> {
    let types: HashMap<String, String> = query_rows(
        ctx,
        "select cast(oid as varchar), format_type(oid, NULL) from pg_catalog.pg_type",
    )
    .await?
    .into_iter()
    .filter_map(|row| Some((row[0].clone()?, row[1].clone()?)))
    .collect();
    let type_name = |oid: &str| {
        types
            .get(oid.trim())
            .cloned()
            .unwrap_or_else(|| format!("oid({})", oid.trim()))
    };
    let list = |text: &Option<String>| -> Vec<String> {
        text.as_deref()
            .unwrap_or("")
            .trim_matches(|c| c == '[' || c == ']' || c == '{' || c == '}')
            .split(',')
            .map(|s| s.trim().trim_matches('\'').to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let rows = query_rows(
        ctx,
        "select cast(oid as varchar), cast(prorettype as varchar), cast(proretset as varchar), \
         proargtypes, proargnames, proallargtypes, proargmodes from pg_catalog.pg_proc",
    )
    .await?;
    let mut signatures = HashMap::new();
    for row in rows {
        let Some(oid) = row[0].as_deref().and_then(|o| o.parse::<i32>().ok()) else {
            continue;
        };
        let names = list(&row[4]);
        let modes = list(&row[6]);
        let all_types = list(&row[5]);
        let (arg_types, arg_modes): (Vec<String>, Vec<String>) = if all_types.is_empty() {
            let types: Vec<String> = row[3]
                .as_deref()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect();
            let modes = vec!["i".to_string(); types.len()];
            (types, modes)
        } else {
            (all_types, modes)
        };
        let mut arguments = vec![];
        let mut table = vec![];
        for (i, oid) in arg_types.iter().enumerate() {
            let mode = arg_modes.get(i).map(String::as_str).unwrap_or("i");
            let name = names.get(i).filter(|n| !n.is_empty());
            let typed = match name {
                Some(name) => format!("{name} {}", type_name(oid)),
                None => type_name(oid),
            };
            match mode {
                "t" => table.push(typed),
                "o" => arguments.push(format!("OUT {typed}")),
                "b" => arguments.push(format!("INOUT {typed}")),
                "v" => arguments.push(format!("VARIADIC {typed}")),
                _ => arguments.push(typed),
            }
        }
        let returns_set = row[2].as_deref() == Some("true");
        let result = if !table.is_empty() {
            format!("TABLE({})", table.join(", "))
        } else {
            let name = type_name(row[1].as_deref().unwrap_or(""));
            if returns_set {
                format!("SETOF {name}")
            } else {
                name
            }
        };
        signatures.insert(
            oid,
            FunctionSignature {
                result,
                arguments: arguments.join(", "),
            },
        );
    }
    Ok(signatures)
}

pub(super) async fn query_rows(
    ctx: &SessionContext,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>> {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let batches = ctx.sql(sql).await?.collect().await?;
    let mut rows = vec![];
    let options = FormatOptions::default();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::DataFusion(e.into()))?;
        for i in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| c.is_valid(i).then(|| f.value(i).to_string()))
                    .collect(),
            );
        }
    }
    Ok(rows)
}

/// A function of a `pg_proc` oid answered from the signatures.
pub(super) fn signature_udf(
    name: &str,
    signatures: &Arc<HashMap<i32, FunctionSignature>>,
    part: fn(&FunctionSignature) -> &String,
) -> ScalarUDF {
    let signatures = Arc::clone(signatures);
    create_udf(
        name,
        vec![DataType::Int32],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let lookup = |oid: Option<i32>| {
                oid.and_then(|oid| signatures.get(&oid))
                    .map(|s| part(s).clone())
            };
            Ok(match &args[0] {
                ColumnarValue::Scalar(ScalarValue::Int32(oid)) => {
                    ColumnarValue::Scalar(ScalarValue::Utf8(lookup(*oid)))
                }
                ColumnarValue::Scalar(_) => ColumnarValue::Scalar(ScalarValue::Utf8(None)),
                ColumnarValue::Array(array) => {
                    let oids = array.as_primitive::<Int32Type>();
                    ColumnarValue::Array(Arc::new(StringArray::from_iter(oids.iter().map(lookup))))
                }
            })
        }),
    )
}

/// What `version()` answers, in the form Postgres clients parse (`PostgreSQL 16.6 ...`):
/// SQLAlchemy and others read the server version from it.
pub(super) fn version_text() -> String {
    format!(
        "PostgreSQL {PG_SERVER_VERSION} (Ember {}, Apache DataFusion {}) on {}-{}",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION,
        std::env::consts::ARCH,
        std::env::consts::OS,
    )
}
