//! The `ember` binary: parses the command line and hands over to the library.

use std::io::IsTerminal;

use clap::Parser;

/// mimalloc, as DataFusion's own command line uses: its thread-local free lists suit the many
/// short-lived buffers of query work (hash tables, decoded shuffle batches) better than glibc's
/// arenas, and a task's buffers are often freed on another thread than the one that made them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay`: its option numbers are part of its ABI (retired options
/// keep theirs as placeholders), but the Rust bindings name only some of them.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory a query freed goes back to the operating system after this many idle milliseconds
/// (mimalloc's default: one second; `MIMALLOC_PURGE_DELAY` still decides when set). Queries that come seconds apart would otherwise fault the
/// same pages in again: small TPC-H queries took 10-20% longer with the default.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

fn main() -> anyhow::Result<()> {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of the allocator's process-wide options, which it reads atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_numbered() {
        // SAFETY: reads one of the allocator's options.
        let delay = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(delay, 1000, "mimalloc's default purge delay");
        }
    }
}
