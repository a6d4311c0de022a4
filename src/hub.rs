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
//!
//! # Liveness
//!
//! A subscriber whose connection dies silently (a NAT or load balancer that forgets an
//! idle connection: nothing closed, nothing delivered) would miss every kick and push,
//! forever. So each node watches its own link, every [`PROBE_INTERVAL`]:
//!
//! - it pings the subscriber's connection; no answer within the unresponsive limit
//!   (twice the command timeout), and the link is replaced. It pings the pool's
//!   connections too, and replaces those that do not answer, before a command needs
//!   them (a kick's answer, a session re-check);
//! - when it has heard no hub message for [`QUIET_LIMIT`], it also sends one to itself
//!   through Redis and expects it back within [`ECHO_TIMEOUT`]: the whole round trip,
//!   publish to delivery. On a Redis Cluster this is per partition (sharded channel):
//!   Redis unsubscribes a node from a partition whose slot moved to another primary,
//!   without a reconnect, and the partition falls quiet; its echo does not come back.
//!
//! A failed check forces the subscriber to reconnect; it subscribes again and the
//! node re-checks its live sessions. The re-check also runs every
//! [`RECHECK_INTERVAL`], so a missed kick is repaired even when no failure was seen.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use ticketgate_sdk::protocol::{close, ServerFrame};
use ticketgate_sdk::ClientType;
use tokio::sync::{mpsc, Notify};
use tokio::time::MissedTickBehavior;

use crate::clock::unix_now_ms;
use crate::registry::{close_reason, Outbound, Registry};
use crate::shutdown::Shutdown;
use crate::store::bus::{BusEvent, BusEvents, RedisBus};
use crate::store::redis::RedisStore;
use crate::store::{AppendPush, HistoryLimits, Store, StoreError};

/// How long a requester waits for every node's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// Heartbeat period; a node silent for three periods is not waited for.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// How often a node checks its own hub link.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// With no hub message heard for this long, the link check includes a round trip
/// through Redis (a message to this node alone). A busy hub never needs one.
pub(crate) const QUIET_LIMIT: Duration = Duration::from_secs(10);
/// How long the round trip may take.
pub(crate) const ECHO_TIMEOUT: Duration = Duration::from_secs(2);
/// Live sessions are re-checked at least this often (one store read per session of
/// the node's sockets).
pub(crate) const RECHECK_INTERVAL: Duration = Duration::from_secs(30);
/// First retry of a re-check that could not read every session; doubles up to
/// [`RECHECK_INTERVAL`].
const RECHECK_RETRY: Duration = Duration::from_secs(1);

/// Whose sockets a push goes to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Target {
    /// Every socket of a user.
    User(String),
    /// Every socket of a session.
    Session(String),
}

/// What a request asks every node to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Op {
    /// Close the sockets of these sessions with `code`.
    Revoke {
        /// Session ids.
        session_ids: Vec<String>,
        /// Close code (4503 or 4509).
        code: u16,
        /// The close frame's reason text (an admin's kick reason); the code's usual
        /// word when absent. Absent from nodes of earlier versions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
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
    /// Count this node's sockets, in all and per user (the admin page's overview).
    Overview,
}

/// Most users one node lists in its [`Op::Overview`] answer (those with the most
/// sockets); its total counts every socket all the same.
pub(crate) const OVERVIEW_USERS: usize = 1000;

/// A user's sockets on one node, as counted for [`Op::Overview`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct UserCount {
    /// The user.
    pub user_id: String,
    /// Live sockets of the user on the answering node.
    pub connections: u64,
}

impl Op {
    /// Whom the request is about: on a Redis Cluster it travels on this target's
    /// partition, so one user's (or session's) requests keep their order.
    fn target(&self) -> &str {
        match self {
            Op::Revoke { session_ids, .. } => session_ids.first().map_or("", String::as_str),
            Op::Push {
                target: Target::User(id) | Target::Session(id),
                ..
            } => id,
            Op::Connections { user_id } => user_id,
            // About no one in particular: any one partition serves.
            Op::Overview => "",
        }
    }
}

/// A socket as listed by the admin API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ConnectionView {
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
pub(crate) struct Answer {
    /// The answering node.
    pub node_id: String,
    /// Sockets closed or pushes delivered.
    pub count: u64,
    /// For [`Op::Connections`].
    #[serde(default)]
    pub connections: Vec<ConnectionView>,
    /// For [`Op::Overview`]: sockets per user, most first, at most [`OVERVIEW_USERS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserCount>,
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

/// What a re-check of live sessions did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Recheck {
    /// Sessions found ended; their sockets were closed (4503).
    pub closed: usize,
    /// Sessions the store did not answer for; their sockets stay open until the next
    /// re-check.
    pub unreadable: usize,
}

/// The hub of one node.
pub(crate) struct Hub {
    node_id: String,
    registry: Registry,
    transport: Transport,
    pending: DashMap<String, mpsc::UnboundedSender<Answer>>,
    /// When the hub was made; `last_heard_ms` counts from here.
    born: Instant,
    /// Milliseconds after `born` when the last hub message was heard.
    last_heard_ms: AtomicU64,
    /// The same per partition of the bus (one off a Cluster): a partition whose
    /// subscription was dropped without a reconnect (Redis unsubscribes a sharded
    /// channel whose slot moved, and fred does not say so) falls quiet on its own.
    partition_heard_ms: Vec<AtomicU64>,
    /// Wakes the re-check task (shared with it, so that it does not keep the hub alive).
    recheck_now: Arc<Notify>,
    /// On the in-process hub, held from a push's append to its delivery, so that
    /// sockets get pushes in the order of their ids.
    push_order: tokio::sync::Mutex<()>,
}

impl Hub {
    /// The in-process hub of a single node (embedded store).
    pub(crate) fn local(node_id: String, registry: Registry) -> Arc<Hub> {
        Arc::new(Hub::new(node_id, registry, Transport::Local))
    }

    fn new(node_id: String, registry: Registry, transport: Transport) -> Hub {
        let partitions = match &transport {
            Transport::Local => 1,
            Transport::Redis(bus) => bus.partitions(),
        };
        Hub {
            node_id,
            registry,
            transport,
            pending: DashMap::new(),
            born: Instant::now(),
            last_heard_ms: AtomicU64::new(0),
            partition_heard_ms: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            recheck_now: Arc::new(Notify::new()),
            push_order: tokio::sync::Mutex::new(()),
        }
    }

    /// The Redis hub: opens the bus, starts the heartbeat and the link check, and
    /// re-checks live sessions whenever the bus may have lost messages (a reconnect, or
    /// falling behind) and every [`RECHECK_INTERVAL`]. Its loops run on `tasks` and
    /// end at the node's shutdown.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the bus cannot connect.
    pub(crate) async fn redis(
        node_id: String,
        registry: Registry,
        redis: &RedisStore,
        store: Arc<dyn Store>,
        tasks: &Shutdown,
    ) -> Result<Arc<Hub>, StoreError> {
        let (bus, events) = RedisBus::open(redis).await?;
        let hub = Arc::new(Hub::new(node_id, registry, Transport::Redis(bus)));
        tasks.spawn_background(listen(Arc::downgrade(&hub), events));
        tasks.spawn_background(watch_link(Arc::downgrade(&hub)));
        tasks.spawn_background(recheck_sessions(
            Arc::downgrade(&hub),
            hub.recheck_now.clone(),
            store,
        ));
        let weak = Arc::downgrade(&hub);
        tasks.spawn_background(async move {
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

    /// How long since this node last heard a hub message (its own included); since the
    /// hub started if none yet. `None` on the in-process hub, which has no link.
    pub(crate) fn last_message_age(&self) -> Option<Duration> {
        match self.transport {
            Transport::Local => None,
            Transport::Redis(_) => {
                let heard = Duration::from_millis(self.last_heard_ms.load(Ordering::Relaxed));
                Some(self.born.elapsed().saturating_sub(heard))
            }
        }
    }

    fn heard(&self, partition: usize) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_heard_ms.store(ms, Ordering::Relaxed);
        if let Some(heard) = self.partition_heard_ms.get(partition) {
            heard.store(ms, Ordering::Relaxed);
        }
    }

    /// The partitions this node has heard nothing on for [`QUIET_LIMIT`].
    fn quiet_partitions(&self) -> Vec<usize> {
        let now = self.born.elapsed();
        self.partition_heard_ms
            .iter()
            .enumerate()
            .filter(|(_, heard)| {
                let heard = Duration::from_millis(heard.load(Ordering::Relaxed));
                now.saturating_sub(heard) >= QUIET_LIMIT
            })
            .map(|(partition, _)| partition)
            .collect()
    }

    /// Checks this node's hub link: a ping on the subscriber's connection and, on each
    /// partition quiet for a while, a message to this node through Redis.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the subscriber does not answer or a message
    /// does not come back.
    async fn check_link(&self, bus: &RedisBus) -> Result<(), StoreError> {
        bus.ping_subscriber().await?;
        match self.quiet_partitions() {
            quiet if quiet.is_empty() => Ok(()),
            quiet => self.echo(bus, &quiet).await,
        }
    }

    /// Sends a message to this node alone on each of `partitions` and waits to hear
    /// them all: an answer with no request behind it, which every node understands and
    /// only this one takes.
    ///
    /// When it cannot even be published, Redis is out of reach of the pool, whose own
    /// checks deal with that: the subscriber is not blamed.
    async fn echo(&self, bus: &RedisBus, partitions: &[usize]) -> Result<(), StoreError> {
        let (id, mut rx, _cleanup) = self.await_answers();
        let message = Message::Answer {
            id,
            to: self.node_id.clone(),
            answer: Answer {
                node_id: self.node_id.clone(),
                count: 0,
                connections: Vec::new(),
                users: Vec::new(),
            },
        };
        let text =
            serde_json::to_string(&message).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let sends = partitions
            .iter()
            .map(|&partition| bus.publish_on_partition(partition, text.clone()));
        if let Err(e) = futures_util::future::try_join_all(sends).await {
            tracing::debug!(cause = %e, "hub echo not published");
            return Ok(());
        }
        let heard_back = tokio::time::timeout(ECHO_TIMEOUT, async {
            for _ in partitions {
                rx.recv().await?;
            }
            Some(())
        });
        match heard_back.await {
            Ok(Some(())) => Ok(()),
            _ => Err(StoreError::Unavailable(
                "hub message to this node not heard back".into(),
            )),
        }
    }

    async fn heartbeat(&self) {
        let Transport::Redis(bus) = &self.transport else {
            return;
        };
        let now = unix_now_ms();
        bus.heartbeat(&self.node_id, now, now - stale_after_ms())
            .await;
    }

    /// Leaves the deployment's heartbeat set; for a node whose sockets are closed and
    /// whose background loops (the heartbeat among them) have stopped. Without it, every
    /// request of the other nodes would wait [`ANSWER_TIMEOUT`] for this node's answer
    /// until its last beat aged out.
    pub(crate) async fn leave(&self) {
        if let Transport::Redis(bus) = &self.transport {
            bus.leave(&self.node_id).await;
        }
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
    pub(crate) async fn request(&self, op: Op) -> Result<Vec<Answer>, StoreError> {
        let bus = match &self.transport {
            Transport::Local => return Ok(vec![self.apply(&op)]),
            Transport::Redis(bus) => bus,
        };
        let (id, mut rx, _cleanup) = self.await_answers();
        let expected = self.live_nodes().await;
        let target = op.target().to_owned();
        let message = Message::Request {
            id,
            from: self.node_id.clone(),
            op,
        };
        let text =
            serde_json::to_string(&message).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        bus.publish(&target, text).await?;
        Ok(gather(&mut rx, expected).await)
    }

    /// Publishes a push to every node (this one included) and answers its id and how
    /// many sockets took it. With `history`, the push is first appended to its user's
    /// history and its id is the history's.
    ///
    /// Ordering (PROTOCOL §10: every socket of a user gets the user's pushes in id
    /// order, whichever nodes published them). On Redis the append and the hub message
    /// are one script (`store/scripts/push.lua`): Redis runs scripts one at a time and
    /// delivers a channel's messages to every subscriber in publish order, so the
    /// stream's order is the order every node hears the pushes in, and each node queues
    /// them into the sockets' inboxes in that order. The alternative, sockets that
    /// reorder by id, would need a buffer and a wait for gaps that may never fill.
    /// In process, a lock spans append and delivery, which are both local.
    ///
    /// # Errors
    /// [`StoreError`] when the history cannot be written or the push not published.
    pub(crate) async fn push(
        &self,
        store: &dyn Store,
        history: Option<AppendPush<'_>>,
        target: Target,
        topic: String,
        data: serde_json::Value,
    ) -> Result<(String, u64), StoreError> {
        let Some(history) = history else {
            let id = crate::auth::random_id(12);
            let op = Op::Push {
                target,
                id: id.clone(),
                topic,
                data,
            };
            let answers = self.request(op).await?;
            return Ok((id, answers.iter().map(|a| a.count).sum()));
        };
        let bus = match &self.transport {
            Transport::Local => {
                let _order = self.push_order.lock().await;
                let id = store.append_push(&history).await?;
                let op = Op::Push {
                    target,
                    id: id.clone(),
                    topic,
                    data,
                };
                return Ok((id.clone(), self.apply(&op).count));
            }
            Transport::Redis(bus) => bus,
        };
        let (request_id, mut rx, _cleanup) = self.await_answers();
        let expected = self.live_nodes().await;
        // The id is made by the script: the message is sent as the text around a
        // random placeholder, which the script fills in.
        let placeholder = format!("tg-push-id-{}", crate::auth::random_id(12));
        let message = Message::Request {
            id: request_id,
            from: self.node_id.clone(),
            op: Op::Push {
                target,
                id: placeholder.clone(),
                topic,
                data,
            },
        };
        let text =
            serde_json::to_string(&message).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (before, after) = text
            .split_once(&format!("\"{placeholder}\""))
            .ok_or_else(|| StoreError::Corrupt("push message without its id".into()))?;
        let id = bus
            .publish_push(&history, &format!("{before}\""), &format!("\"{after}"))
            .await?;
        let answers = gather(&mut rx, expected).await;
        Ok((id, answers.iter().map(|a| a.count).sum()))
    }

    async fn receive(&self, text: &str) {
        let Ok(message) = serde_json::from_str::<Message>(text) else {
            tracing::warn!("hub message not understood; ignored");
            return;
        };
        match message {
            Message::Request { id, from, op } => {
                let answer = self.apply(&op);
                // On the requester's partition.
                let requester = from.clone();
                let reply = Message::Answer {
                    id,
                    to: from,
                    answer,
                };
                if let (Transport::Redis(bus), Ok(text)) =
                    (&self.transport, serde_json::to_string(&reply))
                {
                    if let Err(e) = bus.publish(&requester, text).await {
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
            users: Vec::new(),
        };
        match op {
            Op::Revoke {
                session_ids,
                code,
                reason,
            } => {
                let reason: Cow<'static, str> = match reason {
                    Some(text) => close_reason(text).into(),
                    None if *code == close::REPLACED => "replaced".into(),
                    None => "revoked".into(),
                };
                for sid in session_ids {
                    answer.count += self
                        .registry
                        .send_to_session(sid, Outbound::Close(*code, reason.clone()))
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
            Op::Overview => {
                answer.count = self.registry.len() as u64;
                let mut users: Vec<UserCount> = self
                    .registry
                    .users()
                    .into_iter()
                    .map(|(user_id, connections)| UserCount {
                        user_id,
                        connections: connections as u64,
                    })
                    .collect();
                users.sort_by(|a, b| (b.connections, &a.user_id).cmp(&(a.connections, &b.user_id)));
                users.truncate(OVERVIEW_USERS);
                answer.users = users;
            }
        }
        answer
    }

    /// Closes (4503) the sockets whose session no longer exists. A session the store
    /// does not answer for is left alone and counted as unreadable.
    pub(crate) async fn recheck(&self, store: Arc<dyn Store>) -> Recheck {
        let sessions = self.registry.sessions();
        let found = futures_util::stream::iter(sessions)
            .map(|sid| {
                let store = store.clone();
                async move {
                    let found = store.session(&sid).await.map(|s| s.is_some());
                    (sid, found)
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        let mut outcome = Recheck::default();
        for (sid, found) in found {
            match found {
                Ok(true) => {}
                Ok(false) => {
                    self.registry
                        .send_to_session(&sid, Outbound::Close(close::REVOKED, "revoked".into()));
                    outcome.closed += 1;
                }
                Err(_) => outcome.unreadable += 1,
            }
        }
        outcome
    }
}

/// The answers to one request, until `expected` came or [`ANSWER_TIMEOUT`] passed.
async fn gather(rx: &mut mpsc::UnboundedReceiver<Answer>, expected: usize) -> Vec<Answer> {
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    while answers.len() < expected {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(answer)) => answers.push(answer),
            _ => break,
        }
    }
    answers
}

/// The push history's bounds of a configuration (PROTOCOL §10).
pub(crate) fn history_limits(config: &crate::config::Config) -> HistoryLimits {
    HistoryLimits {
        max_len: config.push_history,
        ttl: config.push_history_ttl,
    }
}

/// A node silent for three heartbeats is not waited for.
fn stale_after_ms() -> i64 {
    i64::try_from(HEARTBEAT.as_millis()).unwrap_or(i64::MAX) * 3
}

/// The receiving side of a Redis hub: applies requests and routes answers; asks for a
/// re-check of live sessions when messages may have been lost. Ends with the hub or
/// the bus.
async fn listen(hub: Weak<Hub>, mut events: BusEvents) {
    while let Some(event) = events.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        match event {
            BusEvent::Message(partition, text) => {
                hub.heard(partition);
                hub.receive(&text).await;
            }
            BusEvent::Lagged(missed) => {
                tracing::warn!(missed, "hub fell behind; re-checking sessions");
                hub.recheck_now.notify_one();
            }
            BusEvent::Resubscribed => {
                tracing::info!("hub resubscribed; re-checking live sessions");
                hub.recheck_now.notify_one();
            }
        }
    }
}

/// Checks the hub link every [`PROBE_INTERVAL`] and replaces the subscriber's
/// connection while the check fails; warns once per failure, and says when the link
/// answers again. Ends with the hub.
async fn watch_link(hub: Weak<Hub>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick is immediate, and the link was just opened.
    tick.tick().await;
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        let Transport::Redis(bus) = &hub.transport else {
            return;
        };
        let (link, replaced) = tokio::join!(hub.check_link(bus), bus.check_pool());
        if replaced > 0 {
            tracing::warn!(
                replaced,
                "redis connections did not answer a ping; replaced"
            );
        }
        match link {
            Ok(()) if failing => {
                tracing::info!("hub link answers again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        cause = %e,
                        "hub link unresponsive; reconnecting the subscriber, then re-checking live sessions"
                    );
                    failing = true;
                }
                if bus.reconnect_subscriber().await {
                    tracing::info!("hub subscribed again; re-checking live sessions");
                    hub.recheck_now.notify_one();
                }
            }
        }
    }
}

/// Re-checks live sessions when asked (the bus may have lost messages) and at least
/// every [`RECHECK_INTERVAL`]; one that could not read every session is retried soon.
/// One re-check at a time, off the receiving loop so that messages keep flowing.
/// Ends with the hub.
async fn recheck_sessions(hub: Weak<Hub>, wake: Arc<Notify>, store: Arc<dyn Store>) {
    let mut retry: Option<Duration> = None;
    loop {
        let wait = retry.unwrap_or(RECHECK_INTERVAL);
        let asked = tokio::time::timeout(wait, wake.notified()).await.is_ok();
        let Some(hub) = hub.upgrade() else { return };
        let outcome = hub.recheck(store.clone()).await;
        if outcome.closed > 0 {
            // Periodic: a hub message was missed, or a session ran out while its
            // socket was open.
            tracing::info!(
                closed = outcome.closed,
                periodic = !asked && retry.is_none(),
                "re-check closed sockets of ended sessions"
            );
        }
        retry = (outcome.unreadable > 0)
            .then(|| retry.map_or(RECHECK_RETRY, |d| (d * 2).min(RECHECK_INTERVAL)));
        if outcome.unreadable > 0 {
            tracing::debug!(
                unreadable = outcome.unreadable,
                "re-check could not read every session; retrying"
            );
        }
    }
}

impl Hub {
    /// A fresh request id whose answers arrive on the receiver until the guard drops.
    fn await_answers(&self) -> (String, mpsc::UnboundedReceiver<Answer>, PendingGuard<'_>) {
        let id = crate::auth::random_id(12);
        let (tx, rx) = mpsc::unbounded_channel();
        self.pending.insert(id.clone(), tx);
        let guard = PendingGuard {
            hub: self,
            id: id.clone(),
        };
        (id, rx, guard)
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
