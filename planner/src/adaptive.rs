//! Adaptive execution at stage boundaries (Spark's AQE): a stage is re-planned from the exact
//! sizes of the map outputs it reads, once they have all committed and before its first task
//! starts.
//!
//! Two rewrites, both expressed as [`ReadSpec`]s of the stage's shuffle readers (what each task
//! reads), so the stage's operators stay as planned:
//! - **coalesce**: neighbouring shuffle partitions too small to be worth a task each are read
//!   by one task, up to a target size (Spark's `CoalesceShufflePartitions`);
//! - **skew split**: a partition of a shuffled hash join much larger than the others is read by
//!   several tasks, each taking a slice of its map outputs and the whole matching partition of
//!   the other side (Spark's `OptimizeSkewedJoin`).
//!
//! A stage is only re-planned when every partition its tasks run comes from shuffle readers:
//! a scan aligned with the tasks, a union of partitions, a reader whose order operators above
//! rely on, or a result stage keep their tasks.
//! A split also needs every operator between the join and the stage's writer to work row by
//! row, so that no operator above the join needs all rows of a key in one task.
//!
//! A third rewrite changes operators: a stage a shuffled join reads as its probe side keeps
//! only the rows whose keys the join's build side has, when that side proved small
//! ([`crate::runtime_filter`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_expr::Partitioning;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::{InterleaveExec, UnionExec};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

use crate::ids::StageId;
use crate::runtime_filter::apply_runtime_filter;
use crate::shuffle::{ReadMode, ReadSpec, ShuffleReaderExec, ShuffleWriterExec};
use crate::stage::{Stage, StageKind};

/// How adaptive execution may re-plan stages (`[adaptive]` in the server's configuration,
/// `SET ember.adaptive_*` in a session).
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveOptions {
    /// Whether stages are re-planned at all.
    pub enabled: bool,
    /// Coalesce small shuffle partitions.
    pub coalesce_partitions: bool,
    /// Split skewed partitions of shuffled joins.
    pub skew_join: bool,
    /// The size a task's share of a shuffle should have (Spark's
    /// `advisoryPartitionSizeInBytes`): coalescing stops there, and skewed partitions are cut
    /// into slices of about this size.
    pub advisory_partition_bytes: u64,
    /// Coalescing keeps at least this many tasks while each still gets this many bytes
    /// (Spark's `minPartitionSize`)...
    pub min_partition_bytes: u64,
    /// ...where this is the parallelism to keep: the cluster's task slots.
    pub parallelism: usize,
    /// A partition is skewed when it is this many times the median partition of its side...
    pub skew_factor: f64,
    /// ...and larger than this.
    pub skew_threshold_bytes: u64,
    /// A stage read as a shuffled join's probe side is filtered by the join's build side when
    /// that side's stage wrote at most this many bytes (0: never)...
    pub runtime_filter_bytes: u64,
    /// ...or at most this many, when it kept no more than [`SELECTIVE_BUILD`] of the rows of the
    /// largest table it read (every probe task holds the build side: the coordinator bounds this
    /// by a slot's memory).
    pub selective_runtime_filter_bytes: u64,
}

/// The share of its largest table's rows a build side may keep and still be worth a runtime
/// filter larger than `runtime_filter_bytes`: probing a large key set costs about what
/// shuffling the probe rows it removes saves, so it must remove most of them (TPC-H SF30 q5's
/// orders of one year, 15%, cut its `lineitem` shuffle from 8 GB; q21's orders of one status,
/// 49%, made its stage slower).
pub const SELECTIVE_BUILD: f64 = 0.25;

impl Default for AdaptiveOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            coalesce_partitions: true,
            skew_join: true,
            advisory_partition_bytes: 64 << 20,
            min_partition_bytes: 1 << 20,
            parallelism: 1,
            skew_factor: 5.0,
            skew_threshold_bytes: 256 << 20,
            runtime_filter_bytes: 16 << 20,
            selective_runtime_filter_bytes: 256 << 20,
        }
    }
}

/// The exact sizes of one stage's map outputs: bytes written by map task `m` for output
/// partition `p` are `bytes[m][p]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MapOutputSizes {
    /// By map task, then by output partition.
    pub bytes: Vec<Vec<u64>>,
    /// Rows written by all its map tasks.
    pub rows: u64,
}

impl MapOutputSizes {
    /// Bytes of output partition `p` over all map tasks (sizes come from executors' reports:
    /// sums saturate).
    fn partition(&self, p: usize) -> u64 {
        saturating_sum(self.bytes.iter().map(|m| m[p]))
    }
}

/// A stage as adaptive execution re-planned it.
#[derive(Debug, Clone)]
pub struct AdaptedStage {
    /// The stage's new plan: its shuffle readers carry [`ReadSpec`]s, and it runs one task per
    /// spec.
    pub plan: Arc<dyn ExecutionPlan>,
    /// What changed and why, for `EXPLAIN ANALYZE` and `system.stages`.
    pub notes: Vec<String>,
}

/// Re-plans `stage` from the sizes of the map outputs it reads (by input stage), or `None` when
/// it runs as planned with nothing to say (also when the sizes do not cover what it reads). A
/// stage that keeps its plan may come back with notes (a skewed partition it could not split).
pub fn adapt_stage(
    stage: &Stage,
    sizes: &HashMap<StageId, MapOutputSizes>,
    options: &AdaptiveOptions,
) -> Result<Option<AdaptedStage>> {
    let adapted = adapt_partitions(stage, sizes, options)?;
    if !options.enabled || stage.runtime_filters.is_empty() {
        return Ok(adapted);
    }
    let (mut plan, mut notes) = match adapted {
        Some(adapted) => (adapted.plan, adapted.notes),
        None => (Arc::clone(&stage.plan), vec![]),
    };
    for filter in &stage.runtime_filters {
        let Some(build) = sizes.get(&filter.build) else {
            continue;
        };
        // A build stage without map tasks (an empty table) is no set to filter by.
        if build.bytes.is_empty() {
            continue;
        }
        let written = saturating_sum(build.bytes.iter().flatten().copied());
        // What the build side kept of the largest table it read.
        let kept = filter
            .build_source_rows
            .filter(|rows| *rows > 0)
            .map(|rows| build.rows as f64 / rows as f64);
        let selective = kept.is_some_and(|kept| kept <= SELECTIVE_BUILD)
            && written <= options.selective_runtime_filter_bytes;
        let share = match kept {
            Some(kept) => format!(", {:.0}% of its largest table's rows", kept * 100.0),
            None => String::new(),
        };
        if written > options.runtime_filter_bytes && !selective {
            // A side that kept little of its table is refused only over the larger bound.
            let (bound, which) = if kept.is_some_and(|kept| kept <= SELECTIVE_BUILD) {
                (
                    options.selective_runtime_filter_bytes,
                    " (the bound for a side that kept at most a quarter)",
                )
            } else {
                (options.runtime_filter_bytes, "")
            };
            notes.push(format!(
                "no runtime filter: the build side (stage {}) wrote {}{share}, over {}{which}",
                filter.build,
                bytes(written),
                bytes(bound)
            ));
            continue;
        }
        plan = apply_runtime_filter(&plan, filter, build.bytes.len())?;
        notes.push(format!(
            "runtime filter: rows kept only where the build side (stage {}, {}{share}) has their keys",
            filter.build,
            bytes(written)
        ));
    }
    Ok((!notes.is_empty()).then_some(AdaptedStage { plan, notes }))
}

/// The coalescing and skew splitting of `stage`'s shuffle partitions.
fn adapt_partitions(
    stage: &Stage,
    sizes: &HashMap<StageId, MapOutputSizes>,
    options: &AdaptiveOptions,
) -> Result<Option<AdaptedStage>> {
    if !options.enabled
        || !(options.coalesce_partitions || options.skew_join)
        || stage.kind == StageKind::Result
    {
        return Ok(None);
    }
    let num_tasks = stage.num_tasks();
    if num_tasks < 2 {
        return Ok(None);
    }
    let Some(input) = stage
        .plan
        .downcast_ref::<ShuffleWriterExec>()
        .map(|w| Arc::clone(w.input()))
    else {
        return Ok(None);
    };
    let mut readers = vec![];
    if !aligned_readers(&input, num_tasks, &mut readers) || readers.is_empty() {
        return Ok(None);
    }
    let mut sides = Vec::with_capacity(readers.len());
    for reader in &readers {
        let Some(sizes) = sizes.get(&reader.stage_id()) else {
            return Ok(None);
        };
        // An input without map tasks (an empty table) leaves nothing to re-plan by.
        if reader.num_maps() == 0 {
            return Ok(None);
        }
        let complete = sizes.bytes.len() == reader.num_maps()
            && sizes.bytes.iter().all(|m| m.len() == num_tasks);
        if !complete {
            return Ok(None);
        }
        sides.push(sizes);
    }

    let mut notes = vec![];
    // Skewed partitions, with the map slices each side reads of them.
    let splits = if options.skew_join {
        skew_splits(&input, &readers, &sides, options, &mut notes)
    } else {
        HashMap::new()
    };
    let totals: Vec<u64> = (0..num_tasks)
        .map(|p| saturating_sum(sides.iter().map(|s| s.partition(p))))
        .collect();
    let groups = if options.coalesce_partitions {
        coalesce(&totals, &splits, options, &mut notes)
    } else {
        (0..num_tasks as u32).map(|p| p..p + 1).collect()
    };

    // One spec per task and reader.
    let mut specs: Vec<Vec<ReadSpec>> = vec![vec![]; readers.len()];
    for group in groups {
        let split = (group.len() == 1)
            .then(|| splits.get(&(group.start as usize)))
            .flatten();
        match split {
            Some(slices) => {
                for slice in slices {
                    for (side, maps) in slice.iter().enumerate() {
                        specs[side].push(ReadSpec {
                            partitions: group.clone(),
                            maps: maps.clone(),
                        });
                    }
                }
            }
            None => {
                for (side, reader) in readers.iter().enumerate() {
                    specs[side].push(ReadSpec::whole(group.clone(), reader.num_maps()));
                }
            }
        }
    }
    let unchanged = specs[0].len() == num_tasks
        && specs.iter().zip(&readers).all(|(specs, reader)| {
            specs
                .iter()
                .enumerate()
                .all(|(p, s)| *s == ReadSpec::whole(p as u32..p as u32 + 1, reader.num_maps()))
        });
    if unchanged {
        // A skewed partition that could not be split is still worth saying.
        return Ok((!notes.is_empty()).then(|| AdaptedStage {
            plan: Arc::clone(&stage.plan),
            notes,
        }));
    }

    let split = !splits.is_empty();
    let mut by_stage: HashMap<StageId, Vec<ReadSpec>> =
        readers.iter().map(|r| r.stage_id()).zip(specs).collect();
    let plan = Arc::clone(&stage.plan)
        .transform_up(|node| {
            let Some(reader) = node.downcast_ref::<ShuffleReaderExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some(specs) = by_stage.remove(&reader.stage_id()) else {
                return Ok(Transformed::no(node));
            };
            // Coalesced hash partitions still hold all rows of a key each; slices of a split
            // partition do not.
            let partitioning = match reader.properties().output_partitioning() {
                Partitioning::Hash(exprs, _) if !split => {
                    Partitioning::Hash(exprs.clone(), specs.len())
                }
                _ => Partitioning::UnknownPartitioning(specs.len()),
            };
            let reader: Arc<dyn ExecutionPlan> = Arc::new(reader.with_specs(specs, partitioning)?);
            Ok(Transformed::yes(reader))
        })?
        .data;
    Ok(Some(AdaptedStage { plan, notes }))
}

/// Collects the shuffle readers whose partitions are the stage's tasks, walking down from
/// `plan` (which has `num_tasks` partitions) through the operators that keep them. False when
/// the stage's tasks are not all made of such readers' partitions.
fn aligned_readers<'a>(
    plan: &'a Arc<dyn ExecutionPlan>,
    num_tasks: usize,
    readers: &mut Vec<&'a ShuffleReaderExec>,
) -> bool {
    if let Some(reader) = plan.downcast_ref::<ShuffleReaderExec>() {
        // A reader claiming an order (one map task's sorted output) keeps its partitions:
        // operators above rely on the order, which blocks read one after another would lose.
        let keeps = matches!(reader.mode(), ReadMode::Shuffle { num_partitions } if num_partitions == num_tasks)
            && reader.specs().is_none()
            && reader.properties().output_ordering().is_none()
            && !readers.iter().any(|r| r.stage_id() == reader.stage_id());
        readers.push(reader);
        return keeps;
    }
    let children = plan.children();
    // A union's partitions are its inputs' partitions one after the other: not one task's
    // share of each.
    if children.is_empty() || plan.is::<UnionExec>() || plan.is::<InterleaveExec>() {
        return false;
    }
    children.into_iter().all(|child| {
        let count = child.output_partitioning().partition_count();
        if count == num_tasks {
            aligned_readers(child, num_tasks, readers)
        } else {
            // A single partition read whole by every task: the collected side of a join.
            count == 1
        }
    })
}

/// Partition `p` read as slices: for each task, the map range each reader reads.
type Splits = HashMap<usize, Vec<Vec<Range<u32>>>>;

/// The skewed partitions of the stage's shuffled join, and how they are cut. Empty unless the
/// stage is one shuffled hash join of its two readers with only row-by-row operators above.
fn skew_splits(
    input: &Arc<dyn ExecutionPlan>,
    readers: &[&ShuffleReaderExec],
    sides: &[&MapOutputSizes],
    options: &AdaptiveOptions,
    notes: &mut Vec<String>,
) -> Splits {
    let mut splits = Splits::new();
    if readers.len() != 2 {
        return splits;
    }
    let Some(join) = shuffled_join(input) else {
        return splits;
    };
    let reader_of = |child: &Arc<dyn ExecutionPlan>| {
        let reader = below_row_local(child)?.downcast_ref::<ShuffleReaderExec>()?;
        readers
            .iter()
            .position(|r| r.stage_id() == reader.stage_id())
    };
    let (Some(left), Some(right)) = (reader_of(join.left()), reader_of(join.right())) else {
        return splits;
    };
    if left == right {
        return splits;
    }
    let join_type = *join.join_type();
    let can_split_left = matches!(
        join_type,
        JoinType::Inner
            | JoinType::Left
            | JoinType::LeftSemi
            | JoinType::LeftAnti
            | JoinType::LeftMark
    );
    let can_split_right = matches!(
        join_type,
        JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti
    );
    let num_partitions = sides[0].bytes[0].len();
    let mut side_skew = |side: usize, splittable: bool| -> Vec<Option<Vec<Range<u32>>>> {
        let sizes: Vec<u64> = (0..num_partitions)
            .map(|p| sides[side].partition(p))
            .collect();
        let median = median(&sizes);
        let threshold = options
            .skew_threshold_bytes
            .max((options.skew_factor * median as f64) as u64);
        let skewed: Vec<bool> = sizes.iter().map(|&s| s > threshold).collect();
        let normal: Vec<u64> = sizes
            .iter()
            .zip(&skewed)
            .filter(|(_, skewed)| !**skewed)
            .map(|(s, _)| *s)
            .collect();
        let mean = saturating_sum(normal.iter().copied()) / normal.len().max(1) as u64;
        let target = options.advisory_partition_bytes.max(mean).max(1);
        (0..num_partitions)
            .map(|p| {
                if !skewed[p] {
                    return None;
                }
                let per_map: Vec<u64> = sides[side].bytes.iter().map(|m| m[p]).collect();
                // Bounded: both sides split make the product of their slices.
                let target = target.max(sizes[p] / MAX_SLICES);
                let slices = slice_maps(&per_map, target);
                let name = if side == left { "build" } else { "probe" };
                let mut note = format!(
                    "partition {p} of stage {} ({name} side) is skewed: {} against a median of {}",
                    readers[side].stage_id(),
                    bytes(sizes[p]),
                    bytes(median)
                );
                if !splittable {
                    let _ = write!(
                        note,
                        "; not split: a {join_type} join needs all of this side's rows of a key in one task"
                    );
                    notes.push(note);
                    return None;
                }
                if slices.len() > 1 {
                    let _ = write!(note, "; split into {} tasks", slices.len());
                } else if per_map.iter().filter(|b| **b > 0).count() < 2 {
                    note.push_str("; not split: a single map task wrote it");
                } else {
                    let _ = write!(note, "; not split: it fits one task ({})", bytes(target));
                }
                notes.push(note);
                (slices.len() > 1).then_some(slices)
            })
            .collect()
    };
    let left_slices = side_skew(left, can_split_left);
    let right_slices = side_skew(right, can_split_right);
    for p in 0..num_partitions {
        if left_slices[p].is_none() && right_slices[p].is_none() {
            continue;
        }
        let all = |side: usize| std::iter::once(0..readers[side].num_maps() as u32).collect();
        let lefts = left_slices[p].clone().unwrap_or_else(|| all(left));
        let rights = right_slices[p].clone().unwrap_or_else(|| all(right));
        let mut tasks = vec![];
        for l in &lefts {
            for r in &rights {
                let mut maps = vec![0..0; 2];
                maps[left] = l.clone();
                maps[right] = r.clone();
                tasks.push(maps);
            }
        }
        splits.insert(p, tasks);
    }
    splits
}

/// The stage's shuffled (partitioned) hash join, found below operators that work row by row.
fn shuffled_join(input: &Arc<dyn ExecutionPlan>) -> Option<&HashJoinExec> {
    let mut node = input;
    loop {
        if let Some(join) = node.downcast_ref::<HashJoinExec>() {
            if *join.partition_mode() == PartitionMode::Partitioned {
                return Some(join);
            }
            // A broadcast join whose probe side is row by row: its output for a probe row
            // does not depend on the other probe rows.
            let probe_local = *join.partition_mode() == PartitionMode::CollectLeft
                && matches!(
                    join.join_type(),
                    JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti
                );
            if !probe_local {
                return None;
            }
            node = join.right();
            continue;
        }
        if !is_row_local(node) {
            return None;
        }
        node = node.children().into_iter().next()?;
    }
}

/// The first node below `plan` that is not a row-by-row operator.
fn below_row_local(plan: &Arc<dyn ExecutionPlan>) -> Option<&Arc<dyn ExecutionPlan>> {
    let mut node = plan;
    while is_row_local(node) {
        node = node.children().into_iter().next()?;
    }
    Some(node)
}

/// Operators whose output for a row does not depend on the other rows of their partition.
fn is_row_local(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.is::<ProjectionExec>()
        || plan.is::<FilterExec>()
        || plan.name() == "CoalesceBatchesExec"
        || plan
            .downcast_ref::<AggregateExec>()
            .is_some_and(|a| *a.mode() == AggregateMode::Partial)
}

/// Groups neighbouring partitions up to a target size; a split partition stays alone.
fn coalesce(
    totals: &[u64],
    splits: &Splits,
    options: &AdaptiveOptions,
    notes: &mut Vec<String>,
) -> Vec<Range<u32>> {
    let total = saturating_sum(totals.iter().copied());
    let parallelism = options.parallelism.max(1) as u64;
    let target = options
        .advisory_partition_bytes
        .min((total / parallelism).max(options.min_partition_bytes))
        .max(1);
    let mut groups: Vec<Range<u32>> = vec![];
    let mut current: Option<(Range<u32>, u64)> = None;
    for (p, &size) in totals.iter().enumerate() {
        let p = p as u32;
        if splits.contains_key(&(p as usize)) {
            groups.extend(current.take().map(|(g, _)| g));
            groups.push(p..p + 1);
            continue;
        }
        current = match current.take() {
            Some((group, bytes)) if bytes.saturating_add(size) <= target => {
                Some((group.start..p + 1, bytes.saturating_add(size)))
            }
            Some((group, _)) => {
                groups.push(group);
                Some((p..p + 1, size))
            }
            None => Some((p..p + 1, size)),
        };
    }
    groups.extend(current.map(|(g, _)| g));
    let coalesced = totals.len() - splits.len();
    let into = groups.len() - splits.len();
    if into < coalesced {
        notes.push(format!(
            "coalesced {coalesced} shuffle partitions ({}) into {into} (target {} each)",
            bytes(total),
            bytes(target)
        ));
    }
    groups
}

/// Cuts one partition's map outputs into contiguous ranges of about `target` bytes; a last
/// range under a fifth of the target joins the one before.
fn slice_maps(per_map: &[u64], target: u64) -> Vec<Range<u32>> {
    let mut slices: Vec<(Range<u32>, u64)> = vec![];
    for (m, &size) in per_map.iter().enumerate() {
        let m = m as u32;
        match slices.last_mut() {
            Some((range, bytes)) if bytes.saturating_add(size) <= target || *bytes == 0 => {
                range.end = m + 1;
                *bytes = bytes.saturating_add(size);
            }
            _ => slices.push((m..m + 1, size)),
        }
    }
    if slices.len() > 1 && slices.last().is_some_and(|(_, b)| *b < target / 5) {
        let (last, bytes) = slices.pop().expect("more than one");
        let (range, total) = slices.last_mut().expect("more than one");
        range.end = last.end;
        *total = total.saturating_add(bytes);
    }
    slices.into_iter().map(|(r, _)| r).collect()
}

/// Most slices one side of a skewed partition is cut into.
const MAX_SLICES: u64 = 64;

fn saturating_sum(values: impl Iterator<Item = u64>) -> u64 {
    values.fold(0, u64::saturating_add)
}

fn median(sizes: &[u64]) -> u64 {
    let mut sorted = sizes.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}

/// `1.5 MiB`, `512 B`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
