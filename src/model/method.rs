//! Methods: their one canonical form, method patterns, and the matching of a
//! request's method to a stage's method settings or a plan's per-method
//! throttles.
//!
//! A method is written like API Gateway's throttle keys: the resource path,
//! a slash, and the HTTP method: `/pets/GET`, `/pets/{petId}/DELETE`. The
//! root resource is `//GET` (API Gateway's spelling); `/GET` means the same.
//! `*/*` matches every method, and an HTTP method of `*` (e.g. `/pets/*`)
//! matches every HTTP method of one path.
//!
//! # The canonical form (docs/semantics.md, "Canonical method form")
//!
//! Every method a request names, through any protocol, is first put in one
//! canonical form by [`canonical_method`] (the native API's `PATH/VERB`) or
//! [`canonical_request`] (an HTTP request's path and method, as Envoy gives
//! them). Every lookup and every Redis key uses only that form, and the
//! literal segments of patterns go through the same segment rule
//! (`push_segment`), so that two spellings of one resource can never get
//! different settings. In short: empty segments are dropped, `%XX` escapes
//! are decoded and every segment re-encoded one way (RFC 3986 unreserved
//! characters, sub-delims, `:` and `@` as themselves, every other byte as
//! upper-case `%XX`), the HTTP method is upper-cased; what cannot be
//! canonicalised (an encoded slash, a dot segment, a control character, a
//! malformed escape, ...) is refused. The canonical form is ASCII and a fixed
//! point: canonicalising it again gives itself.
//!
//! # Matching
//!
//! The most specific pattern wins: an exact pattern first, then templates
//! (`{param}` segments), preferring at each segment, left to right, a
//! literal over a parameter and a named HTTP method over `*`; then `*/*`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Longest canonical method, in bytes.
pub const MAX_METHOD_LEN: usize = 2048;

/// Longest path (query and fragment dropped) or method accepted before
/// decoding, in bytes. A canonical byte comes from at most three (`%XX`), so
/// only padding (runs of `/`) could make a longer input fit; it is refused
/// as too long before any work is done on it, which bounds the work.
pub const MAX_RAW_METHOD_LEN: usize = 3 * MAX_METHOD_LEN;

/// Longest HTTP method, in letters.
const MAX_VERB_LEN: usize = 16;

/// Why a method or a pattern cannot be canonicalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodErrorKind {
    /// Malformed (HTTP 400 through Envoy).
    Malformed,
    /// Longer than [`MAX_METHOD_LEN`] in canonical form, or than
    /// [`MAX_RAW_METHOD_LEN`] as sent (HTTP 414 through Envoy).
    TooLong,
}

/// Why a method or a pattern is not acceptable, in words a person can act
/// on. The message quotes the offending input (cut at 64 characters) and
/// says what would be right; the caller puts the field's name in front.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MethodError {
    /// Malformed or too long.
    pub kind: MethodErrorKind,
    /// What is wrong and what would be right.
    pub message: String,
}

impl MethodError {
    fn malformed(message: String) -> Self {
        Self { kind: MethodErrorKind::Malformed, message }
    }

    fn too_long(message: String) -> Self {
        Self { kind: MethodErrorKind::TooLong, message }
    }
}

/// A method in canonical form: `/seg/seg/VERB`, the root `//VERB`. Only
/// [`canonical_method`] and [`canonical_request`] make one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CanonicalMethod {
    text: String,
    /// Where the HTTP method starts in `text`.
    verb_at: usize,
}

impl CanonicalMethod {
    /// The canonical text, e.g. `/pets/42/GET`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The resource path: `/pets/42`, or `/` for the root.
    pub fn path(&self) -> &str {
        &self.text[..(self.verb_at - 1).max(1)]
    }

    /// The HTTP method, upper-case.
    pub fn verb(&self) -> &str {
        &self.text[self.verb_at..]
    }

    /// The path's segments, canonical, none empty.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path().split('/').filter(|s| !s.is_empty())
    }
}

impl fmt::Display for CanonicalMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The input, quoted and cut at 64 characters, for messages.
fn shown(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end < s.len() {
        format!("{:?}…", &s[..end])
    } else {
        format!("{s:?}")
    }
}

/// Splits `PATH/VERB` at the last `/`: `"/pets/42/GET"` → (`"/pets/42"`,
/// `"GET"`); `"/GET"` → (`""`, `"GET"`), the root.
fn split_verb(s: &str) -> Option<(&str, &str)> {
    s.rfind('/').map(|i| (&s[..i], &s[i + 1..]))
}

/// The native API's method, `PATH/VERB`, in canonical form. PATH must not
/// carry a query string or fragment (`?`, `#`): refused.
pub fn canonical_method(s: &str) -> Result<CanonicalMethod, MethodError> {
    if s.is_empty() {
        return Err(MethodError::malformed(
            "is empty; send the resource path and HTTP method, like \"/pets/GET\"".into(),
        ));
    }
    if s.len() > MAX_RAW_METHOD_LEN {
        return Err(MethodError::too_long(format!("is longer than {MAX_RAW_METHOD_LEN} bytes")));
    }
    if s.contains(['?', '#']) {
        return Err(MethodError::malformed(format!(
            "{} contains '?' or '#': send the resource path without query string or fragment, like \"/pets/GET\"",
            shown(s)
        )));
    }
    let (path, verb) = split_verb(s).unwrap_or(("", s));
    let path = if path.is_empty() && s.starts_with('/') { "/" } else { path };
    canonicalize(s, path, verb)
}

/// An HTTP request's path and method (as Envoy gives them) in canonical
/// form. The path's query string and fragment are dropped first.
pub fn canonical_request(path: &str, verb: &str) -> Result<CanonicalMethod, MethodError> {
    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    if path.len() > MAX_RAW_METHOD_LEN {
        return Err(MethodError::too_long(format!("the path is longer than {MAX_RAW_METHOD_LEN} bytes")));
    }
    canonicalize(path, path, verb)
}

/// The one canonicaliser: `path` (starting with `/`, no query) and `verb`;
/// `raw` is what the caller sent, for messages.
fn canonicalize(raw: &str, path: &str, verb: &str) -> Result<CanonicalMethod, MethodError> {
    if !path.starts_with('/') {
        return Err(MethodError::malformed(format!(
            "{} must start with \"/\": send the resource path and HTTP method, like \"/pets/GET\"",
            shown(raw)
        )));
    }
    if verb.is_empty() || verb.len() > MAX_VERB_LEN || !verb.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(MethodError::malformed(format!(
            "{} must end with an HTTP method of 1 to {MAX_VERB_LEN} letters, like GET",
            shown(raw)
        )));
    }
    let mut text = String::with_capacity(path.len() + verb.len() + 2);
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        text.push('/');
        push_segment(&mut text, seg).map_err(|e| e.in_method(raw))?;
    }
    if text.is_empty() {
        text.push('/');
    }
    text.push('/');
    let verb_at = text.len();
    text.extend(verb.bytes().map(|b| char::from(b.to_ascii_uppercase())));
    if text.len() > MAX_METHOD_LEN {
        return Err(MethodError::too_long(format!(
            "{} is longer than {MAX_METHOD_LEN} bytes in canonical form",
            shown(raw)
        )));
    }
    Ok(CanonicalMethod { text, verb_at })
}

/// Why one path segment cannot be canonicalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegmentError {
    /// `%` not followed by two hex digits.
    Escape,
    /// `%2F` or `%5C`.
    EncodedSlash,
    /// A raw `\`.
    Backslash,
    /// A control byte, raw or decoded.
    Control,
    /// A raw space.
    Space,
    /// A raw `?` or `#`.
    QueryOrFragment,
    /// `.` or `..`, after decoding.
    Dot,
}

impl SegmentError {
    fn in_method(self, raw: &str) -> MethodError {
        let why = match self {
            SegmentError::Escape => "has a malformed percent-escape (% must be followed by two hex digits; write a % itself as %25)",
            SegmentError::EncodedSlash => "has an encoded slash (%2F) or backslash (%5C), which cannot be canonicalised: upstreams disagree on whether it separates path segments",
            SegmentError::Backslash => "contains a backslash, which some upstreams read as a slash, so it cannot be canonicalised (nor can %5C)",
            SegmentError::Control => "contains a control character (raw or percent-encoded)",
            SegmentError::Space => "contains a space; write it as %20",
            SegmentError::QueryOrFragment => "contains '?' or '#' in a path segment; write them as %3F and %23",
            SegmentError::Dot => "has a \".\" or \"..\" segment (also percent-encoded), whose meaning depends on the upstream's normalisation; send the path it stands for",
        };
        MethodError::malformed(format!("{} {why}", shown(raw)))
    }
}

/// Whether the canonical form writes byte `b` as itself: RFC 3986
/// unreserved (`A-Z a-z 0-9 - . _ ~`), sub-delims (`! $ & ' ( ) * + , ; =`),
/// `:` and `@`.
fn writes_as_itself(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Appends one path segment (no `/` in it) in canonical form to `out`:
/// every `%XX` decoded, then every byte written as itself or as upper-case
/// `%XX` ([`writes_as_itself`]). The one segment rule, for requests and
/// for the literal segments of patterns.
fn push_segment(out: &mut String, seg: &str) -> Result<(), SegmentError> {
    let start = out.len();
    let bytes = seg.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let raw = bytes[i];
        let b = if raw == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_val).ok_or(SegmentError::Escape)?;
            let lo = bytes.get(i + 2).copied().and_then(hex_val).ok_or(SegmentError::Escape)?;
            i += 3;
            let b = hi * 16 + lo;
            if b == b'/' || b == b'\\' {
                return Err(SegmentError::EncodedSlash);
            }
            b
        } else {
            i += 1;
            match raw {
                b'\\' => return Err(SegmentError::Backslash),
                b' ' => return Err(SegmentError::Space),
                b'?' | b'#' => return Err(SegmentError::QueryOrFragment),
                _ => raw,
            }
        };
        if b < 0x20 || b == 0x7f {
            return Err(SegmentError::Control);
        }
        if writes_as_itself(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    if matches!(&out[start..], "." | "..") {
        return Err(SegmentError::Dot);
    }
    Ok(())
}

/// One segment of a resource path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Canonical text.
    Literal(String),
    Param,
}

/// A parsed method pattern, e.g. `/pets/{petId}/GET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodPattern {
    /// The canonical text (literal segments canonical, the HTTP method
    /// upper-case, the root written `//VERB`).
    text: String,
    /// `None` for `*/*`.
    path: Option<Vec<Segment>>,
    /// `None` for `*` (any HTTP method).
    verb: Option<String>,
}

/// Whether `seg` is a parameter, `{name}`: a name of bytes the canonical
/// form writes as themselves, so that the pattern's text stays canonical.
fn is_param(seg: &str) -> bool {
    seg.len() > 2 && seg.starts_with('{') && seg.ends_with('}') && seg[1..seg.len() - 1].bytes().all(writes_as_itself)
}

impl MethodPattern {
    /// Parses a pattern such as `/pets/{petId}/GET`, `/pets/*` or `*/*`,
    /// putting it in canonical form: literal segments as in
    /// [`canonical_method`], the HTTP method upper-cased.
    pub fn parse(s: &str) -> Result<Self, MethodError> {
        if s == "*/*" {
            return Ok(Self { text: s.to_string(), path: None, verb: None });
        }
        if s.len() > MAX_RAW_METHOD_LEN {
            return Err(MethodError::too_long(format!("method pattern is longer than {MAX_RAW_METHOD_LEN} bytes")));
        }
        let Some((path, verb)) = split_verb(s).filter(|_| s.starts_with('/')) else {
            return Err(MethodError::malformed(format!(
                "{} must be a resource path, a slash and an HTTP method, like \"/pets/GET\" or \"/pets/{{petId}}/DELETE\", or \"*/*\"",
                shown(s)
            )));
        };
        let verb = match verb {
            "*" => None,
            v if !v.is_empty() && v.len() <= MAX_VERB_LEN && v.bytes().all(|b| b.is_ascii_alphabetic()) => {
                Some(v.to_ascii_uppercase())
            }
            _ => {
                return Err(MethodError::malformed(format!(
                    "{} must end with an HTTP method of 1 to {MAX_VERB_LEN} letters, like GET, or *",
                    shown(s)
                )))
            }
        };
        let mut text = String::with_capacity(s.len() + 2);
        let mut segments = Vec::new();
        for seg in path.split('/').filter(|p| !p.is_empty()) {
            text.push('/');
            let segment = pattern_segment(&mut text, seg).map_err(|e| e.in_method(s))?;
            segments.push(segment.ok_or_else(|| bad_segment(s, seg))?);
        }
        if segments.is_empty() {
            text.push('/');
        }
        text.push('/');
        text.push_str(verb.as_deref().unwrap_or("*"));
        if text.len() > MAX_METHOD_LEN {
            return Err(MethodError::too_long(format!(
                "{} is longer than {MAX_METHOD_LEN} bytes in canonical form",
                shown(s)
            )));
        }
        Ok(Self { text, path: Some(segments), verb })
    }

    /// The pattern's canonical text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn is_exact(&self) -> bool {
        self.verb.is_some() && self.path.as_ref().is_some_and(|p| p.iter().all(|s| matches!(s, Segment::Literal(_))))
    }

    fn matches(&self, m: &CanonicalMethod) -> bool {
        let Some(path) = &self.path else { return true };
        if self.verb.as_deref().is_some_and(|v| v != m.verb()) {
            return false;
        }
        let mut segs = m.segments();
        path.iter().all(|p| match (p, segs.next()) {
            (Segment::Literal(l), Some(s)) => l == s,
            (Segment::Param, Some(_)) => true,
            (_, None) => false,
        }) && segs.next().is_none()
    }

    /// Ordering key: larger is more specific.
    fn specificity(&self) -> (u8, Vec<u8>, u8) {
        match &self.path {
            None => (0, Vec::new(), 0),
            Some(p) => {
                (1, p.iter().map(|s| matches!(s, Segment::Literal(_)) as u8).collect(), self.verb.is_some() as u8)
            }
        }
    }
}

/// Appends one segment of a pattern to `text`: a parameter as written, a
/// literal by the segment rule. `Ok(None)`: not a pattern segment (a stray
/// brace, a literal `*`).
fn pattern_segment(text: &mut String, seg: &str) -> Result<Option<Segment>, SegmentError> {
    if is_param(seg) {
        text.push_str(seg);
        return Ok(Some(Segment::Param));
    }
    if seg.contains(['{', '}']) {
        return Ok(None);
    }
    let start = text.len();
    push_segment(text, seg)?;
    if &text[start..] == "*" {
        return Ok(None);
    }
    Ok(Some(Segment::Literal(text[start..].to_string())))
}

fn bad_segment(s: &str, seg: &str) -> MethodError {
    MethodError::malformed(format!(
        "{} has an invalid path segment {}: write a parameter as {{name}} and a literal brace as %7B or %7D; a * segment is not a wildcard",
        shown(s),
        shown(seg)
    ))
}

/// Patterns as written, parsed one by one, refusing a second spelling of a
/// pattern already seen (two that have the same canonical text): the error
/// names both. The one place of that rule.
#[derive(Debug, Default)]
pub struct UniquePatterns {
    /// Canonical text → the spelling first seen.
    seen: HashMap<String, String>,
}

impl UniquePatterns {
    /// Parses `raw`: an error when it is malformed or another spelling of a
    /// pattern added before.
    pub fn add(&mut self, raw: &str) -> Result<MethodPattern, MethodError> {
        let p = MethodPattern::parse(raw)?;
        if let Some(first) = self.seen.get(p.as_str()) {
            return Err(MethodError::malformed(format!(
                "{} and {} are the same method pattern, {}: keep one of them",
                shown(raw),
                shown(first),
                p.as_str()
            )));
        }
        self.seen.insert(p.text.clone(), raw.to_string());
        Ok(p)
    }
}

/// Parses patterns as written, each with its value ([`UniquePatterns`]).
pub fn parse_patterns<S: AsRef<str>, V>(
    items: impl IntoIterator<Item = (S, V)>,
) -> Result<Vec<(MethodPattern, V)>, MethodError> {
    let mut unique = UniquePatterns::default();
    items.into_iter().map(|(raw, v)| Ok((unique.add(raw.as_ref())?, v))).collect()
}

/// Patterns as written, keyed by their canonical text ([`parse_patterns`]).
pub fn canonical_patterns<S: AsRef<str>, V>(
    items: impl IntoIterator<Item = (S, V)>,
) -> Result<BTreeMap<String, V>, MethodError> {
    Ok(parse_patterns(items)?.into_iter().map(|(p, v)| (p.text, v)).collect())
}

/// A set of patterns compiled for matching, each with a value.
#[derive(Debug, Clone)]
pub struct MethodTable<T> {
    exact: HashMap<String, usize>,
    /// Non-exact patterns, most specific first.
    templates: Vec<usize>,
    entries: Vec<(MethodPattern, T)>,
}

impl<T> Default for MethodTable<T> {
    fn default() -> Self {
        Self { exact: HashMap::new(), templates: Vec::new(), entries: Vec::new() }
    }
}

impl<T> MethodTable<T> {
    /// Builds a table from patterns as written; two spellings of one
    /// pattern are an error naming both.
    pub fn parse<S: AsRef<str>>(items: impl IntoIterator<Item = (S, T)>) -> Result<Self, MethodError> {
        let entries = parse_patterns(items)?;
        let mut exact = HashMap::new();
        let mut templates = Vec::new();
        for (i, (p, _)) in entries.iter().enumerate() {
            if p.is_exact() {
                exact.insert(p.text.clone(), i);
            } else {
                templates.push(i);
            }
        }
        templates.sort_by(|a, b| entries[*b].0.specificity().cmp(&entries[*a].0.specificity()));
        Ok(Self { exact, templates, entries })
    }

    /// True when the table has no pattern.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most specific pattern matching `method`, with its value.
    pub fn lookup(&self, method: &CanonicalMethod) -> Option<(&MethodPattern, &T)> {
        if self.entries.is_empty() {
            return None;
        }
        if let Some(&i) = self.exact.get(method.as_str()) {
            let (p, v) = &self.entries[i];
            return Some((p, v));
        }
        self.templates.iter().map(|&i| &self.entries[i]).find(|(p, _)| p.matches(method)).map(|(p, v)| (p, v))
    }

    /// All patterns with their values, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&MethodPattern, &T)> {
        self.entries.iter().map(|(p, v)| (p, v))
    }
}

#[cfg(test)]
mod tests;
