//! The event log and the history of finished queries (Spark's event log and History Server,
//! built in).
//!
//! ```text
//!  scheduler ──QueryEvent──► EventLog (a thread) ──append──► <data_dir>/events/<query id>.jsonl
//!                                   │ query ended                       │
//!                                   ▼                                   │ replay (event.rs)
//!                          History: finished queries ◄──────────────────┘ at start, on demand
//!                                   │
//!                                   └──► Monitor: the web UI and /api/v1 after a restart
//! ```
//! Every query's events are appended as JSON lines, one file per query. When a query ends, its
//! summary joins the history's index; its stages and tasks are replayed from its file when
//! someone asks. At start the index is rebuilt from the files; a log that stops before its query
//! ended (the coordinator was killed) is completed with a `query_ended` event that says so.
//! Finished queries older than `history.retention_hours`, and the oldest beyond
//! `history.max_queries`, are deleted.

mod event;

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ember_config::HistoryConfig;
use ember_planner::ids::QueryId;
use ember_planner::sqlstate::SqlState;
use tracing::{info, warn};

pub(crate) use event::{QueryEvent, Replay, StagePlan, StageProgress};

use crate::status::model::{QueryDetail, QuerySummary};

/// The directory under the data dir that holds the logs by default.
const EVENTS_DIR: &str = "events";
const EXTENSION: &str = "jsonl";
/// A log larger than this is not read (no query of ours writes one).
const MAX_LOG_BYTES: u64 = 256 << 20;
/// How much of a log's end is read at start to find its `query_ended` event.
const TAIL_BYTES: u64 = 1 << 20;
/// Events the writer takes from its queue before it writes them out.
const BATCH: usize = 4096;

/// The history of finished queries: an index of their summaries, and their logs on disk.
#[derive(Debug)]
pub(crate) struct History {
    dir: PathBuf,
    retention: Duration,
    max_queries: usize,
    index: Mutex<Index>,
    /// Whether the logs found at start have been read into the index.
    loaded: tokio::sync::watch::Sender<bool>,
}

/// Finished queries by id, and in the order they finished (oldest first).
#[derive(Debug, Default)]
struct Index {
    by_id: HashMap<String, QuerySummary>,
    by_end: BTreeSet<(DateTime<Utc>, String)>,
}

impl Index {
    fn insert(&mut self, summary: QuerySummary) {
        self.remove(&summary.query_id);
        self.by_end
            .insert((ended_at(&summary), summary.query_id.clone()));
        self.by_id.insert(summary.query_id.clone(), summary);
    }

    fn remove(&mut self, query_id: &str) {
        if let Some(old) = self.by_id.remove(query_id) {
            self.by_end.remove(&(ended_at(&old), old.query_id));
        }
    }
}

fn ended_at(summary: &QuerySummary) -> DateTime<Utc> {
    summary.finished_at.unwrap_or(summary.submitted_at)
}

impl History {
    /// The history in `history.dir` (else `<data_dir>/events`), if `history.enabled`; empty
    /// until [`EventLog::start`] has read the logs there.
    pub(crate) fn open(
        data_dir: &Path,
        config: &HistoryConfig,
    ) -> std::io::Result<Option<Arc<Self>>> {
        if !config.enabled {
            return Ok(None);
        }
        let dir = if config.dir.as_os_str().is_empty() {
            data_dir.join(EVENTS_DIR)
        } else {
            config.dir.clone()
        };
        std::fs::create_dir_all(&dir)?;
        Ok(Some(Arc::new(Self {
            dir,
            retention: Duration::from_secs(config.retention_hours.saturating_mul(3600)),
            max_queries: config.max_queries,
            index: Mutex::default(),
            loaded: tokio::sync::watch::Sender::new(false),
        })))
    }

    /// Waits until the logs found at start are in the index (at once, after the first time).
    pub(crate) async fn loaded(&self) {
        // An error means the writer is gone: what it read is all there is.
        let _ = self.loaded.subscribe().wait_for(|loaded| *loaded).await;
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, query_id: &str) -> PathBuf {
        self.dir.join(format!("{query_id}.{EXTENSION}"))
    }

    /// Every finished query in the history, in no particular order.
    pub(crate) fn summaries(&self) -> Vec<QuerySummary> {
        self.lock().by_id.values().cloned().collect()
    }

    /// One finished query's summary.
    pub(crate) fn summary(&self, query_id: &str) -> Option<QuerySummary> {
        self.lock().by_id.get(query_id).cloned()
    }

    /// One finished query with its stages and tasks, replayed from its log (blocking I/O).
    pub(crate) fn detail(&self, query_id: &QueryId) -> std::io::Result<Option<QueryDetail>> {
        if self.summary(query_id.as_str()).is_none() {
            return Ok(None);
        }
        let Some(replay) = read_log(&self.path(query_id.as_str()))? else {
            return Ok(None);
        };
        Ok(replay.finish(interrupted))
    }

    /// A query ended: it joins the index, and what is past retention leaves it.
    fn ended(&self, summary: QuerySummary) {
        self.lock().insert(summary);
        self.expire();
    }

    /// Deletes the logs of queries past `retention`, and of the oldest beyond `max_queries`.
    fn expire(&self) {
        let cutoff = chrono::Duration::from_std(self.retention)
            .ok()
            .and_then(|r| Utc::now().checked_sub_signed(r));
        let mut expired = vec![];
        {
            let mut index = self.lock();
            while let Some((ended, id)) = index.by_end.first().cloned() {
                let too_many = index.by_id.len() > self.max_queries;
                let too_old = cutoff.is_some_and(|c| ended < c);
                if !too_many && !too_old {
                    break;
                }
                index.remove(&id);
                expired.push(id);
            }
        }
        for id in expired {
            if let Err(error) = std::fs::remove_file(self.path(&id)) {
                warn!(query_id = %id, %error, "cannot delete an expired event log");
            }
        }
    }

    /// Reads every log in the directory into the index (at start).
    fn load(&self) {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) => {
                warn!(dir = %self.dir.display(), %error, "cannot read the event logs");
                return;
            }
        };
        let (mut loaded, mut completed) = (0, 0);
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(query_id) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|_| path.extension().is_some_and(|e| e == EXTENSION))
                .and_then(QueryId::parse)
            else {
                continue;
            };
            match self.load_one(&path, &query_id) {
                Ok(Some((summary, was_completed))) => {
                    self.lock().insert(summary);
                    loaded += 1;
                    completed += usize::from(was_completed);
                }
                Ok(None) => {}
                Err(error) => warn!(path = %path.display(), %error, "cannot read an event log"),
            }
        }
        self.expire();
        info!(queries = loaded, interrupted = completed, dir = %self.dir.display(), "query history loaded");
    }

    /// One log's final summary, and whether the log had to be completed because its query
    /// never ended.
    fn load_one(
        &self,
        path: &Path,
        query_id: &QueryId,
    ) -> std::io::Result<Option<(QuerySummary, bool)>> {
        if let Some(summary) = last_summary(path)?
            && summary.state.is_final()
            && summary.query_id == query_id.as_str()
        {
            return Ok(Some((summary, false)));
        }
        let Some(replay) = read_log(path)? else {
            return Ok(None);
        };
        if !replay.is_started() {
            // Nothing was logged but a torn line: there is nothing to show.
            std::fs::remove_file(path)?;
            return Ok(None);
        }
        let Some(detail) = replay.finish(interrupted) else {
            return Ok(None);
        };
        if detail.summary.query_id != query_id.as_str() {
            return Ok(None);
        }
        let ended = QueryEvent::QueryEnded {
            time: Utc::now(),
            query: detail.summary.clone(),
        };
        let mut file = OpenOptions::new().append(true).open(path)?;
        // A torn last line is ended first, so the event starts a line of its own.
        writeln!(file)?;
        writeln!(file, "{}", serde_json::to_string(&ended)?)?;
        Ok(Some((detail.summary, true)))
    }
}

/// Why a query whose log stops before it ended failed.
fn interrupted() -> (String, String) {
    (
        "the coordinator stopped before the query ended".to_string(),
        SqlState::ADMIN_SHUTDOWN.to_string(),
    )
}

/// Replays a whole log; none if it is too large to be one of ours.
fn read_log(path: &Path) -> std::io::Result<Option<Replay>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let size = file.metadata()?.len();
    if size > MAX_LOG_BYTES {
        warn!(path = %path.display(), size, "an event log is too large to read");
        return Ok(None);
    }
    let mut text = String::with_capacity(size as usize);
    file.take(MAX_LOG_BYTES).read_to_string(&mut text)?;
    let mut replay = Replay::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        replay.line(line);
    }
    if replay.skipped > 0 {
        warn!(path = %path.display(), lines = replay.skipped, "skipped event-log lines that are not events of this query");
    }
    Ok(Some(replay))
}

/// The summary of the last query-level event near the end of a log, if that is where it is.
fn last_summary(path: &Path) -> std::io::Result<Option<QuerySummary>> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    let start = size.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::with_capacity((size - start) as usize);
    file.take(TAIL_BYTES).read_to_end(&mut tail)?;
    let tail = String::from_utf8_lossy(&tail);
    let mut lines: Vec<&str> = tail.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // the first is likely part of a line
    }
    let Some(last) = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("{\"event\":\"query_"))
    else {
        return Ok(None);
    };
    Ok(serde_json::from_str::<QueryEvent>(last)
        .ok()
        .and_then(|e| e.summary().cloned()))
}

/// One event on its way to its log.
struct Record {
    query_id: String,
    line: String,
    ended: Option<QuerySummary>,
}

/// Where the scheduler sends a query's events: a thread appends them to the query's log, so the
/// scheduler never waits for a disk. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct EventLog {
    tx: mpsc::Sender<Record>,
}

impl EventLog {
    /// Starts the writer, which first reads the logs already there into `history`.
    pub(crate) fn start(history: Arc<History>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Record>();
        std::thread::Builder::new()
            .name("ember-event-log".into())
            .spawn(move || {
                history.load();
                history.loaded.send_replace(true);
                write_events(&history, &rx);
            })?;
        Ok(Self { tx })
    }

    /// Appends one event to `query_id`'s log.
    pub(crate) fn append(&self, query_id: &QueryId, event: &QueryEvent) {
        let line = match serde_json::to_string(event) {
            Ok(line) => line,
            Err(error) => {
                warn!(%query_id, %error, "cannot encode a query event");
                return;
            }
        };
        let ended = match event {
            QueryEvent::QueryEnded { query, .. } => Some(query.clone()),
            _ => None,
        };
        // The writer has stopped only if the coordinator is stopping.
        let _ = self.tx.send(Record {
            query_id: query_id.to_string(),
            line,
            ended,
        });
    }
}

/// The writer: takes what is queued, appends each query's lines to its log, then tells the
/// history which queries ended. Stops when every [`EventLog`] is gone.
fn write_events(history: &History, rx: &mpsc::Receiver<Record>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        // Each query's lines in the order they came, its log opened once.
        let mut texts: Vec<(String, String)> = vec![];
        let mut position: HashMap<String, usize> = HashMap::new();
        let mut ended = vec![];
        for record in batch {
            let i = *position.entry(record.query_id.clone()).or_insert_with(|| {
                texts.push((record.query_id, String::new()));
                texts.len() - 1
            });
            texts[i].1.push_str(&record.line);
            texts[i].1.push('\n');
            ended.extend(record.ended);
        }
        for (query_id, text) in texts {
            let written = OpenOptions::new()
                .create(true)
                .append(true)
                .open(history.path(&query_id))
                .and_then(|mut file| file.write_all(text.as_bytes()));
            if let Err(error) = written {
                warn!(%query_id, %error, "cannot append to the query's event log");
            }
        }
        for summary in ended {
            history.ended(summary);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::model::{State, Task};

    fn config(max_queries: usize) -> HistoryConfig {
        HistoryConfig {
            enabled: true,
            dir: PathBuf::new(),
            retention_hours: 1,
            max_queries,
        }
    }

    fn summary(id: &str, state: State, ended_seconds_ago: i64) -> QuerySummary {
        let now = Utc::now();
        QuerySummary {
            query_id: id.into(),
            state,
            sql: "SELECT 1".into(),
            user: "ember".into(),
            session_id: "s".into(),
            frontend: "pgwire".into(),
            num_stages: 1,
            stages_succeeded: 0,
            num_tasks: 1,
            tasks_succeeded: 0,
            tasks_running: 0,
            result_rows: 0,
            submitted_at: now - chrono::Duration::seconds(ended_seconds_ago + 1),
            finished_at: state
                .is_final()
                .then(|| now - chrono::Duration::seconds(ended_seconds_ago)),
            duration_ms: 0,
            error: None,
            sqlstate: None,
        }
    }

    fn submitted(id: &str) -> QueryEvent {
        QueryEvent::QuerySubmitted {
            time: Utc::now(),
            query: summary(id, State::Queued, 0),
            stages: vec![StagePlan {
                stage_id: 0,
                kind: "result".into(),
                input_stages: vec![],
                output_partitioning: "single".into(),
                num_tasks: 1,
                adaptive: vec![],
                plan: "EmptyExec".into(),
                operators: vec![],
            }],
        }
    }

    fn started_task() -> QueryEvent {
        QueryEvent::TaskStarted {
            time: Utc::now(),
            stage_id: 0,
            task: Task {
                partition: 0,
                attempt: 0,
                state: State::Running,
                executor_id: Some("e1".into()),
                speculative: false,
                rows: 0,
                bytes: 0,
                shuffle_read_bytes: 0,
                spilled_bytes: 0,
                peak_memory_bytes: 0,
                started_at: Some(Utc::now()),
                finished_at: None,
                duration_ms: None,
                error: None,
                sqlstate: None,
            },
        }
    }

    fn wait_for(what: &str, condition: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn ended_queries_join_the_history_and_the_oldest_leave_it() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::open(dir.path(), &config(2)).unwrap().unwrap();
        let log = EventLog::start(Arc::clone(&history)).unwrap();
        for (i, id) in ["a1", "a2", "a3"].iter().enumerate() {
            let query_id = QueryId::parse(id).unwrap();
            log.append(&query_id, &submitted(id));
            log.append(&query_id, &started_task());
            // a1 ended longest ago.
            let ended = summary(id, State::Succeeded, 30 - i as i64);
            log.append(
                &query_id,
                &QueryEvent::QueryEnded {
                    time: Utc::now(),
                    query: ended,
                },
            );
        }
        wait_for("three queries to end", || {
            history.summary("a3").is_some() && history.summaries().len() == 2
        });
        assert!(
            history.summary("a1").is_none(),
            "the oldest beyond max_queries left"
        );
        assert!(!dir.path().join("events/a1.jsonl").exists());
        let detail = history
            .detail(&QueryId::parse("a2").unwrap())
            .unwrap()
            .expect("a2 replayed");
        assert_eq!(detail.summary.state, State::Succeeded);
        // Its task never ended: it ended with its query.
        assert_eq!(detail.stages[0].tasks[0].state, State::Cancelled);
        assert_eq!(detail.stages[0].tasks[0].executor_id.as_deref(), Some("e1"));
    }

    #[test]
    fn a_log_cut_short_is_completed_at_start_and_old_ones_expire() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join(EVENTS_DIR);
        std::fs::create_dir_all(&events).unwrap();
        let line = |e: &QueryEvent| serde_json::to_string(e).unwrap() + "\n";
        // Killed while b1 ran: the log stops mid-line.
        let cut = line(&submitted("b1")) + &line(&started_task()) + "{\"event\":\"task_en";
        std::fs::write(events.join("b1.jsonl"), cut).unwrap();
        // b2 ended two hours ago: past the retention of one hour.
        let old = line(&submitted("b2"))
            + &line(&QueryEvent::QueryEnded {
                time: Utc::now(),
                query: summary("b2", State::Succeeded, 7200),
            });
        std::fs::write(events.join("b2.jsonl"), old).unwrap();
        // Not a log of ours, and a name that is no query id: left alone.
        std::fs::write(events.join("notes.txt"), "x").unwrap();
        std::fs::write(events.join("a.b.jsonl"), "x").unwrap();

        let history = History::open(dir.path(), &config(100)).unwrap().unwrap();
        let _log = EventLog::start(Arc::clone(&history)).unwrap();
        wait_for("b1 to be loaded", || history.summary("b1").is_some());
        let b1 = history.summary("b1").unwrap();
        assert_eq!(b1.state, State::Failed);
        assert_eq!(b1.sqlstate.as_deref(), Some("57P01"));
        assert!(history.summary("b2").is_none());
        assert!(!events.join("b2.jsonl").exists());
        assert!(events.join("notes.txt").exists() && events.join("a.b.jsonl").exists());
        // The completed log now ends with its query, and reads the same next time.
        let text = std::fs::read_to_string(events.join("b1.jsonl")).unwrap();
        let last = text.lines().last().unwrap();
        assert!(last.starts_with("{\"event\":\"query_ended\""), "{last}");
        assert_eq!(
            last_summary(&events.join("b1.jsonl"))
                .unwrap()
                .unwrap()
                .state,
            State::Failed
        );
        let detail = history
            .detail(&QueryId::parse("b1").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(detail.stages[0].tasks[0].state, State::Cancelled);
    }
}
