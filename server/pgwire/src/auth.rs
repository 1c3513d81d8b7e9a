//! Postgres authentication: trust, cleartext password, md5 and SCRAM-SHA-256, against the roles
//! that may log in (`auth.users`, and roles given a password with `CREATE ROLE`/`ALTER ROLE`).
//! The exchanges themselves are pgwire's; this module answers what they ask of the roles, from
//! their verifiers (never from passwords).

use std::sync::Arc;

use async_trait::async_trait;
use ember_coordinator::access::AccessControl;
use ember_coordinator::users::Verifier;
use pgwire::api::auth::sasl::scram::ScramSecret;
use pgwire::api::auth::{AuthSource, LoginInfo, Password};
use pgwire::error::{PgWireError, PgWireResult};
use rand::Rng;

/// The roles, as pgwire's authentication handlers ask for them.
#[derive(Debug, Clone)]
pub(crate) struct PgUsers(pub(crate) Arc<AccessControl>);

impl PgUsers {
    fn verifier(&self, login: &LoginInfo) -> PgWireResult<Verifier> {
        let user = login.user().unwrap_or_default();
        self.0.verifier(user).ok_or_else(|| refused(login))
    }
}

/// The same answer for an unknown user and a wrong password (SQLSTATE 28P01), as PostgreSQL
/// gives: it must not reveal which users exist.
fn refused(login: &LoginInfo) -> PgWireError {
    PgWireError::InvalidPassword(login.user().unwrap_or_default().to_string())
}

#[async_trait]
impl AuthSource for PgUsers {
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
        if self.verifier(login)?.matches(user, password) {
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
                salt,
                iterations,
                stored_key,
                server_key,
            },
            None,
        ))
    }
}

#[cfg(test)]
mod tests {
    use ember_coordinator::users::{md5_verifier, scram_verifier};
    use pgwire::api::auth::sasl::scram::gen_salted_password;

    use super::*;

    fn users() -> PgUsers {
        let mut auth = ember_config::EmberConfig::defaults().auth;
        auth.users = vec![
            format!("ann:{}", scram_verifier("secret")),
            format!("bob:{}", md5_verifier("bob", "hunter2")),
        ];
        PgUsers(Arc::new(AccessControl::new(&auth).expect("valid users")))
    }

    #[tokio::test]
    async fn passwords_are_checked_against_verifiers() {
        let users = users();
        let login = |user: &'static str| LoginInfo::new(Some(user), None, String::new());
        assert!(
            users
                .verify_password(&login("ann"), b"secret")
                .await
                .is_ok()
        );
        assert!(
            users
                .verify_password(&login("ann"), b"wrong")
                .await
                .is_err()
        );
        assert!(
            users
                .verify_password(&login("bob"), b"hunter2")
                .await
                .is_ok()
        );
        assert!(
            users
                .verify_password(&login("eve"), b"secret")
                .await
                .is_err()
        );
        // md5 challenges need an md5 verifier.
        assert!(users.get_password(&login("ann")).await.is_err());
        assert!(users.get_password(&login("bob")).await.is_ok());
    }

    #[tokio::test]
    async fn scram_secrets_agree_with_pgwire() {
        // The keys Ember keeps are the ones pgwire's own SCRAM code derives.
        let (secret, _) = users()
            .get_scram_secret(&LoginInfo::new(Some("ann"), None, String::new()))
            .await
            .expect("a SCRAM user");
        let ScramSecret::Verifier {
            salt,
            iterations,
            stored_key,
            server_key,
        } = secret
        else {
            panic!("a verifier")
        };
        let salted = gen_salted_password("secret", &salt, iterations);
        let ScramSecret::Verifier {
            stored_key: expected_stored,
            server_key: expected_server,
            ..
        } = ScramSecret::verifier_from_salted_password(salt, salted, iterations)
        else {
            panic!("a verifier")
        };
        assert_eq!((stored_key, server_key), (expected_stored, expected_server));
    }
}
