//! The baseline: a plain tokio-tungstenite server with no authentication, the same
//! WebSocket settings as ticketgate, on the same machine. It sends one text frame
//! `{"type":"welcome"}` after the upgrade, echoes text and binary frames and answers
//! pings. What ticketgate costs is measured against it: ratios, not absolute numbers,
//! are what stay comparable across machines.

use std::net::SocketAddr;

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use ticketgate_sdk::protocol::{MAX_BODY_BYTES, SUBPROTOCOL};

/// The baseline's first frame.
const WELCOME: &str = r#"{"type":"welcome"}"#;

/// ticketgate's own WebSocket settings with its default frame limit
/// (`TICKETGATE_MAX_FRAME_BYTES` = 64 KiB): the same buffers, by construction.
pub fn ws_config() -> WebSocketConfig {
    ticketgate::ws::ws_config_for(MAX_BODY_BYTES)
}

/// Serves until the process is stopped.
///
/// # Errors
/// When the listener cannot be bound.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    eprintln!("baseline listening on {listen}");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                eprintln!("baseline: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream));
    }
}

/// Answers the `ticketgate.v1` subprotocol when offered, so that ticketgate clients
/// (the SDK) can talk to the baseline too.
#[allow(clippy::result_large_err)] // the signature is tungstenite's callback type
fn choose_protocol(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let offered = request
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if offered {
        response.headers_mut().insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    Ok(response)
}

async fn connection(stream: TcpStream) {
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, choose_protocol, Some(ws_config()))
            .await
    else {
        return;
    };
    if ws.send(Message::text(WELCOME)).await.is_err() {
        return;
    }
    while let Some(Ok(message)) = ws.next().await {
        let sent = match message {
            Message::Text(_) | Message::Binary(_) => ws.send(message).await,
            // tungstenite queues the pong (and the close answer) itself; flushing sends it.
            Message::Ping(_) | Message::Close(_) => ws.flush().await,
            Message::Pong(_) | Message::Frame(_) => Ok(()),
        };
        if sent.is_err() {
            return;
        }
    }
}
