//! Access tokens: JWTs signed with Ed25519 (`alg: EdDSA`), a `kid` in the header.
//!
//! Keys live in the data dir as `jwt/<kid>.pem` (PKCS#8). Every key present verifies.
//! `kid`s sort by creation time (`k<unix secs>-<random>`), so "newest" needs no
//! metadata file. Nodes reload the dir every `TICKETGATE_KEY_RELOAD`; a new key starts
//! signing only once it is two reload periods old, so every node of the deployment can
//! verify its tokens by then. `keys rotate` deletes keys whose last token has expired.
//!
//! Verification is stateless and strict: the algorithm must be EdDSA (never `none`,
//! never HMAC with the public key), the `kid` must be known, and `exp`, `iat`, `aud`,
//! `iss`, `sub`, `sid`, `did`, `ctp` and `jti` must all be present and valid.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use ticketgate_sdk::ClientType;

use super::secrets::{create_exclusive, ensure_dir, SecretsError};

/// The `kid` of a deployment's first key (its creation time reads as 0: always ripe).
const FIRST_KID: &str = "k000000000000-first";

/// The `iss` of every access token.
pub const ISSUER: &str = "ticketgate";
/// The `aud` of every access token.
pub const AUDIENCE: &str = "ticketgate";

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// User id.
    pub sub: String,
    /// Audience.
    pub aud: String,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Token id.
    pub jti: String,
    /// Session id.
    pub sid: String,
    /// Device id.
    pub did: String,
    /// Client type.
    pub ctp: ClientType,
}

/// Why an access token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Past its `exp` (beyond the leeway).
    #[error("access token expired")]
    Expired,
    /// Anything else: bad signature, algorithm, `kid`, claims, encoding.
    #[error("access token invalid")]
    Invalid,
}

struct SigningKey {
    kid: String,
    encoding: EncodingKey,
}

/// The access token keys: the newest signs, all verify.
#[derive(Clone)]
pub struct KeyRing {
    signer: Arc<SigningKey>,
    verifiers: Arc<BTreeMap<String, (DecodingKey, [u8; 32])>>,
    leeway: Duration,
}

fn key_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("jwt")
}

fn new_kid() -> String {
    format!("k{:012}-{}", super::unix_now(), &super::random_b64(6)[..6])
}

impl KeyRing {
    /// Loads every key from the data dir, creating the first one on first start.
    pub fn load_or_create(data_dir: &Path, leeway: Duration) -> Result<KeyRing, SecretsError> {
        let dir = key_dir(data_dir);
        ensure_dir(data_dir)?;
        ensure_dir(&dir)?;
        if read_keys(&dir)?.is_empty() {
            // A fixed name, created exclusively: nodes started together on an empty
            // data dir all end up with this one key instead of one each.
            let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
            let pem = key
                .to_pkcs8_pem(Default::default())
                .map_err(|_| SecretsError::Malformed(dir.clone()))?;
            create_exclusive(&dir.join(format!("{FIRST_KID}.pem")), pem.as_bytes())?;
        }
        KeyRing::load(data_dir, leeway, Duration::ZERO)
    }

    /// Loads every key from the data dir. The signer is the newest key at least
    /// `activation` old (or the newest key, when none is that old yet).
    pub fn load(
        data_dir: &Path,
        leeway: Duration,
        activation: Duration,
    ) -> Result<KeyRing, SecretsError> {
        let dir = key_dir(data_dir);
        let keys = read_keys(&dir)?;
        let ripe = super::unix_now() - activation.as_secs() as i64;
        let signer = keys
            .iter()
            .rev()
            .find(|(kid, _)| kid_created(kid).is_some_and(|t| t <= ripe))
            .or_else(|| keys.iter().next_back());
        let Some((kid, newest)) = signer else {
            return Err(SecretsError::Malformed(dir));
        };
        let der = newest
            .to_pkcs8_der()
            .map_err(|_| SecretsError::Malformed(dir.join(kid)))?;
        let encoding = EncodingKey::from_ed_der(der.as_bytes());
        let signer = Arc::new(SigningKey {
            kid: kid.clone(),
            encoding,
        });
        let verifiers = keys
            .iter()
            .map(|(kid, key)| {
                let public = key.verifying_key().to_bytes();
                (kid.clone(), (DecodingKey::from_ed_der(&public), public))
            })
            .collect();
        Ok(KeyRing {
            signer,
            verifiers: Arc::new(verifiers),
            leeway,
        })
    }

    /// Adds a new signing key to the data dir and returns its `kid`. With
    /// `retire_after` (activation delay + access lifetime + leeway), keys superseded
    /// longer ago than that are deleted: no token they signed is still valid.
    pub fn rotate(data_dir: &Path, retire_after: Option<Duration>) -> Result<String, SecretsError> {
        let dir = key_dir(data_dir);
        ensure_dir(data_dir)?;
        ensure_dir(&dir)?;
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = key
            .to_pkcs8_pem(Default::default())
            .map_err(|_| SecretsError::Malformed(dir.clone()))?;
        let kid = new_kid();
        create_exclusive(&dir.join(format!("{kid}.pem")), pem.as_bytes())?;
        if let Some(retire_after) = retire_after {
            let kids: Vec<String> = read_keys(&dir)?.into_keys().collect();
            let cutoff = super::unix_now() - retire_after.as_secs() as i64;
            for pair in kids.windows(2) {
                if kid_created(&pair[1]).is_some_and(|t| t < cutoff) {
                    let _ = std::fs::remove_file(dir.join(format!("{}.pem", pair[0])));
                }
            }
        }
        Ok(kid)
    }

    /// The `kid` that signs new tokens.
    pub fn current_kid(&self) -> &str {
        &self.signer.kid
    }

    /// Every `kid` that verifies, oldest first, with its creation time (unix seconds;
    /// `None` for a name not of the form `k<secs>-<random>`; 0 for the first key).
    pub fn verifying_kids(&self) -> Vec<(String, Option<i64>)> {
        self.verifiers
            .keys()
            .map(|kid| (kid.clone(), kid_created(kid)))
            .collect()
    }

    /// Signs `claims`.
    pub fn issue(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.signer.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.signer.encoding)
            .map_err(|_| TokenError::Invalid)
    }

    /// Verifies a token and returns its claims.
    ///
    /// # Errors
    /// [`TokenError::Expired`] past `exp` + leeway; [`TokenError::Invalid`] for
    /// everything else, including `alg: none`, another algorithm and an unknown `kid`.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > 4096 {
            return Err(TokenError::Invalid);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid);
        }
        let kid = header.kid.ok_or(TokenError::Invalid)?;
        let (key, _) = self.verifiers.get(&kid).ok_or(TokenError::Invalid)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = self.leeway.as_secs();
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iat", "aud", "iss", "sub"]);
        validation.validate_nbf = true;
        match jsonwebtoken::decode::<Claims>(token, key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                Err(TokenError::Expired)
            }
            Err(_) => Err(TokenError::Invalid),
        }
    }

    /// The JSON Web Key Set of every verifying key.
    pub fn jwks(&self) -> serde_json::Value {
        use base64::Engine;
        let keys: Vec<_> = self
            .verifiers
            .iter()
            .map(|(kid, (_, public))| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
                    "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public),
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

/// The creation time encoded in a `kid` (`k<unix secs>-<random>`).
fn kid_created(kid: &str) -> Option<i64> {
    kid.strip_prefix('k')?.split('-').next()?.parse().ok()
}

/// Verified tokens kept at most; past it the cache starts over (a bound, not an LRU:
/// a miss only costs one signature check).
const VERIFIED_CACHE_MAX: usize = 100_000;

/// The key ring of a running node, reloaded from the data dir on a timer.
///
/// It also remembers tokens it verified, keyed by the SHA-256 of the whole token: a
/// client mints many tickets with one access token, and an Ed25519 check costs about
/// a hundred times more than the hash. A hit is an exact match of a token that
/// verified, and `exp` is checked again on every hit; revocation is not this cache's
/// business (the store decides it on every mint).
#[derive(Clone)]
pub struct KeyStore {
    ring: Arc<std::sync::RwLock<KeyRing>>,
    data_dir: PathBuf,
    activation: Duration,
    verified: Arc<dashmap::DashMap<[u8; 32], Claims>>,
}

impl KeyStore {
    /// Loads (or creates) the keys; `reload_every` sets the activation delay of new keys.
    pub fn open(
        data_dir: &Path,
        leeway: Duration,
        reload_every: Duration,
    ) -> Result<KeyStore, SecretsError> {
        KeyRing::load_or_create(data_dir, leeway)?;
        let activation = reload_every * 2;
        let ring = KeyRing::load(data_dir, leeway, activation)?;
        Ok(KeyStore {
            ring: Arc::new(std::sync::RwLock::new(ring)),
            data_dir: data_dir.to_owned(),
            activation,
            verified: Arc::default(),
        })
    }

    /// The current ring (cheap: shared keys).
    pub fn current(&self) -> KeyRing {
        // A std lock held only to clone Arcs, never across an await.
        self.ring.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the data dir; on error the previous keys stay in use.
    pub fn reload(&self) -> Result<(), SecretsError> {
        let leeway = self.current().leeway;
        let ring = KeyRing::load(&self.data_dir, leeway, self.activation)?;
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = ring;
        Ok(())
    }

    /// See [`KeyRing::issue`].
    pub fn issue(&self, claims: &Claims) -> Result<String, TokenError> {
        self.current().issue(claims)
    }

    /// See [`KeyRing::verify`]; tokens verified before are answered from the cache.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        use sha2::Digest;
        let ring = self.current();
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(claims) = self.verified.get(&digest) {
            let leeway = i64::try_from(ring.leeway.as_secs()).unwrap_or(0);
            if claims.exp + leeway < super::unix_now() {
                return Err(TokenError::Expired);
            }
            return Ok(claims.clone());
        }
        let claims = ring.verify(token)?;
        if self.verified.len() >= VERIFIED_CACHE_MAX {
            self.verified.clear();
        }
        self.verified.insert(digest, claims.clone());
        Ok(claims)
    }

    /// Drops cached verifications of expired tokens (called by the node's sweeper).
    pub fn sweep(&self) {
        let now = super::unix_now();
        self.verified.retain(|_, c| c.exp >= now);
    }

    /// See [`KeyRing::jwks`].
    pub fn jwks(&self) -> serde_json::Value {
        self.current().jwks()
    }
}

fn read_keys(dir: &Path) -> Result<BTreeMap<String, ed25519_dalek::SigningKey>, SecretsError> {
    let mut keys = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|source| SecretsError::Io {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        let (Some(stem), Some("pem")) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        let pem = std::fs::read_to_string(&path).map_err(|source| SecretsError::Io {
            path: path.clone(),
            source,
        })?;
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
            .map_err(|_| SecretsError::Malformed(path.clone()))?;
        keys.insert(stem.to_owned(), key);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn claims(exp_in: i64) -> Claims {
        let now = crate::auth::unix_now();
        Claims {
            iss: ISSUER.into(),
            sub: "alice".into(),
            aud: AUDIENCE.into(),
            exp: now + exp_in,
            iat: now,
            jti: "j1".into(),
            sid: "1abc".into(),
            did: "3f1c2a9e-6b7d-4e0f-9a51-2c8d7e4b1f60".into(),
            ctp: ClientType::Mobile,
        }
    }

    fn ring() -> (tempfile::TempDir, KeyRing) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ring = KeyRing::load_or_create(dir.path(), Duration::from_secs(0)).expect("keys");
        (dir, ring)
    }

    fn b64(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn issued_tokens_verify() {
        let (_d, ring) = ring();
        let t = ring.issue(&claims(60)).expect("issue");
        assert_eq!(ring.verify(&t).expect("valid"), claims(60));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let (_d, ring) = ring();
        let t = ring.issue(&claims(-10)).expect("issue");
        assert_eq!(ring.verify(&t), Err(TokenError::Expired));
    }

    #[test]
    fn alg_none_is_refused() {
        let (_d, ring) = ring();
        let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": ring.current_kid()});
        let body = serde_json::to_value(claims(60)).expect("json");
        let t = format!("{}.{}.", b64(&header), b64(&body));
        assert_eq!(ring.verify(&t), Err(TokenError::Invalid));
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        let (_d, ring) = ring();
        let public = ring.verifiers.values().next().expect("key").1;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(ring.current_kid().to_owned());
        let t = jsonwebtoken::encode(&header, &claims(60), &EncodingKey::from_secret(&public))
            .expect("encode");
        assert_eq!(ring.verify(&t), Err(TokenError::Invalid));
    }

    #[test]
    fn unknown_kid_wrong_aud_iss_missing_claims_and_tampering_are_refused() {
        let (dir, ring) = ring();
        let good = ring.issue(&claims(60)).expect("issue");
        // Tampered payload, signature kept.
        let parts: Vec<&str> = good.split('.').collect();
        let mut c = claims(60);
        c.sub = "mallory".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(&serde_json::to_value(&c).expect("json")),
            parts[2]
        );
        assert_eq!(ring.verify(&forged), Err(TokenError::Invalid));
        // Wrong aud, wrong iss.
        for (aud, iss) in [("other", ISSUER), (AUDIENCE, "other")] {
            let mut c = claims(60);
            c.aud = aud.into();
            c.iss = iss.into();
            let t = ring.issue(&c).expect("issue");
            assert_eq!(
                ring.verify(&t),
                Err(TokenError::Invalid),
                "aud={aud} iss={iss}"
            );
        }
        // Missing aud / iss / sub: signed with our key, claims stripped.
        for missing in ["aud", "iss", "sub", "sid"] {
            let mut v = serde_json::to_value(claims(60)).expect("json");
            v.as_object_mut().expect("object").remove(missing);
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some(ring.current_kid().to_owned());
            let t = jsonwebtoken::encode(&header, &v, &ring.signer.encoding).expect("encode");
            assert_eq!(
                ring.verify(&t),
                Err(TokenError::Invalid),
                "missing {missing}"
            );
        }
        // A token signed by a key this ring does not know.
        let other = tempfile::tempdir().expect("tempdir");
        let foreign = KeyRing::load_or_create(other.path(), Duration::ZERO).expect("keys");
        let t = foreign.issue(&claims(60)).expect("issue");
        assert_eq!(ring.verify(&t), Err(TokenError::Invalid));
        drop(dir);
    }

    #[test]
    fn not_yet_valid_tokens_are_refused_beyond_the_leeway() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ring = KeyRing::load_or_create(dir.path(), Duration::from_secs(5)).expect("keys");
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(ring.current_kid().to_owned());
        let with_nbf = |nbf: i64| {
            let mut v = serde_json::to_value(claims(600)).expect("json");
            v["nbf"] = serde_json::json!(crate::auth::unix_now() + nbf);
            jsonwebtoken::encode(&header, &v, &ring.signer.encoding).expect("encode")
        };
        assert_eq!(ring.verify(&with_nbf(120)), Err(TokenError::Invalid));
        assert!(ring.verify(&with_nbf(2)).is_ok(), "within the leeway");
    }

    #[test]
    fn after_rotation_old_tokens_still_verify_and_the_new_key_signs() {
        let (dir, ring) = ring();
        let old = ring.issue(&claims(60)).expect("issue");
        let new_kid = KeyRing::rotate(dir.path(), None).expect("rotate");
        let ring2 = KeyRing::load(dir.path(), Duration::ZERO, Duration::ZERO).expect("load");
        assert_eq!(ring2.current_kid(), new_kid);
        assert!(ring2.verify(&old).is_ok());
        assert_eq!(ring2.jwks()["keys"].as_array().map(Vec::len), Some(2));
        // A node that has not waited the activation delay keeps signing with the old
        // key, but already verifies the new one.
        let cautious =
            KeyRing::load(dir.path(), Duration::ZERO, Duration::from_secs(3600)).expect("load");
        assert_eq!(cautious.current_kid(), ring.current_kid());
        assert!(cautious
            .verify(&ring2.issue(&claims(60)).expect("issue"))
            .is_ok());
    }

    #[test]
    fn rotation_retires_keys_whose_tokens_have_expired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let jwt = dir.path().join("jwt");
        ensure_dir(dir.path()).expect("dir");
        ensure_dir(&jwt).expect("dir");
        // Two old keys (created a day ago and an hour ago) written by hand.
        for (age, name) in [(86_400, "a"), (3_600, "b")] {
            let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
            let pem = key.to_pkcs8_pem(Default::default()).expect("pem");
            let kid = format!("k{:012}-{name}", crate::auth::unix_now() - age);
            std::fs::write(jwt.join(format!("{kid}.pem")), pem.as_bytes()).expect("write");
        }
        KeyRing::rotate(dir.path(), Some(Duration::from_secs(1800))).expect("rotate");
        let ring = KeyRing::load(dir.path(), Duration::ZERO, Duration::ZERO).expect("load");
        // The day-old key was superseded an hour ago (> 30 min): gone. The hour-old key
        // was superseded just now: kept.
        assert_eq!(ring.jwks()["keys"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn the_verification_cache_answers_only_exact_tokens_and_rechecks_expiry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            KeyStore::open(dir.path(), Duration::ZERO, Duration::from_secs(10)).expect("keys");
        let token = store.issue(&claims(1)).expect("issue");
        assert!(store.verify(&token).is_ok());
        assert!(store.verify(&token).is_ok(), "from the cache");
        // A one-character change is a different token: verified from scratch, refused.
        let mut tampered = token.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert_eq!(store.verify(&tampered), Err(TokenError::Invalid));
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(
            store.verify(&token),
            Err(TokenError::Expired),
            "expiry rechecked on a hit"
        );
        store.sweep();
        assert!(store.verified.is_empty());
    }

    #[test]
    fn garbage_never_panics() {
        let (_d, ring) = ring();
        for t in [
            "",
            ".",
            "..",
            "a.b.c",
            "eyJ.eyJ.x",
            &"A".repeat(5000),
            "\u{0}\u{1}",
        ] {
            assert!(ring.verify(t).is_err());
        }
    }
}
