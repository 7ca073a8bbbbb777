//! The signed-in user, as Static Web Apps passes it: header `x-ms-client-principal`, base64 of
//! `{"identityProvider", "userId", "userDetails", "userRoles": [...]}`.
//!
//! The SPA's `staticwebapp.config.json` already restricts routes by role, but the API checks
//! again: the Function App can be reached without going through the Static Web App's rules.

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;

use crate::error::ApiError;

pub const HEADER: &str = "x-ms-client-principal";
/// The role that may set quantities.
pub const WAREHOUSE: &str = "warehouse";
/// Far above any real principal (a few hundred bytes); bounds the decoding work.
const MAX_HEADER_LEN: usize = 8 * 1024;

/// Static Web Apps pads its base64; tools that build the header by hand often do not. Accept both.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    #[serde(default)]
    pub identity_provider: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub user_details: Option<String>,
    #[serde(default)]
    pub user_roles: Vec<String>,
}

impl Principal {
    /// Role names in Static Web Apps are matched without regard to case.
    pub fn has_role(&self, role: &str) -> bool {
        self.user_roles.iter().any(|r| r.eq_ignore_ascii_case(role))
    }
}

/// The principal of a request: `None` when the header is absent (an anonymous visitor), an error
/// when it is present but cannot be read.
pub fn from_headers(headers: &HeaderMap) -> Result<Option<Principal>, ApiError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let bad = |why: String| ApiError::MalformedPrincipal(why);
    if value.len() > MAX_HEADER_LEN {
        return Err(bad(format!("longer than {MAX_HEADER_LEN} bytes")));
    }
    let text = value.to_str().map_err(|_| bad("not ASCII".into()))?.trim();
    let json = BASE64
        .decode(text)
        .map_err(|e| bad(format!("not base64: {e}")))?;
    let principal: Principal =
        serde_json::from_slice(&json).map_err(|e| bad(format!("not a principal object: {e}")))?;
    Ok(Some(principal))
}

/// Checks that the caller holds `role`: 401 without a principal, 403 without the role.
pub fn require_role(headers: &HeaderMap, role: &'static str) -> Result<Principal, ApiError> {
    let principal = from_headers(headers)?.ok_or(ApiError::Unauthenticated(role))?;
    if !principal.has_role(role) {
        return Err(ApiError::Forbidden(role));
    }
    Ok(principal)
}

/// Builds a header value the way Static Web Apps does (used by tests and tools).
pub fn encode(principal_json: &serde_json::Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(principal_json.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER, value.parse().unwrap());
        h
    }

    #[test]
    fn roles_are_read_and_checked() {
        let p = json!({"identityProvider": "github", "userId": "u1", "userDetails": "ann",
                       "userRoles": ["anonymous", "authenticated", "Warehouse"]});
        let h = headers(&encode(&p));
        let principal = require_role(&h, WAREHOUSE).unwrap();
        assert_eq!(principal.user_id.as_deref(), Some("u1"));

        let shopper = json!({"userId": "u2", "userRoles": ["anonymous", "authenticated"]});
        let err = require_role(&headers(&encode(&shopper)), WAREHOUSE).unwrap_err();
        assert!(matches!(err, ApiError::Forbidden(_)));
        assert!(matches!(
            require_role(&HeaderMap::new(), WAREHOUSE),
            Err(ApiError::Unauthenticated(_))
        ));
    }

    #[test]
    fn unpadded_base64_is_accepted() {
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(json!({"userRoles": ["warehouse"]}).to_string());
        assert!(require_role(&headers(&raw), WAREHOUSE).is_ok());
    }

    #[test]
    fn malformed_principals_are_errors() {
        for bad in [
            "%%%",
            &encode(&json!("just a string")),
            &encode(&json!({"userRoles": "warehouse"})),
        ] {
            assert!(
                matches!(
                    from_headers(&headers(bad)),
                    Err(ApiError::MalformedPrincipal(_))
                ),
                "{bad}"
            );
        }
    }
}
