//! `Publisher::from_env`: a key means key auth, no key means the managed identity. One test in
//! its own binary, because it changes the process environment.

use saldo_publish::{ConfigError, Publisher};

#[test]
fn chooses_auth_from_the_environment() {
    // SAFETY: this test binary runs this single test; no other thread reads the environment.
    unsafe {
        std::env::remove_var("SALDO_TOPIC_ENDPOINT");
        std::env::remove_var("SALDO_TOPIC_KEY");
        std::env::remove_var("IDENTITY_ENDPOINT");
        std::env::remove_var("IDENTITY_HEADER");
    }
    assert!(matches!(
        Publisher::from_env(),
        Err(ConfigError::NoEndpoint)
    ));
    unsafe { std::env::set_var("SALDO_TOPIC_ENDPOINT", "http://127.0.0.1:1/api/events") };
    assert!(matches!(
        Publisher::from_env(),
        Err(ConfigError::NoCredential)
    ));
    unsafe {
        std::env::set_var("IDENTITY_ENDPOINT", "http://127.0.0.1:2/msi/token");
        std::env::set_var("IDENTITY_HEADER", "h");
    }
    let p = Publisher::from_env().unwrap();
    assert!(format!("{p:?}").contains("Entra"), "{p:?}");
    unsafe { std::env::set_var("SALDO_TOPIC_KEY", "a2V5") };
    let p = Publisher::from_env().unwrap();
    assert!(
        format!("{p:?}").contains("Key(<redacted>)")
            && !format!("{p:?}").contains("a2V5")
            && p.endpoint() == "http://127.0.0.1:1/api/events",
        "{p:?}"
    );
}
