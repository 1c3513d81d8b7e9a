//! The coordinator's error type. Every error knows its SQLSTATE ([`Error::sqlstate`]): Ember's
//! own variants name theirs, DataFusion errors are classified by their type
//! (`ember_planner::sqlstate::classify`), and task failures carry the code their executor
//! decided where the error arose. Frontends map it once more, to their own protocol (an
//! ErrorResponse, a gRPC status).

use datafusion::error::DataFusionError;
use ember_planner::sqlstate::{ErrorKind, SqlState, classify};

/// Result with the coordinator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a query or a coordinator component can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// DataFusion failed while planning or running a plan here.
    #[error("{}", ember_protocol::task_errors::user_message(.0))]
    DataFusion(DataFusionError),
    /// Cutting, encoding or checking a plan failed.
    #[error(transparent)]
    Planner(ember_planner::Error),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ember_config::Error),
    /// A file of the catalog or a write could not be read or written.
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    /// A listener or a gRPC connection failed.
    #[error("grpc transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A task failed on an executor, as its executor described it.
    #[error("{message}")]
    Task {
        /// Whether a retry could have helped.
        kind: TaskErrorKind,
        /// The SQLSTATE the executor gave it.
        sqlstate: SqlState,
        /// The error's message.
        message: String,
    },
    /// The client cancelled the statement.
    #[error("canceling statement due to user request")]
    Cancelled,
    /// The statement ran longer than its `statement_timeout`.
    #[error("canceling statement due to statement timeout")]
    StatementTimeout,
    /// No executor, too many queries, or a stopped scheduler.
    #[error("{0}")]
    Unavailable(String),
    /// The coordinator is shutting down.
    #[error("terminating the query: the coordinator is shutting down")]
    Shutdown,
    /// A statement or feature Ember does not support.
    #[error("{0}")]
    NotSupported(String),
    /// A subquery used as a value returned more than one row.
    #[error("{0}")]
    CardinalityViolation(String),
    /// Not allowed (a server-level setting, a read-only schema, a path outside the allowed ones).
    #[error("{0}")]
    PermissionDenied(String),
    /// A role that may not log in, or does not exist (at login).
    #[error("{0}")]
    InvalidAuthorization(String),
    /// A role (or another object without a more specific code) that exists already.
    #[error("{0}")]
    DuplicateObject(String),
    /// A grant that cannot be: a privilege the object does not have, a membership cycle.
    #[error("{0}")]
    InvalidGrant(String),
    /// A name Ember reserves (`public`, `pg_*` roles).
    #[error("{0}")]
    ReservedName(String),
    /// A table or view that does not exist.
    #[error("{0}")]
    UndefinedTable(String),
    /// A function no registry has.
    #[error("{0}")]
    UndefinedFunction(String),
    /// A table or view that exists already.
    #[error("{0}")]
    DuplicateTable(String),
    /// A schema that exists already.
    #[error("{0}")]
    DuplicateSchema(String),
    /// Another object (a schema, a setting) that does not exist.
    #[error("{0}")]
    UndefinedObject(String),
    /// A schema that still holds tables or views.
    #[error("{0}")]
    DependentObjects(String),
    /// An object of another kind than the statement names (`ALTER VIEW` of a table).
    #[error("{0}")]
    WrongObjectType(String),
    /// A statement that does not parse as Ember reads it.
    #[error("{0}")]
    Syntax(String),
    /// A setting's value that it cannot take.
    #[error("{0}")]
    InvalidSettingValue(String),
    /// A limit of the server (parameters per statement, variables per session, ...).
    #[error("{0}")]
    LimitExceeded(String),
    /// A bound parameter value that does not fit its type.
    #[error("{0}")]
    InvalidParameter(String),
    /// A write that lost to a concurrent one on the same table.
    #[error("{0}")]
    SerializationFailure(String),
    /// A statement in a transaction block that already failed.
    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    TransactionAborted,
    /// A prepared statement name in use (`PREPARE`).
    #[error("{0}")]
    DuplicatePreparedStatement(String),
    /// A prepared statement that does not exist (`EXECUTE`, `DEALLOCATE`).
    #[error("{0}")]
    UndefinedPreparedStatement(String),
    /// A cursor name in use.
    #[error("{0}")]
    DuplicateCursor(String),
    /// A cursor that does not exist.
    #[error("{0}")]
    UndefinedCursor(String),
}

/// Why a task failed, as its executor reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskErrorKind {
    /// Deterministic: the input is to blame.
    User,
    /// Not enough memory or disk.
    Resources,
    /// Reading or writing failed.
    Io,
    /// Ember or DataFusion failed.
    Internal,
    /// The task's executor (or a map output it needed) was lost too often.
    ExecutorLost,
}

impl From<ErrorKind> for TaskErrorKind {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::User => TaskErrorKind::User,
            ErrorKind::Resources => TaskErrorKind::Resources,
            ErrorKind::Io => TaskErrorKind::Io,
            ErrorKind::Internal => TaskErrorKind::Internal,
        }
    }
}

impl From<DataFusionError> for Error {
    /// An Ember error that travelled inside a DataFusion error comes out as itself.
    fn from(error: DataFusionError) -> Self {
        match error {
            DataFusionError::External(inner) => match inner.downcast::<Error>() {
                Ok(error) => *error,
                Err(inner) => match inner.downcast::<ember_planner::Error>() {
                    Ok(error) => Error::from(*error),
                    Err(inner) => Error::DataFusion(DataFusionError::External(inner)),
                },
            },
            other => Error::DataFusion(other),
        }
    }
}

impl From<datafusion::sql::sqlparser::parser::ParserError> for Error {
    /// A syntax error, as DataFusion reports sqlparser's.
    fn from(error: datafusion::sql::sqlparser::parser::ParserError) -> Self {
        Error::DataFusion(DataFusionError::from(error))
    }
}

impl From<ember_planner::Error> for Error {
    fn from(error: ember_planner::Error) -> Self {
        match error {
            ember_planner::Error::DataFusion(error) => Error::from(error),
            other => Error::Planner(other),
        }
    }
}

impl Error {
    /// This error inside a DataFusion stream (an answer's batches carry DataFusion errors);
    /// `Error::from` recovers it.
    pub fn into_datafusion(self) -> DataFusionError {
        match self {
            Error::DataFusion(error) => error,
            other => DataFusionError::External(Box::new(other)),
        }
    }

    /// The SQLSTATE that describes this error.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            Error::DataFusion(e) => classify(e).sqlstate,
            Error::Planner(e) => e.class().sqlstate,
            Error::Task { sqlstate, .. } => *sqlstate,
            Error::Cancelled | Error::StatementTimeout => SqlState::QUERY_CANCELED,
            Error::Unavailable(_) => SqlState::INSUFFICIENT_RESOURCES,
            Error::Shutdown => SqlState::ADMIN_SHUTDOWN,
            Error::NotSupported(_) => SqlState::FEATURE_NOT_SUPPORTED,
            Error::SerializationFailure(_) => SqlState::SERIALIZATION_FAILURE,
            Error::CardinalityViolation(_) => SqlState::CARDINALITY_VIOLATION,
            Error::PermissionDenied(_) => SqlState::INSUFFICIENT_PRIVILEGE,
            Error::InvalidAuthorization(_) => SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            Error::DuplicateObject(_) => SqlState::DUPLICATE_OBJECT,
            Error::InvalidGrant(_) => SqlState::INVALID_GRANT_OPERATION,
            Error::ReservedName(_) => SqlState::RESERVED_NAME,
            Error::UndefinedTable(_) => SqlState::UNDEFINED_TABLE,
            Error::UndefinedFunction(_) => SqlState::UNDEFINED_FUNCTION,
            Error::DuplicateTable(_) => SqlState::DUPLICATE_TABLE,
            Error::DuplicateSchema(_) => SqlState::DUPLICATE_SCHEMA,
            Error::UndefinedObject(_) => SqlState::UNDEFINED_OBJECT,
            Error::DependentObjects(_) => SqlState::DEPENDENT_OBJECTS_STILL_EXIST,
            Error::WrongObjectType(_) => SqlState::WRONG_OBJECT_TYPE,
            Error::Syntax(_) => SqlState::SYNTAX_ERROR,
            Error::InvalidParameter(_) => SqlState::INVALID_TEXT_REPRESENTATION,
            Error::InvalidSettingValue(_) => SqlState::INVALID_PARAMETER_VALUE,
            Error::LimitExceeded(_) => SqlState::PROGRAM_LIMIT_EXCEEDED,
            Error::DuplicateCursor(_) => SqlState::DUPLICATE_CURSOR,
            Error::DuplicatePreparedStatement(_) => SqlState::DUPLICATE_PREPARED_STATEMENT,
            Error::UndefinedPreparedStatement(_) => SqlState::INVALID_SQL_STATEMENT_NAME,
            Error::TransactionAborted => SqlState::IN_FAILED_SQL_TRANSACTION,
            Error::UndefinedCursor(_) => SqlState::INVALID_CURSOR_NAME,
            Error::Config(_) => SqlState::CONFIG_FILE_ERROR,
            Error::Io(_) => SqlState::IO_ERROR,
            Error::Transport(_) => SqlState::INTERNAL,
        }
    }

    /// Whether the error is a lack of memory (a hash join's build side that did not fit, say),
    /// which a plan that spills may not have.
    pub(crate) fn is_out_of_memory(&self) -> bool {
        self.sqlstate() == SqlState::OUT_OF_MEMORY
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::error::ArrowError;

    use super::*;

    #[test]
    fn sqlstates_follow_the_error_types() {
        let sql = Error::DataFusion(DataFusionError::SQL(
            Box::new(datafusion::sql::sqlparser::parser::ParserError::ParserError("x".into())),
            None,
        ));
        assert_eq!(sql.sqlstate(), SqlState::SYNTAX_ERROR);
        let zero = Error::from(DataFusionError::ArrowError(
            Box::new(ArrowError::DivideByZero),
            None,
        ));
        assert_eq!(zero.sqlstate(), SqlState::DIVISION_BY_ZERO);
        let task = Error::Task {
            kind: TaskErrorKind::User,
            sqlstate: SqlState::DIVISION_BY_ZERO,
            message: "Arrow error: Divide by zero error".into(),
        };
        assert_eq!(task.sqlstate(), SqlState::DIVISION_BY_ZERO);
        assert_eq!(Error::Cancelled.sqlstate(), SqlState::QUERY_CANCELED);
    }

    #[test]
    fn ember_errors_come_back_out_of_datafusion_errors() {
        let denied = Error::from(
            ember_planner::Error::PermissionDenied("/etc is outside".into()).into_datafusion(),
        );
        assert_eq!(denied.sqlstate(), SqlState::INSUFFICIENT_PRIVILEGE);
        assert_eq!(denied.to_string(), "permission denied: /etc is outside");
        let cancelled = Error::from(Error::Cancelled.into_datafusion());
        assert!(matches!(cancelled, Error::Cancelled));
        let too_long = Error::from(DataFusionError::Context(
            "insert".into(),
            Box::new(
                ember_planner::Error::ValueTooLong {
                    type_name: "character varying(3)".into(),
                }
                .into_datafusion(),
            ),
        ));
        assert_eq!(too_long.sqlstate(), SqlState::STRING_DATA_RIGHT_TRUNCATION);
        assert_eq!(
            too_long.to_string(),
            "value too long for type character varying(3)"
        );
    }
}
