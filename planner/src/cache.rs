//! Metadata caches on moka: parquet footers (on every node that reads files), file listings and
//! file statistics (on the coordinator, which plans scans). Bounded by bytes; listings are
//! invalidated when a write commits into a directory, footers by the file's size and
//! modification time, which DataFusion checks on every lookup.

use datafusion::common::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use datafusion::common::TableReference;
use datafusion::error::Result;
use datafusion::execution::cache::cache_manager::{
    CacheManagerConfig, CachedFileList, CachedFileMetadata, CachedFileMetadataEntry,
};
use datafusion::execution::cache::{Cache, CacheEntryInfo, CacheKey, CacheValue, TableScopedPath};
use datafusion::object_store::path::Path;

/// Byte limits of the caches; 0 turns a cache off.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// Parquet footers and page indexes.
    pub metadata_bytes: usize,
    /// File listings of tables.
    pub listing_bytes: usize,
    /// Per-file statistics.
    pub statistics_bytes: usize,
    /// How long a listing stays valid; `None` until a write invalidates it.
    pub listing_ttl: Option<Duration>,
}

impl CacheLimits {
    /// The `[cache]` settings.
    pub fn from_config(cache: &ember_config::CacheConfig) -> Self {
        let bytes = |b: u64| usize::try_from(b).unwrap_or(usize::MAX);
        Self {
            metadata_bytes: bytes(cache.metadata_bytes),
            listing_bytes: bytes(cache.listing_bytes),
            statistics_bytes: bytes(cache.statistics_bytes),
            listing_ttl: (cache.listing_ttl_ms > 0)
                .then(|| Duration::from_millis(cache.listing_ttl_ms)),
        }
    }

    /// DataFusion's cache configuration with moka caches of these sizes.
    pub fn cache_config(&self) -> CacheManagerConfig {
        let metadata: Arc<dyn Cache<Path, CachedFileMetadataEntry>> = Arc::new(MokaCache::new(
            "ember_file_metadata",
            self.metadata_bytes,
            None,
        ));
        let mut config = CacheManagerConfig::default()
            .with_file_metadata_cache(Some(metadata))
            .with_metadata_cache_limit(self.metadata_bytes)
            .with_list_files_cache_limit(self.listing_bytes)
            .with_file_statistics_cache_limit(self.statistics_bytes);
        if self.listing_bytes > 0 {
            let listing: Arc<dyn Cache<TableScopedPath, CachedFileList>> = Arc::new(
                MokaCache::new("ember_file_listing", self.listing_bytes, self.listing_ttl),
            );
            config = config
                .with_list_files_cache(Some(listing))
                .with_list_files_cache_ttl(self.listing_ttl);
        }
        if self.statistics_bytes > 0 {
            let statistics: Arc<dyn Cache<TableScopedPath, CachedFileMetadata>> = Arc::new(
                MokaCache::new("ember_file_statistics", self.statistics_bytes, None),
            );
            config = config.with_file_statistics_cache(Some(statistics));
        }
        config
    }
}

/// A byte-bounded cache (TinyLFU admission, LRU eviction) behind DataFusion's cache trait.
pub struct MokaCache<K, V> {
    name: &'static str,
    inner: RwLock<Inner<K, V>>,
}

struct Inner<K, V> {
    cache: moka::sync::Cache<K, V>,
    limit: usize,
    ttl: Option<Duration>,
}

impl<K: CacheKey + 'static, V: CacheValue + 'static> MokaCache<K, V> {
    /// A cache of at most `limit` bytes of keys and values (0 keeps nothing) whose entries expire
    /// `ttl` after they are written, if set. `name` is how DataFusion lists the cache.
    pub fn new(name: &'static str, limit: usize, ttl: Option<Duration>) -> Self {
        Self {
            name,
            inner: RwLock::new(Inner {
                cache: build(limit, ttl),
                limit,
                ttl,
            }),
        }
    }

    fn cache(&self) -> moka::sync::Cache<K, V> {
        // moka caches are cheap handles onto shared state.
        self.inner
            .read()
            .map(|i| i.cache.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().cache.clone())
    }

    fn rebuild(&self, limit: usize, ttl: Option<Duration>) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if inner.limit != limit || inner.ttl != ttl {
            *inner = Inner {
                cache: build(limit, ttl),
                limit,
                ttl,
            };
        }
    }
}

fn build<K: CacheKey + 'static, V: CacheValue + 'static>(
    limit: usize,
    ttl: Option<Duration>,
) -> moka::sync::Cache<K, V> {
    let mut builder = moka::sync::Cache::builder()
        .max_capacity(limit as u64)
        .weigher(|k: &K, v: &V| (k.size() + v.size()).min(u32::MAX as usize) as u32);
    if let Some(ttl) = ttl {
        builder = builder.time_to_live(ttl);
    }
    builder.build()
}

impl<K, V> fmt::Debug for MokaCache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MokaCache")
            .field("name", &self.name)
            .finish()
    }
}

impl<K: CacheKey + 'static, V: CacheValue + 'static> Cache<K, V> for MokaCache<K, V> {
    fn get(&self, key: &K) -> Option<V> {
        self.cache().get(key)
    }

    fn put(&self, key: &K, value: V) -> Option<V> {
        let cache = self.cache();
        let old = cache.get(key);
        cache.insert(key.clone(), value);
        old
    }

    fn remove(&self, key: &K) -> Option<V> {
        self.cache().remove(key)
    }

    fn contains_key(&self, key: &K) -> bool {
        self.cache().contains_key(key)
    }

    fn len(&self) -> usize {
        let cache = self.cache();
        cache.run_pending_tasks();
        cache.entry_count() as usize
    }

    fn clear(&self) {
        self.cache().invalidate_all();
    }

    fn name(&self) -> String {
        self.name.to_string()
    }

    fn cache_limit(&self) -> usize {
        self.inner.read().map(|i| i.limit).unwrap_or_default()
    }

    fn update_cache_limit(&self, limit: usize) {
        let ttl = self.cache_ttl();
        self.rebuild(limit, ttl);
    }

    fn cache_ttl(&self) -> Option<Duration> {
        self.inner.read().ok().and_then(|i| i.ttl)
    }

    fn update_cache_ttl(&self, ttl: Option<Duration>) {
        let limit = self.cache_limit();
        self.rebuild(limit, ttl);
    }

    fn drop_table_entries(&self, table_ref: &TableReference) -> Result<()> {
        let cache = self.cache();
        for (key, _) in cache.iter() {
            if key.table_ref() == Some(table_ref) {
                cache.invalidate(key.as_ref());
            }
        }
        Ok(())
    }

    fn list_entries(&self) -> HashMap<K, CacheEntryInfo<V>> {
        self.cache()
            .iter()
            .map(|(k, v)| {
                let size_bytes = k.size() + v.size();
                let key = K::clone(&k);
                (
                    key,
                    CacheEntryInfo {
                        value: v,
                        size_bytes,
                        hits: 0,
                        expires: None,
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::object_store::ObjectMeta;

    fn listing(dir: &str, files: usize) -> (TableScopedPath, CachedFileList) {
        let key = TableScopedPath {
            table: None,
            path: Path::from(dir),
        };
        let files = (0..files)
            .map(|i| ObjectMeta {
                location: Path::from(format!("{dir}/part-{i:05}.parquet")),
                last_modified: chrono::Utc::now(),
                size: 10,
                e_tag: None,
                version: None,
            })
            .collect();
        (key, CachedFileList::new(files))
    }

    #[test]
    fn entries_can_be_read_listed_and_removed() {
        let cache: MokaCache<TableScopedPath, CachedFileList> =
            MokaCache::new("test", 1 << 20, None);
        let (key, list) = listing("a/b", 1);
        assert!(cache.put(&key, list).is_none());
        assert_eq!(cache.get(&key).map(|l| l.files.len()), Some(1));
        assert_eq!(cache.list_entries().len(), 1);
        assert!(cache.remove(&key).is_some());
        assert!(!cache.contains_key(&key));
    }

    #[test]
    fn the_byte_limit_evicts_entries() {
        let (_, one) = listing("t/0", 50);
        let entry_bytes = one.size();
        // Room for about four listings of 50 files.
        let limit = entry_bytes * 4 + entry_bytes / 2;
        let cache: MokaCache<TableScopedPath, CachedFileList> = MokaCache::new("test", limit, None);
        for table in 0..40 {
            let (key, list) = listing(&format!("t/{table}"), 50);
            cache.put(&key, list);
            // Recently read entries are the ones moka keeps: read each a few times.
            for _ in 0..3 {
                let _ = cache.get(&key);
            }
        }
        let kept = cache.len();
        let kept_bytes: usize = cache.list_entries().values().map(|e| e.size_bytes).sum();
        assert!(kept < 40, "nothing was evicted: {kept} entries");
        assert!(
            kept_bytes <= limit,
            "{kept_bytes} bytes kept over a limit of {limit}"
        );
        // A smaller limit applies at once, to what is cached from then on.
        cache.update_cache_limit(entry_bytes);
        for table in 0..10 {
            let (key, list) = listing(&format!("u/{table}"), 50);
            cache.put(&key, list);
        }
        assert!(
            cache.len() <= 1,
            "{} entries over a one-entry limit",
            cache.len()
        );
        assert_eq!(cache.cache_limit(), entry_bytes);
    }
}
