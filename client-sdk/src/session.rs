//! [`SessionHandle`]: one session, shared by every task of an application and kept
//! fresh.
//!
//! The handle owns the session's tokens. It renews the access token ahead of expiry,
//! adopts `X-New-Token`, and lets at most one refresh of the session be in flight: a
//! refresh token is single use, and presenting one twice makes the server revoke the
//! whole session (`refresh_reused`).
//!
//! ```text
//! access_token() ──► inside the renewal window? ──no──► the current token
//!                                 │ yes
//!                                 ▼
//! refresh() ──► the refresh in flight, or a new one (one POST /v1/token/refresh)
//!                                 │ refresh_reused, refresh_limit, token_revoked, …
//!                                 ▼
//!               ended: every later call fails with ClientError::SessionEnded
//! ```

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::client::Client;
use crate::clock::unix_now;
use crate::connection::{ConnectOptions, ManagedConnection};
use crate::error::ClientError;
use crate::protocol::{close, ErrorCode};
use crate::session_data::{Session, Ticket};

/// Why a session is over. After any of these only a new login helps.
///
/// ```
/// use ticketgate_sdk::{ClientError, EndReason};
///
/// let err = ClientError::SessionEnded(EndReason::RefreshReused);
/// assert_eq!(err.to_string(), "the session has ended (refresh_reused); log in again");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndReason {
    /// `refresh_reused`: a refresh token was presented twice, so the server revoked the
    /// session (someone else may hold a copy of it).
    RefreshReused,
    /// `refresh_limit`: the session reached its daily refresh cap.
    RefreshLimit,
    /// `token_revoked`, or close code 4503 (and other 4500–4999 codes): logged out
    /// elsewhere, kicked, blocked or revoked.
    Revoked,
    /// Close code 4509: a newer login of the same user and client type replaced it.
    Replaced,
    /// The refresh token expired, or the server no longer knows it (`token_expired`,
    /// `token_invalid` on refresh).
    Expired,
    /// [`SessionHandle::logout`] ended it.
    LoggedOut,
}

impl EndReason {
    /// The end that a failed refresh means, if it means one.
    fn from_refresh_error(err: &ClientError) -> Option<Self> {
        match err.code()? {
            ErrorCode::RefreshReused => Some(EndReason::RefreshReused),
            ErrorCode::RefreshLimit => Some(EndReason::RefreshLimit),
            ErrorCode::TokenRevoked => Some(EndReason::Revoked),
            ErrorCode::TokenExpired | ErrorCode::TokenInvalid => Some(EndReason::Expired),
            _ => None,
        }
    }

    /// The end that a close code of 4500–4999 means.
    pub(crate) fn from_close_code(code: u16) -> Self {
        if code == close::REPLACED {
            EndReason::Replaced
        } else {
            EndReason::Revoked
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            EndReason::RefreshReused => "refresh_reused",
            EndReason::RefreshLimit => "refresh_limit",
            EndReason::Revoked => "revoked",
            EndReason::Replaced => "replaced by a newer login",
            EndReason::Expired => "expired",
            EndReason::LoggedOut => "logged out",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A [`Client`] and the [`Session`] it acts for, shared and kept fresh.
///
/// Cloning is cheap and every clone is the same session: clone it into every task that
/// mints tickets or needs an access token. The handle renews the access token when
/// asked for one inside its renewal window, runs at most one refresh at a time, and
/// adopts `X-New-Token`. Once a refresh says the session is over, the handle is ended
/// and answers [`ClientError::SessionEnded`] without asking the server again.
///
/// Persist [`SessionHandle::session`] after renewals if the session must outlive the
/// process: the old refresh token is dead once a refresh succeeded.
///
/// ```no_run
/// # async fn run() -> Result<(), ticketgate_sdk::ClientError> {
/// use ticketgate_sdk::{Client, ClientType, SessionHandle};
///
/// let client = Client::new("http://127.0.0.1:8080")?;
/// let session = client.login("alice", "secret", ClientType::Mobile).await?;
/// let handle = SessionHandle::new(client, session);
///
/// let token = handle.access_token().await?; // renewed first when about to expire
/// let ticket = handle.mint_ticket().await?;
/// # drop((token, ticket));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SessionHandle {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// A std mutex: it guards a few assignments and is never held across an await.
    state: Mutex<State>,
    /// Held by the refresh in flight from before its request until its outcome is in
    /// `state`; whoever gets it next sees that outcome instead of refreshing again.
    refresh_gate: Arc<tokio::sync::Mutex<()>>,
}

struct State {
    session: Session,
    ended: Option<EndReason>,
    /// Refresh attempts finished so far. A caller that read another value before
    /// waiting for the gate knows an attempt finished meanwhile, and takes its outcome.
    attempts: u64,
    /// The error of the last attempt, when it failed without ending the session.
    last_failure: Option<Arc<ClientError>>,
}

impl State {
    /// What the last finished refresh attempt means for a caller that waited for it.
    fn outcome(&self) -> Result<Session, ClientError> {
        if let Some(reason) = self.ended {
            return Err(ClientError::SessionEnded(reason));
        }
        match &self.last_failure {
            Some(err) => Err(ClientError::RefreshFailed(Arc::clone(err))),
            None => Ok(self.session.clone()),
        }
    }
}

impl SessionHandle {
    /// A handle for `session`, whose calls go through `client`.
    ///
    /// ```no_run
    /// # async fn run(client: ticketgate_sdk::Client) -> Result<(), ticketgate_sdk::ClientError> {
    /// let session = client.app_login("billing-service", "s3cr3t").await?;
    /// let handle = ticketgate_sdk::SessionHandle::new(client, session);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(client: Client, session: Session) -> Self {
        SessionHandle {
            inner: Arc::new(Inner {
                client,
                state: Mutex::new(State {
                    session,
                    ended: None,
                    attempts: 0,
                    last_failure: None,
                }),
                refresh_gate: Arc::new(tokio::sync::Mutex::new(())),
            }),
        }
    }

    /// The client this handle calls through.
    ///
    /// ```no_run
    /// # fn run(handle: ticketgate_sdk::SessionHandle) {
    /// println!("device {}", handle.client().device_id());
    /// # }
    /// ```
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// A snapshot of the session as it is now, e.g. to persist it. Later renewals do
    /// not change the snapshot.
    ///
    /// ```no_run
    /// # fn run(handle: ticketgate_sdk::SessionHandle) {
    /// let session = handle.session();
    /// println!("session {} until {}", session.session_id, session.refresh_expires_at);
    /// # }
    /// ```
    pub fn session(&self) -> Session {
        self.inner.lock_state().session.clone()
    }

    /// Why the session is over, or `None` while it is alive as far as the handle knows.
    ///
    /// ```no_run
    /// # fn run(handle: ticketgate_sdk::SessionHandle) {
    /// if let Some(reason) = handle.ended() {
    ///     eprintln!("please log in again ({reason})");
    /// }
    /// # }
    /// ```
    pub fn ended(&self) -> Option<EndReason> {
        self.inner.lock_state().ended
    }

    /// An access token to send as `Authorization: Bearer`, renewed first when it is
    /// inside its renewal window ([`Session::needs_refresh`]).
    ///
    /// When that renewal fails for a reason that may pass (network, 429, 503) while the
    /// current token still works, the current token is returned; the next call tries
    /// again.
    ///
    /// # Errors
    /// [`ClientError::SessionEnded`] when the session is over;
    /// [`ClientError::RefreshFailed`] when the token has expired and could not be
    /// renewed.
    ///
    /// # Cancel safety
    /// Cancel safe: a renewal that started goes on in the background and its result
    /// is kept.
    ///
    /// ```no_run
    /// # async fn run(handle: ticketgate_sdk::SessionHandle) -> Result<(), ticketgate_sdk::ClientError> {
    /// let token = handle.access_token().await?;
    /// let auth = format!("Bearer {token}");
    /// # drop(auth);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn access_token(&self) -> Result<String, ClientError> {
        Ok(self.fresh_session().await?.access_token)
    }

    /// Renews the session now: new access token, new refresh token.
    ///
    /// Single flight: when a refresh is already in flight this call waits for it and
    /// shares its outcome instead of sending another, so any number of concurrent
    /// callers cause one `POST /v1/token/refresh`.
    ///
    /// # Errors
    /// [`ClientError::SessionEnded`] when the session is over, now (`refresh_reused`,
    /// `refresh_limit`, `token_revoked`, an expired or unknown refresh token) or
    /// before; [`ClientError::RefreshFailed`] for failures that may pass.
    ///
    /// # Cancel safety
    /// Cancel safe: the request runs in its own task, holding the single-flight gate
    /// until its answer is stored, so dropping this future never loses a rotated
    /// refresh token.
    ///
    /// ```no_run
    /// # async fn run(handle: ticketgate_sdk::SessionHandle) {
    /// use ticketgate_sdk::ClientError;
    ///
    /// match handle.refresh().await {
    ///     Ok(session) => println!("renewed until {}", session.access_expires_at),
    ///     Err(ClientError::SessionEnded(reason)) => eprintln!("log in again: {reason}"),
    ///     Err(err) => eprintln!("try again later: {err}"),
    /// }
    /// # }
    /// ```
    pub async fn refresh(&self) -> Result<Session, ClientError> {
        let (_, seen) = self.snapshot()?;
        self.refresh_after(seen).await
    }

    /// Mints a connection ticket with a fresh access token, and adopts the renewed
    /// token when the answer carries `X-New-Token`.
    ///
    /// # Errors
    /// As [`SessionHandle::access_token`] and [`Client::mint_ticket`]. A
    /// `token_revoked` answer also ends the handle.
    ///
    /// ```no_run
    /// # async fn run(handle: ticketgate_sdk::SessionHandle) -> Result<(), ticketgate_sdk::ClientError> {
    /// let ticket = handle.mint_ticket().await?;
    /// let (socket, welcome) = handle.client().connect(&handle.session(), &ticket).await?;
    /// # drop((socket, welcome));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn mint_ticket(&self) -> Result<Ticket, ClientError> {
        Ok(self.mint().await?.0)
    }

    /// Logs the session out (`POST /v1/logout`) and ends the handle.
    ///
    /// Logging out a session that is over already succeeds without a request.
    ///
    /// # Errors
    /// As [`Client::logout`]; the handle stays alive when the logout failed.
    ///
    /// ```no_run
    /// # async fn run(handle: ticketgate_sdk::SessionHandle) -> Result<(), ticketgate_sdk::ClientError> {
    /// handle.logout().await?;
    /// assert!(handle.ended().is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn logout(&self) -> Result<(), ClientError> {
        let session = match self.fresh_session().await {
            Ok(session) => session,
            Err(ClientError::SessionEnded(_)) => return Ok(()),
            Err(err) => return Err(err),
        };
        match self.inner.client.logout(&session).await {
            Ok(()) => {
                self.end(EndReason::LoggedOut);
                Ok(())
            }
            Err(err) if err.code() == Some(ErrorCode::TokenRevoked) => {
                self.end(EndReason::Revoked);
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Starts a WebSocket connection that renews itself and reconnects; see
    /// [`ManagedConnection`].
    ///
    /// # Panics
    /// Outside a Tokio runtime: the connection runs in a spawned task.
    ///
    /// ```no_run
    /// # async fn run(handle: ticketgate_sdk::SessionHandle) {
    /// use ticketgate_sdk::{ConnectOptions, Event};
    ///
    /// let mut connection = handle.connect_with_reconnect(ConnectOptions::default());
    /// while let Some(event) = connection.next().await {
    ///     if let Event::Push { topic, data, .. } = event {
    ///         println!("{topic}: {data}");
    ///     }
    /// }
    /// # }
    /// ```
    pub fn connect_with_reconnect(&self, options: ConnectOptions) -> ManagedConnection {
        crate::connection::spawn(self.clone(), options, None)
    }

    /// Like [`SessionHandle::connect_with_reconnect`], continuing from `last_id`: the
    /// id of the last push the application handled, kept from an earlier
    /// [`ManagedConnection::last_id`] (e.g. across a restart). The first connect asks
    /// the server for every push after it; when they are no longer all held, an
    /// [`Event::PushesLost`](crate::Event::PushesLost) follows the welcome.
    ///
    /// ```no_run
    /// # async fn run(handle: ticketgate_sdk::SessionHandle, saved: Option<String>) {
    /// use ticketgate_sdk::{ConnectOptions, Event};
    ///
    /// let mut connection = handle.connect_with_reconnect_since(ConnectOptions::default(), saved);
    /// while let Some(event) = connection.next().await {
    ///     match event {
    ///         Event::PushesLost { .. } => { /* reload the state from your service */ }
    ///         Event::Push { id, .. } => { /* handle it, then keep `id` */ let _ = id; }
    ///         _ => {}
    ///     }
    /// }
    /// # }
    /// ```
    pub fn connect_with_reconnect_since(
        &self,
        options: ConnectOptions,
        last_id: Option<String>,
    ) -> ManagedConnection {
        crate::connection::spawn(self.clone(), options, last_id)
    }

    /// Mints a ticket; also answers the session (and so the access token) it used.
    pub(crate) async fn mint(&self) -> Result<(Ticket, Session), ClientError> {
        let session = self.fresh_session().await?;
        let ticket = match self.inner.client.mint_ticket(&session).await {
            Ok(ticket) => ticket,
            Err(err) => {
                if err.code() == Some(ErrorCode::TokenRevoked) {
                    self.end(EndReason::Revoked);
                }
                return Err(err);
            }
        };
        if let Some(token) = &ticket.new_access_token {
            self.adopt(&session.access_token, token.clone());
        }
        Ok((ticket, session))
    }

    /// An access token that is not `old` and not inside its renewal window: what a
    /// connection admitted with `old` sends to answer `expiring`.
    pub(crate) async fn token_newer_than(&self, old: &str) -> Result<String, ClientError> {
        let (session, seen) = self.snapshot()?;
        if session.access_token != old && !session.needs_refresh(unix_now()) {
            return Ok(session.access_token);
        }
        Ok(self.refresh_after(seen).await?.access_token)
    }

    /// Marks the session as over; the first reason sticks.
    pub(crate) fn end(&self, reason: EndReason) {
        let mut state = self.inner.lock_state();
        if state.ended.is_none() {
            tracing::debug!(session_id = %state.session.session_id, %reason, "session ended");
            state.ended = Some(reason);
        }
    }

    /// The session with an access token renewed when inside its renewal window.
    async fn fresh_session(&self) -> Result<Session, ClientError> {
        let (session, seen) = self.snapshot()?;
        if !session.needs_refresh(unix_now()) {
            return Ok(session);
        }
        match self.refresh_after(seen).await {
            Ok(fresh) => Ok(fresh),
            Err(err @ ClientError::SessionEnded(_)) => Err(err),
            // Renewal runs ahead of expiry: while the current token works, a failed
            // renewal is not the caller's problem yet.
            Err(err) if session.access_expires_at > unix_now() => {
                tracing::debug!(cause = %err, "early renewal failed; using the current token");
                Ok(session)
            }
            Err(err) => Err(err),
        }
    }

    /// Runs a refresh, unless one finished since the caller saw `seen` attempts: then
    /// that one's outcome is the answer.
    async fn refresh_after(&self, seen: u64) -> Result<Session, ClientError> {
        let gate = Arc::clone(&self.inner.refresh_gate).lock_owned().await;
        {
            let state = self.inner.lock_state();
            if state.ended.is_some() || state.attempts != seen {
                return state.outcome();
            }
        }
        let inner = Arc::clone(&self.inner);
        let task = tokio::spawn(async move {
            let outcome = inner.run_refresh().await;
            drop(gate);
            outcome
        });
        match task.await {
            Ok(outcome) => outcome,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => Err(ClientError::Stopped),
        }
    }

    /// The current session and the number of finished refresh attempts, or
    /// [`ClientError::SessionEnded`].
    fn snapshot(&self) -> Result<(Session, u64), ClientError> {
        let state = self.inner.lock_state();
        match state.ended {
            Some(reason) => Err(ClientError::SessionEnded(reason)),
            None => Ok((state.session.clone(), state.attempts)),
        }
    }

    /// Takes an `X-New-Token` answered to a call that presented `presented`.
    fn adopt(&self, presented: &str, token: String) {
        let mut state = self.inner.lock_state();
        // A refresh that finished meanwhile brought a token at least as new: keep it.
        if state.ended.is_none() && state.session.access_token == presented {
            state.session.adopt_access_token(token);
            tracing::debug!(session_id = %state.session.session_id, "adopted X-New-Token");
        }
    }
}

impl Inner {
    /// The state; a panic elsewhere cannot leave it half-written (every update is a
    /// few plain assignments), so a poisoned lock is used as is.
    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One refresh attempt; the caller holds the gate. Stores and answers the outcome.
    async fn run_refresh(&self) -> Result<Session, ClientError> {
        let current = self.lock_state().session.clone();
        let result = if current.refresh_expires_at <= unix_now() {
            Err(ClientError::SessionEnded(EndReason::Expired))
        } else {
            self.client.refresh(&current).await
        };

        let mut state = self.lock_state();
        state.attempts += 1;
        match result {
            Ok(session) => {
                state.last_failure = None;
                if state.ended.is_none() {
                    state.session = session;
                }
            }
            Err(ClientError::SessionEnded(reason)) => {
                state.ended.get_or_insert(reason);
            }
            Err(err) => match EndReason::from_refresh_error(&err) {
                Some(reason) => {
                    tracing::warn!(session_id = %current.session_id, cause = %err, "refresh refused; the session is over");
                    state.ended.get_or_insert(reason);
                }
                None => {
                    tracing::warn!(session_id = %current.session_id, cause = %err, "refresh failed");
                    state.last_failure = Some(Arc::new(err));
                }
            },
        }
        state.outcome()
    }
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.lock_state();
        f.debug_struct("SessionHandle")
            .field("session", &state.session)
            .field("ended", &state.ended)
            .finish()
    }
}
