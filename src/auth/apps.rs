//! The API apps file: app ids and their secrets, for `POST /v1/app/login`.
//!
//! ```text
//! [apps.billing-service]
//! secret = "s3cr3t-app-secret"
//! ```
//!
//! The secret is an HMAC key (the app signs its login with it), so the server needs it
//! in clear: keep the file 0600. Re-read when its modification time changes, off the
//! async workers (see [`super::watched`]); a change that does not parse is logged and
//! the last good copy stays in force.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::watched::{Watched, RELOAD_EVERY};

/// Errors reading the apps file.
#[derive(Debug, thiserror::Error)]
#[error("apps file {path}: {message}")]
pub struct AppsError {
    path: PathBuf,
    message: String,
}

#[derive(Debug, Default, Deserialize)]
struct AppsFile {
    #[serde(default)]
    apps: BTreeMap<String, AppRecord>,
}

#[derive(Debug, Deserialize)]
struct AppRecord {
    secret: String,
}

/// The apps registry, kept current by [`Apps::watch`]; cheap to clone. Without a
/// file there are no apps.
#[derive(Clone)]
pub(crate) struct Apps {
    file: Arc<Watched<AppsFile>>,
}

impl Apps {
    /// Opens (and first reads) the apps file.
    pub(crate) fn open(path: Option<&Path>) -> Result<Apps, AppsError> {
        let parse =
            |text: &str| super::watched::parse_sections::<AppsFile>(text, "apps", &["secret"]);
        let file = Watched::open(path, parse).map_err(|e| AppsError {
            path: e.path,
            message: e.message,
        })?;
        Ok(Apps {
            file: Arc::new(file),
        })
    }

    /// Keeps the file current until `stop` (see [`Watched::watch`]).
    pub(crate) async fn watch(self, stop: CancellationToken) {
        self.file.clone().watch(RELOAD_EVERY, stop).await;
    }

    /// The secret of an app, as HMAC key bytes.
    pub(crate) fn secret(&self, app_id: &str) -> Option<Vec<u8>> {
        self.file
            .current()
            .apps
            .get(app_id)
            .map(|a| a.secret.as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_read_and_missing_apps_are_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("apps.toml");
        std::fs::write(&path, "[apps.billing]\nsecret = \"s3cr3t\"\n").expect("write");
        let apps = Apps::open(Some(&path)).expect("open");
        assert_eq!(apps.secret("billing"), Some(b"s3cr3t".to_vec()));
        assert_eq!(apps.secret("other"), None);
        assert_eq!(Apps::open(None).expect("none").secret("billing"), None);
        std::fs::write(&path, "not toml [").expect("write");
        assert!(Apps::open(Some(&path)).is_err());
    }

    #[test]
    fn unknown_keys_are_refused_with_the_file_and_the_nearest_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("apps.toml");
        for (text, expected) in [
            (
                "[app.billing]\nsecret = \"s3cr3t\"\n",
                "unknown key `app` (did you mean `apps`?)",
            ),
            (
                "[apps.billing]\nsecet = \"s3cr3t\"\n",
                "[apps.billing]: unknown key `secet` (did you mean `secret`?)",
            ),
        ] {
            std::fs::write(&path, text).expect("write");
            let message = Apps::open(Some(&path)).err().expect("refused").to_string();
            assert!(message.contains(expected), "{message}");
            assert!(message.contains("apps.toml"), "{message}");
        }
    }
}
