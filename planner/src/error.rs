//! The planner's error type. Besides planning failures it holds the errors Ember's own operators
//! and functions raise inside DataFusion plans (wrapped as `DataFusionError::External`), each
//! with the SQLSTATE it stands for, so that their kind survives the trip from an executor.

use datafusion::error::DataFusionError;

use crate::sqlstate::{ErrorClass, ErrorKind, SqlState, classify};

/// Result with the planner's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while cutting, encoding, decoding or running plans.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// DataFusion failed.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// A task fragment that cannot run as it is.
    #[error("invalid task: {0}")]
    InvalidTask(String),
    /// A task fragment that does not decode.
    #[error("protobuf decode error: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A location outside `storage.allowed_paths` (or one that cannot be checked).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A value longer than its column's declared `varchar(n)` or `char(n)`.
    #[error("value too long for type {type_name}")]
    ValueTooLong {
        /// PostgreSQL's name of the declared type, `character varying(5)` say.
        type_name: String,
    },
    /// A NULL written to a column declared NOT NULL (or part of a primary key).
    #[error("null value in column \"{column}\" violates not-null constraint")]
    NotNullViolation {
        /// The column's name.
        column: String,
    },
    /// A value beyond a limit Ember sets so that no input sizes an allocation unchecked (a
    /// `format()` width, a setting that sizes buffers).
    #[error("{what} is limited to {limit}")]
    LimitExceeded {
        /// What was too large, in words the user knows (`format() width 100000000`).
        what: String,
        /// The limit.
        limit: u64,
    },
    /// A write beyond `executor.max_disk_bytes`.
    #[error(
        "the executor's work dir is full: its shuffle files may use at most \
         executor.max_disk_bytes = {limit} bytes"
    )]
    DiskFull {
        /// The configured limit.
        limit: u64,
    },
}

impl Error {
    /// The kind and SQLSTATE of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::DataFusion(error) => classify(error),
            Error::InvalidTask(_) | Error::Decode(_) => ErrorClass {
                kind: ErrorKind::Internal,
                sqlstate: SqlState::INTERNAL,
            },
            Error::PermissionDenied(_) => user(SqlState::INSUFFICIENT_PRIVILEGE),
            Error::ValueTooLong { .. } => user(SqlState::STRING_DATA_RIGHT_TRUNCATION),
            Error::NotNullViolation { .. } => user(SqlState::NOT_NULL_VIOLATION),
            Error::LimitExceeded { .. } => user(SqlState::PROGRAM_LIMIT_EXCEEDED),
            Error::DiskFull { .. } => ErrorClass {
                kind: ErrorKind::Resources,
                sqlstate: SqlState::DISK_FULL,
            },
        }
    }

    /// This error inside a DataFusion error, as Ember's operators and functions return it.
    pub fn into_datafusion(self) -> DataFusionError {
        match self {
            Error::DataFusion(error) => error,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}

fn user(sqlstate: SqlState) -> ErrorClass {
    ErrorClass {
        kind: ErrorKind::User,
        sqlstate,
    }
}
