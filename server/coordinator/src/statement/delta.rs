//! Delta on Spark's statements about tables, which no SQL dialect of sqlparser has:
//! `DESCRIBE DETAIL`, `DESCRIBE HISTORY`, `RESTORE`, `OPTIMIZE` and `VACUUM`, parsed by their
//! tokens in the session's dialect (names and expressions as it reads them).

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::sql::parser::DFParser;
use datafusion::sql::sqlparser::ast::{
    AlterTableOperation, Expr as SqlExpr, ObjectName, SqlOption, Statement as SqlStatement, Value,
};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::Token;
use ember_delta::TimeTravel;

use super::{expected, is_word};
use crate::error::{Error, Result};

/// A statement about a Delta table.
#[derive(Debug, Clone, PartialEq)]
pub enum DeltaStatement {
    /// `DESCRIBE DETAIL t`: the table's format, location, files, size and partitioning.
    DescribeDetail {
        /// The table.
        table: ObjectName,
    },
    /// `DESCRIBE HISTORY t [LIMIT n]`: its versions, newest first.
    DescribeHistory {
        /// The table.
        table: ObjectName,
        /// At most this many of the newest versions.
        limit: Option<usize>,
    },
    /// `RESTORE [TABLE] t [TO] {VERSION | TIMESTAMP} AS OF ...`: a new version whose files are
    /// an earlier version's.
    Restore {
        /// The table.
        table: ObjectName,
        /// The version restored.
        to: TimeTravel,
    },
    /// `OPTIMIZE t [WHERE predicate]`: small files compacted into fewer, larger ones.
    Optimize {
        /// The table.
        table: ObjectName,
        /// Only files of partitions this predicate over partition columns selects.
        predicate: Option<Box<SqlExpr>>,
    },
    /// `VACUUM t [RETAIN n HOURS] [DRY RUN]`: files no version within the retention period
    /// reads are deleted.
    Vacuum {
        /// The table.
        table: ObjectName,
        /// Versions newer than this many hours stay readable; the table's
        /// `delta.deletedFileRetentionDuration` (7 days unless set) if not given.
        retain_hours: Option<f64>,
        /// Only list the files that would be deleted.
        dry_run: bool,
    },
    /// `ALTER TABLE t SET TBLPROPERTIES ('key' = 'value', ...)`: the table's Delta properties
    /// (`delta.deletedFileRetentionDuration`, `delta.logRetentionDuration`, ...).
    SetProperties {
        /// The table.
        table: ObjectName,
        /// Each property and its value.
        properties: Vec<(String, String)>,
    },
}

impl DeltaStatement {
    /// The table the statement is about.
    pub fn table(&self) -> &ObjectName {
        match self {
            DeltaStatement::DescribeDetail { table }
            | DeltaStatement::DescribeHistory { table, .. }
            | DeltaStatement::Restore { table, .. }
            | DeltaStatement::Optimize { table, .. }
            | DeltaStatement::Vacuum { table, .. }
            | DeltaStatement::SetProperties { table, .. } => table,
        }
    }

    /// The columns of the rows it returns, as on Spark (`SET TBLPROPERTIES` returns none).
    pub fn result_schema(&self) -> Option<SchemaRef> {
        let utc = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        let strings = || DataType::new_list(DataType::Utf8, true);
        let fields = match self {
            DeltaStatement::DescribeDetail { .. } => vec![
                Field::new("format", DataType::Utf8, false),
                Field::new("id", DataType::Utf8, false),
                Field::new("name", DataType::Utf8, true),
                Field::new("description", DataType::Utf8, true),
                Field::new("location", DataType::Utf8, false),
                Field::new("createdAt", utc(), true),
                Field::new("lastModified", utc(), true),
                Field::new("partitionColumns", strings(), false),
                Field::new("numFiles", DataType::Int64, false),
                Field::new("sizeInBytes", DataType::Int64, false),
                Field::new("properties", DataType::Utf8, false),
                Field::new("minReaderVersion", DataType::Int32, false),
                Field::new("minWriterVersion", DataType::Int32, false),
                Field::new("tableFeatures", strings(), false),
                Field::new("version", DataType::Int64, false),
            ],
            DeltaStatement::DescribeHistory { .. } => vec![
                Field::new("version", DataType::Int64, false),
                Field::new("timestamp", utc(), true),
                Field::new("userName", DataType::Utf8, true),
                Field::new("operation", DataType::Utf8, true),
                Field::new("operationParameters", DataType::Utf8, true),
                Field::new("readVersion", DataType::Int64, true),
                Field::new("isolationLevel", DataType::Utf8, true),
                Field::new("isBlindAppend", DataType::Boolean, true),
                Field::new("operationMetrics", DataType::Utf8, true),
                Field::new("engineInfo", DataType::Utf8, true),
            ],
            DeltaStatement::Restore { .. } => vec![
                Field::new("table_size_after_restore", DataType::Int64, false),
                Field::new("num_of_files_after_restore", DataType::Int64, false),
                Field::new("num_removed_files", DataType::Int64, false),
                Field::new("num_restored_files", DataType::Int64, false),
            ],
            DeltaStatement::Optimize { .. } => vec![
                Field::new("path", DataType::Utf8, false),
                Field::new("numFilesAdded", DataType::Int64, false),
                Field::new("numFilesRemoved", DataType::Int64, false),
                Field::new("numBatches", DataType::Int64, false),
            ],
            DeltaStatement::Vacuum { .. } => vec![Field::new("path", DataType::Utf8, false)],
            DeltaStatement::SetProperties { .. } => return None,
        };
        Some(Arc::new(Schema::new(fields)))
    }
}

impl std::fmt::Display for DeltaStatement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeltaStatement::DescribeDetail { table } => write!(f, "DESCRIBE DETAIL {table}"),
            DeltaStatement::DescribeHistory { table, limit } => {
                write!(f, "DESCRIBE HISTORY {table}")?;
                match limit {
                    Some(limit) => write!(f, " LIMIT {limit}"),
                    None => Ok(()),
                }
            }
            DeltaStatement::Restore { table, to } => match to {
                TimeTravel::Version(v) => write!(f, "RESTORE TABLE {table} TO VERSION AS OF {v}"),
                TimeTravel::Timestamp(t) => write!(
                    f,
                    "RESTORE TABLE {table} TO TIMESTAMP AS OF '{}'",
                    t.format("%Y-%m-%d %H:%M:%S%.3f+00:00")
                ),
            },
            DeltaStatement::Optimize { table, predicate } => {
                write!(f, "OPTIMIZE {table}")?;
                match predicate {
                    Some(predicate) => write!(f, " WHERE {predicate}"),
                    None => Ok(()),
                }
            }
            DeltaStatement::Vacuum {
                table,
                retain_hours,
                dry_run,
            } => {
                write!(f, "VACUUM {table}")?;
                if let Some(hours) = retain_hours {
                    write!(f, " RETAIN {hours} HOURS")?;
                }
                if *dry_run {
                    write!(f, " DRY RUN")?;
                }
                Ok(())
            }
            DeltaStatement::SetProperties { table, properties } => {
                let quoted = |s: &str| format!("'{}'", s.replace('\'', "''"));
                let properties: Vec<String> = properties
                    .iter()
                    .map(|(k, v)| format!("{} = {}", quoted(k), quoted(v)))
                    .collect();
                write!(
                    f,
                    "ALTER TABLE {table} SET TBLPROPERTIES ({})",
                    properties.join(", ")
                )
            }
        }
    }
}

/// The longest retention `VACUUM` takes (a century and more).
const MAX_RETAIN_HOURS: f64 = 1_000_000.0;

/// The Delta statement at the parser's position, if one is there; the parser is left after it.
pub(super) fn delta_statement(parser: &mut DFParser<'_>) -> Result<Option<DeltaStatement>> {
    // `DESCRIBE history` describes a table named history.
    let describe = is_word(parser, 0, "DESCRIBE")
        && (is_word(parser, 1, "DETAIL") || is_word(parser, 1, "HISTORY"))
        && matches!(parser.parser.peek_nth_token_ref(2).token, Token::Word(_));
    let starts = describe
        || is_word(parser, 0, "RESTORE")
        || is_word(parser, 0, "VACUUM")
        || is_word(parser, 0, "OPTIMIZE");
    if !starts {
        return Ok(None);
    }
    let p = &mut parser.parser;
    let first = p.next_token().to_string().to_ascii_uppercase();
    let statement = match first.as_str() {
        "DESCRIBE" => {
            let detail = p.next_token().to_string().eq_ignore_ascii_case("DETAIL");
            let table = p.parse_object_name(false)?;
            if detail {
                DeltaStatement::DescribeDetail { table }
            } else {
                let limit = if p.parse_keyword(Keyword::LIMIT) {
                    Some(count(p)?)
                } else {
                    None
                };
                DeltaStatement::DescribeHistory { table, limit }
            }
        }
        "RESTORE" => {
            let _ = p.parse_keyword(Keyword::TABLE);
            let table = p.parse_object_name(false)?;
            let _ = p.parse_keyword(Keyword::TO);
            let to = if p.parse_keywords(&[Keyword::VERSION, Keyword::AS, Keyword::OF]) {
                TimeTravel::Version(count(p)? as u64)
            } else if p.parse_keywords(&[Keyword::TIMESTAMP, Keyword::AS, Keyword::OF]) {
                let text = p.parse_literal_string()?;
                TimeTravel::timestamp(&text).map_err(|e| Error::Syntax(e.to_string()))?
            } else {
                return Err(expected(
                    "VERSION AS OF or TIMESTAMP AS OF",
                    &p.peek_token(),
                ));
            };
            DeltaStatement::Restore { table, to }
        }
        "OPTIMIZE" => {
            let table = p.parse_object_name(false)?;
            let predicate = if p.parse_keyword(Keyword::WHERE) {
                Some(Box::new(p.parse_expr()?))
            } else {
                None
            };
            if is_word(parser, 0, "ZORDER") {
                return Err(Error::NotSupported(
                    "OPTIMIZE ... ZORDER BY is not supported".into(),
                ));
            }
            DeltaStatement::Optimize { table, predicate }
        }
        _ => {
            let table = p.parse_object_name(false)?;
            let retain_hours = if p.parse_keyword(Keyword::RETAIN) {
                let hours = match p.next_token().token {
                    Token::Number(n, _) => n
                        .parse::<f64>()
                        .ok()
                        .filter(|h| (0.0..=MAX_RETAIN_HOURS).contains(h)),
                    _ => None,
                }
                .ok_or_else(|| {
                    Error::Syntax(format!(
                        "RETAIN needs a number of hours from 0 to {MAX_RETAIN_HOURS}"
                    ))
                })?;
                p.expect_keyword_is(Keyword::HOURS)?;
                Some(hours)
            } else {
                None
            };
            let dry_run = p.parse_keywords(&[Keyword::DRY, Keyword::RUN]);
            DeltaStatement::Vacuum {
                table,
                retain_hours,
                dry_run,
            }
        }
    };
    Ok(Some(statement))
}

/// A non-negative integer.
fn count(p: &mut datafusion::sql::sqlparser::parser::Parser<'_>) -> Result<usize> {
    let token = p.next_token();
    match &token.token {
        Token::Number(n, _) => n.parse().map_err(|_| expected("a count", &token)),
        _ => Err(expected("a number", &token)),
    }
}

/// `ALTER TABLE t SET TBLPROPERTIES (...)` as the Delta statement it is; none for other
/// statements (and other `ALTER TABLE`s).
pub(super) fn set_properties(statement: &SqlStatement) -> Result<Option<DeltaStatement>> {
    let SqlStatement::AlterTable(alter) = statement else {
        return Ok(None);
    };
    let [AlterTableOperation::SetTblProperties { table_properties }] = alter.operations.as_slice()
    else {
        return Ok(None);
    };
    let mut properties = vec![];
    for option in table_properties {
        let SqlOption::KeyValue { key, value } = option else {
            return Err(Error::Syntax(format!(
                "a table property is 'key' = 'value', not {option}"
            )));
        };
        let text = |expr: &SqlExpr| match expr {
            SqlExpr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                other => other.to_string(),
            },
            other => other.to_string(),
        };
        properties.push((key.value.clone(), text(value)));
    }
    Ok(Some(DeltaStatement::SetProperties {
        table: alter.name.clone(),
        properties,
    }))
}
