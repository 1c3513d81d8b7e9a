//! Shuffle partitions sized to what a task may hold.
//!
//! DataFusion hash-partitions every exchange into `target_partitions` parts, which Ember sets
//! to the cluster's task slots: the right count while data is small next to memory. When it is
//! not, one partition of a join's build side can outgrow a task's share of its executor's pool
//! (TPC-H SF30 on two 2 GiB executors: a 1.8 GB hash table in q21), and the query fails and is
//! run again with sort-merge joins, several times slower. Spark plans a fixed, larger number of
//! shuffle partitions (`spark.sql.shuffle.partitions`) and lets adaptive execution coalesce the
//! small ones; Ember keeps one per slot unless the planner's estimates say that an exchange
//! carries more than `partition_bytes` per partition, and then gives every hash exchange of
//! the plan as many partitions as the largest needs (at most `max_partitions`), so that the
//! sides of a join stay partitioned alike. Adaptive execution still coalesces what turns out
//! small once the map outputs' exact sizes are known.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning, StatisticsArgs, StatisticsContext};

/// `plan` with more partitions in its hash exchanges when the largest of them is estimated to
/// carry over `partition_bytes` per partition; unchanged when it is not, when nothing is known
/// of its size, or when the plan's hash partitionings do not all come from exchanges of one
/// partition count. Returns the plan and the new partition count, if it changed.
pub fn fit_shuffle_partitions(
    plan: Arc<dyn ExecutionPlan>,
    partition_bytes: u64,
    max_partitions: usize,
) -> Result<(Arc<dyn ExecutionPlan>, Option<usize>)> {
    if partition_bytes == 0 {
        return Ok((plan, None));
    }
    let mut counts = vec![];
    let mut largest: u64 = 0;
    let mut foreign = false;
    let statistics = StatisticsContext::new();
    plan.apply(|node| {
        if let Some(exchange) = hash_exchange(node) {
            counts.push(exchange.partitioning().partition_count());
            // An estimate the planner cannot make counts as nothing.
            if let Some(bytes) = estimated_bytes(&statistics, exchange.input()) {
                largest = largest.max(bytes);
            }
        } else if node.children().is_empty()
            && matches!(
                node.properties().output_partitioning(),
                Partitioning::Hash(..)
            )
        {
            // A source already partitioned by hash (a bucketed table, say) may be joined with
            // an exchange's output as it is: both must keep its count.
            foreign = true;
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let Some(&count) = counts.first() else {
        return Ok((plan, None));
    };
    if foreign || counts.iter().any(|c| *c != count) {
        return Ok((plan, None));
    }
    let wanted = largest.div_ceil(partition_bytes).min(max_partitions as u64) as usize;
    if wanted <= count {
        return Ok((plan, None));
    }
    let plan = plan
        .transform_up(|node| {
            let Some(exchange) = hash_exchange(&node) else {
                return Ok(Transformed::no(node));
            };
            let Partitioning::Hash(keys, _) = exchange.partitioning() else {
                return Ok(Transformed::no(node));
            };
            let mut wider = RepartitionExec::try_new(
                Arc::clone(exchange.input()),
                Partitioning::Hash(keys.clone(), wanted),
            )?;
            if exchange.preserve_order() {
                wider = wider.with_preserve_order();
            }
            Ok(Transformed::yes(Arc::new(wider) as Arc<dyn ExecutionPlan>))
        })?
        .data;
    Ok((plan, Some(wanted)))
}

/// What `plan` outputs, as the planner estimates it, but no more than the tables it scans hold:
/// estimates through joins can exceed anything the query reads (TPC-DS q77 at SF1 came out at
/// gigabytes). `None` when either is unknown.
fn estimated_bytes(statistics: &StatisticsContext, plan: &Arc<dyn ExecutionPlan>) -> Option<u64> {
    let bytes = |node: &Arc<dyn ExecutionPlan>| {
        let estimate = statistics
            .compute(node.as_ref(), &StatisticsArgs::new())
            .ok()?;
        estimate.total_byte_size.get_value().map(|b| *b as u64)
    };
    let output = bytes(plan)?;
    let mut scanned = Some(0u64);
    plan.apply(|node| {
        if node.children().is_empty() {
            scanned = scanned
                .zip(bytes(node))
                .map(|(sum, b)| sum.saturating_add(b));
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .ok()?;
    Some(output.min(scanned?))
}

fn hash_exchange(node: &Arc<dyn ExecutionPlan>) -> Option<&RepartitionExec> {
    let exchange = node.downcast_ref::<RepartitionExec>()?;
    matches!(exchange.partitioning(), Partitioning::Hash(..)).then_some(exchange)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::common::{JoinType, NullEquality};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_expr::expressions::col;
    use datafusion::physical_plan::ExecutionPlanProperties;
    use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};

    /// A table of `rows` 64-bit keys (8 bytes a row).
    fn table(rows: i64) -> Arc<dyn ExecutionPlan> {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from_iter_values(0..rows))],
        )
        .unwrap();
        MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None).unwrap()
    }

    fn exchange(input: Arc<dyn ExecutionPlan>, partitions: usize) -> Arc<dyn ExecutionPlan> {
        let key = col("k", &input.schema()).unwrap();
        Arc::new(
            RepartitionExec::try_new(input, Partitioning::Hash(vec![key], partitions)).unwrap(),
        )
    }

    /// A shuffled join of a small and a large table, each side through an exchange.
    fn join(small: i64, large: i64, partitions: (usize, usize)) -> Arc<dyn ExecutionPlan> {
        let left = exchange(table(small), partitions.0);
        let right = exchange(table(large), partitions.1);
        let on = vec![(
            col("k", &left.schema()).unwrap(),
            col("k", &right.schema()).unwrap(),
        )];
        Arc::new(
            HashJoinExec::try_new(
                left,
                right,
                on,
                None,
                &JoinType::Inner,
                None,
                PartitionMode::Partitioned,
                NullEquality::NullEqualsNothing,
                false,
            )
            .unwrap(),
        )
    }

    fn exchange_counts(plan: &Arc<dyn ExecutionPlan>) -> Vec<usize> {
        let mut counts = vec![];
        plan.apply(|node| {
            if let Some(exchange) = hash_exchange(node) {
                counts.push(exchange.partitioning().partition_count());
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        counts
    }

    #[test]
    fn every_exchange_gets_the_count_the_largest_needs() {
        // 100 and 10,000 keys: 800 and 80,000 bytes; 10,000 bytes a partition needs 8.
        let (plan, changed) =
            fit_shuffle_partitions(join(100, 10_000, (2, 2)), 10_000, 200).unwrap();
        let wanted = changed.expect("the large side needs more partitions");
        assert!((8..=9).contains(&wanted), "{wanted}");
        assert_eq!(exchange_counts(&plan), vec![wanted, wanted]);
        assert_eq!(plan.output_partitioning().partition_count(), wanted);
        // No more than the cap.
        let (plan, changed) = fit_shuffle_partitions(join(100, 10_000, (2, 2)), 10_000, 4).unwrap();
        assert_eq!(changed, Some(4));
        assert_eq!(exchange_counts(&plan), vec![4, 4]);
    }

    #[test]
    fn small_or_unsized_or_mixed_plans_stay_as_planned() {
        // Every exchange fits its partitions already.
        let (plan, changed) =
            fit_shuffle_partitions(join(100, 10_000, (2, 2)), 1 << 20, 200).unwrap();
        assert_eq!((changed, exchange_counts(&plan)), (None, vec![2, 2]));
        // Off.
        let (_, changed) = fit_shuffle_partitions(join(100, 10_000, (2, 2)), 0, 200).unwrap();
        assert_eq!(changed, None);
        // Exchanges of different counts are someone's choice: left alone.
        let (plan, changed) =
            fit_shuffle_partitions(join(100, 10_000, (2, 3)), 10_000, 200).unwrap();
        assert_eq!((changed, exchange_counts(&plan)), (None, vec![2, 3]));
        let mixed = Arc::new(
            RepartitionExec::try_new(join(100, 10_000, (2, 2)), Partitioning::RoundRobinBatch(2))
                .unwrap(),
        ) as Arc<dyn ExecutionPlan>;
        let mixed = exchange(mixed, 5);
        let (plan, changed) = fit_shuffle_partitions(mixed, 10_000, 200).unwrap();
        assert_eq!((changed, exchange_counts(&plan)), (None, vec![5, 2, 2]));
    }
}
