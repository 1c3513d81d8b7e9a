//! The users clients log in as (`auth.users`) and how they authenticate (`auth.method`), shared
//! by every frontend. Users are kept as verifiers, never as passwords, in PostgreSQL's own
//! formats (so they can be copied from `pg_authid`):
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64) and `md5<hex>` where the
//! hex is md5(password || user). The protocol exchanges (SCRAM, md5 challenges) belong to the
//! frontends; this module checks what they are handed.

use std::collections::HashMap;
use std::fmt::Debug;
use std::num::NonZeroU32;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::Rng;
use ring::{digest, hmac, pbkdf2};

use crate::error::{Error, Result};

/// How clients authenticate (`auth.method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Any user name is accepted, with any password (local mode).
    Trust,
    /// A cleartext password, checked against the verifier.
    Password,
    /// PostgreSQL's md5 challenge (needs an md5 verifier).
    Md5,
    /// SCRAM-SHA-256 (needs a SCRAM verifier).
    Scram,
}

impl Method {
    /// The method `auth.method` names.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "trust" => Method::Trust,
            "password" => Method::Password,
            "md5" => Method::Md5,
            "scram-sha-256" => Method::Scram,
            other => {
                return Err(Error::NotSupported(format!(
                    "unknown authentication method {other}"
                )));
            }
        })
    }
}

/// What the server keeps of a user's password.
#[derive(Clone, PartialEq, Eq)]
pub enum Verifier {
    /// SCRAM-SHA-256 keys (RFC 5802), as PostgreSQL stores them.
    Scram {
        /// PBKDF2 iterations.
        iterations: usize,
        /// The salt.
        salt: Vec<u8>,
        /// H(HMAC(SaltedPassword, "Client Key")).
        stored_key: Vec<u8>,
        /// HMAC(SaltedPassword, "Server Key").
        server_key: Vec<u8>,
    },
    /// md5(password || user), as 32 hex digits.
    Md5(String),
}

impl Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verifier::Scram { .. } => "Scram(<redacted>)",
            Verifier::Md5(_) => "Md5(<redacted>)",
        })
    }
}

impl Verifier {
    /// Reads a verifier in PostgreSQL's format; `None` for anything else.
    pub fn parse(text: &str) -> Option<Verifier> {
        if let Some(hex) = text.strip_prefix("md5") {
            let valid = hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
            return valid.then(|| Verifier::Md5(hex.to_ascii_lowercase()));
        }
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (parameters, keys) = rest.split_once('$')?;
        let (iterations, salt) = parameters.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        let iterations: usize = iterations.parse().ok()?;
        // PostgreSQL's own bound; it also keeps a hostile entry from pinning a core.
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return None;
        }
        Some(Verifier::Scram {
            iterations,
            salt: STANDARD.decode(salt).ok()?,
            stored_key: STANDARD.decode(stored_key).ok()?,
            server_key: STANDARD.decode(server_key).ok()?,
        })
    }

    /// Whether `password` of `user` matches.
    pub fn matches(&self, user: &str, password: &str) -> bool {
        match self {
            Verifier::Md5(hash) => *hash == md5_verifier(user, password)[3..],
            Verifier::Scram {
                iterations,
                salt,
                stored_key,
                server_key,
            } => {
                let (stored, server) = scram_keys(password, salt, *iterations);
                // Both compared in full, in constant time.
                let same = |a: &[u8], b: &[u8]| {
                    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
                };
                same(&stored, stored_key) & same(&server, server_key)
            }
        }
    }
}

/// The largest PBKDF2 iteration count a SCRAM verifier may name.
const MAX_ITERATIONS: usize = 1 << 24;

/// SCRAM's StoredKey and ServerKey for `password` (SASLprep-normalised, as PostgreSQL does).
fn scram_keys(password: &str, salt: &[u8], iterations: usize) -> (Vec<u8>, Vec<u8>) {
    let normalized = stringprep::saslprep(password).unwrap_or(std::borrow::Cow::Borrowed(password));
    let mut salted = [0u8; 32];
    let iterations = u32::try_from(iterations)
        .ok()
        .and_then(NonZeroU32::new)
        .unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        normalized.as_bytes(),
        &mut salted,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    (stored_key.as_ref().to_vec(), server_key.as_ref().to_vec())
}

/// A SCRAM-SHA-256 verifier for `password`, with a random salt.
pub fn scram_verifier(password: &str) -> String {
    const ITERATIONS: usize = 4096;
    let salt: [u8; 16] = rand::rng().random();
    let (stored_key, server_key) = scram_keys(password, &salt, ITERATIONS);
    format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

/// An md5 verifier for `user` with `password`.
pub fn md5_verifier(user: &str, password: &str) -> String {
    format!("md5{:x}", md5::compute(format!("{password}{user}")))
}

/// The configured users, by name.
#[derive(Debug, Default)]
pub struct Users {
    verifiers: HashMap<String, Verifier>,
}

impl Users {
    /// Reads `name:verifier` entries; a malformed entry is an error that names its user.
    pub fn parse(entries: &[String]) -> Result<Self> {
        let mut verifiers = HashMap::new();
        for entry in entries {
            let (name, verifier) = entry.split_once(':').ok_or_else(|| {
                Error::NotSupported("auth.users entries are name:verifier".into())
            })?;
            let verifier = Verifier::parse(verifier).ok_or_else(|| {
                Error::NotSupported(format!(
                    "auth.users: the verifier of user {name} is neither SCRAM-SHA-256 nor md5 (make one with `ember passwd {name}`)"
                ))
            })?;
            verifiers.insert(name.to_string(), verifier);
        }
        Ok(Self { verifiers })
    }

    /// The names of the configured users.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.verifiers.keys().map(String::as_str)
    }

    /// The verifier of `user`, if it is one.
    pub fn verifier(&self, user: &str) -> Option<&Verifier> {
        self.verifiers.get(user)
    }

    /// Whether `user` exists and `password` is theirs.
    pub fn password_matches(&self, user: &str, password: &str) -> bool {
        self.verifier(user)
            .is_some_and(|verifier| verifier.matches(user, password))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_round_trip_and_reject_garbage() {
        let scram = scram_verifier("secret");
        let parsed = Verifier::parse(&scram).expect("a SCRAM verifier");
        assert!(matches!(
            parsed,
            Verifier::Scram {
                iterations: 4096,
                ..
            }
        ));
        assert!(parsed.matches("ember", "secret"));
        assert!(!parsed.matches("ember", "Secret"));
        let md5 = md5_verifier("ember", "secret");
        assert_eq!(md5.len(), 35);
        let parsed = Verifier::parse(&md5).expect("an md5 verifier");
        assert!(parsed.matches("ember", "secret"));
        assert!(!parsed.matches("other", "secret"));
        assert!(Verifier::parse("secret").is_none());
        assert!(Verifier::parse("SCRAM-SHA-256$x:y$z").is_none());
        assert!(Verifier::parse("SCRAM-SHA-256$99999999999:c2FsdA==$a2V5:a2V5").is_none());
        assert!(Users::parse(&["ember:plaintext".to_string()]).is_err());
    }

    #[test]
    fn scram_keys_match_rfc_7677() {
        // RFC 7677's example: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==,
        // 4096 iterations; its ServerSignature implies these keys.
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("base64");
        let (stored_key, server_key) = scram_keys("pencil", &salt, 4096);
        assert_eq!(
            STANDARD.encode(stored_key),
            "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY="
        );
        assert_eq!(
            STANDARD.encode(server_key),
            "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
    }
}
