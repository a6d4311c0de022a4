//! Who is calling: the extractors that authenticate a request before a handler runs.
//!
//! - [`ClientIp`]: the address per-IP limits are keyed on (the one way a handler reads
//!   it; the direct connect path calls [`client_ip`] with the same inputs).
//! - [`Authenticated`]: a Bearer + signed request, verified without I/O.
//! - [`SignedBody`]: a signed request whose key is known only once its body is read
//!   (refresh: from the refresh token; app login: from the app id).
//! - [`bearer`]: the `Authorization: Bearer` value (public and admin listeners).
//!
//! Failures before authentication are charged to the client IP's failure quota
//! ([`charge_failure`]): over it, the answer becomes 429.

use std::net::{IpAddr, SocketAddr};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, OriginalUri, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use serde::de::DeserializeOwned;

use super::body::{parse_json, read_limited};
use super::client_ip::{client_ip, PeerAddr};
use super::error::ApiError;
use crate::auth::signing::{check_fresh, check_signature, parse_headers, SignedHeaders};
use crate::auth::tokens::Claims;
use crate::clock::unix_now;
use crate::limits::Limit;
use crate::state::AppState;

/// Charges a failure that happened before authentication to the IP's failure quota.
/// Over the quota, the answer becomes 429 instead of the error itself.
pub(crate) fn charge_failure(state: &AppState, ip: IpAddr, err: ApiError) -> ApiError {
    if !err.is_unauthenticated_failure() {
        return err;
    }
    match state.limits.check(Limit::FailIp(ip)) {
        Ok(()) => err,
        Err(retry) => retry.into(),
    }
}

/// The client's address as limits see it: the TCP peer, or behind a trusted proxy the
/// right-most untrusted `X-Forwarded-For` hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientIp(pub(crate) IpAddr);

impl ClientIp {
    fn of(parts: &Parts, state: &AppState) -> ClientIp {
        let peer = parts
            .extensions
            .get::<PeerAddr>()
            .map(|p| p.0)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        ClientIp(client_ip(
            peer,
            &parts.headers,
            &state.config.trusted_proxies,
        ))
    }
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp::of(parts, state))
    }
}

/// The Bearer token of a request (the scheme name is case-insensitive, RFC 9110).
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::TokenInvalid)?;
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::TokenInvalid)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(ApiError::TokenInvalid);
    }
    Ok(token)
}

/// The path as the client sent it (what it signed), before any router nesting.
fn original_path(parts: &Parts) -> &str {
    parts
        .extensions
        .get::<OriginalUri>()
        .map_or(parts.uri.path(), |u| u.0.path())
}

/// Checks form and freshness of the `X-TG-*` headers; the signature comes later, once
/// the key is known.
fn signed_headers(headers: &HeaderMap, state: &AppState) -> Result<SignedHeaders, ApiError> {
    let signed = parse_headers(headers)?;
    check_fresh(&signed, unix_now(), state.config.ttl.skew)?;
    // Nonces the store may have forgotten (the durable embedded store after a restart):
    // a request signed before the store opened could be a replay, so it is stale.
    if state
        .store
        .replay_floor()
        .is_some_and(|floor| signed.timestamp <= floor)
    {
        return Err(ApiError::StaleRequest);
    }
    Ok(signed)
}

/// A signed request whose key is known only once its body is read. Extracting it
/// checks the body size, the `X-TG-*` form and freshness and parses the JSON;
/// [`SignedBody::verify`] then checks the signature.
pub(crate) struct SignedBody<T> {
    /// The client IP that limits are keyed on.
    pub(crate) ip: IpAddr,
    method: Method,
    path: String,
    /// The request headers.
    pub(crate) headers: HeaderMap,
    /// The `X-TG-*` headers, well formed and fresh, not yet verified.
    pub(crate) signed: SignedHeaders,
    body: Bytes,
    /// The parsed body.
    pub(crate) json: T,
}

impl<T> SignedBody<T> {
    /// Checks the signature with `key` (constant time); a failure is charged.
    pub(crate) fn verify(&self, state: &AppState, key: &[u8]) -> Result<(), ApiError> {
        check_signature(
            key,
            self.method.as_str(),
            &self.path,
            &self.signed,
            &self.body,
        )
        .map_err(|e| self.failed(state, e.into()))
    }

    /// Charges a failure to the IP's failure quota (see [`charge_failure`]).
    pub(crate) fn failed(&self, state: &AppState, err: ApiError) -> ApiError {
        charge_failure(state, self.ip, err)
    }
}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for SignedBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let ClientIp(ip) = ClientIp::of(&parts, state);
        let charge = |e| charge_failure(state, ip, e);
        let body = read_limited(&parts.headers, body).await.map_err(charge)?;
        let signed = signed_headers(&parts.headers, state).map_err(charge)?;
        let json = parse_json(&body).map_err(charge)?;
        Ok(SignedBody {
            ip,
            path: original_path(&parts).to_owned(),
            method: parts.method,
            headers: parts.headers,
            signed,
            body,
            json,
        })
    }
}

/// A Bearer + signed request whose signature and token verified. As an extractor it
/// runs [`authenticate`] and charges failures to the client IP's failure quota.
pub(crate) struct Authenticated {
    /// The access token's claims.
    pub(crate) claims: Claims,
    /// The verified `X-TG-*` headers.
    pub(crate) signed: SignedHeaders,
    /// The raw body.
    pub(crate) body: Bytes,
}

impl FromRequest<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let ClientIp(ip) = ClientIp::of(&parts, state);
        authenticate(state, &parts, body)
            .await
            .map_err(|e| charge_failure(state, ip, e))
    }
}

/// Authenticates a Bearer + signed request, cheapest check first: body size, header
/// form, freshness, access token (stateless), signature with the session's derived key
/// (constant time), device binding, user blocked in the users file. No store round trip.
async fn authenticate(
    state: &AppState,
    parts: &Parts,
    body: Body,
) -> Result<Authenticated, ApiError> {
    let headers = &parts.headers;
    let body = read_limited(headers, body).await?;
    let signed = signed_headers(headers, state)?;
    let sessions = &state.sessions;
    let claims = sessions.verify_access(bearer(headers)?)?;
    let key = sessions.signing_key(&claims.sid);
    check_signature(
        &key,
        parts.method.as_str(),
        original_path(parts),
        &signed,
        &body,
    )?;
    if signed.device_id != claims.did {
        return Err(ApiError::DeviceMismatch);
    }
    if sessions.is_blocked_in_file(&claims.sub) {
        return Err(ApiError::TokenRevoked);
    }
    Ok(Authenticated {
        claims,
        signed,
        body,
    })
}
