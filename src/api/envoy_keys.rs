//! Where Envoy ext_authz finds the API key (docs/envoy.md, "Key sources").
//!
//! Three sources, each optional but the header:
//! - the request header `--api-key-header` (default `x-api-key`);
//! - the query parameter `--api-key-query NAME`, percent-decoded;
//! - Envoy's dynamic metadata, `--api-key-metadata FILTER:PATH`: a string
//!   that an earlier filter (e.g. `jwt_authn` with `payload_in_metadata`)
//!   wrote under the namespace FILTER, at the dot path PATH; Envoy sends it
//!   only for namespaces listed in ext_authz's `metadata_context_namespaces`.
//!
//! Every value goes through [`presented_key`]: one that cannot be a key
//! (empty, not `[A-Za-z0-9]`, too long) counts as absent. The sources
//! present must then **agree**: one value, from any number of them, is the
//! key; two different values are a [`Presented::Conflict`], denied 403
//! without asking the store. There is no precedence to reason about, and a
//! caller identified by a verified JWT cannot name another key in a header
//! (which matters when the claim value, e.g. a `sub`, is not a secret).
//!
//! Values are never logged.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::{value::Kind, Struct};

use super::envoy_http::presented_key;
use crate::model::Invalid;

/// Longest `--api-key-query` name.
const QUERY_NAME_MAX: usize = 128;

static WARNED_NOT_STRING: AtomicBool = AtomicBool::new(false);

/// `--api-key-metadata FILTER:PATH`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataPath {
    /// The metadata namespace, usually the filter's name
    /// (`envoy.filters.http.jwt_authn`).
    pub filter: String,
    /// The path into that namespace's Struct, one field name per step
    /// (`["jwt_payload", "sub"]`).
    pub path: Vec<String>,
}

impl MetadataPath {
    /// Parses `FILTER:PATH`: FILTER of `[A-Za-z0-9._-/]`, PATH of
    /// dot-separated non-empty field names (no whitespace, no `:`).
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = |why: &str| {
            Invalid::new(
                "api_key_metadata",
                format!("{s:?} {why}: write FILTER:PATH, like \"envoy.filters.http.jwt_authn:jwt_payload.sub\""),
            )
        };
        let (filter, path) = s.trim().split_once(':').ok_or_else(|| bad("has no `:`"))?;
        let filter_char = |b: u8| b.is_ascii_alphanumeric() || b"._-/".contains(&b);
        if filter.is_empty() || !filter.bytes().all(filter_char) {
            return Err(bad("has no valid FILTER (the metadata namespace) before the `:`"));
        }
        let path: Vec<String> = path.split('.').map(str::to_string).collect();
        let field_ok = |f: &String| !f.is_empty() && !f.contains(':') && !f.chars().any(char::is_whitespace);
        if !path.iter().all(field_ok) {
            return Err(bad("has no valid PATH (dot-separated field names) after the `:`"));
        }
        Ok(Self { filter: filter.to_string(), path })
    }
}

impl std::fmt::Display for MetadataPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.filter, self.path.join("."))
    }
}

/// Checks an `--api-key-query` name: 1–128 characters of RFC 3986's
/// unreserved set (`[A-Za-z0-9._~-]`), so that it needs no escaping.
pub fn query_name(s: &str) -> Result<String, Invalid> {
    let n = s.trim();
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"._~-".contains(&b);
    if n.is_empty() || n.len() > QUERY_NAME_MAX || !n.bytes().all(ok) {
        return Err(Invalid::new(
            "api_key_query",
            format!("{n:?} is not a query parameter name (1 to {QUERY_NAME_MAX} characters of A-Z a-z 0-9 . _ ~ -)"),
        ));
    }
    Ok(n.to_string())
}

/// What the sources present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented<'a> {
    /// No source carries a value that can be a key.
    None,
    /// One key value (from one source or several that agree).
    Key(Cow<'a, str>),
    /// Two sources carry different keys: denied 403.
    Conflict,
}

impl<'a> Presented<'a> {
    /// Adds one source's value (absent or not a key: no change).
    pub fn with(self, value: Option<Cow<'a, str>>) -> Self {
        let v = match value {
            Some(Cow::Borrowed(b)) => presented_key(Some(b)).map(Cow::Borrowed),
            Some(Cow::Owned(o)) => presented_key(Some(&o)).map(|k| Cow::Owned(k.to_string())),
            None => None,
        };
        let Some(v) = v else { return self };
        match self {
            Presented::None => Presented::Key(v),
            Presented::Key(k) if k == v => Presented::Key(k),
            Presented::Key(_) | Presented::Conflict => Presented::Conflict,
        }
    }

    /// The key, if there is exactly one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Presented::Key(k) => Some(k),
            _ => None,
        }
    }
}

/// The value of the query parameter `name` in `path` (`/a?x=1&k=v`),
/// percent-decoded (`+` is not a space: keys have none). `None` when it is
/// absent, given more than once, malformed or not UTF-8.
pub fn query_param<'a>(path: &'a str, name: &str) -> Option<Cow<'a, str>> {
    let path = path.split_once('#').map_or(path, |(p, _)| p);
    let (_, query) = path.split_once('?')?;
    let mut found = None;
    for pair in query.split('&') {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(n).as_deref() != Some(name) {
            continue;
        }
        if found.is_some() {
            return None;
        }
        found = Some(percent_decode(v)?);
    }
    found
}

/// `%XX` decoded; `None` for a malformed escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// The string at `at` in the request's dynamic metadata. Absent (no such
/// namespace or field, e.g. a route without a JWT): `None`. Present but not
/// a string: `None`, and a warning (once) naming the path, since that is a
/// configuration mistake.
pub fn metadata_value<'a>(metadata: Option<&'a Metadata>, at: &MetadataPath) -> Option<Cow<'a, str>> {
    let mut node: &Struct = metadata?.filter_metadata.get(&at.filter)?;
    let (last, steps) = at.path.split_last()?;
    for step in steps {
        match node.fields.get(step)?.kind.as_ref()? {
            Kind::StructValue(s) => node = s,
            _ => return not_a_string(at),
        }
    }
    match node.fields.get(last)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(Cow::Borrowed(s)),
        _ => not_a_string(at),
    }
}

fn not_a_string<T>(at: &MetadataPath) -> Option<T> {
    if !WARNED_NOT_STRING.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            api_key_metadata = %at,
            "ext_authz: the metadata at --api-key-metadata is not a string; the request has no key from it"
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Value;

    const K1: &str = "tgdemo0123456789abcdefghijklmnopqrstuvw";
    const K2: &str = "tgother0123456789abcdefghijklmnopqrstuv";

    #[test]
    fn metadata_paths() {
        let p = MetadataPath::parse("envoy.filters.http.jwt_authn:jwt_payload.sub").unwrap();
        assert_eq!(p.filter, "envoy.filters.http.jwt_authn");
        assert_eq!(p.path, ["jwt_payload", "sub"]);
        assert_eq!(p.to_string(), "envoy.filters.http.jwt_authn:jwt_payload.sub");
        assert_eq!(MetadataPath::parse("f:k").unwrap().path, ["k"]);
        for bad in ["", "nocolon", ":a.b", "f:", "f:a..b", "f:.a", "f:a.", "f g:a", "f:a b", "f:a:b"] {
            let e = MetadataPath::parse(bad).unwrap_err();
            assert_eq!(e.field, "api_key_metadata", "{bad:?}");
            assert!(e.message.contains("FILTER:PATH"), "{e:?}");
        }
    }

    #[test]
    fn query_names() {
        assert_eq!(query_name(" api_key ").unwrap(), "api_key");
        for bad in ["", "a b", "a&b", "a=b", "k%20", &"a".repeat(129)] {
            assert_eq!(query_name(bad).unwrap_err().field, "api_key_query", "{bad:?}");
        }
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param("/pets?api_key=abc", "api_key").as_deref(), Some("abc"));
        assert_eq!(query_param("/pets?x=1&api_key=a%62c&y", "api_key").as_deref(), Some("abc"));
        assert_eq!(query_param("/pets?api%5Fkey=abc", "api_key").as_deref(), Some("abc"));
        assert_eq!(query_param("/pets?api_key=abc#frag", "api_key").as_deref(), Some("abc"));
        assert_eq!(query_param("/pets?api_key", "api_key").as_deref(), Some(""));
        assert_eq!(query_param("/pets", "api_key"), None);
        assert_eq!(query_param("/pets?key=abc", "api_key"), None);
        assert_eq!(query_param("/pets?api_key=a&api_key=a", "api_key"), None, "twice");
        assert_eq!(query_param("/pets?api_key=%zz", "api_key"), None);
        assert_eq!(query_param("/pets?api_key=%ff", "api_key"), None, "not UTF-8");
        assert_eq!(query_param("/pets#?api_key=abc", "api_key"), None, "in the fragment");
    }

    #[test]
    fn sources_must_agree() {
        let b = |s: &'static str| Some(Cow::Borrowed(s));
        assert_eq!(Presented::None.with(None), Presented::None);
        assert_eq!(Presented::None.with(b(K1)).key(), Some(K1));
        assert_eq!(Presented::None.with(b(" x ")).key(), Some("x"));
        assert_eq!(Presented::None.with(b(K1)).with(b(K1)).key(), Some(K1));
        assert_eq!(Presented::None.with(b(K1)).with(None).with(b(K1)).key(), Some(K1));
        assert_eq!(Presented::None.with(b(K1)).with(b(K2)), Presented::Conflict);
        assert_eq!(Presented::None.with(b(K1)).with(b(K2)).with(b(K1)), Presented::Conflict);
        // A value that cannot be a key is no key, not a conflict.
        assert_eq!(Presented::None.with(b(K1)).with(b("a,b")).key(), Some(K1));
        assert_eq!(Presented::None.with(b("")).with(b(K2)).key(), Some(K2));
    }

    fn string(s: &str) -> Value {
        Value { kind: Some(Kind::StringValue(s.into())) }
    }

    #[test]
    fn metadata_values() {
        let payload = Struct {
            fields: [("sub".to_string(), string(K1)), ("n".to_string(), Value { kind: Some(Kind::NumberValue(4.0)) })]
                .into(),
        };
        let ns =
            Struct { fields: [("jwt_payload".to_string(), Value { kind: Some(Kind::StructValue(payload)) })].into() };
        let md = Metadata { filter_metadata: [("jwt".to_string(), ns)].into(), ..Default::default() };
        let at = |s: &str| MetadataPath::parse(s).unwrap();
        assert_eq!(metadata_value(Some(&md), &at("jwt:jwt_payload.sub")).as_deref(), Some(K1));
        assert_eq!(metadata_value(Some(&md), &at("jwt:jwt_payload.n")), None, "a number");
        assert_eq!(metadata_value(Some(&md), &at("jwt:jwt_payload")), None, "a struct");
        assert_eq!(metadata_value(Some(&md), &at("jwt:jwt_payload.sub.x")), None, "through a string");
        assert_eq!(metadata_value(Some(&md), &at("jwt:jwt_payload.aud")), None);
        assert_eq!(metadata_value(Some(&md), &at("other:jwt_payload.sub")), None);
        assert_eq!(metadata_value(None, &at("jwt:jwt_payload.sub")), None);
    }
}
