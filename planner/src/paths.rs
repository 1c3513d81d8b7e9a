//! Path safety: every location a statement names and every object a plan reads or writes must
//! lie under the configured roots (local directories) or remote prefixes (`s3://bucket/dir/`),
//! and never in Ember's own directories.
//!
//! Locations are read once, the way DataFusion and `object_store` will read them
//! ([`ListingTableUrl::parse`]: trimmed, scheme lower-cased, `file:/x` and relative paths
//! resolved), and checked on that reading. Statements are checked when the coordinator plans
//! them; the object stores of coordinator and executors ([`crate::storage::ConfinedStore`])
//! check every object again when it is listed, read or written, whatever plan touches it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::ExecutionPlan;
use object_store::path::Path as ObjectPath;
use url::Url;

use crate::write::DistributedSinkExec;

/// Where locations may point: local roots minus Ember's internal directories, and remote
/// prefixes.
#[derive(Debug, Clone, Default)]
pub struct AllowedPaths {
    roots: Vec<PathBuf>,
    internal: Vec<PathBuf>,
    remote: Vec<RemotePrefix>,
}

/// One entry of `storage.allowed_remote`: a store (`s3://bucket`) and a key prefix in it.
#[derive(Debug, Clone)]
struct RemotePrefix {
    scheme: String,
    bucket: String,
    prefix: ObjectPath,
    shown: String,
}

impl AllowedPaths {
    /// Local roots only. Roots are created if missing and resolved (symbolic links followed)
    /// once, here.
    pub fn new(roots: &[PathBuf]) -> std::io::Result<Self> {
        let mut resolved = vec![];
        for root in roots {
            std::fs::create_dir_all(root)?;
            resolved.push(std::fs::canonicalize(root)?);
        }
        Ok(Self {
            roots: resolved,
            ..Self::default()
        })
    }

    /// The `storage.*` settings: `allowed_paths`, `allowed_remote`, and Ember's internal
    /// directories refused inside them, plus `internal` (an executor's own work dir).
    pub fn from_config(config: &ember_config::EmberConfig, internal: &[PathBuf]) -> Result<Self> {
        let mut internal_dirs = config.internal_paths();
        internal_dirs.extend_from_slice(internal);
        Self::new(&config.allowed_paths())
            .map_err(|e| DataFusionError::Configuration(format!("storage.allowed_paths: {e}")))?
            .with_internal(&internal_dirs)
            .with_remote(&config.storage.allowed_remote)
    }

    /// Refuses `dirs` (and everything below them) even where a root contains them.
    pub fn with_internal(mut self, dirs: &[PathBuf]) -> Self {
        for dir in dirs {
            let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            self.internal.push(resolve(&absolute));
        }
        self
    }

    /// Allows remote locations under `prefixes` (`s3://bucket/` or `s3://bucket/dir/`).
    pub fn with_remote(mut self, prefixes: &[String]) -> Result<Self> {
        for entry in prefixes {
            let invalid = |why: &str| {
                DataFusionError::Configuration(format!(
                    "storage.allowed_remote entry {entry:?} {why}"
                ))
            };
            let url =
                Url::parse(entry.trim()).map_err(|e| invalid(&format!("is not a URL: {e}")))?;
            let bucket = url.host_str().unwrap_or_default();
            if url.scheme() == "file" || bucket.is_empty() {
                return Err(invalid(
                    "must name a remote store and bucket, like s3://bucket/",
                ));
            }
            let prefix = ObjectPath::from_url_path(url.path())
                .map_err(|e| invalid(&format!("has an invalid path: {e}")))?;
            self.remote.push(RemotePrefix {
                scheme: url.scheme().to_string(),
                bucket: bucket.to_string(),
                prefix,
                shown: entry.trim().to_string(),
            });
        }
        Ok(self)
    }

    /// The roots, resolved (symbolic links followed) when the set was built.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Checks a location as a user wrote it (a path, possibly with a glob, a `file:` URL or a
    /// remote URL), read exactly as DataFusion reads table and `COPY` locations.
    pub fn check_location(&self, location: &str) -> Result<()> {
        let url = ListingTableUrl::parse(location)
            .map_err(|e| DataFusionError::Plan(format!("invalid location {location:?}: {e}")))?;
        self.check_object(url.get_url(), url.prefix(), location)
    }

    /// Checks the object (or prefix) `path` of the store at `store` (`file:///`, `s3://bucket/`).
    /// `shown` names it in the error.
    pub fn check_object(&self, store: &Url, path: &ObjectPath, shown: &str) -> Result<()> {
        match store.scheme() {
            "file" => {
                if store.host_str().is_some_and(|host| !host.is_empty()) {
                    return Err(denied(format!(
                        "location {shown:?} names a remote host; local locations are paths"
                    )));
                }
                self.check_path(&local_path(path)?, shown)
            }
            scheme => self.check_remote(scheme, store.host_str().unwrap_or_default(), path, shown),
        }
    }

    fn check_remote(
        &self,
        scheme: &str,
        bucket: &str,
        path: &ObjectPath,
        shown: &str,
    ) -> Result<()> {
        let allowed = self.remote.iter().any(|entry| {
            entry.scheme == scheme && entry.bucket == bucket && path.prefix_matches(&entry.prefix)
        });
        if allowed {
            return Ok(());
        }
        let prefixes: Vec<&str> = self.remote.iter().map(|r| r.shown.as_str()).collect();
        Err(denied(format!(
            "location {shown:?} is not under an allowed remote prefix [{}] (setting \
             storage.allowed_remote)",
            prefixes.join(", ")
        )))
    }

    fn check_path(&self, path: &Path, shown: &str) -> Result<()> {
        // Globs match below their fixed prefix.
        let fixed: PathBuf = path
            .components()
            .take_while(|c| {
                !c.as_os_str()
                    .to_string_lossy()
                    .contains(['*', '?', '[', '{'])
            })
            .collect();
        let absolute = if fixed.is_absolute() {
            fixed
        } else {
            std::env::current_dir()
                .map_err(|e| DataFusionError::External(Box::new(e)))?
                .join(fixed)
        };
        // Symbolic links and `..` are resolved before the check: `..` that stays inside a
        // root is fine, one that escapes is refused like any other outside location.
        let resolved = resolve(&absolute);
        if let Some(internal) = self.internal.iter().find(|dir| resolved.starts_with(dir)) {
            return Err(denied(format!(
                "location {shown:?} lies in {}, which holds Ember's own files",
                internal.display()
            )));
        }
        if self.roots.iter().any(|root| resolved.starts_with(root)) {
            return Ok(());
        }
        let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
        Err(denied(format!(
            "location {shown:?} is outside the allowed paths [{}] (setting storage.allowed_paths)",
            roots.join(", ")
        )))
    }

    /// Checks every file a plan fragment scans and the target it writes.
    pub fn check_plan(&self, plan: &Arc<dyn ExecutionPlan>) -> Result<()> {
        let mut result = Ok(());
        plan.apply(|node| {
            if let Some(scan) = node
                .downcast_ref::<DataSourceExec>()
                .and_then(|s| s.data_source().downcast_ref::<FileScanConfig>())
            {
                let store: &Url = scan.object_store_url.as_ref();
                for group in &scan.file_groups {
                    for file in group.iter() {
                        let location = &file.object_meta.location;
                        let shown = format!("{store}{location}");
                        if let Err(e) = self.check_object(store, location, &shown) {
                            result = Err(e);
                            return Ok(TreeNodeRecursion::Stop);
                        }
                    }
                }
            }
            if let Some(sink) = node.downcast_ref::<DistributedSinkExec>()
                && let Err(e) = self.check_location(sink.staging())
            {
                result = Err(e);
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        result
    }
}

/// The local file `object_store`'s `LocalFileSystem` maps `path` to: its parts appended to
/// `file:///` and the URL turned back into a path.
fn local_path(path: &ObjectPath) -> Result<PathBuf> {
    let mut url = Url::parse("file:///").expect("a valid URL");
    url.path_segments_mut()
        .map_err(|_| denied(format!("cannot read {path} as a local path")))?
        .pop_if_empty()
        .extend(path.parts());
    url.to_file_path()
        .map_err(|_| denied(format!("cannot read {path} as a local path")))
}

/// The path `path` names: symbolic links followed in the longest prefix that exists, `.` and
/// `..` applied to the rest.
fn resolve(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = vec![];
    let mut base = loop {
        if let Ok(resolved) = std::fs::canonicalize(&existing) {
            break resolved;
        }
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            // `..` as the last component has no file name: apply it lexically below.
            _ => match existing.parent() {
                Some(parent) if existing.ends_with("..") || existing.ends_with(".") => {
                    rest.push(
                        existing
                            .components()
                            .next_back()
                            .map_or_else(Default::default, |c| c.as_os_str().to_os_string()),
                    );
                    existing = parent.to_path_buf();
                }
                _ => break PathBuf::from("/"),
            },
        }
    };
    for component in rest.into_iter().rev() {
        match component.to_str() {
            Some("..") => {
                base.pop();
            }
            Some(".") => {}
            _ => base.push(component),
        }
    }
    base
}

fn denied(message: String) -> DataFusionError {
    crate::Error::PermissionDenied(message).into_datafusion()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_outside_the_roots_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let allowed = AllowedPaths::new(std::slice::from_ref(&root)).unwrap();
        let inside = root.join("t/part-0.parquet");
        allowed.check_location(inside.to_str().unwrap()).unwrap();
        allowed
            .check_location(&format!("file://{}/new/dir/", root.display()))
            .unwrap();
        allowed
            .check_location(&format!("{}/*.csv", root.display()))
            .unwrap();
        // The spellings DataFusion accepts for the same local file are all read as that file.
        for bad in [
            "/etc",
            "/etc/passwd",
            "file:///etc/",
            "FILE:///etc/hostname",
            "File:///etc/",
            " file:///etc/",
            "\tfile:///etc/hostname ",
            "file:/etc/x",
            "file:///etc/%2E%2E/etc/hostname",
        ] {
            let err = allowed.check_location(bad).unwrap_err().to_string();
            assert!(err.contains("outside the allowed paths"), "{bad:?}: {err}");
        }
        let err = allowed
            .check_location("file://otherhost/etc/hostname")
            .unwrap_err()
            .to_string();
        assert!(err.contains("remote host"), "{err}");
        // No remote prefix is configured: no remote location is allowed.
        for remote in ["s3://bucket/key", "S3://bucket/key", " s3://bucket/"] {
            let err = allowed.check_location(remote).unwrap_err().to_string();
            assert!(err.contains("allowed remote prefix"), "{remote:?}: {err}");
        }
        for escape in [
            format!("{}/../../etc", root.display()),
            format!("{}/new/../../x.csv", root.display()),
            format!("{}/..", root.display()),
        ] {
            let err = allowed.check_location(&escape).unwrap_err().to_string();
            assert!(err.contains("outside"), "{escape}: {err}");
        }
        // `..` that stays inside the root is just a path.
        allowed
            .check_location(&format!("{}/a/../b/c.csv", root.display()))
            .unwrap();
        // A symbolic link inside the root that points outside it is followed.
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        let err = allowed
            .check_location(root.join("link/passwd").to_str().unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
    }

    #[test]
    fn internal_directories_are_refused_inside_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let allowed = AllowedPaths::new(std::slice::from_ref(&root))
            .unwrap()
            .with_internal(&[root.join("catalog"), root.join("work")]);
        allowed
            .check_location(root.join("warehouse/t/").to_str().unwrap())
            .unwrap();
        for bad in [
            root.join("catalog/catalog.json"),
            root.join("work/executor-1/shuffle/"),
            root.join("warehouse/../work/x"),
        ] {
            let err = allowed
                .check_location(bad.to_str().unwrap())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("Ember's own files"),
                "{}: {err}",
                bad.display()
            );
        }
    }

    #[test]
    fn remote_locations_need_an_allowed_prefix() {
        let allowed = AllowedPaths::default()
            .with_remote(&["s3://lake/".to_string(), "s3://shared/exports/".to_string()])
            .unwrap();
        for good in [
            "s3://lake/t/part-0.parquet",
            "S3://lake/t/",
            " s3://lake/",
            "s3://shared/exports/2026/x.csv",
        ] {
            allowed
                .check_location(good)
                .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "s3://other/t/",
            "s3://shared/private/x.csv",
            // A prefix matches whole path segments only.
            "s3://shared/exports-old/x.csv",
            "gs://lake/t/",
        ] {
            let err = allowed.check_location(bad).unwrap_err().to_string();
            assert!(err.contains("allowed remote prefix"), "{bad}: {err}");
        }
        for invalid in ["file:///tmp/", "s3:///nobucket", "not a url"] {
            assert!(
                AllowedPaths::default()
                    .with_remote(&[invalid.to_string()])
                    .is_err(),
                "{invalid}"
            );
        }
    }
}
