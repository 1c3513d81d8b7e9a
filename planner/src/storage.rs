//! Object stores: local files, and `s3://bucket/...` locations through `object_store`'s
//! Amazon S3 client (any S3-compatible server). Coordinator and executors build the same
//! registry from the same settings, so a table location means the same thing on every node.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use url::Url;

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

/// Local files plus one S3 client per bucket, created when a location first names the bucket.
#[derive(Debug)]
pub struct EmberObjectStores {
    s3: S3Options,
    defaults: DefaultObjectStoreRegistry,
    buckets: RwLock<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl EmberObjectStores {
    /// A registry with no S3 client yet; each bucket's client is built from `s3` when a location
    /// first names it.
    pub fn new(s3: S3Options) -> Self {
        Self {
            s3,
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
        let store: Arc<dyn ObjectStore> = Arc::new(builder.build().map_err(|e| {
            DataFusionError::Configuration(format!("cannot use S3 bucket {bucket}: {e}"))
        })?);
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
