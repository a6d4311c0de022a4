//! The users file: TOML, one table per user, argon2id password hashes.
//!
//! ```text
//! [users.alice]
//! password = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! blocked = false
//! ```
//!
//! A running node re-reads the file when its modification time changes (looked at
//! once a second, off the async workers: see [`super::watched`]), so
//! `ticketgate user add/block` take effect within a second. A change that does not
//! parse is logged and the last good copy stays in force.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
#[cfg(test)]
use std::time::SystemTime;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio_util::sync::CancellationToken;

use super::watched::{Watched, RELOAD_EVERY};
use serde::{Deserialize, Serialize};

/// Errors reading or writing the users file.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// File system error.
    #[error("users file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("users file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A user name outside the allowed characters.
    #[error("user name must be 1-64 characters of [A-Za-z0-9_.@-]")]
    BadName,
    /// No such user.
    #[error("no user named {0}")]
    NoSuchUser(String),
    /// Hashing failed.
    #[error("password hashing failed")]
    Hash,
    /// Every password check slot stayed busy for [`MAX_QUEUE_WAIT`] (a login flood).
    #[error("password checks are all busy")]
    Busy,
    /// The blocking task checking a password died.
    #[error("password check task failed: {0}")]
    Task(String),
}

/// One user's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    /// The argon2id PHC string.
    pub password: String,
    /// Blocked users cannot log in.
    #[serde(default)]
    pub blocked: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct UsersFile {
    #[serde(default)]
    users: BTreeMap<String, UserRecord>,
}

/// True for a valid user name.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
}

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| UsersError::Hash)
}

/// Parses the users file's text.
fn parse(text: &str) -> Result<UsersFile, String> {
    super::watched::parse_sections(text, "users", &["password", "blocked"])
}

fn read(path: &Path) -> Result<UsersFile, UsersError> {
    match std::fs::read_to_string(path) {
        // The same strict parse as the server's: rewriting a file with a misspelled
        // key would drop that key.
        Ok(text) => parse(&text).map_err(|message| UsersError::Parse {
            path: path.to_owned(),
            message,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UsersFile::default()),
        Err(source) => Err(UsersError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn write(path: &Path, file: &UsersFile) -> Result<(), UsersError> {
    let text = toml::to_string(file).map_err(|e| UsersError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let io = |source| UsersError::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::write(&tmp, text).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Adds or replaces a user (the `user add` command).
pub fn add_user(path: &Path, name: &str, password: &str) -> Result<(), UsersError> {
    if !is_valid_name(name) {
        return Err(UsersError::BadName);
    }
    let mut file = read(path)?;
    let password = hash_password(password)?;
    file.users.insert(
        name.to_owned(),
        UserRecord {
            password,
            blocked: false,
        },
    );
    write(path, &file)
}

/// Sets a user's blocked flag (the `user block` / `unblock` commands).
pub fn set_blocked(path: &Path, name: &str, blocked: bool) -> Result<(), UsersError> {
    let mut file = read(path)?;
    let user = file
        .users
        .get_mut(name)
        .ok_or_else(|| UsersError::NoSuchUser(name.to_owned()))?;
    user.blocked = blocked;
    write(path, &file)
}

/// Whether a login attempt succeeded. Both failures look the same to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCheck {
    /// Right password, user not blocked.
    Ok,
    /// Unknown user, wrong password, or blocked.
    Refused,
}

/// What unknown users' passwords are checked against, so that they take as long as
/// known ones. A fixed hash (of "ticketgate dummy password", argon2's default
/// parameters, the ones `hash_password` uses) rather than one made at start: hashing
/// at start would cost every node 19 MiB and tens of milliseconds for nothing.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$zzNtXno4iH9qvSslZpOF0g$okX401GWy9EdXRNU/8c+OhRwNqT90Ujjzyo3tS5jft0";

/// The longest a login waits for a password check slot. A check takes tens of
/// milliseconds of one core, so this is a queue of about a hundred logins per core;
/// past it a login is refused (503 `server_busy`) instead of waiting behind a flood.
pub const MAX_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The users file, kept current by [`Users::watch`]; cheap to clone.
#[derive(Clone)]
pub struct Users {
    file: Arc<Watched<UsersFile>>,
    /// Verified against when the user does not exist, so unknown users take as long
    /// as wrong passwords.
    dummy_hash: Arc<String>,
    /// Bounds concurrent argon2 checks: each takes 19 MiB and a core for tens of
    /// milliseconds, so a login storm must queue instead of spawning a blocking thread
    /// (and its memory) per request.
    hashing: Arc<tokio::sync::Semaphore>,
}

impl Users {
    /// Opens (and first reads) the users file; a missing file means no users.
    pub fn open(path: &Path) -> Result<Users, UsersError> {
        let file = Watched::open(Some(path), parse).map_err(|e| UsersError::Parse {
            path: e.path,
            message: e.message,
        })?;
        Ok(Users {
            file: Arc::new(file),
            dummy_hash: Arc::new(DUMMY_HASH.to_owned()),
            hashing: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
        })
    }

    /// Keeps the file current until `stop` (see [`Watched::watch`]).
    pub(crate) async fn watch(self, stop: CancellationToken) {
        self.file.clone().watch(RELOAD_EVERY, stop).await;
    }

    fn current(&self) -> Arc<UsersFile> {
        self.file.current()
    }

    /// Whether the user exists and is blocked.
    pub fn is_blocked(&self, name: &str) -> bool {
        self.current().users.get(name).is_some_and(|u| u.blocked)
    }

    /// Checks a password on a blocking thread, at most one per core at a time, after
    /// waiting at most [`MAX_QUEUE_WAIT`] for a turn.
    pub async fn verify(&self, name: &str, password: String) -> Result<PasswordCheck, UsersError> {
        let _permit = tokio::time::timeout(MAX_QUEUE_WAIT, self.hashing.acquire())
            .await
            .map_err(|_| UsersError::Busy)?
            .map_err(|e| UsersError::Task(e.to_string()))?;
        let (users, name) = (self.clone(), name.to_owned());
        tokio::task::spawn_blocking(move || users.check_password(&name, &password))
            .await
            .map_err(|e| UsersError::Task(e.to_string()))?
    }

    /// Checks a password. CPU-heavy by design (argon2id): call from a blocking thread.
    /// Unknown users are checked against a dummy hash so timing does not tell.
    pub fn check_password(&self, name: &str, password: &str) -> Result<PasswordCheck, UsersError> {
        let file = self.current();
        let record = file.users.get(name);
        let phc = record
            .map(|u| u.password.as_str())
            .unwrap_or(self.dummy_hash.as_str());
        let verified = PasswordHash::new(phc)
            .map(|hash| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok()
            })
            .unwrap_or(false);
        Ok(match record {
            Some(user) if verified && !user.blocked => PasswordCheck::Ok,
            _ => PasswordCheck::Refused,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A login flood must not queue a real login behind it without bound: past the
    /// wait, the check is refused as busy (503 `server_busy` at the edge).
    #[tokio::test(start_paused = true)]
    async fn a_full_password_queue_refuses_after_a_bounded_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        let users = Users::open(&path).expect("open");
        let permits = users.hashing.available_permits() as u32;
        let _all_busy = users.hashing.acquire_many(permits).await.expect("permits");
        let started = tokio::time::Instant::now();
        let verdict = tokio::time::timeout(MAX_QUEUE_WAIT * 10, users.verify("alice", "pw".into()))
            .await
            .expect("the wait is bounded");
        assert!(matches!(verdict, Err(UsersError::Busy)), "{verdict:?}");
        assert_eq!(started.elapsed(), MAX_QUEUE_WAIT);
    }

    #[test]
    fn the_dummy_hash_has_the_parameters_of_real_hashes() {
        let real = hash_password("x").expect("hash");
        let params = |phc: &str| phc.split('$').nth(3).map(str::to_owned);
        assert_eq!(params(DUMMY_HASH), params(&real));
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }

    #[test]
    fn add_check_block_unblock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        add_user(&path, "alice", "pw-alice").expect("add");
        let users = Users::open(&path).expect("open");
        assert_eq!(
            users.check_password("alice", "pw-alice").expect("check"),
            PasswordCheck::Ok
        );
        assert_eq!(
            users.check_password("alice", "wrong").expect("check"),
            PasswordCheck::Refused
        );
        assert_eq!(
            users.check_password("bob", "pw-alice").expect("check"),
            PasswordCheck::Refused
        );
        set_blocked(&path, "alice", true).expect("block");
        // mtime granularity: force a visible change.
        let later = SystemTime::now() + std::time::Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open")
            .set_modified(later)
            .expect("touch");
        assert!(users.file.reload_if_changed().expect("reload"));
        assert_eq!(
            users.check_password("alice", "pw-alice").expect("check"),
            PasswordCheck::Refused
        );
        assert!(users.is_blocked("alice"));
        assert!(matches!(
            set_blocked(&path, "nobody", true),
            Err(UsersError::NoSuchUser(_))
        ));
        assert!(matches!(
            add_user(&path, "bad name", "x"),
            Err(UsersError::BadName)
        ));
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("$argon2id$") && !text.contains("pw-alice"));
    }

    #[test]
    fn unknown_keys_are_refused_by_the_server_and_by_the_cli() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        add_user(&path, "alice", "pw-alice").expect("add");
        let good = std::fs::read_to_string(&path).expect("read");
        for (text, expected) in [
            (
                good.replace("[users.alice]", "[user.alice]"),
                "unknown key `user` (did you mean `users`?)",
            ),
            (
                good.replace("password =", "pasword ="),
                "[users.alice]: unknown key `pasword` (did you mean `password`?)",
            ),
        ] {
            std::fs::write(&path, &text).expect("write");
            let message = Users::open(&path).err().expect("refused").to_string();
            assert!(message.contains(expected), "{message}");
            assert!(message.contains("users.toml"), "{message}");
            // `user add` must not rewrite the file without the misspelled entry.
            assert!(matches!(
                add_user(&path, "bob", "pw-bob"),
                Err(UsersError::Parse { .. })
            ));
            assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
        }
    }
}
