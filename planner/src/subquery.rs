//! Uncorrelated scalar subqueries, resolved before a query is cut into stages.
//!
//! DataFusion evaluates them at run time inside a `ScalarSubqueryExec`, which shares the values
//! with `ScalarSubqueryExpr`s anywhere below it through memory. Stage boundaries cut that link, so
//! the coordinator runs each subquery first (as a query of its own), stores the value, strips the
//! `ScalarSubqueryExec`, and the task encoder ships each `ScalarSubqueryExpr` as a literal.

use std::sync::Arc;

use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::logical_expr::physical_planning_context::{ScalarSubqueryResults, SubqueryIndex};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::scalar_subquery::ScalarSubqueryExec;

/// A subquery whose value the caller must compute and [`resolve`](Self::resolve).
#[derive(Debug, Clone)]
pub struct PendingSubquery {
    /// The subquery's plan, which the coordinator runs as a query of its own before the outer
    /// query is cut into stages.
    pub plan: Arc<dyn ExecutionPlan>,
    results: ScalarSubqueryResults,
    index: SubqueryIndex,
}

impl PendingSubquery {
    /// Stores the subquery's value where the expressions that use it will find it.
    pub fn resolve(&self, value: ScalarValue) -> Result<()> {
        self.results.set(self.index, value)
    }
}

/// The subqueries of one `ScalarSubqueryExec`.
pub type SubqueryGroup = Vec<PendingSubquery>;

/// Removes every `ScalarSubqueryExec` from `plan` and returns its subqueries, one group per
/// `ScalarSubqueryExec`, innermost first. The subqueries of a group are independent of each
/// other (DataFusion runs them at once); resolving the groups in order guarantees that values a
/// later group's subqueries might read are known before they run.
pub fn take_scalar_subqueries(
    plan: Arc<dyn ExecutionPlan>,
) -> Result<(Arc<dyn ExecutionPlan>, Vec<SubqueryGroup>)> {
    let mut pending = vec![];
    let plan = plan
        .transform_up(|node| {
            let Some(exec) = node.downcast_ref::<ScalarSubqueryExec>() else {
                return Ok(Transformed::no(node));
            };
            pending.push(
                exec.subqueries()
                    .iter()
                    .map(|link| PendingSubquery {
                        plan: Arc::clone(&link.plan),
                        results: exec.results().clone(),
                        index: link.index,
                    })
                    .collect(),
            );
            Ok(Transformed::yes(Arc::clone(exec.input())))
        })?
        .data;
    Ok((plan, pending))
}
