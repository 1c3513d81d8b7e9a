//! Who is calling: the handshake checks Basic credentials against the same users as the Postgres
//! frontend (`auth.users`) and answers with a signed Bearer token; every other call presents it.
//! With `auth.method = "trust"` credentials are optional: a call without a token gets a session
//! of its own and its token in the response headers (ADBC adopts a token it finds there).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ember_protocol::credentials::{SigningKey, TokenClaims, now_ms, random_id};
use ember_protocol::credentials::{bearer_token, credential_status};
use tonic::Status;
use tonic::metadata::MetadataMap;

use ember_coordinator::monitor::ConnectionGuard;
use ember_coordinator::users::Method;
use ember_coordinator::{ClientSession, QueryEngine};

/// The frontend's name in sessions, `system.queries.frontend` and metrics.
pub(crate) const FRONTEND: &str = "flight-sql";

/// One client's Flight SQL session: its `ClientSession` (settings, current schema).
pub(crate) struct FlightSession {
    pub(crate) user: String,
    pub(crate) session: ClientSession,
    // A std Mutex: touched briefly, never across an await.
    last_used: Mutex<Instant>,
    /// Counts the session in `ember_connections{frontend="flight-sql"}` while it is open.
    _open: ConnectionGuard,
}

impl FlightSession {
    fn last_used(&self) -> Instant {
        self.last_used
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|e| *e.into_inner())
    }
}

/// A checked caller: their session, and a token to hand back when it was issued or renewed
/// by this call.
#[derive(Clone)]
pub(crate) struct Caller {
    pub(crate) session: Arc<FlightSession>,
    pub(crate) new_token: Option<String>,
}

impl Caller {
    pub(crate) fn user(&self) -> &str {
        &self.session.user
    }
}

/// How long a session must have been unused before a new session of its user may replace it.
const SESSION_REUSE_AFTER: Duration = Duration::from_secs(60);

/// How many Flight SQL sessions may be open, and for how long unused.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionLimits {
    pub(crate) max_sessions: usize,
    pub(crate) max_sessions_per_user: usize,
    pub(crate) idle: Duration,
}

pub(crate) struct Authenticator {
    key: SigningKey,
    method: Method,
    token_ttl: Duration,
    engine: Arc<QueryEngine>,
    limits: SessionLimits,
    // A std Mutex: lookups and inserts only, never across an await.
    sessions: Mutex<HashMap<Vec<u8>, Arc<FlightSession>>>,
}

impl Authenticator {
    pub(crate) fn new(
        key: SigningKey,
        method: Method,
        token_ttl: Duration,
        engine: Arc<QueryEngine>,
        limits: SessionLimits,
    ) -> Self {
        Self {
            key,
            method,
            token_ttl,
            engine,
            limits,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn requires_token(&self) -> bool {
        self.method != Method::Trust
    }

    /// The handshake: Basic credentials from the `authorization` header (or a `BasicAuth`
    /// payload) checked, a new session opened; returns its token.
    pub(crate) async fn handshake(
        &self,
        metadata: &MetadataMap,
        payload: &[u8],
    ) -> Result<String, Status> {
        let (user, password) = match basic_credentials(metadata)? {
            Some(credentials) => credentials,
            None => basic_payload(payload).unwrap_or_default(),
        };
        let user = if user.is_empty() && self.method == Method::Trust {
            self.engine.access().bootstrap_superuser().to_string()
        } else {
            user
        };
        if self.method != Method::Trust && !self.password_matches(&user, &password) {
            // The same answer for unknown users and wrong passwords.
            return Err(Status::unauthenticated(format!(
                "password authentication failed for user \"{user}\""
            )));
        }
        let (_, token) = self.open_session(user)?;
        Ok(token)
    }

    fn password_matches(&self, user: &str, password: &str) -> bool {
        self.engine.access().password_matches(user, password)
    }

    fn open_session(&self, user: String) -> Result<(Arc<FlightSession>, String), Status> {
        // The role must exist and may log in (under trust too, as in PostgreSQL).
        self.engine
            .access()
            .check_login(&user)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let session_id = random_id(16);
        let session = self.admit(&session_id, &user)?;
        let token = self.issue(&session_id, &session.user);
        Ok((session, token))
    }

    /// The session `session_id` of `user`: the one open, or a new one if the limits allow it
    /// (`coordinator.max_connections` sessions, `max_sessions_per_user` of one user).
    fn admit(&self, session_id: &[u8], user: &str) -> Result<Arc<FlightSession>, Status> {
        let mut sessions = self.lock();
        if let Some(session) = sessions.get(session_id) {
            return Ok(Arc::clone(session));
        }
        let metrics = self.engine.monitor().metrics();
        if sessions.len() >= self.limits.max_sessions {
            metrics.connection_refused(FRONTEND);
            return Err(Status::resource_exhausted(format!(
                "too many Flight SQL sessions: {} are open (coordinator.max_connections); \
                 close one (CloseSession) or wait for idle ones to expire",
                sessions.len()
            )));
        }
        let of_user: Vec<(&Vec<u8>, Instant)> = sessions
            .iter()
            .filter(|(_, s)| s.user == user)
            .map(|(id, s)| (id, s.last_used()))
            .collect();
        if of_user.len() >= self.limits.max_sessions_per_user {
            // The user's least recently used session makes room if it has been idle a while
            // (clients that send no token open a session per call); else the user is at the
            // limit.
            let oldest = of_user
                .iter()
                .min_by_key(|(_, used)| *used)
                .filter(|(_, used)| used.elapsed() >= SESSION_REUSE_AFTER)
                .map(|(id, _)| (*id).clone());
            let Some(oldest) = oldest else {
                metrics.connection_refused(FRONTEND);
                return Err(Status::resource_exhausted(format!(
                    "user \"{user}\" has {} Flight SQL sessions in use \
                     (coordinator.max_sessions_per_user)",
                    of_user.len()
                )));
            };
            sessions.remove(&oldest);
        }
        let session = Arc::new(FlightSession {
            user: user.to_string(),
            session: self
                .engine
                .new_session()
                .with_user(user)
                .with_frontend(FRONTEND),
            last_used: Mutex::new(Instant::now()),
            _open: metrics.connection_opened(FRONTEND),
        });
        sessions.insert(session_id.to_vec(), Arc::clone(&session));
        Ok(session)
    }

    fn issue(&self, session_id: &[u8], user: &str) -> String {
        self.key.issue_token(&TokenClaims {
            session_id: session_id.to_vec(),
            user: user.to_string(),
            expires_at_ms: now_ms() + self.token_ttl.as_millis() as u64,
        })
    }

    /// Checks the token of a call and finds its session. A valid token whose session is gone
    /// (the coordinator restarted, or the session idled out) gets a fresh one.
    pub(crate) fn check(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        self.engine.monitor().metrics().request(FRONTEND);
        let Some(token) = bearer_token(metadata) else {
            if self.method == Method::Trust {
                let (session, token) =
                    self.open_session(self.engine.access().bootstrap_superuser().to_string())?;
                return Ok(Caller {
                    session,
                    new_token: Some(token),
                });
            }
            return Err(Status::unauthenticated(
                "authenticate with the Flight SQL handshake (Basic credentials) first",
            ));
        };
        let claims = self
            .key
            .verify_token(token)
            .map_err(|e| credential_status(&e))?;
        // A role dropped, or made NOLOGIN, since its token was issued is logged out.
        self.engine
            .access()
            .check_login(&claims.user)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let remaining = claims.expires_at_ms.saturating_sub(now_ms());
        let renew = remaining < self.token_ttl.as_millis() as u64 / 2;
        let session = self.admit(&claims.session_id, &claims.user)?;
        if let Ok(mut last_used) = session.last_used.lock() {
            *last_used = Instant::now();
        }
        Ok(Caller {
            new_token: renew.then(|| self.issue(&claims.session_id, &claims.user)),
            session,
        })
    }

    /// Forgets the session of this token (`CloseSession`).
    pub(crate) fn close(&self, metadata: &MetadataMap) {
        if let Some(token) = bearer_token(metadata)
            && let Ok(claims) = self.key.verify_token(token)
        {
            self.lock().remove(&claims.session_id);
        }
    }

    /// Closes sessions unused for `coordinator.flight_sql_session_idle_ms`.
    pub(crate) fn forget_idle(&self) {
        let ttl = self.limits.idle;
        self.lock().retain(|_, session| {
            session
                .last_used
                .lock()
                .map(|t| t.elapsed() < ttl)
                .unwrap_or(false)
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Arc<FlightSession>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `authorization: Basic base64(user:password)`, if sent.
fn basic_credentials(metadata: &MetadataMap) -> Result<Option<(String, String)>, Status> {
    let Some(value) = metadata.get("authorization") else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Status::invalid_argument("malformed authorization header"))?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(Status::invalid_argument("malformed authorization header"));
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Status::invalid_argument(
            "the handshake takes Basic credentials",
        ));
    }
    let decoded = STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| Status::invalid_argument("malformed Basic credentials"))?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or_else(|| Status::invalid_argument("malformed Basic credentials"))?;
    Ok(Some((user.to_string(), password.to_string())))
}

/// Credentials in the handshake's payload (`BasicAuth`), which some clients send instead.
fn basic_payload(payload: &[u8]) -> Option<(String, String)> {
    use prost::Message;
    if payload.is_empty() {
        return None;
    }
    let auth = arrow_flight::BasicAuth::decode(payload).ok()?;
    Some((auth.username, auth.password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_read() {
        let mut metadata = MetadataMap::new();
        let encoded = STANDARD.encode("alice:wonder:land");
        metadata.insert("authorization", format!("Basic {encoded}").parse().unwrap());
        assert_eq!(
            basic_credentials(&metadata).unwrap(),
            Some(("alice".into(), "wonder:land".into()))
        );
        metadata.insert("authorization", "Basic !!!".parse().unwrap());
        assert!(basic_credentials(&metadata).is_err());
        assert_eq!(basic_credentials(&MetadataMap::new()).unwrap(), None);
    }
}
