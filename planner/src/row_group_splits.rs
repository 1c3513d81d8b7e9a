//! Parquet scans cut into tasks on row-group boundaries, with about as many rows in each.
//!
//! DataFusion cuts a scan's files into `target_partitions` byte ranges of equal size, and a
//! parquet reader reads the row groups whose first page lies in its range. With few, large row
//! groups the ranges and the row groups do not line up: TPC-H SF1's `lineitem` as four files of
//! two row groups each (1,048,576 and about 451,000 rows) cut in two gives one range 4.05 M rows
//! and the other 1.95 M. In one process DataFusion evens that out at run time (a partition that
//! runs out of files steals its siblings'); a task on an executor has no siblings to steal from,
//! so its stage lasts as long as its largest task. Before a query is cut into stages the
//! coordinator reads the footers (through the session's metadata cache, which planning filled)
//! and deals the whole row groups out again by their rows (in runs of consecutive ones, or
//! largest first to the partition with the fewest so far when that is over 1% better), when
//! that makes the largest partition smaller. Row groups that the scan's predicate rules out by
//! their statistics (as the reader will) count as empty: a filter on the column a file is
//! stored in order of keeps a few neighbouring row groups, which a cut into runs by all rows
//! would give to one task. Each partition reads
//! its row groups in file order, consecutive ones of a file as one range. A scan whose
//! partitions only pass through partition-wise operators to an exchange gets no more partitions
//! than row groups left to read (at least one): its stage runs no task that reads nothing.
//!
//! Scans whose file groups mean something stay as planned: ordered scans (each group keeps its
//! files' order), scans that declare an output partitioning, files carrying extensions (another
//! reader's per-file plan) and encrypted files.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::listing::{FileRange, PartitionedFile};
use datafusion::datasource::physical_plan::FileSource;
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::datasource::physical_plan::parquet::{
    ParquetAccessPlan, ParquetFileMetrics, RowGroupAccessPlanFilter,
};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use datafusion::physical_optimizer::pruning::{PruningPredicate, PruningPredicateBuilder};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use futures::StreamExt;

/// Footers read at once while planning.
const CONCURRENT_FOOTER_READS: usize = 16;

/// A file, named as the scan's object store and the path in it.
type FileKey = (String, object_store::path::Path);

/// Where a row group's first page starts (the offset DataFusion matches against a file range)
/// and how many rows it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RowGroupSpan {
    start: i64,
    rows: u64,
}

/// What the split needs of a file's footer: its row groups, and their statistics for the
/// predicates of the scans that read the file.
struct Footer {
    spans: Vec<RowGroupSpan>,
    metadata: Arc<ParquetMetaData>,
}

/// `plan` with every parquet scan that can be cut better re-cut on row-group boundaries.
/// Files whose footer cannot be read leave their scan as planned; reading it fails the same way
/// when the task opens the file.
pub async fn split_on_row_groups(
    plan: Arc<dyn ExecutionPlan>,
    runtime: &RuntimeEnv,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut files = HashMap::new();
    plan.apply(|node| {
        if let Some(config) = splittable(node) {
            for file in config.file_groups.iter().flat_map(FileGroup::iter) {
                files
                    .entry(file_key(config, file))
                    .or_insert_with(|| (config.object_store_url.clone(), file.clone()));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if files.is_empty() {
        return Ok(plan);
    }
    let cache = runtime.cache_manager.get_file_metadata_cache();
    let footers: HashMap<FileKey, Footer> = futures::stream::iter(files)
        .map(|(key, (url, file))| {
            let cache = Arc::clone(&cache);
            async move {
                let store = runtime.object_store(&url).ok()?;
                let metadata = DFParquetMetadata::new(store.as_ref(), &file.object_meta)
                    .with_metadata_size_hint(file.metadata_size_hint)
                    .with_file_metadata_cache(Some(cache))
                    .with_page_index_policy(Some(PageIndexPolicy::Skip))
                    .fetch_metadata()
                    .await
                    .ok()?;
                let spans = row_group_spans(&metadata)?;
                Some((key, Footer { spans, metadata }))
            }
        })
        .buffer_unordered(CONCURRENT_FOOTER_READS)
        .filter_map(futures::future::ready)
        .collect()
        .await;
    rewrite(plan, &footers, false)
}

/// `node` with its scans re-cut. `flexible`: the operators between `node` and the exchange
/// above it take any number of partitions and pass that number on, so a scan below may have
/// fewer partitions than planned (and its stage fewer tasks).
fn rewrite(
    node: Arc<dyn ExecutionPlan>,
    footers: &HashMap<FileKey, Footer>,
    flexible: bool,
) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(config) = splittable(&node) {
        return Ok(match resplit(config, footers, flexible) {
            Some(config) => DataSourceExec::from_data_source(config),
            None => node,
        });
    }
    let below = is_exchange(&node) || (flexible && passes_partitions_on(&node));
    let children = node
        .children()
        .into_iter()
        .map(|child| rewrite(Arc::clone(child), footers, below))
        .collect::<Result<Vec<_>>>()?;
    replace_children_if_necessary(node, children)
}

/// Operators that read any number of input partitions.
fn is_exchange(node: &Arc<dyn ExecutionPlan>) -> bool {
    node.is::<RepartitionExec>()
        || node.is::<CoalescePartitionsExec>()
        || node.is::<SortPreservingMergeExec>()
}

/// Operators that work partition by partition on any number of partitions, with as many out.
fn passes_partitions_on(node: &Arc<dyn ExecutionPlan>) -> bool {
    if let Some(aggregate) = node.downcast_ref::<AggregateExec>() {
        return *aggregate.mode() == AggregateMode::Partial;
    }
    if let Some(sort) = node.downcast_ref::<SortExec>() {
        return sort.preserve_partitioning();
    }
    // CoalesceBatchesExec by name: DataFusion deprecated it but old plans still carry it.
    node.is::<FilterExec>() || node.is::<ProjectionExec>() || node.name() == "CoalesceBatchesExec"
}

/// The scan of `node` when it reads parquet in groups that carry no meaning of their own.
fn splittable(node: &Arc<dyn ExecutionPlan>) -> Option<&FileScanConfig> {
    let config = node
        .downcast_ref::<DataSourceExec>()?
        .data_source()
        .downcast_ref::<FileScanConfig>()?;
    let source = config.file_source().downcast_ref::<ParquetSource>()?;
    let crypto = &source.table_parquet_options().crypto;
    let plain = crypto.file_decryption.is_none() && crypto.factory_id.is_none();
    let free = !config.preserve_order
        && config.output_ordering.is_empty()
        && config.output_partitioning.is_none();
    let files_plain = config
        .file_groups
        .iter()
        .flat_map(FileGroup::iter)
        .all(|f| f.extensions.is_empty());
    (plain && free && files_plain && config.file_groups.len() > 1).then_some(config)
}

fn file_key(config: &FileScanConfig, file: &PartitionedFile) -> FileKey {
    (
        config.object_store_url.as_str().to_string(),
        file.object_meta.location.clone(),
    )
}

/// The row groups of a file in file order, or `None` when their offsets do not increase (a
/// range could then not hold a run of them).
fn row_group_spans(metadata: &ParquetMetaData) -> Option<Vec<RowGroupSpan>> {
    let spans = metadata
        .row_groups()
        .iter()
        .map(|group| {
            let column = group.columns().first()?;
            Some(RowGroupSpan {
                start: column
                    .dictionary_page_offset()
                    .unwrap_or_else(|| column.data_page_offset()),
                rows: u64::try_from(group.num_rows()).unwrap_or(0),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    spans
        .windows(2)
        .all(|pair| pair[0].start < pair[1].start)
        .then_some(spans)
}

/// A row group of one of a scan's files, in the order the scan lists them.
struct Unit<'a> {
    file: &'a PartitionedFile,
    spans: &'a [RowGroupSpan],
    index: usize,
    /// Rows the scan will read of it: none when its statistics rule the predicate out.
    rows: u64,
}

/// The test a scan's parquet reader puts each row group's statistics to before reading it
/// (DataFusion's row-group pruning), made once per scan against the table's schema.
struct Pruning {
    predicate: Arc<PruningPredicate>,
    schema: datafusion::arrow::datatypes::SchemaRef,
}

impl Pruning {
    /// `None` when the scan reads every row group: no predicate, pruning switched off, or one
    /// that statistics cannot decide.
    fn of(config: &FileScanConfig) -> Option<Self> {
        let source = config.file_source().downcast_ref::<ParquetSource>()?;
        if !source.table_parquet_options().global.pruning {
            return None;
        }
        // As DataFusion shows a scan's pruning predicate: against the table's schema.
        let schema = Arc::clone(config.file_source().table_schema().table_schema());
        let predicate = PruningPredicateBuilder::new()
            .with_file_schema(Arc::clone(&schema))
            .with_max_in_list_size(source.max_in_list_size())
            .build(source.filter()?)?;
        Some(Self { predicate, schema })
    }

    /// For each of the file's row groups, whether its statistics leave a row of it possible.
    /// Columns the file lacks or has no statistics for decide nothing (the group is read), and
    /// statistics the pruning code cannot take (it runs on footers anyone may have written)
    /// leave every group read: they only weigh the cut.
    fn may_match(&self, metadata: &ParquetMetaData) -> Vec<bool> {
        let groups = metadata.row_groups();
        let prune = || {
            let mut filter =
                RowGroupAccessPlanFilter::new(ParquetAccessPlan::new_all(groups.len()));
            let metrics = ParquetFileMetrics::new(0, "", &ExecutionPlanMetricsSet::new());
            filter.prune_by_statistics(
                &self.schema,
                metadata.file_metadata().schema_descr(),
                groups,
                &self.predicate,
                &metrics,
            );
            let plan = filter.build();
            (0..groups.len()).map(|i| plan.should_scan(i)).collect()
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(prune))
            .unwrap_or_else(|_| vec![true; groups.len()])
    }
}

/// `config` with its row groups dealt out again, or `None` when a footer is missing or the new
/// cut would not make the largest group smaller. When the scan may have fewer partitions
/// (`flexible`), it has no more than it has row groups left to read, and at least one: a task
/// without one would read nothing.
fn resplit(
    config: &FileScanConfig,
    footers: &HashMap<FileKey, Footer>,
    flexible: bool,
) -> Option<FileScanConfig> {
    let planned = config.file_groups.len();
    let pruning = Pruning::of(config);
    let mut units = vec![];
    let mut largest_before = 0;
    for group in &config.file_groups {
        let mut group_rows = 0u64;
        for file in group.iter() {
            let footer = footers.get(&file_key(config, file))?;
            let may_match = pruning.as_ref().map(|p| p.may_match(&footer.metadata));
            for (index, span) in footer.spans.iter().enumerate() {
                if file.range.as_ref().is_none_or(|r| r.contains(span.start)) {
                    let read = may_match
                        .as_ref()
                        .is_none_or(|m| m.get(index).copied().unwrap_or(true));
                    let rows = if read { span.rows } else { 0 };
                    group_rows = group_rows.saturating_add(rows);
                    units.push(Unit {
                        file,
                        spans: &footer.spans,
                        index,
                        rows,
                    });
                }
            }
        }
        largest_before = largest_before.max(group_rows);
    }
    // Row counts come from footers anyone may have written: sums saturate.
    let total = units.iter().fold(0u64, |sum, u| sum.saturating_add(u.rows));
    let n = if flexible {
        let to_read = units.iter().filter(|u| u.rows > 0).count();
        planned.min(to_read.max(1))
    } else {
        planned
    };
    if units.is_empty() || (total == 0 && n == planned) {
        return None;
    }
    let targets = assign(&units.iter().map(|u| u.rows).collect::<Vec<_>>(), n);
    let mut rows = vec![0u64; n];
    for (unit, &target) in units.iter().zip(&targets) {
        rows[target] = rows[target].saturating_add(unit.rows);
    }
    if rows.iter().max().copied().unwrap_or(0) >= largest_before && n == planned {
        return None;
    }
    // Consecutive row groups of a file that land in the same group become one range.
    let mut runs: Vec<Vec<(&Unit, usize)>> = (0..n).map(|_| vec![]).collect();
    for (unit, &target) in units.iter().zip(&targets) {
        let group = &mut runs[target];
        match group.last_mut() {
            Some((first, last))
                if first.file.object_meta.location == unit.file.object_meta.location
                    && *last + 1 == unit.index =>
            {
                *last = unit.index
            }
            _ => group.push((unit, unit.index)),
        }
    }
    let mut config = config.clone();
    config.file_groups = runs
        .into_iter()
        .map(|group| {
            FileGroup::new(
                group
                    .into_iter()
                    .map(|(first, last)| run_file(first, last))
                    .collect(),
            )
        })
        .collect();
    Some(config)
}

/// The task for each of `rows` (row groups in scan order) among `n` tasks: contiguous runs when
/// their largest task is within 1% of the one dealing the largest first leaves, else the latter.
fn assign(rows: &[u64], n: usize) -> Vec<usize> {
    let runs = contiguous(rows, n);
    let dealt = largest_first(rows, n);
    let (runs_max, dealt_max) = (
        u128::from(largest_task(rows, &runs, n)),
        u128::from(largest_task(rows, &dealt, n)),
    );
    if runs_max * 100 <= dealt_max * 101 {
        runs
    } else {
        dealt
    }
}

fn largest_task(rows: &[u64], tasks: &[usize], n: usize) -> u64 {
    let mut load = vec![0u64; n];
    for (&r, &t) in rows.iter().zip(tasks) {
        load[t] = load[t].saturating_add(r);
    }
    load.into_iter().max().unwrap_or(0)
}

/// Each row group to the task whose share of the total its middle row falls in: every task
/// reads a run of consecutive row groups (whole files where they fit).
fn contiguous(rows: &[u64], n: usize) -> Vec<usize> {
    let total: u128 = rows.iter().map(|&r| u128::from(r)).sum::<u128>().max(1);
    let mut before = 0u128;
    rows.iter()
        .map(|&r| {
            // The middle row's position is before + r / 2; doubled to stay in integers.
            let middle = 2 * before + u128::from(r);
            before += u128::from(r);
            let task = middle * n as u128 / (2 * total);
            usize::try_from(task).unwrap_or(n - 1).min(n - 1)
        })
        .collect()
}

/// The largest row group first, each to the task with the fewest rows so far (ties to the
/// lower task): the largest task is at most 4/3 of the best possible.
fn largest_first(rows: &[u64], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(rows[i]));
    let mut load = vec![0u64; n];
    let mut tasks = vec![0; rows.len()];
    for i in order {
        let task = (0..n).min_by_key(|&t| (load[t], t)).unwrap_or(0);
        load[task] = load[task].saturating_add(rows[i]);
        tasks[i] = task;
    }
    tasks
}

/// The file of `first` reading its row groups `first.index..=last`.
fn run_file(first: &Unit, last: usize) -> PartitionedFile {
    let mut file = first.file.clone();
    let size = i64::try_from(file.object_meta.size).unwrap_or(i64::MAX);
    file.range = if first.index == 0 && last + 1 == first.spans.len() {
        None
    } else {
        Some(FileRange {
            start: first.spans[first.index].start,
            end: first.spans.get(last + 1).map_or(size, |s| s.start),
        })
    };
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_groups_go_in_runs_unless_dealing_them_out_is_better() {
        // TPC-H SF1 lineitem: four files of a large and a small row group.
        let lineitem = [
            1_048_576, 451_003, 1_048_576, 451_516, 1_048_576, 452_336, 1_048_576, 452_056,
        ];
        assert_eq!(assign(&lineitem, 2), vec![0, 0, 0, 0, 1, 1, 1, 1]);
        assert_eq!(assign(&lineitem, 4), vec![0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(assign(&[5, 5, 5], 3), vec![0, 1, 2]);
        // Three small row groups, a large one, three small: the large one alone.
        assert_eq!(assign(&[1, 1, 1, 7, 1, 1, 1], 2), vec![1, 1, 1, 0, 1, 1, 1]);
        assert_eq!(assign(&[1, 100, 1], 3), vec![0, 1, 2]);
        assert_eq!(assign(&[100, 1, 1, 1], 2), vec![0, 1, 1, 1]);
        assert_eq!(assign(&[0, 0], 2), vec![0, 0]);
        // Row counts from a hostile footer saturate instead of overflowing.
        let huge = assign(&[u64::MAX, u64::MAX, 1], 2);
        assert_ne!(huge[0], huge[1]);
    }
}
