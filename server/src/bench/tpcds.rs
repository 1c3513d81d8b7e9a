//! `ember bench tpcds`: TPC-DS's 99 queries on a local Ember cluster and on single-node
//! DataFusion, in one run on the same parquet files, with per-query times, ratios and whether
//! the two answers agree.
//!
//! The data comes from `tpcgen-cli` (`pip install tpcgen-cli`), run here when the directory
//! lacks a table. The queries are read from a directory of `<n>.sql` files (the 99 queries as
//! TPC-DS's templates give them: DataFusion's `datafusion/core/tests/tpc-ds`, or the copies
//! the `ibis-framework` package carries in `ibis/backends/tests/tpc/queries/duckdb/ds`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use datafusion::prelude::ParquetReadOptions;

use super::{BenchCluster, compare_engines, datafusion_context, run_ember};

/// TPC-DS's tables (`tpcgen-cli` also writes `dbgen_version`, which no query reads).
pub const TABLES: [&str; 24] = [
    "call_center",
    "catalog_page",
    "catalog_returns",
    "catalog_sales",
    "customer",
    "customer_address",
    "customer_demographics",
    "date_dim",
    "household_demographics",
    "income_band",
    "inventory",
    "item",
    "promotion",
    "reason",
    "ship_mode",
    "store",
    "store_returns",
    "store_sales",
    "time_dim",
    "warehouse",
    "web_page",
    "web_returns",
    "web_sales",
    "web_site",
];

/// What `ember bench tpcds` was asked.
#[derive(Debug, clap::Args)]
pub struct TpcdsArgs {
    /// Directory of the queries: `1.sql` ... `99.sql` (leading zeros allowed).
    #[arg(long)]
    queries: PathBuf,
    /// TPC-DS scale factor (1: about 1 GB of data).
    #[arg(long, default_value = "1")]
    scale: f64,
    /// Directory of the tables' parquet files (`<table>.parquet`); made with `tpcgen-cli`
    /// where a table is missing. Default: `tpcds/sf<scale>` in the data dir.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Runs per query and engine; the fastest counts (the first run also warms caches).
    #[arg(long, default_value = "1")]
    iterations: usize,
    /// Executors of the local cluster.
    #[arg(long, default_value = "2")]
    executors: usize,
    /// Only these queries, comma-separated (default: every query in the directory).
    #[arg(long)]
    only: Option<String>,
}

/// Runs the benchmark and prints its table.
pub(super) async fn run(args: TpcdsArgs, config_file: Option<&PathBuf>) -> anyhow::Result<()> {
    let queries = read_queries(&args.queries, args.only.as_deref())?;
    let zero = "0".to_string();
    let executors = args.executors.to_string();
    let base = crate::layers::load_config(config_file, &[])?;
    let data = match &args.data {
        Some(dir) => dir.clone(),
        None => base
            .coordinator
            .data_dir
            .join("tpcds")
            .join(format!("sf{}", args.scale)),
    };
    generate(&data, args.scale)?;
    let data = std::fs::canonicalize(&data)?;
    let allowed = format!(
        "{},{}",
        data.display(),
        std::path::absolute(&base.coordinator.data_dir)?.display()
    );
    eprintln!(
        "TPC-DS SF{} from {}; a local cluster with {} executors",
        args.scale,
        data.display(),
        args.executors
    );
    let (_, cluster) = BenchCluster::start(
        config_file,
        &[
            ("local.executors", Some(&executors)),
            ("tpch.scale", Some(&zero)),
            ("storage.allowed_paths", Some(&allowed)),
        ],
    )
    .await?;
    let engine = std::sync::Arc::clone(&cluster.engine);
    let session = engine.new_session();
    run_ember(&engine, &session, "create schema if not exists tpcds").await?;
    session.set_current_schema("tpcds");

    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let datafusion = datafusion_context("tpcds")?;
    for table in TABLES {
        let path = data.join(format!("{table}.parquet"));
        let location = path.to_str().context("a data path that is not UTF-8")?;
        datafusion
            .ctx
            .register_parquet(table, location, ParquetReadOptions::default())
            .await?;
        run_ember(
            &engine,
            &session,
            &format!(
                "create external table if not exists {table} stored as parquet location '{}'",
                location.replace('\'', "''")
            ),
        )
        .await?;
    }

    println!(
        "TPC-DS SF{}, best of {}, {} executors, {cores} cores",
        args.scale, args.iterations, args.executors
    );
    let queries: Vec<(String, &str)> = queries
        .iter()
        .map(|(number, sql)| (format!("q{number}"), sql.as_str()))
        .collect();
    compare_engines(&datafusion, &engine, &session, &queries, args.iterations).await;
    cluster.stop().await?;
    Ok(())
}

/// Makes the tables `dir` lacks with `tpcgen-cli`.
fn generate(dir: &Path, scale: f64) -> anyhow::Result<()> {
    let missing = TABLES
        .iter()
        .any(|t| !dir.join(format!("{t}.parquet")).exists());
    if !missing {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    eprintln!(
        "generating TPC-DS SF{scale} into {} with tpcgen-cli",
        dir.display()
    );
    let status = std::process::Command::new("tpcgen-cli")
        .args(["tpcds", "parquet", "--scale-factor", &scale.to_string()])
        .arg("--output-dir")
        .arg(dir)
        .status()
        .context("cannot run tpcgen-cli, which makes TPC-DS data: pip install tpcgen-cli")?;
    anyhow::ensure!(status.success(), "tpcgen-cli failed: {status}");
    Ok(())
}

/// The queries of `dir` by number (`<n>.sql`, `q<n>.sql`), only those of `only` if given.
fn read_queries(dir: &Path, only: Option<&str>) -> anyhow::Result<Vec<(u32, String)>> {
    let wanted: Option<Vec<u32>> = only
        .map(|list| {
            list.split(',')
                .map(|q| q.trim().trim_start_matches('q').parse::<u32>())
                .collect::<Result<_, _>>()
        })
        .transpose()
        .context("--only takes query numbers such as 3,72")?;
    let mut queries = vec![];
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the queries in {}", dir.display()))?
    {
        let path = entry?.path();
        let Some(number) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".sql"))
            .map(|n| n.trim_start_matches('q'))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if wanted.as_ref().is_some_and(|w| !w.contains(&number)) {
            continue;
        }
        queries.push((number, std::fs::read_to_string(&path)?));
    }
    queries.sort();
    anyhow::ensure!(
        !queries.is_empty(),
        "no queries (<n>.sql) in {}",
        dir.display()
    );
    Ok(queries)
}
