//! Tests of the canonical form and of matching: examples of each rule, and
//! property tests that look for the class of defect (two spellings of one
//! resource that resolve differently; a panic; an output that is not
//! canonical).
//!
//! The property tests run 256 cases each; a long soak runs more:
//! `PROPTEST_CASES=100000 cargo nextest run -E 'test(/method::tests/)'`.

use proptest::prelude::*;

use super::*;

fn table(ps: &[&str]) -> MethodTable<usize> {
    MethodTable::parse(ps.iter().enumerate().map(|(i, p)| (*p, i))).unwrap()
}

fn canon(s: &str) -> String {
    canonical_method(s).unwrap_or_else(|e| panic!("{s:?}: {e}")).as_str().to_string()
}

fn lookup<'a>(t: &'a MethodTable<usize>, m: &str) -> Option<&'a str> {
    t.lookup(&canonical_method(m).unwrap()).map(|(p, _)| p.as_str())
}

#[test]
fn most_specific_wins() {
    let t = table(&["*/*", "/pets/{petId}/GET", "/pets/GET", "/pets/mine/GET", "/pets/{petId}/*"]);
    assert_eq!(lookup(&t, "/pets/GET"), Some("/pets/GET"));
    assert_eq!(lookup(&t, "/pets/mine/GET"), Some("/pets/mine/GET"));
    assert_eq!(lookup(&t, "/pets/42/GET"), Some("/pets/{petId}/GET"));
    assert_eq!(lookup(&t, "/pets/42/DELETE"), Some("/pets/{petId}/*"));
    assert_eq!(lookup(&t, "/owners/GET"), Some("*/*"));
    assert_eq!(lookup(&t, "/pets/42/toys/GET"), Some("*/*"));
}

#[test]
fn literal_segment_beats_parameter_left_to_right() {
    let t = table(&["/{a}/b/GET", "/a/{b}/GET"]);
    assert_eq!(lookup(&t, "/a/b/GET"), Some("/a/{b}/GET"));
}

#[test]
fn root_resource() {
    let t = table(&["//GET"]);
    assert_eq!(lookup(&t, "/GET"), Some("//GET"));
    assert_eq!(lookup(&t, "//GET"), Some("//GET"));
    assert_eq!(lookup(&t, "///get"), Some("//GET"));
    assert_eq!(lookup(&t, "/x/GET"), None);
    assert_eq!(MethodPattern::parse("/GET").unwrap().as_str(), "//GET");
    assert_eq!(MethodPattern::parse("/*").unwrap().as_str(), "//*");
    let root = canonical_method("/GET").unwrap();
    assert_eq!((root.path(), root.verb(), root.segments().count()), ("/", "GET", 0));
}

/// The reviewer's defect: another spelling of `/admin/GET` missed the exact
/// pattern and fell to `*/*`.
#[test]
fn other_spellings_of_an_exact_pattern_find_it() {
    let t = table(&["/admin/GET", "*/*"]);
    for m in ["/admin/GET", "/admin//GET", "//admin/GET", "/admin/get", "/%61dmin/GET", "/admin///GET"] {
        assert_eq!(lookup(&t, m), Some("/admin/GET"), "{m}");
    }
    assert!(canonical_method("/admin%2F/GET").is_err());
}

#[test]
fn the_canonical_form() {
    assert_eq!(canon("//a///b/GET"), "/a/b/GET");
    assert_eq!(canon("/a/b//GET"), "/a/b/GET");
    assert_eq!(canon("/pets/get"), "/pets/GET");
    assert_eq!(canon("/caf%c3%a9/GET"), "/caf%C3%A9/GET");
    assert_eq!(canon("/caf\u{e9}/GET"), "/caf%C3%A9/GET");
    assert_eq!(canon("/caf%C3%A9/GET"), "/caf%C3%A9/GET");
    assert_eq!(canon("/%2541/GET"), "/%2541/GET");
    assert_eq!(canon("/p%65ts/%7e~/GET"), "/pets/~~/GET");
    assert_eq!(canon("/a%20b/GET"), "/a%20b/GET");
    assert_eq!(canon("/%21%24%26%27%28%29%2A%2B%2C%3B%3D%3A%40/GET"), "/!$&'()*+,;=:@/GET");
    assert_eq!(canon("/\"<>{}|^`[]/GET"), "/%22%3C%3E%7B%7D%7C%5E%60%5B%5D/GET");
    assert_eq!(canon("/%3f%23/GET"), "/%3F%23/GET");
    assert_eq!(canon("/...%2e/GET"), "/..../GET");
    assert_eq!(canon(&format!("/{}/GET", "a".repeat(MAX_METHOD_LEN - 5))).len(), MAX_METHOD_LEN);
}

#[test]
fn what_cannot_be_canonicalised_is_refused() {
    for m in [
        "",
        "GET",
        "pets/GET",
        "/pets/",
        "/pets/G3T",
        "/pets/M-SEARCH",
        "/pets/ABCDEFGHIJKLMNOPQ",
        "/pets?x=1/GET",
        "/pets#x/GET",
        "/a%2F/GET",
        "/a%2f/GET",
        "/a%5C/GET",
        "/a\\b/GET",
        "/a b/GET",
        "/a\tb/GET",
        "/a%00/GET",
        "/a%1F/GET",
        "/a%7F/GET",
        "/a\u{7f}/GET",
        "/a%/GET",
        "/a%4/GET",
        "/a%zz/GET",
        "/./GET",
        "/a/../GET",
        "/%2E/GET",
        "/%2e%2E/GET",
    ] {
        let e = canonical_method(m).expect_err(m);
        assert_eq!(e.kind, MethodErrorKind::Malformed, "{m}: {e}");
    }
    let long = format!("/{}/GET", "a".repeat(MAX_METHOD_LEN - 4));
    assert_eq!(canonical_method(&long).unwrap_err().kind, MethodErrorKind::TooLong);
    let huge = format!("/{}/GET", "%41".repeat(MAX_RAW_METHOD_LEN));
    assert_eq!(canonical_method(&huge).unwrap_err().kind, MethodErrorKind::TooLong);
    // Raw non-ASCII triples in size: within the raw bound, over the canonical one.
    let wide = format!("/{}/GET", "\u{e9}".repeat(MAX_METHOD_LEN / 2));
    assert_eq!(canonical_method(&wide).unwrap_err().kind, MethodErrorKind::TooLong);
}

#[test]
fn messages_quote_the_input_and_say_what_to_do() {
    let e = canonical_method("/admin%2F/GET").unwrap_err();
    assert!(e.message.starts_with("\"/admin%2F/GET\""), "{e}");
    assert!(e.message.contains("encoded slash"), "{e}");
    let e = canonical_method("/a b/GET").unwrap_err();
    assert!(e.message.contains("%20"), "{e}");
    let e = canonical_method(&format!("/{}", "x".repeat(200))).unwrap_err();
    assert!(e.message.len() < 200, "{e}");
}

#[test]
fn http_requests_drop_query_and_fragment() {
    let m = canonical_request("/pets//42/?limit=5&x=/y#f", "get").unwrap();
    assert_eq!((m.as_str(), m.path(), m.verb()), ("/pets/42/GET", "/pets/42", "GET"));
    assert_eq!(canonical_request("/?q", "POST").unwrap().as_str(), "//POST");
    assert!(canonical_request("?q", "GET").is_err());
    assert!(canonical_request("*", "OPTIONS").is_err());
}

#[test]
fn patterns() {
    for (p, want) in [
        ("*/*", "*/*"),
        ("/pets/get", "/pets/GET"),
        ("/pets//*", "/pets/*"),
        ("//pets//{petId}/*", "/pets/{petId}/*"),
        ("/caf\u{e9}/GET", "/caf%C3%A9/GET"),
        ("/%7Bx%7D/GET", "/%7Bx%7D/GET"),
        ("/{proxy+}/ANY", "/{proxy+}/ANY"),
    ] {
        let parsed = MethodPattern::parse(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(parsed.as_str(), want, "{p}");
        assert_eq!(MethodPattern::parse(want).unwrap(), parsed, "{want} is a fixed point");
    }
    for p in ["pets/GET", "/pets/G3T", "/pets/{x/GET", "/pets/x}/GET", "/pets/{}/GET", "/pets/*/GET", "/pets/%2A/GET"] {
        assert!(MethodPattern::parse(p).is_err(), "{p}");
    }
    for p in ["/a%2F/GET", "/a b/GET", "/../GET", "/a?b/GET", "/a#/GET", "/{a b}/GET"] {
        assert!(MethodPattern::parse(p).is_err(), "{p}");
    }
    // A literal that decodes to braces is a literal, not a parameter.
    let t = table(&["/%7Bx%7D/GET"]);
    assert_eq!(lookup(&t, "/%7bx%7d/GET"), Some("/%7Bx%7D/GET"));
    assert_eq!(lookup(&t, "/{x}/GET"), Some("/%7Bx%7D/GET"));
    assert_eq!(lookup(&t, "/y/GET"), None);
}

#[test]
fn two_spellings_of_one_pattern_are_an_error_naming_both() {
    let e = MethodTable::parse([("/a/GET", 1), ("/a//get", 2)]).unwrap_err();
    assert!(e.message.contains("\"/a//get\"") && e.message.contains("\"/a/GET\""), "{e}");
    let e = canonical_patterns([("/caf\u{e9}/*", 1), ("/caf%c3%a9/*", 2)]).unwrap_err();
    assert!(e.message.contains("/caf%C3%A9/*"), "{e}");
    assert_eq!(canonical_patterns([("/a/GET", 1), ("/b/GET", 2)]).unwrap().len(), 2);
}

// ---- property tests ----

/// Whether `s` matches the canonical grammar: `//VERB` or `(/SEG)+/VERB`,
/// each SEG bytes written as themselves or `%XX` (upper-case hex) of a byte
/// that must be encoded, not `.` or `..`; VERB 1–16 upper-case letters; at
/// most MAX_METHOD_LEN bytes. Written independently of the canonicaliser.
fn is_canonical(s: &str) -> bool {
    let Some((path, verb)) = s.rsplit_once('/') else { return false };
    let verb_ok = (1..=16).contains(&verb.len()) && verb.bytes().all(|b| b.is_ascii_uppercase());
    let path_ok =
        if path == "/" { true } else { path.starts_with('/') && path[1..].split('/').all(is_canonical_segment) };
    s.len() <= MAX_METHOD_LEN && verb_ok && path_ok
}

fn is_canonical_segment(seg: &str) -> bool {
    const ITSELF: &[u8] = b"-._~!$&'()*+,;=:@";
    let b = seg.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
            if i + 2 >= b.len() {
                return false;
            }
            if !(hex(b[i + 1]) && hex(b[i + 2])) {
                return false;
            }
            let v = u8::from_str_radix(&seg[i + 1..i + 3], 16).unwrap();
            let must_encode = !(v.is_ascii_alphanumeric() || ITSELF.contains(&v));
            if !must_encode || v < 0x20 || v == 0x7f || v == b'/' || v == b'\\' {
                return false;
            }
            i += 3;
        } else if b[i].is_ascii_alphanumeric() || ITSELF.contains(&b[i]) {
            i += 1;
        } else {
            return false;
        }
    }
    !seg.is_empty() && seg != "." && seg != ".."
}

/// Characters that stress the canonicaliser: its delimiters and escapes,
/// and anything at all.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::sample::select(vec!['/', '%', '.', '?', '#', ' ', '\\', '{', '}', '*', '\t', '\u{7f}', '\u{e9}']),
        4 => prop::sample::select(b"0123456789abcdefABCDEFxyzGT".iter().map(|b| char::from(*b)).collect::<Vec<_>>()),
        2 => any::<char>(),
    ]
}

fn tricky_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_char(), 0..max).prop_map(|v| v.into_iter().collect())
}

/// One resource: segments of any characters but `/`, `\` and control
/// characters (none `.` or `..`), and an HTTP method.
#[derive(Debug, Clone)]
struct Resource {
    segments: Vec<String>,
    verb: String,
}

fn resource_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::sample::select(b"abcXYZ019-._~".iter().map(|b| char::from(*b)).collect::<Vec<_>>()),
        2 => prop::sample::select("!$&'()*+,;=:@%?# \"<>{}|^`[]".chars().collect::<Vec<_>>()),
        1 => prop::sample::select(vec!['\u{e9}', '\u{80}', '\u{20ac}', '\u{1f600}', '\u{fffd}']),
        1 => any::<char>().prop_filter("no slash, backslash or control", |c| {
            !matches!(c, '/' | '\\') && !(c.is_ascii_control())
        }),
    ]
}

fn resource() -> impl Strategy<Value = Resource> {
    let segment = prop::collection::vec(resource_char(), 1..8)
        .prop_map(|v| v.into_iter().collect::<String>())
        .prop_filter("not a dot segment", |s| s != "." && s != "..");
    (prop::collection::vec(segment, 0..5), "[A-Za-z]{1,16}").prop_map(|(segments, verb)| Resource { segments, verb })
}

/// The canonical text of a resource, by the rule written out again.
fn expected(r: &Resource) -> String {
    let mut s = String::new();
    for seg in &r.segments {
        s.push('/');
        for b in seg.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
                s.push(char::from(b));
            } else {
                s.push_str(&format!("%{b:02X}"));
            }
        }
    }
    if s.is_empty() {
        s.push('/');
    }
    format!("{s}/{}", r.verb.to_ascii_uppercase())
}

/// How one resource is spelled: per character, raw or percent-encoded (with
/// random hex case); extra slashes before each segment and at the end; the
/// verb's case. Characters that cannot appear raw (`%`, `?`, `#`, space)
/// are always encoded.
#[derive(Debug, Clone)]
struct Spelling {
    encode: Vec<bool>,
    lower_hex: Vec<bool>,
    slashes: Vec<usize>,
    trailing_slashes: usize,
    lower_verb: Vec<bool>,
}

fn spelling() -> impl Strategy<Value = Spelling> {
    (
        prop::collection::vec(any::<bool>(), 64),
        prop::collection::vec(any::<bool>(), 64),
        prop::collection::vec(prop_oneof![6 => Just(1usize), 1 => 2usize..4], 8),
        0usize..3,
        prop::collection::vec(any::<bool>(), 16),
    )
        .prop_map(|(encode, lower_hex, slashes, trailing_slashes, lower_verb)| Spelling {
            encode,
            lower_hex,
            slashes,
            trailing_slashes,
            lower_verb,
        })
}

fn spell_path(r: &Resource, sp: &Spelling, pattern: bool) -> String {
    let mut out = String::new();
    let mut k = 0;
    for (i, seg) in r.segments.iter().enumerate() {
        out.push_str(&"/".repeat(sp.slashes[i % sp.slashes.len()]));
        for c in seg.chars() {
            let must = matches!(c, '%' | '?' | '#' | ' ') || (pattern && matches!(c, '{' | '}'));
            if must || sp.encode[k % sp.encode.len()] {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let hex = format!("{b:02X}");
                    let lower = sp.lower_hex[k % sp.lower_hex.len()];
                    out.push('%');
                    out.push_str(&if lower { hex.to_ascii_lowercase() } else { hex });
                }
            } else {
                out.push(c);
            }
            k += 1;
        }
    }
    if r.segments.is_empty() {
        out.push('/');
    }
    out.push_str(&"/".repeat(sp.trailing_slashes));
    out
}

fn spell_verb(r: &Resource, sp: &Spelling) -> String {
    r.verb
        .chars()
        .zip(&sp.lower_verb)
        .map(|(c, lower)| if *lower { c.to_ascii_lowercase() } else { c.to_ascii_uppercase() })
        .collect()
}

fn fits(r: &Resource) -> bool {
    expected(r).len() <= MAX_METHOD_LEN
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    /// Any input: no panic; an accepted one is canonical and a fixed point.
    #[test]
    fn any_method_is_refused_or_canonical(s in prop_oneof![any::<String>(), tricky_string(40)]) {
        if let Ok(m) = canonical_method(&s) {
            prop_assert!(is_canonical(m.as_str()), "{s:?} -> {:?}", m.as_str());
            prop_assert_eq!(&canonical_method(m.as_str()).unwrap(), &m);
            prop_assert_eq!(&canonical_request(m.path(), m.verb()).unwrap(), &m);
        }
    }

    #[test]
    fn any_request_is_refused_or_canonical(path in prop_oneof![any::<String>(), tricky_string(40)], verb in prop_oneof![any::<String>(), "[a-zA-Z]{0,17}"]) {
        if let Ok(m) = canonical_request(&path, &verb) {
            prop_assert!(is_canonical(m.as_str()), "{path:?} {verb:?} -> {:?}", m.as_str());
            prop_assert_eq!(&canonical_method(m.as_str()).unwrap(), &m);
        }
    }

    /// Long inputs: no panic, and refused as too long past the bounds.
    #[test]
    fn long_methods(s in "/[a%2F/.]{5000,7000}", verb in "[A-Z]{1,3}") {
        let m = format!("{s}/{verb}");
        match canonical_method(&m) {
            Ok(c) => prop_assert!(c.as_str().len() <= MAX_METHOD_LEN),
            Err(e) => prop_assert!(m.len() <= MAX_RAW_METHOD_LEN || e.kind == MethodErrorKind::TooLong),
        }
    }

    /// Every spelling of one resource has one canonical form, the same
    /// through both entrances, and finds the resource's exact pattern.
    #[test]
    fn every_spelling_of_a_resource_is_one_method(r in resource(), a in spelling(), b in spelling()) {
        prop_assume!(fits(&r));
        let want = expected(&r);
        for sp in [&a, &b] {
            let (path, verb) = (spell_path(&r, sp, false), spell_verb(&r, sp));
            let native = canonical_method(&format!("{path}/{verb}"));
            prop_assert_eq!(native.as_ref().map(|m| m.as_str()), Ok(want.as_str()), "{}/{}", path, verb);
            let http = canonical_request(&path, &verb);
            prop_assert_eq!(http.as_ref().map(|m| m.as_str()), Ok(want.as_str()), "{} {}", path, verb);
        }
    }

    /// A pattern spelled any way is the resource's canonical text, and any
    /// spelling of the resource finds it before `*/*`.
    #[test]
    fn every_spelling_of_a_pattern_is_one_pattern(r in resource(), a in spelling(), b in spelling()) {
        prop_assume!(fits(&r) && r.segments.iter().all(|s| s != "*"));
        let want = expected(&r);
        let written = format!("{}/{}", spell_path(&r, &a, true), spell_verb(&r, &a));
        let p = MethodPattern::parse(&written).map_err(|e| TestCaseError::fail(format!("{written:?}: {e}")))?;
        prop_assert_eq!(p.as_str(), want.as_str());
        let t = MethodTable::parse([(written.as_str(), 1), ("*/*", 2)]).unwrap();
        let asked = canonical_method(&format!("{}/{}", spell_path(&r, &b, false), spell_verb(&r, &b))).unwrap();
        prop_assert_eq!(t.lookup(&asked).map(|(p, v)| (p.as_str(), *v)), Some((want.as_str(), 1)));
    }

    /// Any pattern input: no panic; an accepted one is a fixed point.
    #[test]
    fn any_pattern_is_refused_or_a_fixed_point(s in prop_oneof![any::<String>(), tricky_string(40)]) {
        if let Ok(p) = MethodPattern::parse(&s) {
            prop_assert_eq!(&MethodPattern::parse(p.as_str()).unwrap(), &p);
            prop_assert!(p.as_str().is_ascii());
        }
    }
}
