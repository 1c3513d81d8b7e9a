//! Object stores: local files, and `s3://bucket/...` locations through `object_store`'s
//! Amazon S3 client (any S3-compatible server). Coordinator and executors build the same
//! registry from the same settings, so a table location means the same thing on every node.
//! Every store the registry hands out is a [`ConfinedStore`]: whatever plan or statement uses
//! it, objects outside the allowed paths and prefixes are refused.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use futures::stream::{self, BoxStream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use url::Url;

use crate::paths::AllowedPaths;

/// S3 settings; empty fields fall back to the standard `AWS_*` environment variables.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// The endpoint URL (a local S3-compatible server, say); empty: AWS.
    pub endpoint: String,
    /// The region; empty: `AWS_REGION`.
    pub region: String,
    /// The access key id; empty: `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// The secret access key; empty: `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// Plain HTTP to the endpoint (local test servers).
    pub allow_http: bool,
}

impl S3Options {
    /// The `storage.s3_*` settings.
    pub fn from_config(storage: &ember_config::StorageConfig) -> Self {
        Self {
            endpoint: storage.s3_endpoint.clone(),
            region: storage.s3_region.clone(),
            access_key_id: storage.s3_access_key_id.clone(),
            secret_access_key: storage.s3_secret_access_key.clone(),
            allow_http: storage.s3_allow_http,
        }
    }
}

/// Local files plus one S3 client per bucket, created when a location first names the bucket;
/// each confined to `allowed`.
#[derive(Debug)]
pub struct EmberObjectStores {
    s3: S3Options,
    allowed: Arc<AllowedPaths>,
    local: Arc<dyn ObjectStore>,
    defaults: DefaultObjectStoreRegistry,
    buckets: RwLock<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl EmberObjectStores {
    /// A registry with no S3 client yet; each bucket's client is built from `s3` when a location
    /// first names it. Every store lets through only what `allowed` allows.
    pub fn new(s3: S3Options, allowed: Arc<AllowedPaths>) -> Self {
        let local = Arc::new(ConfinedStore::new(
            Arc::new(LocalFileSystem::new()),
            Url::parse("file:///").expect("a valid URL"),
            Arc::clone(&allowed),
        ));
        Self {
            s3,
            allowed,
            local,
            defaults: DefaultObjectStoreRegistry::new(),
            buckets: RwLock::new(HashMap::new()),
        }
    }

    fn s3_bucket(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        if let Some(store) = self
            .buckets
            .read()
            .ok()
            .and_then(|b| b.get(bucket).cloned())
        {
            return Ok(store);
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let s3 = &self.s3;
        if !s3.endpoint.is_empty() {
            builder = builder.with_endpoint(&s3.endpoint);
        }
        if !s3.region.is_empty() {
            builder = builder.with_region(&s3.region);
        }
        if !s3.access_key_id.is_empty() {
            builder = builder.with_access_key_id(&s3.access_key_id);
        }
        if !s3.secret_access_key.is_empty() {
            builder = builder.with_secret_access_key(&s3.secret_access_key);
        }
        if s3.allow_http {
            builder = builder.with_allow_http(true);
        }
        let client = builder.build().map_err(|e| {
            DataFusionError::Configuration(format!("cannot use S3 bucket {bucket}: {e}"))
        })?;
        let base = Url::parse(&format!("s3://{bucket}/")).map_err(|e| {
            DataFusionError::Configuration(format!("cannot use S3 bucket {bucket}: {e}"))
        })?;
        let store: Arc<dyn ObjectStore> = Arc::new(ConfinedStore::new(
            Arc::new(client),
            base,
            Arc::clone(&self.allowed),
        ));
        if let Ok(mut buckets) = self.buckets.write() {
            buckets.insert(bucket.to_string(), Arc::clone(&store));
        }
        Ok(store)
    }
}

impl ObjectStoreRegistry for EmberObjectStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.defaults.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        self.defaults.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        if url.scheme() == "file" && url.host_str().is_none_or(str::is_empty) {
            return Ok(Arc::clone(&self.local));
        }
        if let Ok(store) = self.defaults.get_store(url) {
            return Ok(store);
        }
        match (url.scheme(), url.host_str()) {
            ("s3" | "s3a", Some(bucket)) if !bucket.is_empty() => self.s3_bucket(bucket),
            _ => Err(DataFusionError::Configuration(format!(
                "no object store for {url}: Ember reads local paths and s3:// locations"
            ))),
        }
    }
}

/// An object store that lets through only objects under the allowed paths or prefixes: the
/// check below every plan, listing, schema inference and write, wherever it runs.
#[derive(Debug)]
pub struct ConfinedStore {
    inner: Arc<dyn ObjectStore>,
    /// The store's URL (`file:///`, `s3://bucket/`): objects are paths relative to it.
    base: Url,
    allowed: Arc<AllowedPaths>,
    /// Objects already found allowed: a scan reads each file in many ranges, and the check
    /// resolves symbolic links on disk, so it runs once per object rather than once per read.
    allowed_objects: moka::sync::Cache<String, ()>,
}

/// Objects a store remembers as allowed.
const ALLOWED_OBJECTS: u64 = 65_536;

impl ConfinedStore {
    /// `inner`, the store at `base`, confined to `allowed`.
    pub fn new(inner: Arc<dyn ObjectStore>, base: Url, allowed: Arc<AllowedPaths>) -> Self {
        Self {
            inner,
            base,
            allowed,
            allowed_objects: moka::sync::Cache::new(ALLOWED_OBJECTS),
        }
    }

    fn check(&self, location: &ObjectPath) -> object_store::Result<()> {
        if self.allowed_objects.contains_key(location.as_ref()) {
            return Ok(());
        }
        check(&self.allowed, &self.base, location)?;
        self.allowed_objects
            .insert(location.as_ref().to_string(), ());
        Ok(())
    }
}

fn check(allowed: &AllowedPaths, base: &Url, location: &ObjectPath) -> object_store::Result<()> {
    allowed
        .check_object(base, location, &format!("{base}{location}"))
        .map_err(|e| object_store::Error::PermissionDenied {
            path: location.to_string(),
            source: Box::new(e),
        })
}

impl fmt::Display for ConfinedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Confined({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for ConfinedStore {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.check(location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &ObjectPath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.check(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        let allowed = Arc::clone(&self.allowed);
        let base = self.base.clone();
        let checked = locations
            .map(move |location| {
                let location = location?;
                check(&allowed, &base, &location)?;
                Ok(location)
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match self.check(prefix.unwrap_or(&ObjectPath::default())) {
            Ok(()) => self.inner.list(prefix),
            Err(e) => stream::once(async move { Err(e) }).boxed(),
        }
    }

    fn list_with_offset(
        &self,
        prefix: Option<&ObjectPath>,
        offset: &ObjectPath,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match self.check(prefix.unwrap_or(&ObjectPath::default())) {
            Ok(()) => self.inner.list_with_offset(prefix, offset),
            Err(e) => stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.check(prefix.unwrap_or(&ObjectPath::default()))?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn the_local_store_refuses_objects_outside_the_roots() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::write(root.join("inside.csv"), "a\n1\n").unwrap();
        let allowed = AllowedPaths::new(std::slice::from_ref(&root))
            .unwrap()
            .with_internal(&[root.join("work")]);
        let registry = EmberObjectStores::new(S3Options::default(), Arc::new(allowed));
        let store = registry
            .get_store(&Url::parse("file:///").unwrap())
            .unwrap();

        let inside = ObjectPath::from_filesystem_path(root.join("inside.csv")).unwrap();
        let bytes = store.get(&inside).await.unwrap().bytes().await.unwrap();
        assert_eq!(&bytes[..], b"a\n1\n");

        let denied =
            |e: object_store::Error| matches!(e, object_store::Error::PermissionDenied { .. });
        let outside = ObjectPath::from("etc/hostname");
        assert!(denied(store.get(&outside).await.unwrap_err()));
        assert!(denied(store.head(&outside).await.unwrap_err()));
        let listed: Vec<_> = store.list(Some(&ObjectPath::from("etc"))).collect().await;
        assert!(
            matches!(listed.as_slice(), [Err(e)] if matches!(e, object_store::Error::PermissionDenied { .. }))
        );
        assert!(denied(store.list_with_delimiter(None).await.unwrap_err()));
        let planted = ObjectPath::from(root.join("work/planted").to_str().unwrap());
        assert!(denied(store.put(&planted, "x".into()).await.unwrap_err()));
        assert!(!root.join("work/planted").exists());
        assert!(denied(store.copy(&inside, &outside).await.unwrap_err()));
        assert!(denied(
            store
                .rename(&inside, &ObjectPath::from("tmp/stolen.csv"))
                .await
                .unwrap_err()
        ));
        assert!(root.join("inside.csv").exists());
    }

    #[test]
    fn remote_stores_are_refused_without_an_allowed_prefix() {
        let registry = EmberObjectStores::new(S3Options::default(), Arc::default());
        // The store is handed out (a location may name it); every object in it is refused.
        let url = Url::parse("s3://bucket/").unwrap();
        let store = registry.get_store(&url).unwrap();
        let err = futures::executor::block_on(store.head(&ObjectPath::from("key"))).unwrap_err();
        assert!(
            matches!(err, object_store::Error::PermissionDenied { .. }),
            "{err}"
        );
    }
}
