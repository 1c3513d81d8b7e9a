//! TLS on the cluster's ports (the coordinator's gRPC service, every executor's Flight service)
//! with rustls: every member presents a certificate signed by the cluster's CA and verifies the
//! member it dials against that CA. Who may *join* is decided by the cluster secret
//! ([`crate::membership`]); TLS keeps the traffic private and proves each server's identity.

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Makes ring the process's rustls crypto provider. Two are compiled in (ring, which Ember's TLS
/// uses, and aws-lc-rs, which the Delta Lake library's HTTP client brings), so rustls cannot pick
/// one by itself and panics when a TLS config is built without one; every role installs ring
/// before it builds any. Installing it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A member's certificate and key, and the CA all members' certificates are signed by (PEM).
#[derive(Clone)]
pub struct ClusterTls {
    ca: String,
    cert: String,
    key: String,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterTls(<certificates>)")
    }
}

impl ClusterTls {
    /// From PEM text: the CA certificate, this member's certificate chain and its private key.
    pub fn from_pem(ca: String, cert: String, key: String) -> Self {
        Self { ca, cert, key }
    }

    /// From PEM files.
    pub fn from_files(
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> std::io::Result<Self> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
            })
        };
        Ok(Self::from_pem(read(ca)?, read(cert)?, read(key)?))
    }

    /// The CA certificate (PEM), for clients that must trust the members.
    pub fn ca_pem(&self) -> &str {
        &self.ca
    }

    /// What a member's server presents.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert, &self.key))
    }

    /// What a member dialling another trusts: the cluster's CA only. The name checked is the
    /// host the URI names (a DNS name or an IP address in the certificate).
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }
}

/// The URI scheme to dial a member with.
pub fn scheme(tls: Option<&ClusterTls>) -> &'static str {
    if tls.is_some() { "https" } else { "http" }
}
