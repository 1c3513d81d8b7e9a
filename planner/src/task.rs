//! Building one task's fragment from its stage: only its own files, and the map outputs it reads.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

use crate::ids::StageId;
use crate::shuffle::{MapOutputLocation, ShuffleReaderExec};
use crate::stage::Stage;

/// The fragment that task `partition` of `stage` runs: readers point at the committed outputs of
/// the input stages, and file scans aligned with the stage's partitions keep only this task's file
/// group (the other groups are emptied, so partition numbers stay the same).
pub fn task_fragment(
    stage: &Stage,
    partition: usize,
    locations: &HashMap<StageId, Vec<MapOutputLocation>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let num_partitions = stage.num_tasks();
    if partition >= num_partitions {
        return Err(DataFusionError::Internal(format!(
            "stage {} has no partition {partition}",
            stage.id
        )));
    }
    specialize(
        Arc::clone(&stage.plan),
        partition,
        num_partitions,
        true,
        locations,
    )
}

fn specialize(
    plan: Arc<dyn ExecutionPlan>,
    partition: usize,
    num_partitions: usize,
    aligned: bool,
    locations: &HashMap<StageId, Vec<MapOutputLocation>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(reader) = plan.downcast_ref::<ShuffleReaderExec>() {
        let map_outputs = locations.get(&reader.stage_id()).ok_or_else(|| {
            DataFusionError::Internal(format!("no map outputs for stage {}", reader.stage_id()))
        })?;
        return Ok(Arc::new(reader.with_locations(map_outputs.clone())));
    }
    if aligned && let Some(trimmed) = trim_scan(&plan, partition, num_partitions) {
        return Ok(trimmed);
    }
    let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
    if children.is_empty() {
        return Ok(plan);
    }
    if aligned && plan.is::<UnionExec>() {
        // Partition `partition` of a union is one partition of one input: trim that input's
        // scans to it. The other inputs are not executed by this task.
        let mut offset = 0;
        let mut new_children = Vec::with_capacity(children.len());
        for child in children {
            let count = child.output_partitioning().partition_count();
            let child = if (offset..offset + count).contains(&partition) {
                specialize(child, partition - offset, count, true, locations)?
            } else {
                specialize(child, partition, num_partitions, false, locations)?
            };
            offset += count;
            new_children.push(child);
        }
        return replace_children_if_necessary(plan, new_children);
    }
    let is_union = plan.is::<UnionExec>();
    let mut new_children = Vec::with_capacity(children.len());
    for child in children {
        let child_aligned =
            aligned && !is_union && child.output_partitioning().partition_count() == num_partitions;
        new_children.push(specialize(
            child,
            partition,
            num_partitions,
            child_aligned,
            locations,
        )?);
    }
    replace_children_if_necessary(plan, new_children)
}

fn trim_scan(
    plan: &Arc<dyn ExecutionPlan>,
    partition: usize,
    num_partitions: usize,
) -> Option<Arc<dyn ExecutionPlan>> {
    let source = plan.downcast_ref::<DataSourceExec>()?;
    let config = source.data_source().downcast_ref::<FileScanConfig>()?;
    if config.file_groups.len() != num_partitions {
        return None;
    }
    let groups = config
        .file_groups
        .iter()
        .enumerate()
        .map(|(i, group)| {
            if i == partition {
                group.clone()
            } else {
                FileGroup::new(vec![])
            }
        })
        .collect();
    let config = FileScanConfigBuilder::from(config.clone())
        .with_file_groups(groups)
        .build();
    Some(DataSourceExec::from_data_source(config))
}
