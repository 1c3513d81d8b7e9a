//! Hash joins cannot spill: a build side larger than the executor's memory fails the query. A
//! query with a hash join that runs out of memory (SQLSTATE 53200, as its task reported it) is
//! planned again with sort-merge joins, whose sorts spill to disk, and run again — as long as no
//! row has reached the client yet. Which operator ran out is not part of the error's type, so any
//! such failure of a plan with a hash join is retried once this way; one that cannot fit either
//! way (an aggregation state that cannot spill, say) fails again with 53200.

use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use ember_planner::sqlstate::{SqlState, classify};
use futures::StreamExt;
use tracing::info;

use crate::engine::QueryEngine;
use crate::error::{Error, Result};
use crate::session::ClientSession;

impl QueryEngine {
    /// Runs a query's physical plan; if a plan with a hash join runs out of memory before the
    /// first row, runs it again with sort-merge joins.
    pub(crate) async fn run_with_join_fallback(
        &self,
        session: &ClientSession,
        sql: &str,
        plan: &LogicalPlan,
        physical: Arc<dyn ExecutionPlan>,
    ) -> Result<SendableRecordBatchStream> {
        if !has_hash_join(&physical) {
            return self.run_physical(session, sql, physical).await;
        }
        let mut stream = self.run_physical(session, sql, physical).await?;
        let schema = stream.schema();
        let first = stream.next().await;
        if let Some(Err(error)) = &first
            && out_of_memory(error)
        {
            info!("a hash join ran out of memory: planning the query again with sort-merge joins");
            // The failed attempt's tasks keep their slots until their executors report them
            // stopped (and their memory returned), so the new plan's tasks start on free memory.
            drop(stream);
            let mut state = session.ctx.state();
            state.config_mut().options_mut().optimizer.prefer_hash_join = false;
            let physical = state.create_physical_plan(plan).await?;
            return self.run_physical(session, sql, physical).await;
        }
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::iter(first).chain(stream),
        )))
    }
}

fn has_hash_join(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut found = false;
    let _ = plan.apply(|node| {
        found = node.downcast_ref::<HashJoinExec>().is_some();
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// Whether a query failed for lack of memory: its task reported SQLSTATE 53200, or DataFusion
/// ran out here.
fn out_of_memory(error: &DataFusionError) -> bool {
    match error {
        DataFusionError::External(inner) => match inner.downcast_ref::<Error>() {
            Some(error) => error.is_out_of_memory(),
            None => classify(error).sqlstate == SqlState::OUT_OF_MEMORY,
        },
        other => classify(other).sqlstate == SqlState::OUT_OF_MEMORY,
    }
}
