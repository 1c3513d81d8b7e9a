//! Generated protobuf types and gRPC stubs of the coordinator–executor protocol, and the
//! conversions between its task ids and the planner's typed attempts.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::clone_on_ref_ptr)]

tonic::include_proto!("ember.cluster");

use ember_planner::ids::{QueryId, StageId, TaskAttempt};

impl TaskId {
    pub fn from_attempt(task: &TaskAttempt) -> Self {
        Self {
            query_id: task.query_id.to_string(),
            stage_id: task.stage_id.0,
            partition: task.partition,
            attempt: task.attempt,
        }
    }

    /// The typed attempt, or `None` for an id that did not come from us.
    pub fn to_attempt(&self) -> Option<TaskAttempt> {
        Some(TaskAttempt {
            query_id: QueryId::parse(&self.query_id)?,
            stage_id: StageId(self.stage_id),
            partition: self.partition,
            attempt: self.attempt,
        })
    }
}
