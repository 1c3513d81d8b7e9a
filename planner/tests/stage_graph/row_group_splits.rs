//! Parquet scans re-cut on row-group boundaries: a file whose byte ranges put every row group in
//! one task gets its rows shared out, and the answer stays the same.

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::source::DataSourceExec;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, collect, displayable};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use ember_planner::codec::{decode_plan, encode_plan};
use ember_planner::row_group_splits::split_on_row_groups;
use ember_planner::session::{distributed_config, distributed_state};

/// One file of four row groups: three small ones, then one holding most rows, so that its two
/// byte ranges (cut at the middle of the file) both start before the large one.
fn write_file(dir: &std::path::Path) {
    write_row_groups(dir, &[100, 100, 100, 700]);
}

fn write_row_groups(dir: &std::path::Path, row_groups: &[i64]) {
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
    let file = std::fs::File::create(dir.join("t.parquet")).expect("create");
    let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), None).expect("writer");
    let mut next = 0;
    for &rows in row_groups {
        let values = Int64Array::from_iter_values(next..next + rows);
        next += rows;
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(values)]).unwrap();
        writer.write(&batch).expect("write");
        writer.flush().expect("end the row group");
    }
    writer.close().expect("close");
}

async fn plan(ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
    let df = ctx.sql(sql).await.expect("plan");
    df.create_physical_plan().await.expect("physical plan")
}

fn scan(plan: &Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    let mut found = None;
    plan.apply(|node| {
        if node.downcast_ref::<DataSourceExec>().is_some() {
            found = Some(Arc::clone(node));
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .unwrap();
    found.expect("a scan")
}

/// Rows each partition of the scan reads, and the sum of `x` over all of them.
async fn rows_per_partition(
    ctx: &SessionContext,
    scan: &Arc<dyn ExecutionPlan>,
) -> (Vec<usize>, i64) {
    let mut rows = vec![];
    let mut sum = 0;
    for partition in 0..scan.output_partitioning().partition_count() {
        let stream = scan.execute(partition, ctx.task_ctx()).expect("execute");
        let batches: Vec<RecordBatch> = futures::TryStreamExt::try_collect(stream).await.unwrap();
        rows.push(batches.iter().map(RecordBatch::num_rows).sum());
        for batch in &batches {
            let x = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            sum += x.values().iter().sum::<i64>();
        }
    }
    (rows, sum)
}

async fn context(dir: &std::path::Path, order: bool) -> SessionContext {
    context_with(dir, order, 2).await
}

async fn context_with(dir: &std::path::Path, order: bool, partitions: usize) -> SessionContext {
    context_with_settings(dir, order, partitions, &[]).await
}

/// A context whose table is registered after `settings` (its reader options are fixed then).
async fn context_with_settings(
    dir: &std::path::Path,
    order: bool,
    partitions: usize,
    settings: &[&str],
) -> SessionContext {
    let ctx = SessionContext::new_with_state(distributed_state(
        distributed_config(partitions),
        Arc::default(),
    ));
    // Executors run each partition alone, without siblings to steal files from.
    for setting in [
        "set datafusion.optimizer.repartition_file_min_size = 0",
        "set datafusion.execution.enable_file_stream_work_stealing = false",
    ]
    .iter()
    .chain(settings)
    {
        ctx.sql(setting).await.expect("set");
    }
    let mut options = ParquetReadOptions::default();
    if order {
        options =
            options.file_sort_order(vec![vec![datafusion::prelude::col("x").sort(true, false)]]);
    }
    ctx.register_parquet("t", dir.to_str().unwrap(), options)
        .await
        .expect("register");
    ctx
}

#[tokio::test]
async fn a_file_cut_by_bytes_is_cut_again_by_rows() {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path());
    let ctx = context(dir.path(), false).await;
    let planned = plan(&ctx, "select x from t where x >= 0").await;
    let before = rows_per_partition(&ctx, &scan(&planned)).await;
    assert_eq!(
        before,
        (vec![1000, 0], 499_500),
        "byte ranges: all row groups start in the first"
    );

    let split = split_on_row_groups(Arc::clone(&planned), ctx.runtime_env().as_ref())
        .await
        .unwrap();
    let after = rows_per_partition(&ctx, &scan(&split)).await;
    assert_eq!(
        after,
        (vec![300, 700], 499_500),
        "{}",
        displayable(split.as_ref()).indent(true)
    );
    assert_eq!(
        split.output_partitioning().partition_count(),
        planned.output_partitioning().partition_count()
    );

    // The ranges travel to executors as they are.
    let decoded = decode_plan(&encode_plan(Arc::clone(&split)).unwrap(), &ctx.task_ctx()).unwrap();
    assert_eq!(rows_per_partition(&ctx, &scan(&decoded)).await, after);
    let answer = collect(split, ctx.task_ctx()).await.unwrap();
    assert_eq!(
        answer.iter().map(RecordBatch::num_rows).sum::<usize>(),
        1000
    );
}

#[tokio::test]
async fn ordered_scans_stay_as_planned() {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path());
    let ctx = context(dir.path(), true).await;
    let planned = plan(&ctx, "select x from t where x >= 0").await;
    let split = split_on_row_groups(Arc::clone(&planned), ctx.runtime_env().as_ref())
        .await
        .unwrap();
    assert_eq!(
        displayable(split.as_ref()).indent(true).to_string(),
        displayable(planned.as_ref()).indent(true).to_string()
    );
}

#[tokio::test]
async fn below_an_exchange_a_scan_has_no_more_partitions_than_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    write_row_groups(dir.path(), &[1000]);
    let ctx = context_with(dir.path(), false, 4).await;
    // Partial aggregate and filter over the scan, then the exchange to the final aggregate.
    let planned = plan(&ctx, "select count(*), sum(x) from t where x >= 10").await;
    let before = rows_per_partition(&ctx, &scan(&planned)).await;
    assert_eq!(before.0.iter().filter(|&&r| r > 0).count(), 1, "{before:?}");
    assert_eq!(before.0.len(), 4);

    let split = split_on_row_groups(Arc::clone(&planned), ctx.runtime_env().as_ref())
        .await
        .unwrap();
    assert_eq!(
        rows_per_partition(&ctx, &scan(&split)).await,
        (vec![1000], 499_500)
    );
    let answer = datafusion::arrow::util::pretty::pretty_format_batches(
        &collect(split, ctx.task_ctx()).await.unwrap(),
    )
    .unwrap()
    .to_string();
    assert!(
        answer.contains("| 990 ") && answer.contains("| 499455 "),
        "{answer}"
    );

    // With no exchange above it, the scan keeps the partitions the plan was made with.
    let planned = plan(&ctx, "select x from t where x >= 10").await;
    let split = split_on_row_groups(Arc::clone(&planned), ctx.runtime_env().as_ref())
        .await
        .unwrap();
    assert_eq!(split.output_partitioning().partition_count(), 4);
}

#[tokio::test]
async fn row_groups_a_filter_rules_out_count_as_empty() {
    // x ascends through six row groups: `x >= 400` leaves the last two, both in the second
    // byte range; dealt out by all their rows they would stay together.
    let dir = tempfile::tempdir().unwrap();
    write_row_groups(dir.path(), &[100; 6]);
    let ctx = context(dir.path(), false).await;
    let planned = plan(&ctx, "select x from t where x >= 400").await;
    assert_eq!(
        rows_per_partition(&ctx, &scan(&planned)).await,
        (vec![0, 200], 99_900)
    );
    let split = split_on_row_groups(Arc::clone(&planned), ctx.runtime_env().as_ref())
        .await
        .unwrap();
    assert_eq!(
        rows_per_partition(&ctx, &scan(&split)).await,
        (vec![100, 100], 99_900),
        "{}",
        displayable(split.as_ref()).indent(true)
    );
    let answer = collect(split, ctx.task_ctx()).await.unwrap();
    assert_eq!(answer.iter().map(RecordBatch::num_rows).sum::<usize>(), 200);

    // Below an exchange, a scan left with one row group to read is one task.
    let ctx = context_with(dir.path(), false, 4).await;
    let planned = plan(&ctx, "select count(*), sum(x) from t where x >= 500").await;
    let split = split_on_row_groups(Arc::clone(&planned), ctx.runtime_env().as_ref())
        .await
        .unwrap();
    assert_eq!(
        rows_per_partition(&ctx, &scan(&split)).await,
        (vec![100], 54_950)
    );
    let answer = datafusion::arrow::util::pretty::pretty_format_batches(
        &collect(split, ctx.task_ctx()).await.unwrap(),
    )
    .unwrap()
    .to_string();
    assert!(
        answer.contains("| 100 ") && answer.contains("| 54950 "),
        "{answer}"
    );

    // With DataFusion's row-group pruning off, every row group counts by its rows.
    let ctx = context_with_settings(
        dir.path(),
        false,
        4,
        &["set datafusion.execution.parquet.pruning = false"],
    )
    .await;
    let planned = plan(&ctx, "select count(*), sum(x) from t where x >= 500").await;
    let split = split_on_row_groups(Arc::clone(&planned), ctx.runtime_env().as_ref())
        .await
        .unwrap();
    assert_eq!(scan(&split).output_partitioning().partition_count(), 4);
}
