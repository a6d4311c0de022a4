//! The cross-node bus on Redis: what the hub sends and hears between
//! nodes, kept here so that only `store/` talks to Redis.
//!
//! - one pub/sub channel (`tg:hub`) on a subscriber connection of its own, resubscribed
//!   after every reconnect;
//! - a heartbeat sorted set (`tg:nodes`, node id → last beat in unix ms) that tells a
//!   requester how many answers to wait for.
//!
//! The bus moves text; what the text means is the hub's business.

use std::time::Duration;

use fred::clients::{Pool, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface, SortedSetsInterface};
use fred::prelude::{Builder, Config, ReconnectPolicy};
use fred::types::Message;
use tokio::sync::broadcast::{self, error::RecvError};

use super::keys::{HUB_CHANNEL, NODES};
use super::redis::RedisStore;
use super::StoreError;

/// The sending side of the bus; cheap to clone.
#[derive(Clone)]
pub struct RedisBus {
    pool: Pool,
}

/// What the receiving side of the bus hears.
#[derive(Debug)]
pub enum BusEvent {
    /// A message published by some node (this one included).
    Message(String),
    /// This node fell behind and missed `n` messages.
    Lagged(u64),
    /// The subscriber reconnected and subscribed again: messages published meanwhile
    /// were lost.
    Resubscribed,
}

/// The receiving side of the bus: one subscriber connection.
pub struct BusEvents {
    subscriber: SubscriberClient,
    messages: broadcast::Receiver<Message>,
    reconnects: broadcast::Receiver<fred::prelude::Server>,
}

impl RedisBus {
    /// Opens the bus beside `redis`: a subscriber connection with the store's URL and
    /// timeouts, subscribed to the hub channel.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the subscriber cannot connect or subscribe.
    pub async fn open(redis: &RedisStore) -> Result<(RedisBus, BusEvents), StoreError> {
        let unavailable = |e: fred::error::Error| StoreError::Unavailable(e.details().to_string());
        let (url, settings) = redis.connection();
        let config = Config::from_url(url).map_err(unavailable)?;
        let subscriber = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = settings.connect_timeout;
                c.internal_command_timeout = settings.connect_timeout;
            })
            .with_performance_config(|p| p.default_command_timeout = settings.command_timeout)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build_subscriber_client()
            .map_err(unavailable)?;
        let messages = subscriber.message_rx();
        let reconnects = subscriber.reconnect_rx();
        tokio::time::timeout(settings.connect_timeout * 2, subscriber.init())
            .await
            .map_err(|_| StoreError::Unavailable("hub subscriber timed out".into()))?
            .map_err(unavailable)?;
        subscriber
            .subscribe(HUB_CHANNEL)
            .await
            .map_err(unavailable)?;
        let bus = RedisBus {
            pool: redis.pool().clone(),
        };
        let events = BusEvents {
            subscriber,
            messages,
            reconnects,
        };
        Ok((bus, events))
    }

    /// Publishes `text` to every node.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when Redis does not take it.
    pub async fn publish(&self, text: String) -> Result<(), StoreError> {
        self.pool
            .next()
            .publish::<i64, _, _>(HUB_CHANNEL, text)
            .await
            .map(drop)
            .map_err(|e| StoreError::Unavailable(e.details().to_string()))
    }

    /// Records that `node_id` is alive at `now_ms` and forgets nodes silent since
    /// before `stale_before_ms`. Best effort: a missed beat is made up by the next.
    pub async fn heartbeat(&self, node_id: &str, now_ms: i64, stale_before_ms: i64) {
        let _: Result<i64, _> = self
            .pool
            .zadd(NODES, None, None, false, false, (now_ms as f64, node_id))
            .await;
        let _: Result<i64, _> = self
            .pool
            .zremrangebyscore(NODES, f64::MIN, stale_before_ms as f64)
            .await;
    }

    /// How many nodes beat since `since_ms` (at least 1: this one). When Redis does not
    /// answer, 1.
    pub async fn live_nodes(&self, since_ms: i64) -> usize {
        let n: Result<i64, _> = self.pool.zcount(NODES, since_ms as f64, f64::MAX).await;
        usize::try_from(n.unwrap_or(1)).unwrap_or(1).max(1)
    }
}

impl BusEvents {
    /// The next event; `None` once the subscriber is gone for good. After a reconnect
    /// it subscribes again (retrying until it can: a node that is not subscribed misses
    /// every kick and push) before it answers [`BusEvent::Resubscribed`].
    pub async fn recv(&mut self) -> Option<BusEvent> {
        loop {
            tokio::select! {
                message = self.messages.recv() => match message {
                    Ok(message) => match message.value.as_string() {
                        Some(text) => return Some(BusEvent::Message(text)),
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

    async fn resubscribe(&self) {
        let mut delay = Duration::from_millis(100);
        while let Err(e) = self.subscriber.resubscribe_all().await {
            tracing::warn!(cause = %e, "hub resubscribe failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}
