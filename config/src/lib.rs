//! Ember's configuration: the documented defaults in `ember.toml`, overlaid by a file, by
//! `EMBER_<SECTION>_<KEY>` environment variables and by command-line flags, then checked.
//!
//! ```text
//!  ember.toml (defaults) ─► --config FILE ─► EMBER_* env ─► flags ─► EmberConfig (validated)
//! ```
//! Every layer may only set keys that the defaults define; a misspelt or ill-typed key is an
//! error that names it.

use std::path::{Path, PathBuf};

mod adaptive;
mod history;
mod http;
mod kubernetes;
pub use adaptive::AdaptiveConfig;
pub use history::HistoryConfig;
pub use http::HttpConfig;
pub use kubernetes::KubernetesConfig;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// The defaults, with every key documented.
pub const DEFAULT_CONFIG: &str = include_str!("../ember.toml");

/// Result with the config crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the configuration could not be read, merged or checked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// Text that is not valid TOML, or merged settings that do not fit [`EmberConfig`].
    #[error("invalid config in {origin}: {message}")]
    Parse {
        /// Where the text came from: a file, an environment variable or flag, or `merged
        /// configuration`.
        origin: String,
        /// The parser's message.
        message: String,
    },
    /// A key (or section) that the defaults in `ember.toml` do not define.
    #[error("unknown config key `{key}` in {origin}")]
    UnknownKey {
        /// The key, as `section.key`.
        key: String,
        /// Where it came from: a file, an environment variable or a flag.
        origin: String,
    },
    /// A value of the wrong type, or one outside the range the setting allows.
    #[error("invalid value for config key `{key}` in {origin}: {message}")]
    InvalidValue {
        /// The offending key, as `section.key`.
        key: String,
        /// Where the value came from: a file, an environment variable, a flag, or `configuration`
        /// for the checks on the merged settings.
        origin: String,
        /// What is wrong with the value.
        message: String,
    },
}

/// Ember's merged and validated settings, one field per section of `ember.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmberConfig {
    /// `[coordinator]`: listeners, data dir, executor liveness and query history.
    pub coordinator: CoordinatorConfig,
    /// `[scheduler]`: task retries, speculative execution and query admission.
    pub scheduler: SchedulerConfig,
    /// `[adaptive]`: stages re-planned from the exact sizes of the shuffles they read.
    pub adaptive: AdaptiveConfig,
    /// `[auth]`: how Postgres and Flight SQL clients authenticate.
    pub auth: AuthConfig,
    /// `[tls]`: TLS for the Postgres port.
    pub tls: TlsConfig,
    /// `[executor]`: an executor's Flight service, work dir and resources.
    pub executor: ExecutorConfig,
    /// `[storage]`: allowed local paths and S3-compatible object storage.
    pub storage: StorageConfig,
    /// `[cache]`: sizes of the metadata, listing and statistics caches.
    pub cache: CacheConfig,
    /// `[local]`: settings for `ember local`.
    pub local: LocalConfig,
    /// `[cluster_manager]`: who starts executors, and how many.
    pub cluster_manager: ClusterManagerConfig,
    /// `[kubernetes]`: the executor pods of the `kubernetes` cluster manager.
    pub kubernetes: KubernetesConfig,
    /// `[http]`: the web UI, REST API and Prometheus metrics.
    pub http: HttpConfig,
    /// `[history]`: the event log and the history of finished queries.
    pub history: HistoryConfig,
    /// `[tpch]`: generated TPC-H sample data.
    pub tpch: TpchConfig,
}

/// The `[scheduler]` section: task retries, speculative execution and query admission.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Attempts of a task before its query fails (at least 1); deterministic user errors are never
    /// retried, and re-runs after a lost executor or map output do not count.
    pub task_max_attempts: u32,
    /// How long, in milliseconds, a query with no live executor waits for one to register before
    /// it fails.
    pub executor_wait_ms: u64,
    /// Bytes of a result partition held on the coordinator until its task finishes, so that a lost
    /// result task can be re-run unnoticed; beyond this rows stream on, and a later loss fails the
    /// query.
    pub result_buffer_bytes: u64,
    /// Whether a task that runs much longer than its finished siblings gets a second attempt on
    /// another executor; the first attempt to finish wins. Off by default.
    pub speculation: bool,
    /// A task is slow once it has run this many times the median duration of its finished
    /// siblings (at least 1).
    pub speculation_multiplier: f64,
    /// Fraction (0 to 1) of a stage's tasks that must have finished before any of the rest is
    /// speculated.
    pub speculation_quantile: f64,
    /// Minimum time, in milliseconds, a task must have run before it can be speculated.
    pub speculation_min_ms: u64,
    /// Milliseconds after which a task of a stage with no more tasks than one executor has
    /// slots is speculated without waiting for siblings (it may have none); 0: never.
    pub speculation_task_duration_ms: u64,
    /// Queries running at once; further queries wait in a queue. 0 means no limit.
    pub max_running_queries: usize,
    /// Queries that may wait for a running slot; a query arriving at a full queue is refused
    /// (SQLSTATE 53000).
    pub max_queued_queries: usize,
}

/// The `[auth]` section: how Postgres and Flight SQL clients authenticate.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Postgres authentication method: `trust` (the default; local use only), `password`, `md5`
    /// or `scram-sha-256`.
    pub method: String,
    /// Users allowed to connect when the method is not `trust`, as `name:verifier` entries; the
    /// verifier is what `ember passwd NAME` prints.
    pub users: Vec<String>,
    /// Roles that always exist, may log in and pass every privilege check; other roles come
    /// from `CREATE ROLE` (or `users`) and hold what `GRANT` gives them.
    pub superusers: Vec<String>,
    /// Lifetime, in milliseconds, of the Bearer tokens Flight SQL clients get at the handshake
    /// (at least 1000).
    pub token_ttl_ms: u64,
    /// Secret signing Flight SQL tokens and tickets, shared by the coordinator and every executor;
    /// empty means the coordinator makes a random one at start.
    pub flight_secret: String,
    /// Secret shared by the coordinator and every executor: executors prove it to join, the
    /// coordinator proves it back, and shuffle tickets are signed with it. Empty: read from
    /// `cluster_secret_file`, else `<data_dir>/cluster.secret` (the coordinator writes one there
    /// if it finds none).
    pub cluster_secret: String,
    /// File holding the cluster secret (its first line); used when `cluster_secret` is empty.
    pub cluster_secret_file: PathBuf,
}

/// The `[tls]` section: certificates for the client ports (Postgres, Flight SQL) and for the
/// cluster's ports (coordinator gRPC, executor Flight).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain for the client ports (Postgres and Flight SQL); empty (together with
    /// `key_file`) means no TLS there.
    pub cert_file: PathBuf,
    /// PEM private key for `cert_file`; set or left empty together with it.
    pub key_file: PathBuf,
    /// PEM certificate of the CA that signs every cluster member's certificate; members verify
    /// each other against it. Set together with `cluster_cert_file` and `cluster_key_file`;
    /// all three empty means plaintext cluster ports.
    pub cluster_ca_file: PathBuf,
    /// PEM certificate chain this member presents on the cluster's ports.
    pub cluster_cert_file: PathBuf,
    /// PEM private key for `cluster_cert_file`.
    pub cluster_key_file: PathBuf,
}

/// The `[cache]` section: memory for the Parquet metadata, file listing and statistics caches.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Bytes of Parquet footers cached in memory on every node that reads files; 0 turns the
    /// cache off.
    pub metadata_bytes: u64,
    /// Bytes of table directory listings cached by the coordinator; 0 turns the cache off.
    pub listing_bytes: u64,
    /// How long a cached listing stays valid, in milliseconds, for files added behind Ember's back;
    /// 0 means until a write through Ember.
    pub listing_ttl_ms: u64,
    /// Bytes of per-file statistics (row counts, min/max) the coordinator keeps for planning.
    pub statistics_bytes: u64,
    /// Bytes (estimated: their files' entries) of Delta table versions that time travel read,
    /// kept by the coordinator; 0 turns the cache off.
    pub delta_snapshot_bytes: u64,
}

/// The `[storage]` section: where local data may live and how to reach S3-compatible storage.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Local directories that tables, COPY and scanned or written files must lie in; empty means
    /// the data dir (see [`EmberConfig::allowed_paths`]). Ember's internal directories (the
    /// catalog, executor work dirs) are refused even inside them.
    pub allowed_paths: Vec<PathBuf>,
    /// Remote locations (`s3://bucket/prefix/`) tables, COPY and scans may use: a location must
    /// lie under one of them. Empty: no remote location is allowed.
    pub allowed_remote: Vec<String>,
    /// Endpoint for `s3://` locations; empty falls back to `AWS_ENDPOINT`.
    pub s3_endpoint: String,
    /// S3 region; empty falls back to `AWS_REGION`.
    pub s3_region: String,
    /// S3 access key id; empty falls back to `AWS_ACCESS_KEY_ID`.
    pub s3_access_key_id: String,
    /// S3 secret access key; empty falls back to `AWS_SECRET_ACCESS_KEY`.
    pub s3_secret_access_key: String,
    /// Allow plain HTTP to the S3 endpoint (local S3-compatible servers).
    pub s3_allow_http: bool,
}

/// The `[coordinator]` section: listeners, data dir, executor liveness and query history.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Address the client ports (Postgres, Flight SQL) bind to; `0.0.0.0` accepts remote clients.
    pub bind_host: String,
    /// Address the cluster port (`port`, where executors register) binds to; loopback by
    /// default, so exposing the client ports does not expose the cluster.
    pub cluster_bind_host: String,
    /// gRPC port that executors dial to register, heartbeat and receive tasks (default 50050).
    pub port: u16,
    /// Postgres wire protocol port (default 5433).
    pub pg_port: u16,
    /// Directory for catalog data, generated sample data and, in local mode, executor work dirs.
    pub data_dir: PathBuf,
    /// Milliseconds without a heartbeat after which an executor is declared lost; must exceed
    /// `executor.heartbeat_interval_ms`.
    pub executor_timeout_ms: u64,
    /// How many queries (with their tasks) stay visible in `system.queries` and `system.tasks`.
    pub history_size: usize,
    /// Largest gRPC message accepted or sent between coordinator and executors, in bytes (at
    /// least 4 MiB).
    pub max_message_size: usize,
    /// Arrow Flight SQL port (default 50051); 0 picks a free port.
    pub flight_sql_port: u16,
    /// Whether the coordinator relays all Flight SQL result data, instead of sending clients to
    /// fetch each partition from the executor that computes it.
    pub flight_sql_proxy: bool,
    /// Milliseconds a Flight SQL result may go unfetched before it is dropped and its tickets
    /// expire.
    pub flight_sql_fetch_timeout_ms: u64,
    /// Most task slots one executor may offer; a registration claiming more is refused.
    pub max_executor_slots: usize,
    /// Most memory, in bytes, one executor may claim; a registration claiming more is refused.
    pub max_executor_memory: u64,
    /// Most executors registered at once; further registrations are refused.
    pub max_executors: usize,
    /// Milliseconds a lost executor stays listed in `system.executors` before it is forgotten.
    pub lost_executor_retention_ms: u64,
    /// Clients connected at once on each client port (Postgres connections, Flight SQL
    /// sessions); one more is refused (SQLSTATE 53300).
    pub max_connections: usize,
    /// Postgres connections, and Flight SQL sessions, one user may hold at once; one more is
    /// refused (SQLSTATE 53300).
    pub max_sessions_per_user: usize,
    /// Milliseconds after which an unused Flight SQL session is closed.
    pub flight_sql_session_idle_ms: u64,
    /// Bytes of Arrow data one Flight SQL ingest (DoPut) may send; the coordinator holds them
    /// until the write.
    pub max_ingest_bytes: u64,
    /// Whether trees of inner joins are reordered to join relations with filters of their own
    /// first (the planner's `FilteredJoinsFirst`).
    pub filtered_joins_first: bool,
    /// Whether parquet scans are cut into tasks on row-group boundaries, about as many rows each
    /// (sessions: `ember.row_group_splits`).
    pub row_group_splits: bool,
    /// The most partitions a shuffle is given when the planner estimates that one per task slot
    /// would not fit an eighth of a slot's memory each; 0: always one per slot (sessions:
    /// `ember.max_shuffle_partitions`).
    pub max_shuffle_partitions: usize,
    /// The largest join side, in estimated bytes, sent whole to every task (a broadcast join)
    /// rather than shuffled by key with the other side; lowered to a quarter of a task slot's
    /// memory when that is less. 0: no side of known size is broadcast (sessions:
    /// `datafusion.optimizer.hash_join_single_partition_threshold`).
    pub broadcast_join_bytes: u64,
}

/// The `[executor]` section: an executor's Flight service, work dir and resource limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorConfig {
    /// Address the executor's Flight service binds to and advertises to peers.
    pub bind_host: String,
    /// Arrow Flight port for shuffle data; 0 picks a free port.
    pub flight_port: u16,
    /// Directory for shuffle files; empty means `<data_dir>/work/<executor id>`.
    pub work_dir: PathBuf,
    /// Concurrent task slots; 0 means the number of CPU cores (divided among the executors in
    /// `ember local`).
    pub slots: usize,
    /// Bytes of memory for running tasks, shared by the slots (operators spill beyond their share);
    /// 0 means 60% of the machine's memory (divided among the executors in `ember local`).
    pub memory: u64,
    /// How often the executor reports that it is alive, in milliseconds (must be positive).
    pub heartbeat_interval_ms: u64,
    /// The allocation a cluster manager started this executor for; cluster managers set it
    /// (`EMBER_EXECUTOR_ALLOCATION_ID`), people leave it empty.
    pub allocation_id: String,
    /// Bytes of disk the work dir (shuffle files and spills) may use; a task that would write more
    /// fails with SQLSTATE 53100. 0 means no limit.
    pub max_disk_bytes: u64,
    /// How map outputs are compressed on disk: `none`, `lz4` or `zstd` (Arrow IPC buffer
    /// compression; readers accept any).
    pub shuffle_compression: String,
    /// Milliseconds a decommissioning executor (SIGTERM) lets its tasks finish before it hands
    /// them back and exits.
    pub decommission_grace_ms: u64,
}

/// The `[local]` section: settings for `ember local`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// Executors started in-process by `ember local` (default 2).
    pub executors: usize,
}

/// The `[cluster_manager]` section: who starts executors, and how many.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterManagerConfig {
    /// `static` (executors started by hand register themselves), `local` (the coordinator
    /// starts them in its own process) or `standalone` (`ember worker` daemons start them).
    pub kind: String,
    /// Executors kept running through the cluster manager.
    pub executors: usize,
    /// Task slots of each requested executor; 0: the cluster manager decides.
    pub executor_slots: usize,
    /// Bytes of memory of each requested executor; 0: the cluster manager decides.
    pub executor_memory: u64,
    /// Milliseconds a requested executor may take to register before it is replaced.
    pub start_timeout_ms: u64,
    /// Scale between `min_executors` and `max_executors` with the load (`executors` is the
    /// initial number).
    pub dynamic_allocation: bool,
    /// Fewest executors dynamic allocation keeps.
    pub min_executors: usize,
    /// Most executors dynamic allocation asks for.
    pub max_executors: usize,
    /// Milliseconds tasks wait for a slot before more executors are asked for.
    pub scheduler_backlog_timeout_ms: u64,
    /// Milliseconds between further requests while the backlog lasts (each doubling).
    pub sustained_scheduler_backlog_timeout_ms: u64,
    /// Milliseconds an executor may stay idle before it is given back.
    pub executor_idle_timeout_ms: u64,
}

/// The `[tpch]` section: generated TPC-H sample data.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TpchConfig {
    /// TPC-H scale factor generated into `<data_dir>/tpch` and registered as schema `tpch`; 0 turns
    /// it off (at most 1000).
    pub scale: f64,
}

/// The first line of a secret file, which must be at least 16 characters long.
pub fn read_secret_file(path: &Path) -> std::result::Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text.lines().next().unwrap_or_default().trim().to_string();
    if secret.len() < 16 {
        return Err(format!(
            "{} must hold a secret of at least 16 characters",
            path.display()
        ));
    }
    Ok(secret)
}

/// Builds an [`EmberConfig`] layer by layer.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    table: Table,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigBuilder {
    /// Starts from the documented defaults.
    pub fn new() -> Self {
        let table = DEFAULT_CONFIG
            .parse::<Table>()
            .expect("the bundled ember.toml is valid TOML (checked by a unit test)");
        Self { table }
    }

    /// Overlays a TOML file.
    pub fn file(self, path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.toml(&text, &path.display().to_string())
    }

    /// Overlays TOML text; `origin` names it in errors.
    pub fn toml(mut self, text: &str, origin: &str) -> Result<Self> {
        let overlay = text.parse::<Table>().map_err(|e| Error::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        for (section, values) in overlay {
            let Value::Table(values) = values else {
                return Err(Error::UnknownKey {
                    key: section,
                    origin: origin.to_string(),
                });
            };
            for (key, value) in values {
                self.set_value(&format!("{section}.{key}"), value, origin)?;
            }
        }
        Ok(self)
    }

    /// Overlays `EMBER_<SECTION>_<KEY>` variables from the given environment.
    pub fn env(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let known: Vec<String> = self.keys();
        for (name, raw) in vars {
            let Some(rest) = name.strip_prefix("EMBER_") else {
                continue;
            };
            let Some(key) = known
                .iter()
                .find(|k| k.replace('.', "_").eq_ignore_ascii_case(rest))
            else {
                // EMBER_* variables that are not settings (EMBER_LOG, say) are left alone.
                continue;
            };
            let key = key.clone();
            self.set_str(&key, &raw, &format!("environment variable {name}"))?;
        }
        Ok(self)
    }

    /// Sets one key from a string, typed like its default (flags and environment variables).
    pub fn set_str(&mut self, key: &str, raw: &str, origin: &str) -> Result<()> {
        let default = self.get(key).ok_or_else(|| Error::UnknownKey {
            key: key.to_string(),
            origin: origin.to_string(),
        })?;
        let invalid = |message: String| Error::InvalidValue {
            key: key.to_string(),
            origin: origin.to_string(),
            message,
        };
        let value = match default {
            Value::String(_) => Value::String(raw.to_string()),
            Value::Integer(_) => Value::Integer(
                raw.trim()
                    .parse()
                    .map_err(|e| invalid(format!("{raw:?} is not an integer ({e})")))?,
            ),
            Value::Float(_) => Value::Float(
                raw.trim()
                    .parse()
                    .map_err(|e| invalid(format!("{raw:?} is not a number ({e})")))?,
            ),
            Value::Boolean(_) => Value::Boolean(
                raw.trim()
                    .parse()
                    .map_err(|_| invalid(format!("{raw:?} is not true or false")))?,
            ),
            Value::Array(_) => Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_string()))
                    .collect(),
            ),
            other => {
                return Err(invalid(format!(
                    "cannot set a {} from text",
                    other.type_str()
                )));
            }
        };
        self.set_value(key, value, origin)
    }

    fn set_value(&mut self, key: &str, value: Value, origin: &str) -> Result<()> {
        let unknown = || Error::UnknownKey {
            key: key.to_string(),
            origin: origin.to_string(),
        };
        let (section, name) = key.split_once('.').ok_or_else(unknown)?;
        let slot = self
            .table
            .get_mut(section)
            .and_then(Value::as_table_mut)
            .and_then(|t| t.get_mut(name))
            .ok_or_else(unknown)?;
        // Integers are accepted where a float is expected (`scale = 1`).
        let value = match (&*slot, value) {
            (Value::Float(_), Value::Integer(i)) => Value::Float(i as f64),
            (_, value) => value,
        };
        if slot.type_str() != value.type_str() {
            return Err(Error::InvalidValue {
                key: key.to_string(),
                origin: origin.to_string(),
                message: format!("expected a {}, got a {}", slot.type_str(), value.type_str()),
            });
        }
        *slot = value;
        Ok(())
    }

    fn get(&self, key: &str) -> Option<&Value> {
        let (section, name) = key.split_once('.')?;
        self.table.get(section)?.as_table()?.get(name)
    }

    fn keys(&self) -> Vec<String> {
        let mut keys = vec![];
        for (section, values) in &self.table {
            if let Some(values) = values.as_table() {
                keys.extend(values.keys().map(|k| format!("{section}.{k}")));
            }
        }
        keys
    }

    /// Checks the merged settings and produces the typed config.
    pub fn build(self) -> Result<EmberConfig> {
        let config: EmberConfig =
            Value::Table(self.table)
                .try_into()
                .map_err(|e: toml::de::Error| Error::Parse {
                    origin: "merged configuration".to_string(),
                    message: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }
}

impl EmberConfig {
    /// The directories local table and COPY locations must lie in.
    pub fn allowed_paths(&self) -> Vec<PathBuf> {
        if self.storage.allowed_paths.is_empty() {
            vec![self.coordinator.data_dir.clone()]
        } else {
            self.storage.allowed_paths.clone()
        }
    }

    /// The cluster secret: `auth.cluster_secret`, else the first line of
    /// `auth.cluster_secret_file`; `None` when neither is set.
    pub fn cluster_secret(&self) -> Result<Option<String>> {
        if !self.auth.cluster_secret.is_empty() {
            return Ok(Some(self.auth.cluster_secret.clone()));
        }
        if self.auth.cluster_secret_file.as_os_str().is_empty() {
            return Ok(None);
        }
        read_secret_file(&self.auth.cluster_secret_file)
            .map(Some)
            .map_err(|message| Error::InvalidValue {
                key: "auth.cluster_secret_file".into(),
                origin: "configuration".into(),
                message,
            })
    }

    /// Where the coordinator keeps the cluster secret it generated when none is configured.
    pub fn generated_secret_path(&self) -> PathBuf {
        self.coordinator.data_dir.join("cluster.secret")
    }

    /// Directories that hold Ember's own files (the catalog, executor work dirs with shuffle
    /// and spill files): no table or COPY location may lie in them, even under an allowed path.
    pub fn internal_paths(&self) -> Vec<PathBuf> {
        let mut dirs = vec![
            self.coordinator.data_dir.join("catalog"),
            self.coordinator.data_dir.join("work"),
        ];
        if !self.executor.work_dir.as_os_str().is_empty() {
            dirs.push(self.executor.work_dir.clone());
        }
        dirs
    }

    fn validate(&self) -> Result<()> {
        let invalid = |key: &str, message: &str| Error::InvalidValue {
            key: key.to_string(),
            origin: "configuration".to_string(),
            message: message.to_string(),
        };
        if self.http.refresh_ms < 200 {
            return Err(invalid("http.refresh_ms", "must be at least 200"));
        }
        if self.history.retention_hours == 0 {
            return Err(invalid("history.retention_hours", "must be at least 1"));
        }
        if self.history.max_queries == 0 {
            return Err(invalid("history.max_queries", "must be at least 1"));
        }
        if !self.auth.cluster_secret.is_empty() && self.auth.cluster_secret.len() < 16 {
            return Err(invalid(
                "auth.cluster_secret",
                "must be at least 16 characters",
            ));
        }
        let cluster_tls = [
            &self.tls.cluster_ca_file,
            &self.tls.cluster_cert_file,
            &self.tls.cluster_key_file,
        ];
        let set = cluster_tls
            .iter()
            .filter(|p| !p.as_os_str().is_empty())
            .count();
        if set != 0 && set != 3 {
            return Err(invalid(
                "tls.cluster_ca_file",
                "tls.cluster_ca_file, cluster_cert_file and cluster_key_file are set together",
            ));
        }
        if self.coordinator.max_connections == 0 || self.coordinator.max_sessions_per_user == 0 {
            return Err(invalid(
                "coordinator.max_connections",
                "coordinator.max_connections and coordinator.max_sessions_per_user must be positive",
            ));
        }
        if self.coordinator.max_executor_slots == 0 || self.coordinator.max_executors == 0 {
            return Err(invalid(
                "coordinator.max_executor_slots",
                "coordinator.max_executor_slots and coordinator.max_executors must be positive",
            ));
        }
        if self.coordinator.max_message_size < 4 << 20 {
            return Err(invalid(
                "coordinator.max_message_size",
                "must be at least 4194304 bytes",
            ));
        }
        if self.executor.heartbeat_interval_ms == 0 {
            return Err(invalid(
                "executor.heartbeat_interval_ms",
                "must be positive",
            ));
        }
        if self.coordinator.executor_timeout_ms <= self.executor.heartbeat_interval_ms {
            return Err(invalid(
                "coordinator.executor_timeout_ms",
                "must be longer than executor.heartbeat_interval_ms",
            ));
        }
        if self.scheduler.task_max_attempts == 0 {
            return Err(invalid("scheduler.task_max_attempts", "must be at least 1"));
        }
        if self.scheduler.speculation_multiplier.is_nan()
            || self.scheduler.speculation_multiplier < 1.0
        {
            return Err(invalid(
                "scheduler.speculation_multiplier",
                "must be at least 1",
            ));
        }
        if !["none", "lz4", "zstd"].contains(
            &self
                .executor
                .shuffle_compression
                .to_ascii_lowercase()
                .as_str(),
        ) {
            return Err(invalid(
                "executor.shuffle_compression",
                "must be one of none, lz4, zstd",
            ));
        }
        if self.adaptive.skew_factor.is_nan() || self.adaptive.skew_factor < 1.0 {
            return Err(invalid("adaptive.skew_factor", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.scheduler.speculation_quantile) {
            return Err(invalid(
                "scheduler.speculation_quantile",
                "must lie between 0 and 1",
            ));
        }
        if !["trust", "password", "md5", "scram-sha-256"].contains(&self.auth.method.as_str()) {
            return Err(invalid(
                "auth.method",
                "must be one of trust, password, md5, scram-sha-256",
            ));
        }
        if self.auth.method != "trust" && self.auth.users.is_empty() {
            return Err(invalid(
                "auth.users",
                "must list at least one user when auth.method is not trust",
            ));
        }
        if self.auth.users.iter().any(|u| !u.contains(':')) {
            return Err(invalid(
                "auth.users",
                "entries are name:verifier, as printed by `ember passwd NAME`",
            ));
        }
        if !["static", "local", "standalone", "kubernetes"]
            .contains(&self.cluster_manager.kind.as_str())
        {
            return Err(invalid(
                "cluster_manager.kind",
                "must be static, local, standalone or kubernetes",
            ));
        }
        let name = &self.kubernetes.cluster_name;
        if name.is_empty()
            || name.len() > 30
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || name.starts_with('-')
            || name.ends_with('-')
        {
            return Err(invalid(
                "kubernetes.cluster_name",
                "must be 1 to 30 lowercase letters, digits or '-', not starting or ending with '-'",
            ));
        }
        if self.cluster_manager.executors > self.coordinator.max_executors.max(1) {
            return Err(invalid(
                "cluster_manager.executors",
                "must not exceed coordinator.max_executors",
            ));
        }
        let c = &self.cluster_manager;
        if c.dynamic_allocation
            && !(c.min_executors <= c.executors
                && c.executors <= c.max_executors
                && c.max_executors >= 1
                && c.max_executors <= self.coordinator.max_executors)
        {
            return Err(invalid(
                "cluster_manager.max_executors",
                "dynamic allocation needs min_executors <= executors <= max_executors, \
                 1 <= max_executors <= coordinator.max_executors",
            ));
        }
        if c.scheduler_backlog_timeout_ms == 0
            || c.sustained_scheduler_backlog_timeout_ms == 0
            || c.executor_idle_timeout_ms == 0
        {
            return Err(invalid(
                "cluster_manager.executor_idle_timeout_ms",
                "the backlog and idle timeouts must be positive",
            ));
        }
        if self.cluster_manager.start_timeout_ms < 1000 {
            return Err(invalid(
                "cluster_manager.start_timeout_ms",
                "must be at least 1000",
            ));
        }
        if self.auth.superusers.is_empty()
            || self.auth.superusers.iter().any(|name| {
                name.is_empty() || name.len() > 63 || name.eq_ignore_ascii_case("public")
            })
        {
            return Err(invalid(
                "auth.superusers",
                "must name at least one role, each 1 to 63 bytes and not PUBLIC",
            ));
        }
        let (cert, key) = (&self.tls.cert_file, &self.tls.key_file);
        if cert.as_os_str().is_empty() != key.as_os_str().is_empty() {
            return Err(invalid(
                "tls.cert_file",
                "tls.cert_file and tls.key_file go together",
            ));
        }
        if self.auth.token_ttl_ms < 1000 {
            return Err(invalid("auth.token_ttl_ms", "must be at least 1000"));
        }
        if self.coordinator.flight_sql_fetch_timeout_ms == 0 {
            return Err(invalid(
                "coordinator.flight_sql_fetch_timeout_ms",
                "must be positive",
            ));
        }
        if !(self.tpch.scale >= 0.0 && self.tpch.scale <= 1000.0) {
            return Err(invalid("tpch.scale", "must be between 0 and 1000"));
        }
        Ok(())
    }

    /// The defaults alone.
    pub fn defaults() -> Self {
        ConfigBuilder::new()
            .build()
            .expect("the bundled defaults are valid (checked by a unit test)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = EmberConfig::defaults();
        assert_eq!(config.coordinator.pg_port, 5433);
        assert_eq!(config.coordinator.port, 50050);
        assert_eq!(config.coordinator.flight_sql_port, 50051);
        assert_eq!(config.local.executors, 2);
    }

    #[test]
    fn layers_apply_in_order() {
        let mut builder = ConfigBuilder::new()
            .toml("[coordinator]\npg_port = 6000\n[tpch]\nscale = 1", "test")
            .unwrap()
            .env([
                ("EMBER_COORDINATOR_PG_PORT".to_string(), "6001".to_string()),
                ("EMBER_LOG".to_string(), "debug".to_string()),
                ("HOME".to_string(), "/root".to_string()),
            ])
            .unwrap();
        let config = builder.clone().build().unwrap();
        assert_eq!(config.coordinator.pg_port, 6001);
        assert_eq!(config.tpch.scale, 1.0);
        builder
            .set_str("coordinator.pg_port", "6002", "flag")
            .unwrap();
        assert_eq!(builder.clone().build().unwrap().coordinator.pg_port, 6002);
        assert_eq!(
            builder.clone().build().unwrap().allowed_paths(),
            vec![PathBuf::from("data")]
        );
        builder
            .set_str("storage.allowed_paths", "/srv/a, /srv/b", "flag")
            .unwrap();
        assert_eq!(
            builder.build().unwrap().allowed_paths(),
            vec![PathBuf::from("/srv/a"), PathBuf::from("/srv/b")]
        );
    }

    #[test]
    fn errors_name_the_key() {
        let err = ConfigBuilder::new()
            .toml("[coordinator]\npgport = 1", "f.toml")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown config key `coordinator.pgport` in f.toml"
        );
        let err = ConfigBuilder::new()
            .toml("[coordinator]\npg_port = \"x\"", "f.toml")
            .unwrap_err();
        assert!(err.to_string().contains("`coordinator.pg_port`"), "{err}");
        let err = ConfigBuilder::new()
            .env([("EMBER_EXECUTOR_SLOTS".to_string(), "many".to_string())])
            .unwrap_err();
        assert!(err.to_string().contains("`executor.slots`"), "{err}");
        let err = ConfigBuilder::new()
            .toml("[coordinator]\npg_port = 70000", "f.toml")
            .unwrap()
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("pg_port"), "{err}");
        for (toml, key) in [
            (
                "[executor]\nshuffle_compression = \"gzip\"",
                "shuffle_compression",
            ),
            ("[adaptive]\nskew_factor = 0.5", "skew_factor"),
        ] {
            let err = ConfigBuilder::new()
                .toml(toml, "f.toml")
                .unwrap()
                .build()
                .unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn config() -> ProptestConfig {
            ProptestConfig {
                cases: 256,
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        proptest! {
            #![proptest_config(config())]

            /// Config files of random text, and the bundled defaults with a piece cut out or
            /// replaced, load or fail with an error; they never panic.
            #[test]
            fn damaged_config_files_are_refused_or_loaded(
                text in ".{0,400}",
                at in any::<prop::sample::Index>(),
                len in 0usize..64,
                insert in ".{0,16}",
            ) {
                let _ = ConfigBuilder::new().toml(&text, "fuzz").and_then(ConfigBuilder::build);
                let chars: Vec<char> = DEFAULT_CONFIG.chars().collect();
                let start = at.index(chars.len());
                let end = (start + len).min(chars.len());
                let damaged: String = chars[..start]
                    .iter()
                    .chain(insert.chars().collect::<Vec<_>>().iter())
                    .chain(chars[end..].iter())
                    .collect();
                let _ = ConfigBuilder::new().toml(&damaged, "fuzz").and_then(ConfigBuilder::build);
                // A value of any kind for a key of any section is checked by its type.
                for key in ["coordinator.port", "executor.memory", "storage.allowed_paths"] {
                    let _ = ConfigBuilder::new().set_str(key, &insert, "fuzz");
                }
            }
        }
    }
}
