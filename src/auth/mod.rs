//! Authentication: the credential, session, access and connection layers.
//!
//! - [`secrets`]: the data dir, the server secret and its per-purpose subkeys.
//! - [`tokens`]: access tokens (JWT, EdDSA, `kid`), issued and verified statelessly.
//! - [`signing`]: verification of signed requests (`X-TG-*` headers).
//! - [`ticket`]: the self-authenticating one-time ticket format.
//! - [`users`]: the users file (argon2id hashes) and password checks.
//! - [`apps`]: the API apps file (app id → secret).
//! - [`watched`]: files reloaded off the async workers (users, apps).
//! - [`refresh`]: session ids, refresh tokens and their stored hash.

pub(crate) mod apps;
pub(crate) mod refresh;
pub(crate) mod secrets;
pub(crate) mod signing;
pub(crate) mod ticket;
pub mod tokens;
pub mod users;
pub(crate) mod watched;

pub use crate::clock::{unix_now, unix_now_ms};

/// `n` random bytes for an identifier that is not a secret (connection ids, request
/// ids), base64url: the thread's generator, no system call per id.
pub fn random_id(n: usize) -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut buf = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// `n` random bytes from the OS, base64url without padding: for every secret.
pub fn random_b64(n: usize) -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut buf = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}
