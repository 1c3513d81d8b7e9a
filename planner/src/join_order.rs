//! The order of inner joins in a distributed plan: relations that carry a filter join first.
//!
//! DataFusion joins relations in the order a query names them, and on one machine it makes up
//! for a bad order at run time: a hash join hands its build side's keys to the scan of its probe
//! side (dynamic filters), so a fact table is cut down by the filtered dimensions joined to it
//! before it meets another large table. Across stages no such filter can pass (the scan runs in
//! another task, often before the join's build side exists), and TPC-DS q72, which joins
//! `catalog_sales` with `inventory` before the filtered dimensions, produced hundreds of
//! millions of intermediate rows: 8× DataFusion's time, the whole of the gap.
//!
//! [`FilteredJoinsFirst`] reorders each tree of inner equi-joins greedily, as dimension-first
//! heuristics do where no cardinalities are known: it starts from the relation the query names
//! first and adds, at each step, a relation joined by an equality to those already joined,
//! preferring relations with a filter of their own (a filtered dimension is small, and shrinks
//! what it joins), otherwise in the query's order. Every condition is applied as soon as all
//! its columns are available. A tree whose order would need a cross join is left alone, as are
//! outer, semi and anti joins (their order is their meaning). The answer is the same: inner
//! joins commute, and the original columns are projected at the top.

use std::collections::HashSet;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchemaRef, NullEquality, Result};
use datafusion::logical_expr::utils::split_conjunction_owned;
use datafusion::logical_expr::{
    BinaryExpr, Expr, JoinConstraint, JoinType, LogicalPlan, LogicalPlanBuilder, Operator,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// Joins filtered relations first in trees of inner joins (see the module's documentation).
#[derive(Debug, Default)]
pub struct FilteredJoinsFirst;

impl OptimizerRule for FilteredJoinsFirst {
    fn name(&self) -> &str {
        "ember_filtered_joins_first"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        if !is_inner_join(&plan) {
            return Ok(Transformed::no(plan));
        }
        let mut tree = JoinTree::default();
        tree.flatten(&plan);
        if tree.leaves.len() < 3 {
            return Ok(Transformed::no(plan));
        }
        let Some(order) = tree.greedy_order() else {
            return Ok(Transformed::no(plan));
        };
        if order.iter().copied().eq(0..tree.leaves.len()) {
            return Ok(Transformed::no(plan));
        }
        let rebuilt = tree.build(&order, plan.schema())?;
        Ok(Transformed::yes(rebuilt))
    }
}

/// Whether `plan` is an inner equi-join this rule may move relations across.
fn is_inner_join(plan: &LogicalPlan) -> bool {
    matches!(
        plan,
        LogicalPlan::Join(join)
            if join.join_type == JoinType::Inner
                && join.join_constraint == JoinConstraint::On
                && join.null_equality == NullEquality::NullEqualsNothing
                && !join.null_aware
    )
}

/// A tree of inner joins: its relations, in the query's order, and its conditions.
#[derive(Default)]
struct JoinTree {
    leaves: Vec<LogicalPlan>,
    conditions: Vec<Expr>,
}

impl JoinTree {
    /// Collects the relations and conditions under `plan`, looking through the projections
    /// that only drop columns between joins.
    fn flatten(&mut self, plan: &LogicalPlan) {
        match plan {
            LogicalPlan::Join(join) if is_inner_join(plan) => {
                self.flatten(&join.left);
                self.flatten(&join.right);
                for (left, right) in &join.on {
                    self.conditions.push(left.clone().eq(right.clone()));
                }
                if let Some(filter) = &join.filter {
                    self.conditions
                        .extend(split_conjunction_owned(filter.clone()));
                }
            }
            LogicalPlan::Projection(projection)
                if is_inner_join(&projection.input)
                    && projection.expr.iter().all(|e| matches!(e, Expr::Column(_))) =>
            {
                self.flatten(&projection.input);
            }
            other => self.leaves.push(other.clone()),
        }
    }

    /// The order to join the relations in, by index; none if it would need a cross join.
    fn greedy_order(&self) -> Option<Vec<usize>> {
        let filtered: Vec<bool> = self.leaves.iter().map(has_filter).collect();
        let columns: Vec<HashSet<Column>> = self
            .leaves
            .iter()
            .map(|leaf| leaf.schema().columns().into_iter().collect())
            .collect();
        let mut order = vec![0];
        let mut joined: HashSet<Column> = columns[0].clone();
        while order.len() < self.leaves.len() {
            let next = (0..self.leaves.len())
                .filter(|i| !order.contains(i))
                .filter(|&i| {
                    self.conditions
                        .iter()
                        .any(|c| equi_keys(c, &joined, &columns[i]).is_some())
                })
                .min_by_key(|&i| (!filtered[i], i))?;
            joined.extend(columns[next].iter().cloned());
            order.push(next);
        }
        Some(order)
    }

    /// The joins in `order`, each with the conditions whose columns it is the first to have,
    /// projected to `schema`'s columns.
    fn build(&self, order: &[usize], schema: &DFSchemaRef) -> Result<LogicalPlan> {
        let mut used = vec![false; self.conditions.len()];
        let first = &self.leaves[order[0]];
        let mut joined: HashSet<Column> = first.schema().columns().into_iter().collect();
        let mut builder = LogicalPlanBuilder::from(first.clone());
        for &index in &order[1..] {
            let right = &self.leaves[index];
            let right_columns: HashSet<Column> = right.schema().columns().into_iter().collect();
            let (mut left_keys, mut right_keys, mut filters) = (vec![], vec![], vec![]);
            for (i, condition) in self.conditions.iter().enumerate() {
                if used[i] {
                    continue;
                }
                let available = condition
                    .column_refs()
                    .into_iter()
                    .all(|c| joined.contains(c) || right_columns.contains(c));
                if !available {
                    continue;
                }
                used[i] = true;
                match equi_keys(condition, &joined, &right_columns) {
                    Some((left, right)) => {
                        left_keys.push(left);
                        right_keys.push(right);
                    }
                    None => filters.push(condition.clone()),
                }
            }
            builder = builder.join_with_expr_keys(
                right.clone(),
                JoinType::Inner,
                (left_keys, right_keys),
                filters.into_iter().reduce(Expr::and),
            )?;
            joined.extend(right_columns);
        }
        // Conditions on the first relation alone (none once filters are pushed down).
        let rest: Vec<Expr> = self
            .conditions
            .iter()
            .zip(&used)
            .filter(|(_, used)| !**used)
            .map(|(c, _)| c.clone())
            .collect();
        if let Some(rest) = rest.into_iter().reduce(Expr::and) {
            builder = builder.filter(rest)?;
        }
        builder
            .project(schema.columns().into_iter().map(Expr::Column))?
            .build()
    }
}

/// `condition` as an equi-join key pair (a side reading only `left`'s columns, the other only
/// `right`'s), if it is one.
fn equi_keys(
    condition: &Expr,
    left: &HashSet<Column>,
    right: &HashSet<Column>,
) -> Option<(Expr, Expr)> {
    let Expr::BinaryExpr(BinaryExpr {
        left: a,
        op: Operator::Eq,
        right: b,
    }) = condition
    else {
        return None;
    };
    let within = |e: &Expr, side: &HashSet<Column>| {
        let columns = e.column_refs();
        !columns.is_empty() && columns.iter().all(|c| side.contains(c))
    };
    if within(a, left) && within(b, right) {
        Some((a.as_ref().clone(), b.as_ref().clone()))
    } else if within(b, left) && within(a, right) {
        Some((b.as_ref().clone(), a.as_ref().clone()))
    } else {
        None
    }
}

/// Whether a relation is cut down by a filter of its own (in a `WHERE` or pushed into its
/// scan).
fn has_filter(plan: &LogicalPlan) -> bool {
    plan.exists(|node| {
        Ok(match node {
            LogicalPlan::Filter(_) => true,
            LogicalPlan::TableScan(scan) => !scan.filters.is_empty(),
            _ => false,
        })
    })
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::{col, lit, table_scan};
    use datafusion::optimizer::OptimizerContext;

    use super::*;

    fn scan(name: &str, columns: &[&str]) -> LogicalPlanBuilder {
        let schema = Schema::new(
            columns
                .iter()
                .map(|c| Field::new(*c, DataType::Int64, true))
                .collect::<Vec<_>>(),
        );
        table_scan(Some(name), &schema, None).expect("a scan")
    }

    fn rewrite(plan: LogicalPlan) -> Transformed<LogicalPlan> {
        FilteredJoinsFirst
            .rewrite(plan, &OptimizerContext::new())
            .expect("rewrites")
    }

    /// The relations of a plan's joins in the order they are joined.
    fn relations(plan: &LogicalPlan) -> Vec<String> {
        let mut names = vec![];
        plan.apply(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                names.push(scan.table_name.to_string());
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .expect("walks");
        names
    }

    #[test]
    fn filtered_dimensions_join_the_fact_table_before_another_fact_table() {
        // sales ⋈ stock on item, then the filtered dimension d on sales.
        let plan = scan("sales", &["s_item", "s_date", "s_qty"])
            .join_on(
                scan("stock", &["k_item", "k_qty"]).build().expect("stock"),
                JoinType::Inner,
                [
                    col("s_item").eq(col("k_item")),
                    col("k_qty").lt(col("s_qty")),
                ],
            )
            .expect("join")
            .join_with_expr_keys(
                scan("d", &["d_date", "d_year"])
                    .filter(col("d_year").eq(lit(2001)))
                    .expect("filter")
                    .build()
                    .expect("d"),
                JoinType::Inner,
                (vec![col("s_date")], vec![col("d_date")]),
                None,
            )
            .expect("join")
            .build()
            .expect("plan");
        let schema = Arc::clone(plan.schema());
        let rewritten = rewrite(plan);
        assert!(rewritten.transformed);
        assert_eq!(relations(&rewritten.data), ["sales", "d", "stock"]);
        assert!(
            rewritten
                .data
                .schema()
                .logically_equivalent_names_and_types(&schema)
        );
        // The non-equi condition stays with the join that first has both its columns.
        let text = rewritten.data.display_indent().to_string();
        assert!(text.contains("stock.k_qty < sales.s_qty"), "{text}");
        // Applied again, nothing changes.
        let LogicalPlan::Projection(projection) = rewritten.data else {
            panic!("a projection on top");
        };
        assert!(!rewrite(projection.input.as_ref().clone()).transformed);
    }

    #[test]
    fn outer_joins_and_orders_needing_a_cross_join_are_left_alone() {
        // A left join is one relation to the inner join above it: nothing to reorder.
        let plan = scan("a", &["a1"])
            .join_with_expr_keys(
                scan("b", &["b1", "b2"]).build().expect("b"),
                JoinType::Left,
                (vec![col("a1")], vec![col("b1")]),
                None,
            )
            .expect("join")
            .join_with_expr_keys(
                scan("c", &["c1"]).build().expect("c"),
                JoinType::Inner,
                (vec![col("b2")], vec![col("c1")]),
                None,
            )
            .expect("join")
            .build()
            .expect("plan");
        assert!(!rewrite(plan).transformed);
        // The filtered c meets a by an inequality only: b must come first, and then c would
        // need a join without keys: the order stays.
        let plan = scan("a", &["a1"])
            .join_on(
                scan("c", &["c1"])
                    .filter(col("c1").gt(lit(3)))
                    .expect("filter")
                    .build()
                    .expect("c"),
                JoinType::Inner,
                [col("c1").gt(col("a1"))],
            )
            .expect("join")
            .join_with_expr_keys(
                scan("b", &["b1"]).build().expect("b"),
                JoinType::Inner,
                (vec![col("a1")], vec![col("b1")]),
                None,
            )
            .expect("join")
            .build()
            .expect("plan");
        assert!(!rewrite(plan).transformed);
    }
}
