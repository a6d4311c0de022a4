//! The API apps file: app ids and their secrets, for `POST /v1/app/login`.
//!
//! ```text
//! [apps.billing-service]
//! secret = "s3cr3t-app-secret"
//! ```
//!
//! The secret is an HMAC key (the app signs its login with it), so the server needs it
//! in clear: keep the file 0600. Re-read when its modification time changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Deserialize;

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

type Cache = (Option<SystemTime>, Arc<AppsFile>);

/// The apps registry; cheap to clone. Without a file there are no apps.
#[derive(Clone, Default)]
pub struct Apps {
    path: Option<PathBuf>,
    cache: Arc<Mutex<Option<Cache>>>,
}

impl Apps {
    /// Opens (and first reads) the apps file.
    pub fn open(path: Option<&Path>) -> Result<Apps, AppsError> {
        let apps = Apps {
            path: path.map(Path::to_owned),
            cache: Arc::default(),
        };
        apps.current()?;
        Ok(apps)
    }

    fn current(&self) -> Result<Arc<AppsFile>, AppsError> {
        let Some(path) = &self.path else {
            return Ok(Arc::default());
        };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        // A std mutex: held only to swap an Arc, never across an await.
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, file)) = cache.as_ref() {
            if *seen == mtime && mtime.is_some() {
                return Ok(file.clone());
            }
        }
        let err = |message: String| AppsError {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: Arc<AppsFile> = Arc::new(toml::from_str(&text).map_err(|e| err(e.to_string()))?);
        *cache = Some((mtime, file.clone()));
        Ok(file)
    }

    /// The secret of an app, as HMAC key bytes.
    pub fn secret(&self, app_id: &str) -> Result<Option<Vec<u8>>, AppsError> {
        Ok(self
            .current()?
            .apps
            .get(app_id)
            .map(|a| a.secret.as_bytes().to_vec()))
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
        assert_eq!(
            apps.secret("billing").expect("read"),
            Some(b"s3cr3t".to_vec())
        );
        assert_eq!(apps.secret("other").expect("read"), None);
        assert_eq!(
            Apps::open(None)
                .expect("none")
                .secret("billing")
                .expect("read"),
            None
        );
        std::fs::write(&path, "not toml [").expect("write");
        assert!(Apps::open(Some(&path)).is_err());
    }
}
