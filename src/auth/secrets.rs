//! The data dir and the server secret.
//!
//! The data dir (mode 0700) holds `server.secret` (32 random bytes) and the access
//! token signing keys (`jwt/<kid>.pem`), every file 0600. Files are created exclusively
//! (written to a temporary name, then hard-linked into place, which fails if another
//! node got there first), so nodes started together on one shared dir agree.
//!
//! The server secret is never used directly: [`Secrets`] derives one subkey per purpose
//! with HKDF-SHA256, so a key for one purpose reveals nothing about the others.

use std::io::Write;
use std::path::{Path, PathBuf};

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Errors reading or creating the data dir.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// File system error, with the path.
    #[error("{path}: {source}")]
    Io {
        /// The file or dir.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file holds something unexpected.
    #[error("{0}: malformed")]
    Malformed(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SecretsError + '_ {
    move |source| SecretsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates the data dir (0700) if missing.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), SecretsError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    set_mode(dir, 0o700).map_err(io(dir))
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// Writes `contents` to `path` only if `path` does not exist yet, atomically and 0600.
/// Returns false when another writer created it first.
pub(crate) fn create_exclusive(path: &Path, contents: &[u8]) -> Result<bool, SecretsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(&tmp).map_err(io(&tmp))?;
    file.write_all(contents).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(SecretsError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// Reads the server secret from the data dir, creating it on first start.
pub(crate) fn load_or_create_server_secret(dir: &Path) -> Result<[u8; 32], SecretsError> {
    ensure_dir(dir)?;
    let path = dir.join("server.secret");
    if !path.exists() {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        create_exclusive(&path, hex::encode(secret).as_bytes())?;
    }
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let bytes = hex::decode(text.trim()).map_err(|_| SecretsError::Malformed(path.clone()))?;
    bytes
        .try_into()
        .map_err(|_| SecretsError::Malformed(path.clone()))
}

/// Per-purpose subkeys of the server secret.
#[derive(Clone)]
pub(crate) struct Secrets {
    signing_key_root: [u8; 32],
    ticket_mac: [u8; 32],
    refresh: [u8; 32],
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(<redacted>)")
    }
}

/// The version byte in session ids and tickets; bump it when the derivation changes.
pub(crate) const SECRET_VERSION: char = '1';

impl Secrets {
    /// Derives every subkey from the server secret.
    pub(crate) fn derive(server_secret: &[u8; 32]) -> Secrets {
        let hk = Hkdf::<Sha256>::new(Some(b"ticketgate"), server_secret);
        let sub = |info: &[u8]| {
            let mut out = [0u8; 32];
            // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
            if hk.expand(info, &mut out).is_err() {
                unreachable!("HKDF output length is valid");
            }
            out
        };
        Secrets {
            signing_key_root: sub(b"v1/session-signing-key"),
            ticket_mac: sub(b"v1/ticket-mac"),
            refresh: sub(b"v1/refresh-token"),
            fingerprint: sub(b"v1/deployment-fingerprint"),
        }
    }

    /// A public name of the server secret: nodes that share a Redis compare it to find
    /// a node started with other secrets. A one-way HKDF output of its own label: it
    /// tells nothing about the secret or the other subkeys.
    pub(crate) fn fingerprint(&self) -> String {
        hex::encode(&self.fingerprint[..16])
    }

    /// The session's request signing key, derived from the session id, so verifying a
    /// signature needs no store round trip.
    pub(crate) fn session_signing_key(&self, session_id: &str) -> [u8; 32] {
        hmac32(&self.signing_key_root, session_id.as_bytes())
    }

    /// The key that MACs tickets.
    pub(crate) fn ticket_mac_key(&self) -> &[u8; 32] {
        &self.ticket_mac
    }

    /// The key that hashes refresh tokens before they are stored.
    pub(crate) fn refresh_key(&self) -> &[u8; 32] {
        &self.refresh
    }
}

/// HMAC-SHA256 of `msg` under `key`.
pub(crate) fn hmac32(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_created_once_with_private_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let a = load_or_create_server_secret(&data).expect("create");
        let b = load_or_create_server_secret(&data).expect("read");
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode(&data), 0o700);
            assert_eq!(mode(&data.join("server.secret")), 0o600);
        }
    }

    #[test]
    fn exclusive_create_keeps_the_first_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        assert!(create_exclusive(&p, b"first").expect("write"));
        assert!(!create_exclusive(&p, b"second").expect("write"));
        assert_eq!(std::fs::read(&p).expect("read"), b"first");
    }

    #[test]
    fn subkeys_differ_per_purpose_and_per_session() {
        let s = Secrets::derive(&[7u8; 32]);
        assert_ne!(s.ticket_mac_key(), s.refresh_key());
        assert_ne!(s.session_signing_key("1a"), s.session_signing_key("1b"));
        let fingerprint = s.fingerprint();
        assert_eq!(fingerprint.len(), 32);
        assert_eq!(Secrets::derive(&[7u8; 32]).fingerprint(), fingerprint);
        assert_ne!(Secrets::derive(&[8u8; 32]).fingerprint(), fingerprint);
        for subkey in [s.ticket_mac_key(), s.refresh_key()] {
            assert!(!hex::encode(subkey).contains(&fingerprint));
        }
        assert_eq!(
            s.session_signing_key("1a"),
            Secrets::derive(&[7u8; 32]).session_signing_key("1a")
        );
    }
}
