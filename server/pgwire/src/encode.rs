//! Arrow → Postgres: each Arrow type maps to the Postgres type drivers decode natively, and values
//! are encoded through pgwire's typed encoders (text format now, binary-ready).

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, new_null_array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::*;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use pg_interval::Interval;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use rust_decimal::Decimal;

use ember_coordinator::declared::{DeclaredString, TYPE_METADATA};

/// Field metadata naming the Postgres type a column is sent as, where its Arrow type alone
/// would say otherwise: [`INT2VECTOR`] for a list of int2 that pg_catalog has as `int2vector`,
/// and the declared type of a managed table's string column (`varchar(20)`, `bpchar(1)`; the
/// engine keeps those under this key).
pub(crate) const PG_TYPE_METADATA: &str = TYPE_METADATA;
pub(crate) const INT2VECTOR: &str = "int2vector";

/// The Postgres type and type modifier (-1: none) a column of `field` is sent with.
pub(crate) fn column_type(field: &Field) -> (Type, i32) {
    let declared = field.metadata().get(PG_TYPE_METADATA).map(String::as_str);
    match (field.data_type(), declared) {
        (DataType::List(element), Some(INT2VECTOR)) if *element.data_type() == DataType::Int16 => {
            (Type::INT2_VECTOR, -1)
        }
        (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, Some(declared)) => {
            match DeclaredString::parse(declared) {
                Some(declared) => declared_type(declared),
                None => (Type::TEXT, -1),
            }
        }
        // Postgres packs numeric(p, s) as ((p << 16) | s) + 4.
        (DataType::Decimal128(p, s) | DataType::Decimal256(p, s), _) if *s >= 0 => (
            Type::NUMERIC,
            ((i32::from(*p) << 16) | i32::from(*s as u8)) + 4,
        ),
        (data_type, _) => (pg_type(data_type), -1),
    }
}

/// The Postgres type and type modifier of a declared `varchar`/`char` column.
fn declared_type(declared: DeclaredString) -> (Type, i32) {
    let typmod = |n: u32| i32::try_from(n).map_or(-1, |n| n.saturating_add(4));
    match declared {
        DeclaredString::Varchar(None) => (Type::VARCHAR, -1),
        DeclaredString::Varchar(Some(n)) => (Type::VARCHAR, typmod(n)),
        DeclaredString::Char(n) => (Type::BPCHAR, typmod(n)),
    }
}

/// The Postgres type a column of `data_type` is sent as.
pub(crate) fn pg_type(data_type: &DataType) -> Type {
    match data_type {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 => Type::INT8,
        DataType::UInt64 | DataType::Decimal32(..) | DataType::Decimal64(..) => Type::NUMERIC,
        DataType::Decimal128(..) | DataType::Decimal256(..) => Type::NUMERIC,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Type::TEXT,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Type::BYTEA,
        DataType::FixedSizeBinary(_) => Type::BYTEA,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Time32(_) | DataType::Time64(_) => Type::TIME,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Dictionary(_, value) => pg_type(value),
        DataType::Interval(_) => Type::INTERVAL,
        DataType::List(element)
        | DataType::LargeList(element)
        | DataType::ListView(element)
        | DataType::FixedSizeList(element, _) => match array_element(element.data_type()) {
            Some(element) => array_type(&element),
            None => Type::TEXT,
        },
        _ => Type::TEXT,
    }
}

/// The element type a list of `data_type` is sent with, when Postgres has an array of it.
fn array_element(data_type: &DataType) -> Option<DataType> {
    Some(match data_type {
        DataType::Boolean => DataType::Boolean,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => DataType::Int16,
        DataType::Int32 | DataType::UInt16 => DataType::Int32,
        DataType::Int64 | DataType::UInt32 => DataType::Int64,
        DataType::Float16 | DataType::Float32 => DataType::Float32,
        DataType::Float64 => DataType::Float64,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::Date32 | DataType::Date64 => DataType::Date32,
        _ => return None,
    })
}

fn array_type(element: &DataType) -> Type {
    match element {
        DataType::Boolean => Type::BOOL_ARRAY,
        DataType::Int16 => Type::INT2_ARRAY,
        DataType::Int32 => Type::INT4_ARRAY,
        DataType::Int64 => Type::INT8_ARRAY,
        DataType::Float32 => Type::FLOAT4_ARRAY,
        DataType::Float64 => Type::FLOAT8_ARRAY,
        DataType::Date32 => Type::DATE_ARRAY,
        _ => Type::TEXT_ARRAY,
    }
}

/// Column descriptions for a result schema, each column in the format the client asked for and
/// named as `names` says where it names one (PostgreSQL's names of unnamed columns).
pub(crate) fn fields(
    schema: &Schema,
    format: &Format,
    names: Option<&[Option<String>]>,
) -> Vec<FieldInfo> {
    let names = names.filter(|n| n.len() == schema.fields().len());
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let (data_type, modifier) = column_type(field);
            let name = names
                .and_then(|n| n[i].clone())
                .unwrap_or_else(|| field.name().clone());
            let info = FieldInfo::new(name, None, None, data_type, format.format_for(i));
            if modifier == -1 {
                info
            } else {
                info.with_type_modifier(modifier)
            }
        })
        .collect()
}

/// Encodes every row of `batch` as a DataRow.
pub(crate) fn encode_batch(
    batch: &RecordBatch,
    fields: &Arc<Vec<FieldInfo>>,
) -> PgWireResult<Vec<DataRow>> {
    let columns: Vec<Column> = batch
        .columns()
        .iter()
        .zip(fields.iter())
        .map(|(array, field)| Column::try_new(array, field))
        .collect::<PgWireResult<_>>()?;
    let mut encoder = DataRowEncoder::new(Arc::clone(fields));
    let mut rows = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        for column in &columns {
            column.encode(row, &mut encoder)?;
        }
        rows.push(encoder.take_row());
    }
    Ok(rows)
}

/// A column prepared for row-wise encoding: casts done once per batch.
struct Column {
    array: ArrayRef,
    formatter_text: Option<Vec<Option<String>>>,
    format: FieldFormat,
}

fn arrow_err(e: impl std::fmt::Display) -> PgWireError {
    PgWireError::ApiError(Box::new(std::io::Error::other(e.to_string())))
}

impl Column {
    fn try_new(array: &ArrayRef, field: &FieldInfo) -> PgWireResult<Self> {
        let format = field.format();
        let array = match array.data_type() {
            DataType::Dictionary(_, value) => cast(array, value).map_err(arrow_err)?,
            DataType::LargeUtf8 | DataType::Utf8View => {
                cast(array, &DataType::Utf8).map_err(arrow_err)?
            }
            DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
                cast(array, &DataType::Binary).map_err(arrow_err)?
            }
            DataType::Date64 => cast(array, &DataType::Date32).map_err(arrow_err)?,
            DataType::Time32(_) | DataType::Time64(TimeUnit::Nanosecond) => {
                cast(array, &DataType::Time64(TimeUnit::Microsecond)).map_err(arrow_err)?
            }
            DataType::Timestamp(unit, tz) if *unit != TimeUnit::Microsecond => cast(
                array,
                &DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
            )
            .map_err(arrow_err)?,
            DataType::Float16 => cast(array, &DataType::Float32).map_err(arrow_err)?,
            DataType::Decimal32(p, s) | DataType::Decimal64(p, s) => {
                cast(array, &DataType::Decimal128(*p, *s)).map_err(arrow_err)?
            }
            DataType::Interval(unit) if *unit != IntervalUnit::MonthDayNano => {
                cast(array, &DataType::Interval(IntervalUnit::MonthDayNano)).map_err(arrow_err)?
            }
            DataType::List(element)
            | DataType::LargeList(element)
            | DataType::ListView(element)
            | DataType::FixedSizeList(element, _) => match array_element(element.data_type()) {
                // One list layout with one element type per Postgres array type.
                Some(target) => cast(
                    array,
                    &DataType::List(Arc::new(Field::new_list_field(target, true))),
                )
                .map_err(arrow_err)?,
                None => Arc::clone(array),
            },
            // A NullArray has no validity buffer, so its rows would read as valid: every value
            // of the Null type is NULL.
            DataType::Null => new_null_array(&DataType::Utf8, array.len()),
            _ => Arc::clone(array),
        };
        // int2vector's text form is its numbers separated by spaces; in binary it is an int2
        // array, as the list goes anyway.
        let formatter_text = if *field.datatype() == Type::INT2_VECTOR
            && format == FieldFormat::Text
        {
            let lists = array.as_list::<i32>();
            Some(
                (0..lists.len())
                    .map(|i| {
                        lists.is_valid(i).then(|| {
                            let values = lists.value(i);
                            let values = values.as_primitive::<Int16Type>();
                            values
                                .iter()
                                .map(|v| v.map_or_else(String::new, |v| v.to_string()))
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                    })
                    .collect(),
            )
        } else if native(array.data_type()) {
            None
        } else {
            let options = FormatOptions::default().with_null("");
            let formatter = ArrayFormatter::try_new(array.as_ref(), &options).map_err(arrow_err)?;
            Some(
                (0..array.len())
                    .map(|i| array.is_valid(i).then(|| formatter.value(i).to_string()))
                    .collect(),
            )
        };
        Ok(Self {
            array,
            formatter_text,
            format,
        })
    }

    fn encode(&self, row: usize, encoder: &mut DataRowEncoder) -> PgWireResult<()> {
        if let Some(text) = &self.formatter_text {
            return encoder.encode_field(&text[row]);
        }
        let array = &self.array;
        let valid = array.is_valid(row);
        macro_rules! prim {
            ($t:ty, $conv:expr) => {{
                let values = array.as_primitive::<$t>();
                let value = valid.then(|| $conv(values.value(row)));
                encoder.encode_field(&value)
            }};
        }
        match array.data_type() {
            DataType::Boolean => {
                let value = valid.then(|| array.as_boolean().value(row));
                encoder.encode_field(&value)
            }
            DataType::Int8 => prim!(Int8Type, i16::from),
            DataType::Int16 => prim!(Int16Type, |v: i16| v),
            DataType::UInt8 => prim!(UInt8Type, i16::from),
            DataType::Int32 => prim!(Int32Type, |v: i32| v),
            DataType::UInt16 => prim!(UInt16Type, i32::from),
            DataType::Int64 => prim!(Int64Type, |v: i64| v),
            DataType::UInt32 => prim!(UInt32Type, i64::from),
            DataType::UInt64 => prim!(UInt64Type, Decimal::from),
            DataType::Float32 => prim!(Float32Type, |v: f32| v),
            DataType::Float64 => prim!(Float64Type, |v: f64| v),
            DataType::Decimal128(_, scale) => {
                let values = array.as_primitive::<Decimal128Type>();
                let value = valid.then(|| decimal(values.value(row), *scale));
                match value {
                    Some(Err(text)) => encoder.encode_field(&Some(text)),
                    Some(Ok(d)) => encoder.encode_field(&Some(d)),
                    None => encoder.encode_field(&None::<Decimal>),
                }
            }
            DataType::Utf8 => {
                let value = valid.then(|| array.as_string::<i32>().value(row));
                encoder.encode_field(&value)
            }
            DataType::Binary => {
                let value = valid.then(|| array.as_binary::<i32>().value(row));
                encoder.encode_field(&value)
            }
            DataType::Date32 => prim!(Date32Type, date),
            DataType::Time64(_) => prim!(Time64MicrosecondType, |v: i64| {
                NaiveTime::from_num_seconds_from_midnight_opt(
                    (v / 1_000_000) as u32,
                    ((v % 1_000_000) * 1000) as u32,
                )
                .unwrap_or_default()
            }),
            DataType::Interval(IntervalUnit::MonthDayNano) => {
                let values = array.as_primitive::<IntervalMonthDayNanoType>();
                let value = valid.then(|| {
                    let v = values.value(row);
                    Interval::new(v.months, v.days, v.nanoseconds / 1000)
                });
                encoder.encode_field(&value)
            }
            DataType::List(element) => {
                let lists = array.as_list::<i32>();
                let items = valid.then(|| lists.value(row));
                macro_rules! items {
                    ($t:ty) => {{
                        let value = items
                            .map(|items| items.as_primitive::<$t>().iter().collect::<Vec<_>>());
                        encoder.encode_field(&value)
                    }};
                }
                match element.data_type() {
                    DataType::Boolean => {
                        let value =
                            items.map(|items| items.as_boolean().iter().collect::<Vec<_>>());
                        encoder.encode_field(&value)
                    }
                    DataType::Int16 => items!(Int16Type),
                    DataType::Int32 => items!(Int32Type),
                    DataType::Int64 => items!(Int64Type),
                    DataType::Float32 => items!(Float32Type),
                    DataType::Float64 => items!(Float64Type),
                    DataType::Date32 => {
                        let value = items.map(|items| {
                            items
                                .as_primitive::<Date32Type>()
                                .iter()
                                .map(|d| d.map(date))
                                .collect::<Vec<_>>()
                        });
                        encoder.encode_field(&value)
                    }
                    _ => {
                        let value = items.map(|items| {
                            items
                                .as_string::<i32>()
                                .iter()
                                .map(|s| s.map(str::to_string))
                                .collect::<Vec<_>>()
                        });
                        encoder.encode_field(&value)
                    }
                }
            }
            DataType::Timestamp(_, tz) if self.format == FieldFormat::Text => {
                // As PostgreSQL prints them: no fraction when it is zero, the zone as +00.
                let values = array.as_primitive::<TimestampMicrosecondType>();
                let value = valid.then(|| postgres_timestamp(values.value(row), tz.is_some()));
                encoder.encode_field(&value)
            }
            DataType::Timestamp(_, None) => prim!(TimestampMicrosecondType, |v: i64| {
                DateTime::<Utc>::from_timestamp_micros(v)
                    .map(|t| t.naive_utc())
                    .unwrap_or(NaiveDateTime::MIN)
            }),
            DataType::Timestamp(_, Some(_)) => prim!(TimestampMicrosecondType, |v: i64| {
                DateTime::<Utc>::from_timestamp_micros(v).unwrap_or(DateTime::<Utc>::MIN_UTC)
            }),
            other => Err(arrow_err(format!("cannot encode {other}"))),
        }
    }
}

/// A Date32 (days since 1970-01-01) as a calendar date.
fn date(days: i32) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(days + 719_163).unwrap_or_default()
}

/// A timestamp in microseconds as PostgreSQL's text output writes it (UTC for `with_zone`).
fn postgres_timestamp(micros: i64, with_zone: bool) -> String {
    let Some(time) = DateTime::<Utc>::from_timestamp_micros(micros) else {
        return micros.to_string();
    };
    let mut text = time.format("%Y-%m-%d %H:%M:%S").to_string();
    let fraction = micros.rem_euclid(1_000_000);
    if fraction != 0 {
        let digits = format!(".{fraction:06}");
        text.push_str(digits.trim_end_matches('0'));
    }
    if with_zone {
        text.push_str("+00");
    }
    text
}

/// Types encoded from typed values; everything else goes through Arrow's formatter as text.
fn native(data_type: &DataType) -> bool {
    if let DataType::List(element) = data_type {
        return array_element(element.data_type()).as_ref() == Some(element.data_type());
    }
    matches!(
        data_type,
        DataType::Interval(IntervalUnit::MonthDayNano)
            | DataType::Boolean
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal128(..)
            | DataType::Utf8
            | DataType::Binary
            | DataType::Date32
            | DataType::Time64(TimeUnit::Microsecond)
            | DataType::Timestamp(TimeUnit::Microsecond, _)
    )
}

/// A Decimal128 as rust_decimal, or as exact text when it does not fit in 96 bits.
fn decimal(value: i128, scale: i8) -> Result<Decimal, String> {
    if scale >= 0
        && let Ok(d) = Decimal::try_from_i128_with_scale(value, scale as u32)
    {
        return Ok(d);
    }
    Err(Decimal128Type::format_decimal(value, 38, scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_their_scale() {
        assert_eq!(decimal(12345, 2).unwrap().to_string(), "123.45");
        assert_eq!(decimal(-5, 3).unwrap().to_string(), "-0.005");
        assert_eq!(
            decimal(i128::MAX / 10, 2).unwrap_err(),
            "170141183460469231731687303715884105.72"
        );
    }

    #[test]
    fn timestamps_print_as_postgres_does() {
        assert_eq!(postgres_timestamp(0, false), "1970-01-01 00:00:00");
        assert_eq!(
            postgres_timestamp(1_500_000, true),
            "1970-01-01 00:00:01.5+00"
        );
        assert_eq!(postgres_timestamp(-1, false), "1969-12-31 23:59:59.999999");
    }

    #[test]
    fn types_map_to_postgres() {
        assert_eq!(pg_type(&DataType::Int64), Type::INT8);
        assert_eq!(pg_type(&DataType::Decimal128(15, 2)), Type::NUMERIC);
        assert_eq!(pg_type(&DataType::Utf8View), Type::TEXT);
        assert_eq!(
            pg_type(&DataType::Timestamp(
                TimeUnit::Microsecond,
                Some("UTC".into())
            )),
            Type::TIMESTAMPTZ
        );
    }
}
