//! `ember bench concurrency`: several clients running a TPC-H query mix at once for a while, on
//! single-node DataFusion and on a local Ember cluster over the same files: queries per minute,
//! every answer checked, and the latency of `SELECT 1` under that load.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use datafusion::prelude::SessionContext;
use ember_coordinator::engine::QueryEngine;
use ember_coordinator::session::ClientSession;
use ember_planner::tpch;

use super::{Answer, BenchCluster, datafusion_context, ms, run_datafusion, time_ember};

/// Arguments of `ember bench concurrency`.
#[derive(Debug, Args)]
pub struct ConcurrencyArgs {
    /// TPC-H scale factor.
    #[arg(long, default_value = "1")]
    scale: f64,
    /// Clients running queries at once, on each engine.
    #[arg(long, default_value = "8")]
    clients: usize,
    /// How long each engine is loaded, in seconds.
    #[arg(long, default_value = "120")]
    seconds: u64,
    /// The TPC-H queries of the mix, comma-separated; each client runs them in turn, starting
    /// at a different one.
    #[arg(long, default_value = "1,3,5,6,10,12,14,19")]
    queries: String,
    /// Executors of the local cluster.
    #[arg(long, default_value = "2")]
    executors: usize,
}

/// What one engine did under load.
#[derive(Debug, Default)]
struct Load {
    completed: u64,
    wrong: u64,
    failed: u64,
    elapsed: Duration,
    /// Latencies of `SELECT 1` sent while the clients ran, sorted.
    probes: Vec<Duration>,
    /// Of the queries of the mix, each client's time, sorted.
    latencies: Vec<Duration>,
}

impl Load {
    fn per_minute(&self) -> f64 {
        self.completed as f64 * 60.0 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How often the prober sends `SELECT 1`.
const PROBE_EVERY: Duration = Duration::from_millis(100);

/// Runs the benchmark and prints its table.
pub(super) async fn run(
    args: ConcurrencyArgs,
    config_file: Option<&std::path::PathBuf>,
) -> anyhow::Result<()> {
    let queries: Vec<usize> = args
        .queries
        .split(',')
        .map(|q| q.trim().trim_start_matches('q').parse::<usize>())
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(
        !queries.is_empty() && queries.iter().all(|q| (1..=22).contains(q)),
        "TPC-H queries are numbered 1 to 22"
    );
    anyhow::ensure!(
        (1..=256).contains(&args.clients),
        "--clients must be between 1 and 256"
    );
    eprintln!(
        "preparing TPC-H SF{} and a local cluster with {} executors",
        args.scale, args.executors
    );
    let (config, cluster) = BenchCluster::start(
        config_file,
        &[
            ("local.executors", Some(&args.executors.to_string())),
            ("tpch.scale", Some(&args.scale.to_string())),
        ],
    )
    .await?;
    let engine = Arc::clone(&cluster.engine);
    let dir = std::fs::canonicalize(tpch::scale_dir(
        &config.coordinator.data_dir.join("tpch"),
        args.scale,
    ))?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let datafusion = datafusion_context("tpch")?.ctx;
    tpch::register(&datafusion, "tpch", &dir).await?;

    // The answers every run is checked against: DataFusion's, alone.
    let mut mix = vec![];
    for q in &queries {
        let sql = tpch::QUERIES[q - 1];
        let (_, answer) = run_datafusion(&datafusion, sql).await;
        anyhow::ensure!(
            !matches!(answer, Answer::Error(_)),
            "q{q} fails on DataFusion: {answer:?}"
        );
        mix.push((format!("q{q}"), sql, answer));
    }
    let mix = Arc::new(mix);
    let duration = Duration::from_secs(args.seconds.max(1));

    println!(
        "TPC-H SF{} mix {}, {} clients for {} s each, {} executors, {cores} cores",
        args.scale,
        queries
            .iter()
            .map(|q| format!("q{q}"))
            .collect::<Vec<_>>()
            .join(","),
        args.clients,
        duration.as_secs(),
        args.executors
    );
    let df = load(
        || DataFusionClient(datafusion.clone()),
        &mix,
        args.clients,
        duration,
    )
    .await;
    let ember = load(|| EmberClient::new(&engine), &mix, args.clients, duration).await;
    println!(
        "{:>10} {:>9} {:>9} {:>6} {:>7} {:>10} {:>10} {:>12} {:>12}",
        "engine",
        "queries",
        "per_min",
        "wrong",
        "failed",
        "query_p50",
        "query_p99",
        "select1_p50",
        "select1_p99"
    );
    for (name, load) in [("datafusion", &df), ("ember", &ember)] {
        println!(
            "{:>10} {:>9} {:>9.1} {:>6} {:>7} {:>10.1} {:>10.1} {:>12.2} {:>12.2}",
            name,
            load.completed,
            load.per_minute(),
            load.wrong,
            load.failed,
            ms(percentile(&load.latencies, 0.5)),
            ms(percentile(&load.latencies, 0.99)),
            ms(percentile(&load.probes, 0.5)),
            ms(percentile(&load.probes, 0.99)),
        );
    }
    println!(
        "ember/datafusion queries per minute: {:.2}",
        ember.per_minute() / df.per_minute().max(1e-9)
    );
    cluster.stop().await
}

/// The mix's queries, their names and DataFusion's answers alone.
type Mix = Arc<Vec<(String, &'static str, Answer)>>;

/// Counters the clients of one engine share.
#[derive(Default)]
struct Shared {
    completed: AtomicU64,
    wrong: AtomicU64,
    failed: AtomicU64,
    latencies: std::sync::Mutex<Vec<Duration>>,
}

impl Shared {
    fn record(&self, name: &str, expected: &Answer, answer: &Answer, took: Duration) {
        match answer {
            Answer::Error(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("{name} failed: {e}");
            }
            _ if answer.verdict(expected) != "same" => {
                self.wrong.fetch_add(1, Ordering::Relaxed);
                eprintln!("{name} answered wrong: {}", answer.describe(expected));
            }
            _ => {
                self.completed.fetch_add(1, Ordering::Relaxed);
                self.latencies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(took);
            }
        }
    }

    fn into_load(self, elapsed: Duration, probes: Vec<Duration>) -> Load {
        let mut latencies = self
            .latencies
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        latencies.sort();
        let mut probes = probes;
        probes.sort();
        Load {
            completed: self.completed.into_inner(),
            wrong: self.wrong.into_inner(),
            failed: self.failed.into_inner(),
            elapsed,
            probes,
            latencies,
        }
    }
}

/// One client's connection to an engine.
trait Client: Send + Sync + 'static {
    /// Runs `sql`: the time it took and its answer.
    fn run(&self, sql: &'static str) -> impl Future<Output = (Duration, Answer)> + Send;
}

/// A client of single-node DataFusion: the shared context.
struct DataFusionClient(SessionContext);

impl Client for DataFusionClient {
    fn run(&self, sql: &'static str) -> impl Future<Output = (Duration, Answer)> + Send {
        run_datafusion(&self.0, sql)
    }
}

/// A client of Ember: a session of its own.
struct EmberClient {
    engine: Arc<QueryEngine>,
    session: ClientSession,
}

impl EmberClient {
    fn new(engine: &Arc<QueryEngine>) -> Self {
        let session = engine.new_session();
        session.set_current_schema("tpch");
        Self {
            engine: Arc::clone(engine),
            session,
        }
    }
}

impl Client for EmberClient {
    fn run(&self, sql: &'static str) -> impl Future<Output = (Duration, Answer)> + Send {
        time_ember(&self.engine, &self.session, sql)
    }
}

/// `clients` clients made by `connect`, each running the mix in turn from its own first query,
/// for `duration`, while another sends `SELECT 1` every [`PROBE_EVERY`].
async fn load<C: Client>(
    connect: impl Fn() -> C,
    mix: &Mix,
    clients: usize,
    duration: Duration,
) -> Load {
    let shared = Arc::new(Shared::default());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = vec![];
    for first in 0..clients {
        let (client, mix, shared, stop) = (
            connect(),
            Arc::clone(mix),
            Arc::clone(&shared),
            Arc::clone(&stop),
        );
        tasks.push(tokio::spawn(async move {
            let mut next = first % mix.len();
            while !stop.load(Ordering::Relaxed) {
                let (name, sql, expected) = &mix[next];
                let (took, answer) = client.run(sql).await;
                // A query that ends after the time is up does not count.
                if !stop.load(Ordering::Relaxed) {
                    shared.record(name, expected, &answer, took);
                }
                next = (next + 1) % mix.len();
            }
        }));
    }
    let prober = connect();
    let mut probes = vec![];
    let mut tick = tokio::time::interval(PROBE_EVERY);
    while start.elapsed() < duration {
        tick.tick().await;
        probes.push(prober.run("SELECT 1").await.0);
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    for task in tasks {
        let _ = task.await;
    }
    Arc::into_inner(shared)
        .expect("the clients have ended")
        .into_load(elapsed, probes)
}

/// The `q`-quantile of sorted durations (zero when there are none).
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}
