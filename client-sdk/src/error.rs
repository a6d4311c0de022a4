//! [`ClientError`]: everything an SDK call can fail with, and how the server's error
//! answers (protocol error bodies, HTTP answers to the WebSocket upgrade) become one.

use std::sync::Arc;

use reqwest::header::{HeaderMap, CONTENT_LENGTH};
use tokio_tungstenite::tungstenite;

use crate::protocol::{ErrorBody, ErrorCode};
use crate::session::EndReason;

/// Longest body text quoted in an error when the answer is not the protocol's JSON.
const MAX_QUOTED_BODY: usize = 200;

/// Everything that can go wrong in a [`Client`](crate::Client) call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the call with a protocol error answer
    /// (`{"error": "<code>", "message": "..."}`).
    #[error("server answered {status} {raw_code}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The parsed error code; `None` when the code is unknown to this SDK or the
        /// body was not the protocol's JSON.
        code: Option<ErrorCode>,
        /// The `error` field as sent; empty when the body was not the protocol's JSON.
        raw_code: String,
        /// The `message` field, or the status text when the body was not JSON.
        message: String,
        /// The `Retry-After` header in seconds, when present (429 answers carry it).
        retry_after: Option<u64>,
    },
    /// The HTTP request failed before an answer arrived (connect, timeout, I/O).
    #[error("HTTP request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The WebSocket connection failed, other than by an HTTP error answer.
    #[error("WebSocket failed: {0}")]
    WebSocket(#[source] tungstenite::Error),
    /// The server answered something the protocol does not allow.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// A URL (the base URL or the ticket's `ws_url`) is not usable.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// The session is over and cannot be renewed: the user (or app) must log in again.
    /// A [`SessionHandle`](crate::SessionHandle) answers every call with this once it
    /// learnt so, without asking the server again.
    #[error("the session has ended ({0}); log in again")]
    SessionEnded(EndReason),
    /// A refresh through a [`SessionHandle`](crate::SessionHandle) failed for a reason
    /// that may pass (network, 429, 503). Every caller that waited for that one refresh
    /// gets the same error; [`ClientError::code`] looks inside.
    #[error("refresh failed: {0}")]
    RefreshFailed(#[source] Arc<ClientError>),
    /// The [`ManagedConnection`](crate::ManagedConnection) has stopped (closed, or ended
    /// for a reason it reported as an event), or the runtime is shutting down.
    #[error("the connection has stopped")]
    Stopped,
}

impl ClientError {
    /// The protocol error code, when the server sent a known one.
    ///
    /// ```no_run
    /// # async fn run(client: ticketgate_sdk::Client) {
    /// use ticketgate_sdk::{ClientType, ErrorCode};
    ///
    /// match client.login("alice", "wrong", ClientType::Web).await {
    ///     Err(e) if e.code() == Some(ErrorCode::BadCredentials) => eprintln!("wrong password"),
    ///     Err(e) => eprintln!("login failed: {e}"),
    ///     Ok(_) => {}
    /// }
    /// # }
    /// ```
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => *code,
            ClientError::RefreshFailed(inner) => inner.code(),
            _ => None,
        }
    }
}

impl From<tungstenite::Error> for ClientError {
    /// An HTTP answer to the upgrade request is the server refusing admission; it
    /// becomes [`ClientError::Api`]. Everything else is a transport failure.
    fn from(err: tungstenite::Error) -> Self {
        match err {
            tungstenite::Error::Http(response) => {
                let body = response.body().as_deref().unwrap_or_default();
                api_error(response.status().as_u16(), response.headers(), body)
            }
            other => ClientError::WebSocket(other),
        }
    }
}

/// Builds [`ClientError::Api`] from an error answer's status, headers and body.
pub(crate) fn api_error(status: u16, headers: &HeaderMap, body: &[u8]) -> ClientError {
    let retry_after = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    // The WebSocket handshake hands over whatever was read after the headers; keep
    // only the announced body.
    let announced = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let body = match announced {
        Some(len) if len < body.len() => &body[..len],
        _ => body,
    };
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => ClientError::Api {
            status,
            code: ErrorCode::parse(&parsed.error),
            raw_code: parsed.error,
            message: parsed.message,
            retry_after,
        },
        Err(_) => ClientError::Api {
            status,
            code: None,
            raw_code: String::new(),
            message: quoted_body(status, body),
            retry_after,
        },
    }
}

/// A short, printable stand-in for a body that is not the protocol's JSON.
fn quoted_body(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        let reason = reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason());
        return reason.unwrap_or("error").to_owned();
    }
    text.chars()
        .take(MAX_QUOTED_BODY)
        .filter(|c| !c.is_control())
        .collect()
}
