//! The `[http]` section: the coordinator's web UI, REST API and Prometheus metrics.

use serde::{Deserialize, Serialize};

/// The `[http]` section: where the web UI, `/api/v1` and `/metrics` are served.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Whether the coordinator serves HTTP at all.
    pub enabled: bool,
    /// HTTP port (default 4040, as Spark's UI); bound on `coordinator.bind_host`. 0 picks a free
    /// port.
    pub port: u16,
    /// How often, in milliseconds, open pages refresh what they show (at least 200).
    pub refresh_ms: u64,
    /// Whether `/metrics` may be scraped without credentials when `auth.method` is not trust
    /// (the UI and `/api/v1` always ask for them then).
    pub metrics_without_auth: bool,
    /// HTTP connections open at once; more wait until one closes. A connection that sends
    /// nothing for a minute is closed.
    pub max_connections: usize,
}
