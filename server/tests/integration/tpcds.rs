//! TPC-DS's 99 queries at SF0.01 on the real `ember` binary (a coordinator and two executor
//! processes), each answer compared with single-node DataFusion's on the same parquet files.
//! The data is `tpcgen-cli`'s, the queries the copies the `ibis-framework` package carries
//! (both installed into the test venv by `scripts/test.sh`).

use std::path::PathBuf;
use std::time::Duration;

use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

use crate::common::{
    ProcessCluster, batches_to_rows, compare, private_data_dir, python, rows, settings,
    tpch_data_dir,
};

const SCALE: f64 = 0.01;

/// The test venv's program `name`.
fn venv_program(name: &str) -> PathBuf {
    PathBuf::from(python())
        .parent()
        .expect("the venv's bin directory")
        .join(name)
}

/// The directory of the 99 queries in the venv's `ibis-framework`.
fn queries_dir() -> PathBuf {
    let output = std::process::Command::new(python())
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .expect("python runs");
    let site = String::from_utf8(output.stdout).expect("UTF-8");
    PathBuf::from(site.trim()).join("ibis/backends/tests/tpc/queries/duckdb/ds")
}

/// The queries, by number; DuckDB's `date_add(d, n)` (q72) as SQL's date arithmetic.
fn queries() -> Vec<(u32, String)> {
    let dir = queries_dir();
    let mut queries: Vec<(u32, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the TPC-DS queries in {}: {e}", dir.display()))
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            let number = path.file_stem()?.to_str()?.parse().ok()?;
            let sql = std::fs::read_to_string(&path).ok()?;
            Some((
                number,
                sql.replace("date_add(d1.d_date, 5)", "(d1.d_date + INTERVAL '5 days')"),
            ))
        })
        .collect();
    queries.sort();
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpcds_answers_match_datafusion() {
    let queries = queries();
    assert_eq!(queries.len(), 99, "the 99 TPC-DS queries");
    let data = tempfile::tempdir().expect("a temp dir");
    let data_dir = std::fs::canonicalize(data.path()).expect("data dir");
    let status = std::process::Command::new(venv_program("tpcgen-cli"))
        .args(["tpcds", "parquet", "--scale-factor", &SCALE.to_string()])
        .arg("--output-dir")
        .arg(&data_dir)
        .status()
        .expect("tpcgen-cli runs");
    assert!(status.success(), "tpcgen-cli: {status}");

    // A data dir of its own: the schema and tables it creates stay out of the shared catalog.
    let (_cluster_data, cluster_dir) = private_data_dir(&tpch_data_dir(SCALE), SCALE);
    let allowed = format!("{},{}", data_dir.display(), cluster_dir.display());
    let env = settings(&[("EMBER_STORAGE_ALLOWED_PATHS", allowed.as_str())]);
    let cluster = ProcessCluster::start_with_env(2, SCALE, &cluster_dir, &env);
    let client = cluster.connect(2).await;
    let reference = SessionContext::new_with_config(
        SessionConfig::new()
            .with_target_partitions(2)
            .with_default_catalog_and_schema("ember", "tpcds"),
    );
    client
        .simple_query("create schema tpcds; set search_path = tpcds")
        .await
        .expect("a schema");
    for table in ember_server::bench::TPCDS_TABLES {
        let path = data_dir.join(format!("{table}.parquet"));
        let path = path.to_str().expect("UTF-8");
        reference
            .register_parquet(table, path, ParquetReadOptions::default())
            .await
            .expect("DataFusion reads the table");
        client
            .simple_query(&format!(
                "create external table {table} stored as parquet location '{path}'"
            ))
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
    }

    let mut failures = vec![];
    for (number, sql) in &queries {
        let ember = tokio::time::timeout(Duration::from_secs(120), client.simple_query(sql))
            .await
            .unwrap_or_else(|_| panic!("q{number} timed out\n{}", cluster.logs()));
        let ember = match ember {
            Ok(messages) => rows(&messages),
            Err(error) => {
                failures.push(format!("q{number}: Ember failed: {error:?}"));
                continue;
            }
        };
        let expected = match reference.sql(sql).await {
            Ok(frame) => match frame.collect().await {
                Ok(batches) => batches_to_rows(&batches),
                Err(error) => {
                    failures.push(format!("q{number}: DataFusion failed: {error}"));
                    continue;
                }
            },
            Err(error) => {
                failures.push(format!("q{number}: DataFusion failed: {error}"));
                continue;
            }
        };
        // Rows tied under ORDER BY may come in either order: compared as sets.
        if let Err(diff) = compare(&ember, &expected, false) {
            failures.push(format!("q{number}: {diff}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 99 queries differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
