//! [`ManagedConnection`]: a WebSocket that renews itself and reconnects.
//!
//! A background task mints a ticket, connects, and hands every server frame to the
//! application as an [`Event`]. It answers `expiring` with a newer access token of the
//! session (through the [`SessionHandle`], so a refresh is shared with everything else
//! that uses the session), and reconnects when the server or the network drops the
//! socket:
//!
//! ```text
//! mint ──► connect ──► welcome ──► frames ──► close
//!  ▲                                            │
//!  │   4000–4499, 1001, 1006 (network), …       │ 4500–4999 (the session is over),
//!  └──── backoff with full jitter ◄─────────────┤ 1000, 1008, 1009, …: stop
//!        (after 1001, the `resume` ticket       │
//!         is tried first, no mint)              ▼
//! ```
//!
//! The decisions are pure functions, [`close_action`] and [`backoff_delay`], so they
//! can be read and tested apart from the task.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng as _};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::calls::{self, Pending, SendError, DEFAULT_CALL_TIMEOUT};
use crate::client::WsStream;
use crate::error::ClientError;
use crate::protocol::{close, ClientFrame, ServerFrame};
use crate::session::{EndReason, SessionHandle};
use crate::session_data::{Ticket, Welcome};

/// Events the task can queue before it waits for the application to read them.
const EVENT_BUFFER: usize = 256;
/// Client frames that can wait for the socket (also while reconnecting).
const FRAME_BUFFER: usize = 64;
/// A connection that lived this long resets the backoff: its close is a new incident,
/// not one more failure in a row.
const STABLE_CONNECTION: Duration = Duration::from_secs(30);
/// How long to wait for the close handshake when this side closes.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The code reported for a socket that ended without a close frame (RFC 6455 §7.1.5).
const ABNORMAL_CLOSURE: u16 = 1006;
/// The code reported for a close frame without a code (RFC 6455 §7.1.5).
const NO_STATUS: u16 = 1005;

/// Settings of a [`ManagedConnection`].
///
/// ```
/// use std::time::Duration;
/// use ticketgate_sdk::ConnectOptions;
///
/// let options = ConnectOptions {
///     backoff_base: Duration::from_millis(200),
///     ..ConnectOptions::default()
/// };
/// assert_eq!(options.backoff_cap, Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// The first reconnect waits up to this long; each failure in a row doubles it.
    /// Default 500 ms.
    pub backoff_base: Duration,
    /// No reconnect waits longer than this (unless the server's `Retry-After` asks
    /// for more). Default 30 s.
    pub backoff_cap: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
        }
    }
}

/// What a [`ManagedConnection`] reports, in order.
///
/// A connection's life reads `Welcome`, then `Push` / `Frame` events, then `Closed`; a
/// reconnect adds `Reconnecting` and starts over with `Welcome`. After an event that
/// says it will not reconnect, the stream ends.
#[derive(Debug)]
pub enum Event {
    /// A socket was admitted (first connect or reconnect).
    Welcome(Welcome),
    /// A message for this user or device. Acknowledge it with [`ClientFrame::Ack`] if
    /// the application needs to.
    Push {
        /// The message id.
        id: String,
        /// The topic.
        topic: String,
        /// The payload.
        data: serde_json::Value,
    },
    /// Any other server frame: `pong`, `error`, `expiring` (already being answered),
    /// `refreshed`. `resume` frames are kept by the task and not reported.
    Frame(ServerFrame),
    /// Waiting `delay` before reconnect attempt number `attempt` (1 for the first
    /// attempt after a success).
    Reconnecting {
        /// Attempts in a row, counting this one.
        attempt: u32,
        /// How long the task waits before it.
        delay: Duration,
    },
    /// The socket closed; `code` is 1006 when it ended without a close frame (network).
    Closed {
        /// The close code (see [`crate::protocol::close`]).
        code: u16,
        /// The close reason as sent, or the transport error.
        reason: String,
        /// False for 4500–4999 (the session is over: log in again), 1000, 1008, 1009
        /// and other codes that a new socket would not cure.
        will_reconnect: bool,
    },
    /// Right after a `Welcome`: pushes published while this client was away are lost
    /// (the server's history no longer held all of them: trimmed, expired, or turned
    /// off). Reload the state from your own service; later pushes follow from
    /// `last_id` on.
    PushesLost {
        /// The newest push id the server holds (`None`: it holds none), from which
        /// the connection now continues.
        last_id: Option<String>,
    },
    /// A connect attempt (mint or upgrade) failed.
    ConnectFailed {
        /// Why. [`ClientError::SessionEnded`] means the user must log in again.
        error: ClientError,
        /// False when retrying cannot help: the session is over, or the server
        /// refused with 400 or 403 (e.g. `device_mismatch`, `origin_forbidden`).
        will_reconnect: bool,
    },
    /// Answering `expiring` failed. The socket stays open until its deadline, when the
    /// server closes it with 4004 and the task reconnects (or stops, if the session is
    /// over).
    RenewFailed {
        /// Why the renewed token could not be had.
        error: ClientError,
    },
}

/// What to do after the server closed a socket with a given code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAction {
    /// Reconnect with a fresh ticket (or the `resume` ticket), after a backoff.
    Reconnect,
    /// Do not reconnect: a new socket would not help, or must not be opened.
    Stop,
}

/// The reconnect policy by close code.
///
/// - 4000–4499 (session expired, flood, slow consumer, …): reconnect (protocol §4).
/// - 4500–4999 (revoked, replaced, …): stop; only the user can act (log in again).
/// - 1001 (server draining), 1005 and 1006 (no close code: the network), 1011–1014
///   (server error, restart, try again later, bad gateway): reconnect.
/// - 1000 (normal, e.g. idle timeout), 1002, 1003, 1007, 1008, 1009 (this client sent
///   something wrong), and any other code: stop.
///
/// ```
/// use ticketgate_sdk::{close_action, CloseAction};
///
/// assert_eq!(close_action(4008), CloseAction::Reconnect);
/// assert_eq!(close_action(4503), CloseAction::Stop);
/// ```
pub fn close_action(code: u16) -> CloseAction {
    match code {
        4000..=4499 => CloseAction::Reconnect,
        1001 | NO_STATUS | ABNORMAL_CLOSURE | 1011..=1014 => CloseAction::Reconnect,
        _ => CloseAction::Stop,
    }
}

/// How long to wait before reconnect attempt `attempt` (1 for the first): "full
/// jitter", uniform in `[0, min(cap, base · 2^(attempt-1))]`.
///
/// The jitter spreads a crowd of clients that lost their sockets at once (a deploy, a
/// network blip) over the whole interval instead of sending them back together.
/// `attempt` 0 counts as 1.
///
/// ```
/// use std::time::Duration;
/// use rand::SeedableRng;
/// use ticketgate_sdk::backoff_delay;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(7);
/// let base = Duration::from_millis(100);
/// let cap = Duration::from_secs(1);
/// assert!(backoff_delay(1, base, cap, &mut rng) <= base);
/// assert!(backoff_delay(3, base, cap, &mut rng) <= base * 4);
/// assert!(backoff_delay(30, base, cap, &mut rng) <= cap);
/// ```
pub fn backoff_delay<R: Rng + ?Sized>(
    attempt: u32,
    base: Duration,
    cap: Duration,
    rng: &mut R,
) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1 << doublings).min(cap);
    let ceiling = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.gen_range(0..=ceiling))
}

/// A WebSocket connection of a session that renews itself and reconnects, started by
/// [`SessionHandle::connect_with_reconnect`].
///
/// Read what happens with [`ManagedConnection::next`]; send frames with
/// [`ManagedConnection::send`] (or from other tasks through
/// [`ManagedConnection::sender`]). Dropping it, or calling
/// [`ManagedConnection::close`], ends the task and closes the socket with 1000.
///
/// ```no_run
/// # async fn run(handle: ticketgate_sdk::SessionHandle) -> Result<(), ticketgate_sdk::ClientError> {
/// use ticketgate_sdk::protocol::ClientFrame;
/// use ticketgate_sdk::{ConnectOptions, Event};
///
/// let mut connection = handle.connect_with_reconnect(ConnectOptions::default());
/// while let Some(event) = connection.next().await {
///     match event {
///         Event::Push { id, topic, data } => {
///             println!("{topic}: {data}");
///             connection.send(ClientFrame::Ack { id }).await?;
///         }
///         Event::Closed { code, will_reconnect: false, .. } => eprintln!("closed for good: {code}"),
///         Event::ConnectFailed { error, will_reconnect: false } => eprintln!("gave up: {error}"),
///         other => println!("{other:?}"),
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ManagedConnection {
    events: mpsc::Receiver<Event>,
    sender: ConnectionSender,
    /// The id of the last push [`ManagedConnection::next`] returned (or the one the
    /// connection was started from).
    last_id: Option<String>,
}

impl ManagedConnection {
    /// The next event, or `None` once the connection has stopped for good (closed by
    /// this side, or after an event that said it will not reconnect).
    ///
    /// Read events promptly: while the queue is full the task waits, and a socket
    /// whose frames are not read is eventually closed by the server.
    ///
    /// # Cancel safety
    /// Cancel safe: an event is removed from the queue only when it is returned.
    ///
    /// ```no_run
    /// # async fn run(mut connection: ticketgate_sdk::ManagedConnection) {
    /// while let Some(event) = connection.next().await {
    ///     println!("{event:?}");
    /// }
    /// # }
    /// ```
    pub async fn next(&mut self) -> Option<Event> {
        let event = self.events.recv().await;
        match &event {
            Some(Event::Push { id, .. }) => self.last_id = Some(id.clone()),
            Some(Event::PushesLost {
                last_id: Some(head),
            }) => self.last_id = Some(head.clone()),
            _ => {}
        }
        event
    }

    /// The id of the last push [`ManagedConnection::next`] returned: keep it (e.g. on
    /// disk) and pass it to [`SessionHandle::connect_with_reconnect_since`] after a
    /// restart, so that the server replays what was published meanwhile. Before any
    /// push, the id the connection was started from.
    ///
    /// ```no_run
    /// # async fn run(mut connection: ticketgate_sdk::ManagedConnection) {
    /// while let Some(event) = connection.next().await {
    ///     if let ticketgate_sdk::Event::Push { .. } = event {
    ///         let _keep = connection.last_id().map(str::to_owned);
    ///     }
    /// }
    /// # }
    /// ```
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Queues a frame for the socket. While the task reconnects, frames wait for the
    /// next socket; a frame in flight when a socket breaks is lost.
    ///
    /// # Errors
    /// [`ClientError::Stopped`] when the connection has stopped.
    ///
    /// ```no_run
    /// # async fn run(connection: ticketgate_sdk::ManagedConnection) -> Result<(), ticketgate_sdk::ClientError> {
    /// connection.send(ticketgate_sdk::protocol::ClientFrame::Ping).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(&self, frame: ClientFrame) -> Result<(), ClientError> {
        self.sender.send(frame).await
    }

    /// Asks the task to close the socket (code 1000) and stop. Events already queued
    /// can still be read; then [`ManagedConnection::next`] answers `None`.
    ///
    /// ```no_run
    /// # async fn run(mut connection: ticketgate_sdk::ManagedConnection) {
    /// connection.close();
    /// while connection.next().await.is_some() {}
    /// # }
    /// ```
    pub fn close(&self) {
        self.sender.close();
    }

    /// A handle that sends frames to (and closes) this connection from another task.
    ///
    /// ```no_run
    /// # async fn run(connection: ticketgate_sdk::ManagedConnection) {
    /// let sender = connection.sender();
    /// tokio::spawn(async move {
    ///     let _ = sender.send(ticketgate_sdk::protocol::ClientFrame::Ping).await;
    /// });
    /// # }
    /// ```
    pub fn sender(&self) -> ConnectionSender {
        self.sender.clone()
    }

    /// A business call (PROTOCOL §9): sends `data` in a `send` frame and waits up to
    /// [`DEFAULT_CALL_TIMEOUT`] for its `reply`. Calls may run concurrently (from
    /// [`ConnectionSender`] clones too); their answers are paired by id.
    ///
    /// # Errors
    /// [`SendError`]: `upstream_unavailable`, `busy`, the upstream's own code, the
    /// timeout, or [`SendError::Disconnected`] when the socket broke before the answer
    /// (the task reconnects; the call may or may not have been processed).
    ///
    /// ```no_run
    /// # async fn run(connection: ticketgate_sdk::ManagedConnection) {
    /// match connection.request(serde_json::json!({"op": "join", "room": "lobby"})).await {
    ///     Ok(reply) => println!("joined: {reply}"),
    ///     Err(e) if e.is_retryable() => eprintln!("try again later: {e}"),
    ///     Err(e) => eprintln!("refused: {e}"),
    /// }
    /// # }
    /// ```
    pub async fn request(&self, data: serde_json::Value) -> Result<serde_json::Value, SendError> {
        self.sender.request(data).await
    }
}

/// Sends frames to a [`ManagedConnection`] from any task; cheap to clone.
///
/// ```no_run
/// # async fn run(sender: ticketgate_sdk::ConnectionSender) -> Result<(), ticketgate_sdk::ClientError> {
/// use ticketgate_sdk::protocol::ClientFrame;
///
/// sender.send(ClientFrame::Ack { id: "m-17".to_owned() }).await?;
/// sender.close();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ConnectionSender {
    frames: mpsc::Sender<ClientFrame>,
    close: Arc<watch::Sender<bool>>,
    pending: Arc<Pending>,
}

impl ConnectionSender {
    /// Queues a frame for the socket, as [`ManagedConnection::send`].
    ///
    /// # Errors
    /// [`ClientError::Stopped`] when the connection has stopped.
    ///
    /// ```no_run
    /// # async fn run(sender: ticketgate_sdk::ConnectionSender) -> Result<(), ticketgate_sdk::ClientError> {
    /// sender.send(ticketgate_sdk::protocol::ClientFrame::Ping).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(&self, frame: ClientFrame) -> Result<(), ClientError> {
        self.frames
            .send(frame)
            .await
            .map_err(|_| ClientError::Stopped)
    }

    /// Asks the task to close the socket and stop, as [`ManagedConnection::close`].
    ///
    /// ```no_run
    /// # fn run(sender: ticketgate_sdk::ConnectionSender) {
    /// sender.close();
    /// # }
    /// ```
    pub fn close(&self) {
        self.close.send_replace(true);
    }

    /// A business call, as [`ManagedConnection::request`].
    ///
    /// # Errors
    /// [`SendError`], as [`ManagedConnection::request`].
    ///
    /// ```no_run
    /// # async fn run(sender: ticketgate_sdk::ConnectionSender) -> Result<(), ticketgate_sdk::SendError> {
    /// let reply = sender.request(serde_json::json!({"op": "ping"})).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn request(&self, data: serde_json::Value) -> Result<serde_json::Value, SendError> {
        self.request_within(data, DEFAULT_CALL_TIMEOUT).await
    }

    /// A business call that waits at most `timeout` for its answer.
    ///
    /// # Errors
    /// [`SendError`], as [`ManagedConnection::request`].
    pub async fn request_within(
        &self,
        data: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, SendError> {
        let (id, answer) = self.pending.register();
        let frame = ClientFrame::Send {
            id: id.clone(),
            data,
        };
        if self.frames.send(frame).await.is_err() {
            self.pending.forget(&id);
            return Err(SendError::Disconnected);
        }
        calls::wait(&self.pending, &id, answer, timeout).await
    }
}

/// Starts the task of a managed connection; `since` is the last push id the
/// application handled before (none for a first start).
pub(crate) fn spawn(
    handle: SessionHandle,
    options: ConnectOptions,
    since: Option<String>,
) -> ManagedConnection {
    let (event_tx, events) = mpsc::channel(EVENT_BUFFER);
    let (frame_tx, frames) = mpsc::channel(FRAME_BUFFER);
    let (close_tx, closing) = watch::channel(false);
    let pending = Arc::new(Pending::default());
    let runner = Runner {
        pending: pending.clone(),
        handle,
        options,
        events: event_tx,
        frames,
        closing,
        rng: StdRng::from_entropy(),
        failures: 0,
        resume: None,
        ws_url: String::new(),
        conn_token: String::new(),
        since: since.clone(),
    };
    tokio::spawn(runner.run());
    ManagedConnection {
        last_id: since,
        events,
        sender: ConnectionSender {
            frames: frame_tx,
            close: Arc::new(close_tx),
            pending,
        },
    }
}

/// The task's state across connections.
struct Runner {
    handle: SessionHandle,
    options: ConnectOptions,
    events: mpsc::Sender<Event>,
    frames: mpsc::Receiver<ClientFrame>,
    closing: watch::Receiver<bool>,
    rng: StdRng,
    /// Failed connects and unstable connections in a row.
    failures: u32,
    /// The `resume` ticket of the current socket, if the server sent one.
    resume: Option<ResumeTicket>,
    /// Where the last minted ticket said to connect; resume tickets go there too.
    ws_url: String,
    /// The newest access token the current socket knows: the one presented to mint
    /// its ticket, or the last one sent in a `refresh` frame.
    conn_token: String,
    /// Business calls waiting for their answers.
    pending: Arc<Pending>,
    /// The newest push id handed to the application (queued as an event): every
    /// connect asks the server for what came after it (`?since=`), so a reconnect
    /// loses nothing the server's history still holds, and repeats nothing.
    since: Option<String>,
}

struct ResumeTicket {
    ticket: Ticket,
    valid_until: Instant,
}

/// A socket that was admitted.
struct Opened {
    socket: WsStream,
    welcome: Welcome,
    /// The access token its deadline comes from.
    token: String,
}

/// What the task does after a socket or a connect attempt ended.
enum Next {
    Reconnect { retry_after: Duration },
    Stop,
}

impl Runner {
    async fn run(mut self) {
        self.run_sockets().await;
        self.pending.disconnect_all();
    }

    async fn run_sockets(&mut self) {
        loop {
            let mut closing = self.closing.clone();
            let opened = tokio::select! {
                opened = self.open() => opened,
                () = closed(&mut closing) => return,
            };
            let next = match opened {
                Ok(opened) => self.serve(opened).await,
                Err(error) => self.connect_failed(error).await,
            };
            let Next::Reconnect { retry_after } = next else {
                return;
            };
            self.failures = self.failures.saturating_add(1);
            let delay = backoff_delay(
                self.failures,
                self.options.backoff_base,
                self.options.backoff_cap,
                &mut self.rng,
            )
            .max(retry_after);
            let reconnecting = Event::Reconnecting {
                attempt: self.failures,
                delay,
            };
            if !self.emit(reconnecting).await {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = closed(&mut closing) => return,
            }
        }
    }

    /// Connects with the `resume` ticket when there is a valid one, else (or when it
    /// is refused) with a freshly minted ticket.
    async fn open(&mut self) -> Result<Opened, ClientError> {
        if let Some(reason) = self.handle.ended() {
            return Err(ClientError::SessionEnded(reason));
        }
        if let Some(resume) = self.resume.take() {
            if Instant::now() < resume.valid_until {
                let session = self.handle.session();
                let connected = self
                    .handle
                    .client()
                    .connect_since(&session, &resume.ticket, self.since.as_deref())
                    .await;
                match connected {
                    Ok((socket, welcome)) => {
                        tracing::debug!(session_id = %session.session_id, "resumed");
                        return Ok(Opened {
                            socket,
                            welcome,
                            token: self.conn_token.clone(),
                        });
                    }
                    Err(err) => tracing::debug!(cause = %err, "resume ticket refused; minting"),
                }
            }
        }
        let (ticket, session) = self.handle.mint().await?;
        if !ticket.ws_url.is_empty() {
            self.ws_url.clone_from(&ticket.ws_url);
        }
        let (socket, welcome) = self
            .handle
            .client()
            .connect_since(&session, &ticket, self.since.as_deref())
            .await?;
        Ok(Opened {
            socket,
            welcome,
            token: session.access_token,
        })
    }

    /// Runs one admitted socket until it closes.
    async fn serve(&mut self, opened: Opened) -> Next {
        let Opened {
            mut socket,
            welcome,
            token,
        } = opened;
        self.conn_token = token;
        let started = Instant::now();
        let lost = (welcome.recovered == Some(false)).then(|| welcome.last_id.clone());
        let mut welcomed = self.emit(Event::Welcome(welcome)).await;
        if let Some(last_id) = lost {
            // Continue from the server's head: what is lost is reported once, here.
            if last_id.is_some() {
                self.since.clone_from(&last_id);
            }
            welcomed = welcomed && self.emit(Event::PushesLost { last_id }).await;
        }
        let next = if welcomed {
            self.pump(&mut socket).await
        } else {
            Next::Stop
        };
        finish(&mut socket).await;
        // Calls sent on this socket are never answered on the next one.
        self.pending.disconnect_all();
        if started.elapsed() >= STABLE_CONNECTION {
            self.failures = 0;
        }
        next
    }

    /// Moves frames both ways and answers `expiring`, until the socket ends or the
    /// application closes.
    async fn pump(&mut self, socket: &mut WsStream) -> Next {
        let mut closing = self.closing.clone();
        let mut renewal: Option<JoinHandle<Result<String, ClientError>>> = None;
        let next = loop {
            tokio::select! {
                message = socket.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if !self.on_frame(text.as_str(), &mut renewal).await {
                            break Next::Stop;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame.map_or((NO_STATUS, String::new()), |f| {
                            (u16::from(f.code), f.reason.to_string())
                        });
                        break self.on_close(code, reason).await;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(err)) => break self.on_close(ABNORMAL_CLOSURE, err.to_string()).await,
                    None => break self.on_close(ABNORMAL_CLOSURE, "connection lost".to_owned()).await,
                },
                frame = self.frames.recv() => {
                    // `None`: every sender is gone, so nobody can talk to the socket.
                    let Some(frame) = frame else { break Next::Stop };
                    if let Err(err) = send_frame(socket, &frame).await {
                        break self.on_close(ABNORMAL_CLOSURE, err.to_string()).await;
                    }
                }
                renewed = join(&mut renewal) => {
                    renewal = None;
                    match renewed {
                        Ok(Ok(token)) => {
                            let frame = ClientFrame::Refresh { access_token: token.clone() };
                            if let Err(err) = send_frame(socket, &frame).await {
                                break self.on_close(ABNORMAL_CLOSURE, err.to_string()).await;
                            }
                            self.conn_token = token;
                        }
                        Ok(Err(error)) => {
                            if !self.emit(Event::RenewFailed { error }).await {
                                break Next::Stop;
                            }
                        }
                        Err(_) => {
                            if !self.emit(Event::RenewFailed { error: ClientError::Stopped }).await {
                                break Next::Stop;
                            }
                        }
                    }
                }
                () = closed(&mut closing) => break Next::Stop,
            }
        };
        if let Some(task) = renewal {
            task.abort();
        }
        next
    }

    /// Handles one server frame; false when the application is gone.
    async fn on_frame(
        &mut self,
        text: &str,
        renewal: &mut Option<JoinHandle<Result<String, ClientError>>>,
    ) -> bool {
        let frame = match serde_json::from_str::<ServerFrame>(text) {
            Ok(frame) => frame,
            Err(err) => {
                // A newer server may send frames this SDK does not know yet.
                tracing::debug!(cause = %err, "ignoring a frame this SDK does not know");
                return true;
            }
        };
        let Some(frame) = self.pending.settle(frame) else {
            return true;
        };
        let event = match frame {
            ServerFrame::Push { id, topic, data } => {
                self.since = Some(id.clone());
                Event::Push { id, topic, data }
            }
            ServerFrame::Resume { ticket, expires_in } => {
                self.resume = Some(ResumeTicket {
                    valid_until: Instant::now() + Duration::from_secs(expires_in),
                    ticket: Ticket {
                        ticket,
                        expires_in,
                        ws_url: self.ws_url.clone(),
                        new_access_token: None,
                    },
                });
                return true;
            }
            frame @ ServerFrame::Expiring { .. } => {
                if renewal.is_none() {
                    let handle = self.handle.clone();
                    let old = self.conn_token.clone();
                    *renewal = Some(tokio::spawn(
                        async move { handle.token_newer_than(&old).await },
                    ));
                }
                Event::Frame(frame)
            }
            other => Event::Frame(other),
        };
        self.emit(event).await
    }

    /// Reports a close and decides what comes next.
    async fn on_close(&mut self, code: u16, reason: String) -> Next {
        if code != close::GOING_AWAY {
            self.resume = None;
        }
        if (4500..=4999).contains(&code) {
            self.handle.end(EndReason::from_close_code(code));
        }
        let will_reconnect = close_action(code) == CloseAction::Reconnect;
        tracing::debug!(code, %reason, will_reconnect, "socket closed");
        let closed = Event::Closed {
            code,
            reason,
            will_reconnect,
        };
        if self.emit(closed).await && will_reconnect {
            Next::Reconnect {
                retry_after: Duration::ZERO,
            }
        } else {
            Next::Stop
        }
    }

    /// Reports a failed connect attempt and decides what comes next.
    async fn connect_failed(&mut self, error: ClientError) -> Next {
        let retry_after = match &error {
            ClientError::Api {
                retry_after: Some(secs),
                ..
            } => Duration::from_secs(*secs),
            _ => Duration::ZERO,
        };
        let will_reconnect = !is_fatal(&error) && self.handle.ended().is_none();
        tracing::debug!(cause = %error, will_reconnect, "connect failed");
        let failed = Event::ConnectFailed {
            error,
            will_reconnect,
        };
        if self.emit(failed).await && will_reconnect {
            Next::Reconnect { retry_after }
        } else {
            Next::Stop
        }
    }

    /// Queues an event; false when the application dropped the connection.
    async fn emit(&self, event: Event) -> bool {
        self.events.send(event).await.is_ok()
    }
}

/// True for connect failures that another attempt cannot cure.
fn is_fatal(error: &ClientError) -> bool {
    match error {
        ClientError::SessionEnded(_) | ClientError::InvalidUrl(_) | ClientError::Stopped => true,
        ClientError::Api { status, .. } => matches!(status, 400 | 403),
        _ => false,
    }
}

/// Resolves once the application asked to close, or dropped every way to ask.
async fn closed(closing: &mut watch::Receiver<bool>) {
    // An error means every sender is gone: nobody is left to use the connection.
    let _ = closing.wait_for(|closed| *closed).await;
}

/// Waits for the renewal in flight; never resolves when there is none.
async fn join<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

async fn send_frame(
    socket: &mut WsStream,
    frame: &ClientFrame,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    // Client frames are plain enums of strings: serializing them cannot fail.
    let Ok(text) = serde_json::to_string(frame) else {
        return Ok(());
    };
    socket.send(Message::text(text)).await
}

/// Closes the socket with 1000 (or completes a close the server started), waiting a
/// little for the handshake.
async fn finish(socket: &mut WsStream) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "client closed".into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.close(Some(frame))).await;
}
