//! Access tokens: JWTs signed with Ed25519 (`alg: EdDSA`), a `kid` in the header.
//!
//! Keys live in the data dir as `jwt/<kid>.pem` (PKCS#8). The newest key signs; every
//! key present verifies. `kid`s sort by creation time (`k<unix secs>-<random>`), so
//! "newest" needs no metadata file.
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
            KeyRing::rotate(data_dir)?;
        }
        KeyRing::load(data_dir, leeway)
    }

    /// Loads every key from the data dir.
    pub fn load(data_dir: &Path, leeway: Duration) -> Result<KeyRing, SecretsError> {
        let dir = key_dir(data_dir);
        let keys = read_keys(&dir)?;
        let Some((kid, newest)) = keys.iter().next_back() else {
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

    /// Adds a new signing key to the data dir and returns its `kid`.
    pub fn rotate(data_dir: &Path) -> Result<String, SecretsError> {
        let dir = key_dir(data_dir);
        ensure_dir(data_dir)?;
        ensure_dir(&dir)?;
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = key
            .to_pkcs8_pem(Default::default())
            .map_err(|_| SecretsError::Malformed(dir.clone()))?;
        let kid = new_kid();
        create_exclusive(&dir.join(format!("{kid}.pem")), pem.as_bytes())?;
        Ok(kid)
    }

    /// The `kid` that signs new tokens.
    pub fn current_kid(&self) -> &str {
        &self.signer.kid
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
    fn after_rotation_old_tokens_still_verify_and_the_new_key_signs() {
        let (dir, ring) = ring();
        let old = ring.issue(&claims(60)).expect("issue");
        let new_kid = KeyRing::rotate(dir.path()).expect("rotate");
        let ring2 = KeyRing::load(dir.path(), Duration::ZERO).expect("load");
        assert_eq!(ring2.current_kid(), new_kid);
        assert!(ring2.verify(&old).is_ok());
        assert_eq!(ring2.jwks()["keys"].as_array().map(Vec::len), Some(2));
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
