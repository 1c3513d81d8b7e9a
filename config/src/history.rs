//! The `[history]` section: the event log of every query and the history the web UI and REST
//! API show after a restart.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `[history]` section: where and for how long query events are kept.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Whether each query's events are appended as JSON lines, one file per query.
    pub enabled: bool,
    /// Directory of the logs; empty means `<data_dir>/events`.
    pub dir: PathBuf,
    /// Hours a finished query's events are kept; older ones are deleted.
    pub retention_hours: u64,
    /// Finished queries whose events are kept; the oldest beyond this are deleted.
    pub max_queries: usize,
}
