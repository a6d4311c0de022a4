//! Wire types of the ticketgate protocol, version 1.
//!
//! Everything a client and the server must spell the same way lives here once:
//! header names, JSON bodies, WebSocket frames, error codes and close codes.

use serde::{Deserialize, Serialize};

/// Header carrying the client's device id (a UUID).
pub const HEADER_DEVICE: &str = "x-tg-device";
/// Header carrying the request time, unix seconds.
pub const HEADER_TIMESTAMP: &str = "x-tg-timestamp";
/// Header carrying the per-request nonce.
pub const HEADER_NONCE: &str = "x-tg-nonce";
/// Header carrying the lowercase hex HMAC-SHA256 signature.
pub const HEADER_SIGNATURE: &str = "x-tg-signature";
/// Header on a Bearer call's answer carrying a renewed access token.
pub const HEADER_NEW_TOKEN: &str = "x-new-token";

/// The WebSocket subprotocol the server speaks.
pub const SUBPROTOCOL: &str = "ticketgate.v1";
/// Prefix of the subprotocol entry that carries the ticket: `ticket.<ticket>`.
pub const TICKET_SUBPROTOCOL_PREFIX: &str = "ticket.";

/// Largest request body the server accepts, in bytes (64 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Shortest accepted nonce.
pub const NONCE_MIN_LEN: usize = 22;
/// Longest accepted nonce.
pub const NONCE_MAX_LEN: usize = 64;

/// The longest renewal window: an access token is renewed at the latest 5 minutes
/// before it expires.
pub const MAX_RENEWAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// The renewal window of an access token that lives `access_lifetime`:
/// min(5 min, 30 % of the lifetime) before its expiry (protocol §3). The server sends
/// `X-New-Token` and the `expiring` frame inside it; the SDK renews inside it. This is
/// the one definition both use.
///
/// ```
/// use std::time::Duration;
/// use ticketgate_sdk::protocol::renewal_window;
/// assert_eq!(renewal_window(Duration::from_secs(900)), Duration::from_secs(270));
/// assert_eq!(renewal_window(Duration::from_secs(3600)), Duration::from_secs(300));
/// // Saturates instead of overflowing: the lifetime may come from a peer's answer.
/// assert_eq!(renewal_window(Duration::MAX), Duration::from_secs(300));
/// ```
pub fn renewal_window(access_lifetime: std::time::Duration) -> std::time::Duration {
    (access_lifetime.saturating_mul(3) / 10).min(MAX_RENEWAL_WINDOW)
}

/// True when a token expiring at `expires_at_ms` (unix milliseconds) is inside its
/// [`renewal_window`] at `now_ms`, or already expired.
///
/// ```
/// use std::time::Duration;
/// use ticketgate_sdk::protocol::in_renewal_window;
/// let life = Duration::from_secs(900); // window: the last 270 s
/// assert!(!in_renewal_window(1_000_000, life, 1_000_000 - 271_000));
/// assert!(in_renewal_window(1_000_000, life, 1_000_000 - 270_000));
/// assert!(in_renewal_window(1_000_000, life, 1_000_001));
/// ```
pub fn in_renewal_window(
    expires_at_ms: i64,
    access_lifetime: std::time::Duration,
    now_ms: i64,
) -> bool {
    let window = i64::try_from(renewal_window(access_lifetime).as_millis()).unwrap_or(i64::MAX);
    expires_at_ms.saturating_sub(now_ms) <= window
}

/// True when `nonce` has an accepted length and only `[A-Za-z0-9_-]`.
pub fn nonce_is_well_formed(nonce: &str) -> bool {
    (NONCE_MIN_LEN..=NONCE_MAX_LEN).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The kind of client a session belongs to; each has its own lifetimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientType {
    /// A browser.
    Web,
    /// A phone or tablet app.
    Mobile,
    /// A server-side API app (logs in with an app id and secret).
    Api,
}

impl ClientType {
    /// The wire spelling: `web`, `mobile` or `api`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientType::Web => "web",
            ClientType::Mobile => "mobile",
            ClientType::Api => "api",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "web" => Some(ClientType::Web),
            "mobile" => Some(ClientType::Mobile),
            "api" => Some(ClientType::Api),
            _ => None,
        }
    }
}

/// `POST /v1/login` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginRequest {
    /// The user name (also the user id).
    pub username: String,
    /// The password.
    pub password: String,
    /// The device's UUID.
    pub device_id: String,
    /// The client type of the new session.
    pub client_type: ClientType,
    /// Web only: deliver the refresh token as a cookie instead of in the body.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refresh_in_cookie: bool,
}

/// The answer of login, app login and refresh.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    /// The JWT access token.
    pub access_token: String,
    /// The single-use refresh token (absent in cookie mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The session's HMAC signing key, base64url without padding.
    pub signing_key: String,
    /// The session id.
    pub session_id: String,
    /// Seconds until the access token expires.
    pub access_expires_in: u64,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: u64,
}

/// `POST /v1/tickets` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MintRequest {
    /// An optional scope, echoed into the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// `POST /v1/tickets` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MintResponse {
    /// The one-time ticket; only `[A-Za-z0-9_.-]`.
    pub ticket: String,
    /// Seconds until the ticket expires.
    pub expires_in: u64,
    /// Where to connect, e.g. `ws://host:8080/v1/connect`.
    pub ws_url: String,
}

/// `POST /v1/token/refresh` body. The answer is a [`LoginResponse`].
///
/// `Debug` does not print the token.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct RefreshRequest {
    /// The session's current refresh token, `<sid>.<random>`. Absent in web cookie
    /// mode: the server then reads the `tg_refresh` cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for RefreshRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshRequest")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Every error answer's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The machine-readable code, see [`ErrorCode`].
    pub error: String,
    /// A sentence for people.
    pub message: String,
}

macro_rules! error_codes {
    ($($variant:ident => $wire:literal),+ $(,)?) => {
        /// The protocol's error codes.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $(
                #[doc = concat!("`", $wire, "`")]
                $variant,
            )+
        }

        impl ErrorCode {
            /// Every code, in declaration order (`code as usize` is its index).
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $wire,)+ }
            }

            /// Parses the wire spelling.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($wire => Some(ErrorCode::$variant),)+ _ => None }
            }
        }
    };
}

error_codes! {
    BadRequest => "bad_request",
    BadCredentials => "bad_credentials",
    BadSignature => "bad_signature",
    StaleRequest => "stale_request",
    ReplayedRequest => "replayed_request",
    DeviceMismatch => "device_mismatch",
    TokenExpired => "token_expired",
    TokenInvalid => "token_invalid",
    TokenRevoked => "token_revoked",
    RefreshReused => "refresh_reused",
    RefreshLimit => "refresh_limit",
    TicketInvalid => "ticket_invalid",
    RateLimited => "rate_limited",
    QrExpired => "qr_expired",
    SlowDown => "slow_down",
    StoreUnavailable => "store_unavailable",
    ServerBusy => "server_busy",
    TooManyConnections => "too_many_connections",
    NotFound => "not_found",
    PayloadTooLarge => "payload_too_large",
    OriginForbidden => "origin_forbidden",
    Internal => "internal",
    UpstreamUnavailable => "upstream_unavailable",
    Busy => "busy",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes used by the server.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Server shutting down or draining.
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the WebSocket protocol (RFC 6455 §7.4.1).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame or close reason that is not valid UTF-8 (RFC 6455 §7.4.1).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame the protocol does not allow.
    pub const POLICY: u16 = 1008;
    /// Frame or message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The access token expired without a refresh.
    pub const SESSION_EXPIRED: u16 = 4004;
    /// Over the per-connection frame rate.
    pub const FLOOD: u16 = 4008;
    /// The send queue overflowed.
    pub const SLOW_CONSUMER: u16 = 4010;
    /// Kicked, logged out, blocked or revoked.
    pub const REVOKED: u16 = 4503;
    /// Replaced by a newer login of the same user and client type.
    pub const REPLACED: u16 = 4509;

    /// True when a client may reconnect by itself after this close code.
    pub fn may_reconnect(code: u16) -> bool {
        !(4500..=4999).contains(&code)
    }
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame {
    /// The first frame of every connection.
    Welcome {
        /// The session id.
        session_id: String,
        /// This connection's id.
        conn_id: String,
        /// The user id.
        user_id: String,
        /// The device id.
        device_id: String,
        /// Unix seconds when the connection closes with 4004 unless refreshed.
        expires_at: i64,
        /// Only when the client connected with `since`: whether every push after it
        /// follows (`false`: some were lost; resynchronise from the product's service).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// Only when the client connected with `since`: the newest push id of the
        /// user's history (`Some(None)`: the history is empty, sent as `null`).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "present_or_null"
        )]
        last_id: Option<Option<String>>,
    },
    /// A message for this user or device.
    Push {
        /// Message id, for `ack`.
        id: String,
        /// Topic.
        topic: String,
        /// Payload.
        data: serde_json::Value,
    },
    /// The access token enters its renewal window.
    Expiring {
        /// Unix seconds of the current deadline.
        expires_at: i64,
    },
    /// Answer to a `refresh` frame.
    Refreshed {
        /// The new deadline, unix seconds.
        expires_at: i64,
    },
    /// Answer to `ping`.
    Pong,
    /// A frame was refused; the socket stays open. When the refused frame was a
    /// `send`, `id` is its id (absent when none could be read).
    Error {
        /// The `id` of the `send` this answers, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The error code.
        error: String,
        /// A sentence for people.
        message: String,
    },
    /// The answer to a `send`: the upstream's (or the server's handler's) data.
    Reply {
        /// The `id` of the `send` this answers.
        id: String,
        /// The answer.
        data: serde_json::Value,
    },
    /// Sent before a drain close: a ticket to reconnect without a mint.
    Resume {
        /// The one-time ticket.
        ticket: String,
        /// Seconds until it expires.
        expires_in: u64,
    },
}

/// Frames the client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientFrame {
    /// Application-level ping; answered with `pong`.
    Ping,
    /// A newer access token of the same session, to extend the connection.
    Refresh {
        /// The access token.
        access_token: String,
    },
    /// Acknowledges a push.
    Ack {
        /// The push id.
        id: String,
    },
    /// A business message for the upstream; answered by exactly one `reply` or
    /// `error` frame carrying the same `id` (see [`send_id_is_well_formed`]).
    Send {
        /// 1-64 characters of `[A-Za-z0-9_-]`, chosen by the client to pair the answer.
        id: String,
        /// Any JSON.
        data: serde_json::Value,
    },
}

/// Longest `send` id.
pub const MAX_SEND_ID: usize = 64;

/// True when `id` is a well-formed `send` id: 1-64 characters of `[A-Za-z0-9_-]`.
///
/// ```
/// use ticketgate_sdk::protocol::send_id_is_well_formed;
/// assert!(send_id_is_well_formed("req-17_a"));
/// assert!(!send_id_is_well_formed(""));
/// assert!(!send_id_is_well_formed("a b"));
/// ```
pub fn send_id_is_well_formed(id: &str) -> bool {
    (1..=MAX_SEND_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// True when `code` may pass from the upstream to a client as an `error` code:
/// 1-64 characters of `[a-z_]`.
///
/// ```
/// use ticketgate_sdk::protocol::upstream_code_is_well_formed;
/// assert!(upstream_code_is_well_formed("not_allowed"));
/// assert!(!upstream_code_is_well_formed("Not-Allowed"));
/// ```
pub fn upstream_code_is_well_formed(code: &str) -> bool {
    (1..=64).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// The headers of a call from ticketgate to the upstream (PROTOCOL §9).
pub mod upstream_headers {
    /// Unix seconds when the call was signed.
    pub const TIMESTAMP: &str = "X-TG-Upstream-Timestamp";
    /// Lowercase hex HMAC-SHA256 over `"<timestamp>.<raw body>"`.
    pub const SIGNATURE: &str = "X-TG-Upstream-Signature";
}

/// Reads a field that is present (`Some`), even as `null` (`Some(None)`); with
/// `#[serde(default)]` an absent one is `None`. Hand-written: serde has no attribute
/// for "absent or null", and this one function is all it takes.
fn present_or_null<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}
