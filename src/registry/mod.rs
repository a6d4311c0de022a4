//! The registry of this node's live connections, by connection id, session and user.
//!
//! A connection registers when it is admitted and gets a [`Registration`] guard; the
//! guard's `Drop` removes every index entry, so a connection leaves the registry on every
//! exit path (normal close, error, panic, shutdown).

use std::sync::Arc;

pub mod inbox;

use dashmap::DashMap;
use inbox::Inbox;
use ticketgate_sdk::ClientType;

/// What can be sent to a live connection from elsewhere (kick, push, shutdown).
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A text frame, already serialized.
    Text(String),
    /// Close the socket with this code and reason.
    Close(u16, &'static str),
}

/// A live connection as the registry sees it.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// Session id.
    pub session_id: String,
    /// User id.
    pub user_id: String,
    /// Device id.
    pub device_id: String,
    /// Client type.
    pub client_type: ClientType,
    /// Unix seconds of admission.
    pub connected_at: i64,
    /// The connection's inbox.
    pub inbox: Arc<Inbox>,
}

impl ConnHandle {
    /// Queues `msg` without waiting. A full inbox means the client does not keep up:
    /// the connection is told to close with 4010 and `false` is returned.
    pub fn deliver(&self, msg: Outbound) -> bool {
        self.inbox.push(msg)
    }
}

#[derive(Default)]
struct Indexes {
    by_conn: DashMap<String, ConnHandle>,
    by_session: DashMap<String, Vec<String>>,
    by_user: DashMap<String, Vec<String>>,
}

/// The registry; cheap to clone.
#[derive(Clone, Default)]
pub struct Registry(Arc<Indexes>);

/// Keeps a connection registered; unregisters on drop.
pub struct Registration {
    registry: Registry,
    conn_id: String,
}

impl Registration {
    /// Completes a registration made before admission (indexed by session only) with
    /// the identity the ticket granted, and indexes it by user.
    pub fn admitted(&self, user_id: &str, device_id: &str, client_type: ClientType) {
        let indexes = &self.registry.0;
        if let Some(mut handle) = indexes.by_conn.get_mut(&self.conn_id) {
            handle.user_id = user_id.to_owned();
            handle.device_id = device_id.to_owned();
            handle.client_type = client_type;
        }
        indexes
            .by_user
            .entry(user_id.to_owned())
            .or_default()
            .push(self.conn_id.clone());
    }

    /// The registered connection's id.
    pub fn conn_id(&self) -> &str {
        &self.conn_id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.remove(&self.conn_id);
    }
}

fn detach(index: &DashMap<String, Vec<String>>, key: &str, conn_id: &str) {
    index.remove_if_mut(key, |_, ids| {
        ids.retain(|id| id != conn_id);
        ids.is_empty()
    });
}

impl Registry {
    /// Registers a connection. A handle with an empty `user_id` is indexed by session
    /// only, until [`Registration::admitted`].
    pub fn insert(&self, conn_id: String, handle: ConnHandle) -> Registration {
        self.0
            .by_session
            .entry(handle.session_id.clone())
            .or_default()
            .push(conn_id.clone());
        if !handle.user_id.is_empty() {
            self.0
                .by_user
                .entry(handle.user_id.clone())
                .or_default()
                .push(conn_id.clone());
        }
        self.0.by_conn.insert(conn_id.clone(), handle);
        crate::metrics::hot().connections.increment(1.0);
        Registration {
            registry: self.clone(),
            conn_id,
        }
    }

    fn remove(&self, conn_id: &str) {
        if let Some((_, handle)) = self.0.by_conn.remove(conn_id) {
            detach(&self.0.by_session, &handle.session_id, conn_id);
            detach(&self.0.by_user, &handle.user_id, conn_id);
            crate::metrics::hot().connections.decrement(1.0);
        }
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        self.0.by_conn.len()
    }

    /// True when no connection is live.
    pub fn is_empty(&self) -> bool {
        self.0.by_conn.is_empty()
    }

    /// Sizes of the three indexes (for leak tests): connections, sessions, users.
    pub fn index_sizes(&self) -> (usize, usize, usize) {
        (
            self.0.by_conn.len(),
            self.0.by_session.len(),
            self.0.by_user.len(),
        )
    }

    fn handles(&self, ids: Option<Vec<String>>) -> Vec<(String, ConnHandle)> {
        ids.unwrap_or_default()
            .into_iter()
            .filter_map(|id| self.0.by_conn.get(&id).map(|h| (id, h.clone())))
            .collect()
    }

    /// The live connections of a session.
    pub fn of_session(&self, session_id: &str) -> Vec<(String, ConnHandle)> {
        self.handles(self.0.by_session.get(session_id).map(|v| v.clone()))
    }

    /// The live connections of a user.
    pub fn of_user(&self, user_id: &str) -> Vec<(String, ConnHandle)> {
        self.handles(self.0.by_user.get(user_id).map(|v| v.clone()))
    }

    /// Sends `msg` to every connection of a session; returns how many got it.
    pub fn send_to_session(&self, session_id: &str, msg: Outbound) -> usize {
        self.of_session(session_id)
            .into_iter()
            .filter(|(_, h)| h.deliver(msg.clone()))
            .count()
    }

    /// The session ids with at least one live connection here.
    pub fn sessions(&self) -> Vec<String> {
        self.0.by_session.iter().map(|e| e.key().clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(sid: &str, user: &str) -> (ConnHandle, Arc<Inbox>) {
        let inbox = Arc::new(Inbox::new(4));
        let rx = inbox.clone();
        let h = ConnHandle {
            session_id: sid.into(),
            user_id: user.into(),
            device_id: "d".into(),
            client_type: ClientType::Web,
            connected_at: 0,
            inbox,
        };
        (h, rx)
    }

    #[test]
    fn registrations_leave_every_index_on_drop() {
        let r = Registry::default();
        let (h1, _rx1) = handle("s1", "alice");
        let (h2, rx2) = handle("s1", "alice");
        let (h3, _rx3) = handle("s2", "bob");
        let g1 = r.insert("c1".into(), h1);
        let g2 = r.insert("c2".into(), h2);
        let g3 = r.insert("c3".into(), h3);
        assert_eq!(r.index_sizes(), (3, 2, 2));
        assert_eq!(r.of_user("alice").len(), 2);
        drop(g1);
        assert_eq!(r.send_to_session("s1", Outbound::Close(4503, "kicked")), 1);
        let next = futures_util::FutureExt::now_or_never(rx2.next());
        assert!(matches!(
            next,
            Some(super::inbox::Next::Message(Outbound::Close(4503, _)))
        ));
        drop(g2);
        drop(g3);
        assert_eq!(r.index_sizes(), (0, 0, 0));
    }
}
