//! The memory store: one node, no Redis, nothing kept across a restart (the durable
//! store, [`DurableStore`](super::durable::DurableStore), is this store written through
//! to a file).
//!
//! It is hand-written because no crate offers an embedded key-value store with the
//! exact atomic semantics the protocol needs: a get-and-delete that exactly one caller
//! wins, a set-if-absent with a per-entry TTL, and expired entries that read as absent.
//! A [`DashMap`] gives the first two for free (`remove` is `GETDEL`, the entry API is
//! `SET NX`), and every entry carries its own deadline for the third.
//!
//! The keyspace is that of [`RedisStore`](super::redis::RedisStore): one map, keyed by
//! the names from [`keys`], so both stores share one key scheme and one mental model.
//!
//! # Why the orderings are linearizable enough
//!
//! A Redis script runs as one step; here an operation is a few single-key steps, each
//! atomic on its own (one shard lock at a time, never two, so no step can deadlock).
//! The order of those steps is chosen so that every outcome is one that some serial
//! order of the operations would give:
//!
//! - **admit** removes the ticket *first*. That removal is the point where concurrent
//!   admissions are decided: exactly one caller gets the entry, every other one sees
//!   [`AdmitOutcome::Unknown`]. Only then does it compare the device (the ticket is
//!   burnt either way) and check the session. A revoke that lands between removal and
//!   session check makes the admission `SessionGone`, as if the revoke came first; a
//!   revoke after the check is ordered after the admission, which is what a socket
//!   opened a moment before a logout looks like anyway (the hub closes it).
//! - **mint** checks the session, then records the nonce (set-if-absent, decided under
//!   the nonce's shard lock, so one caller wins), then stores the ticket. A revoke
//!   between those steps orders the mint before the revoke; the ticket it leaves behind
//!   can never open a socket, because admission checks the session again.
//!
//! Expired entries are treated as absent by every read, and removed lazily when a read
//! finds them and eagerly by [`MemoryStore::spawn_sweeper`], so memory stays bounded by
//! the live entries even for keys nobody reads again (nonces, unused tickets).

use std::{
    sync::{Arc, Weak},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use dashmap::{mapref::entry::Entry as MapEntry, DashMap};
use tokio::{task::JoinHandle, time::MissedTickBehavior};

use super::qr::QrRecord;
use super::{
    keys, utc_day, AdmitOutcome, AdmitTicket, AppendPush, ConfirmOutcome, ConfirmQr, MintOutcome,
    MintTicket, NewQr, PollOutcome, PollQr, PushId, PushReplay, RenewAccess, RenewOutcome,
    RotateOutcome, RotateRefresh, ScanOutcome, ScanQr, SessionRecord, Store, StoreError,
    StoredPush, TicketGrant, UserSession,
};

/// Longest lifetime an entry is given, so deadline arithmetic can never overflow.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The embedded single-node store. Cloning is cheap and shares the data.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: DashMap<String, Entry>,
}

/// Refresh rotation state of a session (the extra fields of the Redis hash).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Rotation {
    /// Hash of the current token's immediate parent (for the grace window).
    pub(crate) prev_hash: Option<String>,
    /// Unix milliseconds of the last rotation.
    pub(crate) prev_at_ms: i64,
    /// UTC day of the daily refresh count.
    pub(crate) day: i64,
    /// Refreshes counted on `day`.
    pub(crate) count: u32,
}

/// A long-lived entry, as [`DurableStore`](super::durable::DurableStore) writes it to
/// disk and loads it back. Short-lived entries (nonces, tickets, renewed `jti`s) have
/// no such form: they stay in memory only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kept {
    /// A session record and its rotation state.
    Session(SessionRecord, Rotation),
    /// A reuse marker or a blocked flag: presence is the value.
    Flag,
    /// A user's session index, values as in Redis (`ctp|created_ms|expires`).
    UserIndex(std::collections::HashMap<String, String>),
}

/// One key's value and the instant it stops existing.
#[derive(Debug)]
struct Entry {
    value: Value,
    expires_at: Instant,
}

/// What a key holds; the counterpart of the Redis types in [`keys`].
#[derive(Debug)]
enum Value {
    Session(SessionRecord, Rotation),
    /// A nonce seen, or an access token renewed: presence is the value.
    Nonce,
    /// A user's session index, values encoded as in Redis (`ctp|created|expires`).
    UserIndex(std::collections::HashMap<String, String>),
    /// A user's blocked flag.
    Flag,
    /// [`TicketGrant::encode`]'s form, as in Redis, so both stores decode the same bytes.
    Ticket(String),
    /// A QR login; its transitions are [`QrRecord`]'s methods.
    Qr(Box<QrRecord>),
    /// A user's push history: the stream of Redis.
    Pushes(PushLog),
}

/// A user's push history: its epoch, the last sequence number given, and the newest
/// pushes, oldest first.
#[derive(Debug)]
struct PushLog {
    epoch: String,
    last_seq: u64,
    pushes: std::collections::VecDeque<(u64, StoredPush)>,
}

impl Entry {
    fn new(value: Value, ttl: Duration) -> Self {
        Entry {
            value,
            expires_at: deadline(ttl),
        }
    }

    fn is_live(&self, now: Instant) -> bool {
        now < self.expires_at
    }
}

impl MemoryStore {
    /// An empty store. Call [`MemoryStore::spawn_sweeper`] to bound its memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a task that removes expired entries every `every`.
    ///
    /// The task holds only a weak reference: it ends by itself at its next tick after
    /// the last clone of the store is dropped. Reads never depend on it (they treat
    /// expired entries as absent); it exists so that keys nobody reads again do not
    /// pile up.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime.
    pub fn spawn_sweeper(&self, every: Duration) -> JoinHandle<()> {
        tokio::spawn(self.sweeper(every))
    }

    /// The sweeping loop of [`MemoryStore::spawn_sweeper`], for a caller that spawns
    /// (and tracks) it itself.
    pub fn sweeper(
        &self,
        every: Duration,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        sweep(
            Arc::downgrade(&self.inner),
            every.max(Duration::from_millis(1)),
        )
    }

    /// Removes expired entries now, and gives the memory of a map that emptied back
    /// (after a flood of nonces, the map would otherwise keep its largest size).
    fn sweep_once(inner: &Inner) {
        let now = Instant::now();
        inner.entries.retain(|_, e| e.is_live(now));
        inner.entries.shrink_to_fit();
    }

    /// The number of entries held, including expired ones not yet swept.
    pub fn len(&self) -> usize {
        self.inner.entries.len()
    }

    /// Whether no entries are held (not even expired ones).
    pub fn is_empty(&self) -> bool {
        self.inner.entries.is_empty()
    }

    /// Runs `read` on the live value at `key`; an expired entry is removed and reads
    /// as absent.
    fn read_live<R>(&self, key: &str, read: impl FnOnce(&Value) -> R) -> Option<R> {
        let now = Instant::now();
        {
            let entry = self.inner.entries.get(key)?;
            if entry.is_live(now) {
                return Some(read(&entry.value));
            }
        } // The shard's read lock is released here, before the removal takes its write lock.
        self.inner.entries.remove_if(key, |_, e| !e.is_live(now));
        None
    }

    /// The long-lived value at `key` and the time it has left; `None` when the key is
    /// absent, expired or holds a short-lived value. The durable store reads the state
    /// an operation left behind through this.
    pub(crate) fn kept(&self, key: &str) -> Option<(Kept, Duration)> {
        let now = Instant::now();
        let entry = self.inner.entries.get(key)?;
        let left = entry.expires_at.checked_duration_since(now)?;
        if left.is_zero() {
            return None;
        }
        let kept = match &entry.value {
            Value::Session(record, rotation) => Kept::Session(record.clone(), rotation.clone()),
            Value::Flag => Kept::Flag,
            Value::UserIndex(index) => Kept::UserIndex(index.clone()),
            Value::Nonce | Value::Ticket(_) | Value::Qr(_) | Value::Pushes(_) => return None,
        };
        Some((kept, left))
    }

    /// Puts back a long-lived value with `ttl` left (the durable store, loading its file).
    pub(crate) fn restore(&self, key: String, kept: Kept, ttl: Duration) {
        let value = match kept {
            Kept::Session(record, rotation) => Value::Session(record, rotation),
            Kept::Flag => Value::Flag,
            Kept::UserIndex(index) => Value::UserIndex(index),
        };
        self.inner.entries.insert(key, Entry::new(value, ttl));
    }

    fn session_is_live(&self, session_id: &str) -> bool {
        self.read_live(&keys::session(session_id), |v| {
            matches!(v, Value::Session(..))
        })
        .unwrap_or(false)
    }
}

async fn sweep(store: Weak<Inner>, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = store.upgrade() else {
            return;
        };
        MemoryStore::sweep_once(&inner);
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let key = keys::session(&record.session_id);
        match ttl_until(record.expires_at) {
            // Like EXPIREAT with a past time: the record is deleted, not stored.
            None => {
                self.inner.entries.remove(&key);
            }
            Some(ttl) => {
                let entry = Entry::new(Value::Session(record.clone(), Rotation::default()), ttl);
                self.inner.entries.insert(key, entry);
            }
        }
        Ok(())
    }

    async fn session(&self, session_id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let found = self.read_live(&keys::session(session_id), |v| match v {
            Value::Session(record, _) => Some(record.clone()),
            _ => None,
        });
        match found {
            None => Ok(None),
            Some(Some(record)) => Ok(Some(record)),
            Some(None) => Err(StoreError::Corrupt("session key holds another type".into())),
        }
    }

    async fn revoke_session(&self, session_id: &str) -> Result<bool, StoreError> {
        let now = Instant::now();
        let removed = self.inner.entries.remove(&keys::session(session_id));
        Ok(removed.is_some_and(|(_, e)| e.is_live(now)))
    }

    async fn mint_ticket(&self, mint: &MintTicket<'_>) -> Result<MintOutcome, StoreError> {
        if !self.session_is_live(mint.session_id) {
            return Ok(MintOutcome::SessionGone);
        }

        let now = Instant::now();
        let nonce = Entry::new(Value::Nonce, mint.nonce_ttl);
        let recorded = match self
            .inner
            .entries
            .entry(keys::nonce(mint.session_id, mint.nonce))
        {
            MapEntry::Occupied(seen) if seen.get().is_live(now) => false,
            MapEntry::Occupied(mut stale) => {
                stale.insert(nonce);
                true
            }
            MapEntry::Vacant(free) => {
                free.insert(nonce);
                true
            }
        };
        if !recorded {
            return Ok(MintOutcome::NonceReplayed);
        }

        let ticket = Entry::new(Value::Ticket(mint.grant.encode()), mint.ticket_ttl);
        self.inner
            .entries
            .insert(keys::ticket(mint.session_id, mint.ticket_id), ticket);
        Ok(MintOutcome::Minted)
    }

    async fn admit_ticket(&self, admit: &AdmitTicket<'_>) -> Result<AdmitOutcome, StoreError> {
        let now = Instant::now();
        let key = keys::ticket(admit.session_id, admit.ticket_id);
        let grant = match self.inner.entries.remove(&key) {
            Some((
                _,
                Entry {
                    value: Value::Ticket(grant),
                    expires_at,
                },
            )) if now < expires_at => grant,
            Some((_, e)) if e.is_live(now) => {
                return Err(StoreError::Corrupt("ticket key holds another type".into()))
            }
            _ => return Ok(AdmitOutcome::Unknown),
        };

        if grant_device(&grant) != admit.device_id {
            return Ok(AdmitOutcome::DeviceMismatch);
        }
        if !self.session_is_live(admit.session_id) {
            return Ok(AdmitOutcome::SessionGone);
        }
        TicketGrant::decode(&grant).map(AdmitOutcome::Admitted)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn record_nonce(
        &self,
        scope: &str,
        nonce: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        Ok(match self.inner.entries.entry(keys::nonce(scope, nonce)) {
            MapEntry::Occupied(seen) if seen.get().is_live(now) => false,
            MapEntry::Occupied(mut stale) => {
                stale.insert(Entry::new(Value::Nonce, ttl));
                true
            }
            MapEntry::Vacant(free) => {
                free.insert(Entry::new(Value::Nonce, ttl));
                true
            }
        })
    }

    async fn rotate_refresh(&self, r: &RotateRefresh<'_>) -> Result<RotateOutcome, StoreError> {
        let now_ms = crate::clock::unix_now_ms();
        let today = utc_day(now_ms / 1000);
        let key = keys::session(r.session_id);
        // The shard's write lock is held for the whole check-and-rotate: atomic.
        let reused = keys::reused(r.session_id);
        let gone = || {
            if self.read_live(&reused, |_| ()).is_some() {
                RotateOutcome::Reused
            } else {
                RotateOutcome::SessionGone
            }
        };
        let Some(mut entry) = self.inner.entries.get_mut(&key) else {
            return Ok(gone());
        };
        // The clock is read under the lock: a reuse that expired this session in place
        // just before must look expired here (an instant read earlier could be older,
        // and the session would look alive to a second reuse).
        let now = Instant::now();
        if !entry.is_live(now) {
            drop(entry);
            return Ok(gone());
        }
        let Value::Session(record, rotation) = &mut entry.value else {
            return Err(StoreError::Corrupt("session key holds another type".into()));
        };
        if record.device_id != r.device_id {
            return Ok(RotateOutcome::DeviceMismatch);
        }
        let current = record.refresh_hash == r.presented_hash;
        let grace_ms = i64::try_from(r.grace.as_millis()).unwrap_or(i64::MAX);
        let parent_in_grace = grace_ms > 0
            && rotation.prev_hash.as_deref() == Some(r.presented_hash)
            && now_ms - rotation.prev_at_ms <= grace_ms;
        if !current && !parent_in_grace {
            // Reuse: a marker answers "reused" to the rest of the family for the
            // session's remaining life, then the session dies (expired in place, then
            // removed). The marker goes first: a rotation that finds the session gone
            // must find the marker too, or it would answer "session gone". Inserting
            // needs this shard's lock released; a rotation slipping in between is
            // undone by the expiry that follows.
            let left = entry.expires_at.saturating_duration_since(now);
            drop(entry);
            let marker = Entry::new(Value::Flag, left);
            match self.inner.entries.entry(reused) {
                // Never shortened by a later reuse.
                MapEntry::Occupied(mut kept) if kept.get().expires_at < marker.expires_at => {
                    kept.insert(marker);
                }
                MapEntry::Occupied(_) => {}
                MapEntry::Vacant(free) => {
                    free.insert(marker);
                }
            }
            if let Some(mut entry) = self.inner.entries.get_mut(&key) {
                entry.expires_at = now;
            }
            self.inner.entries.remove_if(&key, |_, e| !e.is_live(now));
            return Ok(RotateOutcome::Reused);
        }
        let count = if rotation.day == today {
            rotation.count
        } else {
            0
        };
        if count >= r.cap_per_day {
            return Ok(RotateOutcome::Limit);
        }
        if current {
            rotation.prev_hash = Some(r.presented_hash.to_owned());
            rotation.prev_at_ms = now_ms;
        }
        record.refresh_hash = r.new_hash.to_owned();
        rotation.day = today;
        rotation.count = count + 1;
        Ok(RotateOutcome::Rotated(record.clone()))
    }

    async fn renew_access(&self, r: &RenewAccess<'_>) -> Result<RenewOutcome, StoreError> {
        let now = Instant::now();
        let today = utc_day(crate::clock::unix_now());
        let marker = keys::renewed(r.session_id, r.jti);
        if !self.session_is_live(r.session_id) {
            return Ok(RenewOutcome::SessionGone);
        }
        // Claim the jti (set-if-absent), then count; one lock at a time.
        let claimed = match self.inner.entries.entry(marker.clone()) {
            MapEntry::Occupied(seen) if seen.get().is_live(now) => false,
            MapEntry::Occupied(mut stale) => {
                stale.insert(Entry::new(Value::Nonce, r.jti_ttl));
                true
            }
            MapEntry::Vacant(free) => {
                free.insert(Entry::new(Value::Nonce, r.jti_ttl));
                true
            }
        };
        if !claimed {
            return Ok(RenewOutcome::AlreadyRenewed);
        }
        let outcome = match self.inner.entries.get_mut(&keys::session(r.session_id)) {
            Some(mut entry) if entry.is_live(now) => match &mut entry.value {
                Value::Session(_, rotation) => {
                    let count = if rotation.day == today {
                        rotation.count
                    } else {
                        0
                    };
                    if count >= r.cap_per_day {
                        RenewOutcome::Limit
                    } else {
                        rotation.day = today;
                        rotation.count = count + 1;
                        RenewOutcome::Renewed
                    }
                }
                _ => return Err(StoreError::Corrupt("session key holds another type".into())),
            },
            _ => RenewOutcome::SessionGone,
        };
        if outcome != RenewOutcome::Renewed {
            self.inner.entries.remove(&marker);
        }
        Ok(outcome)
    }

    async fn index_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let Some(ttl) = ttl_until(record.expires_at) else {
            return Ok(());
        };
        let now = Instant::now();
        let value = super::index_value(record);
        let mut entry = self
            .inner
            .entries
            .entry(keys::user_sessions(&record.user_id))
            .or_insert_with(|| Entry::new(Value::UserIndex(Default::default()), ttl));
        if !entry.is_live(now) || !matches!(entry.value, Value::UserIndex(_)) {
            *entry = Entry::new(Value::UserIndex(Default::default()), ttl);
        }
        entry.expires_at = entry.expires_at.max(deadline(ttl));
        if let Value::UserIndex(index) = &mut entry.value {
            index.insert(record.session_id.clone(), value);
        }
        Ok(())
    }

    async fn unindex_session(&self, user_id: &str, session_id: &str) -> Result<(), StoreError> {
        if let Some(mut entry) = self.inner.entries.get_mut(&keys::user_sessions(user_id)) {
            if let Value::UserIndex(index) = &mut entry.value {
                index.remove(session_id);
            }
        }
        Ok(())
    }

    async fn user_sessions(&self, user_id: &str) -> Result<Vec<UserSession>, StoreError> {
        let entries = self
            .read_live(&keys::user_sessions(user_id), |v| match v {
                Value::UserIndex(index) => index.clone(),
                _ => Default::default(),
            })
            .unwrap_or_default();
        Ok(super::live_index_entries(entries, crate::clock::unix_now()))
    }

    async fn set_blocked(&self, user_id: &str, blocked: bool) -> Result<(), StoreError> {
        let key = keys::blocked(user_id);
        if blocked {
            self.inner
                .entries
                .insert(key, Entry::new(Value::Flag, MAX_TTL));
        } else {
            self.inner.entries.remove(&key);
        }
        Ok(())
    }

    async fn is_blocked(&self, user_id: &str) -> Result<bool, StoreError> {
        Ok(self.read_live(&keys::blocked(user_id), |_| ()).is_some())
    }

    async fn append_push(&self, push: &AppendPush<'_>) -> Result<String, StoreError> {
        let now = Instant::now();
        let fresh = || {
            Entry::new(
                Value::Pushes(PushLog {
                    epoch: PushId::new_epoch(),
                    last_seq: 0,
                    pushes: Default::default(),
                }),
                push.limits.ttl,
            )
        };
        // One shard lock for the whole step: appends of one user are serial.
        let mut entry = self
            .inner
            .entries
            .entry(keys::push_history(push.user_id, keys::Topology::Single))
            .or_insert_with(fresh);
        if !entry.is_live(now) || !matches!(entry.value, Value::Pushes(_)) {
            *entry = fresh();
        }
        entry.expires_at = deadline(push.limits.ttl);
        let Value::Pushes(log) = &mut entry.value else {
            return Err(StoreError::Corrupt("push history".into()));
        };
        log.last_seq += 1;
        let id = PushId {
            epoch: log.epoch.clone(),
            seq: log.last_seq,
        }
        .to_string();
        log.pushes.push_back((
            log.last_seq,
            StoredPush {
                id: id.clone(),
                session_id: push.session_id.map(str::to_owned),
                topic: push.topic.to_owned(),
                data: push.data.to_owned(),
            },
        ));
        let max_len = usize::try_from(push.limits.max_len)
            .unwrap_or(usize::MAX)
            .max(1);
        while log.pushes.len() > max_len {
            log.pushes.pop_front();
        }
        Ok(id)
    }

    async fn pushes_since(
        &self,
        user_id: &str,
        since: &str,
        session_id: &str,
    ) -> Result<PushReplay, StoreError> {
        let since = PushId::parse(since);
        let key = keys::push_history(user_id, keys::Topology::Single);
        let replay = self.read_live(&key, |value| {
            let Value::Pushes(log) = value else {
                return PushReplay::default();
            };
            let (Some(first), Some(last)) = (log.pushes.front(), log.pushes.back()) else {
                return PushReplay::default();
            };
            let last_id = Some(last.1.id.clone());
            // Everything after `since` is held when `since` is in this epoch, not
            // newer than the newest, and not older than the push before the oldest.
            let held = since
                .as_ref()
                .is_some_and(|s| s.epoch == log.epoch && s.seq <= last.0 && s.seq + 1 >= first.0);
            let Some(since) = since.filter(|_| held) else {
                return PushReplay {
                    recovered: false,
                    last_id,
                    pushes: Vec::new(),
                };
            };
            let pushes = log
                .pushes
                .iter()
                .filter(|(seq, p)| {
                    *seq > since.seq && p.session_id.as_deref().is_none_or(|s| s == session_id)
                })
                .map(|(_, p)| p.clone())
                .collect();
            PushReplay {
                recovered: true,
                last_id,
                pushes,
            }
        });
        Ok(replay.unwrap_or_default())
    }

    async fn create_qr(&self, qr: &NewQr<'_>) -> Result<(), StoreError> {
        let entry = Entry::new(Value::Qr(Box::new(QrRecord::new(qr))), qr.ttl);
        self.inner.entries.insert(keys::qr(qr.family), entry);
        Ok(())
    }

    async fn scan_qr(&self, scan: &ScanQr<'_>) -> Result<ScanOutcome, StoreError> {
        let outcome = self.with_qr(scan.family, |qr| (qr.scan(scan), false))?;
        Ok(outcome.unwrap_or(ScanOutcome::Gone))
    }

    async fn confirm_qr(&self, confirm: &ConfirmQr<'_>) -> Result<ConfirmOutcome, StoreError> {
        let outcome = self.with_qr(confirm.family, |qr| (qr.confirm(confirm), false))?;
        Ok(outcome.unwrap_or(ConfirmOutcome::Gone))
    }

    async fn poll_qr(&self, poll: &PollQr<'_>) -> Result<PollOutcome, StoreError> {
        let outcome = self.with_qr(poll.family, |qr| qr.poll(poll))?;
        Ok(outcome.unwrap_or(PollOutcome::Gone))
    }
}

impl MemoryStore {
    /// Runs one QR transition under the record's shard write lock (atomic, like a
    /// script); `None` when there is no live record. A transition that asks for the
    /// record's deletion expires it in place before the lock is released, so no
    /// other caller can see it again, then removes it.
    fn with_qr<R>(
        &self,
        family: &str,
        transition: impl FnOnce(&mut QrRecord) -> (R, bool),
    ) -> Result<Option<R>, StoreError> {
        let key = keys::qr(family);
        let Some(mut entry) = self.inner.entries.get_mut(&key) else {
            return Ok(None);
        };
        let now = Instant::now();
        if !entry.is_live(now) {
            return Ok(None);
        }
        let Value::Qr(record) = &mut entry.value else {
            return Err(StoreError::Corrupt("QR key holds another type".into()));
        };
        let (outcome, delete) = transition(record);
        if delete {
            entry.expires_at = now;
            drop(entry);
            self.inner.entries.remove_if(&key, |_, e| !e.is_live(now));
        }
        Ok(Some(outcome))
    }
}

/// The device part of an encoded grant: the text before the first `|`, exactly what
/// `admit.lua` compares.
fn grant_device(grant: &str) -> &str {
    grant.split_once('|').map_or(grant, |(device, _)| device)
}

/// The instant `ttl` from now, capped so it cannot overflow.
fn deadline(ttl: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(ttl.min(MAX_TTL)).unwrap_or(now)
}

/// How long until the Unix time `expires_at` (seconds); `None` when it has passed.
fn ttl_until(expires_at: i64) -> Option<Duration> {
    let at = UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(expires_at).ok()?))?;
    at.duration_since(SystemTime::now())
        .ok()
        .filter(|ttl| !ttl.is_zero())
}

#[cfg(test)]
mod tests {
    /// A flood of short-lived entries must not leave the map at its largest size once
    /// they expired: the sweep gives the memory back.
    #[tokio::test]
    async fn a_sweep_gives_back_the_memory_of_expired_entries() {
        let store = MemoryStore::new();
        for i in 0..20_000 {
            let nonce = format!("nonce-{i:0>20}");
            store
                .record_nonce("s", &nonce, Duration::from_millis(1))
                .await
                .expect("record");
        }
        let flooded = store.inner.entries.capacity();
        tokio::time::sleep(Duration::from_millis(5)).await;
        MemoryStore::sweep_once(&store.inner);
        assert!(store.is_empty());
        let after = store.inner.entries.capacity();
        assert!(after * 10 < flooded, "capacity {flooded} -> {after}");
    }

    use super::*;

    #[test]
    fn grant_device_is_the_text_before_the_first_bar() {
        assert_eq!(grant_device("dev|web|1|a|b"), "dev");
        assert_eq!(grant_device("|web|1|a"), "");
        assert_eq!(grant_device("no-bar"), "no-bar");
    }

    #[test]
    fn past_and_absurd_expiry_times_do_not_panic() {
        assert_eq!(ttl_until(0), None);
        assert_eq!(ttl_until(-5), None);
        let _ = ttl_until(i64::MAX);
        assert!(deadline(Duration::MAX) > Instant::now());
    }
}
