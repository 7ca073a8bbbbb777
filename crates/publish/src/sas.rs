//! Event Grid shared access signatures (SAS tokens), in one place for both sides: the publisher
//! signs with it and the local emulator (`saldo-eventgrid`) verifies with it, so the two can never
//! disagree about the format.
//!
//! Format (Event Grid data-plane docs): `r=<enc resource>&e=<enc expiry>&s=<enc signature>`, where
//! `signature = base64(HMAC-SHA256(key = base64-decoded topic key, message = "r=<enc resource>&e=<enc expiry>"))`.
//! Every part is URL-encoded. The samples disagree on the expiry format: the .NET samples write a US
//! date-time (`11/24/2026 10:00:00 PM`), the Python SDK's `generate_sas` writes `str(datetime)`
//! (`2026-11-24 22:00:00+00:00`), others ISO 8601. [`verify`] accepts all of them; [`generate`]
//! writes ISO 8601 (RFC 3339).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, NaiveDateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Characters the Python SDK leaves unencoded in addition to the RFC 3986 alphanumerics
/// (`quote(s, safe="~()*!.'")`). We encode the same way so tokens are byte-identical.
const SAFE: &[u8] = b"-_~()*!.'";

/// Why a token or key was refused. `Malformed` (a token that cannot be read) is HTTP 400 to
/// the emulator, as in Azure; every other variant is 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    #[error("the topic key is not valid base64")]
    BadKey,
    #[error("malformed SAS token: {0}")]
    Malformed(String),
    #[error("SAS token expired at {0}")]
    Expired(DateTime<Utc>),
    #[error("SAS token signed for resource {signed:?}, which does not cover {requested:?}")]
    WrongResource { signed: String, requested: String },
    #[error("SAS token signature does not match")]
    BadSignature,
}

/// Percent-encodes like Python's `urllib.parse.quote(s, safe="~()*!.'")`.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || SAFE.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Result<String, SasError> {
    urlencoding::decode(&s.replace('+', " "))
        .map(|c| c.into_owned())
        .map_err(|e| SasError::Malformed(format!("bad URL encoding: {e}")))
}

/// base64(HMAC-SHA256(base64-decoded key, message)).
pub fn signature(key_b64: &str, message: &str) -> Result<String, SasError> {
    let key = B64.decode(key_b64.trim()).map_err(|_| SasError::BadKey)?;
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC accepts keys of any length");
    mac.update(message.as_bytes());
    Ok(B64.encode(mac.finalize().into_bytes()))
}

/// Makes a token for `resource` (normally the topic endpoint URL) that expires at `expires`.
pub fn generate(resource: &str, key_b64: &str, expires: DateTime<Utc>) -> Result<String, SasError> {
    let expiry = expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let unsigned = format!("r={}&e={}", encode(resource), encode(&expiry));
    let sig = signature(key_b64, &unsigned)?;
    Ok(format!("{unsigned}&s={}", encode(&sig)))
}

/// Parses an expiry in any of the formats the official samples produce. A time without a zone
/// is UTC (that is what every sample means by it).
pub fn parse_expiry(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    // Python `str(datetime)` with an offset: "2026-11-24 22:00:00.123456+00:00".
    for f in ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t.with_timezone(&Utc));
        }
    }
    // .NET's `DateTimeOffset.ToString()` in the invariant/US culture, as the SDK's
    // `EventGridPublisherClient.BuildSharedAccessSignature` writes it: "6/15/2017 6:20:15 PM +00:00".
    for f in ["%m/%d/%Y %I:%M:%S %p %:z", "%m/%d/%Y %H:%M:%S %:z"] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t.with_timezone(&Utc));
        }
    }
    // Naive forms: Python without tzinfo, ISO without zone, .NET invariant/US culture.
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%m/%d/%Y %I:%M:%S %p",
        "%m/%d/%Y %H:%M:%S",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc());
        }
    }
    None
}

/// The part of a resource URI that a token's scope is compared on: no scheme, no query, lower
/// case. Azure ignores the query of the signed resource (the Python SDK signs
/// `...?apiVersion=2018-01-01` while the request carries `?api-version=2018-01-01`), and the
/// scheme differs behind a TLS-terminating proxy.
fn scope(uri: &str) -> String {
    let no_query = uri.split(['?', '#']).next().unwrap_or("");
    let no_scheme = no_query
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(no_query);
    no_scheme.trim_end_matches('/').to_ascii_lowercase()
}

/// Checks `token` against the topic key for a request to `requested` (the full request URI) at
/// time `now`. A token is good for every resource URI that starts with the signed one.
pub fn verify(
    token: &str,
    key_b64: &str,
    requested: &str,
    now: DateTime<Utc>,
) -> Result<(), SasError> {
    let (mut r, mut e, mut s) = (None, None, None);
    for part in token.trim().split('&') {
        match part.split_once('=') {
            Some(("r", v)) => r = Some(v),
            Some(("e", v)) => e = Some(v),
            Some(("s", v)) => s = Some(v),
            _ => return Err(SasError::Malformed(format!("unexpected part {part:?}"))),
        }
    }
    let (r, e, s) = match (r, e, s) {
        (Some(r), Some(e), Some(s)) => (r, e, s),
        _ => return Err(SasError::Malformed("needs r=, e= and s=".into())),
    };
    // The signature covers the token's own (encoded) text, so verify before decoding anything.
    let expected = signature(key_b64, &format!("r={r}&e={e}"))?;
    let given = decode(s)?;
    // Constant-time comparison through the MAC type would need the raw bytes; compare decoded
    // signatures byte-wise without early exit instead.
    let same = expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(SasError::BadSignature);
    }
    let expiry_text = decode(e)?;
    let expiry = parse_expiry(&expiry_text)
        .ok_or_else(|| SasError::Malformed(format!("unreadable expiry {expiry_text:?}")))?;
    if expiry <= now {
        return Err(SasError::Expired(expiry));
    }
    let signed = decode(r)?;
    if !scope(requested).starts_with(&scope(&signed)) {
        return Err(SasError::WrongResource {
            signed,
            requested: requested.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHM="; // base64("secret-key-for-tests")

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap()
    }

    #[test]
    fn generated_tokens_verify_for_the_resource_and_below() {
        let t = generate(
            "http://127.0.0.1:7000/api/events",
            KEY,
            now() + chrono::Duration::hours(1),
        )
        .unwrap();
        verify(
            &t,
            KEY,
            "http://127.0.0.1:7000/api/events?api-version=2018-01-01",
            now(),
        )
        .unwrap();
        let t = generate(
            "http://127.0.0.1:7000/",
            KEY,
            now() + chrono::Duration::hours(1),
        )
        .unwrap();
        verify(&t, KEY, "https://127.0.0.1:7000/api/events", now()).unwrap();
        assert!(matches!(
            verify(&t, KEY, "http://127.0.0.2:7000/api/events", now()),
            Err(SasError::WrongResource { .. })
        ));
    }

    #[test]
    fn expired_forged_and_malformed_tokens_fail() {
        let t = generate("http://h/api/events", KEY, now()).unwrap();
        assert!(matches!(
            verify(&t, KEY, "http://h/api/events", now()),
            Err(SasError::Expired(_))
        ));
        let t = generate(
            "http://h/api/events",
            KEY,
            now() + chrono::Duration::hours(1),
        )
        .unwrap();
        let other = B64.encode("another key");
        assert_eq!(
            verify(&t, &other, "http://h/api/events", now()),
            Err(SasError::BadSignature)
        );
        // Tampering with the expiry breaks the signature.
        let tampered = t.replace("2026-11-24T13", "2027-11-24T13");
        assert_ne!(tampered, t);
        assert_eq!(
            verify(&tampered, KEY, "http://h/api/events", now()),
            Err(SasError::BadSignature)
        );
        assert!(matches!(
            verify("r=x&e=y", KEY, "http://h", now()),
            Err(SasError::Malformed(_))
        ));
        assert!(matches!(
            verify("garbage", KEY, "http://h", now()),
            Err(SasError::Malformed(_))
        ));
    }

    #[test]
    fn both_expiry_formats_and_python_style_tokens() {
        for text in [
            "2026-11-24T13:00:00Z",
            "2026-11-24 13:00:00+00:00",
            "2026-11-24 13:00:00.250000+00:00",
            "11/24/2026 1:00:00 PM",
            "11/24/2026 13:00:00",
            // The .NET SDK (DateTimeOffset, with its offset).
            "11/24/2026 1:00:00 PM +00:00",
            "11/24/2026 3:00:00 PM +02:00",
        ] {
            assert_eq!(
                parse_expiry(text).unwrap(),
                Utc.with_ymd_and_hms(2026, 11, 24, 13, 0, 0).unwrap()
                    + if text.contains(".25") {
                        chrono::Duration::milliseconds(250)
                    } else {
                        chrono::Duration::zero()
                    },
                "{text}"
            );
            // Build a token the way the samples do, with this expiry text.
            let unsigned = format!(
                "r={}&e={}",
                encode("http://h/api/events?apiVersion=2018-01-01"),
                encode(text)
            );
            let token = format!(
                "{unsigned}&s={}",
                encode(&signature(KEY, &unsigned).unwrap())
            );
            verify(
                &token,
                KEY,
                "http://h/api/events?api-version=2018-01-01",
                now(),
            )
            .unwrap();
        }
    }

    #[test]
    fn encoding_matches_python_quote() {
        assert_eq!(
            encode("http://h:1/a b?x=1"),
            "http%3A%2F%2Fh%3A1%2Fa%20b%3Fx%3D1"
        );
        assert_eq!(encode("a+b/c="), "a%2Bb%2Fc%3D");
    }
}
