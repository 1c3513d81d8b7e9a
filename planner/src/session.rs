//! The DataFusion configuration every Ember planner and executor session starts from.

use std::sync::Arc;

use datafusion::common::config::ConfigExtension;
use datafusion::common::extensions_options;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion::prelude::SessionConfig;
use ember_config::EmberConfig;

use crate::adaptive::AdaptiveOptions;

/// The catalog that clients see as their database.
pub const DEFAULT_CATALOG: &str = "ember";
/// The schema that unqualified names resolve in.
pub const DEFAULT_SCHEMA: &str = "public";

/// A session config tuned for distributed plans over `target_partitions` task slots.
pub fn distributed_config(target_partitions: usize) -> SessionConfig {
    let mut config = SessionConfig::new()
        .with_target_partitions(target_partitions.max(1))
        .with_default_catalog_and_schema(DEFAULT_CATALOG, DEFAULT_SCHEMA)
        .with_information_schema(true)
        // Round-robin repartitions only add parallelism inside one process; across tasks they
        // would become network shuffles that cost more than they give.
        .with_round_robin_repartition(false);
    let options = config.options_mut();
    // A join side estimated this small is cheaper to send whole to every task (a broadcast
    // stage) than to shuffle both sides by key, which moves the large side through disk and
    // Flight: DataFusion's single-process default (1 MiB) shuffled all of lineitem in TPC-H q5
    // and q7. Every task builds its own hash table of the side, so a large one costs each task
    // its build: TPC-DS q17 built all of catalog_sales (1.4 M rows, 23 MB) in every task at
    // 32 MiB. The coordinator sets it from `coordinator.broadcast_join_bytes`, lowered to a
    // quarter of a task slot's memory; sessions can SET it. The row limit for sides of unknown
    // size stays DataFusion's (128 Ki rows): a guess that large could broadcast a table that
    // does not fit.
    options.optimizer.hash_join_single_partition_threshold = 16 << 20;
    config
}

/// The physical optimizer rule that plans dynamic filters, by its DataFusion name.
const DYNAMIC_FILTER_RULE: &str = "FilterPushdown(Post)";

/// The state distributed plans are made in: `config` and `runtime` with DataFusion's features
/// and physical optimizer rules, save the one that plans dynamic filters. Those link operators
/// at run time through shared memory and cannot cross a stage boundary: each executor plans
/// them inside the task it runs (`dynamic_filters::plan_task_filters`), as the session's
/// `datafusion.optimizer.enable_*dynamic_filter_pushdown` settings allow.
pub fn distributed_state(config: SessionConfig, runtime: Arc<RuntimeEnv>) -> SessionState {
    let rules = PhysicalOptimizer::new()
        .rules
        .into_iter()
        .filter(|rule| rule.name() != DYNAMIC_FILTER_RULE)
        .collect();
    SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_physical_optimizer_rules(rules)
        .build()
}

extensions_options! {
    /// Ember's own session settings, `SET ember.<name>`: they steer the coordinator and are not
    /// shipped to executors. Sessions start from the server's settings (`from_config`).
    pub struct EmberOptions {
        /// Adaptive execution: stages re-planned from the exact sizes of their inputs.
        pub adaptive: bool, default = true
        /// Coalesce shuffle partitions too small for a task each.
        pub adaptive_coalesce_partitions: bool, default = true
        /// Split skewed partitions of shuffled joins.
        pub adaptive_skew_join: bool, default = true
        /// Bytes of shuffle data one task should read.
        pub adaptive_advisory_partition_bytes: u64, default = 64 << 20
        /// Coalescing keeps a task per slot while each still reads this many bytes.
        pub adaptive_min_partition_bytes: u64, default = 1 << 20
        /// A partition is skewed at this many times its side's median...
        pub adaptive_skew_factor: f64, default = 5.0
        /// ...and beyond this many bytes.
        pub adaptive_skew_threshold_bytes: u64, default = 256 << 20
        /// A shuffled join's probe side is filtered by its build side up to this many bytes.
        pub adaptive_runtime_filter_bytes: u64, default = 16 << 20
        /// Parquet scans are cut into tasks on row-group boundaries, about as many rows each.
        pub row_group_splits: bool, default = true
        /// Shuffles get more partitions than task slots, up to this many, when one per slot
        /// would carry more than `shuffle_partition_bytes` each (0: one per slot).
        pub max_shuffle_partitions: usize, default = 200
        /// Bytes a shuffle partition should carry at most, as the planner estimates them; 0:
        /// an eighth of a task slot's memory (the coordinator fills it in), or no bound.
        pub shuffle_partition_bytes: u64, default = 0
    }
}

impl ConfigExtension for EmberOptions {
    const PREFIX: &'static str = "ember";
}

impl EmberOptions {
    /// The server's settings: its `[adaptive]` section and `coordinator.row_group_splits`.
    pub fn from_config(config: &EmberConfig) -> Self {
        let adaptive = &config.adaptive;
        Self {
            adaptive: adaptive.enabled,
            adaptive_coalesce_partitions: adaptive.coalesce_partitions,
            adaptive_skew_join: adaptive.skew_join,
            adaptive_advisory_partition_bytes: adaptive.advisory_partition_bytes,
            adaptive_min_partition_bytes: adaptive.min_partition_bytes,
            adaptive_skew_factor: adaptive.skew_factor,
            adaptive_skew_threshold_bytes: adaptive.skew_threshold_bytes,
            adaptive_runtime_filter_bytes: adaptive.runtime_filter_bytes,
            row_group_splits: config.coordinator.row_group_splits,
            max_shuffle_partitions: config.coordinator.max_shuffle_partitions,
            shuffle_partition_bytes: 0,
        }
    }

    /// How adaptive execution re-plans this session's queries on `parallelism` task slots. A
    /// task reads no more than a shuffle partition should carry: coalescing partitions widened
    /// to fit a slot's memory would undo the widening.
    pub fn adaptive_options(&self, parallelism: usize) -> AdaptiveOptions {
        let advisory_partition_bytes = match self.shuffle_partition_bytes {
            0 => self.adaptive_advisory_partition_bytes,
            bound => self.adaptive_advisory_partition_bytes.min(bound),
        };
        AdaptiveOptions {
            enabled: self.adaptive,
            coalesce_partitions: self.adaptive_coalesce_partitions,
            skew_join: self.adaptive_skew_join,
            advisory_partition_bytes,
            min_partition_bytes: self.adaptive_min_partition_bytes,
            parallelism,
            skew_factor: self.adaptive_skew_factor,
            skew_threshold_bytes: self.adaptive_skew_threshold_bytes,
            runtime_filter_bytes: self.adaptive_runtime_filter_bytes,
            selective_runtime_filter_bytes: selective_runtime_filter_bytes(
                self.adaptive_runtime_filter_bytes,
                self.shuffle_partition_bytes,
            ),
        }
    }
}

/// A selective build side may be sixteen times `runtime_filter_bytes`, and no more than a
/// shuffle partition should carry (each probe task holds all of it).
fn selective_runtime_filter_bytes(runtime_filter_bytes: u64, partition_bytes: u64) -> u64 {
    let bytes = runtime_filter_bytes.saturating_mul(16);
    match partition_bytes {
        0 => bytes,
        bound => bytes.min(bound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_defaults_are_the_servers_defaults() {
        let config = ember_config::EmberConfig::defaults();
        let from_config = EmberOptions::from_config(&config);
        let defaults = EmberOptions::default();
        assert_eq!(
            from_config.adaptive_options(4),
            defaults.adaptive_options(4)
        );
        assert_eq!(from_config.row_group_splits, defaults.row_group_splits);
        assert_eq!(
            from_config.max_shuffle_partitions,
            defaults.max_shuffle_partitions
        );
    }

    #[test]
    fn distributed_plans_leave_out_only_the_dynamic_filter_rule() {
        let all = PhysicalOptimizer::new().rules;
        let state = distributed_state(distributed_config(2), Arc::default());
        let names: Vec<&str> = state
            .physical_optimizers()
            .iter()
            .map(|r| r.name())
            .collect();
        assert_eq!(names.len() + 1, all.len(), "{names:?}");
        assert!(!names.contains(&DYNAMIC_FILTER_RULE));
        // The settings stay DataFusion's: executors read them.
        assert!(
            state
                .config_options()
                .optimizer
                .enable_dynamic_filter_pushdown
        );
    }
}
