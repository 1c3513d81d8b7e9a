//! The planner's error type.

use datafusion::error::DataFusionError;

/// Result with the planner's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while cutting, encoding or decoding plans.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error("invalid task: {0}")]
    InvalidTask(String),
    #[error("protobuf decode error: {0}")]
    Decode(#[from] prost::DecodeError),
}
