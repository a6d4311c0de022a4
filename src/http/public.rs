//! The public HTTP API's handlers: login, app login, refresh, logout, ticket mint,
//! JWKS, health. Who is calling is settled by the extractors of [`super::extract`];
//! what a call does is the sessions service's (`crate::sessions`).

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ticketgate_sdk::protocol::{
    LoginRequest, LoginResponse, MintRequest, MintResponse, HEADER_NEW_TOKEN,
};
use ticketgate_sdk::ClientType;

use super::body::{parse_json, read_limited};
use super::cookie;
use super::error::ApiError;
use super::extract::{Authenticated, ClientIp, SignedBody};
use crate::auth::refresh::refresh_token_session;
use crate::auth::signing::is_device_id;
use crate::auth::users::is_valid_name;
use crate::limits::Limit;
use crate::sessions::app_user;
use crate::state::AppState;

/// `POST /v1/login`.
pub(crate) async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
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
    let answer = state
        .sessions
        .login(&req.username, req.password, &req.device_id, req.client_type)
        .await?;
    Ok(login_answer(answer, req.client_type, req.refresh_in_cookie))
}

/// Answers a login-shaped body, never cached; in cookie mode (web only) the refresh
/// token moves from the body into the refresh cookie ([`cookie::set`]).
fn login_answer(mut answer: LoginResponse, client_type: ClientType, cookie_mode: bool) -> Response {
    let cookie = refresh_into_cookie(&mut answer, client_type, cookie_mode);
    let mut response = no_store(Json(answer).into_response());
    if let Some(value) = cookie {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// In cookie mode, and for `web` clients only, takes the refresh token out of a login
/// answer and returns the `Set-Cookie` value that carries it instead (PROTOCOL §3).
pub(super) fn refresh_into_cookie(
    answer: &mut LoginResponse,
    client_type: ClientType,
    cookie_mode: bool,
) -> Option<HeaderValue> {
    if !cookie_mode || client_type != ClientType::Web {
        return None;
    }
    let token = answer.refresh_token.take().unwrap_or_default();
    cookie::set(&token, answer.refresh_expires_in)
}

/// Marks an answer that carries a token, a ticket or a key as never to be cached
/// (RFC 6749 §5.1; PROTOCOL §8 "Caps").
pub(super) fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `POST /v1/token/refresh` body.
#[derive(serde::Deserialize)]
pub(crate) struct RefreshRequest {
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    refresh_in_cookie: bool,
}

/// `POST /v1/token/refresh`: signed with the session's key; rotates the refresh token.
pub(crate) async fn refresh(
    State(state): State<AppState>,
    request: SignedBody<RefreshRequest>,
) -> Result<Response, ApiError> {
    let from_cookie = request.json.refresh_token.is_none();
    let token = request
        .json
        .refresh_token
        .clone()
        .or_else(|| cookie::read(&request.headers))
        .ok_or_else(|| {
            request.failed(&state, ApiError::BadRequest("refresh_token missing".into()))
        })?;
    let sid = refresh_token_session(&token)
        .ok_or_else(|| request.failed(&state, ApiError::TokenInvalid))?;
    request.verify(&state, &state.sessions.signing_key(sid))?;
    // Authenticated from here on: the session's own quota.
    state.limits.check(Limit::Session(sid))?;
    let refreshed = state
        .sessions
        .refresh(
            sid,
            &request.signed.device_id,
            &token,
            &request.signed.nonce,
        )
        .await?;
    let cookie_mode = request.json.refresh_in_cookie || from_cookie;
    Ok(login_answer(
        refreshed.answer,
        refreshed.client_type,
        cookie_mode,
    ))
}

/// `POST /v1/logout`: Bearer + signed; ends the session everywhere.
pub(crate) async fn logout(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<Response, ApiError> {
    state.limits.check(Limit::Session(&auth.claims.sid))?;
    state
        .sessions
        .logout(&auth.claims, &auth.signed.nonce)
        .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie::clear());
    Ok(response)
}

/// `POST /v1/app/login` body.
#[derive(serde::Deserialize)]
pub(crate) struct AppLoginRequest {
    app_id: String,
}

/// `POST /v1/app/login`: signed with the app secret; opens an `api` session.
pub(crate) async fn app_login(
    State(state): State<AppState>,
    request: SignedBody<AppLoginRequest>,
) -> Result<Response, ApiError> {
    state.limits.check(Limit::LoginIp(request.ip))?;
    state
        .limits
        .check(Limit::LoginDevice(&request.signed.device_id))?;
    let app_id = &request.json.app_id;
    let secret = state.sessions.app_secret(app_id);
    // Unknown apps cost the same HMAC as known ones and get the same answer.
    let key = secret
        .clone()
        .unwrap_or_else(|| b"ticketgate unknown app".to_vec());
    let verified = request.verify(&state, &key);
    if secret.is_none() || verified.is_err() {
        return Err(request.failed(&state, ApiError::BadCredentials));
    }
    state
        .sessions
        .record_nonce(&app_user(app_id), &request.signed.nonce)
        .await?;
    let answer = state
        .sessions
        .app_login(app_id, &request.signed.device_id)
        .await?;
    Ok(login_answer(answer, ClientType::Api, false))
}

/// `POST /v1/tickets`.
pub(crate) async fn mint(
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
    let minted = state
        .sessions
        .mint_ticket(&auth.claims, device_id, &auth.signed.nonce)
        .await?;
    let mut response = no_store(
        (
            StatusCode::CREATED,
            Json(MintResponse {
                ticket: minted.ticket,
                expires_in: minted.expires_in,
                ws_url: ws_url(&state, &headers),
            }),
        )
            .into_response(),
    );
    if let Some(token) = state.sessions.renew_access(&auth.claims).await {
        if let Ok(value) = HeaderValue::from_str(&token) {
            response.headers_mut().insert(HEADER_NEW_TOKEN, value);
        }
    }
    Ok(response)
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
pub(crate) async fn jwks(State(state): State<AppState>) -> Response {
    Json(state.keys.jwks()).into_response()
}

/// `GET /healthz`: the process is up.
pub(crate) async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: the store answers.
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    state.store.ping().await?;
    Ok(Json(serde_json::json!({"status": "ready"})).into_response())
}

/// Any other path.
pub(crate) async fn not_found() -> ApiError {
    ApiError::NotFound
}
