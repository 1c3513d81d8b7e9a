//! The DataFusion configuration every Ember planner and executor session starts from.

use datafusion::prelude::SessionConfig;

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
    // Dynamic filters flow from a hash join to a scan at run time through shared memory; they
    // cannot cross a stage boundary, so a probe-side scan would wait forever for them.
    options.optimizer.enable_dynamic_filter_pushdown = false;
    options.optimizer.enable_join_dynamic_filter_pushdown = false;
    options.optimizer.enable_topk_dynamic_filter_pushdown = false;
    options.optimizer.enable_aggregate_dynamic_filter_pushdown = false;
    // A join side estimated this small is cheaper to send whole to every task (a broadcast
    // stage) than to shuffle both sides by key, which moves the large side through disk and
    // Flight: DataFusion's single-process default (1 MiB) shuffled all of lineitem in TPC-H q5
    // and q7. The coordinator lowers it to a quarter of a task slot's memory; sessions can SET
    // it. The row limit for sides of unknown size stays DataFusion's (128 Ki rows): a guess that
    // large could broadcast a table that does not fit.
    options.optimizer.hash_join_single_partition_threshold = 32 << 20;
    config
}
