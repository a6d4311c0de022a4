//! QR-code logins in the store: the record of one QR login, the inputs and outcomes of
//! its four transitions (create, scan, confirm, poll), and the transitions themselves
//! as the embedded store runs them. `scripts/qr_*.lua` are the same transitions on
//! Redis, one script each; `tests/store.rs` holds both to one contract.
//!
//! ```text
//!          create               scan                    confirm                poll (redeemer)
//! (none) ────────► pending ──────────────► scanned ──────────────► confirmed ──────────────► (deleted)
//!                   │  ▲ poll (owner), rotation due: new id, same record
//!                   └──┘
//! ```
//!
//! One QR login is one record under one key (`tg:{qr:<family>}:qr`), so every
//! transition touches one Cluster slot. The id shown in the QR code is
//! `<family>.<generation>`: rotation replaces the generation and keeps the family
//! (and so the record and the poll secret). Only hashes of poll secrets are stored.
//!
//! Who is who:
//! - the **owner** created the QR and holds the first poll secret. In `login_this`
//!   it is the PC that wants a session (it redeems); in `login_other` it is the
//!   logged-in PC, which only watches (state, rotation) and confirms.
//! - the **approver** is the session whose user the new session belongs to: the
//!   scanning phone's session in `login_this`, the PC's session in `login_other`.
//!   Only the approver confirms.
//! - the **scanner** of a `login_other` QR is the new phone; the first scan gives it
//!   the second poll secret, and it redeems.

use std::time::Duration;

use subtle::ConstantTimeEq;
use ticketgate_sdk::ClientType;

/// The two directions of a QR login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QrMode {
    /// A PC without a session shows the QR; a logged-in phone approves; the PC gets
    /// a session of the phone's user.
    LoginThis,
    /// A logged-in PC shows the QR; a new phone scans it; the PC approves; the phone
    /// gets a session of the PC's user.
    LoginOther,
}

impl QrMode {
    /// The wire spelling: `login_this` or `login_other`.
    pub fn as_str(self) -> &'static str {
        match self {
            QrMode::LoginThis => "login_this",
            QrMode::LoginOther => "login_other",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<QrMode> {
        match s {
            "login_this" => Some(QrMode::LoginThis),
            "login_other" => Some(QrMode::LoginOther),
            _ => None,
        }
    }
}

/// A new QR login ([`Store::create_qr`](super::Store::create_qr)).
#[derive(Debug, Clone)]
pub struct NewQr<'a> {
    /// The record's random id (the first part of every `qr_id` of it).
    pub family: &'a str,
    /// The first generation (the second part of the `qr_id`).
    pub generation: &'a str,
    /// The direction.
    pub mode: QrMode,
    /// Lowercase hex SHA-256 of the owner's poll secret.
    pub owner_hash: &'a str,
    /// The owner's device: in `login_this` the device that will get the session.
    pub owner_device: &'a str,
    /// The owner's client type (shown to the scanner).
    pub owner_client_type: ClientType,
    /// `login_other`: the PC's session, the approver. `None` for `login_this`.
    pub approver: Option<QrSession<'a>>,
    /// The owner's IP address (shown to the scanner).
    pub ip: &'a str,
    /// Unix milliseconds now.
    pub now_ms: i64,
    /// How long the record lives, rotations included.
    pub ttl: Duration,
}

/// A session taking part in a QR login.
#[derive(Debug, Clone, Copy)]
pub struct QrSession<'a> {
    /// The session id.
    pub session_id: &'a str,
    /// Its user.
    pub user_id: &'a str,
}

/// A scan ([`Store::scan_qr`](super::Store::scan_qr)).
#[derive(Debug, Clone)]
pub struct ScanQr<'a> {
    /// The family of the scanned id.
    pub family: &'a str,
    /// The generation of the scanned id.
    pub generation: &'a str,
    /// The scanning phone's session, when the scan is Bearer + signed. A
    /// `login_this` QR needs one (it becomes the approver).
    pub session: Option<QrSession<'a>>,
    /// Hash of a fresh poll secret: for a `login_other` QR it becomes the scanner's.
    pub secret_hash: &'a str,
    /// The scanner's IP address (shown to a `login_other` QR's creator, who approves).
    pub ip: &'a str,
    /// Unix milliseconds now.
    pub now_ms: i64,
    /// How long a generation of an unscanned QR stays valid.
    pub rotate_every: Duration,
}

/// What a scanning phone is shown, so that its user sees where the login goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrContext {
    /// The QR's direction.
    pub mode: QrMode,
    /// The requester's (the QR creator's) client type.
    pub client_type: ClientType,
    /// The requester's IP address.
    pub ip: String,
    /// Unix seconds of the QR's creation.
    pub created_at: i64,
}

/// The result of [`Store::scan_qr`](super::Store::scan_qr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanOutcome {
    /// The QR is now `scanned`; for `login_other` the scan's secret hash is the
    /// scanner's from now on.
    Scanned(QrContext),
    /// A `login_this` QR scanned without a session; nothing changed.
    NeedsSession,
    /// Unknown, expired, rotated (or due for rotation), or already scanned.
    Gone,
}

/// A confirmation ([`Store::confirm_qr`](super::Store::confirm_qr)).
#[derive(Debug, Clone, Copy)]
pub struct ConfirmQr<'a> {
    /// The family of the confirmed id.
    pub family: &'a str,
    /// The generation of the confirmed id.
    pub generation: &'a str,
    /// The confirming session; must be the approver.
    pub session_id: &'a str,
}

/// The result of [`Store::confirm_qr`](super::Store::confirm_qr).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfirmOutcome {
    /// The QR is now `confirmed`.
    Confirmed,
    /// Unknown, expired, not scanned, already confirmed, or another session.
    Gone,
}

/// A poll ([`Store::poll_qr`](super::Store::poll_qr)).
#[derive(Debug, Clone)]
pub struct PollQr<'a> {
    /// The family of the polled id.
    pub family: &'a str,
    /// The generation of the polled id.
    pub generation: &'a str,
    /// Hash of the presented poll secret.
    pub secret_hash: &'a str,
    /// The poller's device.
    pub device_id: &'a str,
    /// The poller's client type.
    pub client_type: ClientType,
    /// Unix milliseconds now.
    pub now_ms: i64,
    /// Shortest time between two polls of one poller.
    pub interval: Duration,
    /// How long a generation of an unscanned QR stays valid.
    pub rotate_every: Duration,
    /// The generation that replaces the current one if it is due for rotation.
    pub next_generation: &'a str,
}

/// The result of [`Store::poll_qr`](super::Store::poll_qr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    /// Unknown or expired QR, wrong secret, or wrong device or client type: the same
    /// outcome for all, so a guesser learns nothing.
    Gone,
    /// Polled again sooner than `interval`: retry after this long. Nothing changed.
    SlowDown(Duration),
    /// The polled id is no longer the QR's: show `next_generation` instead.
    Rotated {
        /// The current generation.
        next_generation: String,
        /// Unix milliseconds when the record expires.
        expires_at_ms: i64,
    },
    /// Nobody scanned yet.
    Pending,
    /// Scanned, not yet confirmed. The `login_other` creator, who approves, also
    /// learns who scanned; nobody else does (a `login_this` PC could be an attacker
    /// relaying the QR: it must not learn the approving phone's address).
    Scanned(Option<QrScanner>),
    /// Confirmed; this poller does not redeem (the `login_other` owner).
    Confirmed,
    /// Confirmed and redeemed by this poll: the record is gone. Open a session of
    /// `user_id` for the poller, if the approver's session is still alive.
    Redeemed {
        /// The user the new session belongs to.
        user_id: String,
        /// The approving session.
        approver_session_id: String,
    },
}

/// Who scanned a `login_other` QR, for its creator's approving screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrScanner {
    /// The scanner's IP address.
    pub ip: String,
    /// Unix seconds of the scan.
    pub scanned_at: i64,
}

/// A QR login's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QrState {
    Pending,
    Scanned,
    Confirmed,
}

/// One QR login, as the embedded store keeps it (the fields of the Redis hash).
#[derive(Debug, Clone)]
pub(crate) struct QrRecord {
    mode: QrMode,
    generation: String,
    state: QrState,
    owner_hash: String,
    owner_device: String,
    owner_client_type: ClientType,
    approver_session: String,
    approver_user: String,
    ip: String,
    created_ms: i64,
    expires_ms: i64,
    rotated_ms: i64,
    owner_poll_ms: i64,
    scanner_hash: String,
    scanner_ip: String,
    scanned_ms: i64,
    scanner_device: String,
    scanner_client_type: Option<ClientType>,
    scanner_poll_ms: i64,
}

/// Whether a poll should delete the record (it was redeemed).
pub(crate) type Delete = bool;

impl QrRecord {
    /// The record [`NewQr`] describes.
    pub(crate) fn new(qr: &NewQr<'_>) -> QrRecord {
        QrRecord {
            mode: qr.mode,
            generation: qr.generation.to_owned(),
            state: QrState::Pending,
            owner_hash: qr.owner_hash.to_owned(),
            owner_device: qr.owner_device.to_owned(),
            owner_client_type: qr.owner_client_type,
            approver_session: qr.approver.map_or("", |a| a.session_id).to_owned(),
            approver_user: qr.approver.map_or("", |a| a.user_id).to_owned(),
            ip: qr.ip.to_owned(),
            created_ms: qr.now_ms,
            expires_ms: qr.now_ms.saturating_add(millis(qr.ttl)),
            rotated_ms: qr.now_ms,
            owner_poll_ms: 0,
            scanner_hash: String::new(),
            scanner_ip: String::new(),
            scanned_ms: 0,
            scanner_device: String::new(),
            scanner_client_type: None,
            scanner_poll_ms: 0,
        }
    }

    /// `scripts/qr_scan.lua`.
    pub(crate) fn scan(&mut self, scan: &ScanQr<'_>) -> ScanOutcome {
        let due = scan.now_ms >= self.rotated_ms.saturating_add(millis(scan.rotate_every));
        if self.generation != scan.generation || self.state != QrState::Pending || due {
            return ScanOutcome::Gone;
        }
        match (self.mode, scan.session) {
            (QrMode::LoginThis, None) => return ScanOutcome::NeedsSession,
            (QrMode::LoginThis, Some(session)) => {
                self.approver_session = session.session_id.to_owned();
                self.approver_user = session.user_id.to_owned();
            }
            (QrMode::LoginOther, _) => {
                self.scanner_hash = scan.secret_hash.to_owned();
                self.scanner_ip = scan.ip.to_owned();
                self.scanned_ms = scan.now_ms;
            }
        }
        self.state = QrState::Scanned;
        ScanOutcome::Scanned(QrContext {
            mode: self.mode,
            client_type: self.owner_client_type,
            ip: self.ip.clone(),
            created_at: self.created_ms.div_euclid(1000),
        })
    }

    /// `scripts/qr_confirm.lua`.
    pub(crate) fn confirm(&mut self, confirm: &ConfirmQr<'_>) -> ConfirmOutcome {
        if self.generation != confirm.generation
            || self.state != QrState::Scanned
            || self.approver_session.is_empty()
            || self.approver_session != confirm.session_id
        {
            return ConfirmOutcome::Gone;
        }
        self.state = QrState::Confirmed;
        ConfirmOutcome::Confirmed
    }

    /// `scripts/qr_poll.lua`.
    pub(crate) fn poll(&mut self, poll: &PollQr<'_>) -> (PollOutcome, Delete) {
        let owner = hashes_equal(&self.owner_hash, poll.secret_hash);
        let scanner =
            !self.scanner_hash.is_empty() && hashes_equal(&self.scanner_hash, poll.secret_hash);
        if owner {
            if self.owner_device != poll.device_id || self.owner_client_type != poll.client_type {
                return (PollOutcome::Gone, false);
            }
        } else if scanner {
            if self.scanner_device.is_empty() {
                // The scanner's first poll binds its device (only it holds the secret).
                self.scanner_device = poll.device_id.to_owned();
                self.scanner_client_type = Some(poll.client_type);
            } else if self.scanner_device != poll.device_id
                || self.scanner_client_type != Some(poll.client_type)
            {
                return (PollOutcome::Gone, false);
            }
        } else {
            return (PollOutcome::Gone, false);
        }

        let last = if owner {
            self.owner_poll_ms
        } else {
            self.scanner_poll_ms
        };
        let interval = millis(poll.interval);
        if last > 0 && poll.now_ms - last < interval {
            let wait = interval - (poll.now_ms - last).max(0);
            return (
                PollOutcome::SlowDown(Duration::from_millis(wait.max(1) as u64)),
                false,
            );
        }
        if owner {
            self.owner_poll_ms = poll.now_ms;
        } else {
            self.scanner_poll_ms = poll.now_ms;
        }

        if self.generation != poll.generation {
            return (self.rotated(), false);
        }
        match self.state {
            QrState::Pending => {
                if poll.now_ms >= self.rotated_ms.saturating_add(millis(poll.rotate_every)) {
                    self.generation = poll.next_generation.to_owned();
                    self.rotated_ms = poll.now_ms;
                    return (self.rotated(), false);
                }
                (PollOutcome::Pending, false)
            }
            QrState::Scanned => {
                let by = (self.mode == QrMode::LoginOther && owner).then(|| QrScanner {
                    ip: self.scanner_ip.clone(),
                    scanned_at: self.scanned_ms.div_euclid(1000),
                });
                (PollOutcome::Scanned(by), false)
            }
            QrState::Confirmed => {
                let redeemer = match self.mode {
                    QrMode::LoginThis => owner,
                    QrMode::LoginOther => scanner,
                };
                if !redeemer {
                    return (PollOutcome::Confirmed, false);
                }
                let redeemed = PollOutcome::Redeemed {
                    user_id: self.approver_user.clone(),
                    approver_session_id: self.approver_session.clone(),
                };
                (redeemed, true)
            }
        }
    }

    fn rotated(&self) -> PollOutcome {
        PollOutcome::Rotated {
            next_generation: self.generation.clone(),
            expires_at_ms: self.expires_ms,
        }
    }
}

/// Compares two secret hashes in constant time (the Lua scripts do the same).
fn hashes_equal(stored: &str, presented: &str) -> bool {
    stored.len() == presented.len() && bool::from(stored.as_bytes().ct_eq(presented.as_bytes()))
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
