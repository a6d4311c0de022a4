//! A small upstream for the tests (PROTOCOL §9): it refuses any call whose
//! `X-TG-Upstream-Signature` does not verify or whose timestamp is stale (and counts
//! them), records every event, and answers `message` events by what their `data` asks:
//!
//! ```text
//! {"echo": X}                    200 {"data": {"echo": X, "user_id": <identity's user>}}
//! {"delay_ms": N, "echo": X}     the same, N ms later
//! {"status": S, "error": E}      S {"error": E, "message": "scripted"}
//! {"garbage": true}              200 with a body that is not JSON
//! {"hang": true}                 never answers
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use ticketgate_sdk::protocol::upstream_headers;
use ticketgate_sdk::signing::{signatures_equal, upstream_signature};

/// The secret the test upstream shares with its node.
pub const SECRET: &str = "upstream-test-secret-0123456789";
/// The oldest timestamp the test upstream accepts, in seconds from its clock.
const MAX_AGE: i64 = 60;

#[derive(Default)]
struct Seen {
    events: Vec<Value>,
    refused: usize,
}

/// A running test upstream.
#[derive(Clone)]
pub struct TestUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl TestUpstream {
    /// Starts one on a free loopback port (it lives as long as the test's runtime).
    pub async fn start() -> TestUpstream {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = Router::new()
            .route("/events", post(event))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test upstream");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestUpstream { addr, seen }
    }

    /// The URL a node is configured with.
    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    /// Every verified event so far, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.seen.lock().unwrap().events.clone()
    }

    /// Verified events of kind `kind` (`connect`, `message`, `disconnect`).
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }

    /// Calls refused for a bad signature or timestamp.
    pub fn refused(&self) -> usize {
        self.seen.lock().unwrap().refused
    }
}

/// Verifies the call as an upstream must: timestamp fresh, signature over
/// `"<timestamp>.<raw body>"` equal in constant time.
fn verified(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(timestamp), Some(signature)) = (
        header(upstream_headers::TIMESTAMP),
        header(upstream_headers::SIGNATURE),
    ) else {
        return false;
    };
    let Ok(timestamp) = timestamp.parse::<i64>() else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if (now - timestamp).abs() > MAX_AGE {
        return false;
    }
    let expected = upstream_signature(SECRET.as_bytes(), timestamp, body);
    signatures_equal(expected.as_bytes(), signature.as_bytes())
}

async fn event(State(seen): State<Arc<Mutex<Seen>>>, headers: HeaderMap, body: Bytes) -> Response {
    if !verified(&headers, &body) {
        seen.lock().unwrap().refused += 1;
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    seen.lock().unwrap().events.push(event.clone());
    if event["event"] != "message" {
        return StatusCode::NO_CONTENT.into_response();
    }
    let data = &event["data"];
    if data["hang"] == true {
        std::future::pending::<()>().await;
    }
    if let Some(ms) = data["delay_ms"].as_u64() {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if data["garbage"] == true {
        return (StatusCode::OK, "this is not json").into_response();
    }
    if let Some(status) = data["status"].as_u64() {
        let status = StatusCode::from_u16(status as u16).expect("a scripted status");
        let body = json!({ "error": data["error"], "message": "scripted" });
        return (status, axum::Json(body)).into_response();
    }
    let answer = json!({ "data": { "echo": data["echo"], "user_id": event["user_id"] } });
    axum::Json(answer).into_response()
}
