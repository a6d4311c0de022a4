//! The admin API, on its own listener: `Authorization: Bearer <admin key>` on every
//! call; without a configured key every call is refused.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use super::error::ApiError;
use crate::state::AppState;

/// The admin router.
pub fn router(state: AppState, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
        .fallback(super::public::not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_admin_key,
        ))
        .with_state(state)
}

/// Refuses a request without the right admin key (constant-time comparison).
async fn require_admin_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.config.admin_key.as_deref() else {
        return ApiError::AdminUnauthorized.into_response();
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let digest = |s: &str| crate::auth::secrets::hmac32(b"admin-key-compare", s.as_bytes());
    // Comparing fixed-size digests keeps the comparison constant-time in the key length.
    if !ticketgate_sdk::signing::signatures_equal(&digest(given), &digest(expected)) {
        return ApiError::AdminUnauthorized.into_response();
    }
    next.run(req).await
}
