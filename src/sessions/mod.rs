//! The sessions service: the use cases of the session layer, between the HTTP edge and
//! the rooms below it (`auth` for formats and cryptography, `store` for state, `hub`
//! for every node's sockets).
//!
//! - login (password, or an API app after its signature verified) opens a session
//!   under the one-session-per-type policy;
//! - refresh rotates a refresh token (reuse revokes the family);
//! - tickets and resume tickets are minted here, and access tokens renewed (sliding);
//! - sessions end here (logout, kick, block, replacement), on every node;
//! - QR-code logins, both directions ([`qr`]), open sessions through the same path.
//!
//! Every operation returns [`SessionError`]; `http/error.rs` maps it to the protocol
//! once. The service holds only what it needs ([`Sessions::new`]), not the node's state.

mod error;
pub(crate) mod qr;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use ticketgate_sdk::protocol::{close, LoginResponse, ServerFrame};
use ticketgate_sdk::ClientType;

use crate::auth::apps::Apps;
use crate::auth::random_b64;
use crate::auth::refresh::{new_refresh_token, new_session_id, refresh_hash};
use crate::auth::secrets::Secrets;
use crate::auth::ticket::TicketCodec;
use crate::auth::tokens::{Claims, KeyStore, AUDIENCE, ISSUER};
use crate::auth::users::{PasswordCheck, Users};
use crate::clock::{unix_now, unix_now_ms};
use crate::config::Config;
use crate::hub::{Hub, Op};
use crate::store::{
    MintOutcome, MintTicket, RenewAccess, RenewOutcome, RotateOutcome, RotateRefresh,
    SessionRecord, Store, TicketGrant,
};

pub use error::SessionError;

/// The lifetimes and rules sessions follow, taken from the configuration once.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Access token lifetime.
    pub(crate) access_ttl: Duration,
    /// Refresh lifetimes by client type: web, mobile, api.
    pub(crate) refresh_ttl: [Duration; 3],
    /// Ticket lifetime.
    pub(crate) ticket_ttl: Duration,
    /// How long a nonce is remembered (twice the allowed clock skew).
    pub(crate) nonce_ttl: Duration,
    /// How long the previous refresh token still answers after a rotation.
    pub(crate) refresh_grace: Duration,
    /// Refreshes and renewals per session and day.
    pub(crate) refresh_cap_per_day: u32,
    /// Live sessions a user keeps per client type (web, mobile).
    pub(crate) sessions_per_type: usize,
    /// Live sessions an API app may hold.
    pub(crate) sessions_per_app: usize,
    /// QR-code login timings.
    pub(crate) qr: crate::config::QrConfig,
    /// How long a draining socket waits for its turn to get a resume ticket
    /// ([`RESUME_IN_FLIGHT`]): half the shutdown grace, so that the resume frame and the
    /// close still fit in it.
    pub(crate) resume_wait: Duration,
}

impl Policy {
    /// The policy of a configuration.
    pub(crate) fn from_config(config: &Config) -> Policy {
        Policy {
            access_ttl: config.ttl.access,
            refresh_ttl: [
                config.refresh_ttl(ClientType::Web),
                config.refresh_ttl(ClientType::Mobile),
                config.refresh_ttl(ClientType::Api),
            ],
            ticket_ttl: config.ttl.ticket,
            nonce_ttl: config.ttl.skew * 2,
            refresh_grace: config.refresh_grace,
            refresh_cap_per_day: config.refresh_cap_per_day,
            sessions_per_type: config.sessions_per_type,
            sessions_per_app: config.max_sessions_per_app,
            qr: config.qr.clone(),
            resume_wait: config.shutdown_grace / 2,
        }
    }

    fn refresh_ttl(&self, client_type: ClientType) -> Duration {
        match client_type {
            ClientType::Web => self.refresh_ttl[0],
            ClientType::Mobile => self.refresh_ttl[1],
            ClientType::Api => self.refresh_ttl[2],
        }
    }
}

/// A refreshed session: the login-shaped answer and the session's client type (the
/// refresh cookie is for web only).
pub(crate) struct Refreshed {
    /// New access and refresh tokens.
    pub(crate) answer: LoginResponse,
    /// The session's client type.
    pub(crate) client_type: ClientType,
}

/// A minted ticket.
pub(crate) struct Minted {
    /// The ticket, as the client presents it.
    pub(crate) ticket: String,
    /// Seconds it stays valid.
    pub(crate) expires_in: u64,
}

/// What a ticket admits: the session, user and device a socket will belong to.
#[derive(Debug, Clone)]
pub(crate) struct TicketFor<'a> {
    /// The session.
    pub(crate) session_id: &'a str,
    /// The user.
    pub(crate) user_id: &'a str,
    /// The device the ticket is bound to.
    pub(crate) device_id: &'a str,
    /// The session's client type.
    pub(crate) client_type: ClientType,
    /// Unix seconds: the access token's `exp` (the socket closes with 4004 then).
    pub(crate) access_expires_at: i64,
}

/// Sockets and sessions an ending touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// Sessions that still existed.
    pub sessions: usize,
    /// Sockets closed on every node.
    pub sockets: u64,
}

/// The sessions service of a node; cheap to clone.
#[derive(Clone)]
pub struct Sessions(Arc<Parts>);

/// What the sessions service works with: the node's store and hub, its keys and
/// secrets, the credential files, and the policy.
pub(crate) struct Parts {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) keys: KeyStore,
    pub(crate) secrets: Secrets,
    pub(crate) tickets: TicketCodec,
    pub(crate) users: Users,
    pub(crate) apps: Apps,
    pub(crate) policy: Policy,
    /// Held by an API login from its count of the app's sessions to its ranking: on
    /// one node, two logins of an app never interleave there, so the cap holds even
    /// when their index stamps tie (see `enforce_app_session_cap`).
    pub(crate) app_logins: tokio::sync::Mutex<()>,
    /// Resume tickets being issued at once: [`RESUME_IN_FLIGHT`] permits.
    pub(crate) resume_gate: tokio::sync::Semaphore,
}

/// Resume tickets a node issues at once. A drain asks for one per socket at the same
/// instant; with 14,000 sockets all at once, the store commands queued in the Redis
/// client longer than its command timeout (1 s, queueing included) and about half of
/// the sockets got no resume ticket, so their clients minted (measured by
/// `flood scale`: 7,610 of 14,285). A few hundred in flight keep Redis as busy as it
/// can be while each command waits little.
pub(crate) const RESUME_IN_FLIGHT: usize = 256;

/// Runs `work` once one of `gate`'s permits is free, waiting at most `wait` for it and
/// giving `work` at most `limit`; `None` when either runs out or `work` fails.
async fn gated<T, E>(
    gate: &tokio::sync::Semaphore,
    wait: Duration,
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Option<T> {
    let _permit = tokio::time::timeout(wait, gate.acquire())
        .await
        .ok()?
        .ok()?;
    tokio::time::timeout(limit, work).await.ok()?.ok()
}

impl Sessions {
    /// The service over its parts.
    pub(crate) fn new(parts: Parts) -> Sessions {
        Sessions(Arc::new(parts))
    }

    /// Logs a user in with a password: a session of `client_type` for `device_id`.
    /// Unknown users, wrong passwords and blocked users all answer `BadCredentials`.
    pub(crate) async fn login(
        &self,
        username: &str,
        password: String,
        device_id: &str,
        client_type: ClientType,
    ) -> Result<LoginResponse, SessionError> {
        let verdict = self.0.users.verify(username, password).await?;
        if verdict != PasswordCheck::Ok || self.0.store.is_blocked(username).await? {
            return Err(SessionError::BadCredentials);
        }
        self.open(username, device_id, client_type).await
    }

    /// The secret of an API app, `None` for an unknown app.
    pub(crate) fn app_secret(&self, app_id: &str) -> Option<Vec<u8>> {
        self.0.apps.secret(app_id)
    }

    /// Logs an API app in, after its request signature verified with the app's secret:
    /// an `api` session of user `app:<app_id>`.
    pub(crate) async fn app_login(
        &self,
        app_id: &str,
        device_id: &str,
    ) -> Result<LoginResponse, SessionError> {
        let user_id = app_user(app_id);
        if self.is_blocked(&user_id).await? {
            return Err(SessionError::BadCredentials);
        }
        // API logins are rare (no password check) and short: one at a time per node.
        let _one_at_a_time = self.0.app_logins.lock().await;
        // Cheap refusal of a login flood: nothing is created past the cap. Logins of
        // two nodes racing for the last place both pass here; `enforce_app_session_cap`
        // settles them once they are indexed.
        let live = self.0.store.user_sessions(&user_id).await?.len();
        if live >= self.0.policy.sessions_per_app {
            return Err(SessionError::TooManySessions);
        }
        self.open(&user_id, device_id, ClientType::Api).await
    }

    /// Opens a session: stores and indexes it, enforces the one-session-per-type
    /// policy and answers the login body (the signing key is derived, never stored).
    async fn open(
        &self,
        user_id: &str,
        device_id: &str,
        client_type: ClientType,
    ) -> Result<LoginResponse, SessionError> {
        let store = &self.0.store;
        let session_id = new_session_id();
        let refresh_token = new_refresh_token(&session_id);
        let now = unix_now();
        let refresh_ttl = self.0.policy.refresh_ttl(client_type).as_secs();
        let record = SessionRecord {
            session_id: session_id.clone(),
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            client_type,
            created_at: now,
            expires_at: now + refresh_ttl as i64,
            refresh_hash: refresh_hash(self.0.secrets.refresh_key(), &refresh_token),
        };
        store.create_session(&record).await?;
        store.index_session(&record).await?;
        // An admin block sets its flag before it lists the user's sessions to kick: a
        // session indexed after that listing is caught here instead.
        if store.is_blocked(user_id).await? {
            self.end(user_id, vec![session_id], close::REVOKED, None)
                .await?;
            return Err(SessionError::BadCredentials);
        }
        self.enforce_one_session_policy(&record).await?;
        self.enforce_app_session_cap(&record).await?;
        let (access_token, claims) = self.issue_access(&(&record).into())?;
        tracing::info!(session_id = %session_id, user_id = %user_id, client_type = client_type.as_str(), "session opened");
        Ok(LoginResponse {
            access_token,
            refresh_token: Some(refresh_token),
            signing_key: self.signing_key_b64(&session_id),
            session_id,
            access_expires_in: (claims.exp - now).max(0) as u64,
            refresh_expires_in: refresh_ttl,
        })
    }

    /// After a web or mobile login: keeps the newest `sessions_per_type` sessions of
    /// that (user, client type) and replaces the rest (4509). The new session is ranked
    /// with the others, so two logins racing each other never end both: the newer one
    /// stays. API sessions are never replaced.
    async fn enforce_one_session_policy(&self, record: &SessionRecord) -> Result<(), SessionError> {
        if record.client_type == ClientType::Api {
            return Ok(());
        }
        let same_type: Vec<String> = self
            .0
            .store
            .user_sessions(&record.user_id)
            .await?
            .into_iter()
            .filter(|s| s.client_type == record.client_type)
            .map(|s| s.session_id)
            .collect();
        let excess = same_type
            .len()
            .saturating_sub(self.0.policy.sessions_per_type);
        // Oldest first: the excess are the oldest.
        let replaced = same_type.into_iter().take(excess).collect();
        self.end(&record.user_id, replaced, close::REPLACED, None)
            .await?;
        Ok(())
    }

    /// After an API login: the app may hold `sessions_per_app` live sessions. The new
    /// session is ranked with the others (oldest first, as the index orders them) and
    /// ended if its place is past the cap, so of logins racing for the last place
    /// exactly one keeps it, and an app never holds more than the cap. It never had a
    /// socket, so ending it needs no message to the nodes.
    ///
    /// Counted from the user's session index: a session ended without being unindexed
    /// (refresh-token reuse) counts until it expires. Across nodes (one Redis), two
    /// logins indexed in the same millisecond rank by session id, which may differ from
    /// the order they were indexed in: then both may keep their place, one over the
    /// cap. On one node `Parts::app_logins` rules that out.
    async fn enforce_app_session_cap(&self, record: &SessionRecord) -> Result<(), SessionError> {
        if record.client_type != ClientType::Api {
            return Ok(());
        }
        let store = &self.0.store;
        let place = store
            .user_sessions(&record.user_id)
            .await?
            .iter()
            .position(|s| s.session_id == record.session_id);
        // Not listed (expired at once, or ended meanwhile): nothing to keep.
        if place.is_some_and(|p| p < self.0.policy.sessions_per_app) {
            return Ok(());
        }
        store.revoke_session(&record.session_id).await?;
        store
            .unindex_session(&record.user_id, &record.session_id)
            .await?;
        tracing::info!(user_id = %record.user_id, "app session refused: cap reached");
        Err(SessionError::TooManySessions)
    }

    /// Rotates a refresh token whose request signature already verified, after
    /// recording the request's nonce (a replayed request must not count as reuse).
    pub(crate) async fn refresh(
        &self,
        session_id: &str,
        device_id: &str,
        presented: &str,
        nonce: &str,
    ) -> Result<Refreshed, SessionError> {
        self.record_nonce(session_id, nonce).await?;
        let new_token = new_refresh_token(session_id);
        let key = self.0.secrets.refresh_key();
        let policy = &self.0.policy;
        let outcome = self
            .0
            .store
            .rotate_refresh(&RotateRefresh {
                session_id,
                device_id,
                presented_hash: &refresh_hash(key, presented),
                new_hash: &refresh_hash(key, &new_token),
                grace: policy.refresh_grace,
                cap_per_day: policy.refresh_cap_per_day,
            })
            .await?;
        let record = match outcome {
            RotateOutcome::Rotated(record) => record,
            RotateOutcome::Reused => {
                // The store already deleted the session; close its sockets everywhere.
                tracing::warn!(session_id = %session_id, "refresh token reused: session revoked");
                self.close_sockets(vec![session_id.to_owned()], close::REVOKED, None)
                    .await?;
                return Err(SessionError::RefreshReused);
            }
            RotateOutcome::DeviceMismatch => return Err(SessionError::DeviceMismatch),
            RotateOutcome::Limit => return Err(SessionError::RefreshLimit),
            RotateOutcome::SessionGone => return Err(SessionError::Revoked),
        };
        if self.is_blocked(&record.user_id).await? {
            self.end(
                &record.user_id,
                vec![record.session_id.clone()],
                close::REVOKED,
                None,
            )
            .await?;
            return Err(SessionError::Revoked);
        }
        let (access_token, claims) = self.issue_access(&(&record).into())?;
        let now = unix_now();
        Ok(Refreshed {
            client_type: record.client_type,
            answer: LoginResponse {
                access_token,
                refresh_token: Some(new_token),
                signing_key: self.signing_key_b64(session_id),
                session_id: session_id.to_owned(),
                access_expires_in: (claims.exp - now).max(0) as u64,
                refresh_expires_in: (record.expires_at - now).max(0) as u64,
            },
        })
    }

    /// Records a verified request's nonce in the scope of a session or app; a nonce
    /// seen before is a replay.
    pub(crate) async fn record_nonce(&self, scope: &str, nonce: &str) -> Result<(), SessionError> {
        let ttl = self.0.policy.nonce_ttl;
        if self.0.store.record_nonce(scope, nonce, ttl).await? {
            Ok(())
        } else {
            Err(SessionError::Replayed)
        }
    }

    /// Logs a session out after its Bearer + signed request verified: records the
    /// nonce, then ends the session everywhere. A session that already ended answers
    /// `Revoked` and touches nothing else (no unindexing, no message to the nodes).
    pub(crate) async fn logout(&self, claims: &Claims, nonce: &str) -> Result<Ended, SessionError> {
        self.record_nonce(&claims.sid, nonce).await?;
        if !self.0.store.revoke_session(&claims.sid).await? {
            return Err(SessionError::Revoked);
        }
        self.0
            .store
            .unindex_session(&claims.sub, &claims.sid)
            .await?;
        let sockets = self
            .close_sockets(vec![claims.sid.clone()], close::REVOKED, None)
            .await?;
        tracing::info!(user_id = %claims.sub, session_id = %claims.sid, sockets, "logged out");
        Ok(Ended {
            sessions: 1,
            sockets,
        })
    }

    /// Ends sessions of one user: deletes them (their refresh tokens die, their access
    /// tokens are refused at mint), unindexes them and closes their sockets on every
    /// node with `code` and `reason` (the code's usual word when `None`).
    pub async fn end(
        &self,
        user_id: &str,
        session_ids: Vec<String>,
        code: u16,
        reason: Option<String>,
    ) -> Result<Ended, SessionError> {
        if session_ids.is_empty() {
            return Ok(Ended {
                sessions: 0,
                sockets: 0,
            });
        }
        let mut sessions = 0;
        for sid in &session_ids {
            if self.0.store.revoke_session(sid).await? {
                sessions += 1;
            }
            self.0.store.unindex_session(user_id, sid).await?;
        }
        let sockets = self.close_sockets(session_ids, code, reason).await?;
        tracing::info!(user_id = %user_id, sessions, sockets, code, "sessions ended");
        Ok(Ended { sessions, sockets })
    }

    /// Ends a user's sessions (all, or those of one client type), closing their sockets
    /// on every node with 4503 and `reason` as the close frame's text (cut to 123
    /// bytes).
    pub(crate) async fn kick(
        &self,
        user_id: &str,
        client_type: Option<ClientType>,
        reason: Option<String>,
    ) -> Result<Ended, SessionError> {
        let sessions: Vec<String> = self
            .0
            .store
            .user_sessions(user_id)
            .await?
            .into_iter()
            .filter(|s| client_type.is_none_or(|c| c == s.client_type))
            .map(|s| s.session_id)
            .collect();
        self.end(user_id, sessions, close::REVOKED, reason).await
    }

    /// Blocks a user on every node (no login, refresh or mint), then kicks every
    /// session. The flag comes first: a login racing the block is caught by `open`.
    pub(crate) async fn block(&self, user_id: &str) -> Result<Ended, SessionError> {
        self.0.store.set_blocked(user_id, true).await?;
        self.kick(user_id, None, Some("blocked".into())).await
    }

    /// Lifts an admin block.
    pub(crate) async fn unblock(&self, user_id: &str) -> Result<(), SessionError> {
        Ok(self.0.store.set_blocked(user_id, false).await?)
    }

    /// Closes the sockets of sessions on every node; the number closed.
    async fn close_sockets(
        &self,
        session_ids: Vec<String>,
        code: u16,
        reason: Option<String>,
    ) -> Result<u64, SessionError> {
        let op = Op::Revoke {
            session_ids,
            code,
            reason,
        };
        let answers = self.0.hub.request(op).await?;
        Ok(answers.iter().map(|a| a.count).sum())
    }

    /// Blocked in the users file or by the admin API (deployment-wide flag).
    pub(crate) async fn is_blocked(&self, user_id: &str) -> Result<bool, SessionError> {
        Ok(self.0.users.is_blocked(user_id) || self.0.store.is_blocked(user_id).await?)
    }

    /// Blocked in the users file (no store round trip).
    pub(crate) fn is_blocked_in_file(&self, user_id: &str) -> bool {
        self.0.users.is_blocked(user_id)
    }

    /// Mints a one-time ticket for a verified Bearer + signed request, recording its
    /// nonce in the same store round trip.
    pub(crate) async fn mint_ticket(
        &self,
        claims: &Claims,
        device_id: &str,
        nonce: &str,
    ) -> Result<Minted, SessionError> {
        let target = TicketFor {
            session_id: &claims.sid,
            user_id: &claims.sub,
            device_id,
            client_type: claims.ctp,
            access_expires_at: claims.exp,
        };
        self.issue_ticket(&target, nonce, self.0.policy.nonce_ttl)
            .await
    }

    /// The `resume` frame offered to a socket before a drain close: a ticket for the
    /// same session and device, so a mass reconnect after a deploy needs no mint round
    /// trip. At most [`RESUME_IN_FLIGHT`] are issued at once (a drain asks for all of
    /// them at the same instant). `None` when the session has ended, the socket's turn
    /// does not come within `resume_wait`, or the store does not answer within a second
    /// (the client then mints as usual).
    pub(crate) async fn resume_frame(&self, target: &TicketFor<'_>) -> Option<ServerFrame> {
        // Server-made: the nonce only has to be unique.
        let nonce = format!("resume-{}", random_b64(16));
        let ttl = self.0.policy.ticket_ttl;
        let issued = self.issue_ticket(target, &nonce, ttl);
        let minted = gated(
            &self.0.resume_gate,
            self.0.policy.resume_wait,
            Duration::from_secs(1),
            issued,
        )
        .await?;
        Some(ServerFrame::Resume {
            ticket: minted.ticket,
            expires_in: minted.expires_in,
        })
    }

    /// Mints a ticket and records it (with the nonce) in one store round trip.
    async fn issue_ticket(
        &self,
        target: &TicketFor<'_>,
        nonce: &str,
        nonce_ttl: Duration,
    ) -> Result<Minted, SessionError> {
        let ttl = self.0.policy.ticket_ttl;
        let expires_at_ms = unix_now_ms() + ttl.as_millis() as i64;
        let (ticket, ticket_id) = self.0.tickets.mint(target.session_id, expires_at_ms);
        let grant = TicketGrant {
            device_id: target.device_id.to_owned(),
            user_id: target.user_id.to_owned(),
            client_type: target.client_type,
            access_expires_at: target.access_expires_at,
        };
        let outcome = self
            .0
            .store
            .mint_ticket(&MintTicket {
                session_id: target.session_id,
                nonce,
                nonce_ttl,
                ticket_id: &ticket_id,
                grant: &grant,
                ticket_ttl: ttl,
            })
            .await?;
        match outcome {
            MintOutcome::Minted => Ok(Minted {
                ticket,
                expires_in: ttl.as_secs().max(1),
            }),
            MintOutcome::NonceReplayed => Err(SessionError::Replayed),
            MintOutcome::SessionGone => Err(SessionError::Revoked),
        }
    }

    /// Sliding renewal: inside the renewal window, a fresh access token of the same
    /// session, at most once per presented token and within the daily cap. Never fails
    /// the call it rides on: any problem just means no new token.
    pub(crate) async fn renew_access(&self, claims: &Claims) -> Option<String> {
        let access_ttl = self.0.policy.access_ttl;
        let now_ms = unix_now_ms();
        if !ticketgate_sdk::protocol::in_renewal_window(claims.exp * 1000, access_ttl, now_ms) {
            return None;
        }
        let now = now_ms / 1000;
        let outcome = self
            .0
            .store
            .renew_access(&RenewAccess {
                session_id: &claims.sid,
                jti: &claims.jti,
                jti_ttl: Duration::from_secs((claims.exp - now).max(1) as u64 + 60),
                cap_per_day: self.0.policy.refresh_cap_per_day,
            })
            .await
            .ok()?;
        if outcome != RenewOutcome::Renewed {
            return None;
        }
        self.issue_access(&AccessSubject::of_claims(claims))
            .ok()
            .map(|(token, _)| token)
    }

    /// Whether an access or refresh token is active right now (not expired, not
    /// revoked, user not blocked), with what it says: the admin API's introspection.
    pub(crate) async fn introspect(
        &self,
        token: &str,
    ) -> Result<Option<Introspected>, SessionError> {
        if let Ok(claims) = self.0.keys.verify(token) {
            let alive = self.0.store.session(&claims.sid).await?.is_some();
            if !alive || self.is_blocked(&claims.sub).await? {
                return Ok(None);
            }
            return Ok(Some(Introspected {
                token_type: "access",
                user_id: claims.sub,
                session_id: claims.sid,
                device_id: claims.did,
                client_type: claims.ctp,
                expires_at: claims.exp,
            }));
        }
        let Some(sid) = crate::auth::refresh::refresh_token_session(token) else {
            return Ok(None);
        };
        let Some(record) = self.0.store.session(sid).await? else {
            return Ok(None);
        };
        let presented = refresh_hash(self.0.secrets.refresh_key(), token);
        let current = ticketgate_sdk::signing::signatures_equal(
            presented.as_bytes(),
            record.refresh_hash.as_bytes(),
        );
        if !current || self.is_blocked(&record.user_id).await? {
            return Ok(None);
        }
        Ok(Some(Introspected {
            token_type: "refresh",
            user_id: record.user_id,
            session_id: record.session_id,
            device_id: record.device_id,
            client_type: record.client_type,
            expires_at: record.expires_at,
        }))
    }

    /// Verifies an access token (signature, issuer, audience, expiry; no I/O).
    pub(crate) fn verify_access(
        &self,
        token: &str,
    ) -> Result<Claims, crate::auth::tokens::TokenError> {
        self.0.keys.verify(token)
    }

    /// The signing key of a session (derived from its id, never stored).
    pub(crate) fn signing_key(&self, session_id: &str) -> [u8; 32] {
        self.0.secrets.session_signing_key(session_id)
    }

    /// Issues an access token valid for the configured access lifetime.
    fn issue_access(&self, subject: &AccessSubject<'_>) -> Result<(String, Claims), SessionError> {
        let now = unix_now();
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: subject.user_id.to_owned(),
            aud: AUDIENCE.to_owned(),
            exp: now + self.0.policy.access_ttl.as_secs() as i64,
            iat: now,
            jti: random_b64(12),
            sid: subject.session_id.to_owned(),
            did: subject.device_id.to_owned(),
            ctp: subject.client_type,
        };
        let token = self.0.keys.issue(&claims)?;
        Ok((token, claims))
    }

    /// The session's signing key as the login answer carries it (base64url, no padding).
    fn signing_key_b64(&self, session_id: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.0.secrets.session_signing_key(session_id))
    }
}

/// An active token, as introspection describes it.
#[derive(Debug, Clone)]
pub(crate) struct Introspected {
    /// `access` or `refresh`.
    pub(crate) token_type: &'static str,
    /// The user.
    pub(crate) user_id: String,
    /// The session.
    pub(crate) session_id: String,
    /// The session's device.
    pub(crate) device_id: String,
    /// The session's client type.
    pub(crate) client_type: ClientType,
    /// Unix seconds: the token's expiry (access) or the session's (refresh).
    pub(crate) expires_at: i64,
}

/// Whom an access token is issued to.
struct AccessSubject<'a> {
    user_id: &'a str,
    session_id: &'a str,
    device_id: &'a str,
    client_type: ClientType,
}

impl AccessSubject<'_> {
    fn of_claims(claims: &Claims) -> AccessSubject<'_> {
        AccessSubject {
            user_id: &claims.sub,
            session_id: &claims.sid,
            device_id: &claims.did,
            client_type: claims.ctp,
        }
    }
}

impl<'a> From<&'a SessionRecord> for AccessSubject<'a> {
    fn from(record: &'a SessionRecord) -> Self {
        AccessSubject {
            user_id: &record.user_id,
            session_id: &record.session_id,
            device_id: &record.device_id,
            client_type: record.client_type,
        }
    }
}

/// The user id of an API app's sessions.
pub(crate) fn app_user(app_id: &str) -> String {
    format!("app:{app_id}")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A drain asks for every socket's resume ticket at once: no more than the gate's
    /// permits reach the store together, and every one of them is issued.
    #[tokio::test(start_paused = true)]
    async fn resume_tickets_are_issued_a_few_at_a_time_and_all_of_them() {
        let gate = Arc::new(tokio::sync::Semaphore::new(3));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let calls: Vec<_> = (0..20)
            .map(|i| {
                let (gate, running, most) = (gate.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    let work = async {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok::<usize, ()>(i)
                    };
                    gated(&gate, Duration::from_secs(5), Duration::from_secs(1), work).await
                })
            })
            .collect();
        let mut issued = 0;
        for call in calls {
            if call.await.expect("task").is_some() {
                issued += 1;
            }
        }
        assert_eq!(issued, 20);
        assert_eq!(most.load(Ordering::SeqCst), 3);
    }

    /// A socket whose turn does not come within the wait gets no resume ticket (its
    /// client mints), and so does one whose store call does not end within the limit.
    #[tokio::test(start_paused = true)]
    async fn a_resume_ticket_gives_up_after_the_wait_or_the_limit() {
        let gate = tokio::sync::Semaphore::new(1);
        let held = gate.acquire().await.expect("permit");
        let waited = gated(
            &gate,
            Duration::from_secs(5),
            Duration::from_secs(1),
            async { Ok::<(), ()>(()) },
        )
        .await;
        assert_eq!(waited, None);
        drop(held);
        let slow = gated(
            &gate,
            Duration::from_secs(5),
            Duration::from_secs(1),
            async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok::<(), ()>(())
            },
        )
        .await;
        assert_eq!(slow, None);
        let quick = gated(
            &gate,
            Duration::from_secs(5),
            Duration::from_secs(1),
            async { Ok::<u8, ()>(7) },
        )
        .await;
        assert_eq!(quick, Some(7));
    }
}
