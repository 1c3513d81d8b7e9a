//! Task failures as they cross the wire. An executor describes a failed task once, where the
//! error arose, from the error's type: a lost map output (typed, so the scheduler recomputes just
//! that output), a cancellation, or an execution error with its kind (may a retry help?) and its
//! SQLSTATE. The coordinator reads that description back without looking at the message.

use datafusion::error::DataFusionError;
use ember_planner::ids::{ExecutorId, StageId};
use ember_planner::shuffle::ShuffleError;
use ember_planner::sqlstate::{ErrorKind, SqlState, classify};

use crate::proto::{self, ExecutionError, FetchFailed, TaskFailed, task_failed};

/// A task failure as the scheduler acts on it.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskFailure {
    /// A map output the task read is gone: recompute it, then run the task again.
    FetchFailed {
        /// Where the output was.
        executor_id: ExecutorId,
        /// The stage that wrote it.
        stage_id: StageId,
        /// Its map partition.
        map_partition: u32,
        /// The attempt that wrote it (an output since replaced is not recomputed twice).
        map_attempt: u32,
        /// What the reader saw.
        message: String,
    },
    /// The task's code failed.
    Execution {
        /// Whether a retry could help.
        kind: ErrorKind,
        /// What the error is.
        sqlstate: SqlState,
        /// The error's message.
        message: String,
    },
    /// The executor stopped the task without being asked (its session ended, say).
    Cancelled,
}

impl TaskFailure {
    /// Describes a DataFusion error that ended a task.
    pub fn from_error(error: &DataFusionError) -> Self {
        if let Some(ShuffleError::FetchFailed {
            executor_id,
            stage_id,
            map_partition,
            map_attempt,
            message,
        }) = ShuffleError::find(error)
        {
            return TaskFailure::FetchFailed {
                executor_id: executor_id.clone(),
                stage_id: *stage_id,
                map_partition: *map_partition,
                map_attempt: *map_attempt,
                message: message.clone(),
            };
        }
        let class = classify(error);
        let message = match (class.kind, ember_error(error)) {
            // DataFusion's words name the operator and the pool, not where it ran.
            (ErrorKind::Resources, None) => {
                format!(
                    "not enough resources on the executor: {}",
                    user_message(error)
                )
            }
            _ => user_message(error),
        };
        TaskFailure::Execution {
            kind: class.kind,
            sqlstate: class.sqlstate,
            message,
        }
    }

    /// A task whose code panicked.
    pub fn panicked(message: &str) -> Self {
        TaskFailure::Execution {
            kind: ErrorKind::Internal,
            sqlstate: SqlState::INTERNAL,
            message: format!("task panicked: {message}"),
        }
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> TaskFailed {
        let reason = match self {
            TaskFailure::FetchFailed {
                executor_id,
                stage_id,
                map_partition,
                map_attempt,
                message,
            } => task_failed::Reason::FetchFailed(FetchFailed {
                executor_id: executor_id.0.clone(),
                stage_id: stage_id.0,
                map_partition: *map_partition,
                map_attempt: *map_attempt,
                message: message.clone(),
            }),
            TaskFailure::Execution {
                kind,
                sqlstate,
                message,
            } => task_failed::Reason::Execution(ExecutionError {
                kind: kind_to_proto(*kind) as i32,
                message: message.clone(),
                sqlstate: sqlstate.to_string(),
            }),
            TaskFailure::Cancelled => task_failed::Reason::Cancelled(proto::Cancelled {}),
        };
        TaskFailed {
            reason: Some(reason),
        }
    }

    /// Reads the protobuf form back; missing or unknown fields read as an internal error.
    pub fn from_proto(failed: TaskFailed) -> Self {
        match failed.reason {
            Some(task_failed::Reason::FetchFailed(f)) => TaskFailure::FetchFailed {
                executor_id: ExecutorId(f.executor_id),
                stage_id: StageId(f.stage_id),
                map_partition: f.map_partition,
                map_attempt: f.map_attempt,
                message: f.message,
            },
            Some(task_failed::Reason::Execution(e)) => TaskFailure::Execution {
                kind: kind_from_proto(e.kind),
                sqlstate: SqlState::parse(&e.sqlstate).unwrap_or(SqlState::INTERNAL),
                message: e.message,
            },
            Some(task_failed::Reason::Cancelled(_)) => TaskFailure::Cancelled,
            None => TaskFailure::Execution {
                kind: ErrorKind::Internal,
                sqlstate: SqlState::INTERNAL,
                message: "task failed".into(),
            },
        }
    }
}

/// The message a client should see: an Ember error raised inside DataFusion reads as itself
/// (`value too long for type character varying(3)`), anything else as DataFusion words it.
pub fn user_message(error: &DataFusionError) -> String {
    match ember_error(error) {
        Some(ember) => ember.to_string(),
        None => error.strip_backtrace(),
    }
}

/// The Ember error at the root of a DataFusion error, if that is what it is.
fn ember_error(error: &DataFusionError) -> Option<&ember_planner::Error> {
    match error {
        DataFusionError::External(e) => e.downcast_ref::<ember_planner::Error>(),
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            ember_error(inner)
        }
        DataFusionError::Shared(inner) => ember_error(inner),
        DataFusionError::ArrowError(e, _) => match e.as_ref() {
            datafusion::arrow::error::ArrowError::ExternalError(e) => e.downcast_ref(),
            datafusion::arrow::error::ArrowError::IoError(_, e) => e.get_ref()?.downcast_ref(),
            _ => None,
        },
        DataFusionError::IoError(e) => e.get_ref()?.downcast_ref(),
        _ => None,
    }
}

fn kind_to_proto(kind: ErrorKind) -> proto::ErrorKind {
    match kind {
        ErrorKind::User => proto::ErrorKind::User,
        ErrorKind::Resources => proto::ErrorKind::Resources,
        ErrorKind::Io => proto::ErrorKind::Io,
        ErrorKind::Internal => proto::ErrorKind::Internal,
    }
}

fn kind_from_proto(kind: i32) -> ErrorKind {
    match proto::ErrorKind::try_from(kind) {
        Ok(proto::ErrorKind::User) => ErrorKind::User,
        Ok(proto::ErrorKind::Resources) => ErrorKind::Resources,
        Ok(proto::ErrorKind::Io) => ErrorKind::Io,
        Ok(proto::ErrorKind::Internal) | Err(_) => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::error::ArrowError;

    use super::*;

    fn round_trip(failure: &TaskFailure) -> TaskFailure {
        TaskFailure::from_proto(failure.to_proto())
    }

    #[test]
    fn execution_errors_keep_kind_and_sqlstate_across_the_wire() {
        let zero = DataFusionError::ArrowError(Box::new(ArrowError::DivideByZero), None);
        let failure = TaskFailure::from_error(&zero);
        assert_eq!(round_trip(&failure), failure);
        let TaskFailure::Execution { kind, sqlstate, .. } = failure else {
            panic!("an execution error")
        };
        assert_eq!(
            (kind, sqlstate),
            (ErrorKind::User, SqlState::DIVISION_BY_ZERO)
        );

        let full = std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            ember_planner::Error::DiskFull { limit: 5 },
        );
        let failure = TaskFailure::from_error(&DataFusionError::ArrowError(
            Box::new(ArrowError::IoError("write".into(), full)),
            None,
        ));
        let TaskFailure::Execution {
            kind,
            sqlstate,
            message,
        } = round_trip(&failure)
        else {
            panic!("an execution error")
        };
        assert_eq!(
            (kind, sqlstate),
            (ErrorKind::Resources, SqlState::DISK_FULL)
        );
        assert!(
            message.starts_with("the executor's work dir is full"),
            "{message}"
        );
    }

    #[test]
    fn lost_map_outputs_stay_typed() {
        let lost = DataFusionError::External(Box::new(ShuffleError::FetchFailed {
            executor_id: ExecutorId("exec-1".into()),
            stage_id: StageId(2),
            map_partition: 4,
            map_attempt: 1,
            message: "connection refused".into(),
        }));
        let failure =
            TaskFailure::from_error(&DataFusionError::Context("reading".into(), Box::new(lost)));
        assert!(matches!(
            round_trip(&failure),
            TaskFailure::FetchFailed {
                map_partition: 4,
                map_attempt: 1,
                ..
            }
        ));
    }

    #[test]
    fn malformed_reports_read_as_internal_errors() {
        let failed = TaskFailed {
            reason: Some(task_failed::Reason::Execution(ExecutionError {
                kind: 42,
                message: "?".into(),
                sqlstate: "not a code".into(),
            })),
        };
        assert!(matches!(
            TaskFailure::from_proto(failed),
            TaskFailure::Execution {
                kind: ErrorKind::Internal,
                sqlstate: SqlState::INTERNAL,
                ..
            }
        ));
        assert!(matches!(
            TaskFailure::from_proto(TaskFailed { reason: None }),
            TaskFailure::Execution {
                kind: ErrorKind::Internal,
                ..
            }
        ));
    }
}
