//! Committing what executors wrote: `add` actions (with the statistics Delta readers prune by)
//! for parquet files already in the table's storage, and transactions of adds and removes
//! committed with Delta's optimistic concurrency.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::datatypes::{DataType as ArrowType, Field, Schema};
use datafusion::common::ScalarValue;
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::error::{DataFusionError, Result};
use datafusion::object_store::ObjectMeta;
use datafusion::object_store::ObjectStore;
use datafusion::object_store::path::Path as StorePath;
use datafusion::parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use datafusion::parquet::file::metadata::ParquetMetaData;
use deltalake_core::delta_datafusion::DataFusionMixins;
use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake_core::kernel::{Action, Add, DataType, StructField, StructType};
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Map, Value};
use url::Url;

use crate::library_error;

/// Field metadata naming the Arrow type of a column Delta has no type for (time of day,
/// intervals, durations): the log calls it a string, Ember's files hold the Arrow type.
pub const ARROW_TYPE_METADATA: &str = "ember.arrow_type";

/// Bounds of string columns are kept to this many characters (a longer maximum is left out:
/// its prefix would not bound it).
const STRING_BOUND_CHARS: usize = 32;

/// Why a commit did not happen.
#[derive(Debug)]
pub enum CommitError {
    /// Another transaction changed what this one read: retrying the statement may succeed.
    Conflict(String),
    /// Anything else.
    Failed(DataFusionError),
}

impl From<DataFusionError> for CommitError {
    fn from(error: DataFusionError) -> Self {
        CommitError::Failed(error)
    }
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitError::Conflict(message) => write!(f, "{message}"),
            CommitError::Failed(error) => write!(f, "{error}"),
        }
    }
}

/// The Delta schema of an Arrow schema. Columns whose types Delta lacks are logged as strings
/// carrying [`ARROW_TYPE_METADATA`]; timestamps in a zone other than UTC as timestamps (an
/// Arrow timestamp is an instant whatever its zone).
pub fn delta_schema(schema: &Schema) -> Result<StructType> {
    let fields = schema.fields().iter().map(|field| delta_field(field));
    StructType::try_new(fields).map_err(library_error)
}

fn delta_field(field: &Field) -> StructField {
    if let Ok(converted) = TryIntoKernel::<StructField>::try_into_kernel(field) {
        return converted;
    }
    match field.data_type() {
        ArrowType::Timestamp(_, Some(_)) => {
            StructField::new(field.name(), DataType::TIMESTAMP, field.is_nullable())
        }
        other => StructField::new(field.name(), DataType::STRING, field.is_nullable())
            .with_metadata([(ARROW_TYPE_METADATA.to_string(), other.to_string())]),
    }
}

/// Commits new nullable columns `fields` (after the table's own) to the table's schema, as
/// the library's ADD COLUMN does: existing files hold none of them, which reads as NULL.
pub async fn add_columns(table: DeltaTable, fields: &[Field]) -> Result<DeltaTable> {
    if let Some(field) = fields.iter().find(|f| !f.is_nullable()) {
        return Err(DataFusionError::Plan(format!(
            "column {} must allow NULL: rows already in the table have no value for it",
            field.name()
        )));
    }
    let added: Vec<StructField> = fields.iter().map(delta_field).collect();
    table
        .add_columns()
        .with_fields(added)
        .await
        .map_err(library_error)
}

/// Whether the log's statistics of `field` describe its values: not for columns logged as
/// another type.
pub fn has_delta_type(field: &Field) -> bool {
    TryIntoKernel::<StructField>::try_into_kernel(field).is_ok()
        || matches!(field.data_type(), ArrowType::Timestamp(_, Some(_)))
}

/// Parquet footers read at once when files are added.
const FOOTER_READS: usize = 16;

/// A parquet file in a table's storage: its path relative to the table, and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// Relative to the table's root, as the object store names it (a partition directory's
    /// value percent-encoded, as the store writes it).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The `add` actions of parquet files the table at `url` holds, with the statistics their
/// footers give: rows, and the bounds and null counts of the top-level columns of
/// `file_schema`. Footers are read a few at a time.
pub async fn add_actions(
    store: Arc<dyn ObjectStore>,
    url: &Url,
    files: &[WrittenFile],
    file_schema: &Schema,
) -> Result<Vec<Add>> {
    let root = StorePath::from_url_path(url.path()).map_err(library_error)?;
    let file_schema = Arc::new(file_schema.clone());
    // Each read owns what it reads (the stream holds the futures while others run).
    let reads: Vec<_> = files
        .iter()
        .map(|file| {
            add_action(
                Arc::clone(&store),
                root.clone(),
                file.clone(),
                Arc::clone(&file_schema),
            )
        })
        .collect();
    futures::stream::iter(reads)
        .buffered(FOOTER_READS)
        .try_collect()
        .await
}

async fn add_action(
    store: Arc<dyn ObjectStore>,
    root: StorePath,
    file: WrittenFile,
    file_schema: Arc<Schema>,
) -> Result<Add> {
    let location: StorePath = root
        .parts()
        .chain(StorePath::parse(&file.path)?.parts())
        .collect();
    let meta = ObjectMeta {
        location,
        last_modified: chrono::Utc::now(),
        size: file.size,
        e_tag: None,
        version: None,
    };
    let metadata = DFParquetMetadata::new(store.as_ref(), &meta)
        .fetch_metadata()
        .await?;
    let stats = file_statistics(&metadata, &file_schema)?;
    Ok(Add {
        // The object's name (the library encodes it as a URI reference in the log).
        path: file.path.clone(),
        size: file.size as i64,
        partition_values: partition_values(&file.path),
        modification_time: now_millis(),
        data_change: true,
        stats: Some(stats.to_string()),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    })
}

/// The partition values a written file's directories give (`region=eu/x.parquet`: `region` is
/// `eu`); a Hive-style null directory (or an empty value, which Delta reads as null) is a null.
fn partition_values(path: &str) -> HashMap<String, Option<String>> {
    let mut values = HashMap::new();
    let Some((dirs, _)) = path.rsplit_once('/') else {
        return values;
    };
    for dir in dirs.split('/') {
        if let Some((column, value)) = dir.split_once('=') {
            let value = percent_decode(value);
            let value = (value != crate::NULL_PARTITION && !value.is_empty()).then_some(value);
            values.insert(percent_decode(column), value);
        }
    }
    values
}

/// `%XX` escapes decoded (as partition directories are written).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Delta's per-file statistics: `numRecords`, and `minValues`, `maxValues` and `nullCount` of
/// the columns whose bounds a reader may trust.
fn file_statistics(metadata: &ParquetMetaData, file_schema: &Schema) -> Result<Value> {
    let row_groups = metadata.row_groups();
    let rows: i64 = row_groups.iter().map(|g| g.num_rows()).sum();
    let parquet_schema = metadata.file_metadata().schema_descr();
    let mut mins = Map::new();
    let mut maxes = Map::new();
    let mut nulls = Map::new();
    for field in file_schema.fields() {
        if !has_delta_type(field) || field.data_type().is_nested() {
            continue;
        }
        let Ok(converter) = StatisticsConverter::try_new(field.name(), file_schema, parquet_schema)
        else {
            continue;
        };
        let Ok(null_counts) = converter.row_group_null_counts(row_groups.iter()) else {
            continue;
        };
        if null_counts.null_count() > 0 {
            // Some row group does not say: nothing about this column is known.
            continue;
        }
        let null_count: u64 = null_counts.values().iter().sum();
        nulls.insert(field.name().clone(), Value::from(null_count));
        // Row groups of nulls only have no bounds and need none.
        let with_values: Vec<bool> = row_groups
            .iter()
            .zip(null_counts.values().iter())
            .map(|(g, n)| (*n as i64) < g.num_rows())
            .collect();
        let (Ok(min), Ok(max)) = (
            converter.row_group_mins(row_groups.iter()),
            converter.row_group_maxes(row_groups.iter()),
        ) else {
            continue;
        };
        if let Some(bound) = bound(&min, &with_values, true)?.and_then(|v| json_bound(&v, true)) {
            mins.insert(field.name().clone(), bound);
        }
        if let Some(bound) = bound(&max, &with_values, false)?.and_then(|v| json_bound(&v, false)) {
            maxes.insert(field.name().clone(), bound);
        }
    }
    let mut stats = Map::new();
    stats.insert("numRecords".into(), Value::from(rows));
    stats.insert("minValues".into(), Value::Object(mins));
    stats.insert("maxValues".into(), Value::Object(maxes));
    stats.insert("nullCount".into(), Value::Object(nulls));
    Ok(Value::Object(stats))
}

/// The least (or greatest) of the row groups' bounds; none when a row group with values has
/// no bound, or when there is no row with a value.
fn bound(values: &ArrayRef, with_values: &[bool], least: bool) -> Result<Option<ScalarValue>> {
    let mut best: Option<ScalarValue> = None;
    for (i, has_values) in with_values.iter().enumerate() {
        if !has_values {
            continue;
        }
        if i >= values.len() || values.is_null(i) {
            return Ok(None);
        }
        let value = ScalarValue::try_from_array(values, i)?;
        best = match best {
            None => Some(value),
            Some(current) => match value.partial_cmp(&current) {
                Some(std::cmp::Ordering::Less) if least => Some(value),
                Some(std::cmp::Ordering::Greater) if !least => Some(value),
                Some(_) => Some(current),
                None => return Ok(None),
            },
        };
    }
    Ok(best)
}

/// A bound as the log writes it, or none where the log's form would not bound the values:
/// floats (whose bounds may leave NaN out), long strings' maxima, decimals a double cannot
/// hold exactly. Timestamps are kept to milliseconds, rounded outwards.
fn json_bound(value: &ScalarValue, least: bool) -> Option<Value> {
    use ScalarValue as S;
    match value {
        S::Int8(Some(v)) => Some(Value::from(*v)),
        S::Int16(Some(v)) => Some(Value::from(*v)),
        S::Int32(Some(v)) => Some(Value::from(*v)),
        S::Int64(Some(v)) => Some(Value::from(*v)),
        S::UInt8(Some(v)) => Some(Value::from(*v)),
        S::UInt16(Some(v)) => Some(Value::from(*v)),
        S::UInt32(Some(v)) => Some(Value::from(*v)),
        S::UInt64(Some(v)) => i64::try_from(*v).ok().map(Value::from),
        S::Utf8(Some(v)) | S::LargeUtf8(Some(v)) | S::Utf8View(Some(v)) => {
            if v.chars().count() <= STRING_BOUND_CHARS {
                Some(Value::from(v.as_str()))
            } else if least {
                Some(Value::from(
                    v.chars().take(STRING_BOUND_CHARS).collect::<String>(),
                ))
            } else {
                None
            }
        }
        S::Date32(Some(days)) => {
            let date = chrono::DateTime::from_timestamp(i64::from(*days) * 86_400, 0)?;
            Some(Value::from(date.format("%Y-%m-%d").to_string()))
        }
        S::Decimal128(Some(v), _, scale) => {
            let scale = u32::try_from(*scale).ok()?;
            let exact = decimal_text(*v, scale);
            let double: f64 = exact.parse().ok()?;
            let back = format!("{double:.prec$}", prec = scale as usize);
            if back != exact {
                return None;
            }
            if scale == 0 {
                i64::try_from(*v).ok().map(Value::from)
            } else {
                serde_json::Number::from_f64(double).map(Value::Number)
            }
        }
        S::TimestampSecond(Some(v), zone) => {
            timestamp_bound(v.checked_mul(1_000_000)?, zone, least)
        }
        S::TimestampMillisecond(Some(v), zone) => {
            timestamp_bound(v.checked_mul(1_000)?, zone, least)
        }
        S::TimestampMicrosecond(Some(v), zone) => timestamp_bound(*v, zone, least),
        S::TimestampNanosecond(Some(v), zone) => {
            let micros = if least {
                v.div_euclid(1_000)
            } else {
                v.div_euclid(1_000) + i64::from(v.rem_euclid(1_000) != 0)
            };
            timestamp_bound(micros, zone, least)
        }
        _ => None,
    }
}

fn decimal_text(value: i128, scale: u32) -> String {
    let digits = value.unsigned_abs().to_string();
    let sign = if value < 0 { "-" } else { "" };
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{sign}{whole}.{fraction}")
}

/// A timestamp bound in milliseconds (the log's precision), rounded down for a minimum and up
/// for a maximum; with a zone as UTC (`...Z`), without one as a local date-time.
fn timestamp_bound(micros: i64, zone: &Option<Arc<str>>, least: bool) -> Option<Value> {
    let millis = if least {
        micros.div_euclid(1_000)
    } else {
        micros.div_euclid(1_000) + i64::from(micros.rem_euclid(1_000) != 0)
    };
    let time = chrono::DateTime::from_timestamp_millis(millis)?;
    let text = match zone {
        Some(_) => time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => time.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
    };
    Some(Value::from(text))
}

/// Creates the Delta table at `url` (through `store`) with the columns of `schema`, partitioned
/// by `partition_columns`, its first version holding the files of `adds`.
pub async fn create_table(
    store: Arc<dyn ObjectStore>,
    url: &Url,
    name: &str,
    schema: &Schema,
    partition_columns: Vec<String>,
    adds: Vec<Add>,
) -> Result<DeltaTable> {
    crate::register_log_stores();
    let table = DeltaTableBuilder::from_url(url.clone())
        .map_err(library_error)?
        .with_storage_backend(store, url.clone())
        .build()
        .map_err(library_error)?;
    table
        .create()
        .with_table_name(name)
        .with_columns(delta_schema(schema)?.fields().cloned())
        .with_partition_columns(partition_columns)
        .with_actions(adds.into_iter().map(Action::Add))
        .await
        .map_err(|e| {
            DataFusionError::Execution(format!("cannot create the Delta table at {url}: {e}"))
        })
}

/// What a commit records of its statement: the operation, its metrics (`numOutputRows`,
/// `numDeletedRows`, ... as Delta on Spark names them) for the log's `operationMetrics`, and
/// the user who ran it (`userName`).
#[derive(Debug, Clone)]
pub struct Operation {
    kind: DeltaOperation,
    metrics: serde_json::Map<String, Value>,
    user: Option<String>,
}

impl Operation {
    /// `kind` with `metrics`.
    pub fn with_metrics<'a>(
        kind: DeltaOperation,
        metrics: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> Self {
        Self {
            kind,
            metrics: metrics
                .into_iter()
                .map(|(name, value)| (name.to_string(), Value::from(value)))
                .collect(),
            user: None,
        }
    }

    /// The same operation, run by `user`.
    pub fn by(mut self, user: &str) -> Self {
        self.user = Some(user.to_string());
        self
    }
}

impl From<DeltaOperation> for Operation {
    fn from(kind: DeltaOperation) -> Self {
        Self {
            kind,
            metrics: Default::default(),
            user: None,
        }
    }
}

/// Commits `actions` to `table` (loaded at the version the statement read) as `operation`:
/// Delta's conflict rules decide whether a concurrent commit forces a failure, and the
/// library's checkpoint rules apply. Returns the table at the new version.
pub async fn commit(
    table: &DeltaTable,
    actions: Vec<Action>,
    operation: impl Into<Operation>,
) -> std::result::Result<DeltaTable, CommitError> {
    let Operation {
        kind,
        metrics,
        user,
    } = operation.into();
    let snapshot = table.snapshot().map_err(library_error)?;
    let mut info = vec![];
    if !metrics.is_empty() {
        info.push(("operationMetrics".to_string(), Value::Object(metrics)));
    }
    if let Some(user) = user {
        info.push(("userName".to_string(), Value::String(user)));
    }
    let properties = CommitProperties::default().with_metadata(info);
    let finalized = CommitBuilder::from(properties)
        .with_actions(actions)
        .build(Some(snapshot), table.log_store(), kind)
        .await
        .map_err(commit_error)?;
    let mut committed = DeltaTable::new(table.log_store());
    committed.state = Some(finalized.snapshot());
    Ok(committed)
}

/// What an `INSERT` of `rows` rows in `files` commits as: an append, or an overwrite of the
/// version it read.
pub fn write_operation(overwrite: bool, rows: u64, files: &[WrittenFile]) -> Operation {
    let kind = DeltaOperation::Write {
        mode: if overwrite {
            SaveMode::Overwrite
        } else {
            SaveMode::Append
        },
        partition_by: None,
        predicate: None,
    };
    let bytes = files.iter().map(|f| f.size).sum();
    Operation::with_metrics(
        kind,
        [
            ("numFiles", files.len() as u64),
            ("numOutputRows", rows),
            ("numOutputBytes", bytes),
        ],
    )
}

/// Whether the library reads `predicate` (SQL over the table's columns) back: it parses the
/// predicates a commit records to check concurrent commits against them.
pub fn reads_predicate(table: &DeltaTable, predicate: &str) -> bool {
    let Ok(snapshot) = table.snapshot() else {
        return false;
    };
    let session = datafusion::prelude::SessionContext::new();
    snapshot
        .log_data()
        .parse_predicate_expression(predicate, &session.state())
        .is_ok()
}

fn commit_error(error: DeltaTableError) -> CommitError {
    match error {
        DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(conflict),
        } => CommitError::Conflict(conflict.to_string()),
        DeltaTableError::Transaction {
            source: TransactionError::MaxCommitAttempts(attempts),
        } => CommitError::Conflict(format!(
            "other writers committed first {attempts} times in a row"
        )),
        DeltaTableError::VersionAlreadyExists(version) => {
            CommitError::Conflict(format!("version {version} was committed by another writer"))
        }
        other => CommitError::Failed(library_error(other)),
    }
}

#[cfg(test)]
mod partition_tests {
    use super::*;

    #[test]
    fn partition_values_come_from_directories() {
        assert!(partition_values("x.parquet").is_empty());
        let values = partition_values("region=eu%2Fwest/day=__HIVE_DEFAULT_PARTITION__/x.parquet");
        assert_eq!(values.get("region"), Some(&Some("eu/west".to_string())));
        assert_eq!(values.get("day"), Some(&None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::TimeUnit;

    #[test]
    fn bounds_are_written_only_where_they_bound() {
        assert_eq!(
            json_bound(&ScalarValue::Int32(Some(-4)), true),
            Some(Value::from(-4))
        );
        assert_eq!(json_bound(&ScalarValue::Float64(Some(1.5)), true), None);
        let long = "x".repeat(40);
        assert_eq!(
            json_bound(&ScalarValue::Utf8(Some(long.clone())), true),
            Some(Value::from("x".repeat(32)))
        );
        assert_eq!(json_bound(&ScalarValue::Utf8(Some(long)), false), None);
        assert_eq!(
            json_bound(&ScalarValue::Decimal128(Some(1234), 10, 2), true),
            Some(serde_json::json!(12.34))
        );
        assert_eq!(
            json_bound(
                &ScalarValue::Decimal128(Some(12_345_678_901_234_567_891), 38, 2),
                true
            ),
            None
        );
        assert_eq!(
            json_bound(&ScalarValue::Date32(Some(19_000)), true),
            Some(Value::from("2022-01-08"))
        );
        // 1 ms and 1 µs past the second: the minimum rounds down, the maximum up.
        let nanos = 1_000_000_000 + 1_001_000;
        assert_eq!(
            json_bound(&ScalarValue::TimestampNanosecond(Some(nanos), None), true),
            Some(Value::from("1970-01-01 00:00:01.001"))
        );
        assert_eq!(
            json_bound(
                &ScalarValue::TimestampNanosecond(Some(nanos), Some("UTC".into())),
                false
            ),
            Some(Value::from("1970-01-01T00:00:01.002Z"))
        );
        assert_eq!(decimal_text(-5, 3), "-0.005");
    }

    #[test]
    fn types_delta_lacks_are_logged_as_strings() {
        let schema = Schema::new(vec![
            Field::new("a", ArrowType::Int64, false),
            Field::new("t", ArrowType::Time64(TimeUnit::Nanosecond), true),
            Field::new(
                "z",
                ArrowType::Timestamp(TimeUnit::Nanosecond, Some("+02:00".into())),
                true,
            ),
        ]);
        let delta = delta_schema(&schema).unwrap();
        let fields: Vec<&StructField> = delta.fields().collect();
        assert_eq!(fields[0].data_type(), &DataType::LONG);
        assert_eq!(fields[1].data_type(), &DataType::STRING);
        assert!(fields[1].metadata().contains_key(ARROW_TYPE_METADATA));
        assert_eq!(fields[2].data_type(), &DataType::TIMESTAMP);
        assert!(!has_delta_type(schema.field(1)));
    }
}
