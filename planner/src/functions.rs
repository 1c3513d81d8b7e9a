//! Functions Ember adds to every planner and executor session, so fragments that use them can
//! run on any executor.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

/// Registers Ember's functions with a session or an executor's base state.
pub fn register(registry: &mut dyn FunctionRegistry) -> Result<()> {
    registry.register_udf(Arc::new(ScalarUDF::from(CheckLength::new())))?;
    registry.register_udf(Arc::new(ScalarUDF::from(CheckNotNull::new())))?;
    Ok(())
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
}
