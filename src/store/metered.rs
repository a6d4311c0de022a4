//! A store decorator that meters every call: its round-trip time and its errors, by
//! operation, without touching the stores themselves. `Server::bind` wraps whichever
//! store it opened in it.
//!
//! Series (described here, registered at zero when the decorator is built, which is
//! after the process's recorder is installed):
//!
//! ```text
//! ticketgate_store_duration_seconds{operation}      histogram
//! ticketgate_store_errors_total{operation, kind}    counter, kind = unavailable | corrupt
//! ```
//!
//! It records through the `metrics` facade directly, not through `crate::metrics`: the
//! store sits below every other module of the crate and imports none of them.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use metrics::{Counter, Histogram};

use super::{
    AdmitOutcome, AdmitTicket, AppendPush, ConfirmOutcome, ConfirmQr, MintOutcome, MintTicket,
    NewQr, PollOutcome, PollQr, PushReplay, RenewAccess, RenewOutcome, RotateOutcome,
    RotateRefresh, ScanOutcome, ScanQr, SessionRecord, Store, StoreError, UserSession,
};

const SECONDS: &str = "ticketgate_store_duration_seconds";
const ERRORS: &str = "ticketgate_store_errors_total";

/// The store's operations, one per trait method, for the `operation` label.
#[derive(Debug, Clone, Copy)]
enum Op {
    CreateSession,
    Session,
    RevokeSession,
    MintTicket,
    AdmitTicket,
    Ping,
    RecordNonce,
    RotateRefresh,
    RenewAccess,
    IndexSession,
    UnindexSession,
    UserSessions,
    SetBlocked,
    IsBlocked,
    CreateQr,
    ScanQr,
    ConfirmQr,
    PollQr,
    AppendPush,
    PushesSince,
}

impl Op {
    const ALL: [Op; 20] = [
        Op::CreateSession,
        Op::Session,
        Op::RevokeSession,
        Op::MintTicket,
        Op::AdmitTicket,
        Op::Ping,
        Op::RecordNonce,
        Op::RotateRefresh,
        Op::RenewAccess,
        Op::IndexSession,
        Op::UnindexSession,
        Op::UserSessions,
        Op::SetBlocked,
        Op::IsBlocked,
        Op::CreateQr,
        Op::ScanQr,
        Op::ConfirmQr,
        Op::PollQr,
        Op::AppendPush,
        Op::PushesSince,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Op::CreateSession => "create_session",
            Op::Session => "session",
            Op::RevokeSession => "revoke_session",
            Op::MintTicket => "mint_ticket",
            Op::AdmitTicket => "admit_ticket",
            Op::Ping => "ping",
            Op::RecordNonce => "record_nonce",
            Op::RotateRefresh => "rotate_refresh",
            Op::RenewAccess => "renew_access",
            Op::IndexSession => "index_session",
            Op::UnindexSession => "unindex_session",
            Op::UserSessions => "user_sessions",
            Op::SetBlocked => "set_blocked",
            Op::IsBlocked => "is_blocked",
            Op::CreateQr => "create_qr",
            Op::ScanQr => "scan_qr",
            Op::ConfirmQr => "confirm_qr",
            Op::PollQr => "poll_qr",
            Op::AppendPush => "append_push",
            Op::PushesSince => "pushes_since",
        }
    }
}

/// The `kind` label of a store error.
fn kind(err: &StoreError) -> usize {
    match err {
        StoreError::Unavailable(_) => 0,
        StoreError::Corrupt(_) => 1,
    }
}

const KINDS: [&str; 2] = ["unavailable", "corrupt"];

/// One operation's handles, resolved once.
struct Meter {
    seconds: Histogram,
    errors: [Counter; KINDS.len()],
}

/// A [`Store`] that times every call to the store it wraps and counts its errors.
pub(crate) struct Metered {
    inner: Arc<dyn Store>,
    meters: Vec<Meter>,
}

impl Metered {
    /// `store`, metered. Call once the process's recorder is installed
    /// (`crate::metrics::handle`), or the handles record nowhere.
    pub(crate) fn wrap(store: Arc<dyn Store>) -> Arc<dyn Store> {
        metrics::describe_histogram!(
            SECONDS,
            metrics::Unit::Seconds,
            "Store round-trip time by operation (one command or script each)."
        );
        metrics::describe_counter!(
            ERRORS,
            "Store calls that failed, by operation and kind: unavailable (no answer in time), corrupt (an answer this code does not understand)."
        );
        let meters = Op::ALL
            .iter()
            .map(|op| Meter {
                seconds: metrics::histogram!(SECONDS, "operation" => op.as_str()),
                errors: KINDS.map(
                    |kind| metrics::counter!(ERRORS, "operation" => op.as_str(), "kind" => kind),
                ),
            })
            .collect();
        Arc::new(Metered {
            inner: store,
            meters,
        })
    }

    /// Runs `call`, recording its time and, if it fails, its error.
    async fn metered<T>(
        &self,
        op: Op,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        if let Some(meter) = self.meters.get(op as usize) {
            meter.seconds.record(started.elapsed());
            if let Err(err) = &result {
                meter.errors[kind(err)].increment(1);
            }
        }
        result
    }
}

#[async_trait]
impl Store for Metered {
    async fn create_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.metered(Op::CreateSession, self.inner.create_session(record))
            .await
    }

    async fn session(&self, session_id: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.metered(Op::Session, self.inner.session(session_id))
            .await
    }

    async fn revoke_session(&self, session_id: &str) -> Result<bool, StoreError> {
        self.metered(Op::RevokeSession, self.inner.revoke_session(session_id))
            .await
    }

    async fn mint_ticket(&self, mint: &MintTicket<'_>) -> Result<MintOutcome, StoreError> {
        self.metered(Op::MintTicket, self.inner.mint_ticket(mint))
            .await
    }

    async fn admit_ticket(&self, admit: &AdmitTicket<'_>) -> Result<AdmitOutcome, StoreError> {
        self.metered(Op::AdmitTicket, self.inner.admit_ticket(admit))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.metered(Op::Ping, self.inner.ping()).await
    }

    async fn record_nonce(
        &self,
        scope: &str,
        nonce: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.metered(Op::RecordNonce, self.inner.record_nonce(scope, nonce, ttl))
            .await
    }

    async fn rotate_refresh(
        &self,
        rotate: &RotateRefresh<'_>,
    ) -> Result<RotateOutcome, StoreError> {
        self.metered(Op::RotateRefresh, self.inner.rotate_refresh(rotate))
            .await
    }

    async fn renew_access(&self, renew: &RenewAccess<'_>) -> Result<RenewOutcome, StoreError> {
        self.metered(Op::RenewAccess, self.inner.renew_access(renew))
            .await
    }

    async fn index_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.metered(Op::IndexSession, self.inner.index_session(record))
            .await
    }

    async fn unindex_session(&self, user_id: &str, session_id: &str) -> Result<(), StoreError> {
        self.metered(
            Op::UnindexSession,
            self.inner.unindex_session(user_id, session_id),
        )
        .await
    }

    async fn user_sessions(&self, user_id: &str) -> Result<Vec<UserSession>, StoreError> {
        self.metered(Op::UserSessions, self.inner.user_sessions(user_id))
            .await
    }

    async fn set_blocked(&self, user_id: &str, blocked: bool) -> Result<(), StoreError> {
        self.metered(Op::SetBlocked, self.inner.set_blocked(user_id, blocked))
            .await
    }

    async fn is_blocked(&self, user_id: &str) -> Result<bool, StoreError> {
        self.metered(Op::IsBlocked, self.inner.is_blocked(user_id))
            .await
    }

    async fn create_qr(&self, qr: &NewQr<'_>) -> Result<(), StoreError> {
        self.metered(Op::CreateQr, self.inner.create_qr(qr)).await
    }

    async fn scan_qr(&self, scan: &ScanQr<'_>) -> Result<ScanOutcome, StoreError> {
        self.metered(Op::ScanQr, self.inner.scan_qr(scan)).await
    }

    async fn confirm_qr(&self, confirm: &ConfirmQr<'_>) -> Result<ConfirmOutcome, StoreError> {
        self.metered(Op::ConfirmQr, self.inner.confirm_qr(confirm))
            .await
    }

    async fn poll_qr(&self, poll: &PollQr<'_>) -> Result<PollOutcome, StoreError> {
        self.metered(Op::PollQr, self.inner.poll_qr(poll)).await
    }

    async fn append_push(&self, push: &AppendPush<'_>) -> Result<String, StoreError> {
        self.metered(Op::AppendPush, self.inner.append_push(push))
            .await
    }

    async fn pushes_since(
        &self,
        user_id: &str,
        since: &str,
        session_id: &str,
    ) -> Result<PushReplay, StoreError> {
        let read = self.inner.pushes_since(user_id, since, session_id);
        self.metered(Op::PushesSince, read).await
    }

    // Not a round trip, but part of the store's contract: a decorator that dropped it
    // would reopen replays across a restart of the durable store.
    fn replay_floor(&self) -> Option<i64> {
        self.inner.replay_floor()
    }
}
