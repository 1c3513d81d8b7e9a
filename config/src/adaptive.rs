//! The `[adaptive]` section: adaptive execution of stages.

use serde::{Deserialize, Serialize};

/// The `[adaptive]` section: adaptive execution (Spark's AQE). When every map output a stage
/// reads has committed, the stage is re-planned from their exact sizes before its tasks start.
/// Sessions may change each key with `SET ember.adaptive_<key>` (`ember.adaptive` for
/// `enabled`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConfig {
    /// Whether stages are re-planned at all.
    pub enabled: bool,
    /// Neighbouring shuffle partitions too small for a task each are read by one task.
    pub coalesce_partitions: bool,
    /// A partition of a shuffled join much larger than the others is split among several tasks.
    pub skew_join: bool,
    /// Bytes of shuffle data a task should read: coalescing stops there, and a skewed partition
    /// is cut into slices of about this size.
    pub advisory_partition_bytes: u64,
    /// Coalescing keeps one task per slot of the cluster as long as each still reads this many
    /// bytes.
    pub min_partition_bytes: u64,
    /// A partition is skewed when it is this many times its side's median partition (at least
    /// 1)...
    pub skew_factor: f64,
    /// ...and larger than this many bytes.
    pub skew_threshold_bytes: u64,
    /// A stage a shuffled join reads as its probe side waits for the join's build side when
    /// that side is filtered, and keeps only the rows whose keys it has when it wrote at most
    /// this many bytes (0: never).
    pub runtime_filter_bytes: u64,
}
