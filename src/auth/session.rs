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
use crate::hub::Op;
use crate::state::AppState;
use crate::store::{RotateOutcome, RotateRefresh, SessionRecord};

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
    issue_access(
        state,
        &record.user_id,
        &record.session_id,
        &record.device_id,
        record.client_type,
    )
}

/// Issues an access token for the session a verified token belongs to.
pub fn reissue_access_token(
    state: &AppState,
    claims: &Claims,
) -> Result<(String, Claims), ApiError> {
    issue_access(state, &claims.sub, &claims.sid, &claims.did, claims.ctp)
}

fn issue_access(
    state: &AppState,
    user_id: &str,
    session_id: &str,
    device_id: &str,
    client_type: ClientType,
) -> Result<(String, Claims), ApiError> {
    let now = unix_now();
    let claims = Claims {
        iss: ISSUER.to_owned(),
        sub: user_id.to_owned(),
        aud: AUDIENCE.to_owned(),
        exp: now + state.config.ttl.access.as_secs() as i64,
        iat: now,
        jti: random_b64(12),
        sid: session_id.to_owned(),
        did: device_id.to_owned(),
        ctp: client_type,
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
    state.store.index_session(&record).await?;
    // An admin block sets its flag before it lists the user's sessions to kick: a
    // session indexed after that listing is caught here instead.
    if state.store.is_blocked(user_id).await? {
        end_sessions(
            state,
            user_id,
            vec![session_id.clone()],
            ticketgate_sdk::protocol::close::REVOKED,
        )
        .await?;
        return Err(ApiError::BadCredentials);
    }
    enforce_one_session_policy(state, &record).await?;
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

/// Ends sessions of one user: deletes them (their refresh tokens die, their access
/// tokens are refused at mint), unindexes them and closes their sockets on every node
/// with `code`. Returns (sessions that existed, sockets closed).
pub async fn end_sessions(
    state: &AppState,
    user_id: &str,
    session_ids: Vec<String>,
    code: u16,
) -> Result<(usize, u64), ApiError> {
    if session_ids.is_empty() {
        return Ok((0, 0));
    }
    let mut ended = 0;
    for sid in &session_ids {
        if state.store.revoke_session(sid).await? {
            ended += 1;
        }
        state.store.unindex_session(user_id, sid).await?;
    }
    let answers = state.hub.request(Op::Revoke { session_ids, code }).await?;
    let closed = answers.iter().map(|a| a.count).sum();
    tracing::info!(user_id = %user_id, sessions = ended, sockets = closed, code, "sessions ended");
    Ok((ended, closed))
}

/// After a web or mobile login: keeps the newest `sessions_per_type` sessions of that
/// (user, client type) and replaces the rest (4509). The new session is ranked with the
/// others, so two logins racing each other never end both: the newer one stays. API
/// sessions are never replaced.
async fn enforce_one_session_policy(
    state: &AppState,
    record: &SessionRecord,
) -> Result<(), ApiError> {
    if record.client_type == ClientType::Api {
        return Ok(());
    }
    let same_type: Vec<String> = state
        .store
        .user_sessions(&record.user_id)
        .await?
        .into_iter()
        .filter(|s| s.client_type == record.client_type)
        .map(|s| s.session_id)
        .collect();
    let excess = same_type
        .len()
        .saturating_sub(state.config.sessions_per_type);
    // Oldest first: the excess are the oldest.
    let replaced = same_type.into_iter().take(excess).collect();
    end_sessions(
        state,
        &record.user_id,
        replaced,
        ticketgate_sdk::protocol::close::REPLACED,
    )
    .await?;
    Ok(())
}

/// The session id of a refresh token `<sid>.<random>`, if it has that form.
pub fn refresh_token_session(token: &str) -> Option<&str> {
    let (sid, random) = token.split_once('.')?;
    let id_char = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let ok = sid.len() == 23
        && sid.starts_with(SECRET_VERSION)
        && sid.bytes().all(id_char)
        && random.len() == 43
        && random.bytes().all(id_char);
    ok.then_some(sid)
}

/// What a refresh produced.
pub struct Refreshed {
    /// The login-shaped answer (new access and refresh tokens).
    pub answer: LoginResponse,
    /// The session's client type (cookie mode is for web only).
    pub client_type: ClientType,
}

/// Rotates a refresh token whose request signature already verified.
pub async fn refresh(
    state: &AppState,
    session_id: &str,
    device_id: &str,
    presented: &str,
) -> Result<Refreshed, ApiError> {
    let new_token = new_refresh_token(session_id);
    let key = state.secrets.refresh_key();
    let outcome = state
        .store
        .rotate_refresh(&RotateRefresh {
            session_id,
            device_id,
            presented_hash: &refresh_hash(key, presented),
            new_hash: &refresh_hash(key, &new_token),
            grace: state.config.refresh_grace,
            cap_per_day: state.config.refresh_cap_per_day,
        })
        .await?;
    let record = match outcome {
        RotateOutcome::Rotated(record) => record,
        RotateOutcome::Reused => {
            // The store already deleted the session; close its sockets everywhere.
            tracing::warn!(session_id = %session_id, "refresh token reused: session revoked");
            let sockets = state
                .hub
                .request(Op::Revoke {
                    session_ids: vec![session_id.to_owned()],
                    code: ticketgate_sdk::protocol::close::REVOKED,
                })
                .await?;
            drop(sockets);
            return Err(ApiError::RefreshReused);
        }
        RotateOutcome::DeviceMismatch => return Err(ApiError::DeviceMismatch),
        RotateOutcome::Limit => return Err(ApiError::RefreshLimit),
        RotateOutcome::SessionGone => return Err(ApiError::TokenRevoked),
    };
    if user_is_blocked(state, &record.user_id).await? {
        end_sessions(
            state,
            &record.user_id,
            vec![record.session_id.clone()],
            ticketgate_sdk::protocol::close::REVOKED,
        )
        .await?;
        return Err(ApiError::TokenRevoked);
    }
    let (access_token, claims) = issue_access_token(state, &record)?;
    use base64::Engine;
    let now = unix_now();
    Ok(Refreshed {
        client_type: record.client_type,
        answer: LoginResponse {
            access_token,
            refresh_token: Some(new_token),
            signing_key: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(state.secrets.session_signing_key(session_id)),
            session_id: session_id.to_owned(),
            access_expires_in: (claims.exp - now).max(0) as u64,
            refresh_expires_in: (record.expires_at - now).max(0) as u64,
        },
    })
}

/// Blocked in the users file or by the admin API (deployment-wide flag).
pub async fn user_is_blocked(state: &AppState, user_id: &str) -> Result<bool, ApiError> {
    let in_file = state.users.is_blocked(user_id).map_err(|e| {
        tracing::error!(cause = %e, "users file unreadable");
        ApiError::Internal
    })?;
    Ok(in_file || state.store.is_blocked(user_id).await?)
}
