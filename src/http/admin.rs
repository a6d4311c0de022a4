//! The admin API, on its own listener: `Authorization: Bearer <admin key>` on every
//! call; without a configured key every call is refused.

use axum::body::Body;
use axum::extract::Path;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use ticketgate_sdk::ClientType;

use super::body::{parse_json, read_limited};
use crate::hub::{Op, Target};
use crate::sessions::Ended;
use axum::Router;

use super::error::ApiError;
use super::extract::{charge_failure, ClientIp};
use crate::state::AppState;

/// The admin router.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/admin/v1/users/{user_id}/kick", post(kick))
        .route("/admin/v1/users/{user_id}/block", post(block))
        .route("/admin/v1/users/{user_id}/unblock", post(unblock))
        .route("/admin/v1/users/{user_id}/connections", get(connections))
        .route("/admin/v1/connections", get(overview))
        .route("/admin/v1/keys", get(keys))
        .route("/admin/v1/publish", post(publish))
        .route("/admin/v1/introspect", post(introspect))
        .fallback(super::public::not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_admin_key,
        ))
        // After the key guard: the page asks for the key itself.
        .merge(super::pages::admin())
        .with_state(state)
}

/// Refuses a request without the right admin key (constant-time comparison).
/// A wrong key is charged to the IP's failure quota, so guessing is slow (429 past it).
async fn require_admin_key(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    req: Request,
    next: Next,
) -> Response {
    let Some(expected) = state.config.admin_key.as_deref() else {
        return ApiError::AdminUnauthorized.into_response();
    };
    let given = super::extract::bearer(req.headers()).unwrap_or("");
    let digest = |s: &str| crate::auth::secrets::hmac32(b"admin-key-compare", s.as_bytes());
    // Comparing fixed-size digests keeps the comparison constant-time in the key length.
    if !ticketgate_sdk::signing::signatures_equal(&digest(given), &digest(expected)) {
        return charge_failure(&state, ip, ApiError::AdminUnauthorized).into_response();
    }
    next.run(req).await
}

/// `GET /metrics`: every series, with this node's gauges read now.
async fn metrics(State(state): State<AppState>) -> String {
    let limiter_keys = state.limits.sizes();
    crate::metrics::render(&crate::metrics::Sample {
        connections: state.registry.len(),
        sessions: state.registry.index_sizes().1,
        limiter_keys: &limiter_keys,
        hub_age: state.hub.last_message_age(),
    })
}

/// `kick` body; every field optional.
#[derive(Deserialize, Default)]
struct KickRequest {
    #[serde(default)]
    client_type: Option<ClientType>,
    #[serde(default)]
    reason: Option<String>,
}

/// The answer of a kick or block: sessions ended and sockets closed on every node.
fn ended(ended: Ended) -> Json<Value> {
    Json(json!({ "sessions": ended.sessions, "connections": ended.sockets }))
}

/// `POST /admin/v1/users/{user_id}/kick`.
async fn kick(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let req: KickRequest = parse_json(&read_limited(&headers, body).await?)?;
    tracing::info!(user_id = %user_id, reason = req.reason.as_deref().unwrap_or(""), "admin kick");
    let kicked = state.sessions.kick(&user_id, req.client_type, req.reason);
    Ok(ended(kicked.await?))
}

/// `POST /admin/v1/users/{user_id}/block`: the flag (no login, refresh or mint on any
/// node), then a kick of every session.
async fn block(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    tracing::info!(user_id = %user_id, "admin block");
    let Json(mut answer) = ended(state.sessions.block(&user_id).await?);
    answer["blocked"] = json!(true);
    Ok(Json(answer))
}

/// `POST /admin/v1/users/{user_id}/unblock`.
async fn unblock(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.sessions.unblock(&user_id).await?;
    tracing::info!(user_id = %user_id, "admin unblock");
    Ok(Json(json!({ "blocked": false })))
}

/// `GET /admin/v1/users/{user_id}/connections`: the user's sockets on every node.
async fn connections(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let answers = state
        .hub
        .request(Op::Connections {
            user_id: user_id.clone(),
        })
        .await?;
    let mut list: Vec<_> = answers.into_iter().flat_map(|a| a.connections).collect();
    list.sort_by(|a, b| (a.connected_at, &a.conn_id).cmp(&(b.connected_at, &b.conn_id)));
    Ok(Json(json!({ "user_id": user_id, "connections": list })))
}

/// `GET /admin/v1/connections`: live sockets on every node, per node and per user.
///
/// ```text
/// {"total": 3,
///  "nodes": [{"node_id": "node-a", "connections": 2}, {"node_id": "node-b", "connections": 1}],
///  "users": [{"user_id": "alice", "connections": 2, "nodes": {"node-a": 1, "node-b": 1}}, ...],
///  "users_truncated": false}
/// ```
///
/// Each node lists at most [`crate::hub::OVERVIEW_USERS`] users (those with the most
/// sockets there); `users_truncated` says that some node left users out. Nodes that
/// do not answer in time are missing from `nodes`.
async fn overview(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    use std::collections::BTreeMap;
    let mut answers = state.hub.request(Op::Overview).await?;
    answers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let total: u64 = answers.iter().map(|a| a.count).sum();
    let truncated = answers
        .iter()
        .any(|a| a.users.len() >= crate::hub::OVERVIEW_USERS);
    let mut users: BTreeMap<String, (u64, BTreeMap<String, u64>)> = BTreeMap::new();
    for answer in &answers {
        for user in &answer.users {
            let entry = users.entry(user.user_id.clone()).or_default();
            entry.0 += user.connections;
            entry.1.insert(answer.node_id.clone(), user.connections);
        }
    }
    let mut users: Vec<_> = users.into_iter().collect();
    users.sort_by(|(a, (na, _)), (b, (nb, _))| (nb, a).cmp(&(na, b)));
    let nodes: Vec<Value> = answers
        .iter()
        .map(|a| json!({ "node_id": a.node_id, "connections": a.count }))
        .collect();
    let users: Vec<Value> = users
        .into_iter()
        .map(|(user_id, (connections, nodes))| {
            json!({ "user_id": user_id, "connections": connections, "nodes": nodes })
        })
        .collect();
    Ok(Json(json!({
        "total": total, "nodes": nodes, "users": users, "users_truncated": truncated,
    })))
}

/// `GET /admin/v1/keys`: the access-token keys of this node's ring, oldest first.
/// `signing` names the key that signs new tokens; every listed key verifies. A key
/// newer than the signer is `activating`: it verifies already and signs once it is
/// old enough for every node to have loaded it.
async fn keys(State(state): State<AppState>) -> Json<Value> {
    let ring = state.keys.current();
    let signing = ring.current_kid().to_owned();
    let mut past_signer = false;
    let keys: Vec<Value> = ring
        .verifying_kids()
        .into_iter()
        .map(|(kid, created_at)| {
            let status = if kid == signing {
                past_signer = true;
                "signing"
            } else if past_signer {
                "activating"
            } else {
                "verifying"
            };
            json!({ "kid": kid, "created_at": created_at, "status": status, "verifies": true })
        })
        .collect();
    Json(json!({ "signing": signing, "keys": keys }))
}

/// `publish` body: exactly one of `user_id` and `session_id`.
#[derive(Deserialize)]
struct PublishRequest {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    session_id: Option<String>,
    topic: String,
    #[serde(default)]
    data: Value,
}

/// `POST /admin/v1/publish`: a push to a user's (or session's) sockets on every node.
async fn publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let req: PublishRequest = parse_json(&read_limited(&headers, body).await?)?;
    let target = match (req.user_id, req.session_id) {
        (Some(u), None) => Target::User(u),
        (None, Some(s)) => Target::Session(s),
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of user_id and session_id".into(),
            ))
        }
    };
    let pushed = state.pusher.push(target, &req.topic, req.data).await?;
    let (id, delivered) = (pushed.id, pushed.delivered);
    Ok(Json(json!({ "id": id, "delivered": delivered })))
}

/// `introspect` body.
#[derive(Deserialize)]
struct IntrospectRequest {
    token: String,
}

/// `POST /admin/v1/introspect` (RFC 7662 style): is this access or refresh token
/// active right now (not expired, not revoked, user not blocked)?
async fn introspect(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let req: IntrospectRequest = parse_json(&read_limited(&headers, body).await?)?;
    let Some(active) = state.sessions.introspect(&req.token).await? else {
        return Ok(Json(json!({ "active": false })));
    };
    Ok(Json(json!({
        "active": true, "token_type": active.token_type, "sub": active.user_id,
        "sid": active.session_id, "did": active.device_id, "ctp": active.client_type,
        "exp": active.expires_at,
    })))
}
