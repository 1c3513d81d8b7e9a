//! The one mapping from Ember's errors to gRPC status codes. The message is the original one;
//! the SQLSTATE travels along in the `x-ember-sqlstate` metadata entry.

use datafusion::error::DataFusionError;
use tonic::{Code, Status};

use ember_coordinator::Error;

/// The gRPC status for an error, with its message and SQLSTATE.
pub(crate) fn status(error: &Error) -> Status {
    let sqlstate = error.sqlstate();
    let code = match error {
        Error::Cancelled => Code::Cancelled,
        Error::StatementTimeout => Code::DeadlineExceeded,
        Error::Unavailable(_) | Error::Shutdown => Code::Unavailable,
        Error::NotSupported(_) => Code::Unimplemented,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::InvalidAuthorization(_) => Code::Unauthenticated,
        Error::UndefinedTable(_)
        | Error::UndefinedFunction(_)
        | Error::UndefinedObject(_)
        | Error::UndefinedCursor(_)
        | Error::UndefinedPreparedStatement(_) => Code::NotFound,
        Error::DuplicateCursor(_)
        | Error::DuplicateTable(_)
        | Error::DuplicateSchema(_)
        | Error::DuplicatePreparedStatement(_)
        | Error::DuplicateObject(_) => Code::AlreadyExists,
        Error::DependentObjects(_) | Error::TransactionAborted => Code::FailedPrecondition,
        // gRPC's code for a transaction that lost a race and may be retried.
        Error::SerializationFailure(_) => Code::Aborted,
        Error::Syntax(_)
        | Error::WrongObjectType(_)
        | Error::InvalidParameter(_)
        | Error::InvalidSettingValue(_)
        | Error::CardinalityViolation(_)
        | Error::InvalidGrant(_)
        | Error::ReservedName(_) => Code::InvalidArgument,
        Error::LimitExceeded(_) => Code::ResourceExhausted,
        Error::Io(_) | Error::Transport(_) => Code::Unavailable,
        Error::Config(_) => Code::Internal,
        Error::DataFusion(_) | Error::Planner(_) | Error::Task { .. } => {
            code_of_sqlstate(sqlstate.as_str())
        }
    };
    let mut status = Status::new(code, error.to_string());
    if let Ok(value) = sqlstate.as_str().parse() {
        status.metadata_mut().insert("x-ember-sqlstate", value);
    }
    status
}

/// The status of an error that travelled inside a DataFusion stream.
pub(crate) fn datafusion_status(error: DataFusionError) -> Status {
    status(&Error::from(error))
}

/// Codes by SQLSTATE class, for errors whose kind only the SQLSTATE tells.
fn code_of_sqlstate(sqlstate: &str) -> Code {
    match sqlstate {
        "42P01" | "42704" | "42703" | "42883" => Code::NotFound,
        "42P07" => Code::AlreadyExists,
        "42501" => Code::PermissionDenied,
        "0A000" => Code::Unimplemented,
        "57014" => Code::Cancelled,
        "58000" | "58030" => Code::Unavailable,
        "XX000" => Code::Internal,
        s if s.starts_with("53") => Code::ResourceExhausted,
        s if s.starts_with("22") || s.starts_with("42") || s.starts_with("21") => {
            Code::InvalidArgument
        }
        _ => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_fitting_codes() {
        let missing = Error::UndefinedTable(
            "Error during planning: table 'ember.public.nope' not found".into(),
        );
        let status = status(&missing);
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(
            status.message(),
            "Error during planning: table 'ember.public.nope' not found"
        );
        assert_eq!(status.metadata().get("x-ember-sqlstate").unwrap(), "42P01");
        assert_eq!(
            super::status(&Error::Syntax("bad".into())).code(),
            Code::InvalidArgument
        );
        let zero = Error::Task {
            kind: ember_coordinator::TaskErrorKind::User,
            sqlstate: ember_coordinator::SqlState::DIVISION_BY_ZERO,
            message: "Arrow error: Divide by zero error".into(),
        };
        assert_eq!(super::status(&zero).code(), Code::InvalidArgument);
        assert_eq!(super::status(&Error::Cancelled).code(), Code::Cancelled);
        // DataFusion's untyped plan errors are invalid statements, whatever they say.
        let plan = Error::DataFusion(DataFusionError::Plan("a missing thing not found".into()));
        assert_eq!(super::status(&plan).code(), Code::InvalidArgument);
    }
}
