//! Functions Ember adds to every planner and executor session, so fragments that use them can
//! run on any executor.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

/// Registers Ember's functions with a session or an executor's base state, and bounds the
/// built-in functions whose output size an argument chooses (`repeat`, `lpad`, `rpad`).
pub fn register(registry: &mut dyn FunctionRegistry) -> Result<()> {
    registry.register_udf(Arc::new(ScalarUDF::from(CheckLength::new())))?;
    registry.register_udf(Arc::new(ScalarUDF::from(CheckNotNull::new())))?;
    for (name, rule) in [
        ("repeat", OutputRule::Repeat),
        ("lpad", OutputRule::Pad),
        ("rpad", OutputRule::Pad),
    ] {
        if let Ok(inner) = registry.udf(name) {
            registry.register_udf(Arc::new(ScalarUDF::from(BoundedOutput { inner, rule })))?;
        }
    }
    Ok(())
}

/// The largest string `repeat`, `lpad` or `rpad` may produce per value, in bytes: a count
/// written in a query must not size an allocation unchecked (PostgreSQL stops at 1 GB with
/// "requested length too large").
pub const MAX_GENERATED_BYTES: u64 = 64 << 20;

/// How a function's arguments size its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum OutputRule {
    /// `repeat(s, n)`: bytes of `s` times `n`.
    Repeat,
    /// `lpad(s, n [, fill])`, `rpad`: `n` characters, up to 4 bytes each.
    Pad,
}

/// A built-in function whose output size is checked against [`MAX_GENERATED_BYTES`] before it
/// runs; otherwise the function itself.
#[derive(Debug)]
struct BoundedOutput {
    inner: Arc<ScalarUDF>,
    rule: OutputRule,
}

impl PartialEq for BoundedOutput {
    fn eq(&self, other: &Self) -> bool {
        self.inner.name() == other.inner.name() && self.rule == other.rule
    }
}

impl Eq for BoundedOutput {}

impl std::hash::Hash for BoundedOutput {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.name().hash(state);
        self.rule.hash(state);
    }
}

impl BoundedOutput {
    /// The largest output of any row, in bytes (an upper bound for padding).
    fn largest_output(&self, args: &[ColumnarValue]) -> u64 {
        // One pass over each argument: counts (negative and NULL count as 0) and string bytes,
        // a single value when the argument is a constant.
        let counts: Vec<u64> = match args.get(1) {
            Some(ColumnarValue::Scalar(scalar)) => vec![
                scalar
                    .cast_to(&DataType::Int64)
                    .ok()
                    .and_then(|v| match v {
                        ScalarValue::Int64(n) => n,
                        _ => None,
                    })
                    .map_or(0, |n| n.max(0) as u64),
            ],
            Some(ColumnarValue::Array(array)) => match cast(array, &DataType::Int64) {
                Ok(counts) => counts
                    .as_primitive::<Int64Type>()
                    .iter()
                    .map(|n| n.map_or(0, |n| n.max(0) as u64))
                    .collect(),
                Err(_) => vec![0],
            },
            None => vec![0],
        };
        let most = |values: &[u64]| values.iter().copied().max().unwrap_or(0);
        match self.rule {
            OutputRule::Pad => most(&counts).saturating_mul(4),
            OutputRule::Repeat => {
                let lengths: Vec<u64> = match args.first() {
                    Some(ColumnarValue::Scalar(scalar)) => {
                        vec![scalar.try_as_str().flatten().map_or(0, |s| s.len() as u64)]
                    }
                    Some(ColumnarValue::Array(array)) => strings(array)
                        .map(|s| s.map_or(0, |s| s.len() as u64))
                        .collect(),
                    None => vec![0],
                };
                if counts.len() == 1 || lengths.len() == 1 {
                    // One side is a constant: the longest string times the largest count.
                    most(&lengths).saturating_mul(most(&counts))
                } else {
                    lengths
                        .iter()
                        .zip(&counts)
                        .map(|(length, count)| length.saturating_mul(*count))
                        .max()
                        .unwrap_or(0)
                }
            }
        }
    }
}

impl ScalarUDFImpl for BoundedOutput {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        self.inner.return_type(args)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let largest = self.largest_output(&args.args);
        if largest > MAX_GENERATED_BYTES {
            let what = match self.rule {
                OutputRule::Repeat => format!("the result of {}() ({largest} bytes)", self.name()),
                OutputRule::Pad => format!(
                    "the result of {}() (up to {largest} bytes for {} characters)",
                    self.name(),
                    largest / 4
                ),
            };
            return Err(crate::Error::LimitExceeded {
                what,
                limit: MAX_GENERATED_BYTES,
            }
            .into_datafusion());
        }
        self.inner.invoke_with_args(args)
    }
}

/// `ember_check_length(value, max, type_name)`: the value itself, or an error naming the type
/// when a value has more than `max` characters — what PostgreSQL does when a `varchar(n)` or
/// `char(n)` column is written. Trailing spaces beyond `max` are allowed for `character(n)`,
/// as PostgreSQL allows them.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CheckLength {
    signature: Signature,
}

impl CheckLength {
    /// The function's name in SQL and in task fragments.
    pub const NAME: &str = "ember_check_length";

    /// The function (one instance serves every column).
    pub fn new() -> Self {
        Self {
            signature: Signature::any(3, Volatility::Immutable),
        }
    }
}

impl Default for CheckLength {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for CheckLength {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args.first() {
            Some(
                t @ (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null),
            ) => Ok(t.clone()),
            other => plan_err!("{} takes a string, not {other:?}", Self::NAME),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [value, max, type_name] = args.args.as_slice() else {
            return exec_err!("{} takes 3 arguments", Self::NAME);
        };
        let (
            ColumnarValue::Scalar(ScalarValue::Int64(Some(max))),
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(type_name))),
        ) = (max, type_name)
        else {
            return exec_err!("{} takes a constant length and type name", Self::NAME);
        };
        let max = usize::try_from(*max).unwrap_or(0);
        let padded = type_name.starts_with("character(");
        let fits = |s: &str| {
            let s = if padded { s.trim_end_matches(' ') } else { s };
            // Bytes bound characters from above: most values need no count.
            s.len() <= max || s.chars().count() <= max
        };
        let all_fit = match value {
            ColumnarValue::Scalar(scalar) => match scalar.try_as_str() {
                Some(Some(s)) => fits(s),
                _ => true,
            },
            ColumnarValue::Array(array) => strings(array).all(|s| s.is_none_or(fits)),
        };
        if !all_fit {
            return Err(crate::Error::ValueTooLong {
                type_name: type_name.clone(),
            }
            .into_datafusion());
        }
        Ok(value.clone())
    }
}

/// `ember_check_not_null(value, column)`: the value itself, or PostgreSQL's not-null violation
/// (SQLSTATE 23502) naming the column when a value is NULL. Writes to columns declared NOT NULL
/// (and to primary keys) go through it, so the error is typed wherever the write runs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CheckNotNull {
    signature: Signature,
}

impl CheckNotNull {
    /// The function's name in SQL and in task fragments.
    pub const NAME: &str = "ember_check_not_null";

    /// The function (one instance serves every column).
    pub fn new() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl Default for CheckNotNull {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for CheckNotNull {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args.first() {
            Some(data_type) => Ok(data_type.clone()),
            None => plan_err!("{} takes a value and a column name", Self::NAME),
        }
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let Some(value) = args.arg_fields.first() else {
            return plan_err!("{} takes a value and a column name", Self::NAME);
        };
        // What passes is never NULL.
        Ok(Arc::new(value.as_ref().clone().with_nullable(false)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [
            value,
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(column))),
        ] = args.args.as_slice()
        else {
            return exec_err!("{} takes a value and a constant column name", Self::NAME);
        };
        let has_null = match value {
            ColumnarValue::Scalar(scalar) => scalar.is_null(),
            ColumnarValue::Array(array) => array.null_count() > 0,
        };
        if has_null {
            return Err(crate::Error::NotNullViolation {
                column: column.clone(),
            }
            .into_datafusion());
        }
        Ok(value.clone())
    }
}

fn strings(array: &ArrayRef) -> Box<dyn Iterator<Item = Option<&str>> + '_> {
    match array.data_type() {
        DataType::Utf8 => Box::new(array.as_string::<i32>().iter()),
        DataType::LargeUtf8 => Box::new(array.as_string::<i64>().iter()),
        DataType::Utf8View => Box::new(array.as_string_view().iter()),
        _ => Box::new(std::iter::repeat_n(None, array.len())),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::Field;
    use datafusion::config::ConfigOptions;

    use super::*;

    fn check(values: Vec<Option<&str>>, max: i64, type_name: &str) -> Result<ColumnarValue> {
        let array: ArrayRef = Arc::new(StringArray::from(values));
        let args = vec![
            ColumnarValue::Array(Arc::clone(&array)),
            ColumnarValue::Scalar(ScalarValue::Int64(Some(max))),
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(type_name.into()))),
        ];
        CheckLength::new().invoke_with_args(ScalarFunctionArgs {
            args,
            arg_fields: vec![
                Arc::new(Field::new("v", DataType::Utf8, true)),
                Arc::new(Field::new("n", DataType::Int64, false)),
                Arc::new(Field::new("t", DataType::Utf8, false)),
            ],
            number_rows: array.len(),
            return_field: Arc::new(Field::new("v", DataType::Utf8, true)),
            config_options: Arc::new(ConfigOptions::default()),
        })
    }

    #[test]
    fn values_within_the_length_pass_unchanged() {
        let out = check(
            vec![Some("abc"), None, Some("äöü")],
            3,
            "character varying(3)",
        )
        .expect("fits");
        let ColumnarValue::Array(array) = out else {
            panic!("an array")
        };
        assert_eq!(array.as_string::<i32>().value(2), "äöü");
    }

    #[test]
    fn a_longer_value_fails_with_postgres_wording() {
        let error =
            check(vec![Some("ab"), Some("abcd")], 3, "character varying(3)").expect_err("too long");
        assert!(
            error
                .to_string()
                .contains("value too long for type character varying(3)"),
            "{error}"
        );
    }

    #[test]
    fn character_allows_trailing_spaces() {
        check(vec![Some("ab     ")], 2, "character(2)").expect("spaces are trimmed");
        check(vec![Some("ab     ")], 2, "character varying(2)").expect_err("not for varchar");
    }

    fn bounded(name: &str) -> ScalarUDF {
        let mut state = datafusion::execution::SessionStateBuilder::new()
            .with_default_features()
            .build();
        register(&mut state).expect("register");
        state.scalar_functions()[name].as_ref().clone()
    }

    fn call(udf: &ScalarUDF, args: Vec<ColumnarValue>, rows: usize) -> Result<ColumnarValue> {
        let arg_fields = args
            .iter()
            .enumerate()
            .map(|(i, a)| Arc::new(Field::new(format!("a{i}"), a.data_type(), true)))
            .collect();
        udf.invoke_with_args(ScalarFunctionArgs {
            args,
            arg_fields,
            number_rows: rows,
            return_field: Arc::new(Field::new("r", DataType::Utf8, true)),
            config_options: Arc::new(ConfigOptions::default()),
        })
    }

    #[test]
    fn generated_strings_are_bounded_before_they_are_allocated() {
        let repeat = bounded("repeat");
        let text = |s: &str| ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.into())));
        let int = |n: i64| ColumnarValue::Scalar(ScalarValue::Int64(Some(n)));
        let ColumnarValue::Scalar(small) = call(&repeat, vec![text("ab"), int(3)], 1).unwrap()
        else {
            panic!("a scalar")
        };
        assert_eq!(small.try_as_str().flatten(), Some("ababab"));
        for (udf, args) in [
            ("repeat", vec![text("x"), int(100_000_000_000)]),
            ("repeat", vec![text("xy"), int(i64::MAX)]),
            ("lpad", vec![text("x"), int(2_147_483_647)]),
            ("rpad", vec![text("x"), int(100_000_000), text("ab")]),
        ] {
            let error = call(&bounded(udf), args, 1).expect_err(udf).to_string();
            assert!(error.contains("is limited to 67108864"), "{udf}: {error}");
        }
        // Per row: a long string repeated once and a short one repeated often both fit.
        let strings: ArrayRef = Arc::new(StringArray::from(vec!["x".repeat(1000), "y".into()]));
        let counts: ArrayRef = Arc::new(datafusion::arrow::array::Int64Array::from(vec![1, 1000]));
        call(
            &repeat,
            vec![ColumnarValue::Array(strings), ColumnarValue::Array(counts)],
            2,
        )
        .expect("each row fits");
        call(&bounded("lpad"), vec![text("x"), int(1000)], 1).expect("fits");
    }
}
