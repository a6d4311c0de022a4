//! The upstream forwarder (PROTOCOL §9): a [`SessionHandler`] that POSTs every socket
//! event to `TICKETGATE_UPSTREAM_URL` as signed JSON over a kept-alive HTTP/1.1 pool.
//!
//! ```text
//! {"event":"connect",    <identity>}               fire and forget
//! {"event":"message",    <identity>, "id", "data"} 200 {"data"} → reply;
//!                                                  4xx {"error":"[a-z_]{1,64}","message"} → that error;
//!                                                  anything else → upstream_unavailable
//! {"event":"disconnect", <identity>, "code"}       fire and forget
//! X-TG-Upstream-Timestamp: <unix seconds>
//! X-TG-Upstream-Signature: hex HMAC-SHA256(secret, "<timestamp>.<raw body>")
//! ```
//!
//! Every call is bounded by the configured timeout, and the node's calls in flight by
//! a semaphore (`TICKETGATE_UPSTREAM_NODE_INFLIGHT`): a slow upstream holds at most
//! that many requests, a `send` past it is answered `upstream_unavailable` at once and
//! an event past it is dropped (and logged, at most once a second).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use ticketgate_sdk::protocol::upstream_headers;
use ticketgate_sdk::signing::upstream_signature;
use tokio::sync::Semaphore;

use crate::config::UpstreamConfig;
use crate::handler::{Context, Identity, Refused, SessionHandler};

/// Why the forwarder could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No URL or no secret (validation should have refused the configuration).
    #[error("the upstream needs a URL and a secret")]
    NotConfigured,
    /// The URL does not parse.
    #[error("the upstream URL does not parse: {0}")]
    Url(String),
    /// The HTTP client could not be built (e.g. the system's root certificates).
    #[error("the upstream HTTP client could not be built: {0}")]
    Client(String),
}

/// Idle kept-alive connections to the upstream are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// The forwarder: one per node.
pub struct Upstream {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Vec<u8>,
    /// Calls in flight on this node.
    slots: Arc<Semaphore>,
    /// Unix seconds of the last "dropped" warning (rate-limits the log).
    last_warning: AtomicI64,
}

/// An event as sent: its kind, the identity flattened in, and the kind's fields.
#[derive(Serialize)]
struct Event<'a> {
    event: &'static str,
    #[serde(flatten)]
    identity: &'a Identity,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
}

/// `200 {"data": ...}`.
#[derive(Deserialize)]
struct Answer {
    data: serde_json::Value,
}

/// `4xx {"error": ..., "message": ...}`.
#[derive(Deserialize)]
struct Refusal {
    error: String,
    #[serde(default)]
    message: String,
}

impl Upstream {
    /// The forwarder of `config`.
    ///
    /// # Errors
    /// [`UpstreamError`] when the URL or secret is missing or the client cannot be
    /// built.
    pub fn new(config: &UpstreamConfig) -> Result<Upstream, UpstreamError> {
        let (Some(url), Some(secret)) = (&config.url, &config.secret) else {
            return Err(UpstreamError::NotConfigured);
        };
        let url = reqwest::Url::parse(url).map_err(|e| UpstreamError::Url(e.to_string()))?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(config.node_inflight)
            .http1_only()
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| UpstreamError::Client(e.to_string()))?;
        Ok(Upstream {
            client,
            url,
            secret: secret.as_bytes().to_vec(),
            slots: Arc::new(Semaphore::new(config.node_inflight)),
            last_warning: AtomicI64::new(0),
        })
    }

    /// POSTs `event`, signed, and reads the whole answer, all under one of the node's
    /// slots and the client's timeout; `None` when the slots are all taken or the
    /// event does not serialize.
    async fn post(&self, event: &Event<'_>) -> Option<Result<Answered, CallError>> {
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            self.warn_full(event.event);
            return None;
        };
        let body = serde_json::to_vec(event).ok()?;
        let timestamp = crate::clock::unix_now();
        let signature = upstream_signature(&self.secret, timestamp, &body);
        let sent = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(upstream_headers::TIMESTAMP, timestamp.to_string())
            .header(upstream_headers::SIGNATURE, signature)
            .body(body)
            .send()
            .await;
        Some(match sent {
            Ok(response) => read_limited(response).await,
            Err(e) => Err(CallError::Http(e)),
        })
    }

    fn warn_full(&self, event: &str) {
        let now = crate::clock::unix_now();
        if self.last_warning.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(
                event,
                "upstream calls in flight at the node's cap; call refused"
            );
        }
    }

    async fn fire(&self, cx: &Context, event: &'static str, code: Option<u16>) {
        let event = Event {
            event,
            identity: cx.identity(),
            id: None,
            data: None,
            code,
        };
        if let Some(Err(e)) = self.post(&event).await {
            tracing::debug!(event = event.event, cause = %e, "upstream event not delivered");
        }
    }
}

/// The largest answer body read from the upstream: a reply is relayed in one frame,
/// and a node holds up to `node_inflight` answers at once.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// An answer read whole.
struct Answered {
    status: reqwest::StatusCode,
    body: Vec<u8>,
}

/// Why a call got no usable answer.
#[derive(Debug, thiserror::Error)]
enum CallError {
    /// Refused, reset, timed out, or a broken answer.
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    /// An answer body over [`MAX_ANSWER_BYTES`].
    #[error("answer over {MAX_ANSWER_BYTES} bytes")]
    TooBig,
}

/// Reads the whole body, at most [`MAX_ANSWER_BYTES`] (so that a body that never
/// ends counts against the timeout, and the connection goes back to the pool).
async fn read_limited(mut response: reqwest::Response) -> Result<Answered, CallError> {
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(CallError::TooBig);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answered { status, body })
}

/// What an answer to `message` becomes.
fn answer_of(Answered { status, body }: Answered) -> Result<serde_json::Value, Refused> {
    if status == reqwest::StatusCode::OK {
        return serde_json::from_slice::<Answer>(&body)
            .map(|a| a.data)
            .map_err(|_| Refused::unavailable());
    }
    if status.is_client_error() {
        if let Ok(refusal) = serde_json::from_slice::<Refusal>(&body) {
            // `Refused::new` keeps only codes of the form [a-z_]{1,64}.
            return Err(Refused::new(&refusal.error, refusal.message));
        }
    }
    Err(Refused::unavailable())
}

#[async_trait::async_trait]
impl SessionHandler for Upstream {
    async fn connect(&self, cx: &Context) {
        self.fire(cx, "connect", None).await;
    }

    async fn message(
        &self,
        cx: &Context,
        id: &str,
        data: serde_json::Value,
    ) -> Result<serde_json::Value, Refused> {
        let event = Event {
            event: "message",
            identity: cx.identity(),
            id: Some(id),
            data: Some(&data),
            code: None,
        };
        match self.post(&event).await {
            Some(Ok(answered)) => answer_of(answered),
            Some(Err(e)) => {
                tracing::debug!(cause = %e, "upstream call failed");
                Err(Refused::unavailable())
            }
            None => Err(Refused::unavailable()),
        }
    }

    async fn disconnect(&self, cx: &Context, code: u16) {
        self.fire(cx, "disconnect", Some(code)).await;
    }
}
