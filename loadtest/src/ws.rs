//! The socket side of every scenario: one minimal WebSocket client used against
//! ticketgate and the baseline alike, so that a ratio compares servers, not clients.
//!
//! Source addresses are spread over `127.0.0.2..=127.0.0.250` (every socket is bound
//! before `connect`), so ephemeral ports run out only after ~250 × 28,000 sockets
//! instead of 28,000: the idle scenario can hold tens of thousands, and the handshake
//! loops leave their `TIME_WAIT`s spread as well. The client's buffers are as small as
//! the server's, so that holding 10,000 sockets costs the harness little.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use ticketgate_sdk::protocol::{SUBPROTOCOL, TICKET_SUBPROTOCOL_PREFIX};

/// An open WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// Connect, upgrade and welcome must all happen within this.
const ADMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for the server's side of the close handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// First and last host part of the spread source addresses.
const SPREAD_FIRST: u32 = 2;
const SPREAD_LAST: u32 = 250;

/// Why a socket did not open.
#[derive(Debug)]
pub enum DialError {
    /// The server answered the upgrade request with this HTTP status.
    Refused(u16),
    /// Anything else: connect, I/O, protocol, timeout, no welcome.
    Failed(&'static str, String),
}

impl DialError {
    /// A short kind for error counters: `refused 401`, `connect`, `timeout`, ...
    pub fn kind(&self) -> String {
        match self {
            DialError::Refused(status) => format!("refused {status}"),
            DialError::Failed(kind, _) => (*kind).to_owned(),
        }
    }
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Refused(status) => write!(f, "refused with HTTP {status}"),
            DialError::Failed(kind, detail) => write!(f, "{kind}: {detail}"),
        }
    }
}

/// Opens WebSockets to one server, from spread source addresses.
#[derive(Debug)]
pub struct Dialer {
    server: SocketAddr,
    spread: bool,
    next_source: AtomicU32,
}

impl Dialer {
    /// A dialer for the server at `server`. Sources are spread only when the server is
    /// on 127.0.0.0/8 (the only place this harness sends traffic to).
    pub fn new(server: SocketAddr) -> Dialer {
        let spread = matches!(server.ip(), IpAddr::V4(ip) if ip.is_loopback());
        Dialer {
            server,
            spread,
            next_source: AtomicU32::new(0),
        }
    }

    /// Opens `GET /v1/connect?device_id=..` with the ticket in the subprotocol list,
    /// checks that ticketgate chose `ticketgate.v1`, and waits for the welcome frame.
    ///
    /// # Errors
    /// [`DialError::Refused`] with the status when the server refuses admission.
    pub async fn admit(&self, device_id: &str, ticket: &str) -> Result<Ws, DialError> {
        let path = format!("/v1/connect?device_id={device_id}");
        let protocols = format!("{SUBPROTOCOL}, {TICKET_SUBPROTOCOL_PREFIX}{ticket}");
        let attempt = async {
            let mut ws = self.upgrade(&path, Some(&protocols)).await?;
            read_welcome(&mut ws).await?;
            Ok(ws)
        };
        tokio::time::timeout(ADMIT_TIMEOUT, attempt)
            .await
            .map_err(|_| DialError::Failed("timeout", "no welcome within 10 s".into()))?
    }

    /// Opens a socket on the baseline (no authentication) and waits for its welcome.
    ///
    /// # Errors
    /// As [`Dialer::admit`].
    pub async fn open_plain(&self) -> Result<Ws, DialError> {
        let attempt = async {
            let mut ws = self.upgrade("/", None).await?;
            read_welcome(&mut ws).await?;
            Ok(ws)
        };
        tokio::time::timeout(ADMIT_TIMEOUT, attempt)
            .await
            .map_err(|_| DialError::Failed("timeout", "no welcome within 10 s".into()))?
    }

    /// Presents a ticket and expects a refusal: `Ok(status)` for an HTTP answer,
    /// `Err` when the server upgraded (the ticket was admitted) or the attempt failed.
    ///
    /// # Errors
    /// `Failed("admitted", ..)` when the upgrade succeeded; other failures as usual.
    pub async fn expect_refusal(&self, device_id: &str, ticket: &str) -> Result<u16, DialError> {
        let path = format!("/v1/connect?device_id={device_id}");
        let protocols = format!("{SUBPROTOCOL}, {TICKET_SUBPROTOCOL_PREFIX}{ticket}");
        let attempt = self.upgrade(&path, Some(&protocols));
        match tokio::time::timeout(ADMIT_TIMEOUT, attempt).await {
            Err(_) => Err(DialError::Failed("timeout", "no answer within 10 s".into())),
            Ok(Err(DialError::Refused(status))) => Ok(status),
            Ok(Err(other)) => Err(other),
            Ok(Ok(ws)) => {
                close(ws).await;
                Err(DialError::Failed(
                    "admitted",
                    "the server admitted a ticket it should refuse".into(),
                ))
            }
        }
    }

    /// TCP connect from the next source address, then the WebSocket upgrade.
    async fn upgrade(&self, path: &str, protocols: Option<&str>) -> Result<Ws, DialError> {
        let stream = self.connect_tcp().await?;
        let mut request = format!("ws://{}{path}", self.server)
            .into_client_request()
            .map_err(|e| DialError::Failed("request", e.to_string()))?;
        if let Some(protocols) = protocols {
            let value = HeaderValue::from_str(protocols)
                .map_err(|e| DialError::Failed("request", e.to_string()))?;
            request.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, value);
        }
        let (ws, response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(client_config()))
                .await
                .map_err(|e| match e {
                    tungstenite::Error::Http(response) => {
                        DialError::Refused(response.status().as_u16())
                    }
                    other => DialError::Failed("handshake", other.to_string()),
                })?;
        if protocols.is_some() {
            let chosen = response.headers().get(SEC_WEBSOCKET_PROTOCOL);
            if chosen.map(HeaderValue::as_bytes) != Some(SUBPROTOCOL.as_bytes()) {
                return Err(DialError::Failed(
                    "subprotocol",
                    format!("server chose {chosen:?}, expected {SUBPROTOCOL}"),
                ));
            }
        }
        Ok(ws)
    }

    async fn connect_tcp(&self) -> Result<TcpStream, DialError> {
        let socket = TcpSocket::new_v4().map_err(|e| DialError::Failed("socket", e.to_string()))?;
        if self.spread {
            let n = self.next_source.fetch_add(1, Ordering::Relaxed);
            let host = SPREAD_FIRST + n % (SPREAD_LAST - SPREAD_FIRST + 1);
            let source = SocketAddr::from((Ipv4Addr::new(127, 0, 0, host as u8), 0));
            socket
                .bind(source)
                .map_err(|e| DialError::Failed("bind", e.to_string()))?;
        }
        let stream = socket
            .connect(self.server)
            .await
            .map_err(|e| DialError::Failed("connect", e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| DialError::Failed("connect", e.to_string()))?;
        Ok(stream)
    }
}

/// The client's WebSocket settings: small buffers, like the server's.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

/// Waits for the first data frame and requires it to be `{"type":"welcome",...}`.
async fn read_welcome(ws: &mut Ws) -> Result<(), DialError> {
    while let Some(message) = ws.next().await {
        match message.map_err(|e| DialError::Failed("no welcome", e.to_string()))? {
            Message::Text(text) => {
                return if frame_type(text.as_str()).as_deref() == Some("welcome") {
                    Ok(())
                } else {
                    Err(DialError::Failed(
                        "no welcome",
                        "the first frame is not welcome".into(),
                    ))
                };
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Binary(_) => {
                return Err(DialError::Failed("no welcome", "binary first frame".into()))
            }
            Message::Close(frame) => {
                let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                return Err(DialError::Failed(
                    "no welcome",
                    format!("closed with {code} before welcome"),
                ));
            }
        }
    }
    Err(DialError::Failed(
        "no welcome",
        "connection ended before welcome".into(),
    ))
}

/// The `type` field of a JSON text frame.
pub fn frame_type(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value.get("type")?.as_str().map(str::to_owned)
}

/// Starts the close handshake and waits (bounded) for the server's side of it.
pub async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if ws.send(Message::Close(None)).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}
