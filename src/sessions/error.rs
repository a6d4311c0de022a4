//! What a session operation can fail with. Mapped once to protocol codes, in
//! `http/error.rs`.

use crate::auth::tokens::TokenError;
use crate::auth::users::UsersError;
use crate::store::StoreError;

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Unknown user, wrong password, unknown app, or a blocked user at login.
    #[error("unknown user or wrong password")]
    BadCredentials,
    /// The session ended (logout, kick, block, replaced) or its user is blocked.
    #[error("session revoked")]
    Revoked,
    /// A refresh token that is not the current one came back: the session is revoked.
    #[error("refresh token reused")]
    RefreshReused,
    /// The daily refresh cap is reached.
    #[error("daily refresh limit reached")]
    RefreshLimit,
    /// The request's device is not the session's.
    #[error("device does not match the session")]
    DeviceMismatch,
    /// An API app holds its cap of live sessions.
    #[error("the app holds its cap of live sessions")]
    TooManySessions,
    /// The request's nonce was seen before.
    #[error("nonce already used")]
    Replayed,
    /// Too many password checks queued: try again shortly.
    #[error("password checks are all busy")]
    Busy,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The users or apps file could not be read.
    #[error("credentials file unreadable: {0}")]
    Credentials(String),
    /// The QR login is unknown, expired, used, or not this caller's: all look alike.
    #[error("QR login expired or unknown")]
    QrExpired,
    /// The polled id was replaced by rotation (told to the QR's owner only).
    #[error("QR login rotated")]
    QrRotated {
        /// The id that replaced it.
        next_qr_id: String,
        /// Seconds the QR still lives.
        expires_in: u64,
        /// Seconds until it is replaced again.
        rotate_in: u64,
    },
    /// Polled sooner than the configured interval; retry after this long.
    #[error("polling too fast")]
    SlowDown(std::time::Duration),
    /// A `login_this` QR can only be scanned with a session (Bearer + signed).
    #[error("scanning this QR needs a logged-in session")]
    QrNeedsSession,
    /// A QR call that cannot be served as asked; the text says why.
    #[error("{0}")]
    QrRefused(&'static str),
    /// An access token could not be signed.
    #[error("signing an access token failed: {0}")]
    Signing(#[from] TokenError),
}

impl From<UsersError> for SessionError {
    fn from(err: UsersError) -> Self {
        match err {
            UsersError::Busy => SessionError::Busy,
            other => SessionError::Credentials(other.to_string()),
        }
    }
}
