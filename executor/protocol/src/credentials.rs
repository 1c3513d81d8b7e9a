//! Credentials of Flight SQL clients: Bearer tokens and result tickets, signed (HMAC-SHA256) with
//! a key the coordinator and the executors share. The coordinator issues both; an executor that
//! serves a result partition straight to a client checks them itself, without asking anyone.
//!
//! ```text
//!  token  = base64url( "\xebTK1" | TokenClaims  | hmac )   Authorization: Bearer <token>
//!  ticket =           "\xebTT1" | TicketClaims | hmac     inside a Flight SQL TicketStatementQuery
//! ```
//! Both carry the user and an expiry; a ticket names what it reads (a result held by the
//! coordinator, or one live result partition with its schema) and whether a token of the same
//! user must come with it. Nothing in them can be changed without the key, and the random ids
//! they name cannot be guessed.

use std::fmt::Debug;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow_flight::sql::{Any, TicketStatementQuery};
use arrow_flight::{IpcMessage, SchemaAsIpc, Ticket};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use prost::Message;
use rand::RngCore;
use ring::hmac;
use tonic::Status;
use tonic::metadata::MetadataMap;

const TOKEN_MAGIC: &[u8; 4] = b"\xebTK1";
const TICKET_MAGIC: &[u8; 4] = b"\xebTT1";
const TAG_LEN: usize = 32;

/// Why a token or ticket was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Not a token or ticket of ours at all (wrong magic, bad encoding); names which.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// Signed with another key, or changed since it was signed.
    #[error("invalid {0}: its signature does not match")]
    BadSignature(&'static str),
    /// Past its expiry.
    #[error("expired {0}")]
    Expired(&'static str),
}

/// The signing key. Its bytes never leave this type (not even through `Debug`).
#[derive(Clone)]
pub struct SigningKey(hmac::Key);

impl Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// Who holds a token: its session, its user and when it stops being valid.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct TokenClaims {
    /// The Flight SQL session the token opens (random, so it cannot be guessed).
    #[prost(bytes = "vec", tag = "1")]
    pub session_id: Vec<u8>,
    /// The user who authenticated.
    #[prost(string, tag = "2")]
    pub user: String,
    /// Milliseconds since the Unix epoch after which the token is refused.
    #[prost(uint64, tag = "3")]
    pub expires_at_ms: u64,
}

/// What a ticket lets its user read, until when.
#[derive(Clone, PartialEq, Message)]
pub struct TicketClaims {
    /// The user the ticket was issued to; only they may use it.
    #[prost(string, tag = "1")]
    pub user: String,
    /// Milliseconds since the Unix epoch after which the ticket is refused.
    #[prost(uint64, tag = "2")]
    pub expires_at_ms: u64,
    /// The server authenticates clients: a valid token of the same user must come with the
    /// ticket.
    #[prost(bool, tag = "3")]
    pub requires_token: bool,
    /// What the ticket reads.
    #[prost(oneof = "TicketTarget", tags = "4, 5")]
    pub target: Option<TicketTarget>,
}

/// What a ticket reads.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum TicketTarget {
    /// A result the coordinator holds (answered there, or relayed by it).
    #[prost(message, tag = "4")]
    Held(HeldResult),
    /// One partition of a distributed query's result stage, streamed live by its task.
    #[prost(message, tag = "5")]
    Partition(ResultPartition),
}

/// A result the coordinator holds for one fetch.
#[derive(Clone, PartialEq, Message)]
pub struct HeldResult {
    /// The coordinator's random id of the result.
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
}

/// One partition of a distributed query's result stage.
#[derive(Clone, PartialEq, Message)]
pub struct ResultPartition {
    /// The query.
    #[prost(string, tag = "1")]
    pub query_id: String,
    /// Its result stage.
    #[prost(uint32, tag = "2")]
    pub stage_id: u32,
    /// The partition (the index of its task in the result stage).
    #[prost(uint32, tag = "3")]
    pub partition: u32,
    /// The attempt whose stream to read; unset when the coordinator serves the partition and
    /// follows whichever attempt the scheduler launched.
    #[prost(uint32, optional, tag = "4")]
    pub attempt: Option<u32>,
    /// The result's Arrow schema as an IPC message: every endpoint announces the same schema,
    /// even for a partition without rows.
    #[prost(bytes = "vec", tag = "5")]
    pub schema: Vec<u8>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `n` random bytes, for ids nobody can guess.
pub fn random_id(n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

impl SigningKey {
    /// A key from a configured secret (any length; it is hashed into the HMAC key).
    pub fn from_secret(secret: &str) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()))
    }

    /// A fresh random key.
    pub fn random() -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, &random_id(32)))
    }

    /// A key derived from `secret` for one purpose: keys for different purposes never sign
    /// alike, even from the same secret.
    pub fn derived(secret: &str, purpose: &str) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let derived = hmac::sign(&root, purpose.as_bytes());
        Self(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    fn mac_input(parts: &[&[u8]]) -> Vec<u8> {
        let mut input = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
        for part in parts {
            input.extend_from_slice(&(part.len() as u64).to_be_bytes());
            input.extend_from_slice(part);
        }
        input
    }

    /// HMAC-SHA256 of `parts`, each length-prefixed so that no two lists sign alike.
    pub(crate) fn tag(&self, parts: &[&[u8]]) -> Vec<u8> {
        hmac::sign(&self.0, &Self::mac_input(parts))
            .as_ref()
            .to_vec()
    }

    /// Whether `tag` is [`tag`](Self::tag) of `parts` (compared in constant time).
    pub(crate) fn verify_tag(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        hmac::verify(&self.0, &Self::mac_input(parts), tag).is_ok()
    }

    pub(crate) fn seal(&self, magic: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(magic.len() + payload.len() + TAG_LEN);
        out.extend_from_slice(magic);
        out.extend_from_slice(payload);
        let tag = hmac::sign(&self.0, &out);
        out.extend_from_slice(tag.as_ref());
        out
    }

    pub(crate) fn open<'a>(
        &self,
        magic: &[u8; 4],
        what: &'static str,
        sealed: &'a [u8],
    ) -> Result<&'a [u8], CredentialError> {
        if sealed.len() < magic.len() + TAG_LEN || !sealed.starts_with(magic) {
            return Err(CredentialError::Malformed(what));
        }
        let (signed, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        hmac::verify(&self.0, signed, tag).map_err(|_| CredentialError::BadSignature(what))?;
        Ok(&signed[magic.len()..])
    }

    /// The text of a Bearer token.
    pub fn issue_token(&self, claims: &TokenClaims) -> String {
        URL_SAFE_NO_PAD.encode(self.seal(TOKEN_MAGIC, &claims.encode_to_vec()))
    }

    /// The claims of a token this key signed, if it has not expired.
    pub fn verify_token(&self, token: &str) -> Result<TokenClaims, CredentialError> {
        let sealed = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| CredentialError::Malformed("token"))?;
        let payload = self.open(TOKEN_MAGIC, "token", &sealed)?;
        let claims =
            TokenClaims::decode(payload).map_err(|_| CredentialError::Malformed("token"))?;
        if claims.expires_at_ms <= now_ms() {
            return Err(CredentialError::Expired("token"));
        }
        Ok(claims)
    }

    /// The bytes of a ticket.
    pub fn seal_ticket(&self, claims: &TicketClaims) -> Vec<u8> {
        self.seal(TICKET_MAGIC, &claims.encode_to_vec())
    }

    /// The claims of a ticket this key signed, if it has not expired.
    pub fn open_ticket(&self, ticket: &[u8]) -> Result<TicketClaims, CredentialError> {
        let payload = self.open(TICKET_MAGIC, "ticket", ticket)?;
        let claims =
            TicketClaims::decode(payload).map_err(|_| CredentialError::Malformed("ticket"))?;
        if claims.expires_at_ms <= now_ms() {
            return Err(CredentialError::Expired("ticket"));
        }
        Ok(claims)
    }
}

/// Whether `bytes` look like a client ticket (as opposed to a shuffle ticket).
pub fn is_client_ticket(bytes: &[u8]) -> bool {
    bytes.starts_with(TICKET_MAGIC)
}

/// A schema as the bytes of an IPC schema message.
pub fn schema_to_bytes(schema: &Schema) -> Result<Vec<u8>, datafusion::arrow::error::ArrowError> {
    let options = IpcWriteOptions::default();
    let message = IpcMessage::try_from(SchemaAsIpc::new(schema, &options))?;
    Ok(message.0.to_vec())
}

/// The schema of an IPC schema message.
pub fn schema_from_bytes(bytes: &[u8]) -> Result<Schema, datafusion::arrow::error::ArrowError> {
    Schema::try_from(IpcMessage(bytes.to_vec().into()))
}

/// The signed part of a Flight SQL ticket (`TicketStatementQuery` in an `Any`), if `ticket` is
/// one of the tickets the coordinator gives clients.
pub fn client_ticket_handle(ticket: &Ticket) -> Option<Vec<u8>> {
    let any = Any::decode(ticket.ticket.as_ref()).ok()?;
    let query: TicketStatementQuery = any.unpack().ok()??;
    is_client_ticket(&query.statement_handle).then(|| query.statement_handle.to_vec())
}

/// The status a refused credential gets: the client must authenticate (again).
pub fn credential_status(error: &CredentialError) -> Status {
    match error {
        CredentialError::Malformed(_) => Status::invalid_argument(error.to_string()),
        CredentialError::BadSignature(_) | CredentialError::Expired(_) => {
            Status::unauthenticated(error.to_string())
        }
    }
}

/// The Bearer token of a request, if it sent one.
pub fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// Checks that the caller may use `claims`: a token sent along must be valid and of the same
/// user, and one must be sent when the ticket requires it.
pub fn check_bearer(
    key: &SigningKey,
    claims: &TicketClaims,
    metadata: &MetadataMap,
) -> Result<(), Status> {
    match bearer_token(metadata) {
        Some(token) => {
            let token = key.verify_token(token).map_err(|e| credential_status(&e))?;
            if token.user != claims.user {
                return Err(Status::permission_denied(
                    "this ticket belongs to another user",
                ));
            }
            Ok(())
        }
        None if claims.requires_token => Err(Status::unauthenticated(
            "a Bearer token from the Flight SQL handshake is required",
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field};

    fn ticket(expires_at_ms: u64) -> TicketClaims {
        TicketClaims {
            user: "ember".into(),
            expires_at_ms,
            requires_token: true,
            target: Some(TicketTarget::Held(HeldResult { id: random_id(16) })),
        }
    }

    #[test]
    fn tokens_and_tickets_round_trip_and_refuse_tampering() {
        let key = SigningKey::from_secret("s3cret");
        let claims = TokenClaims {
            session_id: random_id(16),
            user: "alice".into(),
            expires_at_ms: now_ms() + 60_000,
        };
        let token = key.issue_token(&claims);
        assert_eq!(key.verify_token(&token).unwrap(), claims);
        let other = SigningKey::from_secret("other");
        assert_eq!(
            other.verify_token(&token),
            Err(CredentialError::BadSignature("token"))
        );
        assert_eq!(
            key.verify_token("garbage!"),
            Err(CredentialError::Malformed("token"))
        );
        let expired = TokenClaims {
            expires_at_ms: now_ms() - 1,
            ..claims
        };
        assert_eq!(
            key.verify_token(&key.issue_token(&expired)),
            Err(CredentialError::Expired("token"))
        );

        let sealed = key.seal_ticket(&ticket(now_ms() + 60_000));
        assert!(is_client_ticket(&sealed));
        assert_eq!(key.open_ticket(&sealed).unwrap().user, "ember");
        let mut tampered = sealed.clone();
        tampered[6] ^= 1;
        assert_eq!(
            key.open_ticket(&tampered),
            Err(CredentialError::BadSignature("ticket"))
        );
        assert_eq!(
            key.open_ticket(&key.seal_ticket(&ticket(1))),
            Err(CredentialError::Expired("ticket"))
        );
        assert_eq!(
            key.open_ticket(b"\xebTT1"),
            Err(CredentialError::Malformed("ticket"))
        );
    }

    #[test]
    fn schemas_survive_the_ticket() {
        let schema = Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new(
                "d",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
        ]);
        let bytes = schema_to_bytes(&schema).unwrap();
        assert_eq!(schema_from_bytes(&bytes).unwrap(), schema);
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(crate::fuzz_config(512))]

            /// Flight SQL tokens, tickets and ticket envelopes from random bytes are refused
            /// (or, for envelopes, not recognised) without panicking.
            #[test]
            fn random_credentials_are_refused(
                bytes in prop::collection::vec(any::<u8>(), 0..512),
                text in ".{0,256}",
            ) {
                let key = SigningKey::from_secret("fuzzing");
                let ticket = [TICKET_MAGIC.as_slice(), &bytes].concat();
                prop_assert!(key.open_ticket(&ticket).is_err());
                prop_assert!(key.open_ticket(&bytes).is_err());
                prop_assert!(key.verify_token(&text).is_err());
                prop_assert!(key.verify_token(&URL_SAFE_NO_PAD.encode(&ticket)).is_err());
                let _ = client_ticket_handle(&Ticket::new(bytes));
            }
        }
    }
}
