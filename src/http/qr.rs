//! The QR-code login handlers (protocol §5, §8): create, scan, confirm, poll, and the
//! QR image. Who may do what is the sessions service's (`sessions/qr.rs`); here
//! requests are read, authenticated where they carry a Bearer, and answered.
//!
//! ```text
//! POST /v1/qr                     none (login_this) | Bearer + signed (login_other)
//! POST /v1/qr/{qr_id}/scan        Bearer + signed | none (login_other)
//! POST /v1/qr/{qr_id}/confirm     Bearer + signed (the approver)
//! POST /v1/qr/{qr_id}/poll        the poll secret in the body
//! GET  /v1/qr/{qr_id}/qr.svg      none; the image of `ticketgate://qr/<qr_id>`
//! ```

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use ticketgate_sdk::protocol::HEADER_NEW_TOKEN;
use ticketgate_sdk::ClientType;

use super::body::{parse_json, read_limited};
use super::error::ApiError;
use super::extract::{charge_failure, Authenticated, ClientIp};
// QR answers carry secrets, sessions and short-lived ids: never cached.
use super::public::{no_store, refresh_into_cookie};
use crate::auth::signing::is_device_id;
use crate::auth::tokens::Claims;
use crate::limits::Limit;
use crate::sessions::qr::{Polled, QrCreated, QrId};
use crate::state::AppState;
use crate::store::QrMode;

/// What a QR code encodes: this prefix, then the `qr_id`.
pub(crate) const QR_PAYLOAD_PREFIX: &str = "ticketgate://qr/";

/// `POST /v1/qr` body. `login_this` (the default) names the device and client type
/// that will get the session; `login_other` takes them from the Bearer's session.
#[derive(serde::Deserialize)]
struct CreateRequest {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    client_type: Option<ClientType>,
}

/// `POST /v1/qr/{qr_id}/poll` body.
#[derive(serde::Deserialize)]
struct PollRequest {
    poll_secret: String,
    device_id: String,
    client_type: ClientType,
    /// As at login: a `web` device takes its refresh token as the refresh cookie.
    #[serde(default)]
    refresh_in_cookie: bool,
}

/// The `qr_id` of a QR route; a malformed one names nothing: 404.
fn qr_id(path: Result<Path<String>, PathRejection>) -> Result<QrId, ApiError> {
    let Path(raw) = path.map_err(|_| ApiError::NotFound)?;
    QrId::parse(&raw).ok_or(ApiError::NotFound)
}

/// Reads a request's body within the size limit.
async fn read_request(req: Request) -> Result<axum::body::Bytes, ApiError> {
    let (parts, body) = req.into_parts();
    read_limited(&parts.headers, body).await
}

/// Whether a request carries `Authorization` (then it is authenticated in full).
fn has_bearer(req: &Request) -> bool {
    req.headers().contains_key(header::AUTHORIZATION)
}

/// `POST /v1/qr`.
pub(crate) async fn create(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    req: Request,
) -> Result<Response, ApiError> {
    // Every QR can put a prompt on a phone: creation is paced per IP, before anything.
    state.limits.check(Limit::QrIp(ip))?;
    if has_bearer(&req) {
        let auth = Authenticated::from_request(req, &state).await?;
        let body: CreateRequest = parse_json(&auth.body)?;
        if body.mode.as_deref() != Some(QrMode::LoginOther.as_str()) {
            return Err(ApiError::BadRequest(
                "a QR created with a session is {\"mode\":\"login_other\"}".into(),
            ));
        }
        state.limits.check(Limit::Session(&auth.claims.sid))?;
        let created = state
            .sessions
            .create_qr_login_other(&auth.claims, &auth.signed.nonce, ip)
            .await?;
        return Ok(renewed(&state, &auth.claims, created_answer(created)).await);
    }
    let charge = |e| charge_failure(&state, ip, e);
    let bytes = read_request(req).await.map_err(charge)?;
    let body: CreateRequest = parse_json(&bytes).map_err(charge)?;
    match body.mode.as_deref().map(QrMode::parse) {
        None | Some(Some(QrMode::LoginThis)) => {}
        Some(Some(QrMode::LoginOther)) => return Err(charge(ApiError::TokenInvalid)),
        Some(None) => {
            return Err(charge(ApiError::BadRequest(
                "mode must be login_this or login_other".into(),
            )))
        }
    }
    let (Some(device_id), Some(client_type)) = (body.device_id, body.client_type) else {
        return Err(charge(ApiError::BadRequest(
            "login_this needs device_id and client_type".into(),
        )));
    };
    if !is_device_id(&device_id) {
        return Err(charge(ApiError::BadRequest(
            "device_id must be a UUID".into(),
        )));
    }
    let created = state
        .sessions
        .create_qr_login_this(&device_id, client_type, ip)
        .await?;
    Ok(created_answer(created))
}

fn created_answer(created: QrCreated) -> Response {
    let body = json!({
        "qr_id": created.qr_id,
        "poll_secret": created.poll_secret,
        "mode": created.mode.as_str(),
        "expires_in": created.expires_in,
        "rotate_in": created.rotate_in,
    });
    no_store((StatusCode::CREATED, Json(body)).into_response())
}

/// `POST /v1/qr/{qr_id}/scan`.
pub(crate) async fn scan(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    path: Result<Path<String>, PathRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let id = qr_id(path).map_err(|e| charge_failure(&state, ip, e))?;
    if has_bearer(&req) {
        let auth = Authenticated::from_request(req, &state).await?;
        state.limits.check(Limit::Session(&auth.claims.sid))?;
        let scanned = state
            .sessions
            .scan_qr(&id, Some((&auth.claims, &auth.signed.nonce)), ip)
            .await?;
        return Ok(renewed(&state, &auth.claims, scan_answer(scanned)).await);
    }
    // The body of an unauthenticated scan is not used, but it is read within limits.
    read_request(req)
        .await
        .map_err(|e| charge_failure(&state, ip, e))?;
    let scanned = state
        .sessions
        .scan_qr(&id, None, ip)
        .await
        .map_err(|e| charge_failure(&state, ip, e.into()))?;
    Ok(scan_answer(scanned))
}

fn scan_answer(scanned: crate::sessions::qr::Scanned) -> Response {
    let context = scanned.context;
    let mut body = json!({
        "state": "scanned",
        "mode": context.mode.as_str(),
        "client_type": context.client_type.as_str(),
        "ip": context.ip,
        "created_at": context.created_at,
    });
    if let Some(secret) = scanned.poll_secret {
        body["poll_secret"] = json!(secret);
    }
    no_store(Json(body).into_response())
}

/// `POST /v1/qr/{qr_id}/confirm`: Bearer + signed by the approver.
pub(crate) async fn confirm(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    path: Result<Path<String>, PathRejection>,
    auth: Authenticated,
) -> Result<Response, ApiError> {
    let id = qr_id(path).map_err(|e| charge_failure(&state, ip, e))?;
    state.limits.check(Limit::Session(&auth.claims.sid))?;
    state
        .sessions
        .confirm_qr(&id, &auth.claims, &auth.signed.nonce)
        .await?;
    let answer = Json(json!({"state": "confirmed"})).into_response();
    Ok(renewed(&state, &auth.claims, answer).await)
}

/// `POST /v1/qr/{qr_id}/poll`.
pub(crate) async fn poll(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    path: Result<Path<String>, PathRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let charge = |e| charge_failure(&state, ip, e);
    let id = qr_id(path).map_err(charge)?;
    let bytes = read_request(req).await.map_err(charge)?;
    let body: PollRequest = parse_json(&bytes).map_err(charge)?;
    if !is_device_id(&body.device_id) {
        return Err(charge(ApiError::BadRequest(
            "device_id must be a UUID".into(),
        )));
    }
    let polled = state
        .sessions
        .poll_qr(&id, &body.poll_secret, &body.device_id, body.client_type)
        .await
        .map_err(|e| charge(e.into()))?;
    let mut cookie = None;
    let answer = match polled {
        Polled::Pending => json!({"state": "pending"}),
        Polled::Scanned(None) => json!({"state": "scanned"}),
        Polled::Scanned(Some(by)) => json!({
            "state": "scanned",
            "scanner": {"ip": by.ip, "scanned_at": by.scanned_at},
        }),
        Polled::Confirmed => json!({"state": "confirmed"}),
        Polled::LoggedIn(mut login) => {
            cookie = refresh_into_cookie(&mut login, body.client_type, body.refresh_in_cookie);
            let mut answer = serde_json::to_value(*login).map_err(|_| ApiError::Internal)?;
            answer["state"] = json!("confirmed");
            answer
        }
    };
    let mut response = no_store(Json(answer).into_response());
    if let Some(value) = cookie {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// `GET /v1/qr/{qr_id}/qr.svg`: the QR code of `ticketgate://qr/<qr_id>`. The image is
/// a function of the id alone (no store lookup), so it says nothing about whether the
/// id is live, and costs no store command.
pub(crate) async fn image(path: Result<Path<String>, PathRejection>) -> Result<Response, ApiError> {
    let id = qr_id(path)?;
    let payload = format!("{QR_PAYLOAD_PREFIX}{id}");
    let code = qrcode::QrCode::new(payload.as_bytes()).map_err(|e| {
        tracing::error!(cause = %e, "QR code rendering failed");
        ApiError::Internal
    })?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(256, 256)
        .build();
    let mut response = (StatusCode::OK, Body::from(svg)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("image/svg+xml"),
    );
    Ok(no_store(response))
}

/// Adds `X-New-Token` to a Bearer call's answer when the access token is inside its
/// renewal window (protocol §3, sliding renewal).
async fn renewed(state: &AppState, claims: &Claims, mut response: Response) -> Response {
    if let Some(token) = state.sessions.renew_access(claims).await {
        if let Ok(value) = HeaderValue::from_str(&token) {
            response.headers_mut().insert(HEADER_NEW_TOKEN, value);
        }
    }
    response
}
