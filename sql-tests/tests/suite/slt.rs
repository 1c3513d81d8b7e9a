//! Runs every `.slt` file under `sql-tests/slt` against an in-process cluster (coordinator and two
//! executors talking over loopback gRPC and Flight), through the Postgres wire protocol.

use std::path::Path;
use std::time::Duration;

use ember_config::ConfigBuilder;
use ember_server::LocalCluster;
use ember_sql_tests::{Target, run_files, slt_files};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_files_pass_on_a_two_executor_cluster() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let data_dir = std::fs::canonicalize(data.path())?;
    let mut builder = ConfigBuilder::new();
    builder.set_str("coordinator.port", "0", "test")?;
    builder.set_str("coordinator.pg_port", "0", "test")?;
    builder.set_str("coordinator.flight_sql_port", "0", "test")?;
    builder.set_str("http.port", "0", "test")?;
    builder.set_str(
        "coordinator.data_dir",
        &data_dir.display().to_string(),
        "test",
    )?;
    builder.set_str("tpch.scale", "0.01", "test")?;
    builder.set_str("executor.slots", "2", "test")?;
    let config = builder.build()?;
    let cluster = LocalCluster::start(&config).await?;
    let port = cluster.pg_addr.port();
    let engine = cluster.engine();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(cluster.run(async {
        let _ = stop_rx.await;
    }));
    engine
        .wait_for_executors(2, Duration::from_secs(30))
        .await?;

    let files = slt_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("slt"));
    anyhow::ensure!(
        files.len() >= 9,
        "expected the whole suite, found {files:?}"
    );
    let target = Target {
        host: "127.0.0.1".into(),
        port,
        data_dir,
    };
    let outcomes = run_files(&target, &files, Duration::from_secs(120)).await;
    let _ = stop_tx.send(());
    running.await??;
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| Some(format!("{}: {}", o.file.display(), o.error.as_ref()?)))
        .collect();
    anyhow::ensure!(
        failures.is_empty(),
        "{} of {} files failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    Ok(())
}
