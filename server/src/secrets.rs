//! Where each role finds the cluster secret (`auth.cluster_secret`, see `docs/SECURITY.md`).
//!
//! | role | configured | not configured |
//! |---|---|---|
//! | `ember coordinator` | used | `<data_dir>/cluster.secret`, generated (mode 0600) if missing |
//! | `ember executor` | used | `<data_dir>/cluster.secret`, waited for until the coordinator writes it |
//! | `ember local` | used | a new random secret at every start, never written |
//!
//! TLS on the cluster's ports comes from `tls.cluster_*` files; `ember local` makes an ephemeral
//! CA and certificate (rcgen) at every start unless they are set.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use ember_config::{EmberConfig, read_secret_file};
use ember_protocol::credentials::random_id;
use ember_protocol::membership::{ClusterCredentials, ClusterKey};
use ember_protocol::tls::ClusterTls;
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

/// The coordinator's credentials: its cluster key and the configured cluster TLS.
pub fn coordinator_credentials(config: &EmberConfig) -> Result<ClusterCredentials> {
    Ok(ClusterCredentials {
        key: coordinator_key(config)?,
        tls: configured_tls(config)?,
    })
}

/// An executor's credentials: its cluster key and the configured cluster TLS.
pub async fn executor_credentials(config: &EmberConfig) -> Result<ClusterCredentials> {
    Ok(ClusterCredentials {
        key: executor_key(config).await?,
        tls: configured_tls(config)?,
    })
}

/// `ember local`'s credentials: the configured secret and TLS, else a random secret and an
/// ephemeral CA with one certificate for loopback, both gone when the process ends.
pub fn local_credentials(config: &EmberConfig) -> Result<ClusterCredentials> {
    let key = match configured(config)? {
        Some(secret) => ClusterKey::from_secret(&secret),
        None => ClusterKey::from_secret(&random_secret()),
    };
    let tls = match configured_tls(config)? {
        Some(tls) => tls,
        None => ephemeral_tls(&["localhost", "127.0.0.1", "::1"])?,
    };
    Ok(ClusterCredentials {
        key,
        tls: Some(tls),
    })
}

/// The cluster TLS of `tls.cluster_*`, if set.
pub fn configured_tls(config: &EmberConfig) -> Result<Option<ClusterTls>> {
    let tls = &config.tls;
    if tls.cluster_ca_file.as_os_str().is_empty() {
        return Ok(None);
    }
    Ok(Some(ClusterTls::from_files(
        &tls.cluster_ca_file,
        &tls.cluster_cert_file,
        &tls.cluster_key_file,
    )?))
}

/// A new CA and one certificate it signed for `names` (DNS names or IP addresses).
pub fn ephemeral_tls(names: &[&str]) -> Result<ClusterTls> {
    let (ca, cert, key) = ephemeral_certificates(names).map_err(|e| invalid(e.to_string()))?;
    Ok(ClusterTls::from_pem(ca, cert, key))
}

/// A new CA and a certificate it signed for `names`, as PEM: (CA certificate, certificate, key).
pub fn ephemeral_certificates(names: &[&str]) -> Result<(String, String, String), rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Ember ephemeral cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Ember cluster member");
    let cert = params.signed_by(&key, &issuer)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
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

/// Writes a new secret to `path` unless a file is there: written under a temporary name first,
/// then linked into place, so no reader ever sees a partial file and a secret already there
/// (another coordinator's on the same data dir) is kept.
fn write_new_secret(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let staged = dir.join(format!(".cluster.secret.{}", random_secret()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&staged).and_then(|mut file| {
        writeln!(file, "{}", random_secret())?;
        file.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&staged, path));
    let _ = std::fs::remove_file(&staged);
    match linked {
        Ok(()) => Ok(()),
        // Another coordinator on the same data dir wrote it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_secret_is_private_complete_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/cluster.secret");
        write_new_secret(&path).unwrap();
        let first = read_secret_file(&path).unwrap();
        assert_eq!(first.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A second writer keeps the first secret and leaves nothing behind.
        write_new_secret(&path).unwrap();
        assert_eq!(read_secret_file(&path).unwrap(), first);
        let files: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(files.len(), 1);
    }
}
