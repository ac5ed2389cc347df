//! Method names and the matching of an incoming request to a stage's method
//! settings or a plan's per-method throttles.
//!
//! A method is written like API Gateway's throttle keys: the resource path,
//! a slash, and the HTTP method: `/pets/GET`, `/pets/{petId}/DELETE`. The
//! root resource is `//GET` (API Gateway's spelling); an incoming `/GET` means
//! the same. `*/*` matches every method, and an HTTP method of `*` (e.g.
//! `/pets/*`) matches every HTTP method of one path.
//!
//! The most specific pattern wins: an exact pattern first, then templates
//! (`{param}` segments), preferring at each segment, left to right, a
//! literal over a parameter and a named HTTP method over `*`; then `*/*`.

use std::collections::HashMap;

/// One segment of a resource path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

/// A parsed method pattern, e.g. `/pets/{petId}/GET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodPattern {
    /// The pattern as written (normalised: root written `//VERB`).
    text: String,
    /// `None` for `*/*`.
    path: Option<Vec<Segment>>,
    /// `None` for `*` (any HTTP method).
    verb: Option<String>,
}

/// Why a method or pattern string is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MethodError(pub String);

/// Longest accepted method string, in bytes.
pub const MAX_METHOD_LEN: usize = 2048;

fn valid_verb(v: &str) -> bool {
    !v.is_empty() && v.len() <= 16 && v.bytes().all(|b| b.is_ascii_uppercase())
}

/// Splits `"/pets/42/GET"` into (`"/pets/42"`, `"GET"`), and `"/GET"` or
/// `"//GET"` into (`"/"`, `"GET"`).
fn split_method(s: &str) -> Option<(&str, &str)> {
    if !s.starts_with('/') {
        return None;
    }
    let i = s.rfind('/')?;
    let (path, verb) = (&s[..i], &s[i + 1..]);
    let path = if path.is_empty() { "/" } else { path };
    Some((path, verb))
}

impl MethodPattern {
    /// Parses a pattern such as `/pets/{petId}/GET`, `/pets/*` or `*/*`.
    pub fn parse(s: &str) -> Result<Self, MethodError> {
        if s == "*/*" {
            return Ok(Self { text: s.to_string(), path: None, verb: None });
        }
        if s.len() > MAX_METHOD_LEN {
            return Err(MethodError(format!("method pattern is longer than {MAX_METHOD_LEN} bytes")));
        }
        let (path, verb) = split_method(s).ok_or_else(|| {
            MethodError(format!(
                "method pattern {s:?} must be a resource path, a slash and an HTTP method, like \"/pets/GET\" or \"/pets/{{petId}}/DELETE\", or \"*/*\""
            ))
        })?;
        let verb = if verb == "*" {
            None
        } else if valid_verb(verb) {
            Some(verb.to_string())
        } else {
            return Err(MethodError(format!(
                "method pattern {s:?} must end with an upper-case HTTP method such as GET, or *"
            )));
        };
        let mut segments = Vec::new();
        for seg in path.split('/').filter(|p| !p.is_empty()) {
            if seg.starts_with('{') && seg.ends_with('}') && seg.len() > 2 {
                segments.push(Segment::Param);
            } else if seg.contains(['{', '}', '*', '?', '#']) || seg == "." || seg == ".." {
                return Err(MethodError(format!(
                    "method pattern {s:?} has an invalid path segment {seg:?}; write parameters as {{name}}"
                )));
            } else {
                segments.push(Segment::Literal(seg.to_string()));
            }
        }
        let text = format!("{}/{}", if path == "/" { "/" } else { path }, verb.as_deref().unwrap_or("*"));
        Ok(Self { text, path: Some(segments), verb })
    }

    /// The pattern as written, normalised.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn is_exact(&self) -> bool {
        self.verb.is_some() && self.path.as_ref().is_some_and(|p| p.iter().all(|s| matches!(s, Segment::Literal(_))))
    }

    fn matches(&self, segs: &[&str], verb: &str) -> bool {
        let Some(path) = &self.path else { return true };
        if let Some(v) = &self.verb {
            if v != verb {
                return false;
            }
        }
        path.len() == segs.len()
            && path.iter().zip(segs).all(|(p, s)| match p {
                Segment::Literal(l) => l == s,
                Segment::Param => !s.is_empty(),
            })
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

/// Validates an incoming method string (`/pets/42/GET`) and returns its
/// canonical form's parts: the path segments and the HTTP method.
pub fn parse_request_method(s: &str) -> Result<(Vec<&str>, &str), MethodError> {
    if s.is_empty() {
        return Err(MethodError("method is empty; send the resource path and HTTP method, like \"/pets/GET\"".into()));
    }
    if s.len() > MAX_METHOD_LEN {
        return Err(MethodError(format!("method is longer than {MAX_METHOD_LEN} bytes")));
    }
    let (path, verb) = split_method(s).ok_or_else(|| {
        MethodError(format!(
            "method {:?} must start with \"/\": send the resource path and HTTP method, like \"/pets/GET\"",
            truncate(s)
        ))
    })?;
    if !valid_verb(verb) {
        return Err(MethodError(format!(
            "method {:?} must end with an upper-case HTTP method such as GET",
            truncate(s)
        )));
    }
    if s.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(MethodError("method contains spaces or control characters".into()));
    }
    Ok((path.split('/').filter(|p| !p.is_empty()).collect(), verb))
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
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
    /// Builds a table; a later duplicate of a pattern replaces an earlier one.
    pub fn new(items: impl IntoIterator<Item = (MethodPattern, T)>) -> Self {
        let mut entries: Vec<(MethodPattern, T)> = Vec::new();
        for (p, v) in items {
            if let Some(e) = entries.iter_mut().find(|(q, _)| q == &p) {
                e.1 = v;
            } else {
                entries.push((p, v));
            }
        }
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
        Self { exact, templates, entries }
    }

    /// True when the table has no pattern.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most specific pattern matching `method` (already validated), with its value.
    pub fn lookup(&self, method: &str) -> Option<(&MethodPattern, &T)> {
        if self.entries.is_empty() {
            return None;
        }
        let (path, verb) = split_method(method)?;
        let segs: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let exact_hit = if path == "/" { self.exact.get(&format!("//{verb}")) } else { self.exact.get(method) };
        if let Some(&i) = exact_hit {
            let (p, v) = &self.entries[i];
            return Some((p, v));
        }
        self.templates.iter().map(|&i| &self.entries[i]).find(|(p, _)| p.matches(&segs, verb)).map(|(p, v)| (p, v))
    }

    /// All patterns with their values, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&MethodPattern, &T)> {
        self.entries.iter().map(|(p, v)| (p, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(ps: &[&str]) -> MethodTable<usize> {
        MethodTable::new(ps.iter().enumerate().map(|(i, p)| (MethodPattern::parse(p).unwrap(), i)))
    }

    #[test]
    fn most_specific_wins() {
        let t = table(&["*/*", "/pets/{petId}/GET", "/pets/GET", "/pets/mine/GET", "/pets/{petId}/*"]);
        assert_eq!(t.lookup("/pets/GET").unwrap().0.as_str(), "/pets/GET");
        assert_eq!(t.lookup("/pets/mine/GET").unwrap().0.as_str(), "/pets/mine/GET");
        assert_eq!(t.lookup("/pets/42/GET").unwrap().0.as_str(), "/pets/{petId}/GET");
        assert_eq!(t.lookup("/pets/42/DELETE").unwrap().0.as_str(), "/pets/{petId}/*");
        assert_eq!(t.lookup("/owners/GET").unwrap().0.as_str(), "*/*");
        assert_eq!(t.lookup("/pets/42/toys/GET").unwrap().0.as_str(), "*/*");
    }

    #[test]
    fn literal_segment_beats_parameter_left_to_right() {
        let t = table(&["/{a}/b/GET", "/a/{b}/GET"]);
        assert_eq!(t.lookup("/a/b/GET").unwrap().0.as_str(), "/a/{b}/GET");
    }

    #[test]
    fn root_resource() {
        let t = table(&["//GET"]);
        assert_eq!(t.lookup("/GET").unwrap().0.as_str(), "//GET");
        assert_eq!(t.lookup("//GET").unwrap().0.as_str(), "//GET");
        assert!(t.lookup("/x/GET").is_none());
    }

    #[test]
    fn bad_patterns_and_methods() {
        assert!(MethodPattern::parse("pets/GET").is_err());
        assert!(MethodPattern::parse("/pets/get").is_err());
        assert!(MethodPattern::parse("/pets/{x/GET").is_err());
        assert!(parse_request_method("pets/GET").is_err());
        assert!(parse_request_method("/pets/get").is_err());
        assert!(parse_request_method("").is_err());
        assert!(parse_request_method("/pets/GET").is_ok());
    }
}
