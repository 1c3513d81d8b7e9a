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
    pub metadata_bytes: usize,
    pub listing_bytes: usize,
    pub statistics_bytes: usize,
    /// How long a listing stays valid; `None` until a write invalidates it.
    pub listing_ttl: Option<Duration>,
}

impl CacheLimits {
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

    #[test]
    fn entries_are_bounded_and_removable() {
        let cache: MokaCache<TableScopedPath, CachedFileList> =
            MokaCache::new("test", 1 << 20, None);
        let key = TableScopedPath {
            table: None,
            path: Path::from("a/b"),
        };
        let meta = ObjectMeta {
            location: Path::from("a/b/f.parquet"),
            last_modified: chrono::Utc::now(),
            size: 10,
            e_tag: None,
            version: None,
        };
        assert!(cache.put(&key, CachedFileList::new(vec![meta])).is_none());
        assert_eq!(cache.get(&key).map(|l| l.files.len()), Some(1));
        assert_eq!(cache.list_entries().len(), 1);
        assert!(cache.remove(&key).is_some());
        assert!(!cache.contains_key(&key));
        cache.update_cache_limit(10);
        assert_eq!(cache.cache_limit(), 10);
    }
}
