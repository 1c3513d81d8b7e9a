//! The live progress line of a running statement, Spark-style, read from `system.queries` and
//! `system.stages`: `[stages 1/3] tasks 4 running, 10/16 done`. It covers the queries the
//! shell's session submitted since the statement was sent (the statement's own, and any it runs
//! first, such as scalar subqueries); other clients' queries do not count.

use std::io::Write;
use std::time::SystemTime;

use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use tonic::transport::Channel;

pub(crate) struct Progress {
    client: FlightSqlServiceClient<Channel>,
    tls: Option<tonic::transport::ClientTlsConfig>,
    since_micros: i64,
    shown: bool,
}

impl Progress {
    pub(crate) fn new(
        client: FlightSqlServiceClient<Channel>,
        tls: Option<tonic::transport::ClientTlsConfig>,
        since: SystemTime,
    ) -> Self {
        let since_micros = since
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        Self {
            client,
            tls,
            since_micros,
            shown: false,
        }
    }

    /// Polls the system tables once and redraws the line; a failed poll draws nothing.
    pub(crate) async fn refresh(&mut self) {
        let sql = format!(
            "select count(*), \
               coalesce(sum(case when s.status = 'succeeded' then 1 else 0 end), 0), \
               coalesce(sum(s.tasks_running), 0), \
               coalesce(sum(s.tasks_succeeded), 0), \
               coalesce(sum(s.tasks), 0) \
             from system.stages s join system.queries q on s.query_id = q.query_id \
             where q.status in ('running', 'queued') \
               and q.session_id = ember_session_id() \
               and q.submitted_at >= to_timestamp_micros({})",
            self.since_micros
        );
        let Ok(info) = self.client.execute(sql, None).await else {
            return;
        };
        let Ok(batches) = super::fetch_all(&self.client, self.tls.as_ref(), &info).await else {
            return;
        };
        let Some(counts) = first_row(&batches) else {
            return;
        };
        let [stages, stages_done, running, done, tasks] = counts;
        if stages == 0 {
            return;
        }
        let line =
            format!("[stages {stages_done}/{stages}] tasks {running} running, {done}/{tasks} done");
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
        self.shown = true;
    }

    /// Removes the line before the answer is printed.
    pub(crate) fn clear(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}

fn first_row(batches: &[RecordBatch]) -> Option<[i64; 5]> {
    let batch = batches.iter().find(|b| b.num_rows() > 0)?;
    let mut out = [0i64; 5];
    for (i, value) in out.iter_mut().enumerate() {
        let column = datafusion::arrow::compute::cast(
            batch.column(i),
            &datafusion::arrow::datatypes::DataType::Int64,
        )
        .ok()?;
        let column = column.as_primitive::<Int64Type>();
        *value = if column.is_null(0) {
            0
        } else {
            column.value(0)
        };
    }
    Some(out)
}
