//! What Envoy's two services have in common: turning an HTTP request as
//! Envoy describes it into tollgate's question, and a decision into HTTP
//! headers and bodies.
//!
//! - [`request_method`]: path + HTTP method → `/pets/42/GET`, or why the
//!   request is malformed ([`BadRequest`], a clean 4xx, never a gRPC error).
//! - [`presented_key`]: a key source's value, if it can be a key at all
//!   (the sources themselves: [`super::envoy_keys`]).
//! - [`rate_limit_headers`], [`retry_after_secs`], [`json_message`]: the
//!   answer's headers and body (docs/envoy.md, "Headers").
//!
//! # Paths and HTTP methods
//!
//! Envoy may or may not normalise the path (`normalize_path`,
//! `merge_slashes`: both off by default), so the path and the HTTP method go
//! through tollgate's one canonicaliser, the same as the native API's
//! methods ([`crate::model::method`], docs/semantics.md "Canonical method
//! form"), after the query string and fragment are dropped: no spelling of a
//! path can slip past the limits of the method it really names. What it
//! refuses is a 400 `Bad Request`; a method over
//! [`MAX_METHOD_LEN`](crate::model::method::MAX_METHOD_LEN) bytes in
//! canonical form, or a path over
//! [`MAX_RAW_METHOD_LEN`](crate::model::method::MAX_RAW_METHOD_LEN) bytes as
//! sent, is a 414 `URI Too Long`.
//!
//! HTTP/1.1 Envoy rejects a lower-case method itself (400), HTTP/2 passes it
//! verbatim. The canonical form upper-cases a method of 1–16 ASCII letters,
//! so `get` is limited as `GET` (an upstream that accepts `get` cannot be
//! used to dodge the limits of `GET`); anything else (`M-SEARCH`, digits) is
//! a 400.

use super::envoy_keys::{query_name, MetadataPath};
use crate::config::Settings;
use crate::limiter::{LimitKind, RateInfo};
use crate::model::method::{canonical_request, CanonicalMethod, MethodErrorKind};
use crate::model::{Invalid, KEY_VALUE_MAX};

/// The settings both Envoy services read (from [`Settings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyOptions {
    /// The request header carrying the API key, lower-case (Envoy sends
    /// header names lower-case).
    pub api_key_header: String,
    /// The stage of a request whose route names none.
    pub default_stage: Option<String>,
    /// Whether ext_authz leaves the API key header (and query parameter) on
    /// the upstream request.
    pub forward_api_key: bool,
    /// ext_authz: the query parameter that may carry the key too.
    pub api_key_query: Option<String>,
    /// ext_authz: where in Envoy's dynamic metadata the key may be too.
    pub api_key_metadata: Option<MetadataPath>,
}

impl EnvoyOptions {
    /// The options of `settings`, checked.
    pub fn from_settings(settings: &Settings) -> Result<Self, Invalid> {
        let h = settings.api_key_header.trim().to_ascii_lowercase();
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if h.is_empty() || !h.bytes().all(token) {
            return Err(Invalid::new("api_key_header", format!("{h:?} is not an HTTP header name")));
        }
        let default_stage =
            settings.default_stage.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
        if let Some(s) = &default_stage {
            if !s.contains('/') {
                return Err(Invalid::new(
                    "default_stage",
                    format!("{s:?} must be written API/STAGE, like \"petstore/prod\""),
                ));
            }
        }
        let api_key_query = settings.api_key_query.as_deref().map(query_name).transpose()?;
        let api_key_metadata = settings.api_key_metadata.as_deref().map(MetadataPath::parse).transpose()?;
        Ok(Self {
            api_key_header: h,
            default_stage,
            forward_api_key: settings.forward_api_key,
            api_key_query,
            api_key_metadata,
        })
    }
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        Self {
            api_key_header: "x-api-key".into(),
            default_stage: None,
            forward_api_key: false,
            api_key_query: None,
            api_key_metadata: None,
        }
    }
}

/// Why a request cannot be turned into a method: answered with a 4xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    /// Malformed path or HTTP method: 400 `Bad Request`.
    Malformed,
    /// The method would be longer than
    /// [`MAX_METHOD_LEN`](crate::model::method::MAX_METHOD_LEN) bytes: 414.
    TooLong,
}

impl BadRequest {
    /// The HTTP status.
    pub fn http_status(self) -> u16 {
        match self {
            BadRequest::Malformed => 400,
            BadRequest::TooLong => 414,
        }
    }

    /// The message of the JSON body.
    pub fn message(self) -> &'static str {
        match self {
            BadRequest::Malformed => "Bad Request",
            BadRequest::TooLong => "URI Too Long",
        }
    }
}

impl From<MethodErrorKind> for BadRequest {
    fn from(k: MethodErrorKind) -> Self {
        match k {
            MethodErrorKind::Malformed => BadRequest::Malformed,
            MethodErrorKind::TooLong => BadRequest::TooLong,
        }
    }
}

/// tollgate's method for an HTTP request: its path (query and fragment
/// dropped) and HTTP method in canonical form ([`canonical_request`],
/// docs/semantics.md "Canonical method form"): `/pets/42/GET`, the root
/// `//GET`.
pub fn request_method(path: &str, verb: &str) -> Result<CanonicalMethod, BadRequest> {
    canonical_request(path, verb).map_err(|e| e.kind.into())
}

/// The presented API key, if the header's value can be a key at all:
/// 1–128 characters of `[A-Za-z0-9]`. Anything else (empty, spaces, two
/// headers joined by a comma, too long) is treated as no key, so a method
/// that needs a key answers 403 and one that does not is unaffected, as in
/// API Gateway. The value is never logged.
pub fn presented_key(value: Option<&str>) -> Option<&str> {
    let v = value?.trim_matches([' ', '\t']);
    (!v.is_empty() && v.len() <= KEY_VALUE_MAX && v.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(v)
}

/// The policy name of a limit in the RateLimit headers.
pub fn policy_name(kind: LimitKind) -> &'static str {
    match kind {
        LimitKind::PlanMethodThrottle => "method-throttle",
        LimitKind::PlanThrottle => "throttle",
        LimitKind::PlanQuota => "quota",
        LimitKind::StageMethodThrottle => "stage-throttle",
        LimitKind::AccountThrottle => "account-throttle",
    }
}

/// Milliseconds to whole seconds, rounded up.
fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// The `RateLimit-Policy` and `RateLimit` headers (IETF httpapi
/// ratelimit-headers draft, structured-field form) for one limit:
///
/// ```text
/// RateLimit-Policy: "throttle";q=5;w=5
/// RateLimit: "throttle";r=4;t=1
/// ```
///
/// `q` is the limit's capacity (a bucket's burst, a quota's limit), `w` the
/// window in seconds (burst / rate, or the quota period's length), `r` the
/// units left and `t` the seconds until the limit is whole again, rounded up.
pub fn rate_limit_headers(rate: &RateInfo) -> [(&'static str, String); 2] {
    let name = policy_name(rate.kind);
    [
        ("ratelimit-policy", format!("\"{name}\";q={};w={}", rate.limit, rate.window_secs)),
        ("ratelimit", format!("\"{name}\";r={};t={}", rate.remaining, ceil_secs(rate.reset_ms))),
    ]
}

/// `Retry-After` in whole seconds: rounded up, at least 1.
pub fn retry_after_secs(ms: u64) -> u64 {
    ceil_secs(ms).max(1)
}

/// The JSON body API Gateway sends: `{"message":"..."}`.
pub fn json_message(message: &str) -> String {
    serde_json::json!({ "message": message }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::method::MAX_METHOD_LEN;

    fn method(path: &str, verb: &str) -> String {
        request_method(path, verb).unwrap().as_str().to_string()
    }

    #[test]
    fn methods_from_requests() {
        assert_eq!(method("/pets", "GET"), "/pets/GET");
        assert_eq!(method("/pets/42?limit=5&x=/y", "GET"), "/pets/42/GET");
        assert_eq!(method("/pets/42#frag", "get"), "/pets/42/GET");
        assert_eq!(method("/", "GET"), "//GET");
        assert_eq!(method("/?q=1", "POST"), "//POST");
        assert_eq!(method("//pets///42/", "GET"), "/pets/42/GET");
        assert_eq!(method("/p%65ts/%34%32", "GET"), "/pets/42/GET");
        assert_eq!(method("/a%2cb/c%7e", "GET"), "/a,b/c~/GET");
        assert_eq!(method("/files/my%20doc", "PUT"), "/files/my%20doc/PUT");
        assert_eq!(method("/caf\u{e9}", "GET"), "/caf%C3%A9/GET");
    }

    #[test]
    fn malformed_requests() {
        for (path, verb) in [
            ("/pets/../admin", "GET"),
            ("/pets/./1", "GET"),
            ("/pets/%2e%2e/admin", "GET"),
            ("/pets/%2E", "GET"),
            ("/pets/.%2e", "GET"),
            ("/pets/%zz", "GET"),
            ("/pets/%4", "GET"),
            ("/pets/a b", "GET"),
            ("/pets/a\tb", "GET"),
            ("/pets\\..\\x", "GET"),
            ("/a%2fb", "GET"),
            ("/a%5Cb", "GET"),
            ("pets", "GET"),
            ("", "GET"),
            ("*", "OPTIONS"),
            ("/pets", ""),
            ("/pets", "M-SEARCH"),
            ("/pets", "G3T"),
            ("/pets", "ABCDEFGHIJKLMNOPQ"),
        ] {
            assert_eq!(request_method(path, verb), Err(BadRequest::Malformed), "{path:?} {verb:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_METHOD_LEN));
        assert_eq!(request_method(&long, "GET"), Err(BadRequest::TooLong));
        let huge = format!("/{}", "a".repeat(10 * MAX_METHOD_LEN));
        assert_eq!(request_method(&huge, "GET"), Err(BadRequest::TooLong));
    }

    #[test]
    fn keys() {
        let k = "tgdemo0123456789abcdefghijklmnopqrstuvw";
        assert_eq!(presented_key(Some(k)), Some(k));
        assert_eq!(presented_key(Some(" abc ")), Some("abc"));
        assert_eq!(presented_key(None), None);
        assert_eq!(presented_key(Some("")), None);
        assert_eq!(presented_key(Some("ab cd")), None);
        assert_eq!(presented_key(Some("abc,def")), None);
        assert_eq!(presented_key(Some(&"a".repeat(129))), None);
        assert_eq!(presented_key(Some("k\u{e9}y")), None);
    }

    #[test]
    fn headers() {
        let rate = RateInfo { kind: LimitKind::PlanThrottle, limit: 5, remaining: 4, reset_ms: 1001, window_secs: 5 };
        let [p, r] = rate_limit_headers(&rate);
        assert_eq!(p, ("ratelimit-policy", "\"throttle\";q=5;w=5".to_string()));
        assert_eq!(r, ("ratelimit", "\"throttle\";r=4;t=2".to_string()));
        assert_eq!(retry_after_secs(0), 1);
        assert_eq!(retry_after_secs(1000), 1);
        assert_eq!(retry_after_secs(1001), 2);
        assert_eq!(json_message("Forbidden"), r#"{"message":"Forbidden"}"#);
    }
}
