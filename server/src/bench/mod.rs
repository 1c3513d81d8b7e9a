//! Benchmarks: the same queries on a local Ember cluster and on single-node DataFusion, in one
//! run on the same files, with per-query times and the ratio.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Subcommand;
use datafusion::arrow::array::RecordBatch;
use datafusion::execution::memory_pool::UnboundedMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use ember_planner::memory::PeakMemoryPool;
use ember_planner::tpch;
use futures::TryStreamExt;
use tokio::sync::watch;

use crate::local::LocalCluster;
use ember_config::EmberConfig;
use ember_coordinator::engine::QueryEngine;
use ember_coordinator::{Output, stopped};

mod concurrency;
mod tpcds;

pub use tpcds::TABLES as TPCDS_TABLES;

/// The benchmarks of `ember bench`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// TPC-H: generate the data, run the 22 queries on both engines, print times and ratios.
    Tpch {
        /// TPC-H scale factor (1: about 1 GB of data).
        #[arg(long, default_value = "1")]
        scale: f64,
        /// Runs per query and engine; the fastest counts (the first run also warms caches).
        #[arg(long, default_value = "3")]
        iterations: usize,
        /// Executors of the local cluster.
        #[arg(long, default_value = "2")]
        executors: usize,
        /// Only these queries, comma-separated (default: all 22).
        #[arg(long)]
        queries: Option<String>,
        /// Memory pool of each executor, in bytes or with a unit (2GiB); default as `ember
        /// local` divides the machine's. Single-node DataFusion's stays unbounded.
        #[arg(long)]
        executor_memory: Option<String>,
    },
    /// TPC-DS: the 99 queries (from a directory) on both engines, over data `tpcgen-cli`
    /// makes; times, ratios and whether the answers agree.
    Tpcds(tpcds::TpcdsArgs),
    /// Concurrency: several clients running a TPC-H query mix at once for a while, on both
    /// engines; queries per minute, every answer checked, and `SELECT 1` latency under load.
    Concurrency(concurrency::ConcurrencyArgs),
    /// Metadata caches: the same short queries on a cluster with the configured caches and on
    /// one with every cache turned off, in one run on the same files.
    Cache {
        /// TPC-H scale factor.
        #[arg(long, default_value = "1")]
        scale: f64,
        /// Runs per query and cluster; the mean of all but the first counts.
        #[arg(long, default_value = "20")]
        iterations: usize,
    },
}

/// Runs a benchmark and prints its table.
pub async fn run(bench: BenchCommand, config_file: Option<&PathBuf>) -> anyhow::Result<()> {
    let (scale, iterations, executors, queries, executor_memory) = match bench {
        BenchCommand::Tpch {
            scale,
            iterations,
            executors,
            queries,
            executor_memory,
        } => (scale, iterations, executors, queries, executor_memory),
        BenchCommand::Cache { scale, iterations } => {
            return cache(scale, iterations, config_file).await;
        }
        BenchCommand::Tpcds(args) => return tpcds::run(args, config_file).await,
        BenchCommand::Concurrency(args) => return concurrency::run(args, config_file).await,
    };
    let queries: Vec<usize> = match queries {
        Some(list) => list
            .split(',')
            .map(|q| q.trim().trim_start_matches('q').parse::<usize>())
            .collect::<Result<_, _>>()?,
        None => (1..=22).collect(),
    };
    anyhow::ensure!(
        queries.iter().all(|q| (1..=22).contains(q)),
        "TPC-H queries are numbered 1 to 22"
    );
    eprintln!("preparing TPC-H SF{scale} and a local cluster with {executors} executors");
    let (config, cluster) = BenchCluster::start(
        config_file,
        &[
            ("local.executors", Some(&executors.to_string())),
            ("tpch.scale", Some(&scale.to_string())),
            ("executor.memory", executor_memory.as_ref()),
        ],
    )
    .await?;
    let engine = Arc::clone(&cluster.engine);
    let dir = std::fs::canonicalize(tpch::scale_dir(
        &config.coordinator.data_dir.join("tpch"),
        scale,
    ))?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let datafusion = datafusion_context("tpch")?;
    tpch::register(&datafusion.ctx, "tpch", &dir).await?;
    let session = engine.new_session();
    session.set_current_schema("tpch");

    let memory = match &executor_memory {
        Some(memory) => format!(", executor memory {memory}"),
        None => String::new(),
    };
    println!("TPC-H SF{scale}, best of {iterations}, {executors} executors{memory}, {cores} cores");
    let queries: Vec<(String, &str)> = queries
        .into_iter()
        .map(|q| (format!("q{q}"), tpch::QUERIES[q - 1]))
        .collect();
    compare_engines(&datafusion, &engine, &session, &queries, iterations).await;
    cluster.stop().await
}

/// Queries whose time is mostly planning and opening files: listing, footers, statistics.
const CACHE_QUERIES: [(&str, &str); 4] = [
    (
        "point lookup",
        "select l_quantity from lineitem where l_orderkey = 4242",
    ),
    ("count", "select count(*) from orders"),
    (
        "min/max",
        "select min(l_shipdate), max(l_commitdate) from lineitem",
    ),
    (
        "tpch q6",
        "select sum(l_extendedprice * l_discount) from lineitem where l_shipdate >= date '1994-01-01' and l_shipdate < date '1995-01-01' and l_discount between 0.05 and 0.07 and l_quantity < 24",
    ),
];

async fn cache(scale: f64, iterations: usize, config_file: Option<&PathBuf>) -> anyhow::Result<()> {
    let scale_flag = scale.to_string();
    let zero = "0".to_string();
    let mut times: Vec<Vec<Duration>> = vec![];
    for cached in [true, false] {
        let mut flags = vec![("tpch.scale", Some(&scale_flag))];
        if !cached {
            flags.extend([
                ("cache.metadata_bytes", Some(&zero)),
                ("cache.listing_bytes", Some(&zero)),
                ("cache.statistics_bytes", Some(&zero)),
            ]);
        }
        let (_, cluster) = BenchCluster::start(config_file, &flags).await?;
        let engine = Arc::clone(&cluster.engine);
        let session = engine.new_session();
        session.set_current_schema("tpch");
        let mut per_query = vec![];
        for (_, sql) in CACHE_QUERIES {
            let mut total = Duration::ZERO;
            for i in 0..iterations.max(2) {
                let start = Instant::now();
                for output in engine.execute_sql(&session, sql).await? {
                    if let Output::Rows(stream) = output {
                        let _: Vec<_> = stream.try_collect().await?;
                    }
                }
                // The first run fills the caches; the rest show what they save.
                if i > 0 {
                    total += start.elapsed();
                }
            }
            per_query.push(total / (iterations.max(2) - 1) as u32);
        }
        times.push(per_query);
        cluster.stop().await?;
    }
    println!(
        "TPC-H SF{scale}, mean of {} warm runs",
        iterations.max(2) - 1
    );
    println!(
        "{:>14} {:>12} {:>12} {:>8}",
        "query", "cached_ms", "uncached_ms", "speedup"
    );
    for (i, (name, _)) in CACHE_QUERIES.iter().enumerate() {
        let (cached, uncached) = (ms(times[0][i]), ms(times[1][i]));
        println!(
            "{name:>14} {cached:>12.2} {uncached:>12.2} {:>8.2}",
            uncached / cached
        );
    }
    Ok(())
}

/// A local cluster a benchmark runs on, its ports free ones.
struct BenchCluster {
    engine: Arc<QueryEngine>,
    stop: watch::Sender<bool>,
    running: tokio::task::JoinHandle<crate::Result<()>>,
}

impl BenchCluster {
    /// Loads the configuration (`config_file`, then `flags`, then free ports), starts the
    /// cluster and waits for its executors.
    async fn start(
        config_file: Option<&PathBuf>,
        flags: &[(&str, Option<&String>)],
    ) -> anyhow::Result<(EmberConfig, Self)> {
        let zero = "0".to_string();
        let mut flags = flags.to_vec();
        flags.extend([
            ("coordinator.port", Some(&zero)),
            ("coordinator.pg_port", Some(&zero)),
            ("coordinator.flight_sql_port", Some(&zero)),
            ("http.port", Some(&zero)),
        ]);
        let config = crate::layers::load_config(config_file, &flags)?;
        let cluster = LocalCluster::start(&config).await?;
        if let Some(addr) = cluster.http_addr {
            eprintln!("web UI at http://{addr}/");
        }
        let engine = cluster.engine();
        let (stop, stop_rx) = watch::channel(false);
        let running = tokio::spawn(cluster.run(stopped(stop_rx)));
        engine
            .wait_for_executors(config.local.executors, Duration::from_secs(30))
            .await?;
        Ok((
            config,
            Self {
                engine,
                stop,
                running,
            },
        ))
    }

    /// Stops the cluster and waits until it has.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.running.await??;
        Ok(())
    }
}

/// Single-node DataFusion as the benchmarks run it, and the view of its (unbounded) memory
/// pool that says what a query reserved at most.
struct DataFusion {
    ctx: SessionContext,
    memory: Arc<PeakMemoryPool>,
}

/// Single-node DataFusion as the benchmarks run it: the machine's cores, DataFusion's own
/// `DATAFUSION_*` settings, `schema` current.
fn datafusion_context(schema: &str) -> anyhow::Result<DataFusion> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let memory = Arc::new(PeakMemoryPool::new(
        Arc::new(UnboundedMemoryPool::default()),
    ));
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::clone(&memory) as _)
        .build_arc()?;
    let ctx = SessionContext::new_with_config_rt(
        SessionConfig::from_env()?
            .with_target_partitions(cores)
            .with_default_catalog_and_schema("ember", schema),
        runtime,
    );
    Ok(DataFusion { ctx, memory })
}

/// The most memory one task of the session's newest distributed query held at once (with one
/// slot per executor, what its executor held for it at most); `None` if the query ran on the
/// coordinator alone.
async fn ember_peak_memory(
    engine: &ember_coordinator::engine::QueryEngine,
    session: &ember_coordinator::session::ClientSession,
) -> Option<u64> {
    let monitor = engine.monitor();
    let queries = monitor.queries(session.user()).await.ok()?;
    let newest = queries.iter().find(|q| q.session_id == session.id())?;
    let detail = monitor
        .query(session.user(), &newest.query_id)
        .await
        .ok()??;
    detail.stages.iter().map(|s| s.peak_memory_bytes).max()
}

fn mib(bytes: Option<u64>) -> String {
    match bytes {
        Some(bytes) => format!("{:.1}", bytes as f64 / (1u64 << 20) as f64),
        None => "-".into(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs each of `queries` (name, SQL) on single-node DataFusion and on Ember, best of
/// `iterations` each, printing a line per query (times, ratio, rows, whether the answers
/// agree, the most memory each engine's pool held for it: all of DataFusion's, Ember's largest
/// task), the totals over the queries whose answers agree, and how the others differ.
async fn compare_engines(
    datafusion: &DataFusion,
    engine: &ember_coordinator::engine::QueryEngine,
    session: &ember_coordinator::session::ClientSession,
    queries: &[(String, &str)],
    iterations: usize,
) {
    println!(
        "{:>5} {:>14} {:>12} {:>7} {:>8} {:>7} {:>11} {:>13}",
        "query",
        "datafusion_ms",
        "ember_ms",
        "ratio",
        "rows",
        "answer",
        "df_peak_mib",
        "task_peak_mib"
    );
    let (mut total_df, mut total_ember) = (Duration::ZERO, Duration::ZERO);
    let mut differing = vec![];
    for (name, sql) in queries {
        let (mut best_df, mut best_ember) = (Duration::MAX, Duration::MAX);
        let mut answers = (Answer::Rows(vec![]), Answer::Rows(vec![]));
        let (mut peak_df, mut peak_ember) = (0, None);
        for _ in 0..iterations.max(1) {
            datafusion.memory.reset_peak();
            let (time, answer) = run_datafusion(&datafusion.ctx, sql).await;
            peak_df = peak_df.max(datafusion.memory.peak() as u64);
            best_df = best_df.min(time);
            answers.0 = answer;
            let (time, answer) = time_ember(engine, session, sql).await;
            let peak = ember_peak_memory(engine, session).await;
            peak_ember = peak_ember.max(peak);
            best_ember = best_ember.min(time);
            answers.1 = answer;
        }
        let (theirs, ours) = answers;
        let verdict = theirs.verdict(&ours);
        if verdict == "same" {
            total_df += best_df;
            total_ember += best_ember;
        } else {
            differing.push(format!("{name}: {}", ours.describe(&theirs)));
        }
        println!(
            "{:>5} {:>14.1} {:>12.1} {:>7.2} {:>8} {:>7} {:>11} {:>13}",
            name,
            ms(best_df),
            ms(best_ember),
            ms(best_ember) / ms(best_df),
            ours.rows(),
            verdict,
            mib(Some(peak_df)),
            mib(peak_ember),
        );
    }
    let note = match differing.is_empty() {
        true => "",
        false => "   (queries with the same answer)",
    };
    println!(
        "{:>5} {:>14.1} {:>12.1} {:>7.2}{note}",
        "total",
        ms(total_df),
        ms(total_ember),
        ms(total_ember) / ms(total_df)
    );
    for line in &differing {
        println!("{line}");
    }
}

/// A query's answer as the benchmarks compare them: its rows as text (floats to six significant
/// digits: engines may add in other orders), sorted; or the error it ended with.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Rows(Vec<String>),
    Error(String),
}

impl Answer {
    fn of(batches: &[RecordBatch]) -> anyhow::Result<Self> {
        use datafusion::arrow::array::{Array, AsArray};
        use datafusion::arrow::datatypes::{DataType, Float32Type, Float64Type};
        let mut rows = vec![];
        for batch in batches {
            for row in 0..batch.num_rows() {
                let mut text = vec![];
                for column in batch.columns() {
                    let value = if column.is_null(row) {
                        "NULL".to_string()
                    } else {
                        match column.data_type() {
                            DataType::Float64 => {
                                float(column.as_primitive::<Float64Type>().value(row))
                            }
                            DataType::Float32 => {
                                float(f64::from(column.as_primitive::<Float32Type>().value(row)))
                            }
                            _ => datafusion::arrow::util::display::array_value_to_string(
                                column, row,
                            )?,
                        }
                    };
                    text.push(value);
                }
                rows.push(text.join("|"));
            }
        }
        rows.sort();
        Ok(Answer::Rows(rows))
    }

    /// The number of rows, or `error`.
    fn rows(&self) -> String {
        match self {
            Answer::Rows(rows) => rows.len().to_string(),
            Answer::Error(_) => "error".into(),
        }
    }

    /// `same`, `DIFF`, or `error` when either engine failed.
    fn verdict(&self, other: &Answer) -> &'static str {
        match (self, other) {
            (Answer::Error(_), _) | (_, Answer::Error(_)) => "error",
            (a, b) if a == b => "same",
            _ => "DIFF",
        }
    }

    /// How this answer (Ember's) differs from `theirs` (DataFusion's).
    fn describe(&self, theirs: &Answer) -> String {
        match (self, theirs) {
            (Answer::Error(e), _) => format!("Ember failed: {e}"),
            (_, Answer::Error(e)) => format!("DataFusion failed: {e}"),
            (Answer::Rows(ours), Answer::Rows(theirs)) => {
                let first = ours
                    .iter()
                    .zip(theirs)
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| format!("Ember {a} / DataFusion {b}"))
                    .unwrap_or_default();
                format!(
                    "{} rows against {}; first difference: {first}",
                    ours.len(),
                    theirs.len()
                )
            }
        }
    }
}

fn float(value: f64) -> String {
    if value == 0.0 {
        return "0".into();
    }
    format!("{value:.5e}")
}

/// Runs `sql` (one or more statements) on single-node DataFusion: the time it took and the
/// answer of its last statement.
async fn run_datafusion(ctx: &SessionContext, sql: &str) -> (Duration, Answer) {
    let start = Instant::now();
    let answer = async {
        let statements = datafusion::sql::parser::DFParser::parse_sql(sql)?;
        let mut batches = vec![];
        for statement in statements {
            batches = ctx.sql(&statement.to_string()).await?.collect().await?;
        }
        Answer::of(&batches)
    }
    .await
    .unwrap_or_else(|e| Answer::Error(e.to_string()));
    (start.elapsed(), answer)
}

/// Runs `sql` on Ember: the time it took and the answer of its last statement.
async fn time_ember(
    engine: &ember_coordinator::engine::QueryEngine,
    session: &ember_coordinator::session::ClientSession,
    sql: &str,
) -> (Duration, Answer) {
    let start = Instant::now();
    let answer = run_ember(engine, session, sql)
        .await
        .and_then(|batches| Answer::of(&batches))
        .unwrap_or_else(|e| Answer::Error(e.to_string()));
    (start.elapsed(), answer)
}

/// Runs `sql` on Ember: the rows of its last statement that returns rows.
async fn run_ember(
    engine: &ember_coordinator::engine::QueryEngine,
    session: &ember_coordinator::session::ClientSession,
    sql: &str,
) -> anyhow::Result<Vec<RecordBatch>> {
    let mut batches = vec![];
    for output in engine.execute_sql(session, sql).await? {
        if let Output::Rows(stream) = output {
            batches = stream.try_collect().await?;
        }
    }
    Ok(batches)
}
