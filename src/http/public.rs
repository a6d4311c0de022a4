//! The public HTTP API: login, ticket mint, JWKS, health.

use axum::body::Body;
use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ticketgate_sdk::protocol::{
    LoginRequest, LoginResponse, MintRequest, MintResponse, HEADER_NEW_TOKEN,
};
use ticketgate_sdk::ClientType;

use super::body::{parse_json, read_limited};
use super::client_ip::{client_ip, PeerAddr};
use super::error::ApiError;
use crate::auth::signing::{
    check_fresh, check_signature, is_device_id, parse_headers, SignedHeaders,
};
use crate::auth::tokens::Claims;
use crate::auth::users::{is_valid_name, PasswordCheck};
use crate::auth::{session, unix_now, unix_now_ms};
use crate::limits::Limit;
use crate::state::AppState;
use crate::store::{MintOutcome, MintTicket, RenewAccess, RenewOutcome, TicketGrant};

/// `POST /v1/login`.
pub async fn login(
    State(state): State<AppState>,
    Extension(peer): Extension<PeerAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ip = client_ip(peer.0, &headers, &state.config.trusted_proxies);
    state.limits.check(Limit::LoginIp(ip))?;
    let bytes = read_limited(&headers, body).await?;
    let req: LoginRequest = parse_json(&bytes)?;
    if !is_device_id(&req.device_id) {
        return Err(ApiError::BadRequest("device_id must be a UUID".into()));
    }
    if req.client_type == ClientType::Api {
        return Err(ApiError::BadRequest(
            "API apps log in with POST /v1/app/login".into(),
        ));
    }
    state.limits.check(Limit::LoginDevice(&req.device_id))?;
    // Names that cannot exist still cost a password check, so they cannot be told apart.
    if is_valid_name(&req.username) {
        state.limits.check(Limit::LoginUser(&req.username))?;
    }
    let verdict = state
        .users
        .verify(&req.username, req.password)
        .await
        .map_err(|e| {
            tracing::error!(cause = %e, "password check failed");
            ApiError::Internal
        })?;
    if verdict != PasswordCheck::Ok || state.store.is_blocked(&req.username).await? {
        return Err(ApiError::BadCredentials);
    }
    let answer =
        session::open_session(&state, &req.username, &req.device_id, req.client_type).await?;
    Ok(with_refresh_cookie(
        answer,
        req.client_type,
        req.refresh_in_cookie,
    ))
}

/// The refresh cookie of web clients in cookie mode.
const REFRESH_COOKIE: &str = "tg_refresh";

/// Answers a login-shaped body; in cookie mode (web only) the refresh token moves from
/// the body into an `HttpOnly; Secure; SameSite=Strict` cookie scoped to `/v1/token`.
fn with_refresh_cookie(
    mut answer: LoginResponse,
    client_type: ClientType,
    cookie_mode: bool,
) -> Response {
    if !(cookie_mode && client_type == ClientType::Web) {
        return Json(answer).into_response();
    }
    let token = answer.refresh_token.take().unwrap_or_default();
    let cookie = format!(
        "{REFRESH_COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/v1/token; Max-Age={}",
        answer.refresh_expires_in
    );
    let mut response = Json(answer).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The refresh cookie's value, if the request carries one.
fn refresh_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == REFRESH_COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Checks form and freshness of the `X-TG-*` headers; the signature comes later, once
/// the key is known.
fn signed_headers(state: &AppState, headers: &HeaderMap) -> Result<SignedHeaders, ApiError> {
    let signed = parse_headers(headers)?;
    check_fresh(&signed, unix_now(), state.config.ttl.skew)?;
    Ok(signed)
}

/// `POST /v1/token/refresh` body.
#[derive(serde::Deserialize)]
pub struct RefreshRequest {
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    refresh_in_cookie: bool,
}

/// `POST /v1/token/refresh`: signed with the session's key; rotates the refresh token.
pub async fn refresh(
    State(state): State<AppState>,
    request: SignedBody<RefreshRequest>,
) -> Result<Response, ApiError> {
    let from_cookie = request.json.refresh_token.is_none();
    let token = request
        .json
        .refresh_token
        .clone()
        .or_else(|| refresh_cookie(&request.headers))
        .ok_or_else(|| {
            request.failed(&state, ApiError::BadRequest("refresh_token missing".into()))
        })?;
    let sid = session::refresh_token_session(&token)
        .ok_or_else(|| request.failed(&state, ApiError::TokenInvalid))?;
    request.verify(&state, &state.secrets.session_signing_key(sid))?;
    // Authenticated from here on. A replayed request must not count as token reuse.
    record_nonce(&state, sid, &request.signed.nonce).await?;
    let refreshed = session::refresh(&state, sid, &request.signed.device_id, &token).await?;
    let cookie_mode = request.json.refresh_in_cookie || from_cookie;
    Ok(with_refresh_cookie(
        refreshed.answer,
        refreshed.client_type,
        cookie_mode,
    ))
}

/// Records a verified request's nonce; a nonce seen before is a replay.
async fn record_nonce(state: &AppState, scope: &str, nonce: &str) -> Result<(), ApiError> {
    let ttl = state.config.ttl.skew * 2;
    if state.store.record_nonce(scope, nonce, ttl).await? {
        Ok(())
    } else {
        Err(ApiError::ReplayedRequest)
    }
}

/// `POST /v1/logout`: Bearer + signed; ends the session everywhere.
pub async fn logout(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<Response, ApiError> {
    record_nonce(&state, &auth.claims.sid, &auth.signed.nonce).await?;
    session::end_sessions(
        &state,
        &auth.claims.sub,
        vec![auth.claims.sid.clone()],
        ticketgate_sdk::protocol::close::REVOKED,
    )
    .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "tg_refresh=; HttpOnly; Secure; SameSite=Strict; Path=/v1/token; Max-Age=0",
        ),
    );
    Ok(response)
}

/// `POST /v1/app/login` body.
#[derive(serde::Deserialize)]
pub struct AppLoginRequest {
    app_id: String,
}

/// `POST /v1/app/login`: signed with the app secret; opens an `api` session.
pub async fn app_login(
    State(state): State<AppState>,
    request: SignedBody<AppLoginRequest>,
) -> Result<Response, ApiError> {
    state.limits.check(Limit::LoginIp(request.ip))?;
    state
        .limits
        .check(Limit::LoginDevice(&request.signed.device_id))?;
    let app_id = &request.json.app_id;
    let secret = state.apps.secret(app_id).map_err(|e| {
        tracing::error!(cause = %e, "apps file unreadable");
        ApiError::Internal
    })?;
    // Unknown apps cost the same HMAC as known ones and get the same answer.
    let key = secret
        .clone()
        .unwrap_or_else(|| b"ticketgate unknown app".to_vec());
    let verified = request.verify(&state, &key);
    if secret.is_none() || verified.is_err() {
        return Err(request.failed(&state, ApiError::BadCredentials));
    }
    let user_id = format!("app:{app_id}");
    record_nonce(&state, &user_id, &request.signed.nonce).await?;
    if session::user_is_blocked(&state, &user_id).await? {
        return Err(ApiError::BadCredentials);
    }
    let answer =
        session::open_session(&state, &user_id, &request.signed.device_id, ClientType::Api).await?;
    Ok(Json(answer).into_response())
}

/// A signed request whose key is known only once its body is read (refresh: from the
/// refresh token; app login: from the app id). Extracting it checks the body size,
/// the `X-TG-*` form and freshness and parses the JSON; [`SignedBody::verify`] then
/// checks the signature. Failures are charged to the client IP's failure quota.
pub struct SignedBody<T> {
    /// The client IP that limits are keyed on.
    pub ip: std::net::IpAddr,
    method: Method,
    path: String,
    /// The request headers.
    pub headers: HeaderMap,
    /// The `X-TG-*` headers, well formed and fresh, not yet verified.
    pub signed: SignedHeaders,
    body: axum::body::Bytes,
    /// The parsed body.
    pub json: T,
}

impl<T> SignedBody<T> {
    /// Checks the signature with `key` (constant time).
    pub fn verify(&self, state: &AppState, key: &[u8]) -> Result<(), ApiError> {
        check_signature(
            key,
            self.method.as_str(),
            &self.path,
            &self.signed,
            &self.body,
        )
        .map_err(|e| self.failed(state, e.into()))
    }

    /// Charges a failure to the IP's failure quota (see [`AppState::charge_failure`]).
    pub fn failed(&self, state: &AppState, err: ApiError) -> ApiError {
        state.charge_failure(self.ip, err)
    }
}

impl<T: serde::de::DeserializeOwned + Send> axum::extract::FromRequest<AppState> for SignedBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let ip = request_ip(&parts, state);
        let charge = |e| state.charge_failure(ip, e);
        let body = read_limited(&parts.headers, body).await.map_err(charge)?;
        let signed = signed_headers(state, &parts.headers).map_err(charge)?;
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

/// The client IP of a request's parts.
fn request_ip(parts: &axum::http::request::Parts, state: &AppState) -> std::net::IpAddr {
    let peer = parts
        .extensions
        .get::<PeerAddr>()
        .map(|p| p.0)
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    client_ip(peer, &parts.headers, &state.config.trusted_proxies)
}

/// The path as the client sent it (what it signed), before any router nesting.
fn original_path(parts: &axum::http::request::Parts) -> &str {
    parts
        .extensions
        .get::<OriginalUri>()
        .map_or(parts.uri.path(), |u| u.0.path())
}

/// The Bearer token of a request (the scheme name is case-insensitive, RFC 9110).
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
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

/// A Bearer + signed request whose signature and token verified. As an extractor it
/// runs [`authenticate`] and charges failures to the client IP's failure quota.
pub struct Authenticated {
    /// The access token's claims.
    pub claims: Claims,
    /// The verified `X-TG-*` headers.
    pub signed: SignedHeaders,
    /// The raw body.
    pub body: axum::body::Bytes,
}

impl axum::extract::FromRequest<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let ip = request_ip(&parts, state);
        authenticate(
            state,
            &parts.method,
            original_path(&parts),
            &parts.headers,
            body,
        )
        .await
        .map_err(|e| state.charge_failure(ip, e))
    }
}

/// Authenticates a Bearer + signed request, cheapest check first: body size, header
/// form, freshness, access token (stateless), signature with the session's derived key
/// (constant time), device binding, blocked user. No store round trip.
pub async fn authenticate(
    state: &AppState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Authenticated, ApiError> {
    let body = read_limited(headers, body).await?;
    let signed = signed_headers(state, headers)?;
    let claims = state.keys.verify(bearer(headers)?)?;
    let key = state.secrets.session_signing_key(&claims.sid);
    check_signature(&key, method.as_str(), path, &signed, &body)?;
    if signed.device_id != claims.did {
        return Err(ApiError::DeviceMismatch);
    }
    let blocked = state.users.is_blocked(&claims.sub).map_err(|e| {
        tracing::error!(cause = %e, "users file unreadable");
        ApiError::Internal
    })?;
    if blocked {
        return Err(ApiError::TokenRevoked);
    }
    Ok(Authenticated {
        claims,
        signed,
        body,
    })
}

/// `POST /v1/tickets`.
pub async fn mint(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: Authenticated,
) -> Result<Response, ApiError> {
    let req: MintRequest = parse_json(&auth.body)?;
    if req.scope.as_ref().is_some_and(|s| s.len() > 256) {
        return Err(ApiError::BadRequest("scope longer than 256 bytes".into()));
    }
    let device_id = &auth.signed.device_id;
    state.limits.check(Limit::MintDevice(device_id))?;

    let ttl = state.config.ttl.ticket;
    let expires_at_ms = unix_now_ms() + ttl.as_millis() as i64;
    let (ticket, ticket_id) = state.tickets.mint(&auth.claims.sid, expires_at_ms);
    let grant = TicketGrant {
        device_id: device_id.clone(),
        user_id: auth.claims.sub.clone(),
        client_type: auth.claims.ctp,
        access_expires_at: auth.claims.exp,
    };
    let outcome = state
        .store
        .mint_ticket(&MintTicket {
            session_id: &auth.claims.sid,
            nonce: &auth.signed.nonce,
            nonce_ttl: state.config.ttl.skew * 2,
            ticket_id: &ticket_id,
            grant: &grant,
            ticket_ttl: ttl,
        })
        .await?;
    match outcome {
        MintOutcome::Minted => {}
        MintOutcome::NonceReplayed => return Err(ApiError::ReplayedRequest),
        MintOutcome::SessionGone => return Err(ApiError::TokenRevoked),
    }
    crate::metrics::hot().minted.increment(1);
    let mut response = (
        StatusCode::CREATED,
        Json(MintResponse {
            ticket,
            expires_in: ttl.as_secs().max(1),
            ws_url: ws_url(&state, &headers),
        }),
    )
        .into_response();
    if let Some(token) = sliding_renewal(&state, &auth.claims).await {
        if let Ok(value) = HeaderValue::from_str(&token) {
            response.headers_mut().insert(HEADER_NEW_TOKEN, value);
        }
    }
    Ok(response)
}

/// The renewal window of an access token: remaining ≤ min(5 min, 30 % of lifetime).
pub fn in_renewal_window(state: &AppState, exp: i64, now_ms: i64) -> bool {
    let lifetime = state.config.ttl.access;
    let window = (lifetime * 3 / 10).min(std::time::Duration::from_secs(300));
    exp * 1000 - now_ms <= window.as_millis() as i64
}

/// Sliding renewal at the gateway: inside the renewal window, a fresh access token of
/// the same session, at most once per presented token and within the daily cap. Never
/// fails the call it rides on: any problem just leaves the header out.
async fn sliding_renewal(state: &AppState, claims: &Claims) -> Option<String> {
    let now = unix_now();
    if !in_renewal_window(state, claims.exp, crate::auth::unix_now_ms()) {
        return None;
    }
    let outcome = state
        .store
        .renew_access(&RenewAccess {
            session_id: &claims.sid,
            jti: &claims.jti,
            jti_ttl: std::time::Duration::from_secs((claims.exp - now).max(1) as u64 + 60),
            cap_per_day: state.config.refresh_cap_per_day,
        })
        .await
        .ok()?;
    if outcome != RenewOutcome::Renewed {
        return None;
    }
    session::reissue_access_token(state, claims)
        .ok()
        .map(|(token, _)| token)
}

/// The WebSocket URL clients connect to: from `TICKETGATE_PUBLIC_URL`, else from the
/// request's `Host`.
fn ws_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(base) = &state.config.public_url {
        let base = base.trim_end_matches('/');
        let ws = base
            .strip_prefix("https://")
            .map(|rest| format!("wss://{rest}"))
            .or_else(|| {
                base.strip_prefix("http://")
                    .map(|rest| format!("ws://{rest}"))
            })
            .unwrap_or_else(|| base.to_owned());
        return format!("{ws}/v1/connect");
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| state.config.listen.to_string());
    format!("ws://{host}/v1/connect")
}

/// `GET /.well-known/jwks.json`.
pub async fn jwks(State(state): State<AppState>) -> Response {
    Json(state.keys.jwks()).into_response()
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: the store answers.
pub async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    state.store.ping().await?;
    Ok(Json(serde_json::json!({"status": "ready"})).into_response())
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}
