//! `ember-slt`: runs `.slt` files against a running Ember server over the Postgres wire protocol.
//!
//! ```text
//! ember-slt [--host H] [--port P] --data-dir DIR [FILE_OR_DIR...]
//! ```
//! Without files, runs the suite in this crate's `slt` directory. Exits non-zero if any fails.

use std::path::PathBuf;
use std::time::Duration;

use ember_sql_tests::{Target, run_files, slt_files};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut target = Target {
        host: "127.0.0.1".into(),
        port: 5433,
        data_dir: PathBuf::from("data"),
    };
    let mut paths = vec![];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next().unwrap_or_else(|| {
                eprintln!("{name} needs a value");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--host" => target.host = value("--host"),
            "--port" => {
                target.port = value("--port").parse().unwrap_or_else(|e| {
                    eprintln!("--port: {e}");
                    std::process::exit(2)
                })
            }
            "--data-dir" => target.data_dir = PathBuf::from(value("--data-dir")),
            "-h" | "--help" => {
                println!("usage: ember-slt [--host H] [--port P] --data-dir DIR [FILE_OR_DIR...]");
                return std::process::ExitCode::SUCCESS;
            }
            path => paths.push(PathBuf::from(path)),
        }
    }
    if paths.is_empty() {
        paths.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("slt"));
    }
    let files: Vec<PathBuf> = paths
        .iter()
        .flat_map(|p| {
            if p.is_dir() {
                slt_files(p)
            } else {
                vec![p.clone()]
            }
        })
        .collect();
    let outcomes = run_files(&target, &files, Duration::from_secs(300)).await;
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    for outcome in &outcomes {
        match &outcome.error {
            None => println!("ok     {}", outcome.file.display()),
            Some(error) => println!("FAILED {}\n{error}", outcome.file.display()),
        }
    }
    println!(
        "{} files, {} passed, {failed} failed",
        outcomes.len(),
        outcomes.len() - failed
    );
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
