//! Property tests of SAS tokens, the one credential format both the publisher writes and the
//! emulator reads: a generated token verifies for its resource (and below) until it expires, in
//! every expiry format the official samples write; any other token text, and any change to the
//! signed part of a good one, is refused with a reason; nothing panics.
//! Cases: `PROPTEST_CASES` (default 1024 per property).

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use saldo_publish::sas::{self, SasError};

const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHM="; // base64("secret-key-for-tests")

fn cases() -> u32 {
    saldo_testkit::proptest_cases(1024)
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap()
}

fn resource() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("http"), Just("https")],
        "[a-z0-9.-]{1,20}",
        prop::option::of(1u16..),
        "(/[a-zA-Z0-9 ._~()*!'%&=+-]{0,8}){0,3}",
    )
        .prop_map(|(scheme, host, port, path)| match port {
            Some(p) => format!("{scheme}://{host}:{p}{path}"),
            None => format!("{scheme}://{host}{path}"),
        })
}

/// The expiry formats the samples write (RFC 3339, Python `str(datetime)`, .NET US culture).
fn expiry_text(t: DateTime<Utc>, format: usize) -> String {
    match format {
        0 => t.to_rfc3339(),
        1 => t.format("%Y-%m-%d %H:%M:%S%:z").to_string(),
        2 => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        3 => t.format("%m/%d/%Y %I:%M:%S %p").to_string(),
        _ => t.format("%Y-%m-%dT%H:%M:%S").to_string(),
    }
}

/// A token as a sample in another language writes it: any expiry format, signed with the key.
fn foreign_token(resource: &str, expiry: &str) -> String {
    let unsigned = format!("r={}&e={}", sas::encode(resource), sas::encode(expiry));
    let sig = sas::signature(KEY, &unsigned).unwrap();
    format!("{unsigned}&s={}", sas::encode(&sig))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn a_token_verifies_for_its_resource_and_below_until_it_expires(
        r in resource(), secs in 1i64..10_000_000, below in "[a-z0-9]{0,8}", format in 0usize..5,
    ) {
        let expires = now() + Duration::seconds(secs);
        for token in [sas::generate(&r, KEY, expires).unwrap(), foreign_token(&r, &expiry_text(expires, format))] {
            let deeper = format!("{}/{below}?api-version=2018-01-01", r.trim_end_matches('/'));
            prop_assert_eq!(sas::verify(&token, KEY, &r, now()), Ok(()), "{}", token);
            prop_assert_eq!(sas::verify(&token, KEY, &deeper, now()), Ok(()), "{}", token);
            prop_assert!(matches!(
                sas::verify(&token, KEY, &r, expires + Duration::seconds(1)),
                Err(SasError::Expired(_))
            ));
            // A different key never verifies it.
            prop_assert_eq!(sas::verify(&token, "b3RoZXIta2V5", &r, now()), Err(SasError::BadSignature));
        }
    }

    #[test]
    fn expiries_in_every_sample_format_parse_to_the_same_instant(
        secs in -2_000_000_000i64..4_000_000_000, format in 0usize..5,
    ) {
        let t = DateTime::from_timestamp(secs, 0).unwrap();
        prop_assert_eq!(sas::parse_expiry(&expiry_text(t, format)), Some(t));
    }

    #[test]
    fn any_text_is_refused_with_a_reason_and_never_panics(token in "\\PC{0,80}", expiry in "\\PC{0,30}") {
        let _ = sas::parse_expiry(&expiry);
        match sas::verify(&token, KEY, "http://127.0.0.1:1/api/events", now()) {
            Ok(()) => prop_assert!(false, "forged token accepted: {token:?}"),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn any_change_to_the_signed_part_is_refused(
        r in resource(), secs in 1i64..10_000_000, at in any::<prop::sample::Index>(), with in "[ -~]",
    ) {
        let token = sas::generate(&r, KEY, now() + Duration::seconds(secs)).unwrap();
        let signed_len = token.find("&s=").unwrap();
        let i = at.index(signed_len);
        let mut changed = token.clone();
        changed.replace_range(i..i + 1, &with);
        prop_assume!(changed != token);
        prop_assert!(sas::verify(&changed, KEY, &r, now()).is_err(), "{} accepted", changed);
    }
}
