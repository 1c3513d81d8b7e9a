//! `ember sql`: an interactive SQL shell over Flight SQL (line editing and history,
//! statements over several lines), or a runner of `-e SQL` / `-f FILE`. While a query runs it
//! shows a Spark-style progress line from the `system.*` tables; answers are fetched from every
//! endpoint at once and printed as a table, CSV or JSON, with timings.

mod progress;
mod render;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use arrow_flight::FlightInfo;
use arrow_flight::sql::client::FlightSqlServiceClient;
use clap::{Args, ValueEnum};
use datafusion::arrow::array::RecordBatch;
use futures::TryStreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// A channel to `uri`, over TLS with `tls` for `https://`.
async fn connect(uri: &str, tls: Option<&ClientTlsConfig>) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(uri.to_string())?;
    if uri.starts_with("https://") {
        let tls = tls
            .cloned()
            .context("the server sent a TLS location; pass --tls-ca")?;
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect().await?)
}

pub use render::Format;

/// Flags of `ember sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The coordinator's host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Its Flight SQL port.
    #[arg(long, default_value_t = 50051)]
    pub port: u16,
    /// The user to authenticate as.
    #[arg(short = 'u', long, default_value = "ember")]
    pub user: String,
    /// The password (with `auth.method = "trust"` any will do).
    #[arg(
        long,
        env = "EMBER_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    pub password: String,
    /// Run these statements and exit.
    #[arg(short = 'e', long = "execute", conflicts_with = "file")]
    pub execute: Option<String>,
    /// Run the statements of this file and exit.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// How answers are printed.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Show the progress line even when standard error is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Connect over TLS, trusting the CA certificate (PEM) in this file.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
}

/// A connected shell.
struct Shell {
    client: FlightSqlServiceClient<Channel>,
    tls: Option<ClientTlsConfig>,
    format: Format,
    progress: bool,
}

/// Runs the shell: the statements of `-e` or `-f`, or an interactive session.
pub async fn run(args: SqlArgs) -> anyhow::Result<()> {
    let tls = match &args.tls_ca {
        Some(path) => {
            let ca = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
        }
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let uri = format!("{scheme}://{}:{}", args.host, args.port);
    let channel = connect(&uri, tls.as_ref())
        .await
        .with_context(|| format!("cannot connect to Flight SQL at {uri}"))?;
    let mut client = FlightSqlServiceClient::new(channel);
    client
        .handshake(&args.user, &args.password)
        .await
        .context("authentication failed")?;
    let mut shell = Shell {
        client,
        tls,
        format: args.format,
        progress: args.progress || std::io::stderr().is_terminal(),
    };
    let script = match (&args.execute, &args.file) {
        (Some(sql), _) => Some(sql.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        (None, None) => None,
    };
    match script {
        Some(script) => {
            let (statements, rest) = split_statements(&script);
            for statement in statements.into_iter().chain(
                Some(rest)
                    .filter(|r| !r.trim().is_empty())
                    .map(|r| r.trim().to_string()),
            ) {
                shell.run_statement(&statement).await?;
            }
            Ok(())
        }
        None => shell.interactive().await,
    }
}

impl Shell {
    async fn interactive(&mut self) -> anyhow::Result<()> {
        use rustyline::error::ReadlineError;
        let mut editor = rustyline::DefaultEditor::new()?;
        let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ember_history"));
        if let Some(history) = &history {
            let _ = editor.load_history(history);
        }
        eprintln!("ember sql: statements end with `;`, \\q quits");
        let mut buffer = String::new();
        loop {
            let prompt = if buffer.is_empty() {
                "ember> "
            } else {
                "   ...> "
            };
            match editor.readline(prompt) {
                Ok(line) => {
                    if buffer.is_empty() && matches!(line.trim(), "\\q" | "quit" | "exit") {
                        break;
                    }
                    buffer.push_str(&line);
                    buffer.push('\n');
                    let (statements, rest) = split_statements(&buffer);
                    if statements.is_empty() {
                        continue;
                    }
                    let _ = editor.add_history_entry(buffer.trim());
                    for statement in statements {
                        if let Err(error) = self.run_statement(&statement).await {
                            eprintln!("ERROR: {error:#}");
                        }
                    }
                    buffer = rest;
                }
                // Ctrl-C drops the statement being typed.
                Err(ReadlineError::Interrupted) => buffer.clear(),
                Err(ReadlineError::Eof) => break,
                Err(error) => return Err(error.into()),
            }
        }
        if let Some(history) = &history {
            let _ = editor.save_history(history);
        }
        Ok(())
    }

    /// Runs one statement: its FlightInfo while the progress line runs, then every endpoint.
    async fn run_statement(&mut self, sql: &str) -> anyhow::Result<()> {
        let started = Instant::now();
        let since = std::time::SystemTime::now();
        let mut client = self.client.clone();
        let sql_owned = sql.to_string();
        let mut executing = tokio::spawn(async move { client.execute(sql_owned, None).await });
        let info = if self.progress {
            let mut monitor = progress::Progress::new(self.client.clone(), self.tls.clone(), since);
            let info = loop {
                tokio::select! {
                    info = &mut executing => break info,
                    () = tokio::time::sleep(std::time::Duration::from_millis(250)) => {
                        monitor.refresh().await;
                    }
                }
            };
            monitor.clear();
            info
        } else {
            (&mut executing).await
        };
        let info = info?.map_err(|e| anyhow::anyhow!(status_message(&e)))?;
        let planned = started.elapsed();
        if info.endpoint.is_empty() {
            let rows = info.total_records.max(0);
            eprintln!("OK, {rows} rows affected ({:.3} s)", planned.as_secs_f64());
            return Ok(());
        }
        let schema = info.clone().try_decode_schema()?;
        let batches = fetch_all(&self.client, self.tls.as_ref(), &info).await?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        render::print(self.format, std::sync::Arc::new(schema), &batches)?;
        eprintln!(
            "{rows} row{} in {:.3} s (first answer {:.3} s, {} endpoint{})",
            if rows == 1 { "" } else { "s" },
            started.elapsed().as_secs_f64(),
            planned.as_secs_f64(),
            info.endpoint.len(),
            if info.endpoint.len() == 1 { "" } else { "s" },
        );
        Ok(())
    }
}

/// The message of a failed call, without the transport's wrapping.
fn status_message(error: &arrow_flight::error::FlightError) -> String {
    match error {
        arrow_flight::error::FlightError::Tonic(status) => status.message().to_string(),
        other => other.to_string(),
    }
}

/// Reads every endpoint of `info` at once, each from its location (or the coordinator); the
/// batches come back in endpoint order.
pub(crate) async fn fetch_all(
    client: &FlightSqlServiceClient<Channel>,
    tls: Option<&ClientTlsConfig>,
    info: &FlightInfo,
) -> anyhow::Result<Vec<RecordBatch>> {
    let mut tasks = vec![];
    for endpoint in info.endpoint.clone() {
        let mut reader = match endpoint.location.first() {
            Some(location) if !location.uri.starts_with("arrow-flight-reuse-connection") => {
                let uri = location.uri.replacen("grpc+tcp://", "http://", 1).replacen(
                    "grpc+tls://",
                    "https://",
                    1,
                );
                let channel = connect(&uri, tls)
                    .await
                    .with_context(|| format!("cannot reach {uri}"))?;
                let mut reader = FlightSqlServiceClient::new(channel);
                if let Some(token) = client.token() {
                    reader.set_token(token.clone());
                }
                reader
            }
            _ => client.clone(),
        };
        let ticket = endpoint
            .ticket
            .clone()
            .context("an endpoint without a ticket")?;
        tasks.push(tokio::spawn(async move {
            let stream = reader
                .do_get(ticket)
                .await
                .map_err(|e| anyhow::anyhow!(status_message(&e)))?;
            stream
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| anyhow::anyhow!(status_message(&e)))
        }));
    }
    let mut batches = vec![];
    for task in tasks {
        batches.extend(task.await??);
    }
    Ok(batches)
}

/// Splits text into complete statements (ending with `;` outside quotes and comments) and the
/// unfinished rest.
pub(crate) fn split_statements(text: &str) -> (Vec<String>, String) {
    let mut statements = vec![];
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                current.push(c);
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    current.push(c);
                }
                '-' if chars.peek() == Some(&'-') => {
                    // A comment runs to the end of the line.
                    for c in chars.by_ref() {
                        if c == '\n' {
                            current.push('\n');
                            break;
                        }
                    }
                }
                ';' => {
                    let statement = current.trim().to_string();
                    if !statement.is_empty() {
                        statements.push(statement);
                    }
                    current.clear();
                }
                _ => current.push(c),
            },
        }
    }
    let rest = if current.trim().is_empty() {
        String::new()
    } else {
        current
    };
    (statements, rest)
}

impl ValueEnum for Format {
    fn value_variants<'a>() -> &'a [Self] {
        &[Format::Table, Format::Csv, Format::Json]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            Format::Table => "table",
            Format::Csv => "csv",
            Format::Json => "json",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes_and_comments() {
        let (statements, rest) =
            split_statements("select ';' as a; -- a comment; still\nselect 2;\nselect");
        assert_eq!(statements, vec!["select ';' as a", "select 2"]);
        assert_eq!(rest.trim(), "select");
        let (statements, rest) = split_statements("select \"x;y\"\nfrom t;");
        assert_eq!(statements, vec!["select \"x;y\"\nfrom t"]);
        assert!(rest.is_empty());
    }
}
