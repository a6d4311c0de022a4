//! The registry of this node's live connections, by connection id, session and user.
//!
//! A connection registers when it is admitted and gets a [`Registration`] guard; the
//! guard's `Drop` removes every index entry, so a connection leaves the registry on every
//! exit path (normal close, error, panic, shutdown).
//!
//! It also keeps this node's admission accounting per session: the sockets each session
//! and each user hold ([`Registry::take_slot`], the caps of PROTOCOL §8) and how often
//! each session was admitted ([`Registry::connect_allowed`], the per-device connect
//! quota). Both are per node: they cost admission no store round trip.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub(crate) mod inbox;

use std::borrow::Cow;

use dashmap::DashMap;
use inbox::Inbox;
use ticketgate_sdk::ClientType;

/// What can be sent to a live connection from elsewhere (kick, push, shutdown).
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A text frame, already serialized.
    Text(String),
    /// Close the socket with this code and reason (at most
    /// [`MAX_CLOSE_REASON`] bytes; see [`close_reason`]).
    Close(u16, Cow<'static, str>),
}

/// The longest close reason a close frame carries (RFC 6455 §5.5: a control frame's
/// payload is at most 125 bytes, two of which are the code).
pub const MAX_CLOSE_REASON: usize = 123;

/// `text` as a close reason: cut to [`MAX_CLOSE_REASON`] bytes on a character boundary.
pub fn close_reason(text: &str) -> String {
    let mut end = text.len().min(MAX_CLOSE_REASON);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
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
    /// A std mutex, not a tokio one: held for a few map operations, never across an
    /// await. One lock for both counts makes a cap check and its slot one atomic step.
    admission: Mutex<Admission>,
}

/// Admission accounting, behind [`Indexes::admission`].
#[derive(Default)]
struct Admission {
    /// Socket slots per session, with the session's user once an admission told it.
    sessions: HashMap<String, SessionSlots>,
    /// Socket slots per user.
    users: HashMap<String, usize>,
    /// Connect pacing per session: the GCRA "theoretical arrival time" of each session
    /// admitted recently (an entry in the past is the same as none).
    paces: HashMap<String, Instant>,
    /// `paces` is swept of past entries when it grows to this size.
    sweep_paces_at: usize,
}

#[derive(Default)]
struct SessionSlots {
    /// The session's user: known once one of its sockets was admitted here.
    user: Option<String>,
    sockets: usize,
}

/// The per-node socket caps (PROTOCOL §8, "Caps").
#[derive(Debug, Clone, Copy)]
pub struct SocketCaps {
    /// Sockets per session.
    pub per_session: usize,
    /// Sockets per user, across their sessions.
    pub per_user: usize,
}

/// Which cap refused a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapReached {
    /// The session holds its cap of sockets on this node.
    #[error("the session holds its cap of sockets on this node")]
    Session,
    /// The user holds their cap of sockets on this node.
    #[error("the user holds their cap of sockets on this node")]
    User,
}

/// One socket's place under the caps, taken before its ticket is consumed and given
/// back on drop (by the socket's end, or by a refused admission).
pub struct SocketSlot {
    registry: Registry,
    session_id: String,
    /// The user this slot is counted for; `None` until the session's user is known.
    user: Option<String>,
    caps: SocketCaps,
}

impl SocketSlot {
    /// Counts the slot for the user the store granted it to, if it was not yet (the
    /// session's first socket on this node): refused when the user is at the cap.
    ///
    /// # Errors
    /// [`CapReached::User`]; the slot stays counted for its session until dropped.
    pub fn admitted(&mut self, user_id: &str) -> Result<(), CapReached> {
        if self.user.is_some() {
            return Ok(());
        }
        let mut admission = self.registry.admission();
        let held = admission.users.get(user_id).copied().unwrap_or(0);
        if held >= self.caps.per_user {
            return Err(CapReached::User);
        }
        admission.users.insert(user_id.to_owned(), held + 1);
        if let Some(session) = admission.sessions.get_mut(&self.session_id) {
            session.user.get_or_insert_with(|| user_id.to_owned());
        }
        self.user = Some(user_id.to_owned());
        Ok(())
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut admission = self.registry.admission();
        if let Some(session) = admission.sessions.get_mut(&self.session_id) {
            session.sockets = session.sockets.saturating_sub(1);
            if session.sockets == 0 {
                admission.sessions.remove(&self.session_id);
            }
        }
        if let Some(user) = &self.user {
            if let Some(held) = admission.users.get_mut(user) {
                *held = held.saturating_sub(1);
                if *held == 0 {
                    admission.users.remove(user);
                }
            }
        }
    }
}

/// A connect rate for [`Registry::connect_allowed`]: `count` admissions per `period`,
/// in a burst of `count`.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Admissions per period (and the burst).
    pub count: u32,
    /// The period.
    pub period: Duration,
}

impl Pace {
    /// The time one admission takes up.
    fn cell(self) -> Duration {
        self.period / self.count.max(1)
    }
}

/// The registry; cheap to clone.
#[derive(Clone, Default)]
pub struct Registry(Arc<Indexes>);

/// Keeps a connection registered; unregisters on drop.
pub struct Registration {
    registry: Registry,
    /// Boxed, like the slot: admission results that carry a registration stay small.
    conn_id: Box<str>,
    /// The connection's socket slot, once admitted: given back with the registration.
    /// Boxed: a registration travels inside admission results that are moved around.
    slot: Option<Box<SocketSlot>>,
}

impl Registration {
    /// Completes a registration made before admission (indexed by session only) with
    /// the identity the ticket granted, and indexes it by user.
    pub fn admitted(&self, user_id: &str, device_id: &str, client_type: ClientType) {
        let indexes = &self.registry.0;
        if let Some(mut handle) = indexes.by_conn.get_mut(&*self.conn_id) {
            handle.user_id = user_id.to_owned();
            handle.device_id = device_id.to_owned();
            handle.client_type = client_type;
        }
        indexes
            .by_user
            .entry(user_id.to_owned())
            .or_default()
            .push(self.conn_id.to_string());
    }

    /// The registered connection's id.
    pub fn conn_id(&self) -> &str {
        &self.conn_id
    }

    /// Keeps the connection's socket slot until the connection leaves the registry.
    pub fn hold(&mut self, slot: SocketSlot) {
        self.slot = Some(Box::new(slot));
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // The slot first: once a connection is gone from the indexes, its place under
        // the caps is free too.
        drop(self.slot.take());
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
    fn admission(&self) -> MutexGuard<'_, Admission> {
        // A panic under the lock leaves counts that are still consistent enough to go
        // on with (each change is one map operation); never fail admission over it.
        self.0
            .admission
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a socket slot of `session_id` under `caps`: the session's cap, and its
    /// user's when the node already knows the session's user (it holds a socket of it).
    /// Check and take are one step under one lock, so two admissions racing for the
    /// last slot cannot both get it.
    ///
    /// A session's first socket on this node is counted for its user only once the
    /// store has granted it ([`SocketSlot::admitted`]): the ticket names the session,
    /// not the user.
    ///
    /// # Errors
    /// [`CapReached`]: nothing was taken.
    pub fn take_slot(&self, session_id: &str, caps: SocketCaps) -> Result<SocketSlot, CapReached> {
        let mut admission = self.admission();
        let (sockets, user) = match admission.sessions.get(session_id) {
            Some(session) => (session.sockets, session.user.clone()),
            None => (0, None),
        };
        if sockets >= caps.per_session {
            return Err(CapReached::Session);
        }
        if let Some(user) = &user {
            let held = admission.users.get(user).copied().unwrap_or(0);
            if held >= caps.per_user {
                return Err(CapReached::User);
            }
            admission.users.insert(user.clone(), held + 1);
        }
        admission
            .sessions
            .entry(session_id.to_owned())
            .or_default()
            .sockets += 1;
        Ok(SocketSlot {
            registry: self.clone(),
            session_id: session_id.to_owned(),
            user,
            caps,
        })
    }

    /// Whether `session_id` may be admitted once more at `pace`, without charging it:
    /// `Err` holds how long until it may. Only [`Registry::charge_connect`] charges, so
    /// an admission that fails (a replayed, spent ticket naming someone's session)
    /// costs that session nothing.
    ///
    /// # Errors
    /// The wait until the next admission fits the pace.
    pub fn connect_allowed(
        &self,
        session_id: &str,
        pace: Pace,
        now: Instant,
    ) -> Result<(), Duration> {
        let admission = self.admission();
        let Some(&tat) = admission.paces.get(session_id) else {
            return Ok(());
        };
        // GCRA: one more admission fits while the arrival time, one cell further on,
        // stays within `count` cells of now.
        let tolerance = pace.cell() * pace.count.max(1).saturating_sub(1);
        match tat.checked_duration_since(now + tolerance) {
            Some(wait) if !wait.is_zero() => Err(wait),
            _ => Ok(()),
        }
    }

    /// Charges one admission of `session_id` at `pace`: call it for an admitted socket
    /// only. Never refuses: an admission that passed [`Registry::connect_allowed`] is
    /// charged even if others of its session passed at the same time; those are at most
    /// the session's socket cap, as each holds a slot.
    pub fn charge_connect(&self, session_id: &str, pace: Pace, now: Instant) {
        let mut admission = self.admission();
        if admission.paces.len() >= admission.sweep_paces_at {
            admission.paces.retain(|_, tat| *tat > now);
            // Amortized: the next sweep waits until the map doubles.
            admission.sweep_paces_at = (admission.paces.len() * 2).max(1024);
        }
        let tat = admission.paces.entry(session_id.to_owned()).or_insert(now);
        *tat = (*tat).max(now) + pace.cell();
    }

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
        Registration {
            registry: self.clone(),
            conn_id: conn_id.into_boxed_str(),
            slot: None,
        }
    }

    fn remove(&self, conn_id: &str) {
        if let Some((_, handle)) = self.0.by_conn.remove(conn_id) {
            detach(&self.0.by_session, &handle.session_id, conn_id);
            detach(&self.0.by_user, &handle.user_id, conn_id);
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

    /// Sessions and users holding socket slots (for leak tests).
    pub fn slot_sizes(&self) -> (usize, usize) {
        let admission = self.admission();
        (admission.sessions.len(), admission.users.len())
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

    /// Every user with a live connection here, with how many it holds.
    pub fn users(&self) -> Vec<(String, usize)> {
        self.0
            .by_user
            .iter()
            .map(|e| (e.key().clone(), e.value().len()))
            .collect()
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
        assert_eq!(
            r.send_to_session("s1", Outbound::Close(4503, "kicked".into())),
            1
        );
        let next = futures_util::FutureExt::now_or_never(rx2.next());
        assert!(matches!(
            next,
            Some(super::inbox::Next::Message(Outbound::Close(4503, _)))
        ));
        drop(g2);
        drop(g3);
        assert_eq!(r.index_sizes(), (0, 0, 0));
    }

    const CAPS: SocketCaps = SocketCaps {
        per_session: 2,
        per_user: 3,
    };

    #[test]
    fn slots_are_capped_per_session_and_per_user_and_given_back_on_drop() {
        let r = Registry::default();
        let mut a1 = r.take_slot("s1", CAPS).expect("first");
        // The user is unknown until the store named it.
        a1.admitted("alice").expect("user has room");
        let a2 = r.take_slot("s1", CAPS).expect("second");
        assert_eq!(r.take_slot("s1", CAPS).err(), Some(CapReached::Session));
        // Another session of alice: its first slot is counted for her on admission.
        let mut b1 = r.take_slot("s2", CAPS).expect("other session");
        b1.admitted("alice").expect("third of alice");
        let known = r.take_slot("s2", CAPS).err();
        assert_eq!(known, Some(CapReached::User), "s2's user is known now");
        let mut c1 = r.take_slot("s3", CAPS).expect("a third session");
        assert_eq!(c1.admitted("alice"), Err(CapReached::User));
        drop(c1);
        drop(a2);
        let b2 = r.take_slot("s2", CAPS).expect("alice has room again");
        drop(a1);
        drop(b1);
        drop(b2);
        assert_eq!(r.slot_sizes(), (0, 0));
    }

    #[test]
    fn racing_takers_of_the_last_slots_get_exactly_the_cap() {
        let r = Registry::default();
        let caps = SocketCaps {
            per_session: 5,
            per_user: 100,
        };
        let won = std::sync::atomic::AtomicUsize::new(0);
        let slots = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..32 {
                scope.spawn(|| {
                    if let Ok(slot) = r.take_slot("s", caps) {
                        won.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        slots.lock().expect("lock").push(slot);
                    }
                });
            }
        });
        assert_eq!(won.into_inner(), 5);
        drop(slots);
        assert_eq!(r.slot_sizes(), (0, 0));
    }

    #[test]
    fn the_connect_pace_is_checked_without_charge_and_charged_on_demand() {
        let r = Registry::default();
        let pace = Pace {
            count: 3,
            period: Duration::from_secs(60),
        };
        let t0 = Instant::now();
        // Checks alone charge nothing, however many.
        for _ in 0..100 {
            assert_eq!(r.connect_allowed("s", pace, t0), Ok(()));
        }
        for _ in 0..3 {
            assert_eq!(r.connect_allowed("s", pace, t0), Ok(()));
            r.charge_connect("s", pace, t0);
        }
        assert_eq!(
            r.connect_allowed("s", pace, t0),
            Err(Duration::from_secs(20))
        );
        assert_eq!(r.connect_allowed("other", pace, t0), Ok(()));
        // One cell (20 s) later, one more fits.
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!(r.connect_allowed("s", pace, t1), Ok(()));
        r.charge_connect("s", pace, t1);
        assert!(r.connect_allowed("s", pace, t1).is_err());
    }

    #[test]
    fn close_reasons_are_cut_on_a_character_boundary() {
        assert_eq!(super::close_reason("maintenance"), "maintenance");
        let long = "é".repeat(100); // 200 bytes
        let cut = super::close_reason(&long);
        assert!(cut.len() <= super::MAX_CLOSE_REASON && cut.len() >= super::MAX_CLOSE_REASON - 1);
        assert!(long.starts_with(&cut));
    }
}
