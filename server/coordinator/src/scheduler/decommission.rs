//! Graceful decommission, as Spark's: a decommissioning executor gets no new tasks, finishes
//! what runs there and keeps serving its shuffle outputs; once nothing runs there and no running
//! query needs its outputs it is told it is drained, and it exits. An executor that cannot drain
//! within its grace period hands its tasks back and exits; only the outputs still needed are
//! then recomputed (see `recovery`).

use std::collections::HashSet;

use ember_planner::ids::{ExecutorId, StageId};
use ember_protocol::proto::{CoordinatorMessage, Drained, coordinator_message};
use tracing::info;

use super::Scheduler;
use super::state::{ExecutorStatus, Status};

impl Scheduler {
    /// Stops scheduling on the executor; it is released once drained.
    pub(super) fn decommission(&mut self, executor_id: &ExecutorId, reason: &str) {
        let Some(executor) = self.executors.get_mut(executor_id) else {
            return;
        };
        match executor.status {
            ExecutorStatus::Alive => {
                info!(%executor_id, reason, running = executor.running.len(), "decommissioning executor");
                executor.status = ExecutorStatus::Decommissioning;
                self.release_drained();
            }
            // Already going; or written off, its session closed: the executor, seeing the
            // session end while decommissioning, exits.
            ExecutorStatus::Decommissioning | ExecutorStatus::Lost | ExecutorStatus::Gone => {}
        }
    }

    /// Tells each decommissioning executor that runs nothing and holds no output a running
    /// query needs that it is drained; it is gone from then on.
    pub(super) fn release_drained(&mut self) {
        if !self
            .executors
            .values()
            .any(|e| e.status == ExecutorStatus::Decommissioning)
        {
            return;
        }
        let holders = self.needed_output_holders();
        for executor in self.executors.values_mut() {
            if executor.status != ExecutorStatus::Decommissioning
                || !executor.running.is_empty()
                || holders.contains(&executor.info.id)
            {
                continue;
            }
            info!(executor_id = %executor.info.id, "executor decommissioned: nothing runs there and no query needs its outputs");
            let _ = executor.tx.try_send(Ok(drained()));
            executor.status = ExecutorStatus::Gone;
            executor.lost_at = Some(std::time::Instant::now());
        }
    }

    /// The executors holding an output that a query not yet released may still read: a map
    /// output whose consumers have not all finished, or a result partition its client has not
    /// been done with.
    pub(super) fn needed_output_holders(&self) -> HashSet<ExecutorId> {
        let mut holders = HashSet::new();
        for query in &self.running {
            if !matches!(query.status, Status::Running | Status::Succeeded) {
                continue;
            }
            for (si, stage) in query.stages.iter().enumerate() {
                let stage_id = StageId(si as u32);
                if !query.is_result_stage(stage_id) && !query.outputs_needed(stage_id) {
                    continue;
                }
                for task in &stage.tasks {
                    if let Some(output) = &task.output {
                        holders.insert(output.executor_id.clone());
                    }
                }
            }
        }
        holders
    }
}

fn drained() -> CoordinatorMessage {
    CoordinatorMessage {
        message: Some(coordinator_message::Message::Drained(Drained {})),
    }
}
