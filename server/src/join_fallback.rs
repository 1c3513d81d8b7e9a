//! Hash joins cannot spill: a build side larger than the executor's memory fails the query. Such a
//! query is planned again with sort-merge joins, whose sorts spill to disk, and run again — as long
//! as no row has reached the client yet.

use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use tracing::info;

use crate::engine::QueryEngine;
use crate::error::{Error, Result, TaskErrorKind};
use crate::session::ClientSession;

impl QueryEngine {
    /// Runs a query's physical plan; if a hash join runs out of memory before the first row,
    /// runs it again with sort-merge joins.
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
            && hash_join_out_of_memory(error)
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

/// A task failed for lack of memory while a hash join held it.
fn hash_join_out_of_memory(error: &DataFusionError) -> bool {
    let task_error = match error {
        DataFusionError::External(e) => e.downcast_ref::<Error>(),
        _ => None,
    };
    match task_error {
        Some(Error::Task {
            kind: TaskErrorKind::Resources,
            message,
        }) => message.contains("HashJoin"),
        _ => {
            matches!(error.find_root(), DataFusionError::ResourcesExhausted(m) if m.contains("HashJoin"))
        }
    }
}
