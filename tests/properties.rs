//! Property tests across the three protocols (issue 8, defect 2): for random
//! spellings of a method, the native `Limiter::authorize`, ext_authz's
//! `EnvoyAuthzService::decide` and RLS's `EnvoyRlsService::decide` (called
//! in-process, on the memory store: no Envoy, no Redis) resolve to the same
//! method settings; a keyless spelling of a method that needs a key never
//! gets through; a spelling that cannot be canonicalised is refused by all
//! three. And the Envoy services never panic, whatever a request carries.
//!
//! Each property runs 256 cases; a long soak runs more:
//! `PROPTEST_CASES=20000 cargo nextest run --test properties`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{rate_limit_descriptor::Entry, RateLimitDescriptor};
use envoy_types::pb::envoy::service::auth::v3::{
    attribute_context, check_response::HttpResponse, AttributeContext, CheckRequest, CheckResponse,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{rate_limit_response::Code as RlsCode, RateLimitRequest};
use envoy_types::pb::google::protobuf::UInt64Value;
use proptest::prelude::*;
use tollgate::api::envoy_authz::EnvoyAuthzService;
use tollgate::api::envoy_http::EnvoyOptions;
use tollgate::api::envoy_rls::EnvoyRlsService;
use tollgate::catalog::{file, Catalog, CatalogHandle};
use tollgate::limiter::{AuthorizeError, Limiter, Request};
use tollgate::store::keys::Keys;
use tollgate::store::memory::MemoryStore;
use tollgate::store::Store;

const STAGE: &str = "shop/prod";
const KEY: &str = "propkey0123456789abcdefghijklmnopqrstuv";

/// `/admin/GET` needs a key and is throttled (burst 7); every other method
/// needs none (`*/*`, burst 99); `extra` adds exact patterns (canonical
/// text, burst) that need no key either.
fn catalog(extra: &BTreeMap<String, u32>) -> String {
    let mut methods = String::from(
        "          /admin/GET: { throttle: { rate_limit: 1000000, burst_limit: 7 } }\n          \"*/*\": { api_key_required: false, throttle: { rate_limit: 1000000, burst_limit: 99 } }\n",
    );
    for (m, burst) in extra {
        methods.push_str(&format!(
            "          \"{m}\": {{ api_key_required: false, throttle: {{ rate_limit: 1000000, burst_limit: {burst} }} }}\n"
        ));
    }
    format!(
        "apis:\n  - id: shop\n    stages:\n      - name: prod\n        methods:\n{methods}usage_plans:\n  - id: p\n    name: P\n    api_stages: [{{ stage: shop/prod }}]\napi_keys:\n  - name: k\n    value: {KEY}\n    usage_plans: [p]\n"
    )
}

/// What a protocol made of a request, in terms all three can express.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Allowed; the limit the answer describes (the matched pattern's burst).
    Allowed(u64),
    /// Denied with this HTTP status (403, 404, 429).
    Denied(u16),
    /// Refused as malformed (INVALID_ARGUMENT; 400 or 414).
    Refused,
}

/// The three protocols on one catalog and one memory store.
struct Protocols {
    limiter: Arc<Limiter<Store>>,
    authz: EnvoyAuthzService,
    rls: EnvoyRlsService,
}

impl Protocols {
    fn new(yaml: &str) -> Self {
        let data = file::parse("test.yaml", yaml, 1).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let catalog = CatalogHandle::new(Catalog::compile(data).expect("catalog compiles"));
        let store = Store::Memory(Arc::new(MemoryStore::new()));
        let limiter = Arc::new(Limiter::new(catalog, store, Keys::default(), None));
        let options = Arc::new(EnvoyOptions::default());
        Self {
            authz: EnvoyAuthzService::new(limiter.clone(), options.clone()),
            rls: EnvoyRlsService::new(limiter.clone(), options),
            limiter,
        }
    }

    /// The outcome through every protocol (RLS both with a `method` entry
    /// and with `path` + `http_method`), in that order.
    async fn all(&self, path: &str, verb: &str, key: Option<&str>) -> [Outcome; 4] {
        let method = format!("{path}/{verb}");
        let mut rls_method = vec![("method", method.as_str())];
        let mut rls_split = vec![("path", path), ("http_method", verb)];
        if let Some(k) = key {
            rls_method.push(("api_key", k));
            rls_split.push(("api_key", k));
        }
        [
            self.native(&method, key).await,
            ext_authz_outcome(&self.authz.decide(&check_request(path, verb, key)).await.expect("ext_authz answers")),
            rls_outcome(&self.rls.decide(&rls_request(&rls_method)).await.expect("RLS answers")),
            rls_outcome(&self.rls.decide(&rls_request(&rls_split)).await.expect("RLS answers")),
        ]
    }

    async fn native(&self, method: &str, key: Option<&str>) -> Outcome {
        match self.limiter.authorize(Request { api_key: key, stage: STAGE, method, cost: 1 }).await {
            Ok(d) if d.allowed => Outcome::Allowed(d.rate.expect("a throttle applies").limit),
            Ok(d) => Outcome::Denied(d.reason.http_status()),
            Err(AuthorizeError::Invalid(i)) => {
                assert_eq!(i.field, "method", "{i}");
                Outcome::Refused
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn check_request(path: &str, verb: &str, key: Option<&str>) -> CheckRequest {
    let mut headers =
        HashMap::from([(":method".to_string(), verb.to_string()), (":path".to_string(), path.to_string())]);
    if let Some(k) = key {
        headers.insert("x-api-key".into(), k.into());
    }
    let http = attribute_context::HttpRequest { method: verb.into(), path: path.into(), headers, ..Default::default() };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request { http: Some(http), ..Default::default() }),
            context_extensions: HashMap::from([("stage".to_string(), STAGE.to_string())]),
            ..Default::default()
        }),
    }
}

fn rls_request(entries: &[(&str, &str)]) -> RateLimitRequest {
    let entries = entries.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect();
    RateLimitRequest {
        domain: STAGE.into(),
        descriptors: vec![RateLimitDescriptor { entries, ..Default::default() }],
        hits_addend: 0,
    }
}

/// `q` of `"name";q=5;w=5`.
fn policy_limit(value: &str) -> u64 {
    let q = value.split(';').find_map(|p| p.strip_prefix("q=")).unwrap_or_else(|| panic!("no q in {value:?}"));
    q.parse().unwrap_or_else(|_| panic!("bad q in {value:?}"))
}

fn ext_authz_outcome(r: &CheckResponse) -> Outcome {
    match &r.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            let policy = ok
                .response_headers_to_add
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == "ratelimit-policy")
                .expect("an allowed answer carries RateLimit-Policy");
            Outcome::Allowed(policy_limit(&policy.value))
        }
        Some(HttpResponse::DeniedResponse(d)) => match d.status.as_ref().map(|s| s.code) {
            Some(400 | 414) => Outcome::Refused,
            Some(code) => Outcome::Denied(code as u16),
            None => panic!("a denial without a status: {r:?}"),
        },
        _ => panic!("no HTTP response: {r:?}"),
    }
}

fn rls_outcome(r: &envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse) -> Outcome {
    if r.overall_code == RlsCode::Ok as i32 {
        let policy = r.response_headers_to_add.iter().find(|h| h.key == "ratelimit-policy").expect("RateLimit-Policy");
        return Outcome::Allowed(policy_limit(&policy.value));
    }
    let body: serde_json::Value = serde_json::from_slice(&r.raw_body).expect("a JSON body");
    match body["message"].as_str() {
        Some("Bad Request" | "URI Too Long") => Outcome::Refused,
        Some("Forbidden") => Outcome::Denied(403),
        Some("Not Found") => Outcome::Denied(404),
        Some("Too Many Requests" | "Limit Exceeded") => Outcome::Denied(429),
        other => panic!("unexpected RLS body {other:?}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

// ---- the reviewer's spellings (plain regression tests) ----

#[tokio::test]
async fn the_reviewers_spellings_never_get_through_without_a_key() {
    let p = Protocols::new(&catalog(&BTreeMap::new()));
    assert_eq!(p.all("/admin", "GET", None).await, [Outcome::Denied(403); 4]);
    assert_eq!(p.all("/admin", "GET", Some(KEY)).await, [Outcome::Allowed(7); 4]);
    for path in ["/admin/", "//admin"] {
        assert_eq!(p.all(path, "GET", None).await, [Outcome::Denied(403); 4], "{path}");
        assert_eq!(p.all(path, "GET", Some(KEY)).await, [Outcome::Allowed(7); 4], "{path}");
    }
    assert_eq!(p.all("/admin%2F", "GET", None).await, [Outcome::Refused; 4]);
    assert_eq!(p.all("/other", "GET", None).await, [Outcome::Allowed(99); 4]);
}

// ---- random resources and spellings ----

/// A resource: segments of any characters but `/`, `\` and control
/// characters (none `.`, `..` or `*`), and an HTTP method.
#[derive(Debug, Clone)]
struct Resource {
    segments: Vec<String>,
    verb: String,
}

fn resource() -> impl Strategy<Value = Resource> {
    let c = prop_oneof![
        4 => prop::sample::select(b"abcXYZ019-._~".iter().map(|b| char::from(*b)).collect::<Vec<_>>()),
        2 => prop::sample::select("!$&'()*+,;=:@%?# \"<>{}|^`[]".chars().collect::<Vec<_>>()),
        1 => prop::sample::select(vec!['\u{e9}', '\u{80}', '\u{20ac}', '\u{1f600}']),
        1 => any::<char>().prop_filter("no slash, backslash or control", |c| !matches!(c, '/' | '\\') && !c.is_control()),
    ];
    let segment = prop::collection::vec(c, 1..6)
        .prop_map(|v| v.into_iter().collect::<String>())
        .prop_filter("not a dot segment nor *", |s| !matches!(s.as_str(), "." | ".." | "*"));
    (prop::collection::vec(segment, 0..4), "[A-Za-z]{1,8}").prop_map(|(segments, verb)| Resource { segments, verb })
}

/// The canonical text, by the rule of docs/semantics.md written out again.
fn canonical(r: &Resource) -> String {
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

/// Random choices for spelling a resource: per character raw or encoded
/// (random hex case), extra slashes, a trailing slash, the verb's case.
type Choices = (Vec<bool>, Vec<bool>, Vec<usize>, usize, Vec<bool>);

fn choices() -> impl Strategy<Value = Choices> {
    (
        prop::collection::vec(any::<bool>(), 32),
        prop::collection::vec(any::<bool>(), 32),
        prop::collection::vec(prop_oneof![4 => Just(1usize), 1 => 2usize..4], 4),
        0usize..3,
        prop::collection::vec(any::<bool>(), 16),
    )
}

/// (path, verb) of one spelling; `bad` is appended to segment `at` (or
/// added as a segment when `whole`).
fn spell(r: &Resource, c: &Choices, bad: Option<(usize, &str, bool)>) -> (String, String) {
    let (encode, lower_hex, slashes, trailing, lower_verb) = c;
    let mut path = String::new();
    let mut k = 0;
    let segs = r.segments.len().max(1);
    for i in 0..segs {
        path.push_str(&"/".repeat(slashes[i % slashes.len()]));
        for ch in r.segments.get(i).map(String::as_str).unwrap_or("").chars() {
            if matches!(ch, '%' | '?' | '#' | ' ') || encode[k % encode.len()] {
                for b in ch.to_string().bytes() {
                    let hex = format!("%{b:02X}");
                    path.push_str(&if lower_hex[k % lower_hex.len()] { hex.to_ascii_lowercase() } else { hex });
                }
            } else {
                path.push(ch);
            }
            k += 1;
        }
        if let Some((at, piece, whole)) = bad {
            if at % segs == i {
                path.push_str(if whole { "/" } else { "" });
                path.push_str(piece);
            }
        }
    }
    path.push_str(&"/".repeat(*trailing));
    let verb = r.verb.chars().zip(lower_verb).map(|(ch, l)| if *l { ch.to_ascii_lowercase() } else { ch }).collect();
    (path, verb)
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    /// Every spelling of a configured resource resolves, in every protocol,
    /// to that resource's exact pattern (its own burst), and nothing else.
    #[test]
    fn every_protocol_resolves_every_spelling_alike(
        resources in prop::collection::vec(resource(), 1..4),
        pick in any::<prop::sample::Index>(),
        c in choices(),
    ) {
        let mut extra = BTreeMap::new();
        for (i, r) in resources.iter().enumerate() {
            let m = canonical(r);
            if m != "/admin/GET" {
                extra.entry(m).or_insert(100 + i as u32);
            }
        }
        let asked = pick.get(&resources);
        prop_assume!(canonical(asked) != "/admin/GET");
        let want = Outcome::Allowed(u64::from(extra[&canonical(asked)]));
        let p = Protocols::new(&catalog(&extra));
        let (path, verb) = spell(asked, &c, None);
        let got = runtime().block_on(p.all(&path, &verb, None));
        prop_assert_eq!(got, [want; 4], "{} {}", path, verb);
    }

    /// No keyless spelling of `/admin/GET` gets through, in any protocol.
    #[test]
    fn no_keyless_spelling_of_a_keyed_method_gets_through(c in choices()) {
        let admin = Resource { segments: vec!["admin".into()], verb: "GET".into() };
        let p = Protocols::new(&catalog(&BTreeMap::new()));
        let (path, verb) = spell(&admin, &c, None);
        let got = runtime().block_on(p.all(&path, &verb, None));
        prop_assert_eq!(got, [Outcome::Denied(403); 4], "{} {}", path, verb);
    }

    /// A spelling that cannot be canonicalised is refused by all three.
    #[test]
    fn what_cannot_be_canonicalised_is_refused_everywhere(
        r in resource(),
        c in choices(),
        at in 0usize..4,
        bad in prop::sample::select(vec![
            ("%2F", false), ("%2f", false), ("%5C", false), ("%5c", false), ("\\", false), ("%00", false),
            ("%1f", false), ("%7F", false), ("\u{7f}", false), ("\t", false), (" ", false), ("%", false),
            ("%4", false), ("%zz", false), ("%G0", false), (".", true), ("..", true), ("%2e", true),
            ("%2E%2e", true), (".%2E", true),
        ]),
    ) {
        let p = Protocols::new(&catalog(&BTreeMap::new()));
        let (path, verb) = spell(&r, &c, Some((at, bad.0, bad.1)));
        let got = runtime().block_on(p.all(&path, &verb, None));
        prop_assert_eq!(got, [Outcome::Refused; 4], "{} {}", path, verb);
    }
}

// ---- Envoy requests: never a panic ----

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::sample::select(vec![
            "/admin".to_string(),
            "/admin/GET".into(),
            "GET".into(),
            "get".into(),
            "shop/prod".into(),
            "/".into(),
            "".into(),
            "%PATH(NQ:PATH)%/%REQ(:METHOD)%".into(),
            KEY.into(),
            "/a%2F?x#y".into(),
            "/".repeat(7000),
            format!("/{}", "%41".repeat(3000)),
        ]),
    ]
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![":path", ":method", "x-api-key", "X-Api-Key", "content-type"]).prop_map(String::from),
        any::<String>(),
    ]
}

fn check_requests() -> impl Strategy<Value = CheckRequest> {
    let headers = prop::collection::hash_map(header_name(), text(), 0..4);
    let raw = prop::collection::vec((header_name(), text(), prop::collection::vec(any::<u8>(), 0..8)), 0..3);
    let stage = prop::option::of(prop_oneof![Just("shop/prod".to_string()), text()]);
    (text(), text(), headers, raw, stage, any::<bool>(), any::<bool>()).prop_map(
        |(path, method, headers, raw, stage, with_http, with_attributes)| {
            let header_map = (!raw.is_empty()).then(|| HeaderMap {
                headers: raw.into_iter().map(|(key, value, raw_value)| HeaderValue { key, value, raw_value }).collect(),
            });
            let http = attribute_context::HttpRequest { method, path, headers, header_map, ..Default::default() };
            CheckRequest {
                attributes: with_attributes.then(|| AttributeContext {
                    request: Some(attribute_context::Request { http: with_http.then_some(http), ..Default::default() }),
                    context_extensions: stage.map(|s| HashMap::from([("stage".to_string(), s)])).unwrap_or_default(),
                    ..Default::default()
                }),
            }
        },
    )
}

fn rls_requests() -> impl Strategy<Value = RateLimitRequest> {
    let key = prop_oneof![
        prop::sample::select(vec!["api_key", "method", "stage", "path", "http_method"]).prop_map(String::from),
        any::<String>(),
    ];
    let entry = (key, text()).prop_map(|(key, value)| Entry { key, value });
    let hits = prop::option::of(prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>(), 1u64..10]);
    let descriptor = (prop::collection::vec(entry, 0..5), hits, any::<bool>()).prop_map(|(entries, hits, negative)| {
        RateLimitDescriptor {
            entries,
            hits_addend: hits.map(|value| UInt64Value { value }),
            is_negative_hits: negative,
            ..Default::default()
        }
    });
    let domain = prop_oneof![Just("shop/prod".to_string()), text()];
    (domain, prop::collection::vec(descriptor, 0..4), any::<u32>())
        .prop_map(|(domain, descriptors, hits_addend)| RateLimitRequest { domain, descriptors, hits_addend })
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    /// ext_authz answers any request without panicking, and its answer is
    /// consistent: an OK status with an OK response, anything else a denial.
    #[test]
    fn ext_authz_answers_any_request(req in check_requests()) {
        let p = Protocols::new(&catalog(&BTreeMap::new()));
        let r = runtime().block_on(p.authz.decide(&req)).expect("the memory store always decides");
        let ok = r.status.as_ref().is_some_and(|s| s.code == 0);
        match &r.http_response {
            Some(HttpResponse::OkResponse(_)) => prop_assert!(ok, "{r:?}"),
            Some(HttpResponse::DeniedResponse(d)) => {
                prop_assert!(!ok, "{r:?}");
                let code = d.status.as_ref().map_or(0, |s| s.code);
                prop_assert!([400, 403, 404, 414, 429].contains(&code), "{r:?}");
            }
            _ => prop_assert!(false, "no HTTP response: {r:?}"),
        }
    }

    /// RLS answers any request without panicking: one status per
    /// descriptor, or INVALID_ARGUMENT for a descriptor Envoy was
    /// misconfigured to send.
    #[test]
    fn rls_answers_any_request(req in rls_requests()) {
        let p = Protocols::new(&catalog(&BTreeMap::new()));
        match runtime().block_on(p.rls.decide(&req)) {
            Ok(r) => {
                prop_assert_eq!(r.statuses.len(), req.descriptors.len());
                if r.overall_code != RlsCode::Ok as i32 {
                    prop_assert!(serde_json::from_slice::<serde_json::Value>(&r.raw_body).is_ok(), "{r:?}");
                }
            }
            Err(s) => prop_assert_eq!(s.code(), tonic::Code::InvalidArgument, "{:?}", s),
        }
    }
}
