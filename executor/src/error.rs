//! The executor's error type.

/// Result with the executor's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can stop an executor (a task's failure is reported to the coordinator instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Setting up DataFusion's runtime failed.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Registering Ember's functions or decoding a plan failed.
    #[error(transparent)]
    Planner(#[from] ember_planner::Error),
    /// The work dir could not be prepared.
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    /// The Flight service or the connection to the coordinator failed.
    #[error("grpc transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The coordinator refused or ended the session.
    #[error("grpc status: {0}")]
    Status(#[from] tonic::Status),
    /// The coordinator refused this executor, or failed to prove the cluster secret.
    #[error("{0}")]
    Refused(String),
    /// The coordinator sent something the protocol does not allow.
    #[error("{0}")]
    Protocol(String),
}
