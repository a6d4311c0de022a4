//! The values the [`Client`](crate::Client) calls answer: [`Session`] (what a login or
//! refresh answers: tokens, signing key, expiries), [`Ticket`] (a one-time connection
//! ticket) and [`Welcome`] (the first frame of a connection).
//!
//! They are plain data, public field by field, so an application can persist a session
//! and build it again. `Debug` of a session or a ticket prints no secret. Sharing a
//! session between tasks and keeping it fresh is the job of
//! [`SessionHandle`](crate::SessionHandle), in `session`.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::clock::unix_now;
use crate::error::ClientError;
use crate::protocol::{renewal_window, LoginResponse};

/// A logged-in session: what login, app login and refresh answer.
///
/// The fields are public so that an application can persist a session and build it
/// again. `Debug` prints no secret: tokens and the signing key are redacted.
#[derive(Clone)]
pub struct Session {
    /// The JWT access token, sent as `Authorization: Bearer`. Lives 15 minutes by default.
    pub access_token: String,
    /// The single-use refresh token; `None` in web cookie mode.
    pub refresh_token: Option<String>,
    /// The session's HMAC-SHA256 key, already decoded from base64url. Signs every call
    /// of this session.
    pub signing_key: Vec<u8>,
    /// The session id (`sid` of the access token).
    pub session_id: String,
    /// The device the session is bound to; sent as `X-TG-Device` on its calls.
    pub device_id: String,
    /// When the access token expires, unix seconds, computed from `access_expires_in`
    /// when the answer arrived.
    pub access_expires_at: u64,
    /// The access token's lifetime in seconds (`access_expires_in` of the last login or
    /// refresh answer). Sets the renewal window, see [`Session::needs_refresh`].
    pub access_lifetime: u64,
    /// When the refresh token (and so the session) expires, unix seconds.
    pub refresh_expires_at: u64,
}

/// A one-time connection ticket from [`Client::mint_ticket`](crate::Client::mint_ticket).
///
/// It is a single-use bearer credential that lives about 30 seconds and only opens a
/// socket for the device it was minted for. `Debug` does not print it.
#[derive(Clone)]
pub struct Ticket {
    /// The ticket itself; only `[A-Za-z0-9_.-]`.
    pub ticket: String,
    /// Seconds until the ticket expires, counted from the mint answer.
    pub expires_in: u64,
    /// Where to connect, e.g. `ws://host:8080/v1/connect`; empty means "the base URL's
    /// `/v1/connect`".
    pub ws_url: String,
    /// A renewed access token of the same session, when the mint answer carried
    /// `X-New-Token` (the presented token was inside its renewal window). Hand it to
    /// [`Session::adopt_access_token`]; a [`SessionHandle`](crate::SessionHandle) does
    /// that by itself.
    pub new_access_token: Option<String>,
}

/// The first frame of every connection, as returned by [`Client::connect`](crate::Client::connect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The session the connection belongs to.
    pub session_id: String,
    /// This connection's id, as shown in the server's logs and connection list.
    pub conn_id: String,
    /// The user id (the username; `app:<app_id>` for an API app).
    pub user_id: String,
    /// The device id the ticket was bound to.
    pub device_id: String,
    /// Unix seconds when the server closes the connection with 4004 unless it is
    /// refreshed with a newer access token.
    pub expires_at: i64,
    /// Only for a connect with `since` ([`Client::connect_since`](crate::Client::connect_since)):
    /// `Some(true)` when every push after `since` follows, `Some(false)` when some were
    /// lost (resynchronise from your own service); `None` without `since`.
    pub recovered: Option<bool>,
    /// Only for a connect with `since`: the newest push id of the user's history
    /// (`None` when it is empty, or without `since`). A new client can start from it.
    pub last_id: Option<String>,
}

impl Session {
    /// True when the access token is inside its renewal window at `now` (unix seconds):
    /// remaining ≤ min(5 min, 30 % of [`Session::access_lifetime`]), or expired.
    ///
    /// The window is [`protocol::renewal_window`](crate::protocol::renewal_window), the
    /// one the server uses for `X-New-Token` and the `expiring` frame.
    ///
    /// ```
    /// # fn run(mut session: ticketgate_sdk::Session) {
    /// session.access_lifetime = 900; // 15 minutes: the window is the last 270 s
    /// session.access_expires_at = 10_000;
    /// assert!(!session.needs_refresh(10_000 - 271));
    /// assert!(session.needs_refresh(10_000 - 270));
    /// assert!(session.needs_refresh(10_001));
    /// # }
    /// ```
    pub fn needs_refresh(&self, now: u64) -> bool {
        let window = renewal_window(Duration::from_secs(self.access_lifetime));
        Duration::from_secs(self.access_expires_at.saturating_sub(now)) <= window
    }

    /// Takes a renewed access token of this session, as sent in `X-New-Token` (see
    /// [`Ticket::new_access_token`]). It expires one [`Session::access_lifetime`] from
    /// now: the server gives every access token of a session the same lifetime. The
    /// refresh token stays the same.
    ///
    /// ```
    /// # fn run(mut session: ticketgate_sdk::Session, ticket: ticketgate_sdk::Ticket) {
    /// if let Some(token) = ticket.new_access_token {
    ///     session.adopt_access_token(token);
    /// }
    /// # }
    /// ```
    pub fn adopt_access_token(&mut self, access_token: String) {
        self.access_token = access_token;
        self.access_expires_at = unix_now().saturating_add(self.access_lifetime);
    }

    /// The session a login, app login or refresh answer describes, bound to
    /// `device_id`; its expiries count from now.
    pub(crate) fn from_answer(
        answer: LoginResponse,
        device_id: &str,
    ) -> Result<Session, ClientError> {
        let signing_key = URL_SAFE_NO_PAD
            .decode(answer.signing_key.trim_end_matches('='))
            .map_err(|_| ClientError::Protocol("signing_key is not base64url".to_owned()))?;
        if signing_key.is_empty() {
            return Err(ClientError::Protocol("signing_key is empty".to_owned()));
        }
        let now = unix_now();
        Ok(Session {
            access_token: answer.access_token,
            refresh_token: answer.refresh_token,
            signing_key,
            session_id: answer.session_id,
            device_id: device_id.to_owned(),
            access_expires_at: now.saturating_add(answer.access_expires_in),
            access_lifetime: answer.access_expires_in,
            refresh_expires_at: now.saturating_add(answer.refresh_expires_in),
        })
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("access_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("signing_key", &"<redacted>")
            .field("session_id", &self.session_id)
            .field("device_id", &self.device_id)
            .field("access_expires_at", &self.access_expires_at)
            .field("access_lifetime", &self.access_lifetime)
            .field("refresh_expires_at", &self.refresh_expires_at)
            .finish()
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("ticket", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field("ws_url", &self.ws_url)
            .field(
                "new_access_token",
                &self.new_access_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}
