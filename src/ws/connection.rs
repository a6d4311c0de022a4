//! One admitted connection: the welcome frame, then a single task that owns the socket
//! and reacts to client frames, its inbox (kick, push), its deadline (access token
//! `exp`), the idle timer, the ping timer and shutdown.
//!
//! The loop is generic over `Sink + Stream` of tungstenite messages so it can be driven
//! by any transport.

use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::sync::Arc;
use ticketgate_sdk::protocol::{close, ClientFrame, ServerFrame};
use ticketgate_sdk::{ClientType, ErrorCode};

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::Instrument;

use super::inbox::{Inbox, Next};
use super::registry::{ConnHandle, Outbound, Registration};
use crate::auth::unix_now;
use crate::limits::frame_limiter;
use crate::state::AppState;
use crate::store::{MintOutcome, MintTicket, TicketGrant};

/// Who is on the other end of an admitted connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// This connection's id.
    pub conn_id: String,
    /// The session.
    pub session_id: String,
    /// The user.
    pub user_id: String,
    /// The device the ticket was bound to.
    pub device_id: String,
    /// The client type.
    pub client_type: ClientType,
    /// Unix seconds: the access token's `exp`; the connection closes with 4004 then.
    pub expires_at: i64,
}

/// Capacity of a connection's inbox; a full inbox closes the socket with 4010.
const INBOX: usize = 32;

/// Why the loop ended and how to close.
enum Exit {
    /// The node is shutting down: offer a resume ticket, then close with 1001.
    Drain,
    /// Send a close frame with this code.
    Close(u16, &'static str),
    /// The peer is gone or closed; nothing more to send.
    Gone,
}

/// The instant (tokio clock) of a unix-seconds deadline.
fn instant_at(unix: i64) -> Instant {
    let now = unix_now();
    Instant::now() + Duration::from_secs(u64::try_from(unix - now).unwrap_or(0))
}

/// The renewal window: remaining ≤ min(5 min, 30 % of the access lifetime).
fn renewal_window(access_ttl: Duration) -> Duration {
    (access_ttl * 3 / 10).min(Duration::from_secs(300))
}

/// A server frame as JSON text.
fn json(frame: &ServerFrame) -> String {
    // Serializing our own enum of strings and numbers cannot fail.
    serde_json::to_string(frame).unwrap_or_default()
}

fn text(frame: &ServerFrame) -> Message {
    Message::text(json(frame))
}

fn error_frame(code: ErrorCode, message: &str) -> Message {
    text(&ServerFrame::Error {
        error: code.as_str().to_owned(),
        message: message.to_owned(),
    })
}

/// A connection registered before its ticket was consumed, so that a revocation that
/// lands between admission and the socket's start still finds it (its close waits in
/// the inbox).
pub struct Registered {
    /// Removes the connection from the registry when dropped.
    pub registration: Registration,
    /// Kicks, pushes and drains for this connection.
    pub inbox: Arc<Inbox>,
}

/// Registers a connection of `session_id` before admission; see [`Registered`].
pub fn register(state: &AppState, conn_id: String, session_id: &str) -> Registered {
    let inbox = Arc::new(Inbox::new(INBOX));
    let registration = state.registry.insert(
        conn_id,
        ConnHandle {
            session_id: session_id.to_owned(),
            user_id: String::new(),
            device_id: String::new(),
            client_type: ClientType::Web,
            connected_at: unix_now(),
            inbox: inbox.clone(),
        },
    );
    Registered {
        registration,
        inbox,
    }
}

/// Whether the welcome frame still has to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Welcome {
    /// Send it first.
    Send,
    /// It already went out with the 101 answer.
    Sent,
}

/// The welcome frame's text: the first frame of every admitted connection.
pub fn welcome_text(info: &ConnectionInfo) -> String {
    let welcome = ServerFrame::Welcome {
        session_id: info.session_id.clone(),
        conn_id: info.conn_id.clone(),
        user_id: info.user_id.clone(),
        device_id: info.device_id.clone(),
        expires_at: info.expires_at,
    };
    json(&welcome)
}

/// Runs a connection to its end, then unregisters it and frees its slot.
///
/// The span is at debug level: an enabled span costs memory for the socket's whole
/// life, and a node holds up to `max_connections` of them.
pub async fn run<S>(
    ws: S,
    info: ConnectionInfo,
    state: AppState,
    permit: OwnedSemaphorePermit,
    registered: Registered,
    welcome: Welcome,
) where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let span = tracing::debug_span!("conn", conn_id = %info.conn_id, session_id = %info.session_id);
    drive(ws, info, state, permit, registered, welcome)
        .instrument(span)
        .await;
}

async fn drive<S>(
    mut ws: S,
    mut info: ConnectionInfo,
    state: AppState,
    permit: OwnedSemaphorePermit,
    registered: Registered,
    welcome: Welcome,
) where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let Registered {
        registration: _registration,
        inbox,
    } = registered;
    tracing::debug!("connection admitted");

    let welcomed = match welcome {
        Welcome::Sent => Ok(()),
        Welcome::Send => ws.send(Message::text(welcome_text(&info))).await,
    };
    let exit = match welcomed {
        Ok(()) => serve(&mut ws, &mut info, &state, &inbox).await,
        Err(_) => Exit::Gone,
    };
    let exit = match exit {
        Exit::Drain => {
            if let Some(resume) = resume_ticket(&info, &state).await {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.send(text(&resume))).await;
            }
            Exit::Close(close::GOING_AWAY, "server shutting down")
        }
        other => other,
    };
    if let Exit::Close(code, reason) = exit {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        // Best effort, bounded: a peer that does not read must not hold the slot.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = ws.send(Message::Close(Some(frame))).await;
            // Drain until the peer's close answer or EOF, so the close handshake completes.
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        tracing::debug!(code, reason, "connection closed by server");
    }
    drop(permit);
}

async fn serve<S>(ws: &mut S, info: &mut ConnectionInfo, state: &AppState, inbox: &Inbox) -> Exit
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let cfg = &state.config.ws;
    let window = renewal_window(state.config.ttl.access);
    let limiter = frame_limiter(state.config.rates.frames, state.limits.clock());
    let shutdown = state.shutdown.clone();
    if shutdown.is_cancelled() {
        return Exit::Drain;
    }
    let mut deadline = instant_at(info.expires_at);
    let mut expiring_sent = false;
    let mut idle_deadline = Instant::now() + cfg.idle_timeout;
    let mut next_ping = Instant::now() + cfg.ping_interval;
    // One timer for the four deadlines, moved to the earliest: a socket re-arms it only
    // when that changes, instead of registering four timers per frame.
    let timer = sleep_until(next_ping);
    tokio::pin!(timer);

    loop {
        let expiring_at = deadline.checked_sub(window).unwrap_or(deadline);
        let mut wake = deadline.min(idle_deadline).min(next_ping);
        if !expiring_sent {
            wake = wake.min(expiring_at);
        }
        if timer.deadline() != wake {
            timer.as_mut().reset(wake);
        }
        tokio::select! {
            () = shutdown.cancelled() => return Exit::Drain,
            () = &mut timer => {
                let now = Instant::now();
                if now >= deadline {
                    return Exit::Close(close::SESSION_EXPIRED, "session expired");
                }
                if now >= idle_deadline {
                    return Exit::Close(close::NORMAL, "idle timeout");
                }
                if !expiring_sent && now >= expiring_at {
                    expiring_sent = true;
                    let frame = text(&ServerFrame::Expiring { expires_at: info.expires_at });
                    if let Err(exit) = send(ws, frame, inbox).await {
                        return exit;
                    }
                }
                if now >= next_ping {
                    next_ping = now + cfg.ping_interval;
                    if let Err(exit) = send(ws, Message::Ping(Default::default()), inbox).await {
                        return exit;
                    }
                }
            }
            next = inbox.next() => match next {
                Next::Message(Outbound::Text(t)) => {
                    if let Err(exit) = send(ws, Message::text(t), inbox).await {
                        return exit;
                    }
                }
                Next::Message(Outbound::Close(code, reason)) => return Exit::Close(code, reason),
                Next::Overflowed => return Exit::Close(close::SLOW_CONSUMER, "slow consumer"),
            },
            msg = ws.next() => {
                let msg = match msg {
                    None => return Exit::Gone,
                    Some(Err(WsError::Capacity(_))) => return Exit::Close(close::TOO_BIG, "frame too big"),
                    Some(Err(WsError::Protocol(_))) => return Exit::Close(1002, "protocol error"),
                    Some(Err(_)) => return Exit::Gone,
                    Some(Ok(msg)) => msg,
                };
                if limiter.check().is_err() {
                    return Exit::Close(close::FLOOD, "message flood");
                }
                idle_deadline = Instant::now() + cfg.idle_timeout;
                match msg {
                    Message::Text(t) => match handle_frame(t.as_str(), info, state) {
                        Reply::None => {}
                        Reply::Send(m) => {
                            if let Err(exit) = send(ws, m, inbox).await {
                                return exit;
                            }
                        }
                        Reply::Extend(m) => {
                            deadline = instant_at(info.expires_at);
                            expiring_sent = false;
                            if let Err(exit) = send(ws, m, inbox).await {
                                return exit;
                            }
                        }
                    },
                    Message::Binary(_) => return Exit::Close(close::POLICY, "binary frames are not allowed"),
                    // tungstenite queues the pong itself; flushing sends it.
                    Message::Ping(_) => {
                        if let Err(exit) = flush(ws, inbox).await {
                            return exit;
                        }
                    }
                    Message::Pong(_) | Message::Frame(_) => {}
                    // tungstenite queued the close reply; flush it so the client sees
                    // the close handshake complete, then the socket is done.
                    Message::Close(_) => {
                        let _ = flush(ws, inbox).await;
                        return Exit::Gone;
                    }
                }
            }
        }
    }
}

/// How long one write may wait for a client that does not read before it is closed
/// as a slow consumer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends a frame, giving up on a client that stopped reading: the write takes longer
/// than [`SEND_TIMEOUT`], or the inbox overflowed meanwhile (4010 either way).
async fn send<S>(ws: &mut S, msg: Message, inbox: &Inbox) -> Result<(), Exit>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let slow = || Exit::Close(close::SLOW_CONSUMER, "slow consumer");
    tokio::select! {
        sent = tokio::time::timeout(SEND_TIMEOUT, ws.send(msg)) => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Exit::Gone),
            Err(_) => Err(slow()),
        },
        _ = inbox.overflow() => Err(slow()),
    }
}

/// Flushes queued control frames (pongs) under the same rules as [`send`].
async fn flush<S>(ws: &mut S, inbox: &Inbox) -> Result<(), Exit>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let slow = || Exit::Close(close::SLOW_CONSUMER, "slow consumer");
    tokio::select! {
        flushed = tokio::time::timeout(SEND_TIMEOUT, ws.flush()) => match flushed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Exit::Gone),
            Err(_) => Err(slow()),
        },
        _ = inbox.overflow() => Err(slow()),
    }
}

enum Reply {
    None,
    Send(Message),
    /// The deadline moved (`info.expires_at` updated); send this.
    Extend(Message),
}

fn handle_frame(raw: &str, info: &mut ConnectionInfo, state: &AppState) -> Reply {
    let frame: ClientFrame = match serde_json::from_str(raw) {
        Ok(f) => f,
        Err(_) => {
            return Reply::Send(error_frame(
                ErrorCode::BadRequest,
                "not a known client frame",
            ))
        }
    };
    match frame {
        ClientFrame::Ping => Reply::Send(text(&ServerFrame::Pong)),
        ClientFrame::Ack { .. } => Reply::None,
        ClientFrame::Refresh { access_token } => match state.keys.verify(&access_token) {
            Ok(claims) if claims.sid == info.session_id && claims.sub == info.user_id => {
                if claims.exp > info.expires_at {
                    info.expires_at = claims.exp;
                }
                Reply::Extend(text(&ServerFrame::Refreshed {
                    expires_at: info.expires_at,
                }))
            }
            Ok(_) => Reply::Send(error_frame(
                ErrorCode::TokenInvalid,
                "token of another session",
            )),
            Err(crate::auth::tokens::TokenError::Expired) => {
                Reply::Send(error_frame(ErrorCode::TokenExpired, "access token expired"))
            }
            Err(_) => Reply::Send(error_frame(ErrorCode::TokenInvalid, "access token invalid")),
        },
    }
}

/// A one-time ticket for the same session and device, offered before a drain close so a
/// mass reconnect after a deploy needs no mint round trip. `None` when the session has
/// ended or the store does not answer within a second (the client then mints as usual).
async fn resume_ticket(info: &ConnectionInfo, state: &AppState) -> Option<ServerFrame> {
    let ttl = state.config.ttl.ticket;
    let expires_at_ms = crate::auth::unix_now_ms() + ttl.as_millis() as i64;
    let (ticket, ticket_id) = state.tickets.mint(&info.session_id, expires_at_ms);
    let grant = TicketGrant {
        device_id: info.device_id.clone(),
        user_id: info.user_id.clone(),
        client_type: info.client_type,
        access_expires_at: info.expires_at,
    };
    // Server-made: the nonce only has to be unique.
    let nonce = format!("resume-{}", crate::auth::random_b64(16));
    let mint = MintTicket {
        session_id: &info.session_id,
        nonce: &nonce,
        nonce_ttl: ttl,
        ticket_id: &ticket_id,
        grant: &grant,
        ticket_ttl: ttl,
    };
    let outcome =
        tokio::time::timeout(Duration::from_secs(1), state.store.mint_ticket(&mint)).await;
    match outcome {
        Ok(Ok(MintOutcome::Minted)) => Some(ServerFrame::Resume {
            ticket,
            expires_in: ttl.as_secs().max(1),
        }),
        _ => None,
    }
}
