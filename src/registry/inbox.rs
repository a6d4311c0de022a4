//! A connection's inbox: kicks, pushes and drains queued for its socket task.
//!
//! Hand-written rather than a `tokio::sync::mpsc` channel because of memory: a tokio
//! channel allocates its first 32-slot block when it is created, about 1 KiB for every
//! idle socket, and a node holds up to `max_connections` of them. This queue is a
//! `VecDeque` that allocates nothing while empty, plus a `Notify`.
//!
//! Bounded: a push to a full inbox marks it overflowed (the client does not keep up)
//! and the socket task closes with 4010.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

use super::Outbound;

/// What the socket task gets from its inbox.
#[derive(Debug)]
pub enum Next {
    /// A message to act on.
    Message(Outbound),
    /// A push found the inbox full: close as a slow consumer.
    Overflowed,
}

/// A bounded, lazily allocated queue with one consumer.
#[derive(Debug)]
pub struct Inbox {
    // A std mutex: held for a push or a pop, never across an await.
    queue: Mutex<VecDeque<Outbound>>,
    ready: Notify,
    overflowed: AtomicBool,
    capacity: usize,
}

impl Inbox {
    /// An empty inbox holding at most `capacity` messages.
    pub fn new(capacity: usize) -> Inbox {
        Inbox {
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            overflowed: AtomicBool::new(false),
            capacity,
        }
    }

    /// Queues a message without waiting. Returns false, and marks the inbox
    /// overflowed, when it is full.
    pub fn push(&self, msg: Outbound) -> bool {
        let queued = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.len() >= self.capacity {
                false
            } else {
                queue.push_back(msg);
                true
            }
        };
        if !queued {
            self.overflowed.store(true, Ordering::Release);
        }
        self.ready.notify_one();
        queued
    }

    /// The next message, or [`Next::Overflowed`]. Cancel safe: nothing is lost when the
    /// future is dropped before it completes.
    pub async fn next(&self) -> Next {
        loop {
            if self.overflowed.load(Ordering::Acquire) {
                return Next::Overflowed;
            }
            if let Some(msg) = self.pop() {
                return Next::Message(msg);
            }
            // notify_one stores a permit when nobody waits, so a push between the
            // checks above and this await is not missed.
            self.ready.notified().await;
        }
    }

    /// Resolves once the inbox has overflowed (for aborting a blocked write).
    pub async fn overflow(&self) {
        while !self.overflowed.load(Ordering::Acquire) {
            self.ready.notified().await;
        }
    }

    fn pop(&self) -> Option<Outbound> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let msg = queue.pop_front();
        if queue.is_empty() && queue.capacity() > 0 {
            // Give a burst's memory back: idle sockets should cost nothing here.
            queue.shrink_to_fit();
        }
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_come_out_in_order_and_a_full_inbox_overflows() {
        let inbox = Inbox::new(2);
        assert!(inbox.push(Outbound::Text("a".into())));
        assert!(inbox.push(Outbound::Text("b".into())));
        assert!(matches!(inbox.next().await, Next::Message(Outbound::Text(t)) if t == "a"));
        assert!(inbox.push(Outbound::Text("c".into())));
        assert!(!inbox.push(Outbound::Text("d".into())), "full");
        assert!(matches!(inbox.next().await, Next::Overflowed));
        tokio::time::timeout(std::time::Duration::from_secs(1), inbox.overflow())
            .await
            .expect("overflow is signalled");
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken_by_a_push() {
        let inbox = std::sync::Arc::new(Inbox::new(4));
        let consumer = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.next().await }
        });
        tokio::task::yield_now().await;
        assert!(inbox.push(Outbound::Close(4503, "revoked".into())));
        let got = tokio::time::timeout(std::time::Duration::from_secs(1), consumer)
            .await
            .expect("woken")
            .expect("task");
        assert!(matches!(got, Next::Message(Outbound::Close(4503, _))));
    }
}
