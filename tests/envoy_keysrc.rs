//! ext_authz key sources behind a real Envoy 1.40 (docs/envoy.md, "Key
//! sources"): the API key from a query parameter (`--api-key-query`) and
//! from a JWT claim that Envoy's `jwt_authn` verified and put in dynamic
//! metadata (`--api-key-metadata`), with the shipped configs
//! `deploy/envoy/ext_authz.yaml` and `deploy/envoy/ext_authz_jwt.yaml`.
//!
//! The JWTs are HS256, signed here with `ring::hmac`; Envoy verifies them
//! against a local JWKS (a `kty: oct` key) written into its config.

mod support;

use support::envoy::EnvoyProcess;
use support::http::{self, Response, Upstream};
use support::redis::RedisServer;
use support::{write_temp, TollgateProcess, DEMO_KEY};

/// A key in plan `basic` (burst 5).
const OTHER_KEY: &str = "tgother0123456789abcdefghijklmnopqrstuv";
/// Well-formed, but no such key.
const WRONG_KEY: &str = "tgwrong0123456789abcdefghijklmnopqrstuvw";
/// A JWT `sub` registered as a key's value, in plan `jwt` (burst 2).
const JWT_SUB: &str = "alice0123456789abcdefghijklmnopqrstuvwxyz";

const CATALOG: &str = r#"
apis:
  - id: petstore
    stages:
      - name: prod
        methods:
          /pets/GET: {}
          /pets/health/GET: { api_key_required: false }
usage_plans:
  - id: basic
    name: Basic
    throttle: { rate_limit: 0.01, burst_limit: 5 }
    api_stages:
      - stage: petstore/prod
  - id: jwt
    name: JWT callers
    throttle: { rate_limit: 0.01, burst_limit: 2 }
    api_stages:
      - stage: petstore/prod
api_keys:
  - id: key-demo
    name: demo
    value: tgdemo0123456789abcdefghijklmnopqrstuvw
    usage_plans: [basic]
  - id: key-other
    name: other
    value: tgother0123456789abcdefghijklmnopqrstuv
    usage_plans: [basic]
  - id: key-alice
    name: alice (JWT sub)
    value: alice0123456789abcdefghijklmnopqrstuvwxyz
    usage_plans: [jwt]
"#;

/// The HS256 secret of the tests' JWKS.
const SECRET: &[u8] = b"a test secret of at least 32 bytes, for HS256";

struct Stack {
    envoy: EnvoyProcess,
    upstream: Upstream,
    tollgate: TollgateProcess,
    _redis: RedisServer,
    _catalog: tempfile::TempDir,
}

impl Stack {
    /// Redis, tollgate with `args`, the upstream and Envoy with the shipped
    /// `deploy/envoy/FILE`, ports replaced and `edits` made (each `from`
    /// exactly once).
    fn start(file: &str, args: &[&str], edits: &[(&str, &str)]) -> Self {
        let redis = RedisServer::start();
        let (dir, path) = write_temp("catalog.yaml", CATALOG);
        let url = redis.url();
        let mut all = vec!["--config", path.to_str().expect("utf-8 temp path"), "--redis-url", &url];
        all.extend_from_slice(args);
        let tollgate = TollgateProcess::start(&all);
        let upstream = Upstream::start();
        let envoy = EnvoyProcess::start(&support::envoy::shipped_config(file, tollgate.addr, upstream.addr, edits));
        Self { envoy, upstream, tollgate, _redis: redis, _catalog: dir }
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        http::get(self.envoy.addr, path, headers)
    }

    fn logs(&self) -> String {
        format!("--- tollgate ---\n{}\n{}", self.tollgate.log(), self.envoy.log())
    }
}

#[track_caller]
fn assert_denial(r: &Response, status: u16, message: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.json(), serde_json::json!({ "message": message }), "{r:?}");
}

/// `RateLimit: "name";r=N;...`: N.
fn remaining(r: &Response) -> u64 {
    let v = r.header("ratelimit").unwrap_or_else(|| panic!("no RateLimit: {r:?}"));
    v.split(';').find_map(|p| p.strip_prefix("r=")?.parse().ok()).unwrap_or_else(|| panic!("no r= in {v}"))
}

// ---------------------------------------------------------------------------
// --api-key-query
// ---------------------------------------------------------------------------

#[test]
fn query_parameter_key_is_checked_and_removed_before_upstream() {
    let s = Stack::start("ext_authz.yaml", &["--api-key-query", "api_key"], &[]);

    let r = s.get(&format!("/pets?page=2&api_key={DEMO_KEY}&x=y"), &[]);
    assert_eq!(r.status, 200, "{r:?}\n{}", s.logs());
    assert_eq!(remaining(&r), 4, "counted against plan basic");
    let seen = s.upstream.last().expect("forwarded");
    assert_eq!(seen.path, "/pets?page=2&x=y", "the key parameter is removed, the others kept");
    assert_eq!(seen.header("x-tollgate-key-id"), Some("key-demo"));
    assert_eq!(seen.header("x-tollgate-plan-id"), Some("basic"));

    // Percent-encoded value (and name): decoded.
    let enc: String = DEMO_KEY.bytes().map(|b| format!("%{b:02X}")).collect();
    let r = s.get(&format!("/pets?api%5Fkey={enc}"), &[]);
    assert_eq!(r.status, 200, "{r:?}\n{}", s.logs());
    assert_eq!(remaining(&r), 3);
    assert!(!s.upstream.last().expect("forwarded").path.contains(DEMO_KEY));

    // Wrong key, no key, a value that cannot be a key: 403.
    assert_denial(&s.get(&format!("/pets?api_key={WRONG_KEY}"), &[]), 403, "Forbidden");
    assert_denial(&s.get("/pets", &[]), 403, "Forbidden");
    assert_denial(&s.get("/pets?api_key=", &[]), 403, "Forbidden");
    assert_denial(&s.get("/pets?api_key=a%20b", &[]), 403, "Forbidden");
    assert_denial(&s.get(&format!("/pets?api_key={DEMO_KEY}&api_key={OTHER_KEY}"), &[]), 403, "Forbidden");
    assert_eq!(s.upstream.count(), 2, "denials never reach the upstream");

    // The header still works; header and query must agree.
    let r = s.get("/pets", &[("x-api-key", DEMO_KEY)]);
    assert_eq!(r.status, 200, "{r:?}");
    let r = s.get(&format!("/pets?api_key={DEMO_KEY}"), &[("x-api-key", DEMO_KEY)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(remaining(&r), 1);
    let r = s.get(&format!("/pets?api_key={OTHER_KEY}"), &[("x-api-key", DEMO_KEY)]);
    assert_denial(&r, 403, "Forbidden");
    assert_eq!(s.upstream.count(), 4);

    // A method that needs no key: the parameter is still taken off.
    let r = s.get(&format!("/pets/health?api_key={OTHER_KEY}"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.upstream.last().expect("forwarded").path, "/pets/health");

    assert!(!s.tollgate.log().contains(DEMO_KEY), "key values are never logged");
}

#[test]
fn query_parameter_key_is_forwarded_with_forward_api_key() {
    let s = Stack::start("ext_authz.yaml", &["--api-key-query", "api_key", "--forward-api-key"], &[]);
    let r = s.get(&format!("/pets?api_key={DEMO_KEY}"), &[]);
    assert_eq!(r.status, 200, "{r:?}\n{}", s.logs());
    assert_eq!(s.upstream.last().expect("forwarded").path, format!("/pets?api_key={DEMO_KEY}"));
}

#[test]
fn without_api_key_query_the_parameter_is_no_key() {
    let s = Stack::start("ext_authz.yaml", &[], &[]);
    assert_denial(&s.get(&format!("/pets?api_key={DEMO_KEY}"), &[]), 403, "Forbidden");
}

// ---------------------------------------------------------------------------
// --api-key-metadata: a JWT claim from jwt_authn
// ---------------------------------------------------------------------------

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// An HS256 JWT with `claims`, signed with `secret`.
fn jwt(claims: &serde_json::Value, secret: &[u8]) -> String {
    let header = b64url(br#"{"alg":"HS256","typ":"JWT","kid":"test"}"#);
    let payload = b64url(claims.to_string().as_bytes());
    let input = format!("{header}.{payload}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let sig = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64url(sig.as_ref()))
}

fn claims(sub: &str) -> serde_json::Value {
    serde_json::json!({ "iss": "https://issuer.example", "sub": sub, "exp": 4_102_444_800u64 })
}

/// The JWT stack: the shipped ext_authz_jwt.yaml with the test's JWKS.
fn jwt_stack(extra: &[&str]) -> Stack {
    let shipped = r#"inline_string: '{"keys":[{"kty":"oct","alg":"HS256","kid":"demo","k":"dG9sbGdhdGUtZGVtby1oczI1Ni1zZWNyZXQtcmVwbGFjZS1tZSEh"}]}'"#;
    let ours =
        format!(r#"inline_string: '{{"keys":[{{"kty":"oct","alg":"HS256","kid":"test","k":"{}"}}]}}'"#, b64url(SECRET));
    let mut args = vec!["--api-key-metadata", "envoy.filters.http.jwt_authn:jwt_payload.sub"];
    args.extend_from_slice(extra);
    Stack::start("ext_authz_jwt.yaml", &args, &[(shipped, &ours)])
}

#[test]
fn jwt_claim_is_the_key_and_counts_against_its_plan() {
    let s = jwt_stack(&[]);
    let token = jwt(&claims(JWT_SUB), SECRET);
    let bearer = format!("Bearer {token}");

    for left in [1, 0] {
        let r = s.get("/pets", &[("authorization", &bearer)]);
        assert_eq!(r.status, 200, "{r:?}\n{}", s.logs());
        assert_eq!(remaining(&r), left, "plan jwt, burst 2");
        let seen = s.upstream.last().expect("forwarded");
        assert_eq!(seen.header("x-tollgate-key-id"), Some("key-alice"));
        assert_eq!(seen.header("x-tollgate-plan-id"), Some("jwt"));
        assert_eq!(seen.header("authorization"), None, "jwt_authn's forward: false");
    }
    let r = s.get("/pets", &[("authorization", &bearer)]);
    assert_denial(&r, 429, "Too Many Requests");
    assert_eq!(s.upstream.count(), 2);

    // A valid token whose claim is no key: tollgate's 403.
    let stranger = format!("Bearer {}", jwt(&claims("bob0123456789abcdefghijklmnopqrstuvwxyz"), SECRET));
    assert_denial(&s.get("/pets", &[("authorization", &stranger)]), 403, "Forbidden");
    // A claim that cannot be a key (too short, a dash): no key, 403.
    let odd = format!("Bearer {}", jwt(&claims("user-42"), SECRET));
    assert_denial(&s.get("/pets", &[("authorization", &odd)]), 403, "Forbidden");

    // A bad signature, or no token: jwt_authn's 401, tollgate never asked.
    let checks = s.envoy.stat("http.ingress_http.ext_authz.ok") + s.envoy.stat("http.ingress_http.ext_authz.denied");
    let forged = format!("Bearer {}", jwt(&claims(JWT_SUB), b"another secret, not the JWKS one........"));
    let r = s.get("/pets", &[("authorization", &forged)]);
    assert_eq!(r.status, 401, "{r:?}");
    let r = s.get("/pets", &[("x-api-key", DEMO_KEY)]);
    assert_eq!(r.status, 401, "a key header without a token: {r:?}");
    let after = s.envoy.stat("http.ingress_http.ext_authz.ok") + s.envoy.stat("http.ingress_http.ext_authz.denied");
    assert_eq!(after, checks, "jwt_authn answered before ext_authz");
    assert_eq!(s.upstream.count(), 2);
    assert!(!s.tollgate.log().contains(JWT_SUB), "key values are never logged");
}

#[test]
fn jwt_caller_cannot_name_another_key_in_a_header() {
    let s = jwt_stack(&[]);
    let bearer = format!("Bearer {}", jwt(&claims(JWT_SUB), SECRET));
    // The token's key and another key in the header disagree: 403.
    let r = s.get("/pets", &[("authorization", &bearer), ("x-api-key", DEMO_KEY)]);
    assert_denial(&r, 403, "Forbidden");
    // The same key in both: fine.
    let r = s.get("/pets", &[("authorization", &bearer), ("x-api-key", JWT_SUB)]);
    assert_eq!(r.status, 200, "{r:?}\n{}", s.logs());
    assert_eq!(s.upstream.last().expect("forwarded").header("x-tollgate-key-id"), Some("key-alice"));
    assert_eq!(s.upstream.count(), 1);
}

#[test]
fn key_source_flags_are_checked_at_start() {
    for (args, field) in [
        (&["--api-key-query", "a b"][..], "api_key_query"),
        (&["--api-key-query", ""][..], "api_key_query"),
        (&["--api-key-metadata", "no-colon"][..], "api_key_metadata"),
        (&["--api-key-metadata", "envoy.filters.http.jwt_authn:"][..], "api_key_metadata"),
        (&["--api-key-metadata", ":jwt_payload.sub"][..], "api_key_metadata"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
            .args(args)
            .output()
            .expect("run tollgate");
        assert!(!out.status.success(), "{args:?} should be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "{args:?}: the error names {field}: {err}");
    }
}
