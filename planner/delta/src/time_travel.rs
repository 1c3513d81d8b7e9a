//! Time travel: a table read as of an earlier version. Queries say `t VERSION AS OF 3` or
//! `t TIMESTAMP AS OF '2026-12-07 10:00:00'` (Spark SQL's clauses), or name the version with the
//! table as Delta on Spark also accepts: `t@v3`, `t@20261207100000000` (`yyyyMMddHHmmssSSS`, UTC).

use chrono::{DateTime, NaiveDateTime, Utc};
use datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos;
use datafusion::error::{DataFusionError, Result};
use deltalake_core::DeltaTable;

use crate::snapshots::SnapshotCache;

/// The version of a table a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeTravel {
    /// `VERSION AS OF n`.
    Version(u64),
    /// `TIMESTAMP AS OF '...'`: the newest version committed at or before it.
    Timestamp(DateTime<Utc>),
}

/// How a timestamp is written in a versioned table name (Delta on Spark's form).
const NAME_TIMESTAMP: &str = "%Y%m%d%H%M%S%3f";

impl TimeTravel {
    /// `TIMESTAMP AS OF text`: a date or timestamp, UTC unless it gives its offset.
    pub fn timestamp(text: &str) -> Result<Self> {
        let nanos = string_to_timestamp_nanos(text).map_err(|e| {
            DataFusionError::Plan(format!(
                "TIMESTAMP AS OF needs a timestamp such as '2026-12-07 10:00:00', not '{text}': {e}"
            ))
        })?;
        Ok(TimeTravel::Timestamp(DateTime::from_timestamp_nanos(nanos)))
    }

    /// Splits a table name that names a version (`t@v3`, `t@20261207100000000`) into the
    /// table's name and the version; none for other names.
    pub fn split(name: &str) -> Option<(&str, TimeTravel)> {
        let (table, version) = name.rsplit_once('@')?;
        if table.is_empty() {
            return None;
        }
        let at = match version.strip_prefix('v') {
            Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                TimeTravel::Version(digits.parse().ok()?)
            }
            _ if version.len() == 17 && version.bytes().all(|b| b.is_ascii_digit()) => {
                let time = NaiveDateTime::parse_from_str(version, NAME_TIMESTAMP).ok()?;
                TimeTravel::Timestamp(time.and_utc())
            }
            _ => return None,
        };
        Some((table, at))
    }

    /// The name of `table` as of this version.
    pub fn name(&self, table: &str) -> String {
        match self {
            TimeTravel::Version(version) => format!("{table}@v{version}"),
            TimeTravel::Timestamp(time) => format!("{table}@{}", time.format(NAME_TIMESTAMP)),
        }
    }

    /// `table` loaded as of this version: from `cache` if it keeps that version, else from the
    /// log (and then kept).
    pub async fn load(&self, table: &DeltaTable, cache: &SnapshotCache) -> Result<DeltaTable> {
        if let TimeTravel::Version(version) = self
            && let Some(kept) = cache.get(table, *version)
        {
            return Ok(kept);
        }
        let loaded = self.load_from_log(table).await?;
        cache.insert(&loaded);
        Ok(loaded)
    }

    async fn load_from_log(&self, table: &DeltaTable) -> Result<DeltaTable> {
        let mut loaded = table.clone();
        let outcome = match self {
            TimeTravel::Version(version) => loaded.load_version(*version).await,
            TimeTravel::Timestamp(time) => loaded.load_with_datetime(*time).await,
        };
        let missing = |reason: String| {
            DataFusionError::Plan(format!(
                "the Delta table at {} has no {self}: {reason}",
                table.table_url()
            ))
        };
        outcome.map_err(|e| missing(e.to_string()))?;
        // A time before the first commit finds the first version: it is not that version.
        if let TimeTravel::Timestamp(time) = self
            && let Ok(snapshot) = loaded.snapshot()
            && let Some(committed) = snapshot.version_timestamp(snapshot.version())
            && committed > time.timestamp_millis()
        {
            let first = DateTime::from_timestamp_millis(committed).unwrap_or_default();
            return Err(missing(format!(
                "its earliest version was committed at {}",
                first.format("%Y-%m-%d %H:%M:%S%.3f UTC")
            )));
        }
        Ok(loaded)
    }
}

impl std::fmt::Display for TimeTravel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimeTravel::Version(version) => write!(f, "version {version}"),
            TimeTravel::Timestamp(time) => write!(
                f,
                "version at or before {}",
                time.format("%Y-%m-%d %H:%M:%S%.3f UTC")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_names_round_trip() {
        assert_eq!(
            TimeTravel::split("lineitem@v12"),
            Some(("lineitem", TimeTravel::Version(12)))
        );
        let at = TimeTravel::timestamp("2026-12-07 10:15:30.250").expect("parses");
        let name = at.name("t");
        assert_eq!(name, "t@20261207101530250");
        assert_eq!(TimeTravel::split(&name), Some(("t", at)));
        assert_eq!(
            TimeTravel::timestamp("2026-12-07T10:15:30.250+01:00").expect("parses"),
            TimeTravel::timestamp("2026-12-07 09:15:30.250").expect("parses")
        );
        for plain in [
            "t",
            "@v1",
            "t@v",
            "t@vx",
            "a@b",
            "t@2026",
            "t@99999999999999999",
        ] {
            assert_eq!(TimeTravel::split(plain), None, "{plain}");
        }
        assert!(TimeTravel::timestamp("yesterday").is_err());
    }
}
