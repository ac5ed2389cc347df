//! Shadow plans (issue 14; docs/semantics.md, "Shadow plans"): a plan with
//! `shadow: true` decides and counts as usual but never denies for its own
//! limits; the answer says `shadow_denied` and why. The stage and account
//! throttles still deny. On both stores, through the native API, the CLI
//! and a real Envoy.

mod support;

use support::envoy::EnvoyProcess;
use support::http::{self, Upstream};
use support::redis::RedisServer;
use support::{req, write_temp, TollgateProcess, ADMIN_TOKEN};
use tollgate::api::pb;

const KEY: &str = "shadowkey0123456789abcdefghijklmnopqrst";

/// Plan "trial" (shadow) on petstore/prod: a throttle of burst 2 that never
/// refills in a test, and a quota of 3 a day; the stage's /pets/{petId}/GET
/// has a shared throttle of burst 3.
const CATALOG: &str = r#"
apis:
  - id: petstore
    stages:
      - name: prod
        methods:
          /pets/GET: {}
          /pets/{petId}/GET:
            throttle: { rate_limit: 0.001, burst_limit: 3 }
usage_plans:
  - id: trial
    name: Trial
    shadow: true
    throttle: { rate_limit: 0.001, burst_limit: 2 }
    quota: { limit: 3, period: DAY }
    api_stages:
      - stage: petstore/prod
api_keys:
  - name: shadow
    value: shadowkey0123456789abcdefghijklmnopqrst
    usage_plans: [trial]
"#;

fn start(redis: Option<&RedisServer>) -> (tempfile::TempDir, TollgateProcess) {
    let (dir, path) = write_temp("catalog.yaml", CATALOG);
    let path = path.to_str().unwrap().to_string();
    let url = redis.map(|r| r.url());
    let mut args = vec!["--config", path.as_str(), "--metrics-listen", "127.0.0.1:0"];
    if let Some(u) = &url {
        args.extend(["--redis-url", u.as_str()]);
    }
    let p = TollgateProcess::start_with_env(&args, &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)]);
    (dir, p)
}

async fn ask(p: &TollgateProcess, method: &str) -> pb::AuthorizeResponse {
    let mut c = p.authorizer().await;
    c.authorize(req(Some(KEY), "petstore/prod", method, None)).await.expect("authorize").into_inner()
}

async fn scenario(redis: Option<&RedisServer>) {
    let (_dir, p) = start(redis);
    p.wait_serving().await;

    // The burst of 2 passes as usual.
    for left in [1, 0] {
        let r = ask(&p, "/pets/GET").await;
        assert!(r.allowed && !r.shadow_denied, "{r:?}");
        assert_eq!(r.rate_limit.unwrap().remaining, left);
    }
    // Then the plan's throttle would deny: allowed, saying so.
    let r = ask(&p, "/pets/GET").await;
    assert!(r.allowed, "a shadow plan never denies for its own limits: {r:?}");
    assert_eq!((r.reason(), r.http_status, r.message.as_str()), (pb::Reason::Ok, 200, "OK"));
    assert!(r.shadow_denied);
    assert_eq!(r.shadow_reason(), pb::Reason::Throttled);
    let rl = r.rate_limit.unwrap();
    assert_eq!((rl.kind(), rl.limit, rl.remaining), (pb::LimitKind::PlanThrottle, 2, 0), "the limit that would deny");
    assert_eq!(r.retry_after_ms, None);

    // It counted as usual: the denied request took nothing (the quota has 1
    // of 3 left), and the same plan made enforcing denies at once.
    let admin = p.admin_url();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .expect("run the CLI");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let auth = cli(&[
        "authorize",
        "--server",
        &p.url(),
        "--key",
        KEY,
        "--stage",
        "petstore/prod",
        "--method",
        "/pets/GET",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&auth).unwrap();
    assert_eq!((v["allowed"].as_bool(), v["shadow_denied"].as_bool()), (Some(true), Some(true)), "{auth}");
    assert_eq!(v["shadow_reason"], "THROTTLED", "{auth}");
    let text = p.metrics_text().await;
    assert!(text.lines().any(|l| l == "tollgate_shadow_denials_total{reason=\"THROTTLED\"} 2"), "{text}");
    if redis.is_some() {
        // The second would-be denial came from the deny cache: counted as
        // the denial it was, not as the allow it became.
        assert!(text.lines().any(|l| l == "tollgate_deny_cache_hits_total{reason=\"THROTTLED\"} 1"), "{text}");
        assert!(!text.contains("tollgate_deny_cache_hits_total{reason=\"OK\"}"), "{text}");
    }

    cli(&["plans", "update", "trial", "--shadow", "false", "--server", &admin]);
    let plan: serde_json::Value =
        serde_json::from_str(&cli(&["plans", "get", "trial", "--json", "--server", &admin])).unwrap();
    assert_eq!(plan["shadow"], false);
    let r = ask(&p, "/pets/GET").await;
    assert!(!r.allowed && !r.shadow_denied, "enforcing now: {r:?}");
    assert_eq!(r.reason(), pb::Reason::Throttled);
    cli(&["plans", "update", "trial", "--shadow", "true", "--server", &admin]);

    // A stage throttle (shared by all callers) still denies a shadow plan's
    // request: its burst of 3 passes (the plan would deny the 3rd: shadow),
    // then the stage's own denial stands.
    for _ in 0..3 {
        let r = ask(&p, "/pets/7/GET").await;
        assert!(r.allowed, "{r:?}");
    }
    let r = ask(&p, "/pets/7/GET").await;
    assert!(!r.allowed && !r.shadow_denied, "{r:?}");
    assert_eq!(r.reason(), pb::Reason::Throttled);
    assert_eq!(r.rate_limit.unwrap().kind(), pb::LimitKind::StageMethodThrottle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_plan_allows_and_says_so_in_memory() {
    scenario(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_plan_allows_and_says_so_on_redis() {
    let redis = RedisServer::start();
    scenario(Some(&redis)).await;
}

/// Through Envoy's ext_authz: a request the shadow plan would deny reaches
/// the service, which (and the client) sees `x-tollgate-shadow-denied`; a
/// client cannot forge it.
#[test]
fn envoy_passes_shadow_denials_upstream_with_a_header() {
    let redis = RedisServer::start();
    let (_dir, p) = start(Some(&redis));
    let upstream = Upstream::start();
    let config = support::envoy::shipped_config("ext_authz.yaml", p.addr, upstream.addr, &[]);
    let envoy = EnvoyProcess::start(&config);
    let get = |forged: bool| {
        let mut h = vec![("x-api-key", KEY)];
        if forged {
            h.push(("x-tollgate-shadow-denied", "QUOTA_EXCEEDED"));
        }
        http::get(envoy.addr, "/pets", &h)
    };
    for _ in 0..2 {
        let r = get(true);
        assert_eq!(r.status, 200, "{r:?}\n{}", envoy.log());
        assert_eq!(r.header("x-tollgate-shadow-denied"), None);
        assert_eq!(upstream.last().unwrap().header("x-tollgate-shadow-denied"), None, "a forged header is removed");
    }
    let r = get(false);
    assert_eq!(r.status, 200, "a shadow plan's would-be denial still reaches the service: {r:?}");
    assert_eq!(r.header("x-tollgate-shadow-denied"), Some("THROTTLED"));
    assert_eq!(upstream.last().unwrap().header("x-tollgate-shadow-denied"), Some("THROTTLED"));
    assert_eq!(upstream.count(), 3);
}
