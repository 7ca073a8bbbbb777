//! Who may publish and manage: the topic key (`aeg-sas-key` header or query), a SAS token
//! signed with it (`aeg-sas-token` header or `Authorization: SharedAccessSignature <token>`), or
//! a Microsoft Entra token (`Authorization: Bearer <token>`, see `entra.rs`) when the emulator
//! knows the identity stand-in's public key. With local auth disabled (Azure's
//! `disableLocalAuth`) only Entra tokens are accepted. SAS checking itself lives in
//! `saldo_publish::sas`, shared with the publisher.

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use saldo_publish::sas;

use crate::entra::Verifier;
use crate::error::ApiError;

/// What a route accepts.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub key: &'a str,
    /// Verifies Bearer tokens; `None`: Bearer tokens are refused.
    pub entra: Option<&'a Verifier>,
    /// False when local auth is disabled: keys and SAS tokens are refused.
    pub local_auth: bool,
}

impl<'a> Policy<'a> {
    /// Keys and SAS tokens only.
    pub fn key_only(key: &'a str) -> Self {
        Self {
            key,
            entra: None,
            local_auth: true,
        }
    }
}

/// Compares without an early exit, so the time taken does not reveal how much of a key matched.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| {
            urlencoding::decode(&v.replace('+', " "))
                .map(|c| c.into_owned())
                .unwrap_or_default()
        })
    })
}

/// Checks the credentials of one request. `request_uri` is the full URI the client called
/// (scheme, `Host` header, path and query): SAS tokens are scoped to it.
pub fn check(
    headers: &HeaderMap,
    query: &str,
    request_uri: &str,
    policy: &Policy<'_>,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(token) = header("authorization").and_then(|a| a.strip_prefix("Bearer ")) {
        return match policy.entra {
            Some(v) => v.verify(token.trim()).map(|_| ()),
            // Choice: without the identity stand-in's key there is nothing to verify against.
            None => Err(ApiError::unauthorized(
                "Microsoft Entra (Bearer) tokens are not accepted: the emulator was started without --entra-public-key-file; use aeg-sas-key or a SAS token",
            )),
        };
    }
    let local = header("aeg-sas-key").is_some()
        || header("aeg-sas-token").is_some()
        || header("authorization").is_some()
        || query_param(query, "aeg-sas-key").is_some();
    if local && !policy.local_auth {
        return Err(ApiError::unauthorized(
            "local authentication (keys and SAS tokens) is disabled on this topic (disableLocalAuth): publish with a Microsoft Entra token",
        ));
    }
    let key = policy.key;
    if let Some(given) = header("aeg-sas-key") {
        return if same(given, key) {
            Ok(())
        } else {
            Err(ApiError::unauthorized(
                "the aeg-sas-key does not match the topic's key",
            ))
        };
    }
    if let Some(given) = query_param(query, "aeg-sas-key") {
        return if same(&given, key) {
            Ok(())
        } else {
            Err(ApiError::unauthorized(
                "the aeg-sas-key does not match the topic's key",
            ))
        };
    }
    let token = match (header("aeg-sas-token"), header("authorization")) {
        (Some(t), _) => Some(t.to_string()),
        (None, Some(a)) => {
            if let Some(t) = a.strip_prefix("SharedAccessSignature ") {
                Some(t.trim().to_string())
            } else {
                return Err(ApiError::unauthorized("unsupported Authorization scheme"));
            }
        }
        (None, None) => None,
    };
    match token {
        // A token that cannot be read is a bad request; one that reads but does not hold is 401.
        Some(t) => sas::verify(&t, key, request_uri, now).map_err(|e| match e {
            sas::SasError::Malformed(_) => {
                ApiError::bad_request("InvalidSasToken", format!("invalid SAS token: {e}"))
            }
            _ => ApiError::unauthorized(format!("invalid SAS token: {e}")),
        }),
        None if !policy.local_auth => Err(ApiError::unauthorized(
            "the request carries no credentials: send Authorization: Bearer <Microsoft Entra token>",
        )),
        None => Err(ApiError::unauthorized(
            "the request carries no credentials: send aeg-sas-key, aeg-sas-token or Authorization: SharedAccessSignature",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHM=";
    const URI: &str = "http://127.0.0.1:1/api/events?api-version=2018-01-01";

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn every_accepted_form() {
        let now = Utc::now();
        check(
            &with("aeg-sas-key", KEY),
            "",
            URI,
            &Policy::key_only(KEY),
            now,
        )
        .unwrap();
        check(
            &HeaderMap::new(),
            &format!("api-version=1&aeg-sas-key={}", urlencoding::encode(KEY)),
            URI,
            &Policy::key_only(KEY),
            now,
        )
        .unwrap();
        let token = sas::generate(
            "http://127.0.0.1:1/api/events",
            KEY,
            now + chrono::Duration::minutes(5),
        )
        .unwrap();
        check(
            &with("aeg-sas-token", &token),
            "",
            URI,
            &Policy::key_only(KEY),
            now,
        )
        .unwrap();
        check(
            &with("authorization", &format!("SharedAccessSignature {token}")),
            "",
            URI,
            &Policy::key_only(KEY),
            now,
        )
        .unwrap();
    }

    #[test]
    fn malformed_tokens_are_400_bad_signatures_401() {
        let now = Utc::now();
        let p = Policy::key_only(KEY);
        let e = check(&with("aeg-sas-token", "r=x&e=y"), "", URI, &p, now).unwrap_err();
        assert_eq!((e.status, e.detail), (400, "InvalidSasToken"), "{e}");
        let good = sas::generate(URI, KEY, now + chrono::Duration::minutes(5)).unwrap();
        let bad = format!("{}AAAA", good.trim_end_matches("%3D"));
        assert_eq!(
            check(&with("aeg-sas-token", &bad), "", URI, &p, now)
                .unwrap_err()
                .status,
            401
        );
    }

    #[test]
    fn with_local_auth_disabled_only_entra_tokens_pass() {
        let now = Utc::now();
        let signer = crate::entra::Signer::generate().unwrap();
        let v = crate::entra::Verifier::from_public_key(&signer.public_key()).unwrap();
        let p = Policy {
            key: KEY,
            entra: Some(&v),
            local_auth: false,
        };
        let e = check(&with("aeg-sas-key", KEY), "", URI, &p, now).unwrap_err();
        assert_eq!(e.status, 401);
        assert!(e.message.contains("disableLocalAuth"), "{e}");
        let token = sas::generate(URI, KEY, now + chrono::Duration::minutes(5)).unwrap();
        assert_eq!(
            check(&with("aeg-sas-token", &token), "", URI, &p, now)
                .unwrap_err()
                .status,
            401
        );
        let claims = crate::entra::Claims::new(
            crate::entra::AUDIENCE,
            "mi",
            &[crate::entra::DATA_SENDER_ROLE],
            now.timestamp(),
            600,
        );
        let bearer = format!("Bearer {}", signer.mint(&claims));
        check(&with("authorization", &bearer), "", URI, &p, now).unwrap();
        // With local auth on, both work.
        let both = Policy {
            local_auth: true,
            ..p
        };
        check(&with("authorization", &bearer), "", URI, &both, now).unwrap();
        check(&with("aeg-sas-key", KEY), "", URI, &both, now).unwrap();
    }

    #[test]
    fn refusals() {
        let now = Utc::now();
        assert_eq!(
            check(&HeaderMap::new(), "", URI, &Policy::key_only(KEY), now)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            check(
                &with("aeg-sas-key", "wrong"),
                "",
                URI,
                &Policy::key_only(KEY),
                now
            )
            .unwrap_err()
            .status,
            401
        );
        assert_eq!(
            check(
                &with("authorization", "Bearer x"),
                "",
                URI,
                &Policy::key_only(KEY),
                now
            )
            .unwrap_err()
            .status,
            401
        );
        let expired = sas::generate(
            "http://127.0.0.1:1/",
            KEY,
            now - chrono::Duration::minutes(1),
        )
        .unwrap();
        assert!(
            check(
                &with("aeg-sas-token", &expired),
                "",
                URI,
                &Policy::key_only(KEY),
                now
            )
            .unwrap_err()
            .message
            .contains("expired")
        );
    }
}
