//! QR-code login, both directions (protocol §5, §8): the use cases behind
//! `POST /v1/qr`, `/v1/qr/{qr_id}/scan`, `/confirm` and `/poll`.
//!
//! - `login_this`: a PC without a session creates a QR (declaring its device and
//!   client type), shows it and polls; a logged-in phone scans and confirms with its
//!   session; the PC's next poll redeems it: a new session of the phone's user for the
//!   PC's device, opened by the same path as a password login ([`Sessions::open`]).
//! - `login_other`: a logged-in PC creates a QR with its session; the first
//!   (unauthenticated) scan gives the new phone its own poll secret; the PC confirms
//!   with its session; the phone's next poll redeems it: a session of the PC's user
//!   for the phone's device.
//!
//! The state machine itself is the store's (`store/qr.rs`, one atomic step per
//! transition). This module makes the ids and secrets, checks who may do what
//! (approver alive and not blocked, at confirm and again at redemption), and counts.
//!
//! ```text
//! qr_id = <family: 22 chars>.<generation: 12 chars>    base64url, 128 + 72 random bits
//! poll_secret = 43 chars of base64url (256 random bits); the store keeps its SHA-256
//! ```

use std::net::IpAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use ticketgate_sdk::protocol::LoginResponse;
use ticketgate_sdk::ClientType;

use super::{SessionError, Sessions};
use crate::auth::random_b64;
use crate::auth::tokens::Claims;
use crate::clock::unix_now_ms;
use crate::store::{
    ConfirmOutcome, ConfirmQr, NewQr, PollOutcome, PollQr, QrContext, QrMode, QrScanner, QrSession,
    ScanOutcome, ScanQr,
};

/// Random bytes of a QR family (the record's id).
const FAMILY_BYTES: usize = 16;
/// Random bytes of a generation (the part rotation replaces).
const GENERATION_BYTES: usize = 9;
/// Random bytes of a poll secret.
const SECRET_BYTES: usize = 32;
/// Longest poll secret accepted (longer ones cannot be ours).
const MAX_SECRET_LEN: usize = 128;

/// A parsed `qr_id`: `<family>.<generation>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QrId {
    family: String,
    generation: String,
}

impl QrId {
    /// Parses a `qr_id`; `None` when it does not have the form the server issues.
    pub(crate) fn parse(s: &str) -> Option<QrId> {
        let (family, generation) = s.split_once('.')?;
        let b64 = |p: &str, len: usize| {
            p.len() == len
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        (b64(family, b64_len(FAMILY_BYTES)) && b64(generation, b64_len(GENERATION_BYTES))).then(
            || QrId {
                family: family.to_owned(),
                generation: generation.to_owned(),
            },
        )
    }

    fn new(family: &str, generation: &str) -> QrId {
        QrId {
            family: family.to_owned(),
            generation: generation.to_owned(),
        }
    }
}

impl std::fmt::Display for QrId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.family, self.generation)
    }
}

/// Length of unpadded base64 of `n` bytes.
const fn b64_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// A new QR login, as `POST /v1/qr` answers it.
#[derive(Debug)]
pub(crate) struct QrCreated {
    /// The id to show as a QR code.
    pub(crate) qr_id: String,
    /// The creator's poll secret (never shown in the QR).
    pub(crate) poll_secret: String,
    /// The direction.
    pub(crate) mode: QrMode,
    /// Seconds the QR lives.
    pub(crate) expires_in: u64,
    /// Seconds until an unscanned QR is replaced.
    pub(crate) rotate_in: u64,
}

/// The id that replaced a rotated one (the 410 answer's `next_qr_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NextQr {
    /// The current `qr_id`.
    pub(crate) qr_id: String,
    /// Seconds the QR still lives.
    pub(crate) expires_in: u64,
    /// Seconds until it is replaced again.
    pub(crate) rotate_in: u64,
}

/// What a scan answers.
#[derive(Debug)]
pub(crate) struct Scanned {
    /// Where the login goes: the requester's client type, IP and creation time.
    pub(crate) context: QrContext,
    /// `login_other`: the scanning phone's poll secret (it alone gets it).
    pub(crate) poll_secret: Option<String>,
}

/// What a poll answers.
#[derive(Debug)]
pub(crate) enum Polled {
    /// Nobody scanned yet.
    Pending,
    /// Scanned, waiting for the confirmation; the `login_other` creator also learns
    /// who scanned (for its approving screen).
    Scanned(Option<QrScanner>),
    /// Confirmed; the session goes to the other device (`login_other` creator).
    Confirmed,
    /// Confirmed and redeemed: this poller's new session.
    LoggedIn(Box<LoginResponse>),
}

/// Counts a QR event (`ticketgate_qr_total{event}`).
fn count(event: &'static str) {
    crate::metrics::hot().qr(event);
}

/// Lowercase hex SHA-256 of a poll secret: the store never holds the secret itself.
/// The secret has 256 random bits, so an unkeyed hash cannot be inverted.
fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The client types that can hold a QR-made session (API apps log in by secret).
fn check_client_type(client_type: ClientType) -> Result<(), SessionError> {
    if client_type == ClientType::Api {
        return Err(SessionError::QrRefused(
            "API sessions take no part in QR logins",
        ));
    }
    Ok(())
}

impl Sessions {
    /// `login_this`: a QR for a PC without a session, which will get a session for
    /// `device_id` and `client_type` once a phone approves.
    pub(crate) async fn create_qr_login_this(
        &self,
        device_id: &str,
        client_type: ClientType,
        ip: IpAddr,
    ) -> Result<QrCreated, SessionError> {
        check_client_type(client_type)?;
        self.create_qr(QrMode::LoginThis, device_id, client_type, None, ip)
            .await
    }

    /// `login_other`: a QR shown by a logged-in PC (its Bearer + signed request
    /// verified), so that a new phone logs in as the PC's user.
    pub(crate) async fn create_qr_login_other(
        &self,
        claims: &Claims,
        nonce: &str,
        ip: IpAddr,
    ) -> Result<QrCreated, SessionError> {
        check_client_type(claims.ctp)?;
        self.record_nonce(&claims.sid, nonce).await?;
        self.check_approver(&claims.sid, &claims.sub).await?;
        let approver = QrSession {
            session_id: &claims.sid,
            user_id: &claims.sub,
        };
        self.create_qr(
            QrMode::LoginOther,
            &claims.did,
            claims.ctp,
            Some(approver),
            ip,
        )
        .await
    }

    async fn create_qr(
        &self,
        mode: QrMode,
        owner_device: &str,
        owner_client_type: ClientType,
        approver: Option<QrSession<'_>>,
        ip: IpAddr,
    ) -> Result<QrCreated, SessionError> {
        let policy = &self.0.policy.qr;
        let id = QrId::new(&random_b64(FAMILY_BYTES), &random_b64(GENERATION_BYTES));
        let poll_secret = random_b64(SECRET_BYTES);
        let ip = ip.to_string();
        self.0
            .store
            .create_qr(&NewQr {
                family: &id.family,
                generation: &id.generation,
                mode,
                owner_hash: &secret_hash(&poll_secret),
                owner_device,
                owner_client_type,
                approver,
                ip: &ip,
                now_ms: unix_now_ms(),
                ttl: policy.ttl,
            })
            .await?;
        count("created");
        Ok(QrCreated {
            qr_id: id.to_string(),
            poll_secret,
            mode,
            expires_in: policy.ttl.as_secs().max(1),
            rotate_in: policy.rotate.as_secs().max(1),
        })
    }

    /// Scans a QR: with the phone's verified session (`login_this`; its nonce is
    /// recorded here), or unauthenticated (`login_other`: the phone gets a poll secret).
    pub(crate) async fn scan_qr(
        &self,
        id: &QrId,
        scanner: Option<(&Claims, &str)>,
        ip: IpAddr,
    ) -> Result<Scanned, SessionError> {
        if let Some((claims, nonce)) = scanner {
            check_client_type(claims.ctp)?;
            self.record_nonce(&claims.sid, nonce).await?;
            self.check_approver(&claims.sid, &claims.sub).await?;
        }
        let poll_secret = random_b64(SECRET_BYTES);
        let ip = ip.to_string();
        let outcome = self
            .0
            .store
            .scan_qr(&ScanQr {
                family: &id.family,
                generation: &id.generation,
                session: scanner.map(|(claims, _)| QrSession {
                    session_id: &claims.sid,
                    user_id: &claims.sub,
                }),
                secret_hash: &secret_hash(&poll_secret),
                ip: &ip,
                now_ms: unix_now_ms(),
                rotate_every: self.0.policy.qr.rotate,
            })
            .await?;
        match outcome {
            ScanOutcome::Scanned(context) => {
                count("scanned");
                let poll_secret = (context.mode == QrMode::LoginOther).then_some(poll_secret);
                Ok(Scanned {
                    context,
                    poll_secret,
                })
            }
            ScanOutcome::NeedsSession => {
                count("refused");
                Err(SessionError::QrNeedsSession)
            }
            ScanOutcome::Gone => {
                count("expired");
                Err(SessionError::QrExpired)
            }
        }
    }

    /// Confirms a scanned QR with the approver's verified session (its nonce is
    /// recorded here). A session that ended or whose user is blocked cannot confirm.
    pub(crate) async fn confirm_qr(
        &self,
        id: &QrId,
        claims: &Claims,
        nonce: &str,
    ) -> Result<(), SessionError> {
        self.record_nonce(&claims.sid, nonce).await?;
        self.check_approver(&claims.sid, &claims.sub).await?;
        let outcome = self
            .0
            .store
            .confirm_qr(&ConfirmQr {
                family: &id.family,
                generation: &id.generation,
                session_id: &claims.sid,
            })
            .await?;
        match outcome {
            ConfirmOutcome::Confirmed => {
                count("confirmed");
                tracing::info!(user_id = %claims.sub, session_id = %claims.sid, "QR login confirmed");
                Ok(())
            }
            ConfirmOutcome::Gone => {
                count("expired");
                Err(SessionError::QrExpired)
            }
        }
    }

    /// Polls a QR with its poll secret. Once confirmed, the redeeming poller's poll
    /// opens its session (exactly like a password login's) if the approver's session
    /// is still alive and its user not blocked.
    pub(crate) async fn poll_qr(
        &self,
        id: &QrId,
        poll_secret: &str,
        device_id: &str,
        client_type: ClientType,
    ) -> Result<Polled, SessionError> {
        check_client_type(client_type)?;
        if poll_secret.len() > MAX_SECRET_LEN {
            count("expired");
            return Err(SessionError::QrExpired);
        }
        let policy = &self.0.policy.qr;
        let now_ms = unix_now_ms();
        let next_generation = random_b64(GENERATION_BYTES);
        let outcome = self
            .0
            .store
            .poll_qr(&PollQr {
                family: &id.family,
                generation: &id.generation,
                secret_hash: &secret_hash(poll_secret),
                device_id,
                client_type,
                now_ms,
                interval: policy.poll_interval,
                rotate_every: policy.rotate,
                next_generation: &next_generation,
            })
            .await?;
        match outcome {
            PollOutcome::Gone => {
                count("expired");
                Err(SessionError::QrExpired)
            }
            PollOutcome::SlowDown(wait) => Err(SessionError::SlowDown(wait)),
            PollOutcome::Rotated {
                next_generation,
                expires_at_ms,
            } => {
                count("expired");
                let left = Duration::from_millis((expires_at_ms - now_ms).max(0) as u64);
                Err(SessionError::QrRotated {
                    next_qr_id: QrId::new(&id.family, &next_generation).to_string(),
                    expires_in: left.as_secs(),
                    rotate_in: policy.rotate.as_secs().max(1),
                })
            }
            PollOutcome::Pending => Ok(Polled::Pending),
            PollOutcome::Scanned(by) => Ok(Polled::Scanned(by)),
            PollOutcome::Confirmed => Ok(Polled::Confirmed),
            PollOutcome::Redeemed {
                user_id,
                approver_session_id,
            } => {
                // Approved, but the approver was kicked, logged out or blocked since.
                if self
                    .check_approver(&approver_session_id, &user_id)
                    .await
                    .is_err()
                {
                    count("refused");
                    return Err(SessionError::QrExpired);
                }
                let answer = self.open(&user_id, device_id, client_type).await?;
                tracing::info!(user_id = %user_id, session_id = %answer.session_id, "QR login redeemed");
                Ok(Polled::LoggedIn(Box::new(answer)))
            }
        }
    }

    /// The approving session must be alive and its user not blocked.
    async fn check_approver(&self, session_id: &str, user_id: &str) -> Result<(), SessionError> {
        let alive = self.0.store.session(session_id).await?.is_some();
        if !alive || self.is_blocked(user_id).await? {
            count("refused");
            return Err(SessionError::Revoked);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_ids_round_trip_and_odd_ones_are_refused() {
        let id = QrId::new(&random_b64(FAMILY_BYTES), &random_b64(GENERATION_BYTES));
        assert_eq!(QrId::parse(&id.to_string()), Some(id.clone()));
        for bad in [
            "",
            ".",
            "abc.def",
            &id.family,
            &format!("{}.{}.x", id.family, id.generation),
            &format!("{}.{}", id.family, "é".repeat(6)),
            &format!("{}/{}", id.family, id.generation),
        ] {
            assert_eq!(QrId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_store_sees_a_hash_not_the_secret() {
        let secret = random_b64(SECRET_BYTES);
        let hash = secret_hash(&secret);
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains(&secret));
        assert_eq!(hash, secret_hash(&secret));
    }
}
