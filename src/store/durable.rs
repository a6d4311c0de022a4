//! The durable embedded store: one node, no Redis, sessions that survive a restart.
//!
//! [`DurableStore`] is a [`MemoryStore`] that writes every long-lived change through
//! to a [redb](https://docs.rs/redb) file (`<data_dir>/store.redb`, mode 0600). The
//! memory store stays authoritative for every read and decides every outcome with the
//! semantics the store suite pins down; the file is only ever *written* while the node
//! runs, and *read* once, when it opens.
//!
//! What is kept on disk: session records (with the current refresh-token hash, the
//! parent's hash and rotation time for the grace window, and the daily refresh count as
//! of the last rotation), reuse markers, users' session indexes and blocked flags. What
//! stays in memory only: tickets, nonces and renewed-`jti` markers, which live seconds
//! to minutes. After a restart a ticket minted before it is unknown (the client mints
//! another) and a nonce is forgotten, which [`Store::replay_floor`] makes harmless:
//! every signed request timestamped at or before the second the store opened is
//! refused as stale, so a request captured before the restart cannot be replayed after
//! it (the server waits for the next second before it listens). What remains is a
//! client whose clock ran ahead of the server's by more than the restart took: its
//! request is dated after the opening and stays replayable within the skew window.
//!
//! # Writing through
//!
//! A mutation of a long-lived record runs in three steps:
//!
//! 1. under the *order lock*, the memory store applies it (deciding its outcome);
//! 2. still under the lock, the state it left at the keys it touched is read back and
//!    queued for the writer thread;
//! 3. the lock is released and the call waits until the writer committed that state
//!    with [`Durability::Immediate`] (fsync) before it returns.
//!
//! So an answer that reached a client is on disk (it survives `kill -9`), two mutations
//! of one record reach the disk in the order they took effect in memory (the queue is
//! filled under the same lock that orders the mutations), and the disk is never
//! touched on the async runtime: the writer is a thread of its own. It commits whatever
//! queued up while it was busy in one transaction (group commit), so concurrent logins
//! share an fsync. Mint, admit and every read never wait for it.
//!
//! A failed commit answers [`StoreError::Unavailable`] (503 `store_unavailable`); the
//! change stays in memory, so the node goes on consistently but that change may be
//! lost at the next restart.
//!
//! The daily refresh count of sliding renewals (`X-New-Token`, answered on mint) is
//! not written on its own, so that mint never waits for the disk: the next rotation
//! writes it. A restart may forget a few renewals of the count; the cap is a bound on
//! abuse, not an exact meter.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use ticketgate_sdk::ClientType;
use tokio::sync::{oneshot, Mutex};

use super::memory::{Kept, MemoryStore, Rotation};
use super::{
    keys, AdmitOutcome, AdmitTicket, AppendPush, ConfirmOutcome, ConfirmQr, MintOutcome,
    MintTicket, NewQr, PollOutcome, PollQr, PushReplay, RenewAccess, RenewOutcome, RotateOutcome,
    RotateRefresh, ScanOutcome, ScanQr, SessionRecord, Store, StoreError, UserSession,
};

/// The file's name under the data dir.
pub const FILE_NAME: &str = "store.redb";

/// Long-lived records: store key (as in [`keys`]) → JSON of [`Stored`].
const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
/// When records stop existing: (unix milliseconds, key) → nothing. It follows every
/// write of [`ENTRIES`], so a sweep reads only what is due; rebuilt at every open.
const EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("expiry");
/// The file's metadata: [`FORMAT_KEY`] → [`FORMAT`].
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FORMAT_KEY: &str = "format";
/// The layout of [`ENTRIES`]; a file of another format is refused, never rewritten.
const FORMAT: u64 = 1;

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 512;

/// Why the store file could not be opened. Every variant names the file; none is ever
/// answered by starting over with an empty file.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// Another process (a second node on the same data dir) holds the file's lock.
    #[error(
        "store file {}: another process has it open (one node per data dir; several nodes need TICKETGATE_REDIS_URL)",
        .path.display()
    )]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be created or opened, or is not a readable redb file.
    #[error("store file {}: cannot open it: {reason} (move it away to start with no sessions)", .path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The file opened but holds something this version does not understand.
    #[error("store file {}: unreadable content: {reason} (move it away to start with no sessions)", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The expiry of a stored record, read without the rest.
#[derive(Deserialize)]
struct StoredExpiry {
    expires_ms: i64,
}

/// The expiry of stored bytes as an [`EXPIRY`] key part; `None` when they do not parse.
fn expiry_of(bytes: &[u8]) -> Option<u64> {
    serde_json::from_slice::<StoredExpiry>(bytes)
        .ok()
        .map(|s| s.expires_ms.max(0).unsigned_abs())
}

/// One record as written to the file.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    /// Unix milliseconds when the record stops existing.
    expires_ms: i64,
    #[serde(flatten)]
    value: StoredValue,
}

/// The stored form of [`Kept`]. Written by hand rather than deriving serde on the
/// store's types: the file format stays put when those types change.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum StoredValue {
    Session {
        session_id: String,
        user_id: String,
        device_id: String,
        client_type: String,
        created_at: i64,
        expires_at: i64,
        refresh_hash: String,
        prev_hash: Option<String>,
        prev_at_ms: i64,
        day: i64,
        count: u32,
    },
    Flag,
    UserIndex {
        sessions: HashMap<String, String>,
    },
}

impl StoredValue {
    fn of(kept: Kept) -> Self {
        match kept {
            Kept::Session(r, rot) => StoredValue::Session {
                session_id: r.session_id,
                user_id: r.user_id,
                device_id: r.device_id,
                client_type: r.client_type.as_str().to_owned(),
                created_at: r.created_at,
                expires_at: r.expires_at,
                refresh_hash: r.refresh_hash,
                prev_hash: rot.prev_hash,
                prev_at_ms: rot.prev_at_ms,
                day: rot.day,
                count: rot.count,
            },
            Kept::Flag => StoredValue::Flag,
            Kept::UserIndex(sessions) => StoredValue::UserIndex { sessions },
        }
    }

    fn into_kept(self) -> Result<Kept, String> {
        Ok(match self {
            StoredValue::Session {
                session_id,
                user_id,
                device_id,
                client_type,
                created_at,
                expires_at,
                refresh_hash,
                prev_hash,
                prev_at_ms,
                day,
                count,
            } => Kept::Session(
                SessionRecord {
                    session_id,
                    user_id,
                    device_id,
                    client_type: ClientType::parse(&client_type)
                        .ok_or_else(|| format!("unknown client type `{client_type}`"))?,
                    created_at,
                    expires_at,
                    refresh_hash,
                },
                Rotation {
                    prev_hash,
                    prev_at_ms,
                    day,
                    count,
                },
            ),
            StoredValue::Flag => Kept::Flag,
            StoredValue::UserIndex { sessions } => Kept::UserIndex(sessions),
        })
    }
}

/// A record's new state: its expiry (unix milliseconds) and bytes, or `None` to delete it.
type Change = Option<(u64, Vec<u8>)>;

/// What the writer thread is asked to do.
enum Job {
    /// Put (`Some`: expiry in unix milliseconds, bytes) or delete (`None`) these
    /// records, then answer.
    Write {
        changes: Vec<(String, Change)>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Delete records whose time is over.
    Sweep,
    /// Commit what is queued, close the file and stop.
    Close { done: oneshot::Sender<()> },
}

/// The durable embedded single-node store. Cloning is cheap and shares the data.
#[derive(Debug, Clone)]
pub struct DurableStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Authoritative for every read and every outcome.
    memory: MemoryStore,
    /// The order lock: held while a long-lived record changes in memory and its new
    /// state is queued, so the writer receives changes in the order they took effect.
    writer: Mutex<mpsc::Sender<Job>>,
    /// Unix second when this process's nonce memory began (the file opened).
    opened_at: i64,
    path: PathBuf,
}

impl DurableStore {
    /// Opens (or creates, mode 0600) the store file at `path`, loads its live records
    /// into memory, deletes its expired ones and starts the writer thread.
    ///
    /// Blocking (file I/O): call it from a blocking context, or through
    /// `tokio::task::spawn_blocking`.
    ///
    /// # Errors
    /// [`DurableError`]: the file is locked by another process, cannot be opened, or
    /// holds records this version cannot read. Nothing is ever deleted to recover.
    pub fn open(path: &Path) -> Result<DurableStore, DurableError> {
        let open_err = |reason: String| DurableError::Open {
            path: path.to_owned(),
            reason,
        };
        let file = create_private(path).map_err(|e| open_err(e.to_string()))?;
        let db = match redb::Builder::new().create_file(file) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(DurableError::Locked {
                    path: path.to_owned(),
                })
            }
            Err(redb::DatabaseError::Storage(e)) => {
                return Err(open_err(format!("damaged, or not a store file: {e}")))
            }
            Err(e) => return Err(open_err(e.to_string())),
        };
        let opened_at = crate::clock::unix_now();
        let memory = MemoryStore::new();
        load(&db, &memory).map_err(|e| match e {
            LoadError::Db(reason) => open_err(reason),
            LoadError::Corrupt(reason) => DurableError::Corrupt {
                path: path.to_owned(),
                reason,
            },
        })?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(db, rx))
            .map_err(|e| open_err(format!("cannot start the writer thread: {e}")))?;
        Ok(DurableStore {
            inner: Arc::new(Inner {
                memory,
                writer: Mutex::new(tx),
                opened_at,
                path: path.to_owned(),
            }),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Commits what is queued, closes the file (releasing its lock) and waits for the
    /// writer thread to stop. Every later change fails with
    /// [`StoreError::Unavailable`]; reads go on from memory.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        let sent = self.inner.writer.lock().await.send(Job::Close { done });
        if sent.is_ok() {
            let _ = closed.await;
        }
    }

    /// The sweeping loop, for a caller that spawns (and tracks) it: every `every`,
    /// expired entries leave memory (as [`MemoryStore::sweeper`]) and the file.
    ///
    /// It holds only a weak reference and ends at its next tick after the last clone
    /// of the store is dropped.
    pub fn sweeper(
        &self,
        every: Duration,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let memory = self.inner.memory.sweeper(every);
        let file = sweep_file(
            Arc::downgrade(&self.inner),
            every.max(Duration::from_millis(1)),
        );
        async move {
            tokio::join!(memory, file);
        }
    }

    /// Runs `mutate` on the memory store under the order lock, then writes the state
    /// it left at `keys` and waits for the commit; skipped when `changed` says the
    /// outcome changed nothing, or when the records at `keys` are what they were (a
    /// rotation that found the reuse marker, an unindex of what is not indexed): no
    /// fsync for what the file already holds.
    async fn durably<R>(
        &self,
        keys: &[String],
        mutate: impl std::future::Future<Output = Result<R, StoreError>>,
        changed: impl FnOnce(&R) -> bool,
    ) -> Result<R, StoreError> {
        let (done, committed) = oneshot::channel();
        {
            let writer = self.inner.writer.lock().await;
            let before = self.records(keys);
            // The memory store's futures finish in one poll (they never wait), so the
            // mutation and the queuing of its state cannot be torn apart by a caller
            // that drops this future: once the change is made, it is queued.
            let outcome = mutate.await?;
            let after = self.records(keys);
            let same = before
                .iter()
                .zip(&after)
                .all(|(b, a)| b.as_ref().map(|(k, _)| k) == a.as_ref().map(|(k, _)| k));
            if !changed(&outcome) || same {
                return Ok(outcome);
            }
            let changes = keys
                .iter()
                .zip(after)
                .map(|(key, record)| Ok((key.clone(), encoded(record)?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            writer
                .send(Job::Write { changes, done })
                .map_err(|_| closed())?;
            // The lock is released here: the next mutation may run while this one's
            // commit is under way, and joins its batch.
            committed.await.map_err(|_| closed())?.map_err(|e| {
                tracing::error!(cause = %e, file = %self.inner.path.display(), "store file commit failed");
                StoreError::Unavailable(format!("store file: {e}"))
            })?;
            Ok(outcome)
        }
    }

    /// The long-lived records at `keys` in memory, with the time they have left.
    fn records(&self, keys: &[String]) -> Vec<Option<(Kept, Duration)>> {
        keys.iter().map(|key| self.inner.memory.kept(key)).collect()
    }
}

/// The expiry and bytes to write for a record, or `None` to delete it.
fn encoded(record: Option<(Kept, Duration)>) -> Result<Change, StoreError> {
    let Some((kept, left)) = record else {
        return Ok(None);
    };
    let left_ms = i64::try_from(left.as_millis()).unwrap_or(i64::MAX);
    let expires_ms = crate::clock::unix_now_ms().saturating_add(left_ms).max(0);
    let stored = Stored {
        expires_ms,
        value: StoredValue::of(kept),
    };
    serde_json::to_vec(&stored)
        .map(|bytes| Some((expires_ms.unsigned_abs(), bytes)))
        .map_err(|e| StoreError::Corrupt(format!("encoding a record: {e}")))
}

fn closed() -> StoreError {
    StoreError::Unavailable("store file closed".into())
}

/// Opens `path` for reading and writing, creating it with mode 0600.
fn create_private(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

enum LoadError {
    Db(String),
    Corrupt(String),
}

fn db_err(e: impl std::fmt::Display) -> LoadError {
    LoadError::Db(e.to_string())
}

/// Checks the format, loads the live records into `memory`, deletes the expired ones
/// and rebuilds [`EXPIRY`]; one transaction.
fn load(db: &Database, memory: &MemoryStore) -> Result<(), LoadError> {
    let now_ms = crate::clock::unix_now_ms();
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        let format = meta.get(FORMAT_KEY).map_err(db_err)?.map(|v| v.value());
        match format {
            None => {
                meta.insert(FORMAT_KEY, FORMAT).map_err(db_err)?;
            }
            Some(FORMAT) => {}
            Some(other) => {
                return Err(LoadError::Corrupt(format!(
                    "format {other}, this version reads format {FORMAT}"
                )))
            }
        }
        txn.delete_table(EXPIRY).map_err(db_err)?;
        let mut expiry = txn.open_table(EXPIRY).map_err(db_err)?;
        let mut entries = txn.open_table(ENTRIES).map_err(db_err)?;
        let mut expired = Vec::new();
        for item in entries.iter().map_err(db_err)? {
            let (key, value) = item.map_err(db_err)?;
            let key = key.value().to_owned();
            let stored: Stored = serde_json::from_slice(value.value())
                .map_err(|e| LoadError::Corrupt(format!("record `{key}`: {e}")))?;
            let left = stored.expires_ms.saturating_sub(now_ms);
            if left <= 0 {
                expired.push(key);
                continue;
            }
            let kept = stored
                .value
                .into_kept()
                .map_err(|e| LoadError::Corrupt(format!("record `{key}`: {e}")))?;
            expiry
                .insert((stored.expires_ms.unsigned_abs(), key.as_str()), ())
                .map_err(db_err)?;
            memory.restore(key, kept, Duration::from_millis(left.unsigned_abs()));
        }
        for key in expired {
            entries.remove(key.as_str()).map_err(db_err)?;
        }
    }
    txn.commit().map_err(db_err)
}

/// The writer thread: takes what queued up, commits it in one durable transaction,
/// answers every job of the batch; until [`Job::Close`] or every sender is gone.
fn write_loop(db: Database, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = commit(&db, &batch);
        let mut closing = None;
        for job in batch {
            match job {
                Job::Write { done, .. } => {
                    let _ = done.send(result.clone());
                }
                Job::Sweep => {
                    if let Err(e) = &result {
                        tracing::warn!(cause = %e, "sweeping the store file failed");
                    }
                }
                Job::Close { done } => closing = Some(done),
            }
        }
        if let Some(done) = closing {
            drop(db);
            let _ = done.send(());
            return;
        }
    }
}

/// One durable transaction applying `batch` in order.
fn commit(db: &Database, batch: &[Job]) -> Result<(), String> {
    let mut txn = db.begin_write().map_err(text)?;
    txn.set_durability(Durability::Immediate);
    {
        let mut entries = txn.open_table(ENTRIES).map_err(text)?;
        let mut expiry = txn.open_table(EXPIRY).map_err(text)?;
        for job in batch {
            match job {
                Job::Write { changes, .. } => {
                    for (key, value) in changes {
                        let key = key.as_str();
                        let new_ms = value.as_ref().map(|(ms, _)| *ms);
                        let old_ms = match value {
                            Some((ms, bytes)) => {
                                expiry.insert((*ms, key), ()).map_err(text)?;
                                let old = entries.insert(key, bytes.as_slice()).map_err(text)?;
                                old.and_then(|old| expiry_of(old.value()))
                            }
                            None => {
                                let old = entries.remove(key).map_err(text)?;
                                old.and_then(|old| expiry_of(old.value()))
                            }
                        };
                        if let Some(old_ms) = old_ms.filter(|old| Some(*old) != new_ms) {
                            expiry.remove((old_ms, key)).map_err(text)?;
                        }
                    }
                }
                Job::Sweep => {
                    let now_ms = crate::clock::unix_now_ms().max(0).unsigned_abs();
                    let mut due = Vec::new();
                    for item in expiry.range(..(now_ms, "")).map_err(text)? {
                        let (at, _) = item.map_err(text)?;
                        let (ms, key) = at.value();
                        due.push((ms, key.to_owned()));
                    }
                    for (ms, key) in due {
                        expiry.remove((ms, key.as_str())).map_err(text)?;
                        // Only the record this expiry belongs to; one that does not
                        // parse is kept, to be reported at the next open.
                        let current = entries.get(key.as_str()).map_err(text)?;
                        let same = current.is_some_and(|c| expiry_of(c.value()) == Some(ms));
                        if same {
                            entries.remove(key.as_str()).map_err(text)?;
                        }
                    }
                }
                Job::Close { .. } => {}
            }
        }
    }
    txn.commit().map_err(text)?;
    Ok(())
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

async fn sweep_file(store: Weak<Inner>, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = store.upgrade() else {
            return;
        };
        // A closed writer has nobody to sweep for; the loop ends with the store.
        let _ = inner.writer.lock().await.send(Job::Sweep);
    }
}

// Short-lived records (tickets, nonces, renewed `jti`s) are one-line delegations to the
// memory store: they never touch the file. A future `Store` method for short-lived
// records (QR tokens, push history) is the same one line; only a method that changes a
// long-lived record goes through `durably` with the keys it touches.
#[async_trait]
impl Store for DurableStore {
    async fn create_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let keys = [keys::session(&record.session_id)];
        self.durably(&keys, self.inner.memory.create_session(record), |_| true)
            .await
    }

    async fn session(&self, session_id: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.inner.memory.session(session_id).await
    }

    async fn revoke_session(&self, session_id: &str) -> Result<bool, StoreError> {
        // An expired record left in the file is the sweeper's.
        let keys = [keys::session(session_id)];
        let revoke = self.inner.memory.revoke_session(session_id);
        self.durably(&keys, revoke, |existed| *existed).await
    }

    async fn mint_ticket(&self, mint: &MintTicket<'_>) -> Result<MintOutcome, StoreError> {
        self.inner.memory.mint_ticket(mint).await
    }

    async fn admit_ticket(&self, admit: &AdmitTicket<'_>) -> Result<AdmitOutcome, StoreError> {
        self.inner.memory.admit_ticket(admit).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.memory.ping().await
    }

    async fn record_nonce(
        &self,
        scope: &str,
        nonce: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.inner.memory.record_nonce(scope, nonce, ttl).await
    }

    async fn rotate_refresh(&self, r: &RotateRefresh<'_>) -> Result<RotateOutcome, StoreError> {
        let keys = [keys::session(r.session_id), keys::reused(r.session_id)];
        let rotate = self.inner.memory.rotate_refresh(r);
        self.durably(&keys, rotate, |outcome| {
            matches!(outcome, RotateOutcome::Rotated(_) | RotateOutcome::Reused)
        })
        .await
    }

    async fn renew_access(&self, r: &RenewAccess<'_>) -> Result<RenewOutcome, StoreError> {
        // Answered on mint: not written (see the module's notes on the daily count).
        self.inner.memory.renew_access(r).await
    }

    async fn index_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let keys = [keys::user_sessions(&record.user_id)];
        let index = self.inner.memory.index_session(record);
        self.durably(&keys, index, |_| true).await
    }

    async fn unindex_session(&self, user_id: &str, session_id: &str) -> Result<(), StoreError> {
        let keys = [keys::user_sessions(user_id)];
        let unindex = self.inner.memory.unindex_session(user_id, session_id);
        self.durably(&keys, unindex, |_| true).await
    }

    async fn user_sessions(&self, user_id: &str) -> Result<Vec<UserSession>, StoreError> {
        self.inner.memory.user_sessions(user_id).await
    }

    // A QR login lives two minutes: in memory only. After a restart its poll answers
    // 410 and the PC shows a new QR; the session it made, if redeemed, is durable.
    async fn create_qr(&self, qr: &NewQr<'_>) -> Result<(), StoreError> {
        self.inner.memory.create_qr(qr).await
    }

    async fn scan_qr(&self, scan: &ScanQr<'_>) -> Result<ScanOutcome, StoreError> {
        self.inner.memory.scan_qr(scan).await
    }

    async fn confirm_qr(&self, confirm: &ConfirmQr<'_>) -> Result<ConfirmOutcome, StoreError> {
        self.inner.memory.confirm_qr(confirm).await
    }

    async fn poll_qr(&self, poll: &PollQr<'_>) -> Result<PollOutcome, StoreError> {
        self.inner.memory.poll_qr(poll).await
    }

    // The push history stays in memory: after a restart it is gone, its next append
    // starts a new epoch, and every `since` of before answers `recovered: false`
    // (PROTOCOL §10: the store lost it), never a recovery over a gap.
    async fn append_push(&self, push: &AppendPush<'_>) -> Result<String, StoreError> {
        self.inner.memory.append_push(push).await
    }

    async fn pushes_since(
        &self,
        user_id: &str,
        since: &str,
        session_id: &str,
    ) -> Result<PushReplay, StoreError> {
        self.inner
            .memory
            .pushes_since(user_id, since, session_id)
            .await
    }

    async fn set_blocked(&self, user_id: &str, blocked: bool) -> Result<(), StoreError> {
        let keys = [keys::blocked(user_id)];
        let set = self.inner.memory.set_blocked(user_id, blocked);
        self.durably(&keys, set, |_| true).await
    }

    async fn is_blocked(&self, user_id: &str) -> Result<bool, StoreError> {
        self.inner.memory.is_blocked(user_id).await
    }

    fn replay_floor(&self) -> Option<i64> {
        Some(self.inner.opened_at)
    }
}
