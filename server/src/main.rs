//! The `ember` binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EMBER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = ember_server::cli::Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ember-io")
        .build()?
        .block_on(ember_server::cli::run(cli))
}
