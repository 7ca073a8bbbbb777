//! Microsoft Entra (Bearer) tokens, locally: what production's only publishing path needs.
//!
//! In Azure the topic has local auth disabled (`disableLocalAuth`) and every sender presents an
//! Entra access token from its managed identity, for the audience `https://eventgrid.azure.net`,
//! whose principal holds the role "EventGrid Data Sender". Locally, `saldo-identity` (the
//! managed-identity endpoint stand-in) signs such tokens with a key it generates at first start
//! (never committed), and the emulator verifies them against its public key.
//!
//! Choices: EdDSA (Ed25519) instead of Entra's RS256, because a key is generated in
//! microseconds; the role is carried in the token's `roles` claim (in Azure the role assignment
//! is looked up by Event Grid, not carried in the token). Answers (Event Grid docs on Entra
//! authentication: a missing, expired, badly signed or wrong-audience token is not authenticated;
//! a principal without the role is not authorised): 401 for the first kind, 403 for the second.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// The Entra resource (audience) of Event Grid data-plane tokens.
pub const AUDIENCE: &str = "https://eventgrid.azure.net";
/// The built-in role that may publish to a topic.
pub const DATA_SENDER_ROLE: &str = "EventGrid Data Sender";
/// The issuer the stand-in writes (any issuer signed by the configured key is accepted).
pub const ISSUER: &str = "https://saldo-identity.local/";

/// The claims of a token, as far as Event Grid looks at them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub aud: String,
    pub iss: String,
    /// The principal (object id of the managed identity).
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

impl Claims {
    /// Claims for `aud` with `roles`, valid from now for `lifetime_secs`.
    pub fn new(aud: &str, sub: &str, roles: &[&str], now: i64, lifetime_secs: i64) -> Self {
        Self {
            aud: aud.into(),
            iss: ISSUER.into(),
            sub: sub.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            iat: now,
            nbf: now,
            exp: now + lifetime_secs,
        }
    }
}

/// The stand-in's signing key (Ed25519, PKCS#8).
pub struct Signer {
    pkcs8: Vec<u8>,
    key: EncodingKey,
    public: Vec<u8>,
}

impl Signer {
    pub fn generate() -> anyhow::Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| anyhow::anyhow!("generating an Ed25519 key failed"))?;
        Self::from_pkcs8(doc.as_ref())
    }

    pub fn from_pkcs8(der: &[u8]) -> anyhow::Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8(der)
            .map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 key: {e}"))?;
        Ok(Self {
            pkcs8: der.to_vec(),
            key: EncodingKey::from_ed_der(der),
            public: pair.public_key().as_ref().to_vec(),
        })
    }

    /// Loads the key at `path` (base64 PKCS#8), or generates one and saves it (mode 0600).
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        if let Ok(text) = std::fs::read_to_string(path) {
            let der = B64
                .decode(text.trim())
                .map_err(|e| anyhow::anyhow!("{} is not base64: {e}", path.display()))?;
            return Self::from_pkcs8(&der);
        }
        let signer = Self::generate()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        f.write_all(B64.encode(&signer.pkcs8).as_bytes())?;
        f.sync_all()?;
        Ok(signer)
    }

    /// The public key (base64 of the 32 raw bytes): what the emulator verifies with.
    pub fn public_key(&self) -> String {
        B64.encode(&self.public)
    }

    pub fn mint(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.key)
            .expect("claims serialise and the key is valid")
    }
}

/// Checks Bearer tokens against the stand-in's public key.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier")
    }
}

impl Verifier {
    /// `public_key`: base64 of the 32 raw bytes of an Ed25519 public key.
    pub fn from_public_key(public_key: &str) -> anyhow::Result<Self> {
        let raw = B64
            .decode(public_key.trim())
            .map_err(|e| anyhow::anyhow!("the Entra public key is not base64: {e}"))?;
        anyhow::ensure!(
            raw.len() == 32,
            "the Entra public key must be 32 bytes (Ed25519), not {}",
            raw.len()
        );
        Ok(Self {
            key: DecodingKey::from_ed_der(&raw),
        })
    }

    /// The claims of a good token for Event Grid with the sender role; Azure's refusal otherwise.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&[AUDIENCE]);
        v.set_required_spec_claims(&["exp", "nbf", "aud"]);
        v.validate_nbf = true;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &v)
            .map_err(|e| {
                let why = match e.kind() {
                    ErrorKind::InvalidAudience => {
                        format!("the token's audience is not {AUDIENCE}")
                    }
                    ErrorKind::ExpiredSignature => "the token has expired".into(),
                    ErrorKind::ImmatureSignature => "the token is not valid yet".into(),
                    ErrorKind::InvalidSignature => "the token's signature is not valid".into(),
                    other => format!("the token cannot be read: {other:?}"),
                };
                ApiError::unauthorized(format!("invalid Microsoft Entra token: {why}"))
            })?
            .claims;
        if !claims.roles.iter().any(|r| r == DATA_SENDER_ROLE) {
            return Err(ApiError::new(
                403,
                "Forbidden",
                "AuthorizationFailed",
                format!(
                    "the principal {} does not have the role {DATA_SENDER_ROLE:?} on this topic",
                    claims.sub
                ),
            ));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn good_tokens_pass_and_each_fault_is_refused_as_azure_does() {
        let s = Signer::generate().unwrap();
        let v = Verifier::from_public_key(&s.public_key()).unwrap();
        let good = s.mint(&Claims::new(
            AUDIENCE,
            "mi",
            &[DATA_SENDER_ROLE],
            now(),
            3600,
        ));
        assert_eq!(v.verify(&good).unwrap().sub, "mi");

        let wrong_aud = s.mint(&Claims::new(
            "https://vault.azure.net",
            "mi",
            &[DATA_SENDER_ROLE],
            now(),
            3600,
        ));
        let e = v.verify(&wrong_aud).unwrap_err();
        assert_eq!(e.status, 401);
        assert!(e.message.contains("audience"), "{e}");

        let no_role = s.mint(&Claims::new(
            AUDIENCE,
            "mi",
            &["EventGrid Data Receiver"],
            now(),
            3600,
        ));
        assert_eq!(v.verify(&no_role).unwrap_err().status, 403);

        let expired = s.mint(&Claims::new(
            AUDIENCE,
            "mi",
            &[DATA_SENDER_ROLE],
            now() - 7200,
            3600,
        ));
        assert!(v.verify(&expired).unwrap_err().message.contains("expired"));

        let other = Signer::generate().unwrap();
        let forged = other.mint(&Claims::new(
            AUDIENCE,
            "mi",
            &[DATA_SENDER_ROLE],
            now(),
            3600,
        ));
        assert!(v.verify(&forged).unwrap_err().message.contains("signature"));

        assert_eq!(v.verify("not-a-jwt").unwrap_err().status, 401);
    }

    #[test]
    fn the_key_is_generated_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let a = Signer::load_or_create(&path).unwrap();
        let b = Signer::load_or_create(&path).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
