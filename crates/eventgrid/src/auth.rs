//! Who may publish and manage: the topic key (`aeg-sas-key` header or query) or a SAS token
//! signed with it (`aeg-sas-token` header or `Authorization: SharedAccessSignature <token>`).
//! Token checking itself lives in `saldo_publish::sas`, shared with the publisher.

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use saldo_publish::sas;

use crate::error::ApiError;

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
    key: &str,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
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
            } else if a.starts_with("Bearer ") {
                // Choice: the emulator has no Entra ID to validate against, so it says so plainly.
                return Err(ApiError::unauthorized(
                    "Entra (Bearer) tokens are not accepted by the local emulator; use aeg-sas-key or a SAS token",
                ));
            } else {
                return Err(ApiError::unauthorized("unsupported Authorization scheme"));
            }
        }
        (None, None) => None,
    };
    match token {
        Some(t) => sas::verify(&t, key, request_uri, now)
            .map_err(|e| ApiError::unauthorized(format!("invalid SAS token: {e}"))),
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
        check(&with("aeg-sas-key", KEY), "", URI, KEY, now).unwrap();
        check(
            &HeaderMap::new(),
            &format!("api-version=1&aeg-sas-key={}", urlencoding::encode(KEY)),
            URI,
            KEY,
            now,
        )
        .unwrap();
        let token = sas::generate(
            "http://127.0.0.1:1/api/events",
            KEY,
            now + chrono::Duration::minutes(5),
        )
        .unwrap();
        check(&with("aeg-sas-token", &token), "", URI, KEY, now).unwrap();
        check(
            &with("authorization", &format!("SharedAccessSignature {token}")),
            "",
            URI,
            KEY,
            now,
        )
        .unwrap();
    }

    #[test]
    fn refusals() {
        let now = Utc::now();
        assert_eq!(
            check(&HeaderMap::new(), "", URI, KEY, now)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            check(&with("aeg-sas-key", "wrong"), "", URI, KEY, now)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            check(&with("authorization", "Bearer x"), "", URI, KEY, now)
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
            check(&with("aeg-sas-token", &expired), "", URI, KEY, now)
                .unwrap_err()
                .message
                .contains("expired")
        );
    }
}
