//! Typed identifiers shared by the coordinator and the executors.

use std::fmt;

/// A query, unique for the life of a coordinator. Restricted to `[A-Za-z0-9-]` because it names a
/// directory on every executor.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryId(String);

impl QueryId {
    /// Parses an id received from the network, refusing anything that could escape a directory.
    pub fn parse(id: &str) -> Option<Self> {
        let valid = !id.is_empty()
            && id.len() <= 64
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        valid.then(|| Self(id.to_string()))
    }

    /// A fresh random id.
    pub fn random() -> Self {
        Self(format!("{:016x}{:016x}", rand_u64(), rand_u64()))
    }

    /// The id as text, as it appears in directory names and on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn rand_u64() -> u64 {
    // RandomState is seeded from the OS; hashing a counter gives cheap unpredictable ids without
    // another dependency.
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

/// A stage within a query's stage graph; stages are numbered in topological order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StageId(pub u32);

impl fmt::Display for StageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An executor process; a restarted executor registers with a new id (a new incarnation).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecutorId(pub String);

impl fmt::Display for ExecutorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One attempt at running one partition of one stage.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskAttempt {
    /// The query the task belongs to.
    pub query_id: QueryId,
    /// The stage whose fragment the task runs.
    pub stage_id: StageId,
    /// The partition of the stage the task computes; for a map task, also the map partition of its
    /// output.
    pub partition: u32,
    /// Counts the launches of this task from 0, speculative copies included. Each attempt writes
    /// its map output to a directory of its own, so a retry never overwrites an earlier attempt's
    /// files.
    pub attempt: u32,
}

impl fmt::Display for TaskAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}.{}#{}",
            self.query_id, self.stage_id, self.partition, self.attempt
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_ids_cannot_escape_directories() {
        assert!(QueryId::parse("abc-123").is_some());
        assert!(QueryId::parse("../etc").is_none());
        assert!(QueryId::parse("a/b").is_none());
        assert!(QueryId::parse("").is_none());
        let id = QueryId::random();
        assert_eq!(QueryId::parse(id.as_str()), Some(id));
    }
}
