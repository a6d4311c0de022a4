//! The cross-node hub: revocations, pushes and queries that must reach every node of
//! a deployment.
//!
//! On Redis the hub is one pub/sub channel (`tg:hub`, a separate subscriber connection)
//! plus a heartbeat set (`tg:nodes`) that tells a requester how many answers to wait
//! for. On the embedded store it is in-process: one node, events handled directly.
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
use fred::clients::Pool;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface, SortedSetsInterface};
use fred::prelude::{Builder, Config};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use ticketgate_sdk::protocol::{close, ServerFrame};
use ticketgate_sdk::ClientType;
use tokio::sync::mpsc;

use crate::store::keys::{HUB_CHANNEL, NODES};
use crate::store::redis::RedisStore;
use crate::store::{Store, StoreError};
use crate::ws::registry::{Outbound, Registry};

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
    Redis { pool: Pool },
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

    /// The Redis hub: subscribes to `tg:hub` on its own connection, starts the
    /// heartbeat, and re-checks live sessions after every reconnect.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the subscriber cannot connect.
    pub async fn redis(
        node_id: String,
        registry: Registry,
        redis: &RedisStore,
        store: Arc<dyn Store>,
    ) -> Result<Arc<Hub>, StoreError> {
        let (url, settings) = redis.connection();
        let config =
            Config::from_url(url).map_err(|e| StoreError::Unavailable(e.details().to_string()))?;
        let subscriber = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = settings.connect_timeout;
                c.internal_command_timeout = settings.connect_timeout;
            })
            .with_performance_config(|p| p.default_command_timeout = settings.command_timeout)
            .set_policy(fred::prelude::ReconnectPolicy::new_exponential(
                0, 100, 2_000, 2,
            ))
            .build_subscriber_client()
            .map_err(|e| StoreError::Unavailable(e.details().to_string()))?;
        let mut messages = subscriber.message_rx();
        let mut reconnects = subscriber.reconnect_rx();
        tokio::time::timeout(settings.connect_timeout * 2, subscriber.init())
            .await
            .map_err(|_| StoreError::Unavailable("hub subscriber timed out".into()))?
            .map_err(|e| StoreError::Unavailable(e.details().to_string()))?;
        subscriber
            .subscribe(HUB_CHANNEL)
            .await
            .map_err(|e| StoreError::Unavailable(e.details().to_string()))?;
        let hub = Arc::new(Hub {
            node_id,
            registry,
            transport: Transport::Redis {
                pool: redis.pool().clone(),
            },
            pending: DashMap::new(),
        });

        let weak = Arc::downgrade(&hub);
        let store_for_lag = store.clone();
        tokio::spawn(async move {
            let store = store_for_lag;
            loop {
                let msg = match messages.recv().await {
                    Ok(msg) => msg,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "hub fell behind; re-checking sessions");
                        if let Some(hub) = weak.upgrade() {
                            hub.recheck(store_clone(&store)).await;
                        }
                        continue;
                    }
                    Err(_) => return,
                };
                let Some(hub) = weak.upgrade() else { return };
                if let Some(text) = msg.value.as_string() {
                    hub.receive(&text).await;
                }
            }
        });

        let weak = Arc::downgrade(&hub);
        let resubscriber = subscriber.clone();
        let store_for_recheck = store.clone();
        tokio::spawn(async move {
            loop {
                match reconnects.recv().await {
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
                // Retry until subscribed again: a node that is not subscribed misses
                // every kick and push.
                let mut delay = Duration::from_millis(100);
                while let Err(e) = resubscriber.resubscribe_all().await {
                    tracing::warn!(cause = %e, "hub resubscribe failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                let Some(hub) = weak.upgrade() else { return };
                tracing::info!("hub resubscribed; re-checking live sessions");
                hub.recheck(store_for_recheck.clone()).await;
            }
        });

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
        // Keep the subscriber alive as long as the tasks above hold it.
        drop(subscriber);
        Ok(hub)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    async fn heartbeat(&self) {
        let Transport::Redis { pool } = &self.transport else {
            return;
        };
        let now = crate::auth::unix_now_ms() as f64;
        let _: Result<i64, _> = pool
            .zadd(
                NODES,
                None,
                None,
                false,
                false,
                (now, self.node_id.as_str()),
            )
            .await;
        let stale = now - (HEARTBEAT.as_millis() as f64) * 3.0;
        let _: Result<i64, _> = pool.zremrangebyscore(NODES, f64::MIN, stale).await;
    }

    async fn live_nodes(&self) -> usize {
        let Transport::Redis { pool } = &self.transport else {
            return 1;
        };
        let since = crate::auth::unix_now_ms() as f64 - (HEARTBEAT.as_millis() as f64) * 3.0;
        let n: Result<i64, _> = pool.zcount(NODES, since, f64::MAX).await;
        usize::try_from(n.unwrap_or(1)).unwrap_or(1).max(1)
    }

    /// Sends `op` to every node (this one included) and gathers their answers.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the request cannot be published.
    pub async fn request(&self, op: Op) -> Result<Vec<Answer>, StoreError> {
        let pool = match &self.transport {
            Transport::Local => return Ok(vec![self.apply(&op)]),
            Transport::Redis { pool } => pool,
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
        let _: i64 = pool
            .next()
            .publish(HUB_CHANNEL, text)
            .await
            .map_err(|e| StoreError::Unavailable(e.details().to_string()))?;
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
                if let (Transport::Redis { pool }, Ok(text)) =
                    (&self.transport, serde_json::to_string(&reply))
                {
                    if let Err(e) = pool.next().publish::<i64, _, _>(HUB_CHANNEL, text).await {
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

fn store_clone(store: &Arc<dyn Store>) -> Arc<dyn Store> {
    store.clone()
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
