//! The server's error type and its one mapping to SQLSTATE codes.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

/// Result with the server's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a query or a server component can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", .0.strip_backtrace())]
    DataFusion(#[from] DataFusionError),
    #[error(transparent)]
    Planner(#[from] ember_planner::Error),
    #[error(transparent)]
    Executor(#[from] ember_executor::Error),
    #[error(transparent)]
    Config(#[from] ember_config::Error),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("grpc transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A task failed on an executor; `kind` says whether the input is to blame.
    #[error("{message}")]
    Task {
        kind: TaskErrorKind,
        message: String,
    },
    #[error("canceling statement due to user request")]
    Cancelled,
    #[error("canceling statement due to statement timeout")]
    StatementTimeout,
    #[error("{0}")]
    Unavailable(String),
    #[error("terminating the query: the coordinator is shutting down")]
    Shutdown,
    #[error("{0}")]
    NotSupported(String),
    #[error("{0}")]
    CardinalityViolation(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    UndefinedTable(String),
    #[error("{0}")]
    UndefinedObject(String),
    #[error("{0}")]
    DependentObjects(String),
    #[error("{0}")]
    Syntax(String),
    /// A bound parameter value that does not fit its type.
    #[error("{0}")]
    InvalidParameter(String),
    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    TransactionAborted,
    #[error("{0}")]
    DuplicateCursor(String),
    #[error("{0}")]
    UndefinedCursor(String),
}

/// Why a task failed, as reported by its executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskErrorKind {
    User,
    Resources,
    Io,
    Internal,
    ExecutorLost,
}

impl Error {
    /// An error worded as DataFusion words it (its SQLSTATE then follows from the message).
    pub(crate) fn execution(message: String) -> Self {
        Error::DataFusion(DataFusionError::Execution(message))
    }

    /// The Postgres SQLSTATE that best describes this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Error::DataFusion(e) => datafusion_sqlstate(e),
            Error::Planner(ember_planner::Error::DataFusion(e)) => datafusion_sqlstate(e),
            Error::Planner(_) => "XX000",
            Error::Task { kind, message } => match kind {
                TaskErrorKind::User => message_sqlstate(message).unwrap_or("22000"),
                TaskErrorKind::Resources if message.contains("work dir is full") => "53100",
                TaskErrorKind::Resources => "53200",
                TaskErrorKind::Io => "58030",
                TaskErrorKind::Internal => "XX000",
                TaskErrorKind::ExecutorLost => "58000",
            },
            Error::Cancelled | Error::StatementTimeout => "57014",
            Error::Unavailable(_) => "53000",
            Error::Shutdown => "57P01",
            Error::NotSupported(_) => "0A000",
            Error::CardinalityViolation(_) => "21000",
            Error::PermissionDenied(_) => "42501",
            Error::UndefinedTable(_) => "42P01",
            Error::UndefinedObject(_) => "42704",
            Error::DependentObjects(_) => "2BP01",
            Error::Syntax(_) => "42601",
            Error::InvalidParameter(_) => "22P02",
            Error::DuplicateCursor(_) => "42P03",
            Error::TransactionAborted => "25P02",
            Error::UndefinedCursor(_) => "34000",
            Error::Config(_) => "F0000",
            Error::Io(_) => "58030",
            Error::Executor(_) | Error::Transport(_) => "XX000",
        }
    }
}

fn datafusion_sqlstate(error: &DataFusionError) -> &'static str {
    match error {
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            datafusion_sqlstate(inner)
        }
        DataFusionError::Shared(inner) => datafusion_sqlstate(inner),
        DataFusionError::SQL(..) => "42601",
        DataFusionError::ArrowError(e, _) => arrow_sqlstate(e),
        DataFusionError::ResourcesExhausted(_) => "53200",
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::IoError(_) | DataFusionError::ObjectStore(_) => "58030",
        DataFusionError::Internal(_) => "XX000",
        DataFusionError::SchemaError(e, _) => {
            let message = e.to_string();
            message_sqlstate(&message).unwrap_or("42703")
        }
        DataFusionError::Plan(message) | DataFusionError::Execution(message) => {
            message_sqlstate(message).unwrap_or("42000")
        }
        DataFusionError::Configuration(_) => "22023",
        other => message_sqlstate(&other.to_string()).unwrap_or("XX000"),
    }
}

fn arrow_sqlstate(error: &ArrowError) -> &'static str {
    match error {
        ArrowError::DivideByZero => "22012",
        ArrowError::CastError(_) | ArrowError::ParseError(_) => "22P02",
        ArrowError::ArithmeticOverflow(_) | ArrowError::ComputeError(_) => {
            message_sqlstate(&error.to_string()).unwrap_or("22003")
        }
        ArrowError::MemoryError(_) => "53200",
        ArrowError::InvalidArgumentError(message) => message_sqlstate(message).unwrap_or("XX000"),
        _ => "XX000",
    }
}

/// Recognises errors whose type was lost on the way (task errors travel as text).
fn message_sqlstate(message: &str) -> Option<&'static str> {
    let lower = message.to_ascii_lowercase();
    let pairs: [(&str, &str); 19] = [
        // A NULL written to a NOT NULL (or primary key) column.
        ("non-nullable but contains null", "23502"),
        ("value too long for type", "22001"),
        ("has null but schema specifies non-nullable", "23502"),
        ("no such file", "58P01"),
        ("permission denied", "42501"),
        ("already exists", "42P07"),
        ("doesn't exist", "42P01"),
        ("divide by zero", "22012"),
        ("division by zero", "22012"),
        ("cannot cast", "22P02"),
        ("cast error", "22P02"),
        ("overflow", "22003"),
        ("not found", "42P01"),
        ("no field named", "42703"),
        ("invalid function", "42883"),
        ("no function matches", "42883"),
        ("sql error", "42601"),
        ("resources exhausted", "53200"),
        ("schema error", "42703"),
    ];
    pairs
        .into_iter()
        .find(|(needle, _)| lower.contains(needle))
        .map(|(_, code)| code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_follow_postgres() {
        let sql = Error::DataFusion(DataFusionError::SQL(
            Box::new(datafusion::sql::sqlparser::parser::ParserError::ParserError("x".into())),
            None,
        ));
        assert_eq!(sql.sqlstate(), "42601");
        let not_null = Error::DataFusion(DataFusionError::Execution(
            "Invalid batch column at '0' has null but schema specifies non-nullable".into(),
        ));
        assert_eq!(not_null.sqlstate(), "23502");
        let missing = Error::DataFusion(DataFusionError::Plan(
            "table 'ember.public.nope' not found".into(),
        ));
        assert_eq!(missing.sqlstate(), "42P01");
        let zero = Error::DataFusion(DataFusionError::ArrowError(
            Box::new(ArrowError::DivideByZero),
            None,
        ));
        assert_eq!(zero.sqlstate(), "22012");
        let task = Error::Task {
            kind: TaskErrorKind::User,
            message: "Arrow error: Divide by zero error".into(),
        };
        assert_eq!(task.sqlstate(), "22012");
        assert_eq!(Error::Cancelled.sqlstate(), "57014");
    }
}
