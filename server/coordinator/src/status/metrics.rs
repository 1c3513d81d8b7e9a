//! The coordinator's Prometheus metrics: counters the scheduler and the frontends move as work
//! happens, and gauges read from the scheduler when `/metrics` is scraped. Names follow
//! Prometheus' conventions (`ember_` prefix, base units, `_total` counters) and are stable.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::model::{Executor, QuerySummary, State};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    state: &'static str,
    frontend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrontendLabels {
    frontend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExecutorLabels {
    executor_id: String,
}

fn latency_histogram() -> Histogram {
    // 5 ms to about 2.7 hours.
    Histogram::new(exponential_buckets(0.005, 2.0, 21))
}

type Bytes = Counter<u64, AtomicU64>;
type Level = Gauge<i64, AtomicI64>;

/// Every metric the coordinator exports, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    queries_ended: Family<QueryLabels, Counter>,
    query_duration: Family<FrontendLabels, Histogram, fn() -> Histogram>,
    queries: Family<QueryLabels, Level>,
    tasks_started: Counter,
    tasks_failed: Counter,
    tasks_retried: Counter,
    tasks_speculated: Counter,
    shuffle_write: Bytes,
    shuffle_read: Bytes,
    spill: Bytes,
    executors: Family<StateLabels, Level>,
    executor_memory_used: Family<ExecutorLabels, Level>,
    executor_memory_peak: Family<ExecutorLabels, Level>,
    executor_disk_used: Family<ExecutorLabels, Level>,
    connections: Family<FrontendLabels, Level>,
    connections_opened: Family<FrontendLabels, Counter>,
    connections_refused: Family<FrontendLabels, Counter>,
    requests: Family<FrontendLabels, Counter>,
    /// One scrape at a time: each resets the gauges it sets.
    scrape: std::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under the `ember` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ember");
        let metrics = Self {
            queries_ended: Family::default(),
            query_duration: Family::new_with_constructor(latency_histogram),
            queries: Family::default(),
            tasks_started: Counter::default(),
            tasks_failed: Counter::default(),
            tasks_retried: Counter::default(),
            tasks_speculated: Counter::default(),
            shuffle_write: Bytes::default(),
            shuffle_read: Bytes::default(),
            spill: Bytes::default(),
            executors: Family::default(),
            executor_memory_used: Family::default(),
            executor_memory_peak: Family::default(),
            executor_disk_used: Family::default(),
            connections: Family::default(),
            connections_opened: Family::default(),
            connections_refused: Family::default(),
            requests: Family::default(),
            scrape: std::sync::Mutex::new(()),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "queries_ended",
            "Queries that ended, by final state and frontend",
            metrics.queries_ended.clone(),
        );
        r.register_with_unit(
            "query_duration",
            "Time from a query's submission to its end, by frontend",
            Unit::Seconds,
            metrics.query_duration.clone(),
        );
        r.register(
            "queries",
            "Queries the coordinator holds now (running, queued, and recent ones), by state and frontend",
            metrics.queries.clone(),
        );
        r.register(
            "tasks_started",
            "Task attempts launched on executors (retries and speculative copies included)",
            metrics.tasks_started.clone(),
        );
        r.register(
            "tasks_failed",
            "Task attempts that failed",
            metrics.tasks_failed.clone(),
        );
        r.register(
            "tasks_retried",
            "Tasks launched again after a failure or a lost executor or map output",
            metrics.tasks_retried.clone(),
        );
        r.register(
            "tasks_speculated",
            "Speculative copies launched for slow tasks",
            metrics.tasks_speculated.clone(),
        );
        r.register_with_unit(
            "shuffle_write",
            "Bytes that succeeded tasks wrote (map outputs and results)",
            Unit::Bytes,
            metrics.shuffle_write.clone(),
        );
        r.register_with_unit(
            "shuffle_read",
            "Arrow bytes that succeeded tasks read from map outputs",
            Unit::Bytes,
            metrics.shuffle_read.clone(),
        );
        r.register_with_unit(
            "spill",
            "Bytes that succeeded tasks spilled to disk",
            Unit::Bytes,
            metrics.spill.clone(),
        );
        r.register(
            "executors",
            "Executors the coordinator knows, by state",
            metrics.executors.clone(),
        );
        r.register_with_unit(
            "executor_memory_used",
            "Bytes an executor's memory pool has reserved, as of its last heartbeat",
            Unit::Bytes,
            metrics.executor_memory_used.clone(),
        );
        r.register_with_unit(
            "executor_memory_peak",
            "The most bytes an executor's memory pool had reserved at a heartbeat",
            Unit::Bytes,
            metrics.executor_memory_peak.clone(),
        );
        r.register_with_unit(
            "executor_disk_used",
            "Bytes of shuffle and spill files in an executor's work dir",
            Unit::Bytes,
            metrics.executor_disk_used.clone(),
        );
        r.register(
            "connections",
            "Client connections (Postgres) and sessions (Flight SQL) open now, by frontend",
            metrics.connections.clone(),
        );
        r.register(
            "connections_opened",
            "Client connections and sessions accepted, by frontend",
            metrics.connections_opened.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections and sessions refused at a limit, by frontend",
            metrics.connections_refused.clone(),
        );
        r.register(
            "requests",
            "Client requests (Postgres statements, Flight SQL calls), by frontend",
            metrics.requests.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// A client connection or session opened; it counts as open until the guard drops.
    pub fn connection_opened(&self, frontend: &str) -> ConnectionGuard {
        let labels = FrontendLabels {
            frontend: frontend.to_string(),
        };
        self.connections_opened.get_or_create(&labels).inc();
        let open = self.connections.get_or_create(&labels).clone();
        open.inc();
        ConnectionGuard { open }
    }

    /// A client was refused at a connection or session limit.
    pub fn connection_refused(&self, frontend: &str) {
        self.connections_refused
            .get_or_create(&FrontendLabels {
                frontend: frontend.to_string(),
            })
            .inc();
    }

    /// A client request arrived.
    pub fn request(&self, frontend: &str) {
        self.requests
            .get_or_create(&FrontendLabels {
                frontend: frontend.to_string(),
            })
            .inc();
    }

    pub(crate) fn query_ended(&self, state: State, frontend: &str, seconds: f64) {
        self.queries_ended
            .get_or_create(&QueryLabels {
                state: state.as_str(),
                frontend: frontend.to_string(),
            })
            .inc();
        self.query_duration
            .get_or_create(&FrontendLabels {
                frontend: frontend.to_string(),
            })
            .observe(seconds);
    }

    pub(crate) fn task_started(&self, retry: bool, speculative: bool) {
        self.tasks_started.inc();
        if retry {
            self.tasks_retried.inc();
        }
        if speculative {
            self.tasks_speculated.inc();
        }
    }

    pub(crate) fn task_failed(&self) {
        self.tasks_failed.inc();
    }

    pub(crate) fn task_succeeded(&self, written: u64, read: u64, spilled: u64) {
        self.shuffle_write.inc_by(written);
        self.shuffle_read.inc_by(read);
        self.spill.inc_by(spilled);
    }

    /// Sets the gauges from what the scheduler holds now and encodes every metric in the
    /// OpenMetrics text format.
    pub(crate) fn encode(&self, queries: &[QuerySummary], executors: &[Executor]) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.queries.clear();
        for query in queries {
            self.queries
                .get_or_create(&QueryLabels {
                    state: query.state.as_str(),
                    frontend: query.frontend.clone(),
                })
                .inc();
        }
        self.executors.clear();
        for state in super::model::ExecutorState::ALL {
            self.executors
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(0);
        }
        self.executor_memory_used.clear();
        self.executor_memory_peak.clear();
        self.executor_disk_used.clear();
        for executor in executors {
            self.executors
                .get_or_create(&StateLabels {
                    state: executor.state.as_str(),
                })
                .inc();
            if !executor.state.is_live() {
                continue;
            }
            let labels = ExecutorLabels {
                executor_id: executor.executor_id.clone(),
            };
            let level = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
            self.executor_memory_used
                .get_or_create(&labels)
                .set(level(executor.memory_used_bytes));
            self.executor_memory_peak
                .get_or_create(&labels)
                .set(level(executor.memory_peak_bytes));
            self.executor_disk_used
                .get_or_create(&labels)
                .set(level(executor.disk_used_bytes));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Counts one client connection as open until dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    open: Level,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.open.dec();
    }
}
