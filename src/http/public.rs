//! The public HTTP API: login, ticket mint, JWKS, health.

use axum::body::Body;
use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ticketgate_sdk::protocol::{LoginRequest, LoginResponse, MintRequest, MintResponse};
use ticketgate_sdk::ClientType;

use super::body::{parse_json, read_limited};
use super::client_ip::{client_ip, PeerAddr};
use super::error::ApiError;
use crate::auth::signing::{check_fresh, check_signature, is_device_id, parse_headers};
use crate::auth::tokens::Claims;
use crate::auth::users::{is_valid_name, PasswordCheck};
use crate::auth::{session, unix_now, unix_now_ms};
use crate::limits::Limit;
use crate::state::AppState;
use crate::store::{MintOutcome, MintTicket, TicketGrant};

/// `POST /v1/login`.
pub async fn login(
    State(state): State<AppState>,
    Extension(peer): Extension<PeerAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<LoginResponse>, ApiError> {
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
    let users = state.users.clone();
    let (name, password) = (req.username.clone(), req.password);
    let verdict = tokio::task::spawn_blocking(move || users.check_password(&name, &password))
        .await
        .map_err(|e| {
            tracing::error!(cause = %e, "password check task failed");
            ApiError::Internal
        })?
        .map_err(|e| {
            tracing::error!(cause = %e, "users file unreadable");
            ApiError::Internal
        })?;
    if verdict != PasswordCheck::Ok {
        return Err(ApiError::BadCredentials);
    }
    let answer =
        session::open_session(&state, &req.username, &req.device_id, req.client_type).await?;
    Ok(Json(answer))
}

/// The Bearer token of a request.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::TokenInvalid)
}

/// A Bearer + signed request whose signature and token verified.
pub struct Authenticated {
    /// The access token's claims.
    pub claims: Claims,
    /// The verified `X-TG-*` headers.
    pub signed: crate::auth::signing::SignedHeaders,
    /// The raw body.
    pub body: axum::body::Bytes,
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
    let signed = parse_headers(headers)?;
    check_fresh(&signed, unix_now(), state.config.ttl.skew)?;
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
    Extension(peer): Extension<PeerAddr>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<MintResponse>), ApiError> {
    let ip = client_ip(peer.0, &headers, &state.config.trusted_proxies);
    let auth = authenticate(&state, &method, uri.path(), &headers, body)
        .await
        .map_err(|e| state.charge_failure(ip, e))?;
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
    metrics::counter!("ticketgate_tickets_minted_total").increment(1);
    Ok((
        StatusCode::CREATED,
        Json(MintResponse {
            ticket,
            expires_in: ttl.as_secs().max(1),
            ws_url: ws_url(&state, &headers),
        }),
    ))
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
