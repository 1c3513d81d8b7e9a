//! The sqllogictest suite (`sql-tests/slt`) against a running server: an `ember coordinator`
//! process and two `ember executor` processes, reached over the Postgres wire protocol like any
//! client would.

// The suite's runner, shared with the sql-tests crate without a dependency cycle.
#[allow(unreachable_pub, dead_code)]
#[path = "../../../sql-tests/src/lib.rs"]
mod slt;

use std::path::Path;
use std::time::Duration;

use crate::common::ProcessCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_files_pass_against_a_running_server() {
    let data = tempfile::tempdir().expect("temp dir");
    let data_dir = std::fs::canonicalize(data.path()).expect("data dir");
    let cluster = ProcessCluster::start(2, 0.01, &data_dir);
    let _client = cluster.connect(2).await;
    let files = slt::slt_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql-tests/slt"));
    assert!(
        files.len() >= 9,
        "expected the whole suite, found {files:?}"
    );
    let target = slt::Target {
        host: "127.0.0.1".into(),
        port: cluster.pg_port,
        data_dir,
    };
    let outcomes = slt::run_files(&target, &files, Duration::from_secs(120)).await;
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| Some(format!("{}: {}", o.file.display(), o.error.as_ref()?)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} files failed:\n{}\n{}",
        failures.len(),
        files.len(),
        failures.join("\n"),
        cluster.logs()
    );
}
