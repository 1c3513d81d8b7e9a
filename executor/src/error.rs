//! The executor's error type.

/// Result with the executor's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Planner(#[from] ember_planner::Error),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("grpc transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("grpc status: {0}")]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    Protocol(String),
}
