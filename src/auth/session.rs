//! Sessions: creating one at login and issuing its tokens.
//!
//! A session id is `1` (the secret version) followed by 128 random bits, base64url. The
//! session's signing key is derived from the id (see `secrets`), so it is never stored.
//! The refresh token is `<sid>.<256 random bits>`; only its keyed hash is stored.

use ticketgate_sdk::protocol::LoginResponse;
use ticketgate_sdk::ClientType;

use super::secrets::{hmac32, SECRET_VERSION};
use super::tokens::{Claims, AUDIENCE, ISSUER};
use super::{random_b64, unix_now};
use crate::http::error::ApiError;
use crate::state::AppState;
use crate::store::SessionRecord;

/// A fresh session id.
pub fn new_session_id() -> String {
    format!("{SECRET_VERSION}{}", random_b64(16))
}

/// A fresh refresh token for `session_id`.
pub fn new_refresh_token(session_id: &str) -> String {
    format!("{session_id}.{}", random_b64(32))
}

/// The stored form of a refresh token: keyed hash, lowercase hex.
pub fn refresh_hash(key: &[u8; 32], refresh_token: &str) -> String {
    hex::encode(hmac32(key, refresh_token.as_bytes()))
}

/// Issues an access token for a session, valid for the configured access lifetime.
pub fn issue_access_token(
    state: &AppState,
    record: &SessionRecord,
) -> Result<(String, Claims), ApiError> {
    let now = unix_now();
    let claims = Claims {
        iss: ISSUER.to_owned(),
        sub: record.user_id.clone(),
        aud: AUDIENCE.to_owned(),
        exp: now + state.config.ttl.access.as_secs() as i64,
        iat: now,
        jti: random_b64(12),
        sid: record.session_id.clone(),
        did: record.device_id.clone(),
        ctp: record.client_type,
    };
    let token = state.keys.issue(&claims).map_err(|e| {
        tracing::error!(cause = %e, "signing an access token failed");
        ApiError::Internal
    })?;
    Ok((token, claims))
}

/// Creates a session in the store and answers the login body.
pub async fn open_session(
    state: &AppState,
    user_id: &str,
    device_id: &str,
    client_type: ClientType,
) -> Result<LoginResponse, ApiError> {
    let session_id = new_session_id();
    let refresh_token = new_refresh_token(&session_id);
    let now = unix_now();
    let refresh_ttl = state.config.refresh_ttl(client_type).as_secs();
    let record = SessionRecord {
        session_id: session_id.clone(),
        user_id: user_id.to_owned(),
        device_id: device_id.to_owned(),
        client_type,
        created_at: now,
        expires_at: now + refresh_ttl as i64,
        refresh_hash: refresh_hash(state.secrets.refresh_key(), &refresh_token),
    };
    state.store.create_session(&record).await?;
    let (access_token, claims) = issue_access_token(state, &record)?;
    use base64::Engine;
    let signing_key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(state.secrets.session_signing_key(&session_id));
    tracing::info!(session_id = %session_id, user_id = %user_id, client_type = client_type.as_str(), "session opened");
    Ok(LoginResponse {
        access_token,
        refresh_token: Some(refresh_token),
        signing_key,
        session_id,
        access_expires_in: (claims.exp - now).max(0) as u64,
        refresh_expires_in: refresh_ttl,
    })
}
