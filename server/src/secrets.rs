//! Where each role finds the cluster secret (`auth.cluster_secret`, see `docs/SECURITY.md`).
//!
//! | role | configured | not configured |
//! |---|---|---|
//! | `ember coordinator` | used | `<data_dir>/cluster.secret`, generated (mode 0600) if missing |
//! | `ember executor` | used | `<data_dir>/cluster.secret`, waited for until the coordinator writes it |
//! | `ember local` | used | a new random secret at every start, never written |

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use ember_config::{EmberConfig, read_secret_file};
use ember_protocol::credentials::random_id;
use ember_protocol::membership::ClusterKey;
use tracing::{info, warn};

use crate::{Error, Result};

fn invalid(message: String) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        message,
    ))
}

fn configured(config: &EmberConfig) -> Result<Option<String>> {
    config.cluster_secret().map_err(|e| invalid(e.to_string()))
}

/// A new random secret, as text.
pub fn random_secret() -> String {
    random_id(32).iter().map(|b| format!("{b:02x}")).collect()
}

/// The coordinator's cluster key: the configured secret, else the one in
/// `<data_dir>/cluster.secret`, created there if missing.
pub fn coordinator_key(config: &EmberConfig) -> Result<ClusterKey> {
    if let Some(secret) = configured(config)? {
        return Ok(ClusterKey::from_secret(&secret));
    }
    let path = config.generated_secret_path();
    if !path.exists() {
        write_new_secret(&path)?;
        info!(path = %path.display(), "generated the cluster secret; executors on other machines need it (auth.cluster_secret_file)");
    }
    let secret = read_secret_file(&path).map_err(invalid)?;
    Ok(ClusterKey::from_secret(&secret))
}

/// An executor's cluster key: the configured secret, else the coordinator's
/// `<data_dir>/cluster.secret`, waited for (it may not have started yet).
pub async fn executor_key(config: &EmberConfig) -> Result<ClusterKey> {
    if let Some(secret) = configured(config)? {
        return Ok(ClusterKey::from_secret(&secret));
    }
    let path = config.generated_secret_path();
    let mut waited = Duration::ZERO;
    loop {
        if path.exists() {
            let secret = read_secret_file(&path).map_err(invalid)?;
            return Ok(ClusterKey::from_secret(&secret));
        }
        if waited.as_millis().is_multiple_of(10_000) {
            warn!(path = %path.display(), "no cluster secret configured (auth.cluster_secret or auth.cluster_secret_file); waiting for the coordinator to write one here");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        waited += Duration::from_millis(200);
    }
}

fn write_new_secret(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            writeln!(file, "{}", random_secret())?;
            file.sync_all()?;
            Ok(())
        }
        // Another coordinator on the same data dir wrote it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.into()),
    }
}
