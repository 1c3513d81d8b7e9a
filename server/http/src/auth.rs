//! Who is asking: under `auth.method = "trust"` anyone, as the user named in Basic credentials
//! if sent (else the first superuser); otherwise HTTP Basic credentials checked against the
//! users the Postgres and Flight SQL frontends know, and the role must be allowed to log in.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ember_coordinator::users::Method;

use crate::AppState;

/// The authenticated user, for the routes.
#[derive(Debug, Clone)]
pub(crate) struct Viewer(pub(crate) String);

/// Longest `Authorization` header looked at.
const MAX_AUTHORIZATION: usize = 4096;

pub(crate) async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let access = state.engine.access();
    if request.uri().path() == "/metrics" && state.metrics_without_auth {
        request
            .extensions_mut()
            .insert(Viewer(access.bootstrap_superuser().to_string()));
        return next.run(request).await;
    }
    let credentials = match basic_credentials(request.headers()) {
        Ok(credentials) => credentials,
        Err(message) => return challenge(message),
    };
    let user = match (access.method(), credentials) {
        (Method::Trust, None) => access.bootstrap_superuser().to_string(),
        (Method::Trust, Some((user, _))) => user,
        (_, None) => return challenge("this Ember server asks for a user and password"),
        (_, Some((user, password))) => {
            if !access.password_matches(&user, &password) {
                // The same answer for unknown users and wrong passwords.
                return challenge(&format!(
                    "password authentication failed for user \"{user}\""
                ));
            }
            user
        }
    };
    if let Err(error) = access.check_login(&user) {
        return challenge(&error.to_string());
    }
    request.extensions_mut().insert(Viewer(user));
    next.run(request).await
}

/// `Authorization: Basic base64(user:password)`, if sent.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, &'static str> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    if value.len() > MAX_AUTHORIZATION {
        return Err("the authorization header is too long");
    }
    let value = value
        .to_str()
        .map_err(|_| "malformed authorization header")?;
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return Err("only Basic authorization is accepted");
    };
    let decoded = STANDARD
        .decode(encoded.trim())
        .map_err(|_| "malformed Basic credentials")?;
    let decoded = String::from_utf8(decoded).map_err(|_| "malformed Basic credentials")?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or("malformed Basic credentials")?;
    Ok(Some((user.to_string(), password.to_string())))
}

/// 401 with a Basic challenge, so browsers ask for a user and password.
fn challenge(message: &str) -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        axum::Json(serde_json::json!({ "error": message, "sqlstate": "28000" })),
    )
        .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Ember\", charset=\"UTF-8\""),
    );
    response
}
