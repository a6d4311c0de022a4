//! Business calls (PROTOCOL §9): `{"type":"send","id","data"}` answered by exactly one
//! `reply` or `error` frame with the same `id`, possibly out of order.
//!
//! - [`CallSocket`] wraps a plain socket ([`crate::Client::connect`]): one call at a
//!   time, frames that arrive meanwhile are kept for [`CallSocket::next_frame`].
//! - [`crate::ManagedConnection::request`]: any number of calls at once, from any task,
//!   across reconnects.
//!
//! Both pair answers by ids they choose (`c1`, `c2`, ...), wait at most a timeout, and
//! fail with a typed [`SendError`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use crate::client::WsStream;
use crate::error::ClientError;
use crate::protocol::{ClientFrame, ErrorCode, ServerFrame};

/// How long a call waits for its answer unless told otherwise: a little more than the
/// server's default upstream timeout (5 s), which answers `upstream_unavailable` then.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call got no `reply`.
///
/// ```
/// use ticketgate_sdk::SendError;
/// let e = SendError::from_code("busy", "too many sends unanswered");
/// assert_eq!(e, SendError::Busy { message: "too many sends unanswered".into() });
/// assert!(e.is_retryable());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// `upstream_unavailable`: no upstream is configured, or it is down, slow or broken.
    /// Retry later.
    #[error("upstream unavailable: {message}")]
    UpstreamUnavailable {
        /// The server's sentence.
        message: String,
    },
    /// `busy`: too many of this connection's calls are unanswered. Retry after some
    /// answers came back.
    #[error("busy: {message}")]
    Busy {
        /// The server's sentence.
        message: String,
    },
    /// Any other code: the upstream's own (`[a-z_]{1,64}`), or `bad_request`.
    #[error("{code}: {message}")]
    Refused {
        /// The error code.
        code: String,
        /// The sentence that came with it.
        message: String,
    },
    /// No answer within the timeout (the call may still be processed).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The socket closed before the answer (the call may or may not have been
    /// processed).
    #[error("the socket closed before the answer")]
    Disconnected,
}

impl SendError {
    /// The error of an `error` frame with `code` and `message`.
    pub fn from_code(code: &str, message: &str) -> SendError {
        let message = message.to_owned();
        match ErrorCode::parse(code) {
            Some(ErrorCode::UpstreamUnavailable) => SendError::UpstreamUnavailable { message },
            Some(ErrorCode::Busy) => SendError::Busy { message },
            _ => SendError::Refused {
                code: code.to_owned(),
                message,
            },
        }
    }

    /// True for `upstream_unavailable` and `busy`: the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SendError::UpstreamUnavailable { .. } | SendError::Busy { .. }
        )
    }
}

/// A server frame sorted: an answer to a call, or any other frame.
enum Sorted {
    /// The answer to the call with this id.
    Answer(String, Result<Value, SendError>),
    /// A frame that answers no call.
    Other(ServerFrame),
}

/// Sorts a frame: the answer it carries for a call, if it is one.
fn answer_of(frame: ServerFrame) -> Sorted {
    match frame {
        ServerFrame::Reply { id, data } => Sorted::Answer(id, Ok(data)),
        ServerFrame::Error {
            id: Some(id),
            error,
            message,
        } => Sorted::Answer(id, Err(SendError::from_code(&error, &message))),
        other => Sorted::Other(other),
    }
}

/// The calls of a managed connection waiting for their answers.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    next: AtomicU64,
    waiting: Mutex<HashMap<String, oneshot::Sender<Result<Value, SendError>>>>,
}

impl Pending {
    /// A new call id and where its answer will arrive.
    pub(crate) fn register(&self) -> (String, oneshot::Receiver<Result<Value, SendError>>) {
        let id = format!("c{}", self.next.fetch_add(1, Ordering::Relaxed) + 1);
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id.clone(), tx);
        (id, rx)
    }

    /// Hands an answer frame to its waiting caller; gives back any other frame, and
    /// answers nobody waits for (a call that timed out, or a `send` frame the
    /// application sent itself), so the application sees them as events.
    pub(crate) fn settle(&self, frame: ServerFrame) -> Option<ServerFrame> {
        let id = match &frame {
            ServerFrame::Reply { id, .. } | ServerFrame::Error { id: Some(id), .. } => id,
            _ => return Some(frame),
        };
        let Some(tx) = self.lock().remove(id) else {
            return Some(frame);
        };
        match answer_of(frame) {
            Sorted::Answer(_, answer) => {
                let _ = tx.send(answer);
                None
            }
            Sorted::Other(other) => Some(other),
        }
    }

    /// Forgets a call that stopped waiting.
    pub(crate) fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Fails every waiting call with [`SendError::Disconnected`] (its socket ended).
    pub(crate) fn disconnect_all(&self) {
        for (_, tx) in self.lock().drain() {
            let _ = tx.send(Err(SendError::Disconnected));
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Result<Value, SendError>>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Waits for the answer of call `id`, at most `timeout`.
pub(crate) async fn wait(
    pending: &Pending,
    id: &str,
    rx: oneshot::Receiver<Result<Value, SendError>>,
    timeout: Duration,
) -> Result<Value, SendError> {
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err(SendError::Disconnected),
        Err(_) => {
            pending.forget(id);
            Err(SendError::Timeout(timeout))
        }
    }
}

/// A plain socket with calls: [`CallSocket::request`] sends one `send` frame and reads
/// until its answer; the frames that come meanwhile (pushes, `expiring`, ...) wait for
/// [`CallSocket::next_frame`].
///
/// ```no_run
/// # async fn run(client: ticketgate_sdk::Client, session: ticketgate_sdk::Session)
/// # -> Result<(), Box<dyn std::error::Error>> {
/// use ticketgate_sdk::{CallSocket, SendError};
///
/// let ticket = client.mint_ticket(&session).await?;
/// let (socket, _welcome) = client.connect(&session, &ticket).await?;
/// let mut socket = CallSocket::new(socket);
/// match socket.request(serde_json::json!({"op": "balance"})).await {
///     Ok(reply) => println!("{reply}"),
///     Err(SendError::Busy { .. } | SendError::UpstreamUnavailable { .. }) => { /* later */ }
///     Err(other) => eprintln!("refused: {other}"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct CallSocket {
    socket: WsStream,
    backlog: VecDeque<ServerFrame>,
    next: u64,
    timeout: Duration,
}

impl CallSocket {
    /// Wraps an admitted socket; calls wait [`DEFAULT_CALL_TIMEOUT`].
    pub fn new(socket: WsStream) -> CallSocket {
        CallSocket {
            socket,
            backlog: VecDeque::new(),
            next: 0,
            timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// Calls wait at most `timeout` for their answer.
    pub fn with_timeout(mut self, timeout: Duration) -> CallSocket {
        self.timeout = timeout;
        self
    }

    /// Sends `data` as a `send` frame and waits for its answer: the `reply`'s data.
    /// Answers to earlier calls that timed out are dropped.
    ///
    /// # Errors
    /// [`SendError`]: the server's or the upstream's refusal, the timeout, or
    /// [`SendError::Disconnected`] when the socket closed (its close frame is then the
    /// next [`CallSocket::next_frame`]: none).
    ///
    /// # Cancel safety
    /// Not cancel safe: a call dropped while waiting leaves its answer to be dropped.
    pub async fn request(&mut self, data: Value) -> Result<Value, SendError> {
        self.next += 1;
        let id = format!("c{}", self.next);
        let frame = ClientFrame::Send {
            id: id.clone(),
            data,
        };
        let text = serde_json::to_string(&frame).map_err(|_| SendError::Disconnected)?;
        self.socket
            .send(Message::text(text))
            .await
            .map_err(|_| SendError::Disconnected)?;
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.answer(&id))
            .await
            .unwrap_or(Err(SendError::Timeout(timeout)))
    }

    async fn answer(&mut self, id: &str) -> Result<Value, SendError> {
        loop {
            let frame = match self.read().await {
                Some(Ok(frame)) => frame,
                _ => return Err(SendError::Disconnected),
            };
            match answer_of(frame) {
                Sorted::Answer(answered, answer) if answered == id => return answer,
                Sorted::Answer(..) => {}
                Sorted::Other(other) => self.backlog.push_back(other),
            }
        }
    }

    /// The next server frame that is not an answer to a call: those that arrived
    /// during calls first. `None` once the socket closed.
    ///
    /// # Errors
    /// [`ClientError`] for a transport error.
    pub async fn next_frame(&mut self) -> Option<Result<ServerFrame, ClientError>> {
        if let Some(frame) = self.backlog.pop_front() {
            return Some(Ok(frame));
        }
        loop {
            match self.read().await? {
                Ok(frame) => match answer_of(frame) {
                    Sorted::Answer(..) => continue,
                    Sorted::Other(other) => return Some(Ok(other)),
                },
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The next server frame, answers included; `None` at the close.
    async fn read(&mut self) -> Option<Result<ServerFrame, ClientError>> {
        loop {
            match self.socket.next().await? {
                Ok(Message::Text(text)) => match serde_json::from_str(text.as_str()) {
                    Ok(frame) => return Some(Ok(frame)),
                    // A newer server may send frames this SDK does not know yet.
                    Err(_) => continue,
                },
                Ok(Message::Close(_)) => return None,
                Ok(_) => continue,
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// The socket, for anything else (e.g. a `refresh` frame).
    pub fn socket_mut(&mut self) -> &mut WsStream {
        &mut self.socket
    }

    /// Unwraps the socket; frames kept for [`CallSocket::next_frame`] are dropped.
    pub fn into_inner(self) -> WsStream {
        self.socket
    }
}
