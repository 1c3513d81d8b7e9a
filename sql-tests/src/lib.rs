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
