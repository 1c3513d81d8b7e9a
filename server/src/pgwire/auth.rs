//! Postgres authentication: trust, cleartext password, md5 and SCRAM-SHA-256, against users
//! configured as verifiers (`auth.users`), never as passwords. The exchanges themselves are
//! pgwire's; this module keeps the users and checks what clients present.
//!
//! Verifiers have PostgreSQL's own formats, so they can be copied from `pg_authid`:
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64) and `md5<hex>` where
//! the hex is md5(password || user).

use std::collections::HashMap;
use std::fmt::Debug;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use pgwire::api::auth::sasl::scram::{ScramSecret, gen_salted_password};
use pgwire::api::auth::{AuthSource, LoginInfo, Password};
use pgwire::error::{PgWireError, PgWireResult};
use rand::Rng;

use crate::error::{Error, Result};

/// How clients authenticate (`auth.method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Trust,
    Password,
    Md5,
    Scram,
}

impl Method {
    pub(crate) fn parse(name: &str) -> Result<Self> {
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
enum Verifier {
    Scram {
        iterations: usize,
        salt: Vec<u8>,
        stored_key: Vec<u8>,
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

fn parse_verifier(text: &str) -> Option<Verifier> {
    if let Some(hex) = text.strip_prefix("md5") {
        let valid = hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        return valid.then(|| Verifier::Md5(hex.to_ascii_lowercase()));
    }
    let rest = text.strip_prefix("SCRAM-SHA-256$")?;
    let (parameters, keys) = rest.split_once('$')?;
    let (iterations, salt) = parameters.split_once(':')?;
    let (stored_key, server_key) = keys.split_once(':')?;
    Some(Verifier::Scram {
        iterations: iterations.parse().ok()?,
        salt: STANDARD.decode(salt).ok()?,
        stored_key: STANDARD.decode(stored_key).ok()?,
        server_key: STANDARD.decode(server_key).ok()?,
    })
}

/// A SCRAM-SHA-256 verifier for `password`, with a random salt.
pub(crate) fn scram_verifier(password: &str) -> String {
    const ITERATIONS: usize = 4096;
    let salt: [u8; 16] = rand::rng().random();
    let salted = gen_salted_password(password, &salt, ITERATIONS);
    let ScramSecret::Verifier {
        stored_key,
        server_key,
        ..
    } = ScramSecret::verifier_from_salted_password(salt.to_vec(), salted, ITERATIONS)
    else {
        unreachable!("verifier_from_salted_password returns a verifier")
    };
    format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

/// An md5 verifier for `user` with `password`.
pub(crate) fn md5_verifier(user: &str, password: &str) -> String {
    format!("md5{:x}", md5::compute(format!("{password}{user}")))
}

/// The configured users, by name.
#[derive(Debug, Default)]
pub(crate) struct Users {
    verifiers: HashMap<String, Verifier>,
}

impl Users {
    /// Reads `name:verifier` entries; a malformed entry is an error that names its user.
    pub(crate) fn parse(entries: &[String]) -> Result<Self> {
        let mut verifiers = HashMap::new();
        for entry in entries {
            let (name, verifier) = entry.split_once(':').ok_or_else(|| {
                Error::NotSupported("auth.users entries are name:verifier".into())
            })?;
            let verifier = parse_verifier(verifier).ok_or_else(|| {
                Error::NotSupported(format!(
                    "auth.users: the verifier of user {name} is neither SCRAM-SHA-256 nor md5 (make one with `ember passwd {name}`)"
                ))
            })?;
            verifiers.insert(name.to_string(), verifier);
        }
        Ok(Self { verifiers })
    }

    fn verifier(&self, login: &LoginInfo) -> PgWireResult<&Verifier> {
        let user = login.user().unwrap_or_default();
        self.verifiers.get(user).ok_or_else(|| refused(login))
    }
}

/// The same answer for an unknown user and a wrong password (SQLSTATE 28P01), as PostgreSQL
/// gives: it must not reveal which users exist.
fn refused(login: &LoginInfo) -> PgWireError {
    PgWireError::InvalidPassword(login.user().unwrap_or_default().to_string())
}

#[async_trait]
impl AuthSource for Users {
    /// md5: the response the client must send for a fresh salt.
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let Verifier::Md5(hash) = self.verifier(login)? else {
            // A SCRAM verifier cannot answer an md5 challenge.
            return Err(refused(login));
        };
        let salt: [u8; 4] = rand::rng().random();
        let mut salted = hash.as_bytes().to_vec();
        salted.extend_from_slice(&salt);
        let expected = format!("md5{:x}", md5::compute(salted));
        Ok(Password::new(Some(salt.to_vec()), expected.into_bytes()))
    }

    /// Cleartext: the presented password is checked against the verifier.
    async fn verify_password(
        &self,
        login: &LoginInfo,
        presented: &[u8],
    ) -> PgWireResult<Option<()>> {
        let password = std::str::from_utf8(presented).map_err(|_| refused(login))?;
        let user = login.user().unwrap_or_default();
        let matches = match self.verifier(login)? {
            Verifier::Md5(hash) => *hash == md5_verifier(user, password)[3..],
            Verifier::Scram {
                iterations,
                salt,
                stored_key,
                server_key,
            } => {
                let salted = gen_salted_password(password, salt, *iterations);
                matches!(
                    ScramSecret::verifier_from_salted_password(salt.clone(), salted, *iterations),
                    ScramSecret::Verifier { stored_key: s, server_key: k, .. }
                        if s == *stored_key && k == *server_key
                )
            }
        };
        if matches {
            Ok(None)
        } else {
            Err(refused(login))
        }
    }

    /// SCRAM: the stored keys, so the exchange never needs the password.
    async fn get_scram_secret(&self, login: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        let Verifier::Scram {
            iterations,
            salt,
            stored_key,
            server_key,
        } = self.verifier(login)?
        else {
            return Err(refused(login));
        };
        Ok((
            ScramSecret::Verifier {
                salt: salt.clone(),
                iterations: *iterations,
                stored_key: stored_key.clone(),
                server_key: server_key.clone(),
            },
            None,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_round_trip_and_reject_garbage() {
        let scram = scram_verifier("secret");
        assert!(matches!(
            parse_verifier(&scram),
            Some(Verifier::Scram {
                iterations: 4096,
                ..
            })
        ));
        // PostgreSQL's md5 of password "secret" for user "ember".
        let md5 = md5_verifier("ember", "secret");
        assert_eq!(md5.len(), 35);
        assert!(matches!(parse_verifier(&md5), Some(Verifier::Md5(_))));
        assert!(parse_verifier("secret").is_none());
        assert!(parse_verifier("SCRAM-SHA-256$x:y$z").is_none());
        assert!(Users::parse(&["ember:plaintext".to_string()]).is_err());
    }
}
