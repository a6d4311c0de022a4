//! The cross-node hub: revocations, pushes and queries that must reach every node of
//! a deployment.
//!
//! On Redis the hub rides the store's bus ([`crate::store::bus`]): one pub/sub channel
//! plus a heartbeat set that tells a requester how many answers to wait for. On the
//! embedded store it is in-process: one node, events handled directly.
//!
//! Every request carries an id; each node applies it to its own sockets and answers
//! with a count (closed sockets, deliveries) or its connections of a user; the
//! requester sums the answers of every live node, or what it has after a timeout.
//!
//! Pub/sub drops messages while a subscriber reconnects, so after every (re)subscribe
//! the node re-checks the sessions of its live sockets and closes revoked ones (4503).

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use ticketgate_sdk::protocol::{close, ServerFrame};
use ticketgate_sdk::ClientType;
use tokio::sync::mpsc;

use crate::clock::unix_now_ms;
use crate::registry::{Outbound, Registry};
use crate::store::bus::{BusEvent, BusEvents, RedisBus};
use crate::store::redis::RedisStore;
use crate::store::{Store, StoreError};

/// How long a requester waits for every node's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// Heartbeat period; a node silent for three periods is not waited for.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// Whose sockets a push goes to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Every socket of a user.
    User(String),
    /// Every socket of a session.
    Session(String),
}

/// What a request asks every node to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Close the sockets of these sessions with `code`.
    Revoke {
        /// Session ids.
        session_ids: Vec<String>,
        /// Close code (4503 or 4509).
        code: u16,
    },
    /// Send a push frame.
    Push {
        /// Recipients.
        target: Target,
        /// Push id.
        id: String,
        /// Topic.
        topic: String,
        /// Payload.
        data: serde_json::Value,
    },
    /// List the sockets of a user.
    Connections {
        /// The user.
        user_id: String,
    },
}

/// A socket as listed by the admin API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectionView {
    /// The node holding it.
    pub node_id: String,
    /// Connection id.
    pub conn_id: String,
    /// Session id.
    pub session_id: String,
    /// Device id.
    pub device_id: String,
    /// Client type.
    pub client_type: ClientType,
    /// Unix seconds of admission.
    pub connected_at: i64,
}

/// One node's answer to a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    /// The answering node.
    pub node_id: String,
    /// Sockets closed or pushes delivered.
    pub count: u64,
    /// For [`Op::Connections`].
    #[serde(default)]
    pub connections: Vec<ConnectionView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Message {
    Request {
        id: String,
        from: String,
        op: Op,
    },
    Answer {
        id: String,
        to: String,
        answer: Answer,
    },
}

enum Transport {
    Local,
    Redis(RedisBus),
}

/// The hub of one node.
pub struct Hub {
    node_id: String,
    registry: Registry,
    transport: Transport,
    pending: DashMap<String, mpsc::UnboundedSender<Answer>>,
}

impl Hub {
    /// The in-process hub of a single node (embedded store).
    pub fn local(node_id: String, registry: Registry) -> Arc<Hub> {
        Arc::new(Hub {
            node_id,
            registry,
            transport: Transport::Local,
            pending: DashMap::new(),
        })
    }

    /// The Redis hub: opens the bus, starts the heartbeat, and re-checks live sessions
    /// whenever the bus may have lost messages (a reconnect, or falling behind).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the bus cannot connect.
    pub async fn redis(
        node_id: String,
        registry: Registry,
        redis: &RedisStore,
        store: Arc<dyn Store>,
    ) -> Result<Arc<Hub>, StoreError> {
        let (bus, events) = RedisBus::open(redis).await?;
        let hub = Arc::new(Hub {
            node_id,
            registry,
            transport: Transport::Redis(bus),
            pending: DashMap::new(),
        });
        tokio::spawn(listen(Arc::downgrade(&hub), events, store));
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tick.tick().await;
                let Some(hub) = weak.upgrade() else { return };
                hub.heartbeat().await;
            }
        });
        hub.heartbeat().await;
        Ok(hub)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    async fn heartbeat(&self) {
        let Transport::Redis(bus) = &self.transport else {
            return;
        };
        let now = unix_now_ms();
        bus.heartbeat(&self.node_id, now, now - stale_after_ms())
            .await;
    }

    async fn live_nodes(&self) -> usize {
        match &self.transport {
            Transport::Local => 1,
            Transport::Redis(bus) => bus.live_nodes(unix_now_ms() - stale_after_ms()).await,
        }
    }

    /// Sends `op` to every node (this one included) and gathers their answers.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the request cannot be published.
    pub async fn request(&self, op: Op) -> Result<Vec<Answer>, StoreError> {
        let bus = match &self.transport {
            Transport::Local => return Ok(vec![self.apply(&op)]),
            Transport::Redis(bus) => bus,
        };
        let id = crate::auth::random_id(12);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.pending.insert(id.clone(), tx);
        let _cleanup = PendingGuard {
            hub: self,
            id: id.clone(),
        };
        let expected = self.live_nodes().await;
        let message = Message::Request {
            id,
            from: self.node_id.clone(),
            op,
        };
        let text =
            serde_json::to_string(&message).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        bus.publish(text).await?;
        let mut answers = Vec::new();
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        while answers.len() < expected {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(answer)) => answers.push(answer),
                _ => break,
            }
        }
        Ok(answers)
    }

    async fn receive(&self, text: &str) {
        let Ok(message) = serde_json::from_str::<Message>(text) else {
            tracing::warn!("hub message not understood; ignored");
            return;
        };
        match message {
            Message::Request { id, from, op } => {
                let answer = self.apply(&op);
                let reply = Message::Answer {
                    id,
                    to: from,
                    answer,
                };
                if let (Transport::Redis(bus), Ok(text)) =
                    (&self.transport, serde_json::to_string(&reply))
                {
                    if let Err(e) = bus.publish(text).await {
                        tracing::warn!(cause = %e, "hub answer not sent");
                    }
                }
            }
            Message::Answer { id, to, answer } if to == self.node_id => {
                if let Some(tx) = self.pending.get(&id) {
                    let _ = tx.send(answer);
                }
            }
            Message::Answer { .. } => {}
        }
    }

    /// Applies a request to this node's sockets.
    fn apply(&self, op: &Op) -> Answer {
        let mut answer = Answer {
            node_id: self.node_id.clone(),
            count: 0,
            connections: Vec::new(),
        };
        match op {
            Op::Revoke { session_ids, code } => {
                let reason = if *code == close::REPLACED {
                    "replaced"
                } else {
                    "revoked"
                };
                for sid in session_ids {
                    answer.count += self
                        .registry
                        .send_to_session(sid, Outbound::Close(*code, reason))
                        as u64;
                }
            }
            Op::Push {
                target,
                id,
                topic,
                data,
            } => {
                let frame = ServerFrame::Push {
                    id: id.clone(),
                    topic: topic.clone(),
                    data: data.clone(),
                };
                let Ok(text) = serde_json::to_string(&frame) else {
                    return answer;
                };
                let handles = match target {
                    Target::User(u) => self.registry.of_user(u),
                    Target::Session(s) => self.registry.of_session(s),
                };
                for (_, handle) in handles {
                    if handle.deliver(Outbound::Text(text.clone())) {
                        answer.count += 1;
                    }
                }
            }
            Op::Connections { user_id } => {
                answer.connections = self
                    .registry
                    .of_user(user_id)
                    .into_iter()
                    .map(|(conn_id, h)| ConnectionView {
                        node_id: self.node_id.clone(),
                        conn_id,
                        session_id: h.session_id,
                        device_id: h.device_id,
                        client_type: h.client_type,
                        connected_at: h.connected_at,
                    })
                    .collect();
                answer.count = answer.connections.len() as u64;
            }
        }
        answer
    }

    /// Closes (4503) the sockets whose session no longer exists.
    pub async fn recheck(&self, store: Arc<dyn Store>) {
        let sessions = self.registry.sessions();
        let closed = futures_util::stream::iter(sessions)
            .map(|sid| {
                let store = store.clone();
                async move {
                    match store.session(&sid).await {
                        Ok(None) => Some(sid),
                        _ => None,
                    }
                }
            })
            .buffer_unordered(32)
            .filter_map(|gone| async move { gone })
            .collect::<Vec<_>>()
            .await;
        for sid in closed {
            self.registry
                .send_to_session(&sid, Outbound::Close(close::REVOKED, "revoked"));
        }
    }
}

/// A re-check of its own, so that messages keep flowing meanwhile.
async fn recheck(hub: Arc<Hub>, store: Arc<dyn Store>) {
    hub.recheck(store).await;
}

/// A node silent for three heartbeats is not waited for.
fn stale_after_ms() -> i64 {
    i64::try_from(HEARTBEAT.as_millis()).unwrap_or(i64::MAX) * 3
}

/// The receiving side of a Redis hub: applies requests and routes answers; re-checks
/// live sessions when messages may have been lost. Ends with the hub or the bus.
async fn listen(hub: std::sync::Weak<Hub>, mut events: BusEvents, store: Arc<dyn Store>) {
    while let Some(event) = events.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        match event {
            BusEvent::Message(text) => hub.receive(&text).await,
            BusEvent::Lagged(missed) => {
                tracing::warn!(missed, "hub fell behind; re-checking sessions");
                tokio::spawn(recheck(hub, store.clone()));
            }
            BusEvent::Resubscribed => {
                tracing::info!("hub resubscribed; re-checking live sessions");
                tokio::spawn(recheck(hub, store.clone()));
            }
        }
    }
}

struct PendingGuard<'a> {
    hub: &'a Hub,
    id: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.hub.pending.remove(&self.id);
    }
}
