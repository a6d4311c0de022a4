//! All server-side state: sessions, nonces, tickets, refresh rotation, user indexes,
//! QR logins ([`qr`]) and cross-node events.
//!
//! [`Store`] is the one interface; [`memory::MemoryStore`] (embedded, one node, all in
//! memory), [`durable::DurableStore`] (the embedded default: the memory store with its
//! long-lived records written through to a redb file) and [`redis::RedisStore`]
//! (through `fred`, standalone, Sentinel or Cluster) implement it with the same
//! semantics and pass the same test suite (`tests/store.rs`).
//!
//! Architecture invariant: only this module builds store keys ([`keys`]). Every key of
//! one session carries the hash tag `{<sid>}`, so every script touches one Cluster slot.

pub(crate) mod bus;
pub mod durable;
pub(crate) mod keys;
pub mod memory;
pub(crate) mod metered;
pub mod qr;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;
use ticketgate_sdk::ClientType;

pub use qr::{
    ConfirmOutcome, ConfirmQr, NewQr, PollOutcome, PollQr, QrContext, QrMode, QrScanner, QrSession,
    ScanOutcome, ScanQr,
};

/// What can go wrong talking to the store. Outcomes that are part of the protocol
/// (a replayed nonce, an unknown ticket) are not errors: they are variants of
/// [`MintOutcome`] and [`AdmitOutcome`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer (connection refused, timeout, failover in progress).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this code does not understand.
    #[error("store answered unexpectedly: {0}")]
    Corrupt(String),
}

/// A live session, as kept in the store for the lifetime of its refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Session id (`sid` claim); carries a version prefix.
    pub session_id: String,
    /// The user id: the username, or `app:<app_id>`.
    pub user_id: String,
    /// The device the session belongs to.
    pub device_id: String,
    /// The client type of the session.
    pub client_type: ClientType,
    /// Unix seconds of the login.
    pub created_at: i64,
    /// Unix seconds when the session (its refresh token) expires; the record's TTL.
    pub expires_at: i64,
    /// Lowercase hex SHA-256 of the current refresh token; never the raw token.
    pub refresh_hash: String,
}

/// What an admitted ticket grants: the identity that the connection takes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketGrant {
    /// The device the ticket is bound to.
    pub device_id: String,
    /// The user id of the session.
    pub user_id: String,
    /// The client type of the session.
    pub client_type: ClientType,
    /// Unix seconds when the access token that minted the ticket expires; the
    /// connection's deadline.
    pub access_expires_at: i64,
}

impl TicketGrant {
    /// The stored form: `device|ctp|exp|user`. The device comes first so the
    /// admission script can compare it with a prefix match; the user id comes last
    /// so it may hold any character.
    pub fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.device_id,
            self.client_type.as_str(),
            self.access_expires_at,
            self.user_id
        )
    }

    /// Parses [`TicketGrant::encode`]'s form.
    pub fn decode(s: &str) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt("ticket grant".into());
        let mut it = s.splitn(4, '|');
        let device_id = it.next().ok_or_else(corrupt)?.to_owned();
        let client_type = it.next().and_then(ClientType::parse).ok_or_else(corrupt)?;
        let access_expires_at = it.next().and_then(|e| e.parse().ok()).ok_or_else(corrupt)?;
        let user_id = it.next().ok_or_else(corrupt)?.to_owned();
        Ok(TicketGrant {
            device_id,
            user_id,
            client_type,
            access_expires_at,
        })
    }
}

/// One mint: record the nonce, check the session, store the ticket; atomically.
#[derive(Debug, Clone)]
pub struct MintTicket<'a> {
    /// The session minting.
    pub session_id: &'a str,
    /// The request's nonce; recorded for `nonce_ttl`.
    pub nonce: &'a str,
    /// How long the nonce is remembered (twice the allowed skew).
    pub nonce_ttl: Duration,
    /// The ticket's random id (the store key's last part).
    pub ticket_id: &'a str,
    /// What the ticket grants.
    pub grant: &'a TicketGrant,
    /// The ticket's lifetime.
    pub ticket_ttl: Duration,
}

/// The result of [`Store::mint_ticket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MintOutcome {
    /// The ticket is stored.
    Minted,
    /// The nonce was seen before for this session; nothing was stored.
    NonceReplayed,
    /// The session no longer exists (expired, logged out, kicked); nothing was stored.
    SessionGone,
}

/// One admission: consume the ticket, check device and session; atomically.
#[derive(Debug, Clone, Copy)]
pub struct AdmitTicket<'a> {
    /// The session named by the (MAC-verified) ticket.
    pub session_id: &'a str,
    /// The ticket's random id.
    pub ticket_id: &'a str,
    /// The device presenting the ticket.
    pub device_id: &'a str,
}

/// The result of [`Store::admit_ticket`]. In every case the ticket is gone afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmitOutcome {
    /// The ticket was live, bound to this device, and its session is alive.
    Admitted(TicketGrant),
    /// No such ticket: never minted, expired or already used.
    Unknown,
    /// The ticket was bound to another device; it is burnt all the same.
    DeviceMismatch,
    /// The ticket was valid but its session has ended since; it is burnt.
    SessionGone,
}

/// One refresh: check the presented refresh token, rotate it, count it; atomically.
#[derive(Debug, Clone, Copy)]
pub struct RotateRefresh<'a> {
    /// The session named by the refresh token.
    pub session_id: &'a str,
    /// The device of the signed request; must be the session's.
    pub device_id: &'a str,
    /// Keyed hash of the presented refresh token.
    pub presented_hash: &'a str,
    /// Keyed hash of the refresh token that replaces it.
    pub new_hash: &'a str,
    /// How long the immediate parent of the current token is still accepted (zero:
    /// never, the default).
    pub grace: Duration,
    /// Refreshes allowed per session per UTC day (rotations and `X-New-Token`s).
    pub cap_per_day: u32,
}

/// The result of [`Store::rotate_refresh`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The new hash is stored; the record is the session's.
    Rotated(SessionRecord),
    /// The token was not the current one (nor the parent within grace): theft. The
    /// session has been deleted by this call.
    Reused,
    /// The request's device is not the session's; nothing changed.
    DeviceMismatch,
    /// The daily refresh cap is reached; nothing changed.
    Limit,
    /// No such session (expired, revoked).
    SessionGone,
}

/// One sliding renewal (`X-New-Token`): at most once per access token, counted
/// against the daily cap; atomically.
#[derive(Debug, Clone, Copy)]
pub struct RenewAccess<'a> {
    /// The session.
    pub session_id: &'a str,
    /// The `jti` of the presented access token.
    pub jti: &'a str,
    /// How long to remember that this `jti` was renewed (its remaining life).
    pub jti_ttl: Duration,
    /// Refreshes allowed per session per UTC day.
    pub cap_per_day: u32,
}

/// The result of [`Store::renew_access`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewOutcome {
    /// Counted: issue a new access token.
    Renewed,
    /// This access token was renewed before.
    AlreadyRenewed,
    /// The daily cap is reached.
    Limit,
    /// No such session.
    SessionGone,
}

/// An entry of a user's session index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSession {
    /// The session id.
    pub session_id: String,
    /// Its client type.
    pub client_type: ClientType,
    /// Unix seconds of its login.
    pub created_at: i64,
}

/// The UTC day number of a unix time, for the daily refresh cap.
pub fn utc_day(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(86_400)
}

/// The entries of a user's session index that have not expired, oldest first.
pub(crate) fn live_index_entries(
    entries: impl IntoIterator<Item = (String, String)>,
    now: i64,
) -> Vec<UserSession> {
    let mut live: Vec<(i64, UserSession)> = entries
        .into_iter()
        .filter_map(|(sid, value)| {
            let mut parts = value.split('|');
            let client_type = ClientType::parse(parts.next()?)?;
            let created_ms: i64 = parts.next()?.parse().ok()?;
            let expires_at: i64 = parts.next()?.parse().ok()?;
            let session = UserSession {
                session_id: sid,
                client_type,
                created_at: created_ms.div_euclid(1000),
            };
            (expires_at > now).then_some((created_ms, session))
        })
        .collect();
    live.sort_by(|a, b| (a.0, &a.1.session_id).cmp(&(b.0, &b.1.session_id)));
    live.into_iter().map(|(_, session)| session).collect()
}

/// The index's ordering stamp of a session, in milliseconds: its login second, refined
/// to the current millisecond when it is being indexed within that second (the normal
/// case: right after login), so that logins within one second keep their order.
pub(crate) fn index_value(record: &SessionRecord) -> String {
    let now_ms = crate::clock::unix_now_ms();
    let created_ms = if now_ms.div_euclid(1000) == record.created_at {
        now_ms
    } else {
        record.created_at.saturating_mul(1000)
    };
    format!(
        "{}|{}|{}",
        record.client_type.as_str(),
        created_ms,
        record.expires_at
    )
}

/// All server-side state, behind one interface with two implementations.
///
/// Every method is one round trip to Redis (one command or one script).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates (or replaces) a session record, expiring at `record.expires_at`.
    async fn create_session(&self, record: &SessionRecord) -> Result<(), StoreError>;

    /// Reads a session record; `None` when it does not exist or expired.
    async fn session(&self, session_id: &str) -> Result<Option<SessionRecord>, StoreError>;

    /// Deletes a session. Returns whether it existed.
    async fn revoke_session(&self, session_id: &str) -> Result<bool, StoreError>;

    /// Records the nonce, checks the session and stores the ticket, atomically.
    async fn mint_ticket(&self, mint: &MintTicket<'_>) -> Result<MintOutcome, StoreError>;

    /// Consumes the ticket and checks device and session, atomically.
    async fn admit_ticket(&self, admit: &AdmitTicket<'_>) -> Result<AdmitOutcome, StoreError>;

    /// Answers when the store is reachable (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Records a signed request's nonce for `ttl` (set-if-absent). Returns false when
    /// it was seen before (a replay). `scope` is a session id, or `app:<app_id>` for
    /// app logins, so nonces of one session share its hash slot.
    async fn record_nonce(
        &self,
        scope: &str,
        nonce: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Checks and rotates a refresh token, counting it against the daily cap. A token
    /// that is not the current one revokes the session (reuse = theft).
    async fn rotate_refresh(&self, rotate: &RotateRefresh<'_>)
        -> Result<RotateOutcome, StoreError>;

    /// Counts a sliding renewal, once per access token `jti`.
    async fn renew_access(&self, renew: &RenewAccess<'_>) -> Result<RenewOutcome, StoreError>;

    /// Adds a session to its user's index (for kick and the one-session policy).
    async fn index_session(&self, record: &SessionRecord) -> Result<(), StoreError>;

    /// Removes a session from its user's index.
    async fn unindex_session(&self, user_id: &str, session_id: &str) -> Result<(), StoreError>;

    /// The user's indexed sessions that have not expired, oldest first. Revoked
    /// sessions may linger until unindexed; callers treat revoking them as a no-op.
    async fn user_sessions(&self, user_id: &str) -> Result<Vec<UserSession>, StoreError>;

    /// Sets or clears a user's blocked flag (deployment-wide).
    async fn set_blocked(&self, user_id: &str, blocked: bool) -> Result<(), StoreError>;

    /// Whether a user is blocked.
    async fn is_blocked(&self, user_id: &str) -> Result<bool, StoreError>;

    /// Stores a new QR login (state `pending`), expiring after `qr.ttl`. Replaces a
    /// record of the same family (families are 128 random bits: never in practice).
    async fn create_qr(&self, qr: &NewQr<'_>) -> Result<(), StoreError>;

    /// Scans a QR login, atomically: only the current, unrotated id of a `pending`
    /// QR is scanned (`pending` → `scanned`); the answer carries the requester's
    /// context. See [`ScanOutcome`].
    async fn scan_qr(&self, scan: &ScanQr<'_>) -> Result<ScanOutcome, StoreError>;

    /// Confirms a scanned QR login, atomically: `scanned` → `confirmed`, only by the
    /// approving session. Of concurrent confirms exactly one wins.
    async fn confirm_qr(&self, confirm: &ConfirmQr<'_>) -> Result<ConfirmOutcome, StoreError>;

    /// Polls a QR login, atomically: verifies the poll secret (by hash, in constant
    /// time) and the poller's device before anything else, then paces the poller,
    /// rotates a due QR, and redeems a confirmed one (the record is deleted: it
    /// answers [`PollOutcome::Redeemed`] once). See [`PollOutcome`].
    async fn poll_qr(&self, poll: &PollQr<'_>) -> Result<PollOutcome, StoreError>;

    /// The unix second up to which (inclusive) signed requests must be refused as
    /// stale, because this store cannot tell whether their nonces were used: the
    /// durable embedded store keeps sessions across a restart but nonces only in
    /// memory, so a request signed before it opened could be a replay of one the
    /// previous process answered. `None` (the default): nonces live as long as the
    /// sessions they protect.
    fn replay_floor(&self) -> Option<i64> {
        None
    }

    /// Appends a push to its user's history (PROTOCOL §10) and answers its id, newer
    /// than every id of that history. The history keeps the newest
    /// `limits.max_len` pushes and expires `limits.ttl` after this push; a history
    /// found missing starts a new epoch, so ids of the lost one are never matched.
    async fn append_push(&self, push: &AppendPush<'_>) -> Result<String, StoreError>;

    /// What a client that last saw push `since` missed: `recovered` when the user's
    /// history still holds every push after `since` (same epoch, nothing trimmed in
    /// between), and then those pushes of them that were published to the whole user
    /// or to `session_id`, oldest first; always the history's newest id.
    async fn pushes_since(
        &self,
        user_id: &str,
        since: &str,
        session_id: &str,
    ) -> Result<PushReplay, StoreError>;
}

/// How long and how deep a user's push history is kept (PROTOCOL §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Pushes kept per user, newest last; older ones are trimmed. Zero keeps none.
    pub max_len: u32,
    /// The history expires this long after its last push.
    pub ttl: Duration,
}

impl HistoryLimits {
    /// Whether history is kept at all (`0` for either bound turns it off).
    pub fn enabled(&self) -> bool {
        self.max_len > 0 && !self.ttl.is_zero()
    }
}

/// One push to append to its user's history.
#[derive(Debug, Clone, Copy)]
pub struct AppendPush<'a> {
    /// Whose history.
    pub user_id: &'a str,
    /// The session it is for, when it was published to one session only.
    pub session_id: Option<&'a str>,
    /// The push's topic.
    pub topic: &'a str,
    /// The push's payload, as JSON text.
    pub data: &'a str,
    /// The history's bounds (must be [`HistoryLimits::enabled`]).
    pub limits: HistoryLimits,
}

/// A push as kept in a user's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPush {
    /// Its id ([`PushId`]'s text form).
    pub id: String,
    /// The session it was published to, or `None` for every session of the user.
    pub session_id: Option<String>,
    /// Its topic.
    pub topic: String,
    /// Its payload, as JSON text.
    pub data: String,
}

/// What [`Store::pushes_since`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushReplay {
    /// Whether the history still holds every push after `since` (then `pushes` is
    /// exactly those of them that are for this session, oldest first).
    pub recovered: bool,
    /// The newest id of the user's history, if it has any.
    pub last_id: Option<String>,
    /// The pushes to replay (empty unless `recovered`).
    pub pushes: Vec<StoredPush>,
}

/// A push id: `<epoch>:<seq>`. Opaque to clients; here it tells the order of two
/// pushes and whether pushes were lost in between.
///
/// The epoch is a random word stored with the history and made anew whenever the
/// history is found missing (expired, never written, or lost by a store that restarted
/// or failed over without it), so an id of a lost history never matches the current
/// one, and a client is never told "recovered" over a gap. The sequence counts the
/// user's pushes within an epoch from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushId {
    /// The history's epoch.
    pub epoch: String,
    /// The push's place in it, from 1.
    pub seq: u64,
}

/// The longest push id (PROTOCOL §10).
pub const MAX_PUSH_ID: usize = 64;

impl PushId {
    /// Reads an id of this server's form; `None` for anything else (an id from
    /// elsewhere simply does not match any history).
    pub fn parse(id: &str) -> Option<PushId> {
        let (epoch, seq) = id.split_once(':')?;
        let plain = |c: char| c.is_ascii_alphanumeric();
        if epoch.is_empty() || !epoch.chars().all(plain) || id.len() > MAX_PUSH_ID {
            return None;
        }
        let seq: u64 = seq.parse().ok().filter(|s| *s > 0)?;
        // Lua numbers are doubles: above 2^53 the Redis script could not count.
        (seq < 1 << 53).then(|| PushId {
            epoch: epoch.to_owned(),
            seq,
        })
    }

    /// Whether `text` is a well-formed push id as clients may present it: 1 to 64
    /// characters of `[A-Za-z0-9_.:-]` (PROTOCOL §10). Any such text is accepted as
    /// `since`; one this server did not make only means "not recovered".
    pub fn is_well_formed(text: &str) -> bool {
        !text.is_empty()
            && text.len() <= MAX_PUSH_ID
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    }

    /// A fresh random epoch (10 alphanumeric characters).
    pub(crate) fn new_epoch() -> String {
        use rand::{distributions::Alphanumeric, Rng};
        rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(10)
            .map(char::from)
            .collect()
    }

    /// Whether this id is at or before `other` in the same history (a push that a
    /// replay up to `self` already covered). Ids of another epoch are never covered.
    pub fn covers(&self, other: &PushId) -> bool {
        self.epoch == other.epoch && other.seq <= self.seq
    }
}

impl std::fmt::Display for PushId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::PushId;

    #[test]
    fn push_ids_are_read_only_in_this_servers_form() {
        let id = PushId::parse("Ab3:17").expect("ours");
        assert_eq!((id.epoch.as_str(), id.seq), ("Ab3", 17));
        assert_eq!(id.to_string(), "Ab3:17");
        for foreign in [
            "",
            "x",
            ":1",
            "a:",
            "a:0",
            "a:-1",
            "a.b:1",
            "a:1:2",
            "a:9007199254740992",
        ] {
            assert_eq!(PushId::parse(foreign), None, "{foreign:?}");
        }
        let newer = PushId::parse("Ab3:18").expect("ours");
        assert!(newer.covers(&id) && !id.covers(&newer));
        assert!(
            !PushId::parse("Zz9:99").expect("ours").covers(&id),
            "another epoch"
        );
    }

    #[test]
    fn since_is_well_formed_by_the_protocols_alphabet() {
        for ok in ["a", "Ab3:17", "x.y_z-1:2", &"x".repeat(64)] {
            assert!(PushId::is_well_formed(ok), "{ok:?}");
        }
        for bad in ["", "a b", "a/b", "é", "a%3A1", &"x".repeat(65)] {
            assert!(!PushId::is_well_formed(bad), "{bad:?}");
        }
    }
}
