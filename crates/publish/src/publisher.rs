//! The publisher: which credential ([`Auth`]) it uses, chosen by [`Publisher::from_env`], and the
//! publish call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use saldo_core::events::EventGridEvent;
use serde::Serialize;

/// The Entra resource (audience) of Event Grid data-plane tokens.
pub const EVENTGRID_RESOURCE: &str = "https://eventgrid.azure.net";
/// A cached Entra token is refreshed this long before it expires, so a request never leaves
/// with a token that dies on the way.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// How the publisher proves it may send to the topic.
#[derive(Clone)]
pub enum Auth {
    /// `aeg-sas-key: <key>` (local emulator, or a topic with local auth on).
    Key(String),
    /// `aeg-sas-token: <token>`, a token signed with the topic key (see [`sas`]), made fresh for
    /// each request and valid for `valid_for` (tokens are cheap: one HMAC).
    SasToken { key: String, valid_for: Duration },
    /// `Authorization: Bearer <token>` for resource `https://eventgrid.azure.net`, from the App
    /// Service / Functions managed identity.
    Entra(ManagedIdentity),
}

/// Secrets never reach logs: `Debug` names the mode, not the key.
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Key(_) => f.write_str("Key(<redacted>)"),
            Auth::SasToken { valid_for, .. } => write!(
                f,
                "SasToken {{ key: <redacted>, valid_for: {valid_for:?} }}"
            ),
            Auth::Entra(mi) => write!(f, "Entra({})", mi.endpoint),
        }
    }
}

/// Where the managed identity hands out tokens: App Service sets `IDENTITY_ENDPOINT` and
/// `IDENTITY_HEADER` for every app with an identity.
#[derive(Clone)]
pub struct ManagedIdentity {
    pub endpoint: String,
    pub header: String,
}

impl ManagedIdentity {
    /// Reads `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`; `None` when either is missing.
    pub fn from_env() -> Option<Self> {
        let endpoint = std::env::var("IDENTITY_ENDPOINT")
            .ok()
            .filter(|v| !v.is_empty())?;
        let header = std::env::var("IDENTITY_HEADER")
            .ok()
            .filter(|v| !v.is_empty())?;
        Some(Self { endpoint, header })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The topic answered, but refused the events (4xx). Retrying the same events will not help.
    /// A topic key that is not base64 (so no SAS token can be signed) is reported here as 401.
    #[error("topic refused the events ({status}): {body}")]
    Rejected { status: u16, body: String },
    /// The topic (or the managed identity endpoint) could not be reached or answered 5xx/429.
    /// Retry later.
    #[error("topic unavailable: {0}")]
    Unavailable(String),
}

/// Configuration that [`Publisher::from_env`] could not use.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("SALDO_TOPIC_ENDPOINT is not set")]
    NoEndpoint,
    #[error(
        "SALDO_TOPIC_KEY is not set and no managed identity (IDENTITY_ENDPOINT, IDENTITY_HEADER) is available"
    )]
    NoCredential,
}

#[derive(Debug)]
struct CachedToken {
    token: String,
    /// When to fetch a new one (expiry minus the margin).
    refresh_at: Instant,
}

#[derive(Debug, Clone)]
pub struct Publisher {
    endpoint: String,
    auth: Auth,
    http: reqwest::Client,
    /// Entra token shared by clones; a tokio mutex so concurrent publishes wait for one fetch.
    token: Arc<tokio::sync::Mutex<Option<CachedToken>>>,
}

impl Publisher {
    /// `endpoint` is the topic endpoint, e.g. `http://127.0.0.1:7000/api/events`.
    pub fn new(endpoint: impl Into<String>, auth: Auth) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("static reqwest configuration is valid");
        Self {
            endpoint: endpoint.into(),
            auth,
            http,
            token: Default::default(),
        }
    }

    /// `SALDO_TOPIC_ENDPOINT` plus `SALDO_TOPIC_KEY` (key auth); without a key, the managed
    /// identity's Entra token (Azure, where local auth is off).
    pub fn from_env() -> Result<Self, ConfigError> {
        let endpoint = std::env::var("SALDO_TOPIC_ENDPOINT")
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or(ConfigError::NoEndpoint)?;
        let auth = match std::env::var("SALDO_TOPIC_KEY")
            .ok()
            .filter(|v| !v.is_empty())
        {
            Some(key) => Auth::Key(key),
            None => Auth::Entra(ManagedIdentity::from_env().ok_or(ConfigError::NoCredential)?),
        };
        Ok(Self::new(endpoint, auth))
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Publishes a batch of events in one request.
    pub async fn publish<T: Serialize>(
        &self,
        events: &[EventGridEvent<T>],
    ) -> Result<(), PublishError> {
        let req = self
            .http
            .post(&self.endpoint)
            .query(&[("api-version", "2018-01-01")])
            .json(events);
        let req = match &self.auth {
            Auth::Key(k) => req.header("aeg-sas-key", k),
            Auth::SasToken { key, valid_for } => {
                let expires = chrono::Utc::now()
                    + chrono::Duration::from_std(*valid_for).unwrap_or(chrono::Duration::hours(1));
                let token = crate::sas::generate(&self.endpoint, key, expires).map_err(|e| {
                    PublishError::Rejected {
                        status: 401,
                        body: e.to_string(),
                    }
                })?;
                req.header("aeg-sas-token", token)
            }
            Auth::Entra(mi) => req.header(
                "Authorization",
                format!("Bearer {}", self.entra_token(mi).await?),
            ),
        };
        // A client span: the publish shows as a dependency of the purchase's trace.
        let resp = saldo_telemetry::http::send(req)
            .await
            .map_err(|e| PublishError::Unavailable(e.to_string()))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        if status.as_u16() == 401 {
            // A cached Entra token may have been revoked: fetch a new one next time.
            *self.token.lock().await = None;
        }
        if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408 {
            Err(PublishError::Rejected {
                status: status.as_u16(),
                body,
            })
        } else {
            Err(PublishError::Unavailable(format!("{status}: {body}")))
        }
    }

    /// The cached token, or a new one from the identity endpoint
    /// (`GET {IDENTITY_ENDPOINT}?resource=...&api-version=2019-08-01`, header `X-IDENTITY-HEADER`).
    async fn entra_token(&self, mi: &ManagedIdentity) -> Result<String, PublishError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref()
            && Instant::now() < t.refresh_at
        {
            return Ok(t.token.clone());
        }
        let unavailable =
            |what: String| PublishError::Unavailable(format!("managed identity: {what}"));
        let resp = self
            .http
            .get(&mi.endpoint)
            .query(&[
                ("resource", EVENTGRID_RESOURCE),
                ("api-version", "2019-08-01"),
            ])
            .header("X-IDENTITY-HEADER", &mi.header)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| unavailable(e.to_string()))?;
        if !status.is_success() {
            return Err(unavailable(format!("{status}: {body}")));
        }
        let (token, expires_on) = parse_token_response(&body).map_err(unavailable)?;
        let lifetime = (expires_on - chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        let refresh_at = Instant::now() + lifetime.saturating_sub(TOKEN_REFRESH_MARGIN);
        *cached = Some(CachedToken {
            token: token.clone(),
            refresh_at,
        });
        Ok(token)
    }
}

/// Reads `access_token` and `expires_on` (seconds since the epoch, as a string or a number) from
/// the identity endpoint's answer.
fn parse_token_response(body: &str) -> Result<(String, chrono::DateTime<chrono::Utc>), String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    let token = v["access_token"]
        .as_str()
        .ok_or("answer has no access_token")?
        .to_string();
    let secs = match &v["expires_on"] {
        serde_json::Value::String(s) => s.parse::<i64>().ok(),
        serde_json::Value::Number(n) => n.as_i64(),
        _ => None,
    }
    .ok_or("answer has no numeric expires_on")?;
    let expires = chrono::DateTime::from_timestamp(secs, 0).ok_or("expires_on out of range")?;
    Ok((token, expires))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_responses_in_both_shapes() {
        let (t, e) =
            parse_token_response(r#"{"access_token":"abc","expires_on":"1900000000"}"#).unwrap();
        assert_eq!((t.as_str(), e.timestamp()), ("abc", 1_900_000_000));
        let (_, e) =
            parse_token_response(r#"{"access_token":"abc","expires_on":1900000001}"#).unwrap();
        assert_eq!(e.timestamp(), 1_900_000_001);
        assert!(parse_token_response(r#"{"expires_on":"1"}"#).is_err());
        assert!(parse_token_response("nope").is_err());
    }
}
