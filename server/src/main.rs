//! The `ember` binary: parses the command line and hands over to the library.

use std::io::IsTerminal;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    ember_protocol::tls::install_crypto_provider();
    init_logging()?;
    let cli = ember_server::cli::Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ember-io")
        .build()?
        .block_on(ember_server::cli::run(cli));
    if let Err(error) = result {
        // Logged like everything else (a log collector sees why the process stopped).
        tracing::error!("{error:#}");
        std::process::exit(1);
    }
    Ok(())
}

/// Logs go to stderr, filtered by `EMBER_LOG` (default `info`): plain text, coloured only on a
/// terminal (and not under `NO_COLOR`), or JSON lines with `EMBER_LOG_FORMAT=json`, for a log
/// collector.
fn init_logging() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EMBER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var("EMBER_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().init(),
        Ok("text") | Err(_) => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(colour).init()
        }
        Ok(other) => anyhow::bail!("EMBER_LOG_FORMAT must be text or json, not {other:?}"),
    }
    Ok(())
}
