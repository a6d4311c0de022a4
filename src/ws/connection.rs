//! One admitted connection: the welcome frame, then a single task that owns the socket
//! and reacts to client frames, its inbox (kick, push), its deadline (access token
//! `exp`), the idle timer, the ping timer and shutdown.
//!
//! The loop is generic over `Sink + Stream` of tungstenite messages so it can be driven
//! by any transport, and it takes from its node only what it needs: a [`SocketNode`]
//! (settings, clock, drain signal; one per node) and a [`SocketServices`] (access-token
//! checks and resume tickets). Its tests drive it over in-memory streams on tokio's
//! paused clock.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use governor::clock::DefaultClock;
use ticketgate_sdk::protocol::{
    close, renewal_window, send_id_is_well_formed, ClientFrame, ServerFrame,
};
use ticketgate_sdk::{ClientType, ErrorCode};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth::tokens::Claims;
use crate::clock::Clock;
use crate::config::{Config, Rate};
use crate::handler::{Context, Refused, SessionHandler};
use crate::limits::frame_limiter;
use crate::registry::inbox::{Inbox, Next};
use crate::registry::{ConnHandle, Outbound, Registration, Registry};
use crate::store::PushId;
use crate::ws::frames::{FrameGuard, Violation};
use crate::ws::Linger;

/// Who is on the other end of an admitted connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo {
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
    /// What the client missed, when it connected with `since` (PROTOCOL §10). Boxed:
    /// most connections have none, and every socket task holds its info.
    pub recovery: Option<Box<Recovery>>,
}

/// A connect with `since`: what the welcome says, the pushes to replay after it, and
/// the newest id the replay covers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recovery {
    /// Whether every push after `since` follows.
    pub recovered: bool,
    /// The newest id of the user's history when it was read.
    pub last_id: Option<String>,
    /// Push frames (JSON text) to send right after the welcome, oldest first.
    pub replay: Vec<String>,
}

/// Whether `text` is a push frame that a replay up to `covered` already sent: the
/// socket was registered for live pushes before the history was read, so pushes
/// published in between come both ways. Ids come in order, so the first live push
/// that is not covered ends the check.
fn replayed(covered: &PushId, text: &str) -> Option<bool> {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        id: String,
    }
    let head: Head = serde_json::from_str(text).ok()?;
    if head.kind != "push" {
        return None;
    }
    Some(PushId::parse(&head.id).is_some_and(|id| covered.covers(&id)))
}

/// Capacity of a connection's inbox; a full inbox closes the socket with 4010.
const INBOX: usize = 32;

/// How long one write may wait for a client that does not read before it is closed
/// as a slow consumer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the closing handshake may take: a peer that does not read must not hold
/// the slot.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a draining socket waits to deliver its resume ticket.
const RESUME_TIMEOUT: Duration = Duration::from_secs(1);

/// The socket loop's settings, read from the configuration once per node.
#[derive(Debug, Clone)]
pub struct SocketSettings {
    /// Close with 1000 after this long without a frame from the client.
    pub idle_timeout: Duration,
    /// Send a ping this often.
    pub ping_interval: Duration,
    /// Send `expiring` this long before the access token's `exp`.
    pub renewal_window: Duration,
    /// Client frames allowed per connection, control and continuation frames
    /// included; over it, close with 4008.
    pub frames: Rate,
    /// Most frames one client message may have; over it, close with 1008.
    pub max_fragments: u32,
    /// How long one write may wait for a client that does not read; then 4010.
    pub send_timeout: Duration,
    /// How long the closing handshake may take.
    pub close_timeout: Duration,
    /// Unanswered `send`s per connection; past it, the client gets `busy`.
    pub inflight: usize,
}

impl SocketSettings {
    /// The settings of a node running `config`.
    pub fn new(config: &Config) -> Self {
        SocketSettings {
            idle_timeout: config.ws.idle_timeout,
            ping_interval: config.ws.ping_interval,
            renewal_window: renewal_window(config.ttl.access),
            frames: config.rates.frames,
            max_fragments: config.ws.max_fragments,
            send_timeout: SEND_TIMEOUT,
            close_timeout: CLOSE_TIMEOUT,
            inflight: config.upstream.inflight,
        }
    }
}

/// What every socket of a node shares: built once per node, borrowed by each socket
/// (per-socket memory matters: a node holds up to `max_connections` of them).
pub struct SocketNode {
    settings: SocketSettings,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
    /// One clock for every socket's frame limiter (a new `quanta` clock per socket
    /// would calibrate itself every time).
    frame_clock: DefaultClock,
}

impl SocketNode {
    /// The node's sockets read time from `clock`, drain when `shutdown` is cancelled,
    /// and rate their frames on `frame_clock`.
    pub(crate) fn new(
        settings: SocketSettings,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
        frame_clock: DefaultClock,
    ) -> Self {
        SocketNode {
            settings,
            clock,
            shutdown,
            frame_clock,
        }
    }

    /// The clock every socket of this node reads.
    pub(crate) fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// The settings every socket of this node runs with.
    pub fn settings(&self) -> &SocketSettings {
        &self.settings
    }

    /// `io` guarded with this node's frame rate and fragment cap (`read_ahead`: client
    /// bytes already read); see [`FrameGuard`].
    pub(crate) fn frame_guard<T>(&self, io: T, read_ahead: &[u8]) -> FrameGuard<T> {
        let limiter = frame_limiter(self.settings.frames, &self.frame_clock);
        FrameGuard::new(io, read_ahead, limiter, self.settings.max_fragments)
    }

    /// The instant (tokio clock) of a unix-seconds deadline; now when it has passed.
    fn instant_at(&self, unix: i64) -> Instant {
        let wait_ms = unix
            .saturating_mul(1000)
            .saturating_sub(self.clock.unix_ms());
        Instant::now() + Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0))
    }
}

/// Why a client frame was refused: the code and text of the `error` frame it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The protocol error code.
    pub code: ErrorCode,
    /// A human-readable reason (no secrets).
    pub message: String,
}

/// What a socket needs from the rest of its node.
pub(crate) trait SocketServices: Send + Sync + 'static {
    /// Verifies an access token presented in a `refresh` frame.
    ///
    /// # Errors
    /// The [`Refusal`] the client gets in an `error` frame (expired or invalid).
    fn verify_access(&self, token: &str) -> Result<Claims, Refusal>;

    /// A `resume` frame carrying a one-time ticket for the same session and device,
    /// offered before a drain close; `None` when there is none to offer.
    fn resume_ticket(
        &self,
        info: &ConnectionInfo,
    ) -> impl Future<Output = Option<ServerFrame>> + Send;

    /// The node's business handler: `send` frames and the socket's life go to it.
    fn handler(&self) -> &Arc<dyn SessionHandler>;

    /// What the handler gets for the socket of `info`: its verified identity (with the
    /// node's id) and the node's pusher.
    fn context(&self, info: &ConnectionInfo) -> Context;

    /// Runs a `connect`/`disconnect` event on a task of the node's own (the socket
    /// does not wait for it; shutdown does, within its grace).
    fn spawn_event<F>(&self, event: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static;
}

/// Why the loop ended and how to close.
enum Exit {
    /// The node is shutting down: offer a resume ticket, then close with 1001.
    Drain,
    /// Send a close frame with this code and reason.
    Close(u16, Cow<'static, str>),
    /// The peer is gone or closed; nothing more to send.
    Gone,
    /// The peer closed with this code (1005 for a close frame without one); its close
    /// answer was sent.
    PeerClosed(u16),
}

/// The close code the handler's `disconnect` gets for a socket that broke without a
/// close frame (RFC 6455 §7.1.5).
const ABNORMAL_CLOSURE: u16 = 1006;

/// The close code of a close frame without one (RFC 6455 §7.1.5).
const NO_STATUS: u16 = 1005;

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
        id: None,
        error: code.as_str().to_owned(),
        message: message.to_owned(),
    })
}

/// The answer frame to the `send` of `id`.
fn answer_frame(id: String, answer: Result<serde_json::Value, Refused>) -> Message {
    text(&match answer {
        Ok(data) => ServerFrame::Reply { id, data },
        Err(refused) => ServerFrame::Error {
            id: Some(id),
            error: refused.code().to_owned(),
            message: refused.message().to_owned(),
        },
    })
}

/// The `error` frame answering a `send` of `id` (`None`: none could be read).
fn send_error(id: Option<String>, code: ErrorCode, message: &str) -> Message {
    text(&ServerFrame::Error {
        id,
        error: code.as_str().to_owned(),
        message: message.to_owned(),
    })
}

/// A `send` being answered by the handler: resolves to its answer frame.
type Call = Pin<Box<dyn Future<Output = Message> + Send>>;

/// A connection's `send`s in flight, allocated at its first `send` (most sockets
/// never send one), and the handler context they share.
#[derive(Default)]
struct Calls {
    running: Option<FuturesUnordered<Call>>,
    cx: Option<Arc<Context>>,
}

impl Calls {
    fn len(&self) -> usize {
        self.running.as_ref().map_or(0, FuturesUnordered::len)
    }

    /// The context of this socket, built once.
    fn context(&mut self, services: &impl SocketServices, info: &ConnectionInfo) -> Arc<Context> {
        self.cx
            .get_or_insert_with(|| Arc::new(services.context(info)))
            .clone()
    }

    fn start(&mut self, call: Call) {
        self.running
            .get_or_insert_with(FuturesUnordered::new)
            .push(call);
    }

    /// The next answer, in the order the handler answers; pending while none runs.
    async fn next_answer(&mut self) -> Message {
        match self.running.as_mut() {
            Some(running) if !running.is_empty() => match running.next().await {
                Some(answer) => answer,
                None => std::future::pending().await,
            },
            _ => std::future::pending().await,
        }
    }
}

/// A connection registered before its ticket was consumed, so that a revocation that
/// lands between admission and the socket's start still finds it (its close waits in
/// the inbox).
pub(crate) struct Registered {
    /// Removes the connection from the registry when dropped.
    pub registration: Registration,
    /// Kicks, pushes and drains for this connection.
    pub inbox: Arc<Inbox>,
}

/// Registers a connection of `session_id` in `registry` before admission; see
/// [`Registered`].
pub(crate) fn register(
    registry: &Registry,
    clock: &dyn Clock,
    conn_id: String,
    session_id: &str,
) -> Registered {
    let inbox = Arc::new(Inbox::new(INBOX));
    let registration = registry.insert(
        conn_id,
        ConnHandle {
            session_id: session_id.to_owned(),
            user_id: String::new(),
            device_id: String::new(),
            client_type: ClientType::Web,
            connected_at: clock.unix(),
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
pub(crate) enum Welcome {
    /// Send it first.
    Send,
    /// It already went out with the 101 answer.
    Sent,
}

/// The welcome frame's text: the first frame of every admitted connection.
pub(crate) fn welcome_text(info: &ConnectionInfo) -> String {
    let welcome = ServerFrame::Welcome {
        session_id: info.session_id.clone(),
        conn_id: info.conn_id.clone(),
        user_id: info.user_id.clone(),
        device_id: info.device_id.clone(),
        expires_at: info.expires_at,
        recovered: info.recovery.as_ref().map(|r| r.recovered),
        last_id: info.recovery.as_ref().map(|r| r.last_id.clone()),
    };
    json(&welcome)
}

/// Runs a connection to its end, then unregisters it and frees its slot.
///
/// The span is at debug level: an enabled span costs memory for the socket's whole
/// life, and a node holds up to `max_connections` of them.
pub(crate) async fn run<S, V>(
    ws: S,
    info: ConnectionInfo,
    node: &SocketNode,
    services: &V,
    permit: OwnedSemaphorePermit,
    registered: Registered,
    welcome: Welcome,
) where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Linger + Unpin,
    V: SocketServices,
{
    let span = tracing::debug_span!("conn", conn_id = %info.conn_id, session_id = %info.session_id);
    drive(ws, info, node, services, registered, welcome)
        .instrument(span)
        .await;
    drop(permit);
}

async fn drive<S, V>(
    mut ws: S,
    mut info: ConnectionInfo,
    node: &SocketNode,
    services: &V,
    registered: Registered,
    welcome: Welcome,
) where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Linger + Unpin,
    V: SocketServices,
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
    let mut calls = Calls::default();
    let handler = services.handler().clone();
    let mut connected = None;
    let exit = match welcomed {
        Ok(()) => {
            if handler.wants_lifecycle() {
                let (cx, handler) = (calls.context(services, &info), handler.clone());
                connected = Some(services.spawn_event(async move { handler.connect(&cx).await }));
            }
            match replay(&mut ws, &mut info, node, &inbox).await {
                Ok(()) => serve(&mut ws, &mut info, node, services, &inbox, &mut calls).await,
                Err(exit) => exit,
            }
        }
        Err(_) => Exit::Gone,
    };
    let code = match exit {
        Exit::Drain => close::GOING_AWAY,
        Exit::Close(code, _) | Exit::PeerClosed(code) => code,
        Exit::Gone => ABNORMAL_CLOSURE,
    };
    let exit = match exit {
        Exit::Drain => {
            if let Some(resume) = services.resume_ticket(&info).await {
                let _ = tokio::time::timeout(RESUME_TIMEOUT, ws.send(text(&resume))).await;
            }
            Exit::Close(close::GOING_AWAY, "server shutting down".into())
        }
        other => other,
    };
    if let Exit::Close(code, reason) = exit {
        crate::metrics::hot().closed(code);
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.clone().into_owned().into(),
        };
        // Best effort, bounded: a peer that does not read must not hold the slot.
        let deadline = Instant::now() + node.settings.close_timeout;
        let _ = tokio::time::timeout_at(deadline, async {
            let _ = ws.send(Message::Close(Some(frame))).await;
            // Drain until the peer's close answer or EOF, so the close handshake completes.
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        // What tungstenite no longer reads (a refused flood) is read and dropped here,
        // so the socket is not reset under the close frame it just sent.
        ws.linger(deadline).await;
        tracing::debug!(code, %reason, "connection closed by server");
    }
    // After `connect` (so the upstream sees them in order), never before it.
    if let Some(connected) = connected {
        let cx = calls.context(services, &info);
        services.spawn_event(async move {
            let _ = connected.await;
            handler.disconnect(&cx, code).await;
        });
    }
}

/// Sends the pushes a `since` connect missed, right after the welcome and before any
/// live one (those wait in the inbox meanwhile).
async fn replay<S>(
    ws: &mut S,
    info: &mut ConnectionInfo,
    node: &SocketNode,
    inbox: &Inbox,
) -> Result<(), Exit>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let Some(recovery) = info.recovery.as_mut() else {
        return Ok(());
    };
    for frame in std::mem::take(&mut recovery.replay) {
        send(ws, Message::text(frame), inbox, node.settings.send_timeout).await?;
    }
    Ok(())
}

async fn serve<S, V>(
    ws: &mut S,
    info: &mut ConnectionInfo,
    node: &SocketNode,
    services: &V,
    inbox: &Inbox,
    calls: &mut Calls,
) -> Exit
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    V: SocketServices,
{
    let cfg = &node.settings;
    let window = cfg.renewal_window;
    let shutdown = &node.shutdown;
    if shutdown.is_cancelled() {
        return Exit::Drain;
    }
    let mut deadline = node.instant_at(info.expires_at);
    let mut expiring_sent = false;
    let mut idle_deadline = Instant::now() + cfg.idle_timeout;
    let mut next_ping = Instant::now() + cfg.ping_interval;
    // One timer for the four deadlines, moved to the earliest: a socket re-arms it only
    // when that changes, instead of registering four timers per frame.
    let timer = sleep_until(next_ping);
    tokio::pin!(timer);
    // The newest push a replay covered: live pushes up to it are duplicates.
    let mut covered = info
        .recovery
        .as_ref()
        .and_then(|r| r.last_id.as_deref())
        .and_then(PushId::parse);

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
                    return Exit::Close(close::SESSION_EXPIRED, "session expired".into());
                }
                if now >= idle_deadline {
                    return Exit::Close(close::NORMAL, "idle timeout".into());
                }
                if !expiring_sent && now >= expiring_at {
                    expiring_sent = true;
                    let frame = text(&ServerFrame::Expiring { expires_at: info.expires_at });
                    if let Err(exit) = send(ws, frame, inbox, cfg.send_timeout).await {
                        return exit;
                    }
                }
                if now >= next_ping {
                    next_ping = now + cfg.ping_interval;
                    let ping = Message::Ping(Default::default());
                    if let Err(exit) = send(ws, ping, inbox, cfg.send_timeout).await {
                        return exit;
                    }
                }
            }
            answer = calls.next_answer() => {
                if let Err(exit) = send(ws, answer, inbox, cfg.send_timeout).await {
                    return exit;
                }
            }
            next = inbox.next() => match next {
                Next::Message(Outbound::Text(t)) => {
                    if let Some(last) = &covered {
                        match replayed(last, &t) {
                            Some(true) => continue,
                            Some(false) => covered = None,
                            None => {}
                        }
                    }
                    if let Err(exit) = send(ws, Message::text(t), inbox, cfg.send_timeout).await {
                        return exit;
                    }
                }
                Next::Message(Outbound::Close(code, reason)) => return Exit::Close(code, reason),
                Next::Overflowed => return Exit::Close(close::SLOW_CONSUMER, "slow consumer".into()),
            },
            msg = ws.next() => {
                let msg = match msg {
                    None => return Exit::Gone,
                    Some(Err(WsError::Capacity(_))) => return Exit::Close(close::TOO_BIG, "frame too big".into()),
                    Some(Err(WsError::Protocol(_))) => {
                        return Exit::Close(close::PROTOCOL_ERROR, "protocol error".into())
                    }
                    // A text frame or close reason that is not UTF-8 (RFC 6455 §8.1).
                    Some(Err(WsError::Utf8(_))) => {
                        return Exit::Close(close::INVALID_PAYLOAD, "invalid utf-8".into())
                    }
                    Some(Err(WsError::Io(e))) => return match Violation::of(&e) {
                        Some(Violation::Flood) => Exit::Close(close::FLOOD, "message flood".into()),
                        Some(Violation::TooManyFragments) => {
                            Exit::Close(close::POLICY, "too many fragments".into())
                        }
                        None => Exit::Gone,
                    },
                    Some(Err(_)) => return Exit::Gone,
                    Some(Ok(msg)) => msg,
                };
                idle_deadline = Instant::now() + cfg.idle_timeout;
                match msg {
                    Message::Text(t) => match handle_frame(t.as_str(), info, services) {
                        Reply::None => {}
                        Reply::Send(m) => {
                            if let Err(exit) = send(ws, m, inbox, cfg.send_timeout).await {
                                return exit;
                            }
                        }
                        Reply::Call { id, data } => {
                            let answer = if calls.len() >= cfg.inflight {
                                send_error(Some(id), ErrorCode::Busy, "too many sends unanswered")
                            } else {
                                let cx = calls.context(services, info);
                                let handler = services.handler().clone();
                                calls.start(Box::pin(async move {
                                    let answer = handler.message(&cx, &id, data).await;
                                    answer_frame(id, answer)
                                }));
                                continue;
                            };
                            if let Err(exit) = send(ws, answer, inbox, cfg.send_timeout).await {
                                return exit;
                            }
                        }
                        Reply::Extend(m) => {
                            deadline = node.instant_at(info.expires_at);
                            expiring_sent = false;
                            if let Err(exit) = send(ws, m, inbox, cfg.send_timeout).await {
                                return exit;
                            }
                        }
                    },
                    Message::Binary(_) => return Exit::Close(close::POLICY, "binary frames are not allowed".into()),
                    // tungstenite queues the pong itself; flushing sends it.
                    Message::Ping(_) => {
                        if let Err(exit) = flush(ws, inbox, cfg.send_timeout).await {
                            return exit;
                        }
                    }
                    Message::Pong(_) | Message::Frame(_) => {}
                    // tungstenite queued the close reply; flush it so the client sees
                    // the close handshake complete, then the socket is done.
                    Message::Close(frame) => {
                        let _ = flush(ws, inbox, cfg.send_timeout).await;
                        return Exit::PeerClosed(frame.map_or(NO_STATUS, |f| u16::from(f.code)));
                    }
                }
            }
        }
    }
}

/// Sends a frame, giving up on a client that stopped reading: the write takes longer
/// than `timeout`, or the inbox overflowed meanwhile (4010 either way).
async fn send<S>(ws: &mut S, msg: Message, inbox: &Inbox, timeout: Duration) -> Result<(), Exit>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let slow = || Exit::Close(close::SLOW_CONSUMER, "slow consumer".into());
    tokio::select! {
        sent = tokio::time::timeout(timeout, ws.send(msg)) => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Exit::Gone),
            Err(_) => Err(slow()),
        },
        _ = inbox.overflow() => Err(slow()),
    }
}

/// Flushes queued control frames (pongs) under the same rules as [`send`].
async fn flush<S>(ws: &mut S, inbox: &Inbox, timeout: Duration) -> Result<(), Exit>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let slow = || Exit::Close(close::SLOW_CONSUMER, "slow consumer".into());
    tokio::select! {
        flushed = tokio::time::timeout(timeout, ws.flush()) => match flushed {
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
    /// A well-formed `send`: hand it to the handler.
    Call {
        id: String,
        data: serde_json::Value,
    },
    /// The deadline moved (`info.expires_at` updated); send this.
    Extend(Message),
}

fn handle_frame(raw: &str, info: &mut ConnectionInfo, services: &impl SocketServices) -> Reply {
    let frame: ClientFrame = match serde_json::from_str(raw) {
        Ok(f) => f,
        Err(_) => return Reply::Send(refuse_malformed(raw)),
    };
    match frame {
        ClientFrame::Send { id, data } => {
            if send_id_is_well_formed(&id) {
                Reply::Call { id, data }
            } else {
                Reply::Send(send_error(
                    None,
                    ErrorCode::BadRequest,
                    "a send id is 1-64 characters of [A-Za-z0-9_-]",
                ))
            }
        }
        ClientFrame::Ping => Reply::Send(text(&ServerFrame::Pong)),
        ClientFrame::Ack { .. } => {
            // Counted only: the client's `since` decides what is replayed (PROTOCOL §10).
            crate::metrics::hot().push_acks.increment(1);
            Reply::None
        }
        ClientFrame::Refresh { access_token } => match services.verify_access(&access_token) {
            Ok(claims) if claims.sid == info.session_id && claims.sub == info.user_id => {
                // The same token again, or an older one, renews nothing: saying
                // `refreshed` would tell the client its renewal worked.
                if claims.exp <= info.expires_at {
                    return Reply::Send(error_frame(
                        ErrorCode::TokenInvalid,
                        "not newer than the token in force",
                    ));
                }
                info.expires_at = claims.exp;
                Reply::Extend(text(&ServerFrame::Refreshed {
                    expires_at: info.expires_at,
                }))
            }
            Ok(_) => Reply::Send(error_frame(
                ErrorCode::TokenInvalid,
                "token of another session",
            )),
            Err(refusal) => Reply::Send(error_frame(refusal.code, &refusal.message)),
        },
    }
}

/// The answer to a frame that is not a known client frame: a malformed `send` gets
/// `bad_request` with its id when a well-formed one could be read.
fn refuse_malformed(raw: &str) -> Message {
    /// Just enough of a frame to tell a `send` and read its id.
    #[derive(serde::Deserialize)]
    struct Loose {
        #[serde(rename = "type")]
        kind: Option<String>,
        id: Option<serde_json::Value>,
    }
    let Ok(Loose { kind, id }) = serde_json::from_str::<Loose>(raw) else {
        return error_frame(ErrorCode::BadRequest, "not a known client frame");
    };
    if kind.as_deref() != Some("send") {
        return error_frame(ErrorCode::BadRequest, "not a known client frame");
    }
    let id = match id {
        Some(serde_json::Value::String(id)) if send_id_is_well_formed(&id) => Some(id),
        _ => None,
    };
    send_error(
        id,
        ErrorCode::BadRequest,
        "a send is {\"type\":\"send\",\"id\",\"data\"}",
    )
}

#[cfg(test)]
mod tests {
    //! The loop over an in-memory pipe, on tokio's paused clock: every timer fires at a
    //! known instant, and the test clock's unix time follows tokio's.

    use super::*;
    use crate::auth::tokens::TokenError;
    use crate::ws::ws_config_for;
    use tokio::io::{AsyncWriteExt, DuplexStream};
    use tokio::sync::Semaphore;
    use tokio::task::JoinHandle;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    /// Unix milliseconds at the start of every test (a whole second).
    const BASE_MS: i64 = 1_700_000_000_000;
    /// The admitted access token's `exp`: ten minutes after the start.
    const EXP: i64 = BASE_MS / 1000 + 600;
    /// Long enough not to fire in a test that is not about it.
    const NEVER: Duration = Duration::from_secs(24 * 3600);

    /// Unix time that moves with tokio's (paused) clock.
    struct TestClock {
        start: Instant,
    }

    impl Clock for TestClock {
        fn unix_ms(&self) -> i64 {
            BASE_MS + i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX)
        }
    }

    /// Tokens known by name; a fixed resume answer; a business handler.
    struct TestServices {
        tokens: Vec<(&'static str, Result<Claims, TokenError>)>,
        resume: Option<ServerFrame>,
        handler: Arc<dyn SessionHandler>,
        pusher: crate::handler::Pusher,
    }

    impl Default for TestServices {
        fn default() -> Self {
            let hub = crate::hub::Hub::local("n1".into(), Registry::default());
            TestServices {
                tokens: Vec::new(),
                resume: None,
                handler: Arc::new(crate::handler::NoUpstream),
                pusher: crate::handler::Pusher::new(
                    hub,
                    Arc::new(crate::store::memory::MemoryStore::new()),
                    crate::store::HistoryLimits {
                        max_len: 0,
                        ttl: Duration::ZERO,
                    },
                ),
            }
        }
    }

    impl SocketServices for TestServices {
        /// Refusals spelled as the server's error mapping spells them.
        fn verify_access(&self, token: &str) -> Result<Claims, Refusal> {
            let verdict = self
                .tokens
                .iter()
                .find(|(name, _)| *name == token)
                .map_or(Err(TokenError::Invalid), |(_, verdict)| verdict.clone());
            verdict.map_err(|e| crate::http::error::ApiError::from(e).refusal())
        }

        async fn resume_ticket(&self, _info: &ConnectionInfo) -> Option<ServerFrame> {
            self.resume.clone()
        }

        fn handler(&self) -> &Arc<dyn SessionHandler> {
            &self.handler
        }

        fn context(&self, info: &ConnectionInfo) -> Context {
            let identity = crate::handler::Identity {
                conn_id: info.conn_id.clone(),
                node_id: "n1".into(),
                user_id: info.user_id.clone(),
                session_id: info.session_id.clone(),
                device_id: info.device_id.clone(),
                client_type: info.client_type,
            };
            Context::new(identity, self.pusher.clone())
        }

        fn spawn_event<F>(&self, event: F) -> tokio::task::JoinHandle<()>
        where
            F: Future<Output = ()> + Send + 'static,
        {
            tokio::spawn(event)
        }
    }

    fn claims(session_id: &str, user_id: &str, exp: i64) -> Claims {
        Claims {
            iss: "ticketgate".into(),
            sub: user_id.into(),
            aud: "ticketgate".into(),
            exp,
            iat: BASE_MS / 1000,
            jti: "j".into(),
            sid: session_id.into(),
            did: "d1".into(),
            ctp: ClientType::Web,
        }
    }

    struct Setup {
        settings: SocketSettings,
        services: TestServices,
        /// Bytes the pipe holds before a writer blocks.
        pipe: usize,
        welcome: Welcome,
    }

    impl Default for Setup {
        fn default() -> Self {
            Setup {
                settings: SocketSettings {
                    idle_timeout: NEVER,
                    ping_interval: NEVER,
                    renewal_window: Duration::from_secs(60),
                    frames: Rate::per_second(1000),
                    max_fragments: 16,
                    send_timeout: Duration::from_secs(10),
                    close_timeout: Duration::from_secs(2),
                    inflight: 2,
                },
                services: TestServices::default(),
                pipe: 64 * 1024,
                welcome: Welcome::Send,
            }
        }
    }

    /// A running socket loop and the client end of its pipe.
    struct Socket {
        client: WebSocketStream<DuplexStream>,
        inbox: Arc<Inbox>,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
        registry: Registry,
        started: Instant,
    }

    impl Setup {
        async fn open(self) -> Socket {
            let (server_io, client_io) = tokio::io::duplex(self.pipe);
            let started = Instant::now();
            let clock = Arc::new(TestClock { start: started });
            let shutdown = CancellationToken::new();
            let node = SocketNode::new(
                self.settings,
                clock.clone(),
                shutdown.clone(),
                DefaultClock::default(),
            );
            let registry = Registry::default();
            let registered = register(&registry, &*clock, "c1".into(), "s1");
            let inbox = registered.inbox.clone();
            let permit = Arc::new(Semaphore::new(1))
                .try_acquire_owned()
                .expect("a free slot");
            let info = ConnectionInfo {
                conn_id: "c1".into(),
                session_id: "s1".into(),
                user_id: "alice".into(),
                device_id: "d1".into(),
                client_type: ClientType::Web,
                expires_at: EXP,
                recovery: None,
            };
            let (services, welcome) = (self.services, self.welcome);
            let task = tokio::spawn(async move {
                let ws = crate::ws::accept(server_io, Vec::new(), &node, ws_config_for(4096)).await;
                run(ws, info, &node, &services, permit, registered, welcome).await;
            });
            let client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
            Socket {
                client,
                inbox,
                shutdown,
                task,
                registry,
                started,
            }
        }
    }

    impl Socket {
        /// The next message from the server (fails the test on EOF or an error).
        async fn message(&mut self) -> Message {
            self.client
                .next()
                .await
                .expect("a message, not the end")
                .expect("a well-formed message")
        }

        /// The next message, which must be a server frame.
        async fn frame(&mut self) -> ServerFrame {
            match self.message().await {
                Message::Text(t) => serde_json::from_str(t.as_str()).expect("a server frame"),
                other => panic!("expected a text frame, got {other:?}"),
            }
        }

        /// The next message, which must be a close frame: its code and reason.
        async fn close(&mut self) -> (u16, String) {
            match self.message().await {
                Message::Close(Some(frame)) => (u16::from(frame.code), frame.reason.to_string()),
                other => panic!("expected a close frame, got {other:?}"),
            }
        }

        async fn send(&mut self, frame: &ClientFrame) {
            let text = serde_json::to_string(frame).expect("json");
            self.client.send(Message::text(text)).await.expect("sent");
        }

        fn elapsed(&self) -> Duration {
            self.started.elapsed()
        }

        /// Welcome already read; the elapsed time is within [at, at + 1 s).
        fn assert_at(&self, at: Duration, what: &str) {
            let elapsed = self.elapsed();
            assert!(
                elapsed >= at && elapsed < at + Duration::from_secs(1),
                "{what} at {elapsed:?}, expected at {at:?}"
            );
        }
    }

    fn welcome() -> ServerFrame {
        ServerFrame::Welcome {
            session_id: "s1".into(),
            conn_id: "c1".into(),
            user_id: "alice".into(),
            device_id: "d1".into(),
            expires_at: EXP,
            recovered: None,
            last_id: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_welcome_frame_comes_first_unless_it_was_sent_with_the_101() {
        let mut socket = Setup::default().open().await;
        assert_eq!(socket.frame().await, welcome());
        socket.send(&ClientFrame::Ping).await;
        assert_eq!(socket.frame().await, ServerFrame::Pong);
        assert_eq!(socket.registry.len(), 1, "registered while it runs");

        let mut sent = Setup {
            welcome: Welcome::Sent,
            ..Setup::default()
        }
        .open()
        .await;
        sent.send(&ClientFrame::Ping).await;
        assert_eq!(sent.frame().await, ServerFrame::Pong, "no second welcome");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_socket_closes_with_1000_after_the_idle_timeout() {
        let mut setup = Setup::default();
        setup.settings.idle_timeout = Duration::from_secs(30);
        let mut socket = setup.open().await;
        assert_eq!(socket.frame().await, welcome());
        // A client frame at 20 s moves the idle deadline to 50 s.
        tokio::time::sleep(Duration::from_secs(20)).await;
        socket.send(&ClientFrame::Ping).await;
        assert_eq!(socket.frame().await, ServerFrame::Pong);
        assert_eq!(
            socket.close().await,
            (close::NORMAL, "idle timeout".to_owned())
        );
        socket.assert_at(Duration::from_secs(50), "idle close");
    }

    #[tokio::test(start_paused = true)]
    async fn expiring_comes_at_the_renewal_window_then_4004_at_exp() {
        let mut socket = Setup::default().open().await;
        assert_eq!(socket.frame().await, welcome());
        assert_eq!(
            socket.frame().await,
            ServerFrame::Expiring { expires_at: EXP }
        );
        socket.assert_at(Duration::from_secs(600 - 60), "expiring");
        assert_eq!(
            socket.close().await,
            (close::SESSION_EXPIRED, "session expired".to_owned())
        );
        socket.assert_at(Duration::from_secs(600), "4004");
        socket.task.await.expect("the loop ends");
        assert!(socket.registry.is_empty(), "unregistered at the end");
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_refresh_frame_of_the_session_extends_the_deadline_and_others_are_refused() {
        let later = EXP + 600;
        let mut setup = Setup::default();
        setup.services.tokens = vec![
            ("later", Ok(claims("s1", "alice", later))),
            ("other-session", Ok(claims("s2", "alice", later))),
            ("other-user", Ok(claims("s1", "bob", later))),
            ("stale", Err(TokenError::Expired)),
            ("same", Ok(claims("s1", "alice", EXP))),
            ("older", Ok(claims("s1", "alice", EXP - 60))),
        ];
        let mut socket = setup.open().await;
        assert_eq!(socket.frame().await, welcome());

        let refused = [
            ("other-session", "token_invalid"),
            ("other-user", "token_invalid"),
            ("stale", "token_expired"),
            ("unknown", "token_invalid"),
            ("same", "token_invalid"),
            ("older", "token_invalid"),
        ];
        for (token, code) in refused {
            socket
                .send(&ClientFrame::Refresh {
                    access_token: token.into(),
                })
                .await;
            match socket.frame().await {
                ServerFrame::Error { error, .. } => assert_eq!(error, code, "{token}"),
                other => panic!("{token}: expected an error frame, got {other:?}"),
            }
        }

        tokio::time::sleep(Duration::from_secs(10)).await;
        socket
            .send(&ClientFrame::Refresh {
                access_token: "later".into(),
            })
            .await;
        assert_eq!(
            socket.frame().await,
            ServerFrame::Refreshed { expires_at: later }
        );
        // Nothing at the old window nor the old exp: the next frame is about the new one.
        assert_eq!(
            socket.frame().await,
            ServerFrame::Expiring { expires_at: later }
        );
        socket.assert_at(Duration::from_secs(1200 - 60), "expiring");
        assert_eq!(socket.close().await.0, close::SESSION_EXPIRED);
        socket.assert_at(Duration::from_secs(1200), "4004");
    }

    #[tokio::test(start_paused = true)]
    async fn a_ping_goes_out_every_ping_interval() {
        let mut setup = Setup::default();
        setup.settings.ping_interval = Duration::from_secs(15);
        let mut socket = setup.open().await;
        assert_eq!(socket.frame().await, welcome());
        for n in 1..=3 {
            let message = socket.message().await;
            assert!(matches!(message, Message::Ping(_)), "got {message:?}");
            socket.assert_at(Duration::from_secs(15 * n), "ping");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_does_not_read_is_closed_with_4010_after_the_send_timeout() {
        let mut socket = Setup {
            pipe: 1024,
            ..Setup::default()
        }
        .open()
        .await;
        let big = "x".repeat(8 * 1024);
        assert!(socket.inbox.push(Outbound::Text(big.clone())));
        // The write blocks on the full pipe; the client starts reading only later.
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        assert_eq!(socket.frame().await, welcome());
        match socket.message().await {
            Message::Text(t) => assert_eq!(t.as_str(), big),
            other => panic!("expected the big frame, got {other:?}"),
        }
        assert_eq!(
            socket.close().await,
            (close::SLOW_CONSUMER, "slow consumer".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_overflowing_inbox_closes_with_4010() {
        let mut socket = Setup::default().open().await;
        // The loop does not run between these pushes (one thread, no await).
        for n in 0..INBOX {
            assert!(socket.inbox.push(Outbound::Text(format!("m{n}"))));
        }
        assert!(!socket.inbox.push(Outbound::Text("one too many".into())));
        assert_eq!(socket.frame().await, welcome());
        assert_eq!(
            socket.close().await,
            (close::SLOW_CONSUMER, "slow consumer".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_overflow_abandons_a_blocked_write_at_once() {
        let socket = Setup {
            pipe: 1024,
            ..Setup::default()
        }
        .open()
        .await;
        assert!(socket.inbox.push(Outbound::Text("x".repeat(8 * 1024))));
        tokio::time::sleep(Duration::from_millis(1)).await;
        for n in 0..=INBOX {
            socket.inbox.push(Outbound::Text(format!("m{n}")));
        }
        // Gone well before the send timeout (10 s): only the close's own 2 s budget.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(socket.task.is_finished(), "still blocked on its write");
        assert!(socket.registry.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_offers_a_resume_ticket_then_closes_with_1001() {
        let resume = ServerFrame::Resume {
            ticket: "1.resume.ticket".into(),
            expires_in: 30,
        };
        let mut setup = Setup::default();
        setup.services.resume = Some(resume.clone());
        let mut socket = setup.open().await;
        assert_eq!(socket.frame().await, welcome());
        socket.shutdown.cancel();
        assert_eq!(socket.frame().await, resume);
        assert_eq!(
            socket.close().await,
            (close::GOING_AWAY, "server shutting down".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_without_a_resume_ticket_just_closes_with_1001() {
        let mut socket = Setup::default().open().await;
        assert_eq!(socket.frame().await, welcome());
        socket.shutdown.cancel();
        assert_eq!(socket.close().await.0, close::GOING_AWAY);
    }

    #[tokio::test(start_paused = true)]
    async fn the_inbox_delivers_pushes_and_a_kick_closes_with_its_code() {
        let mut socket = Setup::default().open().await;
        assert_eq!(socket.frame().await, welcome());
        assert!(socket
            .inbox
            .push(Outbound::Text(r#"{"type":"pong"}"#.into())));
        assert!(socket
            .inbox
            .push(Outbound::Close(close::REVOKED, "revoked".into())));
        assert_eq!(socket.frame().await, ServerFrame::Pong);
        assert_eq!(socket.close().await, (close::REVOKED, "revoked".to_owned()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_binary_frame_closes_with_1008() {
        let mut socket = Setup::default().open().await;
        assert_eq!(socket.frame().await, welcome());
        socket
            .client
            .send(Message::binary(vec![1, 2, 3]))
            .await
            .expect("sent");
        assert_eq!(socket.close().await.0, close::POLICY);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unmasked_client_frame_closes_with_1002() {
        let mut socket = Setup::default().open().await;
        assert_eq!(socket.frame().await, welcome());
        // A text frame "hi" without the mask a client must set (RFC 6455 §5.1).
        let raw = socket.client.get_mut();
        raw.write_all(&[0x81, 0x02, b'h', b'i'])
            .await
            .expect("written");
        assert_eq!(
            socket.close().await,
            (close::PROTOCOL_ERROR, "protocol error".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn frames_over_the_rate_close_with_4008() {
        let mut setup = Setup::default();
        setup.settings.frames = Rate::parse("3/min").expect("rate");
        let mut socket = setup.open().await;
        assert_eq!(socket.frame().await, welcome());
        for _ in 0..3 {
            socket.send(&ClientFrame::Ping).await;
            assert_eq!(socket.frame().await, ServerFrame::Pong);
        }
        socket.send(&ClientFrame::Ping).await;
        assert_eq!(
            socket.close().await,
            (close::FLOOD, "message flood".to_owned())
        );
    }

    /// A masked client frame (mask key 0) as raw bytes.
    fn raw_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let len = u8::try_from(payload.len()).expect("a short payload");
        let mut out = vec![u8::from(fin) << 7 | opcode, 0x80 | len];
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(payload);
        out
    }

    #[tokio::test(start_paused = true)]
    async fn empty_continuation_frames_close_with_1008_past_the_fragment_cap() {
        let mut socket = Setup::default().open().await;
        assert_eq!(socket.frame().await, welcome());
        // An opening fragment, then empty continuations that never finish the message:
        // tungstenite alone hands the loop nothing, ever.
        let mut flood = raw_frame(false, 0x1, b"{");
        for _ in 0..100 {
            flood.extend(raw_frame(false, 0x0, b""));
        }
        let raw = socket.client.get_mut();
        raw.write_all(&flood).await.expect("written");
        assert_eq!(
            socket.close().await,
            (close::POLICY, "too many fragments".to_owned())
        );
        assert!(socket.elapsed() < Duration::from_secs(1), "closed at once");
    }

    #[tokio::test(start_paused = true)]
    async fn every_frame_counts_against_the_rate_fragments_and_pings_included() {
        let mut setup = Setup::default();
        setup.settings.frames = Rate::parse("4/min").expect("rate");
        let mut socket = setup.open().await;
        assert_eq!(socket.frame().await, welcome());
        // Two `ack` messages of two fragments each: four frames, two messages.
        let mut acks = Vec::new();
        for _ in 0..2 {
            acks.extend(raw_frame(false, 0x1, br#"{"type":"ack","#));
            acks.extend(raw_frame(true, 0x0, br#""id":"1"}"#));
        }
        let raw = socket.client.get_mut();
        raw.write_all(&acks).await.expect("written");
        raw.write_all(&raw_frame(true, 0x9, b""))
            .await
            .expect("written");
        // The fifth frame: over the rate (a pong first would mean it was let through).
        assert_eq!(
            socket.close().await,
            (close::FLOOD, "message flood".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_utf8_in_a_text_frame_or_a_close_reason_closes_with_1007() {
        let bad_text = raw_frame(true, 0x1, &[b'{', 0xff, 0xfe, b'}']);
        let bad_reason = raw_frame(true, 0x8, &[0x03, 0xe8, 0xc3, 0x28]);
        // Split over two fragments, the bad sequence across the boundary.
        let mut bad_fragments = raw_frame(false, 0x1, &[b'"', 0xe2]);
        bad_fragments.extend(raw_frame(true, 0x0, &[0x28, 0xa1, b'"']));
        for (what, bytes) in [
            ("text", bad_text),
            ("close reason", bad_reason),
            ("fragments", bad_fragments),
        ] {
            let mut socket = Setup::default().open().await;
            assert_eq!(socket.frame().await, welcome());
            let raw = socket.client.get_mut();
            raw.write_all(&bytes).await.expect("written");
            assert_eq!(
                socket.close().await,
                (close::INVALID_PAYLOAD, "invalid utf-8".to_owned()),
                "{what}"
            );
        }
    }
}
