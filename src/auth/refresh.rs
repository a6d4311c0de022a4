//! Session ids and refresh tokens: their formats and the stored hash.
//!
//! A session id is `1` (the secret version) followed by 128 random bits, base64url. The
//! session's signing key is derived from the id (see `secrets`), so it is never stored.
//! The refresh token is `<sid>.<256 random bits>`; only its keyed hash is stored.

use super::random_b64;
use super::secrets::{hmac32, SECRET_VERSION};

/// A fresh session id.
pub(crate) fn new_session_id() -> String {
    format!("{SECRET_VERSION}{}", random_b64(16))
}

/// A fresh refresh token for `session_id`.
pub(crate) fn new_refresh_token(session_id: &str) -> String {
    format!("{session_id}.{}", random_b64(32))
}

/// The stored form of a refresh token: keyed hash, lowercase hex.
pub(crate) fn refresh_hash(key: &[u8; 32], refresh_token: &str) -> String {
    hex::encode(hmac32(key, refresh_token.as_bytes()))
}

/// The session id of a refresh token `<sid>.<random>`, if it has that form.
pub(crate) fn refresh_token_session(token: &str) -> Option<&str> {
    let (sid, random) = token.split_once('.')?;
    let id_char = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let ok = sid.len() == 23
        && sid.starts_with(SECRET_VERSION)
        && sid.bytes().all(id_char)
        && random.len() == 43
        && random.bytes().all(id_char);
    ok.then_some(sid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_refresh_token_names_its_session() {
        let sid = new_session_id();
        let token = new_refresh_token(&sid);
        assert_eq!(refresh_token_session(&token), Some(sid.as_str()));
        assert_eq!(refresh_token_session("x.y"), None);
        assert_eq!(refresh_token_session(&format!("{sid}.short")), None);
    }
}
