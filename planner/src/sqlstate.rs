//! What kind of error an error is, decided once where it arises: its SQLSTATE (the five-character
//! code of the SQL standard that PostgreSQL clients and Flight SQL's `x-ember-sqlstate` carry)
//! and whether running the work again could help. Executors classify task errors before they
//! cross the wire; the coordinator classifies its own the same way. Nothing here reads message
//! text: every decision follows an error's type (DataFusion's and Arrow's variants, I/O error
//! kinds, object store variants, Ember's own [`crate::Error`]).

use std::fmt;

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;

use crate::shuffle::ShuffleError;

/// A SQLSTATE code: five characters, digits and upper-case letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState([u8; 5]);

impl SqlState {
    /// `0A000`: feature_not_supported.
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState(*b"0A000");
    /// `21000`: cardinality_violation.
    pub const CARDINALITY_VIOLATION: SqlState = SqlState(*b"21000");
    /// `22000`: data_exception.
    pub const DATA_EXCEPTION: SqlState = SqlState(*b"22000");
    /// `22001`: string_data_right_truncation (a value longer than its `varchar(n)`).
    pub const STRING_DATA_RIGHT_TRUNCATION: SqlState = SqlState(*b"22001");
    /// `22003`: numeric_value_out_of_range.
    pub const NUMERIC_VALUE_OUT_OF_RANGE: SqlState = SqlState(*b"22003");
    /// `22012`: division_by_zero.
    pub const DIVISION_BY_ZERO: SqlState = SqlState(*b"22012");
    /// `22023`: invalid_parameter_value.
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState(*b"22023");
    /// `22P02`: invalid_text_representation (a value that does not parse or cast).
    pub const INVALID_TEXT_REPRESENTATION: SqlState = SqlState(*b"22P02");
    /// `23502`: not_null_violation.
    pub const NOT_NULL_VIOLATION: SqlState = SqlState(*b"23502");
    /// `25P02`: in_failed_sql_transaction.
    pub const IN_FAILED_SQL_TRANSACTION: SqlState = SqlState(*b"25P02");
    /// `2BP01`: dependent_objects_still_exist.
    pub const DEPENDENT_OBJECTS_STILL_EXIST: SqlState = SqlState(*b"2BP01");
    /// `40001`: serialization_failure (a transaction lost to a concurrent one).
    pub const SERIALIZATION_FAILURE: SqlState = SqlState(*b"40001");
    /// `34000`: invalid_cursor_name.
    pub const INVALID_CURSOR_NAME: SqlState = SqlState(*b"34000");
    /// `42000`: syntax_error_or_access_rule_violation (a statement that cannot be planned).
    pub const SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION: SqlState = SqlState(*b"42000");
    /// `28000`: invalid_authorization_specification (a role that does not exist or may not
    /// log in).
    pub const INVALID_AUTHORIZATION_SPECIFICATION: SqlState = SqlState(*b"28000");
    /// `0LP01`: invalid_grant_operation.
    pub const INVALID_GRANT_OPERATION: SqlState = SqlState(*b"0LP01");
    /// `42710`: duplicate_object.
    pub const DUPLICATE_OBJECT: SqlState = SqlState(*b"42710");
    /// `42939`: reserved_name.
    pub const RESERVED_NAME: SqlState = SqlState(*b"42939");
    /// `42501`: insufficient_privilege.
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState(*b"42501");
    /// `42601`: syntax_error.
    pub const SYNTAX_ERROR: SqlState = SqlState(*b"42601");
    /// `42701`: duplicate_column.
    pub const DUPLICATE_COLUMN: SqlState = SqlState(*b"42701");
    /// `42702`: ambiguous_column.
    pub const AMBIGUOUS_COLUMN: SqlState = SqlState(*b"42702");
    /// `42703`: undefined_column.
    pub const UNDEFINED_COLUMN: SqlState = SqlState(*b"42703");
    /// `42883`: undefined_function.
    pub const UNDEFINED_FUNCTION: SqlState = SqlState(*b"42883");
    /// `42704`: undefined_object.
    pub const UNDEFINED_OBJECT: SqlState = SqlState(*b"42704");
    /// `42P01`: undefined_table.
    pub const UNDEFINED_TABLE: SqlState = SqlState(*b"42P01");
    /// `42P03`: duplicate_cursor.
    pub const DUPLICATE_CURSOR: SqlState = SqlState(*b"42P03");
    /// `42P06`: duplicate_schema.
    pub const DUPLICATE_SCHEMA: SqlState = SqlState(*b"42P06");
    /// `42P07`: duplicate_table.
    pub const DUPLICATE_TABLE: SqlState = SqlState(*b"42P07");
    /// `42809`: wrong_object_type (`ALTER VIEW` of a table).
    pub const WRONG_OBJECT_TYPE: SqlState = SqlState(*b"42809");
    /// `42P05`: duplicate_prepared_statement.
    pub const DUPLICATE_PREPARED_STATEMENT: SqlState = SqlState(*b"42P05");
    /// `26000`: invalid_sql_statement_name (a prepared statement that does not exist).
    pub const INVALID_SQL_STATEMENT_NAME: SqlState = SqlState(*b"26000");
    /// `54000`: program_limit_exceeded.
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState(*b"54000");
    /// `53000`: insufficient_resources.
    pub const INSUFFICIENT_RESOURCES: SqlState = SqlState(*b"53000");
    /// `53100`: disk_full.
    pub const DISK_FULL: SqlState = SqlState(*b"53100");
    /// `53200`: out_of_memory.
    pub const OUT_OF_MEMORY: SqlState = SqlState(*b"53200");
    /// `54001`: statement_too_complex.
    pub const STATEMENT_TOO_COMPLEX: SqlState = SqlState(*b"54001");
    /// `57014`: query_canceled.
    pub const QUERY_CANCELED: SqlState = SqlState(*b"57014");
    /// `57P01`: admin_shutdown.
    pub const ADMIN_SHUTDOWN: SqlState = SqlState(*b"57P01");
    /// `58000`: system_error (a lost executor).
    pub const SYSTEM_ERROR: SqlState = SqlState(*b"58000");
    /// `58030`: io_error.
    pub const IO_ERROR: SqlState = SqlState(*b"58030");
    /// `58P01`: undefined_file.
    pub const UNDEFINED_FILE: SqlState = SqlState(*b"58P01");
    /// `F0000`: config_file_error.
    pub const CONFIG_FILE_ERROR: SqlState = SqlState(*b"F0000");
    /// `XX000`: internal_error.
    pub const INTERNAL: SqlState = SqlState(*b"XX000");
    /// `XX001`: data_corrupted (a file that cannot be decoded).
    pub const DATA_CORRUPTED: SqlState = SqlState(*b"XX001");

    /// The code `text` spells, if it is one (as it arrives from the wire).
    pub fn parse(text: &str) -> Option<SqlState> {
        let bytes: [u8; 5] = text.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
            .then_some(SqlState(bytes))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and upper-case letters get in (constants and `parse`).
        std::str::from_utf8(&self.0).unwrap_or("XX000")
    }

    /// The class: the first two characters (`42` for syntax and access errors, say).
    pub fn class(&self) -> &str {
        &self.as_str()[..2]
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SqlState({})", self.as_str())
    }
}

/// Whether running the same work again could end differently: what the scheduler needs to
/// decide between a retry and failing the query at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Deterministic: the same input fails the same way (bad cast, division by zero, a file
    /// that is not there, a statement that cannot be planned).
    User,
    /// Not enough memory or disk right now.
    Resources,
    /// Reading or writing failed (a network store, a disk).
    Io,
    /// Ember or DataFusion itself failed.
    Internal,
}

/// An error's kind and SQLSTATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorClass {
    /// Whether a retry could help.
    pub kind: ErrorKind,
    /// What PostgreSQL would report.
    pub sqlstate: SqlState,
}

impl ErrorClass {
    const fn new(kind: ErrorKind, sqlstate: SqlState) -> Self {
        Self { kind, sqlstate }
    }

    const fn user(sqlstate: SqlState) -> Self {
        Self::new(ErrorKind::User, sqlstate)
    }
}

const INTERNAL: ErrorClass = ErrorClass::new(ErrorKind::Internal, SqlState::INTERNAL);

/// The kind and SQLSTATE of a DataFusion error, following its variants (and those of the errors
/// it wraps) down to the one that says what happened.
pub fn classify(error: &DataFusionError) -> ErrorClass {
    match error {
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            classify(inner)
        }
        DataFusionError::Shared(inner) => classify(inner),
        DataFusionError::Collection(errors) => errors.first().map_or(INTERNAL, classify),
        DataFusionError::SQL(error, _) => match error.as_ref() {
            ParserError::RecursionLimitExceeded => {
                ErrorClass::user(SqlState::STATEMENT_TOO_COMPLEX)
            }
            _ => ErrorClass::user(SqlState::SYNTAX_ERROR),
        },
        DataFusionError::ArrowError(error, _) => classify_arrow(error),
        DataFusionError::ParquetError(error) => match error.as_ref() {
            // The file could not be read (refused, say), rather than read and found corrupt.
            datafusion::parquet::errors::ParquetError::External(inner) => {
                match inner.downcast_ref::<datafusion::object_store::Error>() {
                    Some(error) => classify_object_store(error),
                    None => classify_external(inner.as_ref()),
                }
            }
            _ => ErrorClass::user(SqlState::DATA_CORRUPTED),
        },
        DataFusionError::ObjectStore(error) => classify_object_store(error),
        DataFusionError::IoError(error) => classify_io(error),
        DataFusionError::NotImplemented(_) => ErrorClass::user(SqlState::FEATURE_NOT_SUPPORTED),
        DataFusionError::Internal(_) => INTERNAL,
        DataFusionError::Plan(_) => {
            ErrorClass::user(SqlState::SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION)
        }
        DataFusionError::Configuration(_) => ErrorClass::user(SqlState::INVALID_PARAMETER_VALUE),
        DataFusionError::SchemaError(error, _) => ErrorClass::user(match error.as_ref() {
            datafusion::common::SchemaError::FieldNotFound { .. } => SqlState::UNDEFINED_COLUMN,
            datafusion::common::SchemaError::AmbiguousReference { .. } => {
                SqlState::AMBIGUOUS_COLUMN
            }
            datafusion::common::SchemaError::DuplicateQualifiedField { .. }
            | datafusion::common::SchemaError::DuplicateUnqualifiedField { .. } => {
                SqlState::DUPLICATE_COLUMN
            }
        }),
        // Raised while running a plan: by an expression on the data, in most cases.
        DataFusionError::Execution(_) => ErrorClass::user(SqlState::DATA_EXCEPTION),
        DataFusionError::ResourcesExhausted(_) => {
            ErrorClass::new(ErrorKind::Resources, SqlState::OUT_OF_MEMORY)
        }
        DataFusionError::External(error) => classify_external(error.as_ref()),
        _ => INTERNAL,
    }
}

fn classify_arrow(error: &ArrowError) -> ErrorClass {
    match error {
        ArrowError::DivideByZero => ErrorClass::user(SqlState::DIVISION_BY_ZERO),
        ArrowError::CastError(_) | ArrowError::ParseError(_) => {
            ErrorClass::user(SqlState::INVALID_TEXT_REPRESENTATION)
        }
        ArrowError::ArithmeticOverflow(_)
        | ArrowError::DictionaryKeyOverflowError
        | ArrowError::RunEndIndexOverflowError
        | ArrowError::OffsetOverflowError(_) => {
            ErrorClass::user(SqlState::NUMERIC_VALUE_OUT_OF_RANGE)
        }
        ArrowError::ComputeError(_) | ArrowError::InvalidArgumentError(_) => {
            ErrorClass::user(SqlState::DATA_EXCEPTION)
        }
        ArrowError::CsvError(_) | ArrowError::JsonError(_) | ArrowError::AvroError(_) => {
            ErrorClass::user(SqlState::INVALID_TEXT_REPRESENTATION)
        }
        ArrowError::ParquetError(_) | ArrowError::IpcError(_) => {
            ErrorClass::user(SqlState::DATA_CORRUPTED)
        }
        ArrowError::MemoryError(_) => {
            ErrorClass::new(ErrorKind::Resources, SqlState::OUT_OF_MEMORY)
        }
        ArrowError::NotYetImplemented(_) => ErrorClass::user(SqlState::FEATURE_NOT_SUPPORTED),
        ArrowError::IoError(_, error) => classify_io(error),
        ArrowError::ExternalError(error) => classify_external(error.as_ref()),
        ArrowError::SchemaError(_) | ArrowError::CDataInterface(_) => INTERNAL,
    }
}

fn classify_io(error: &std::io::Error) -> ErrorClass {
    if let Some(inner) = error.get_ref()
        && let Some(ember) = inner.downcast_ref::<crate::Error>()
    {
        return ember.class();
    }
    match error.kind() {
        std::io::ErrorKind::NotFound => ErrorClass::user(SqlState::UNDEFINED_FILE),
        std::io::ErrorKind::StorageFull => {
            ErrorClass::new(ErrorKind::Resources, SqlState::DISK_FULL)
        }
        _ => ErrorClass::new(ErrorKind::Io, SqlState::IO_ERROR),
    }
}

fn classify_object_store(error: &datafusion::object_store::Error) -> ErrorClass {
    match error {
        // A file that is not there will not be there on the next attempt either.
        datafusion::object_store::Error::NotFound { .. } => {
            ErrorClass::user(SqlState::UNDEFINED_FILE)
        }
        // A location outside the allowed paths, refused by the confined store.
        datafusion::object_store::Error::PermissionDenied { .. } => {
            ErrorClass::user(SqlState::INSUFFICIENT_PRIVILEGE)
        }
        _ => ErrorClass::new(ErrorKind::Io, SqlState::IO_ERROR),
    }
}

fn classify_external(error: &(dyn std::error::Error + Send + Sync + 'static)) -> ErrorClass {
    if let Some(error) = error.downcast_ref::<crate::Error>() {
        return error.class();
    }
    if let Some(error) = error.downcast_ref::<DataFusionError>() {
        return classify(error);
    }
    if let Some(error) = error.downcast_ref::<ArrowError>() {
        return classify_arrow(error);
    }
    if let Some(error) = error.downcast_ref::<std::io::Error>() {
        return classify_io(error);
    }
    if let Some(error) = error.downcast_ref::<datafusion::object_store::Error>() {
        return classify_object_store(error);
    }
    if error.downcast_ref::<ShuffleError>().is_some() {
        // A lost map output: the scheduler recomputes it (it arrives typed on its own).
        return ErrorClass::new(ErrorKind::Io, SqlState::SYSTEM_ERROR);
    }
    INTERNAL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_parse_only_when_well_formed() {
        assert_eq!(SqlState::parse("42P01"), Some(SqlState::UNDEFINED_TABLE));
        assert_eq!(SqlState::parse("42p01"), None);
        assert_eq!(SqlState::parse("4201"), None);
        assert_eq!(SqlState::UNDEFINED_TABLE.class(), "42");
        assert_eq!(SqlState::DISK_FULL.to_string(), "53100");
    }

    #[test]
    fn errors_are_classified_by_type() {
        let zero = DataFusionError::ArrowError(Box::new(ArrowError::DivideByZero), None);
        assert_eq!(
            classify(&zero),
            ErrorClass::user(SqlState::DIVISION_BY_ZERO)
        );
        let wrapped = DataFusionError::Context("while running".into(), Box::new(zero));
        assert_eq!(classify(&wrapped).sqlstate, SqlState::DIVISION_BY_ZERO);
        let missing = DataFusionError::IoError(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(
            classify(&missing),
            ErrorClass::user(SqlState::UNDEFINED_FILE)
        );
        let memory = DataFusionError::ResourcesExhausted("no memory left".into());
        assert_eq!(classify(&memory).kind, ErrorKind::Resources);
        assert_eq!(classify(&memory).sqlstate, SqlState::OUT_OF_MEMORY);
        let full = DataFusionError::External(Box::new(crate::Error::DiskFull { limit: 10 }));
        assert_eq!(classify(&full).sqlstate, SqlState::DISK_FULL);
        assert_eq!(classify(&full).kind, ErrorKind::Resources);
        let too_long = DataFusionError::ArrowError(
            Box::new(ArrowError::ExternalError(Box::new(
                crate::Error::ValueTooLong {
                    type_name: "character varying(3)".into(),
                },
            ))),
            None,
        );
        assert_eq!(
            classify(&too_long),
            ErrorClass::user(SqlState::STRING_DATA_RIGHT_TRUNCATION)
        );
        // The message says nothing: a plan error stays a plan error whatever it reads.
        let plan = DataFusionError::Plan("division by zero not found".into());
        assert_eq!(
            classify(&plan).sqlstate,
            SqlState::SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION
        );
        assert_eq!(classify(&DataFusionError::Internal("x".into())), INTERNAL);
    }
}
