//! Path safety: local files that tables and `COPY` may touch must lie under configured roots.
//! The coordinator checks locations when statements name them; executors check again every file
//! a fragment scans or writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::ExecutionPlan;

use crate::write::DistributedSinkExec;

/// The directories local locations must lie in. Remote object stores (`s3://...`) are not
/// restricted here: their credentials decide.
#[derive(Debug, Clone)]
pub struct AllowedPaths {
    roots: Vec<PathBuf>,
}

impl AllowedPaths {
    /// Roots are created if missing and resolved (symbolic links followed) once, here.
    pub fn new(roots: &[PathBuf]) -> std::io::Result<Self> {
        let mut resolved = vec![];
        for root in roots {
            std::fs::create_dir_all(root)?;
            resolved.push(std::fs::canonicalize(root)?);
        }
        Ok(Self { roots: resolved })
    }

    /// The roots, resolved (symbolic links followed) when the set was built.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Checks a location as a user wrote it: a path, a `file://` URL or a remote URL.
    pub fn check_location(&self, location: &str) -> Result<()> {
        let path = match location.split_once("://") {
            Some(("file", rest)) => rest,
            Some(_) => return Ok(()),
            None => location,
        };
        self.check_path(Path::new(path), location)
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
        if self.roots.iter().any(|root| resolved.starts_with(root)) {
            return Ok(());
        }
        let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
        Err(denied(format!(
            "location {shown:?} is outside the allowed paths [{}] (setting storage.allowed_paths)",
            roots.join(", ")
        )))
    }

    /// Checks every local file a plan fragment scans or writes.
    pub fn check_plan(&self, plan: &Arc<dyn ExecutionPlan>) -> Result<()> {
        let mut result = Ok(());
        plan.apply(|node| {
            if let Some(scan) = node
                .downcast_ref::<DataSourceExec>()
                .and_then(|s| s.data_source().downcast_ref::<FileScanConfig>())
                && scan.object_store_url.as_str().starts_with("file://")
            {
                for group in &scan.file_groups {
                    for file in group.iter() {
                        let path = format!("/{}", file.object_meta.location);
                        if let Err(e) = self.check_path(Path::new(&path), &path) {
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
        allowed.check_location("s3://bucket/key").unwrap();
        for bad in ["/etc", "/etc/passwd", "file:///etc/"] {
            let err = allowed.check_location(bad).unwrap_err().to_string();
            assert!(err.contains("outside the allowed paths"), "{bad}: {err}");
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
}
