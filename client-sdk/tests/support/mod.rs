//! Fakes for the SDK tests that need no ticketgate server: an HTTP server that answers
//! by path and records what it got, and a WebSocket server that hands each admitted
//! socket (with the ticket it offered) to the test to drive.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::StreamExt as _;
use ticketgate_sdk::signing::{sign, SignedParts};
use ticketgate_sdk::{Client, Event, ManagedConnection, Session};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub(crate) const DEVICE: &str = "3f1c2a9e-6b7d-4e0f-9a51-2c8d7e4b1f60";
pub(crate) const SESSION_ID: &str = "sid1";
pub(crate) const KEY: [u8; 32] = [9; 32];
/// The access token lifetime of every fake session and answer, seconds.
pub(crate) const LIFETIME: u64 = 900;
/// How long a test waits for something that should happen at once.
pub(crate) const PATIENCE: Duration = Duration::from_secs(5);

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// A session whose access token `at-1` expires `secs` from now (lifetime 900 s: the
/// renewal window is the last 270 s) and whose refresh token is `sid1.r1`.
pub(crate) fn session_expiring_in(secs: u64) -> Session {
    Session {
        access_token: "at-1".to_owned(),
        refresh_token: Some(format!("{SESSION_ID}.r1")),
        signing_key: KEY.to_vec(),
        session_id: SESSION_ID.to_owned(),
        device_id: DEVICE.to_owned(),
        access_expires_at: now() + secs,
        access_lifetime: LIFETIME,
        refresh_expires_at: now() + 86_400,
    }
}

/// A login/refresh answer body of the fake session.
pub(crate) fn login_answer(access_token: &str, refresh_token: &str) -> String {
    serde_json::json!({
        "access_token": access_token,
        "refresh_token": refresh_token,
        "signing_key": URL_SAFE_NO_PAD.encode(KEY),
        "session_id": SESSION_ID,
        "access_expires_in": LIFETIME,
        "refresh_expires_in": 86_400,
    })
    .to_string()
}

/// A client of the fake server, on another device than the session's (a session's
/// calls must carry the session's device).
pub(crate) fn client(http: &FakeHttp) -> Client {
    Client::new(&http.url())
        .expect("client")
        .with_device_id("00000000-0000-4000-8000-000000000000")
}

/// One HTTP request as the fake saw it; header names lower-cased.
#[derive(Debug, Clone)]
pub(crate) struct Captured {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) headers: HashMap<String, String>,
    pub(crate) body: Vec<u8>,
}

impl Captured {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Recomputes the signature from what arrived, as the server will.
    pub(crate) fn assert_signed_with(&self, key: &[u8], device: &str) {
        assert_eq!(self.header("x-tg-device"), Some(device));
        let timestamp: i64 = self
            .header("x-tg-timestamp")
            .expect("X-TG-Timestamp")
            .parse()
            .expect("decimal timestamp");
        let expected = sign(
            key,
            &SignedParts {
                method: &self.method,
                path: &self.path,
                device_id: device,
                timestamp,
                nonce: self.header("x-tg-nonce").expect("X-TG-Nonce"),
                body: &self.body,
            },
        );
        assert_eq!(self.header("x-tg-signature"), Some(expected.as_str()));
    }
}

/// A canned HTTP answer.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    delay: Duration,
}

impl Reply {
    pub(crate) fn json(status: u16, body: impl Into<String>) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    /// A protocol error answer `{"error": code, "message": ...}`.
    pub(crate) fn error(status: u16, code: &str) -> Self {
        Reply::json(
            status,
            serde_json::json!({"error": code, "message": "from the fake"}).to_string(),
        )
    }

    pub(crate) fn no_content() -> Self {
        Reply::json(204, "")
    }

    pub(crate) fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Answers only after `delay`, so that concurrent callers pile up meanwhile.
    pub(crate) fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} Fake\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.body.len()
        );
        if !self.body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        head.push_str(&self.body);
        head.into_bytes()
    }
}

type Handler = dyn Fn(&Captured) -> Reply + Send + Sync;

/// An HTTP/1.1 server on `127.0.0.1:0` that answers every request with
/// `handler(request)` and records the requests, in arrival order.
pub(crate) struct FakeHttp {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Captured>>>,
    task: JoinHandle<()>,
}

impl FakeHttp {
    pub(crate) async fn start(
        handler: impl Fn(&Captured) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let recorded = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = Arc::clone(&handler);
                let recorded = Arc::clone(&recorded);
                tokio::spawn(serve_one(stream, handler, recorded));
            }
        });
        FakeHttp {
            addr,
            requests,
            task,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn requests_to(&self, path: &str) -> Vec<Captured> {
        let requests = self.requests.lock().expect("lock");
        requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    pub(crate) fn count(&self, path: &str) -> usize {
        self.requests_to(path).len()
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_one(
    mut stream: TcpStream,
    handler: Arc<Handler>,
    recorded: Arc<Mutex<Vec<Captured>>>,
) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let reply = handler(&request);
    recorded.lock().expect("lock").push(request);
    tokio::time::sleep(reply.delay).await;
    let _ = stream.write_all(&reply.to_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads one request; `None` when the client went away first.
async fn read_request(stream: &mut TcpStream) -> Option<Captured> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("headers are UTF-8");
    let mut lines = head.split("\r\n");
    let mut words = lines.next().expect("a request line").split(' ');
    let method = words.next().expect("a method").to_owned();
    let path = words
        .next()
        .expect("a target")
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .map_or(0, |v| v.parse().expect("Content-Length is decimal"));
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Captured {
        method,
        path,
        headers,
        body,
    })
}

/// A socket the fake WebSocket server admitted, and the ticket it was offered.
pub(crate) struct Admitted {
    pub(crate) ticket: String,
    /// The `since` query parameter of the connect, if any.
    pub(crate) since: Option<String>,
    pub(crate) socket: WebSocketStream<TcpStream>,
}

impl Admitted {
    pub(crate) async fn send_json(&mut self, frame: serde_json::Value) {
        use futures_util::SinkExt as _;
        self.socket
            .send(Message::text(frame.to_string()))
            .await
            .expect("the fake sends a frame");
    }

    pub(crate) async fn send_welcome(&mut self, conn_id: &str) {
        self.send_json(serde_json::json!({
            "type": "welcome", "session_id": SESSION_ID, "conn_id": conn_id,
            "user_id": "alice", "device_id": DEVICE, "expires_at": now() + LIFETIME,
        }))
        .await;
    }

    /// The next text frame the client sent, as JSON (pings and pongs skipped).
    pub(crate) async fn recv_json(&mut self) -> serde_json::Value {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("the client sends a frame in time")
                .expect("the socket is open")
                .expect("a readable frame");
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).expect("a JSON frame")
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    pub(crate) async fn close_with(&mut self, code: u16, reason: &str) {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        let frame = CloseFrame {
            code: code.into(),
            reason: reason.into(),
        };
        self.socket
            .close(Some(frame))
            .await
            .expect("the fake closes");
    }
}

/// A WebSocket server on `127.0.0.1:0` speaking `ticketgate.v1`: it takes the ticket
/// from the subprotocol list, refuses the tickets it was told to (401
/// `ticket_invalid`), and hands every admitted socket to the test.
pub(crate) struct FakeWs {
    addr: SocketAddr,
    admitted: mpsc::UnboundedReceiver<Admitted>,
    offered: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl FakeWs {
    pub(crate) async fn start(refuse: &[&str]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, admitted) = mpsc::unbounded_channel();
        let offered = Arc::new(Mutex::new(Vec::new()));
        let refuse: Vec<String> = refuse.iter().map(|t| (*t).to_owned()).collect();
        let seen = Arc::clone(&offered);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let refuse = refuse.clone();
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let ticket = Arc::new(Mutex::new(String::new()));
                    let ticket_seen = Arc::clone(&ticket);
                    let since = Arc::new(Mutex::new(None::<String>));
                    let since_seen = Arc::clone(&since);
                    // The callback's error type is tungstenite's, not ours to shrink.
                    #[allow(clippy::result_large_err)]
                    let callback = move |request: &Request, mut response: Response| {
                        let offered_ticket = request
                            .headers()
                            .get("sec-websocket-protocol")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .split(',')
                            .find_map(|p| p.trim().strip_prefix("ticket."))
                            .unwrap_or_default()
                            .to_owned();
                        seen.lock().expect("lock").push(offered_ticket.clone());
                        if refuse.contains(&offered_ticket) {
                            let body = r#"{"error":"ticket_invalid","message":"no"}"#;
                            let mut refusal = ErrorResponse::new(Some(body.to_owned()));
                            *refusal.status_mut() = StatusCode::UNAUTHORIZED;
                            return Err(refusal);
                        }
                        *ticket_seen.lock().expect("lock") = offered_ticket;
                        *since_seen.lock().expect("lock") = request
                            .uri()
                            .query()
                            .unwrap_or_default()
                            .split('&')
                            .find_map(|kv| kv.strip_prefix("since="))
                            // Push ids hold no other character that is escaped.
                            .map(|v| v.replace("%3A", ":"));
                        response.headers_mut().insert(
                            "sec-websocket-protocol",
                            HeaderValue::from_static("ticketgate.v1"),
                        );
                        Ok(response)
                    };
                    let Ok(socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                    else {
                        return;
                    };
                    let ticket = ticket.lock().expect("lock").clone();
                    let since = since.lock().expect("lock").clone();
                    let _ = tx.send(Admitted {
                        ticket,
                        since,
                        socket,
                    });
                });
            }
        });
        FakeWs {
            addr,
            admitted,
            offered,
            task,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("ws://{}/v1/connect", self.addr)
    }

    /// The next admitted socket; panics when none comes in time.
    pub(crate) async fn next_socket(&mut self) -> Admitted {
        tokio::time::timeout(PATIENCE, self.admitted.recv())
            .await
            .expect("the client connects in time")
            .expect("the fake is running")
    }

    /// True when a socket is admitted within `wait`.
    pub(crate) async fn admits_within(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.admitted.recv())
            .await
            .is_ok()
    }

    /// Every ticket offered so far, admitted or refused, in order.
    pub(crate) fn offered(&self) -> Vec<String> {
        self.offered.lock().expect("lock").clone()
    }
}

impl Drop for FakeWs {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The next event of a managed connection; panics when none comes in time.
pub(crate) async fn next_event(connection: &mut ManagedConnection) -> Event {
    tokio::time::timeout(PATIENCE, connection.next())
        .await
        .expect("an event comes in time")
        .expect("the connection still reports")
}

/// Asserts that the connection's event stream has ended.
pub(crate) async fn assert_stream_ends(connection: &mut ManagedConnection) {
    let last = tokio::time::timeout(PATIENCE, connection.next())
        .await
        .expect("the stream ends in time");
    assert!(last.is_none(), "no more events, got {last:?}");
}
