//! DataFusion's own sqllogictest corpus (the `.slt` files shipped in the
//! `datafusion-sqllogictest` crate) run against single-node DataFusion and against an Ember
//! cluster with two executors, record by record.
//!
//! Every query or statement that passes on DataFusion must pass on Ember, unless
//! `corpus-exceptions.txt` names it with a reason; an exception that no longer fails is stale
//! and fails the test too (unless marked `~`, for records whose outcome varies between runs).
//! A full run must cover at least [`MIN_FILES`] files and [`MIN_RECORDS`] records, with at
//! least [`MIN_EMBER_PASSED`] passing on Ember; files the harness skips are counted and named.
//! The test prints passed/failed per file and in total. `EMBER_CORPUS_FILTER=substring` limits
//! the files (and lifts the minimums); `EMBER_CORPUS_VERBOSE=1` prints every failure in full,
//! excepted ones marked so.
//!
//! Both engines format results with DataFusion's own sqllogictest normalisation, so a
//! difference is a difference in answers, not in printing.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion_sqllogictest::{
    DFColumnType, DataFusion, TestContext, convert_batches, convert_schema_to_types,
    df_value_validator, value_normalizer,
};
use ember_config::ConfigBuilder;
use ember_coordinator::{ClientSession, Command, Output, QueryEngine};
use ember_server::LocalCluster;
use futures::TryStreamExt;
use sqllogictest::{AsyncDB, DBOutput, Record, strict_column_validator};

/// The Ember side of the comparison: statements go through the same engine the frontends use.
struct EmberDb {
    engine: Arc<QueryEngine>,
    session: ClientSession,
}

#[derive(Debug, thiserror::Error)]
#[error("DataFusion error: {0}")]
struct EmberDbError(String);

#[async_trait::async_trait]
impl AsyncDB for EmberDb {
    type Error = EmberDbError;
    type ColumnType = DFColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DFColumnType>, EmberDbError> {
        let error = |e: ember_coordinator::Error| EmberDbError(e.to_string());
        let mut outputs = self
            .engine
            .execute_sql(&self.session, sql)
            .await
            .map_err(error)?;
        let Some(output) = outputs.pop() else {
            return Ok(DBOutput::StatementComplete(0));
        };
        match output {
            Output::Rows(stream) => {
                let schema = stream.schema();
                let batches: Vec<RecordBatch> = stream
                    .try_collect()
                    .await
                    .map_err(|e| error(ember_coordinator::Error::from(e)))?;
                let types = convert_schema_to_types(schema.fields());
                let rows = convert_batches(&schema, batches, false)
                    .map_err(|e| EmberDbError(e.to_string()))?;
                if rows.is_empty() && types.is_empty() {
                    Ok(DBOutput::StatementComplete(0))
                } else {
                    Ok(DBOutput::Rows { types, rows })
                }
            }
            // DataFusion answers INSERT and COPY with the row count as a one-row result.
            Output::Done(outcome) => match (outcome.command, outcome.rows) {
                (Command::Insert | Command::Copy, Some(count)) => Ok(DBOutput::Rows {
                    types: vec![DFColumnType::Integer],
                    rows: vec![vec![count.to_string()]],
                }),
                _ => Ok(DBOutput::StatementComplete(0)),
            },
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "ember"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// A full run covers at least this many files (503 when last counted)...
const MIN_FILES: usize = 480;
/// ... and this many records (24,872) ...
const MIN_RECORDS: usize = 24_000;
/// ... of which at least this many pass on Ember (19,500).
const MIN_EMBER_PASSED: usize = 19_000;

/// `file` or `file:line`, each with a reason, from `corpus-exceptions.txt`; `~` before the name
/// marks an exception whose record may pass on some runs (row order, say).
struct Exceptions {
    files: HashSet<String>,
    records: HashSet<(String, u32)>,
    varying: HashSet<String>,
}

impl Exceptions {
    fn load(path: &Path) -> anyhow::Result<Self> {
        let mut exceptions = Exceptions {
            files: HashSet::new(),
            records: HashSet::new(),
            varying: HashSet::new(),
        };
        for (n, line) in std::fs::read_to_string(path)?.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (what, reason) = line.split_once('|').ok_or_else(|| {
                anyhow::anyhow!("line {}: expected `file[:line] | reason`", n + 1)
            })?;
            anyhow::ensure!(!reason.trim().is_empty(), "line {}: no reason given", n + 1);
            let what = match what.trim().strip_prefix('~') {
                Some(varying) => {
                    exceptions.varying.insert(varying.trim().to_string());
                    varying.trim()
                }
                None => what.trim(),
            };
            match what.rsplit_once(':') {
                Some((file, record)) => {
                    exceptions
                        .records
                        .insert((file.to_string(), record.trim().parse()?));
                }
                None => {
                    exceptions.files.insert(what.to_string());
                }
            }
        }
        Ok(exceptions)
    }

    fn covers(&self, file: &str, line: u32) -> bool {
        self.files.contains(file) || self.records.contains(&(file.to_string(), line))
    }

    /// Whether an exception's record may pass on some runs.
    fn varies(&self, entry: &str) -> bool {
        self.varying.contains(entry)
    }
}

#[derive(Default, Clone, Copy)]
struct Counts {
    records: usize,
    datafusion_passed: usize,
    ember_passed: usize,
    excepted: usize,
    regressions: usize,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Self) {
        self.records += other.records;
        self.datafusion_passed += other.datafusion_passed;
        self.ember_passed += other.ember_passed;
        self.excepted += other.excepted;
        self.regressions += other.regressions;
    }
}

/// Copies the corpus (test files and their data) to `dir`, keeping its layout: the files refer
/// to data by paths relative to the crate's root.
fn copy_corpus(source: &Path, dir: &Path) -> anyhow::Result<()> {
    for sub in ["test_files", "data"] {
        let mut pending = vec![source.join(sub)];
        while let Some(from) = pending.pop() {
            let to = dir.join(from.strip_prefix(source)?);
            std::fs::create_dir_all(&to)?;
            for entry in std::fs::read_dir(&from)? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    pending.push(entry.path());
                } else {
                    std::fs::copy(entry.path(), to.join(entry.file_name()))?;
                }
            }
        }
    }
    Ok(())
}

/// The corpus shipped with the datafusion-sqllogictest crate in the cargo registry.
fn corpus_source() -> anyhow::Result<PathBuf> {
    let probe = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok_or_else(|| anyhow::anyhow!("cannot find the cargo home"))?;
    let registry = cargo_home.join("registry").join("src");
    for index in std::fs::read_dir(&registry)? {
        let candidate = index?.path().join("datafusion-sqllogictest-55.2.0");
        if candidate.join("test_files").is_dir() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "datafusion-sqllogictest 55.2.0 not found under {} (from {})",
        registry.display(),
        probe.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datafusion_corpus_passes_on_ember_as_on_datafusion() -> anyhow::Result<()> {
    let source = corpus_source()?;
    let work = tempfile::tempdir()?;
    // The layout of DataFusion's repository: files refer to `../../testing/data` and
    // `../core/tests/data`, which then resolve inside the work dir (and are missing for both
    // engines alike).
    let root = std::fs::canonicalize(work.path())?
        .join("datafusion")
        .join("sqllogictest");
    copy_corpus(&source, &root)?;
    // The corpus resolves relative paths (data, scratch output) from the crate's root.
    std::env::set_current_dir(&root)?;
    let exceptions =
        Exceptions::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus-exceptions.txt"))?;
    let filter = std::env::var("EMBER_CORPUS_FILTER").ok();
    let verbose = std::env::var_os("EMBER_CORPUS_VERBOSE").is_some();

    let data_dir = root.join("ember-data");
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
    builder.set_str(
        "storage.allowed_paths",
        &work.path().display().to_string(),
        "test",
    )?;
    builder.set_str("executor.slots", "2", "test")?;
    let config = builder.build()?;
    let cluster = LocalCluster::start(&config).await?;
    let engine = cluster.engine();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(cluster.run(async {
        let _ = stop_rx.await;
    }));
    engine
        .wait_for_executors(2, Duration::from_secs(30))
        .await?;
    let baseline = catalog_objects(&engine).await?;

    let mut files: Vec<PathBuf> =
        datafusion_sqllogictest::read_dir_recursive(root.join("test_files"))?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "slt"))
            .filter(|p| {
                filter
                    .as_ref()
                    .is_none_or(|f| p.to_string_lossy().contains(f.as_str()))
            })
            .collect();
    files.sort();
    let started = Instant::now();
    let mut per_file = BTreeMap::new();
    let mut total = Counts::default();
    let mut regressions = vec![];
    let mut skipped = vec![];
    // Excepted records that passed on Ember, and those whose exception a failure needed.
    let mut passed_excepted = BTreeSet::new();
    let mut needed = HashSet::new();
    // Excepted files in which some record needed the exception.
    let mut files_needed = HashSet::new();
    for path in &files {
        let relative = path.strip_prefix(root.join("test_files"))?.to_path_buf();
        let name = relative.display().to_string();
        let Some(test_ctx) = TestContext::try_new_for_test_file(&relative).await else {
            // DataFusion's harness runs it only with features or setups of its own.
            println!("skip   {name}: DataFusion's harness does not run it here");
            skipped.push(name);
            continue;
        };
        let records = match sqllogictest::parse_file::<DFColumnType>(path) {
            Ok(records) => records,
            Err(error) => {
                println!("skip   {name}: cannot parse ({error})");
                skipped.push(name);
                continue;
            }
        };
        let mut df = sqllogictest::Runner::new(|| async {
            Ok(DataFusion::new(
                test_ctx.session_ctx().clone(),
                relative.clone(),
                indicatif::ProgressBar::hidden(),
            ))
        });
        df.add_label("Datafusion");
        df.with_column_validator(strict_column_validator);
        df.with_normalizer(value_normalizer);
        df.with_validator(df_value_validator);
        let file_engine = Arc::clone(&engine);
        let mut ember = sqllogictest::Runner::new(move || {
            let engine = Arc::clone(&file_engine);
            async move {
                let session = engine.new_session();
                Ok::<_, EmberDbError>(EmberDb { engine, session })
            }
        });
        ember.add_label("Datafusion");
        ember.with_column_validator(strict_column_validator);
        ember.with_normalizer(value_normalizer);
        ember.with_validator(df_value_validator);

        let mut counts = Counts::default();
        let file_started = Instant::now();
        for record in records {
            if let Record::Halt { .. } = record {
                break;
            }
            let line = match &record {
                Record::Statement { loc, .. } | Record::Query { loc, .. } => Some(loc.line()),
                _ => None,
            };
            let df_result = bounded(df.run_async(record.clone())).await;
            let ember_result = bounded(ember.run_async(record)).await;
            let Some(line) = line else { continue };
            counts.records += 1;
            counts.datafusion_passed += df_result.is_ok() as usize;
            counts.ember_passed += ember_result.is_ok() as usize;
            // An excepted record that passes is stale, unless another record reported at the
            // same line (one of an included file, say) needs the exception.
            if ember_result.is_ok() && exceptions.records.contains(&(name.clone(), line)) {
                passed_excepted.insert(format!("{name}:{line}"));
            }
            if let (Ok(()), Err(error)) = (&df_result, &ember_result) {
                if exceptions.files.contains(&name) {
                    files_needed.insert(name.clone());
                }
                if exceptions.covers(&name, line) {
                    counts.excepted += 1;
                    needed.insert(format!("{name}:{line}"));
                    if verbose {
                        println!("--- {name}:{line} (excepted)\n{error}");
                    }
                } else {
                    counts.regressions += 1;
                    regressions.push(format!("{name}:{line}"));
                    if verbose {
                        println!("--- {name}:{line}\n{error}");
                    }
                }
            }
        }
        drop_created_objects(&engine, &baseline).await?;
        println!(
            "{:6} {name}: {} records, DataFusion passed {}, Ember passed {}, excepted {}, regressions {} ({:.1}s)",
            if counts.regressions == 0 {
                "ok"
            } else {
                "FAILED"
            },
            counts.records,
            counts.datafusion_passed,
            counts.ember_passed,
            counts.excepted,
            counts.regressions,
            file_started.elapsed().as_secs_f64(),
        );
        total += counts;
        per_file.insert(name, counts);
    }
    let _ = stop_tx.send(());
    // Queries a timed-out record left running may hold the shutdown up; the answer is in.
    if tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .is_err()
    {
        println!("the cluster did not stop within 30s");
    }
    println!(
        "corpus: {} files, {} records; DataFusion passed {}, Ember passed {}; {} failures excepted; {} regressions; {} files skipped ({:.0}s)",
        per_file.len(),
        total.records,
        total.datafusion_passed,
        total.ember_passed,
        total.excepted,
        total.regressions,
        skipped.len(),
        started.elapsed().as_secs_f64()
    );
    if !skipped.is_empty() {
        println!("skipped files:\n{}", skipped.join("\n"));
    }
    let mut stale: Vec<String> = passed_excepted
        .into_iter()
        .filter(|entry| !needed.contains(entry) && !exceptions.varies(entry))
        .collect();
    // Excepted files that ran without needing their exception.
    for file in &exceptions.files {
        if per_file.contains_key(file) && !files_needed.contains(file) && !exceptions.varies(file) {
            stale.push(file.clone());
        }
    }
    anyhow::ensure!(
        regressions.is_empty(),
        "{} records pass on DataFusion but fail on Ember and are not in corpus-exceptions.txt:\n{}",
        regressions.len(),
        regressions.join("\n")
    );
    anyhow::ensure!(
        stale.is_empty(),
        "{} exceptions of corpus-exceptions.txt passed on Ember: remove them (or mark them `~` \
         if their outcome varies between runs):\n{}",
        stale.len(),
        stale.join("\n")
    );
    if filter.is_none() {
        anyhow::ensure!(
            per_file.len() >= MIN_FILES
                && total.records >= MIN_RECORDS
                && total.ember_passed >= MIN_EMBER_PASSED,
            "the corpus run covered too little: {} files (at least {MIN_FILES}), {} records \
             (at least {MIN_RECORDS}), {} passing on Ember (at least {MIN_EMBER_PASSED})",
            per_file.len(),
            total.records,
            total.ember_passed
        );
    }
    Ok(())
}

/// A record that hangs counts as failed instead of stopping the run.
async fn bounded<E: std::fmt::Display>(
    run: impl std::future::Future<Output = Result<sqllogictest::RecordOutput<DFColumnType>, E>>,
) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("timed out after 60s".into()),
    }
}

/// Schemas, tables and views that exist, so that what a file creates can be dropped after it.
async fn catalog_objects(
    engine: &QueryEngine,
) -> anyhow::Result<HashSet<(String, String, String)>> {
    let session = engine.new_session();
    let mut outputs = engine
        .execute_sql(
            &session,
            "select table_schema, table_name, table_type from information_schema.tables \
             union all select schema_name, '', 'SCHEMA' from information_schema.schemata",
        )
        .await?;
    let Some(Output::Rows(stream)) = outputs.pop() else {
        anyhow::bail!("information_schema returned no rows");
    };
    let batches: Vec<RecordBatch> = stream.try_collect().await?;
    let mut objects = HashSet::new();
    for batch in batches {
        let schema = batch.schema();
        for row in convert_batches(&schema, vec![batch], false)? {
            objects.insert((row[0].clone(), row[1].clone(), row[2].clone()));
        }
    }
    Ok(objects)
}

async fn drop_created_objects(
    engine: &QueryEngine,
    baseline: &HashSet<(String, String, String)>,
) -> anyhow::Result<()> {
    let session = engine.new_session();
    let now = catalog_objects(engine).await?;
    let mut created: Vec<_> = now.difference(baseline).cloned().collect();
    // Views first, schemas last.
    created.sort_by_key(|(_, _, kind)| match kind.as_str() {
        "VIEW" => 0,
        "SCHEMA" => 2,
        _ => 1,
    });
    for (schema, name, kind) in created {
        let sql = match kind.as_str() {
            "VIEW" => format!("drop view if exists \"{schema}\".\"{name}\""),
            "SCHEMA" => format!("drop schema if exists \"{schema}\" cascade"),
            _ => format!("drop table if exists \"{schema}\".\"{name}\""),
        };
        // Objects DataFusion created but Ember does not own (other catalogs) may refuse.
        let _ = engine.execute_sql(&session, &sql).await;
    }
    Ok(())
}
