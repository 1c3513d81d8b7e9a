//! Benchmarks: the same queries on a local Ember cluster and on single-node DataFusion, in one run.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// TPC-H: generate the data, run the 22 queries on both engines, print times and ratios.
    Tpch {
        #[arg(long, default_value = "1")]
        scale: f64,
        /// Runs per query; the fastest counts.
        #[arg(long, default_value = "3")]
        iterations: usize,
    },
}

pub async fn run(_bench: BenchCommand, _config: Option<&PathBuf>) -> anyhow::Result<()> {
    anyhow::bail!("benchmarks are not built yet")
}
