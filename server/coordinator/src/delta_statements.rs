//! Delta on Spark's statements about a table's versions and files: `DESCRIBE DETAIL`,
//! `DESCRIBE HISTORY`, `RESTORE`, `OPTIMIZE`, `VACUUM` and `ALTER TABLE ... SET TBLPROPERTIES`.
//! `OPTIMIZE` rewrites files on the executors like any write; the others are work on the log,
//! done here by the Delta library. Changes of a managed table go through the table, one commit
//! of this server at a time.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int32Array, Int64Array, ListBuilder, StringArray, StringBuilder,
    TimestampMillisecondArray,
};
use datafusion::common::TableReference;
use datafusion::datasource::{TableProvider, provider_as_source};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{DmlStatement, LogicalPlan, LogicalPlanBuilder, WriteOp};
use ember_delta::deltalake_core::DeltaTable;
use ember_delta::deltalake_core::kernel::Action;
use ember_delta::deltalake_core::operations::vacuum::VacuumMode;
use ember_delta::deltalake_core::protocol::DeltaOperation;
use ember_delta::deltalake_core::table::config::TablePropertiesExt;
use ember_delta::{Operation, TimeTravel};
use futures::TryStreamExt;

use crate::ddl::ObjectName;
use crate::delta_target::DeltaTarget;
use crate::engine::QueryEngine;
use crate::error::{Error, Result};
use crate::output::{Command, Output};
use crate::session::ClientSession;
use crate::statement::DeltaStatement;
use crate::writes::{Target, added_files, commit_failure, remove_written};

impl QueryEngine {
    /// Runs a Delta statement.
    pub(crate) async fn delta_statement(
        &self,
        session: &ClientSession,
        statement: &DeltaStatement,
    ) -> Result<Output> {
        let (reference, name) = self.table_named(session, statement.table())?;
        let provider = session
            .ctx
            .table_provider(reference.clone())
            .await
            .map_err(|_| Error::UndefinedTable(format!("table {name} does not exist")))?;
        let changes = !matches!(
            statement,
            DeltaStatement::DescribeDetail { .. } | DeltaStatement::DescribeHistory { .. }
        );
        self.authorize_delta(session, &reference, &provider, changes)
            .await?;
        let Some(subject) = DeltaTarget::of(&provider) else {
            return Err(Error::NotSupported(format!(
                "{statement} needs a Delta table: {name} is not one"
            )));
        };
        let schema = statement.result_schema();
        let columns = match statement {
            DeltaStatement::DescribeDetail { .. } => detail(&subject.table().await?, &name)?,
            DeltaStatement::DescribeHistory { limit, .. } => {
                history(&subject.table().await?, *limit).await?
            }
            DeltaStatement::Restore { to, .. } => restore(&subject, &name, *to).await?,
            DeltaStatement::Vacuum {
                retain_hours,
                dry_run,
                ..
            } => vacuum(&subject, *retain_hours, *dry_run).await?,
            DeltaStatement::SetProperties { properties, .. } => {
                set_properties(&subject, properties).await?;
                return Ok(Output::done(Command::AlterTable));
            }
            DeltaStatement::Optimize { predicate, .. } => {
                self.optimize(
                    session,
                    statement,
                    &name,
                    &reference,
                    subject,
                    predicate.as_deref(),
                )
                .await?
            }
        };
        let schema = schema.ok_or_else(|| Error::NotSupported("no rows to return".into()))?;
        Output::batch(schema, columns)
    }

    /// What a Delta statement needs: reading the table (`DESCRIBE`), or what `INSERT
    /// OVERWRITE` needs (the others replace the table's files or delete old ones).
    async fn authorize_delta(
        &self,
        session: &ClientSession,
        reference: &TableReference,
        provider: &Arc<dyn TableProvider>,
        changes: bool,
    ) -> Result<()> {
        let source = provider_as_source(Arc::clone(provider));
        let scan =
            LogicalPlanBuilder::scan(reference.clone(), Arc::clone(&source), None)?.build()?;
        let plan = match changes {
            false => scan,
            true => LogicalPlan::Dml(DmlStatement::new(
                reference.clone(),
                source,
                WriteOp::Insert(InsertOp::Overwrite),
                Arc::new(scan),
            )),
        };
        self.authorize(session, &plan).await
    }

    /// `OPTIMIZE`: the small files of each partition, grouped up to the table's target file
    /// size, each group read and written as one file by one task; then one commit replaces
    /// them (no data changes, so concurrent appends and reads are undisturbed).
    async fn optimize(
        &self,
        session: &ClientSession,
        statement: &DeltaStatement,
        name: &ObjectName,
        reference: &TableReference,
        target: DeltaTarget<'_>,
        predicate: Option<&datafusion::sql::sqlparser::ast::Expr>,
    ) -> Result<Vec<ArrayRef>> {
        let _writing = target.writing().await;
        let snapshot = target.latest().await?;
        let delta = snapshot.table().snapshot().map_err(library)?;
        let target_size = delta.table_config().target_file_size().get();
        let partition_columns = delta.metadata().partition_columns().to_vec();
        let state = session.ctx.state();
        let filters = match predicate {
            None => vec![],
            Some(predicate) => {
                let schema = datafusion::common::DFSchema::try_from(target.schema())?;
                let expr = session
                    .ctx
                    .parse_sql_expr(&predicate.to_string(), &schema)?;
                if let Some(column) = expr
                    .column_refs()
                    .into_iter()
                    .find(|c| !partition_columns.contains(&c.name))
                {
                    return Err(Error::InvalidParameter(format!(
                        "OPTIMIZE ... WHERE selects partitions: {} is not a partition column of {name}",
                        column.name
                    )));
                }
                vec![expr]
            }
        };
        let groups = snapshot.compaction_groups(&state, &filters, target_size)?;
        let location = snapshot.table().table_url().to_string();
        if groups.is_empty() {
            return Ok(optimize_columns(&location, 0, 0, 0));
        }
        let removed: HashSet<String> = groups.iter().flatten().cloned().collect();
        let tasks = groups.len();
        let grouped = snapshot.clone().grouped(groups);
        // One partition (one task, one file) per group.
        let state = {
            let mut state = state;
            state.config_mut().options_mut().execution.target_partitions = tasks;
            state
        };
        let plan = LogicalPlanBuilder::scan(
            reference.clone(),
            provider_as_source(Arc::new(grouped)),
            None,
        )?
        .build()?;
        let physical = state.create_physical_plan(&plan).await?;
        let sink = snapshot.write_files(&state, physical).await?;
        let sql = statement.to_string();
        let files = self.write(session, &sql, sink, Target::Directory).await?.1;
        let committed = async {
            let mut actions = snapshot.remove_actions(&removed, false)?;
            for mut action in added_files(session, &snapshot, &files).await? {
                if let Action::Add(add) = &mut action {
                    add.data_change = false;
                }
                actions.push(action);
            }
            let operation = DeltaOperation::Optimize {
                predicate: predicate.map(|p| p.to_string()),
                target_size: i64::try_from(target_size).unwrap_or(i64::MAX),
            };
            let operation = Operation::with_metrics(
                operation,
                [
                    ("numFilesAdded", files.len() as u64),
                    ("numFilesRemoved", removed.len() as u64),
                ],
            );
            target
                .commit(&snapshot, actions, operation.by(session.user()))
                .await
                .map_err(|e| commit_failure(name, e))
        }
        .await;
        if let Err(error) = committed {
            remove_written(session, &snapshot, &files).await;
            return Err(error);
        }
        Ok(optimize_columns(
            &location,
            files.len() as i64,
            removed.len() as i64,
            tasks as i64,
        ))
    }
}

fn optimize_columns(location: &str, added: i64, removed: i64, groups: i64) -> Vec<ArrayRef> {
    vec![
        Arc::new(StringArray::from(vec![location.to_string()])),
        Arc::new(Int64Array::from(vec![added])),
        Arc::new(Int64Array::from(vec![removed])),
        Arc::new(Int64Array::from(vec![groups])),
    ]
}

/// `DESCRIBE DETAIL`: one row, as Delta on Spark gives it.
fn detail(table: &DeltaTable, name: &ObjectName) -> Result<Vec<ArrayRef>> {
    let snapshot = table.snapshot().map_err(library)?;
    let metadata = snapshot.metadata();
    let protocol = snapshot.protocol();
    let (mut files, mut bytes) = (0i64, 0i64);
    for file in snapshot.log_data().iter() {
        files += 1;
        bytes += file.size().max(0);
    }
    let properties = serde_json::to_string(metadata.configuration())
        .map_err(|e| Error::NotSupported(format!("table properties: {e}")))?;
    let strings = |values: Vec<String>| -> ArrayRef {
        let mut builder = ListBuilder::new(StringBuilder::new());
        for value in values {
            builder.values().append_value(value);
        }
        builder.append(true);
        Arc::new(builder.finish())
    };
    let features: Vec<String> = protocol
        .reader_features()
        .into_iter()
        .flatten()
        .chain(protocol.writer_features().into_iter().flatten())
        .map(|f| f.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let version = snapshot.version();
    let utc = |millis: Option<i64>| -> ArrayRef {
        Arc::new(TimestampMillisecondArray::from(vec![millis]).with_timezone("UTC"))
    };
    Ok(vec![
        Arc::new(StringArray::from(vec!["delta"])),
        Arc::new(StringArray::from(vec![metadata.id().to_string()])),
        Arc::new(StringArray::from(vec![Some(
            metadata
                .name()
                .map_or_else(|| name.to_string(), str::to_string),
        )])),
        Arc::new(StringArray::from(vec![
            metadata.description().map(str::to_string),
        ])),
        Arc::new(StringArray::from(vec![
            table.table_url().as_str().trim_end_matches('/').to_string(),
        ])),
        utc(metadata.created_time()),
        utc(snapshot.version_timestamp(version)),
        strings(metadata.partition_columns().to_vec()),
        Arc::new(Int64Array::from(vec![files])),
        Arc::new(Int64Array::from(vec![bytes])),
        Arc::new(StringArray::from(vec![properties])),
        Arc::new(Int32Array::from(vec![protocol.min_reader_version()])),
        Arc::new(Int32Array::from(vec![protocol.min_writer_version()])),
        strings(features),
        Arc::new(Int64Array::from(vec![version as i64])),
    ])
}

/// `DESCRIBE HISTORY`: each version's commit, newest first.
async fn history(table: &DeltaTable, limit: Option<usize>) -> Result<Vec<ArrayRef>> {
    let newest = table.version().unwrap_or(0) as i64;
    // No more than there are versions.
    let limit = limit.map(|l| l.min(newest as usize + 1));
    let commits: Vec<_> = table.history(limit).try_collect().await.map_err(library)?;
    let mut versions = vec![];
    let mut timestamps = vec![];
    let mut users = vec![];
    let mut operations = vec![];
    let mut parameters = vec![];
    let mut read_versions = vec![];
    let mut isolation = vec![];
    let mut blind = vec![];
    let mut metrics = vec![];
    let mut engines = vec![];
    // The time of a commit is its log file's, as TIMESTAMP AS OF resolves it (Delta's rule
    // without in-commit timestamps); the commit's own record when the file is not listed.
    let snapshot = table.snapshot().ok();
    for (i, commit) in commits.iter().enumerate() {
        let version = newest - i as i64;
        versions.push(version);
        let file_time = u64::try_from(version)
            .ok()
            .and_then(|v| snapshot.and_then(|s| s.version_timestamp(v)));
        timestamps.push(file_time.or(commit.timestamp));
        users.push(commit.user_name.clone());
        operations.push(commit.operation.clone());
        parameters.push(commit.operation_parameters.as_ref().map(json));
        read_versions.push(commit.read_version.map(|v| v as i64));
        isolation.push(
            commit
                .isolation_level
                .as_ref()
                .map(|level| json(level).trim_matches('"').to_string()),
        );
        blind.push(commit.is_blind_append);
        metrics.push(commit.info.get("operationMetrics").map(json));
        engines.push(commit.engine_info.clone());
    }
    Ok(vec![
        Arc::new(Int64Array::from(versions)),
        Arc::new(TimestampMillisecondArray::from(timestamps).with_timezone("UTC")),
        Arc::new(StringArray::from(users)),
        Arc::new(StringArray::from(operations)),
        Arc::new(StringArray::from(parameters)),
        Arc::new(Int64Array::from(read_versions)),
        Arc::new(StringArray::from(isolation)),
        Arc::new(BooleanArray::from(blind)),
        Arc::new(StringArray::from(metrics)),
        Arc::new(StringArray::from(engines)),
    ])
}

/// JSON text of a value a commit records.
fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// `RESTORE`: a new version whose files are those of `to`.
async fn restore(
    subject: &DeltaTarget<'_>,
    name: &ObjectName,
    to: TimeTravel,
) -> Result<Vec<ArrayRef>> {
    let run = |table: DeltaTable| async move {
        let builder = table.restore();
        let builder = match to {
            TimeTravel::Version(version) => builder.with_version_to_restore(version),
            TimeTravel::Timestamp(time) => builder.with_datetime_to_restore(time),
        };
        let (restored, metrics) = builder.await.map_err(|e| {
            Error::InvalidParameter(format!("cannot restore {name} to its {to}: {e}"))
        })?;
        Ok::<_, Error>((restored, metrics))
    };
    let (files, bytes, metrics) = match subject {
        DeltaTarget::Managed(managed) => {
            managed
                .change(false, |table| async move {
                    let (restored, metrics) = run(table).await?;
                    let (files, bytes) = totals(&restored)?;
                    Ok((restored, (files, bytes, metrics)))
                })
                .await?
        }
        DeltaTarget::External(_) => {
            let (restored, metrics) = run(subject.table().await?).await?;
            let (files, bytes) = totals(&restored)?;
            (files, bytes, metrics)
        }
    };
    Ok(vec![
        Arc::new(Int64Array::from(vec![bytes])),
        Arc::new(Int64Array::from(vec![files])),
        Arc::new(Int64Array::from(vec![metrics.num_removed_file as i64])),
        Arc::new(Int64Array::from(vec![metrics.num_restored_file as i64])),
    ])
}

/// The number of files of a version, and their bytes.
fn totals(table: &DeltaTable) -> Result<(i64, i64)> {
    let snapshot = table.snapshot().map_err(library)?;
    Ok(snapshot
        .log_data()
        .iter()
        .fold((0, 0), |(n, b), f| (n + 1, b + f.size().max(0))))
}

/// `VACUUM`: deletes the files in the table's directory that no version within the retention
/// period reads (also files of writes that never committed), once no statement is writing
/// into the table. A retention shorter than the table's `delta.deletedFileRetentionDuration`
/// is refused, as on Spark: readers of older versions would lose their files.
async fn vacuum(
    subject: &DeltaTarget<'_>,
    retain_hours: Option<f64>,
    dry_run: bool,
) -> Result<Vec<ArrayRef>> {
    let run = |table: DeltaTable| async move {
        // Files are named relative to the table (the library gives some as full paths).
        let root = table.table_url().path().to_string();
        let mut builder = table
            .vacuum()
            .with_mode(VacuumMode::Full)
            .with_dry_run(dry_run);
        if let Some(hours) = retain_hours {
            let millis = (hours * 3_600_000.0).min(i64::MAX as f64) as i64;
            builder = builder.with_retention_period(chrono::Duration::milliseconds(millis));
        }
        let (vacuumed, metrics) = builder.await.map_err(|e| {
            let hint = match e.to_string().contains("retention") {
                true => {
                    "; readers of older versions would lose their files. To vacuum with less, \
                     lower the table's retention first: ALTER TABLE ... SET TBLPROPERTIES \
                     ('delta.deletedFileRetentionDuration' = 'interval 1 hours')"
                }
                false => "",
            };
            Error::InvalidParameter(format!("VACUUM: {e}{hint}"))
        })?;
        let deleted: Vec<String> = metrics
            .files_deleted
            .into_iter()
            .map(|f| f.strip_prefix(&root).map(str::to_string).unwrap_or(f))
            .collect();
        Ok::<_, Error>((vacuumed, deleted))
    };
    let deleted = match subject {
        DeltaTarget::Managed(managed) => {
            managed
                .change(true, |table| async move { run(table).await })
                .await?
        }
        DeltaTarget::External(_) => run(subject.table().await?).await?.1,
    };
    // The library may name a file twice (as a removed file and as an unreferenced one).
    let mut seen = HashSet::new();
    let deleted: Vec<String> = deleted
        .into_iter()
        .filter(|f| seen.insert(f.clone()))
        .collect();
    Ok(vec![Arc::new(StringArray::from(deleted))])
}

/// `ALTER TABLE ... SET TBLPROPERTIES`: the table's Delta properties, checked by the library.
async fn set_properties(subject: &DeltaTarget<'_>, properties: &[(String, String)]) -> Result<()> {
    let properties: std::collections::HashMap<String, String> =
        properties.iter().cloned().collect();
    let run = |table: DeltaTable| {
        let properties = properties.clone();
        async move {
            let changed = table
                .set_tbl_properties()
                .with_properties(properties)
                .await
                .map_err(|e| Error::InvalidParameter(format!("SET TBLPROPERTIES: {e}")))?;
            Ok((changed, ()))
        }
    };
    match subject {
        DeltaTarget::Managed(managed) => managed.change(false, run).await,
        DeltaTarget::External(_) => run(subject.table().await?).await.map(|_| ()),
    }
}

fn library(error: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::DataFusion(datafusion::error::DataFusionError::External(Box::new(
        error,
    )))
}
