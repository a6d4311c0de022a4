//! The business behind the gate: what a node does with a client's `send` frames and
//! with its sockets' lives (PROTOCOL §9).
//!
//! A [`SessionHandler`] gets every admitted socket's `connect`, each `send` as a
//! `message` that it answers with data or a refusal, and the `disconnect` with the
//! close code, each with the socket's verified [`Identity`] (from the consumed ticket
//! and its session, never from anything the client wrote). From inside it, a
//! [`Pusher`] sends `push` frames to users and sessions on every node, by the same
//! hub path as the admin API's `publish`.
//!
//! Two handlers come with ticketgate: the upstream forwarder (`upstream`),
//! which `ticketgate serve` uses when `TICKETGATE_UPSTREAM_URL` is set, and
//! [`NoUpstream`], which answers every `send` with `upstream_unavailable`. A library
//! user brings their own through `Server::builder(config).handler(h)`.
//!
//! ```text
//! client ──send{id,data}──► socket loop ──message(cx, id, data)──► handler
//!        ◄─reply{id,data}──   (never waits: answers come back     │
//!        ◄─error{id,..}────    out of order, paired by id)  ◄─────┘
//! ```
//!
//! Ownership: the socket loop (`ws/connection`) calls the handler; it sits below `ws`
//! and imports only `hub` (for [`Pusher`]), so no lower room reaches a higher one.

use std::sync::Arc;

use serde::Serialize;
use ticketgate_sdk::protocol::upstream_code_is_well_formed;
use ticketgate_sdk::{ClientType, ErrorCode};

use crate::hub::{Hub, Target};
use crate::store::{AppendPush, HistoryLimits, Store, StoreError};

/// Who is on the other end of a socket, as ticketgate verified it: from the consumed
/// ticket and its session, never from anything the client sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The connection's id (unique per socket).
    pub conn_id: String,
    /// The node holding the socket.
    pub node_id: String,
    /// The user (the username; `app:<app_id>` for an API app).
    pub user_id: String,
    /// The session the socket belongs to.
    pub session_id: String,
    /// The device the ticket was bound to.
    pub device_id: String,
    /// `web`, `mobile` or `api`.
    pub client_type: ClientType,
}

/// What a handler gets with every call: the socket's [`Identity`] and a [`Pusher`].
#[derive(Clone)]
pub struct Context {
    identity: Identity,
    push: Pusher,
}

impl Context {
    /// The context of a socket of `identity` on a node whose pushes go through `push`.
    pub(crate) fn new(identity: Identity, push: Pusher) -> Context {
        Context { identity, push }
    }

    /// The socket's verified identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Pushes to users and sessions, on every node.
    pub fn push(&self) -> &Pusher {
        &self.push
    }
}

/// Why a `send` was refused: the `error` frame its client gets (with the send's id).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refused {
    code: String,
    message: String,
}

impl Refused {
    /// A refusal with an application code: 1-64 characters of `[a-z_]`. Any other
    /// code becomes `upstream_unavailable` (a client must be able to rely on the form
    /// of codes).
    pub fn new(code: &str, message: impl Into<String>) -> Refused {
        if upstream_code_is_well_formed(code) {
            Refused {
                code: code.to_owned(),
                message: message.into(),
            }
        } else {
            Refused::unavailable()
        }
    }

    /// `upstream_unavailable`: the business could not answer (down, slow, broken).
    pub fn unavailable() -> Refused {
        Refused {
            code: ErrorCode::UpstreamUnavailable.as_str().to_owned(),
            message: "the service behind the gateway did not answer".to_owned(),
        }
    }

    /// The error code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The sentence for people.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The business behind the gate. Implement it to run ticketgate as a library with
/// your own logic in-process (see `examples/chat.rs`), or set
/// `TICKETGATE_UPSTREAM_URL` to have every call forwarded over HTTP.
///
/// The socket loop never waits for a handler: `message` futures run alongside the
/// socket's other work (pings, pushes, renewals, close), and `connect` /
/// `disconnect` run on tasks of their own, in that order for one socket. A `message`
/// future is polled on the socket's task, so it must not block the thread; at most
/// `TICKETGATE_UPSTREAM_INFLIGHT` of them are unanswered per socket (the client gets
/// `busy` past it), and one still running when its socket closes is dropped.
///
/// ```
/// use ticketgate::handler::{Context, Refused, SessionHandler};
/// use serde_json::{json, Value};
///
/// struct Echo;
///
/// #[ticketgate::async_trait]
/// impl SessionHandler for Echo {
///     async fn message(&self, cx: &Context, _id: &str, data: Value) -> Result<Value, Refused> {
///         Ok(json!({ "user": cx.identity().user_id, "echo": data }))
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait SessionHandler: Send + Sync + 'static {
    /// A socket was admitted (after its 101 and welcome). Nothing waits for it.
    async fn connect(&self, _cx: &Context) {}

    /// A client's `send`: `Ok(data)` becomes `{"type":"reply","id","data"}`, a
    /// [`Refused`] becomes `{"type":"error","id","error","message"}`.
    ///
    /// # Errors
    /// The refusal the client gets.
    async fn message(
        &self,
        cx: &Context,
        id: &str,
        data: serde_json::Value,
    ) -> Result<serde_json::Value, Refused>;

    /// The socket ended with close `code` (1006 when it broke without a close frame).
    /// Nothing waits for it.
    async fn disconnect(&self, _cx: &Context, _code: u16) {}

    /// False when `connect` and `disconnect` do nothing: the node then spares a task
    /// per socket. Defaults to true.
    fn wants_lifecycle(&self) -> bool {
        true
    }
}

/// A shared handler is a handler (a caller can keep a reference to inspect it).
#[async_trait::async_trait]
impl<H: SessionHandler + ?Sized> SessionHandler for Arc<H> {
    async fn connect(&self, cx: &Context) {
        (**self).connect(cx).await;
    }

    async fn message(
        &self,
        cx: &Context,
        id: &str,
        data: serde_json::Value,
    ) -> Result<serde_json::Value, Refused> {
        (**self).message(cx, id, data).await
    }

    async fn disconnect(&self, cx: &Context, code: u16) {
        (**self).disconnect(cx, code).await;
    }

    fn wants_lifecycle(&self) -> bool {
        (**self).wants_lifecycle()
    }
}

/// The handler of a node without an upstream: every `send` is answered
/// `upstream_unavailable`.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoUpstream;

#[async_trait::async_trait]
impl SessionHandler for NoUpstream {
    async fn message(
        &self,
        _cx: &Context,
        _id: &str,
        _data: serde_json::Value,
    ) -> Result<serde_json::Value, Refused> {
        Err(Refused {
            code: ErrorCode::UpstreamUnavailable.as_str().to_owned(),
            message: "no upstream is configured".to_owned(),
        })
    }

    fn wants_lifecycle(&self) -> bool {
        false
    }
}

/// A push that went out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The push's id (the `id` of its `push` frames).
    pub id: String,
    /// Sockets it reached now, on every node.
    pub delivered: u64,
}

/// Why a push could not go out.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The cross-node hub (the store's bus) could not take the request.
    #[error("the hub could not publish the push: {0}")]
    Hub(String),
}

/// Sends `push` frames to users' and sessions' sockets on every node, each kept in its
/// user's history first (PROTOCOL §10): the one path of every push, the admin API's
/// `publish` included. Cheap to clone.
#[derive(Clone)]
pub struct Pusher {
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
    limits: HistoryLimits,
}

impl Pusher {
    /// A pusher over `hub`, keeping histories in `store` within `limits`.
    pub(crate) fn new(hub: Arc<Hub>, store: Arc<dyn Store>, limits: HistoryLimits) -> Pusher {
        Pusher { hub, store, limits }
    }

    /// Pushes `{"type":"push","id","topic","data"}` to every live socket of `user_id`.
    ///
    /// # Errors
    /// [`PushError::Hub`] when the hub cannot publish (the store's bus is down).
    pub async fn to_user(
        &self,
        user_id: &str,
        topic: &str,
        data: serde_json::Value,
    ) -> Result<Pushed, PushError> {
        self.publish(Target::User(user_id.to_owned()), topic, data)
            .await
    }

    /// Pushes to every live socket of the session `session_id`.
    ///
    /// # Errors
    /// [`PushError::Hub`] when the hub cannot publish.
    pub async fn to_session(
        &self,
        session_id: &str,
        topic: &str,
        data: serde_json::Value,
    ) -> Result<Pushed, PushError> {
        self.publish(Target::Session(session_id.to_owned()), topic, data)
            .await
    }

    async fn publish(
        &self,
        target: Target,
        topic: &str,
        data: serde_json::Value,
    ) -> Result<Pushed, PushError> {
        self.push(target, topic, data)
            .await
            .map_err(|e| PushError::Hub(e.to_string()))
    }

    /// Keeps the push in its user's history (when history is on), then sends it to
    /// every live socket of `target` on every node; its id and the sockets reached.
    ///
    /// The history is the user's: a push to one session is kept in its user's, marked
    /// with the session. A session that no longer exists has no socket to come back
    /// with, so its push is not kept (its id is then not a history's).
    pub(crate) async fn push(
        &self,
        target: Target,
        topic: &str,
        data: serde_json::Value,
    ) -> Result<Pushed, StoreError> {
        let user_id = match &target {
            Target::User(u) => Some(u.clone()),
            Target::Session(s) => self.store.session(s).await?.map(|r| r.user_id),
        };
        let data_text = data.to_string();
        let history = match &user_id {
            Some(user_id) if self.limits.enabled() => Some(AppendPush {
                user_id,
                session_id: match &target {
                    Target::Session(s) => Some(s.as_str()),
                    Target::User(_) => None,
                },
                topic,
                data: &data_text,
                limits: self.limits,
            }),
            _ => None,
        };
        let (id, delivered) = self
            .hub
            .push(
                &*self.store,
                history,
                target.clone(),
                topic.to_owned(),
                data,
            )
            .await?;
        let hot = crate::metrics::hot();
        hot.pushes.increment(1);
        hot.push_deliveries.increment(delivered);
        Ok(Pushed { id, delivered })
    }
}
