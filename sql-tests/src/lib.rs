//! sqllogictest for Ember: a database adapter that runs `.slt` records against any Ember server
//! over the Postgres wire protocol, and helpers to find the suite's files.
//!
//! ```text
//!  *.slt ──sqllogictest Runner──► PgDb ──tokio-postgres (simple query)──► Ember (pgwire)
//! ```

use std::path::{Path, PathBuf};

use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Why a record could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from the server or the connection; server errors read `SQLSTATE: message`, which
    /// is what `statement error <regex>` records match against.
    #[error("{0}")]
    Postgres(String),
}

impl From<tokio_postgres::Error> for Error {
    fn from(error: tokio_postgres::Error) -> Self {
        // The server's message (and SQLSTATE) is what `statement error <regex>` matches against.
        match error.as_db_error() {
            Some(db) => Error::Postgres(format!("{}: {}", db.code().code(), db.message())),
            None => Error::Postgres(error.to_string()),
        }
    }
}

/// One connection to an Ember server.
pub struct PgDb {
    client: Client,
}

impl PgDb {
    /// Connects to the server at `host`:`port` as user `ember`, database `ember`, without TLS.
    /// Must run inside a Tokio runtime, which drives the connection in a spawned task.
    pub async fn connect(host: &str, port: u16) -> Result<Self, Error> {
        let (client, connection) = tokio_postgres::connect(
            &format!("host={host} port={port} user=ember dbname=ember"),
            NoTls,
        )
        .await?;
        tokio::spawn(connection);
        Ok(Self { client })
    }
}

#[async_trait::async_trait]
impl AsyncDB for PgDb {
    type Error = Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        let messages = self.client.simple_query(sql).await?;
        let mut rows = vec![];
        let mut num_columns = None;
        let mut affected = None;
        for message in messages {
            match message {
                SimpleQueryMessage::RowDescription(columns) => num_columns = Some(columns.len()),
                SimpleQueryMessage::Row(row) => {
                    num_columns = Some(row.len());
                    rows.push(
                        (0..row.len())
                            .map(|i| match row.get(i) {
                                None => "NULL".to_string(),
                                Some("") => "(empty)".to_string(),
                                Some(value) => value.to_string(),
                            })
                            .collect(),
                    );
                }
                SimpleQueryMessage::CommandComplete(count) => affected = Some(count),
                _ => {}
            }
        }
        match num_columns {
            Some(n) => Ok(DBOutput::Rows {
                types: vec![DefaultColumnType::Any; n],
                rows,
            }),
            None => Ok(DBOutput::StatementComplete(affected.unwrap_or(0))),
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "ember"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// Where and how to run a suite against a running server.
#[derive(Debug, Clone)]
pub struct Target {
    /// Host name or address of the server.
    pub host: String,
    /// The server's Postgres wire protocol port.
    pub port: u16,
    /// The server's data dir (`$EMBER_DATA` in `.slt` files): tests write under it because
    /// locations outside the allowed paths are refused.
    pub data_dir: PathBuf,
}

/// The outcome of one file.
#[derive(Debug)]
pub struct FileOutcome {
    /// The `.slt` file that was run.
    pub file: PathBuf,
    /// Why the file failed (a mismatched record, an error or a timeout); `None` if it passed.
    pub error: Option<String>,
}

/// Runs every file, each on a fresh connection and with its own `$RUN` id (so that files that
/// write under `$EMBER_DATA` can run again against the same server), bounding each in time.
pub async fn run_files(
    target: &Target,
    files: &[PathBuf],
    timeout: std::time::Duration,
) -> Vec<FileOutcome> {
    let mut outcomes = vec![];
    for file in files {
        let host = target.host.clone();
        let port = target.port;
        let mut runner = sqllogictest::Runner::new(move || {
            let host = host.clone();
            async move { PgDb::connect(&host, port).await }
        });
        runner.set_var(
            "EMBER_DATA".to_string(),
            target.data_dir.display().to_string(),
        );
        let run = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        runner.set_var("RUN".to_string(), run);
        let error = match tokio::time::timeout(timeout, runner.run_file_async(file)).await {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some(format!("timed out after {timeout:?}")),
        };
        outcomes.push(FileOutcome {
            file: file.clone(),
            error,
        });
    }
    outcomes
}

/// Every `.slt` file under `dir`, sorted.
pub fn slt_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![];
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "slt") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
