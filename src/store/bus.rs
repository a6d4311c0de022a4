//! The cross-node bus on Redis: what the hub sends and hears between
//! nodes, kept here so that only `store/` talks to Redis.
//!
//! - one pub/sub channel (`tg:hub`) on a subscriber connection of its own, resubscribed
//!   after every reconnect; on a Redis Cluster, sharded pub/sub instead: every node
//!   subscribes (`SSUBSCRIBE`) to the [`HUB_PARTITIONS`] partition channels, and a
//!   message is published (`SPUBLISH`) on the partition of its target only. A classic
//!   `PUBLISH` on a Cluster is copied to every Redis node over the cluster bus; a
//!   sharded one stays with the shard that owns its slot (the primary and its
//!   replicas). After a reconnect, a failover or a `MOVED`, fred's subscriber
//!   resubscribes each partition on the node that owns its slot now;
//! - a heartbeat sorted set (`tg:nodes`, node id → last beat in unix ms) that tells a
//!   requester how many answers to wait for.
//!
//! The subscriber connection is opened and watched like the pool's
//! (`redis::configure_connection`: unresponsive detection, TCP keepalive). A
//! subscriber only listens, so nothing would ever show that its link died silently;
//! [`RedisBus::ping_subscriber`] gives it something to answer, and
//! [`RedisBus::reconnect_subscriber`] replaces a link that does not.
//! [`RedisBus::check_pool`] does the same for the pool's connections: fred's own check
//! measures from the *last* write, so a connection that keeps being written to (busy,
//! or pinged) would never be found unresponsive by it.
//!
//! The bus moves text; what the text means is the hub's business.

use std::time::Duration;

use fred::clients::{Pool, SubscriberClient};
use fred::error::ErrorKind;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface, SortedSetsInterface};
use fred::prelude::{Builder, Config};
use fred::types::config::Options;
use fred::types::{Message, Value};
use tokio::sync::broadcast::{self, error::RecvError};

use super::keys::{
    hub_partition, hub_partition_channel, hub_partition_of_channel, Topology, HUB_CHANNEL,
    HUB_PARTITIONS, NODES,
};
use super::redis::{self, RedisStore};
use super::StoreError;

/// The sending side of the bus, and the handle that watches its receiving side; cheap
/// to clone.
#[derive(Clone)]
pub(crate) struct RedisBus {
    pool: Pool,
    /// For pushes, which are appended to their history and published in one script
    /// (boxed behind an `Arc`: the store's scripts would make every bus handle large).
    store: std::sync::Arc<RedisStore>,
    /// The same client as [`BusEvents`]' (a clone shares the connection).
    subscriber: SubscriberClient,
    /// How long a connection may leave a ping unanswered: longer than fred's own
    /// unresponsive limit, so that on a quiet connection fred acts first (and the ping
    /// is answered on its new connection) and this bus never replaces a connection
    /// that fred just replaced.
    ping_limit: Duration,
    /// How long a forced reconnection is waited for.
    reconnect_limit: Duration,
    /// Classic or sharded pub/sub.
    topology: Topology,
}

/// What the receiving side of the bus hears.
#[derive(Debug)]
pub(crate) enum BusEvent {
    /// A message published by some node (this one included), and the partition it came
    /// on (always 0 off a Cluster).
    Message(usize, String),
    /// This node fell behind and missed `n` messages.
    Lagged(u64),
    /// The subscriber reconnected and subscribed again: messages published meanwhile
    /// were lost.
    Resubscribed,
}

/// The receiving side of the bus: one subscriber connection.
pub(crate) struct BusEvents {
    subscriber: SubscriberClient,
    topology: Topology,
    messages: broadcast::Receiver<Message>,
    reconnects: broadcast::Receiver<fred::prelude::Server>,
}

impl RedisBus {
    /// Opens the bus beside `redis`: a subscriber connection with the store's URL and
    /// timeouts, subscribed to the hub channel.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the subscriber cannot connect or subscribe.
    pub(crate) async fn open(redis: &RedisStore) -> Result<(RedisBus, BusEvents), StoreError> {
        let unavailable = |e: fred::error::Error| StoreError::Unavailable(e.details().to_string());
        let (url, settings) = redis.connection();
        let config = Config::from_url(url).map_err(unavailable)?;
        let subscriber = Builder::from_config(config)
            .with_connection_config(|c| redis::configure_connection(c, settings))
            .with_performance_config(|p| {
                p.default_command_timeout = redis::command_timeout(settings);
                p.broadcast_channel_capacity = HUB_BACKLOG;
            })
            .set_policy(redis::reconnect_policy())
            .build_subscriber_client()
            .map_err(unavailable)?;
        let messages = subscriber.message_rx();
        let reconnects = subscriber.reconnect_rx();
        tokio::time::timeout(settings.connect_timeout * 2, subscriber.init())
            .await
            .map_err(|_| StoreError::Unavailable("hub subscriber timed out".into()))?
            .map_err(unavailable)?;
        let topology = redis.topology();
        subscribe(&subscriber, topology)
            .await
            .map_err(unavailable)?;
        let bus = RedisBus {
            pool: redis.pool().clone(),
            store: std::sync::Arc::new(redis.clone()),
            subscriber: subscriber.clone(),
            ping_limit: redis::unresponsive_after(settings) * 3 / 2,
            reconnect_limit: settings.connect_timeout * 2,
            topology,
        };
        let events = BusEvents {
            subscriber,
            topology,
            messages,
            reconnects,
        };
        Ok((bus, events))
    }

    /// Publishes `text` to every node; on a Cluster on the partition of `target` (the
    /// user, session or node the message is about), so that the messages of one target
    /// keep their order.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when Redis does not take it.
    pub(crate) async fn publish(&self, target: &str, text: String) -> Result<(), StoreError> {
        let partition = match self.topology {
            Topology::Single => 0,
            Topology::Cluster => hub_partition(target),
        };
        self.publish_on_partition(partition, text).await
    }

    /// How many channels the hub listens on: 1, or the partitions on a Cluster.
    pub(crate) fn partitions(&self) -> usize {
        match self.topology {
            Topology::Single => 1,
            Topology::Cluster => HUB_PARTITIONS,
        }
    }

    /// Publishes `text` on hub partition `partition` (the one channel off a Cluster).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when Redis does not take it.
    pub(crate) async fn publish_on_partition(
        &self,
        partition: usize,
        text: String,
    ) -> Result<(), StoreError> {
        match self.topology {
            Topology::Single => {
                self.pool
                    .next()
                    .publish::<i64, _, _>(HUB_CHANNEL, text)
                    .await
            }
            Topology::Cluster => {
                let channel = hub_partition_channel(partition);
                self.pool.next().spublish::<i64, _, _>(channel, text).await
            }
        }
        .map(drop)
        .map_err(|e| StoreError::Unavailable(e.details().to_string()))
    }

    /// Appends a push to its user's history and publishes `before + id + after` to
    /// every node, in one atomic step (see `scripts/push.lua`; on a Cluster on the
    /// user's partition, whose slot the history shares); answers the id.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when Redis does not take it.
    pub(crate) async fn publish_push(
        &self,
        push: &super::AppendPush<'_>,
        before: &str,
        after: &str,
    ) -> Result<String, StoreError> {
        let channel = match self.topology {
            Topology::Single => HUB_CHANNEL.to_owned(),
            Topology::Cluster => hub_partition_channel(hub_partition(push.user_id)),
        };
        self.store
            .append_push_announced(push, Some((&channel, before, after)))
            .await
    }

    /// Records that `node_id` is alive at `now_ms` and forgets nodes silent since
    /// before `stale_before_ms`. Best effort: a missed beat is made up by the next.
    pub(crate) async fn heartbeat(&self, node_id: &str, now_ms: i64, stale_before_ms: i64) {
        let _: Result<i64, _> = self
            .pool
            .zadd(NODES, None, None, false, false, (now_ms as f64, node_id))
            .await;
        let _: Result<i64, _> = self
            .pool
            .zremrangebyscore(NODES, f64::MIN, stale_before_ms as f64)
            .await;
    }

    /// Takes `node_id` out of the heartbeat set (a node on its way out), so that other
    /// nodes stop counting on its answers at once. Best effort: if Redis does not
    /// answer, the entry ages out as a silent node's does.
    pub(crate) async fn leave(&self, node_id: &str) {
        let removed: Result<i64, _> = self.pool.zrem(NODES, node_id).await;
        if let Err(e) = removed {
            tracing::debug!(cause = %e, "leaving the heartbeat set failed; it ages out");
        }
    }

    /// How many nodes beat since `since_ms` (at least 1: this one). When Redis does not
    /// answer, 1.
    pub(crate) async fn live_nodes(&self, since_ms: i64) -> usize {
        let n: Result<i64, _> = self.pool.zcount(NODES, since_ms as f64, f64::MAX).await;
        usize::try_from(n.unwrap_or(1)).unwrap_or(1).max(1)
    }

    /// Sends `PING` on the subscriber's own connection (allowed while subscribed) and
    /// waits as long as the pool's unresponsive check would. A subscriber only listens,
    /// so without this nothing would show that its link died silently.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when no answer comes back in time.
    pub(crate) async fn ping_subscriber(&self) -> Result<(), StoreError> {
        ping(&self.subscriber, self.ping_limit)
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::Timeout => StoreError::Unavailable(format!(
                    "hub subscriber did not answer a ping in {:?}",
                    self.ping_limit
                )),
                _ => StoreError::Unavailable(e.details().to_string()),
            })
    }

    /// Sends `PING` on every connection of the pool and replaces each connected one
    /// that does not answer in time, as fred's own unresponsive check would, had the
    /// connection been quiet; under traffic it is not. Returns how many were replaced.
    pub(crate) async fn check_pool(&self) -> usize {
        let checks = self.pool.clients().iter().map(|client| async move {
            match ping(client, self.ping_limit).await {
                Err(e) if e.kind() == &ErrorKind::Timeout && client.is_connected() => {
                    reconnect(client, self.reconnect_limit).await;
                    1
                }
                _ => 0,
            }
        });
        futures_util::future::join_all(checks)
            .await
            .into_iter()
            .sum()
    }

    /// Closes the subscriber's connection and opens a new one; the receiving side then
    /// subscribes again and reports [`BusEvent::Resubscribed`]. Does nothing while the
    /// subscriber is already reconnecting.
    ///
    /// On a Cluster it then subscribes to every partition itself and answers whether
    /// that worked: a forced reconnection of fred's clustered subscriber reports no
    /// reconnect, and a partition Redis unsubscribed the node from (its slot moved)
    /// needs a new `SSUBSCRIBE` on the slot's new owner, connection or not. Off a
    /// Cluster `false` (the receiving side's reconnect event does it).
    pub(crate) async fn reconnect_subscriber(&self) -> bool {
        if self.subscriber.is_connected() {
            reconnect(&self.subscriber, self.reconnect_limit).await;
        }
        match self.topology {
            Topology::Single => false,
            Topology::Cluster => matches!(
                tokio::time::timeout(
                    self.reconnect_limit,
                    subscribe(&self.subscriber, self.topology)
                )
                .await,
                Ok(Ok(()))
            ),
        }
    }
}

/// Subscribes to the hub's channel, or on a Cluster to each partition (one at a time:
/// channels of different slots cannot share an `SSUBSCRIBE`; fred sends each to the
/// primary that owns its slot now). Not fred's `resubscribe_all`: it sends a
/// `SUBSCRIBE` even when it tracks no classic channel, which Redis refuses ("wrong
/// number of arguments"), so on a Cluster it never succeeded and the hub stopped
/// hearing messages at the first reconnect.
async fn subscribe(
    subscriber: &SubscriberClient,
    topology: Topology,
) -> Result<(), fred::error::Error> {
    match topology {
        Topology::Single => subscriber.subscribe(HUB_CHANNEL).await,
        Topology::Cluster => {
            for partition in 0..HUB_PARTITIONS {
                subscriber
                    .ssubscribe(hub_partition_channel(partition))
                    .await?;
            }
            Ok(())
        }
    }
}

/// `PING` on `client`'s connection, answered within `limit` (else an
/// [`ErrorKind::Timeout`] error).
async fn ping<C: ClientLike>(client: &C, limit: Duration) -> Result<(), fred::error::Error> {
    let options = Options {
        timeout: Some(limit),
        ..Options::default()
    };
    client
        .with_options(&options)
        .ping::<Value>(None)
        .await
        .map(drop)
}

/// Hub messages the subscriber holds for the hub's loop. fred's default (32) is
/// overrun by a burst of pushes (each is a request plus one answer per node): an
/// overrun drops messages, and a dropped push never reaches a socket that stays open.
/// A message is a few hundred bytes, so this is at most a few MiB per node.
const HUB_BACKLOG: usize = 16_384;

/// Closes `client`'s connection and opens a new one (fred keeps trying after `limit`).
async fn reconnect<C: ClientLike>(client: &C, limit: Duration) {
    match tokio::time::timeout(limit, client.force_reconnection()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(cause = %e, "redis reconnect failed"),
        Err(_) => tracing::debug!("redis reconnect still under way"),
    }
}

impl BusEvents {
    /// The next event; `None` once the subscriber is gone for good. After a reconnect
    /// it subscribes again (retrying until it can: a node that is not subscribed misses
    /// every kick and push) before it answers [`BusEvent::Resubscribed`].
    pub(crate) async fn recv(&mut self) -> Option<BusEvent> {
        loop {
            tokio::select! {
                message = self.messages.recv() => match message {
                    Ok(message) => match message.value.as_string() {
                        Some(text) => {
                            let partition = match self.topology {
                                Topology::Single => 0,
                                Topology::Cluster => hub_partition_of_channel(&message.channel),
                            };
                            return Some(BusEvent::Message(partition, text));
                        }
                        // Not ours: every hub message is text.
                        None => continue,
                    },
                    Err(RecvError::Lagged(n)) => return Some(BusEvent::Lagged(n)),
                    Err(RecvError::Closed) => return None,
                },
                reconnect = self.reconnects.recv() => match reconnect {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        self.resubscribe().await;
                        return Some(BusEvent::Resubscribed);
                    }
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }

    /// Subscribes again until it works; warns once, not at every retry.
    async fn resubscribe(&self) {
        let mut delay = Duration::from_millis(100);
        let mut warned = false;
        while let Err(e) = subscribe(&self.subscriber, self.topology).await {
            if !warned {
                tracing::warn!(cause = %e, "hub resubscribe failed; retrying until it works");
                warned = true;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}
