//! The one place where errors become HTTP statuses and protocol error codes.
//!
//! Handlers return [`ApiError`]; its `IntoResponse` sends `{"error","message"}` with the
//! protocol's status and never internal details (those are logged where they happen).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ticketgate_sdk::protocol::ErrorBody;
use ticketgate_sdk::ErrorCode;

use crate::auth::signing::SigningError;
use crate::auth::ticket::TicketError;
use crate::auth::tokens::TokenError;
use crate::metrics::Outcome;
use crate::sessions::SessionError;
use crate::store::StoreError;
use crate::ws::connection::Refusal;

/// Every error a public or admin call can answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// Malformed input; the text says what (no secrets in it).
    #[error("{0}")]
    BadRequest(String),
    /// Unknown user, wrong password or blocked user at login.
    #[error("unknown user or wrong password")]
    BadCredentials,
    /// The request signature does not verify.
    #[error("request signature does not verify")]
    BadSignature,
    /// Timestamp outside the allowed skew.
    #[error("request timestamp outside the allowed clock skew")]
    StaleRequest,
    /// Nonce seen before.
    #[error("nonce already used")]
    ReplayedRequest,
    /// Device header differs from the session's or the ticket's device.
    #[error("device does not match the session")]
    DeviceMismatch,
    /// Access token past `exp`.
    #[error("access token expired")]
    TokenExpired,
    /// Access token not valid.
    #[error("access token invalid")]
    TokenInvalid,
    /// Session ended (logout, kick, block, replaced) or user blocked.
    #[error("session revoked")]
    TokenRevoked,
    /// A used refresh token came back: the session is revoked.
    #[error("refresh token reused; the session is revoked, log in again")]
    RefreshReused,
    /// The daily refresh cap is reached.
    #[error("daily refresh limit reached; log in again")]
    RefreshLimit,
    /// Ticket unknown, expired, forged or used.
    #[error("ticket invalid")]
    TicketInvalid,
    /// Over a quota.
    #[error("too many requests")]
    RateLimited {
        /// When to retry.
        retry_after: Duration,
    },
    /// A cap on sockets per session or user, or on sessions per API app, is reached.
    #[error("too many connections: a cap on sockets or sessions is reached")]
    TooManyConnections {
        /// A hint for when to try again.
        retry_after: Duration,
    },
    /// The store does not answer.
    #[error("store unavailable")]
    StoreUnavailable,
    /// `max_connections` reached.
    #[error("server busy")]
    ServerBusy,
    /// No such route or object.
    #[error("not found")]
    NotFound,
    /// The QR login is unknown, expired, rotated or used (410); a rotated id's owner
    /// learns the id that replaced it.
    #[error("QR code expired or unknown")]
    QrExpired(Option<crate::sessions::qr::NextQr>),
    /// A QR poll came sooner than the poll interval (429, with `Retry-After`).
    #[error("polling too fast; slow down")]
    SlowDown {
        /// When to poll again.
        retry_after: Duration,
    },
    /// Body over 64 KiB.
    #[error("request body too large")]
    PayloadTooLarge,
    /// `Origin` outside the allow list.
    #[error("origin not allowed")]
    OriginForbidden,
    /// Wrong `Sec-WebSocket-Version`: 426 with `Sec-WebSocket-Version: 13`.
    #[error("unsupported WebSocket version; use 13")]
    UpgradeRequired,
    /// Missing or wrong admin key.
    #[error("admin key missing or wrong")]
    AdminUnauthorized,
    /// A bug or an unexpected condition; details are in the log.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// The protocol code and HTTP status.
    pub(crate) fn code_and_status(&self) -> (ErrorCode, StatusCode) {
        use ApiError::*;
        match self {
            BadRequest(_) | UpgradeRequired => (
                ErrorCode::BadRequest,
                if matches!(self, UpgradeRequired) {
                    StatusCode::UPGRADE_REQUIRED
                } else {
                    StatusCode::BAD_REQUEST
                },
            ),
            BadCredentials => (ErrorCode::BadCredentials, StatusCode::UNAUTHORIZED),
            BadSignature => (ErrorCode::BadSignature, StatusCode::UNAUTHORIZED),
            StaleRequest => (ErrorCode::StaleRequest, StatusCode::UNAUTHORIZED),
            ReplayedRequest => (ErrorCode::ReplayedRequest, StatusCode::UNAUTHORIZED),
            DeviceMismatch => (ErrorCode::DeviceMismatch, StatusCode::FORBIDDEN),
            TokenExpired => (ErrorCode::TokenExpired, StatusCode::UNAUTHORIZED),
            TokenInvalid | AdminUnauthorized => (ErrorCode::TokenInvalid, StatusCode::UNAUTHORIZED),
            TokenRevoked => (ErrorCode::TokenRevoked, StatusCode::UNAUTHORIZED),
            TicketInvalid => (ErrorCode::TicketInvalid, StatusCode::UNAUTHORIZED),
            RefreshReused => (ErrorCode::RefreshReused, StatusCode::UNAUTHORIZED),
            RefreshLimit => (ErrorCode::RefreshLimit, StatusCode::UNAUTHORIZED),
            RateLimited { .. } => (ErrorCode::RateLimited, StatusCode::TOO_MANY_REQUESTS),
            TooManyConnections { .. } => {
                (ErrorCode::TooManyConnections, StatusCode::TOO_MANY_REQUESTS)
            }
            StoreUnavailable => (ErrorCode::StoreUnavailable, StatusCode::SERVICE_UNAVAILABLE),
            ServerBusy => (ErrorCode::ServerBusy, StatusCode::SERVICE_UNAVAILABLE),
            NotFound => (ErrorCode::NotFound, StatusCode::NOT_FOUND),
            QrExpired(_) => (ErrorCode::QrExpired, StatusCode::GONE),
            SlowDown { .. } => (ErrorCode::SlowDown, StatusCode::TOO_MANY_REQUESTS),
            PayloadTooLarge => (ErrorCode::PayloadTooLarge, StatusCode::PAYLOAD_TOO_LARGE),
            OriginForbidden => (ErrorCode::OriginForbidden, StatusCode::FORBIDDEN),
            Internal => (ErrorCode::Internal, StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    /// The refusal a socket sends as an `error` frame for this error: the same code and
    /// text an HTTP answer would carry.
    pub(crate) fn refusal(&self) -> Refusal {
        let code = self.code_and_status().0;
        crate::metrics::hot().refused(code);
        Refusal {
            code,
            message: self.to_string(),
        }
    }

    /// True for failures that happen before the caller proved anything (bad form,
    /// bad signature, forged ticket...): these are charged to the IP's failure quota.
    pub(crate) fn is_unauthenticated_failure(&self) -> bool {
        use ApiError::*;
        matches!(
            self,
            BadRequest(_)
                | AdminUnauthorized
                | BadCredentials
                | BadSignature
                | StaleRequest
                | TokenExpired
                | TokenInvalid
                | TicketInvalid
                | PayloadTooLarge
                | QrExpired(None)
        )
    }

    /// How a call that failed with this error ended, for the metrics.
    pub(crate) fn outcome(&self) -> Outcome {
        Outcome::of_status(self.code_and_status().1.as_u16())
    }

    /// The answer, not counted in `ticketgate_refusals_total`: for an answer built once
    /// and sent many times (the connection cap's), which counts each sending itself.
    pub(crate) fn uncounted_response(self) -> Response {
        let (code, status) = self.code_and_status();
        let body = ErrorBody {
            error: code.as_str().to_owned(),
            message: self.to_string(),
        };
        let mut response = match &self {
            // 410 for a rotated QR: the error body plus the id that replaced it.
            ApiError::QrExpired(Some(next)) => {
                let body = serde_json::json!({
                    "error": body.error,
                    "message": body.message,
                    "next_qr_id": next.qr_id,
                    "expires_in": next.expires_in,
                    "rotate_in": next.rotate_in,
                });
                (status, axum::Json(body)).into_response()
            }
            _ => (status, axum::Json(body)).into_response(),
        };
        let headers = response.headers_mut();
        match self {
            ApiError::RateLimited { retry_after }
            | ApiError::SlowDown { retry_after }
            | ApiError::TooManyConnections { retry_after } => {
                headers.insert(
                    header::RETRY_AFTER,
                    // Whole seconds, rounded up, never 0.
                    HeaderValue::from(
                        (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1),
                    ),
                );
            }
            // A busy node (connection cap, login queue) is busy for a moment.
            ApiError::ServerBusy => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            ApiError::UpgradeRequired => {
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            ApiError::AdminUnauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        crate::metrics::hot().refused(self.code_and_status().0);
        self.uncounted_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        tracing::warn!(cause = %err, "store call failed");
        ApiError::StoreUnavailable
    }
}

impl From<SessionError> for ApiError {
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::BadCredentials => ApiError::BadCredentials,
            SessionError::Revoked => ApiError::TokenRevoked,
            SessionError::RefreshReused => ApiError::RefreshReused,
            SessionError::RefreshLimit => ApiError::RefreshLimit,
            SessionError::DeviceMismatch => ApiError::DeviceMismatch,
            SessionError::Replayed => ApiError::ReplayedRequest,
            SessionError::Busy => ApiError::ServerBusy,
            SessionError::TooManySessions => ApiError::TooManyConnections {
                retry_after: crate::config::CAP_RETRY_AFTER,
            },
            SessionError::QrExpired => ApiError::QrExpired(None),
            SessionError::QrRotated {
                next_qr_id,
                expires_in,
                rotate_in,
            } => ApiError::QrExpired(Some(crate::sessions::qr::NextQr {
                qr_id: next_qr_id,
                expires_in,
                rotate_in,
            })),
            SessionError::SlowDown(wait) => ApiError::SlowDown { retry_after: wait },
            SessionError::QrNeedsSession => ApiError::TokenInvalid,
            SessionError::QrRefused(why) => ApiError::BadRequest(why.to_owned()),
            SessionError::Store(e) => e.into(),
            // The one place these are logged: the client only learns "internal".
            SessionError::Credentials(_) | SessionError::Signing(_) => {
                tracing::error!(cause = %err, "session operation failed");
                ApiError::Internal
            }
        }
    }
}

impl From<SigningError> for ApiError {
    fn from(err: SigningError) -> Self {
        match err {
            SigningError::BadHeader(name) => {
                ApiError::BadRequest(format!("header {name} missing or malformed"))
            }
            SigningError::Stale => ApiError::StaleRequest,
            SigningError::BadSignature => ApiError::BadSignature,
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::Expired => ApiError::TokenExpired,
            TokenError::Invalid => ApiError::TokenInvalid,
        }
    }
}

impl From<TicketError> for ApiError {
    fn from(_: TicketError) -> Self {
        // Forged and expired answer the same: the client learns nothing.
        ApiError::TicketInvalid
    }
}

impl From<crate::limits::RetryAfter> for ApiError {
    fn from(r: crate::limits::RetryAfter) -> Self {
        ApiError::RateLimited { retry_after: r.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_node_says_when_to_retry_and_errors_are_never_cached() {
        let busy = ApiError::from(SessionError::Busy).into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "1");
        assert_eq!(busy.headers()[header::CACHE_CONTROL], "no-store");
    }
}
