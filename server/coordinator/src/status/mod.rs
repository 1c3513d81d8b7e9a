//! The status of the cluster as values (Spark's `status.api.v1`): queries with their stages,
//! tasks and operator metrics, executors and the cluster (`model.rs`), the Prometheus counters
//! (`metrics.rs`) and the `system` tables' Arrow form of the model (`tables.rs`). The scheduler
//! fills them in; [`crate::monitor::Monitor`] hands them out.

pub mod metrics;
pub mod model;
pub(crate) mod tables;

pub use metrics::{ConnectionGuard, Metrics};
pub use model::{
    Allocation, Cluster, Executor, ExecutorState, FrontendSessions, Operator, QueryDetail,
    QuerySummary, Stage, State, Task,
};
