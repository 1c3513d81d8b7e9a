//! Earlier versions of Delta tables, as time travel reads them, kept in a cache bounded by an
//! estimate of their bytes (moka: TinyLFU admission, LRU eviction). A version never changes,
//! so entries need no invalidation; a table dropped and created again at the same location is
//! a new table (its log's id differs), and is keyed apart. The newest version of a table is
//! kept by the table itself and moved forward by its commits (managed tables) or by reading
//! the log's new commits (external ones).

use deltalake_core::DeltaTable;
use url::Url;

/// Bytes an entry is counted for, besides its files.
const ENTRY_BYTES: u64 = 4096;
/// Bytes a file of a snapshot is counted for (its path, partition values and statistics).
const FILE_BYTES: u64 = 512;

/// Snapshots by table and version.
#[derive(Clone)]
pub struct SnapshotCache {
    cache: Option<moka::sync::Cache<(Url, String, u64), DeltaTable>>,
}

impl std::fmt::Debug for SnapshotCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotCache")
            .field("entries", &self.cache.as_ref().map(|c| c.entry_count()))
            .finish()
    }
}

impl SnapshotCache {
    /// A cache of about `bytes` bytes of snapshots; 0 keeps none.
    pub fn new(bytes: u64) -> Self {
        let cache = (bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(bytes)
                .weigher(|_: &(Url, String, u64), table: &DeltaTable| {
                    u32::try_from(weight(table)).unwrap_or(u32::MAX)
                })
                .build()
        });
        Self { cache }
    }

    /// Version `version` of `table` (any loaded version of it), if kept.
    pub fn get(&self, table: &DeltaTable, version: u64) -> Option<DeltaTable> {
        self.cache.as_ref()?.get(&key(table, version)?)
    }

    /// Keeps `table` at the version it is loaded at.
    pub fn insert(&self, table: &DeltaTable) {
        if let (Some(cache), Some(version)) = (&self.cache, table.version())
            && let Some(key) = key(table, version)
        {
            cache.insert(key, table.clone());
        }
    }

    /// The snapshots kept and their counted bytes.
    pub fn usage(&self) -> (u64, u64) {
        match &self.cache {
            None => (0, 0),
            Some(cache) => {
                cache.run_pending_tasks();
                (cache.entry_count(), cache.weighted_size())
            }
        }
    }
}

/// A table's location, its log's id (a table made again there is another), and the version.
fn key(table: &DeltaTable, version: u64) -> Option<(Url, String, u64)> {
    let id = table.snapshot().ok()?.metadata().id().to_string();
    Some((table.table_url().clone(), id, version))
}

fn weight(table: &DeltaTable) -> u64 {
    let files = table
        .snapshot()
        .map(|s| s.log_data().num_files() as u64)
        .unwrap_or_default();
    ENTRY_BYTES + files * FILE_BYTES
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::object_store::ObjectStore;
    use datafusion::object_store::local::LocalFileSystem;

    use super::*;

    async fn table_in(dir: &std::path::Path) -> DeltaTable {
        let url = crate::table_url(dir.to_str().expect("UTF-8")).expect("a URL");
        let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
        let schema = Schema::new(vec![Field::new("a", DataType::Int64, true)]);
        crate::create_table(store, &url, "t", &schema, vec![], vec![])
            .await
            .expect("a table")
    }

    #[tokio::test]
    async fn versions_are_kept_per_table_and_version() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let table = table_in(dir.path()).await;
        let cache = SnapshotCache::new(1 << 20);
        assert!(cache.get(&table, 0).is_none());
        cache.insert(&table);
        assert_eq!(cache.get(&table, 0).and_then(|t| t.version()), Some(0));
        assert!(cache.get(&table, 1).is_none());
        assert_eq!(cache.usage(), (1, ENTRY_BYTES));

        // A table made again at the same location is another table.
        std::fs::remove_dir_all(dir.path().join("_delta_log")).expect("log removed");
        let again = table_in(dir.path()).await;
        assert!(cache.get(&again, 0).is_none());

        // A cache of no bytes keeps nothing.
        let off = SnapshotCache::new(0);
        off.insert(&table);
        assert!(off.get(&table, 0).is_none());
        assert_eq!(off.usage(), (0, 0));
    }
}
