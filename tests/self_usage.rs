//! Self-service usage (issue 14): `tollgate.v1.Authorizer/GetOwnUsage` and
//! `GET /v1/self`, on the memory store and on Redis (docs/usage.md,
//! "Self-service usage").

mod support;

use std::time::Duration;

use serde_json::Value;
use support::redis::RedisServer;
use support::{req, write_temp, TollgateProcess};
use tollgate::api::pb;
use tonic::Code;

/// The value of the key with id `id` (ids here are alphanumeric).
fn value(id: &str) -> String {
    format!("{id}{}", "v".repeat(40 - id.len()))
}

/// Two plans for `k1` (one with a daily quota of 10 and a throttle, one
/// with no quota), `k2` in the first plan, `k3` in none, `k4` disabled.
fn catalog() -> String {
    format!(
        r#"
apis:
  - id: shop
    stages:
      - name: prod
      - name: test
usage_plans:
  - id: gold
    name: Gold
    throttle: {{ rate_limit: 100, burst_limit: 200 }}
    quota: {{ limit: 10, period: DAY }}
    api_stages:
      - stage: shop/prod
  - id: free
    name: Free
    api_stages:
      - stage: shop/test
api_keys:
  - id: k1
    name: one
    value: {}
    usage_plans: [gold, free]
  - id: k2
    name: two
    value: {}
    usage_plans: [gold]
  - id: k3
    name: three
    value: {}
  - id: k4
    name: four
    enabled: false
    value: {}
    usage_plans: [gold]
"#,
        value("k1"),
        value("k2"),
        value("k3"),
        value("k4")
    )
}

/// A tollgate with the catalog and the HTTP API, on Redis when `redis` is
/// given, else on the memory store.
async fn start(redis: Option<&RedisServer>) -> (tempfile::TempDir, TollgateProcess) {
    let (dir, path) = write_temp("catalog.yaml", &catalog());
    let path = path.to_str().unwrap().to_string();
    let mut args = vec!["--config".to_string(), path, "--http-listen".into(), "127.0.0.1:0".into()];
    if let Some(r) = redis {
        args.extend(["--redis-url".to_string(), r.url()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = TollgateProcess::start(&args);
    p.wait_serving().await;
    (dir, p)
}

/// Whether it is within a minute of midnight UTC, when the DAY quota would
/// reset between the calls of a test (which then skips, saying so).
fn near_midnight() -> bool {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let near = 86_400_000 - now % 86_400_000 < Duration::from_secs(60).as_millis() as u64;
    if near {
        eprintln!("skipped: within a minute of midnight UTC");
    }
    near
}

async fn own(p: &TollgateProcess, key: &str) -> Result<pb::OwnUsage, tonic::Status> {
    let mut c = p.authorizer().await;
    c.get_own_usage(pb::GetOwnUsageRequest { api_key: key.to_string() }).await.map(|r| r.into_inner())
}

fn http_self(p: &TollgateProcess, key: Option<&str>) -> support::http::Response {
    let addr = p.http_addr.expect("the HTTP API listens");
    let headers: Vec<(&str, &str)> = key.map(|k| vec![("x-api-key", k)]).unwrap_or_default();
    support::http::get(addr, "/v1/self", &headers)
}

async fn call(p: &TollgateProcess, key_id: &str, n: u64) {
    let mut c = p.authorizer().await;
    for _ in 0..n {
        let r = c.authorize(req(Some(&value(key_id)), "shop/prod", "/items/GET", None)).await.unwrap().into_inner();
        assert!(r.allowed, "{r:?}");
    }
}

/// The whole scenario on one server: numbers after calls, isolation, bad
/// keys, no plans, reset time, HTTP and gRPC agreeing.
async fn scenario(p: &TollgateProcess) {
    if near_midnight() {
        return;
    }
    // Before any call: the whole quota.
    let u = own(p, &value("k1")).await.expect("k1 reads its usage");
    assert_eq!(u.key_id, "k1");
    assert_eq!(u.plans.len(), 2, "{u:?}");
    let gold = u.plans.iter().find(|p| p.plan_id == "gold").expect("gold");
    assert_eq!((gold.quota_limit, gold.quota_remaining, gold.quota_used, gold.used_today), (10, 10, 0, 0));

    call(p, "k1", 3).await;
    call(p, "k2", 1).await;

    let u = own(p, &value("k1")).await.unwrap();
    let gold = u.plans.iter().find(|p| p.plan_id == "gold").unwrap().clone();
    assert_eq!(gold.plan_name, "Gold");
    assert!(gold.has_quota);
    assert_eq!(gold.quota_period, "DAY");
    assert_eq!((gold.quota_remaining, gold.quota_used, gold.used_today), (7, 3, 3), "{gold:?}");
    assert_eq!((gold.throttle_rate_limit, gold.throttle_burst_limit), (100.0, 200));
    assert_eq!(gold.stages, vec!["shop/prod".to_string()]);
    // The period resets at the next UTC midnight, after now.
    let day = 86_400_000;
    assert!(gold.quota_reset_ms > u.now_ms, "{gold:?}");
    assert_eq!(gold.quota_reset_ms % day, 0, "a DAY period ends at midnight UTC: {gold:?}");
    assert!(gold.quota_reset_ms - u.now_ms <= day + 60_000, "{gold:?}");
    assert!(gold.quota_reset_at.ends_with('Z') && gold.quota_reset_at.contains('T'), "{gold:?}");
    let free = u.plans.iter().find(|p| p.plan_id == "free").unwrap();
    assert!(!free.has_quota);
    assert_eq!((free.quota_limit, free.quota_remaining), (0, 0));

    // Reading consumes nothing.
    let again = own(p, &value("k1")).await.unwrap();
    let g2 = again.plans.iter().find(|p| p.plan_id == "gold").unwrap();
    assert_eq!((g2.quota_remaining, g2.used_today), (7, 3));

    // Another key sees its own numbers only.
    let u2 = own(p, &value("k2")).await.unwrap();
    assert_eq!(u2.key_id, "k2");
    assert_eq!(u2.plans.len(), 1);
    assert_eq!((u2.plans[0].quota_remaining, u2.plans[0].used_today), (9, 1));
    assert!(!format!("{u2:?}").contains("k1"), "{u2:?}");

    // A key with no plans: an empty list.
    let u3 = own(p, &value("k3")).await.unwrap();
    assert_eq!(u3.key_id, "k3");
    assert!(u3.plans.is_empty());

    // Unknown, disabled, malformed, empty: UNAUTHENTICATED alike.
    for bad in [value("nokey"), value("k4"), "not a key!".to_string(), String::new()] {
        let e = own(p, &bad).await.expect_err("a bad key is refused");
        assert_eq!(e.code(), Code::Unauthenticated, "{bad:?}: {e:?}");
        assert_eq!(e.message(), "the API key is missing, unknown, disabled or expired");
    }

    // HTTP: the same answer.
    let r = http_self(p, Some(&value("k1")));
    assert_eq!(r.status, 200, "{}", r.text());
    let j: Value = r.json();
    let grpc = own(p, &value("k1")).await.unwrap();
    let mut from_grpc = serde_json::to_value(&grpc).unwrap();
    // Answered at different instants: compare all but the clock.
    from_grpc["now_ms"] = j["now_ms"].clone();
    assert_eq!(j, from_grpc);
    assert_eq!(j["key_id"], "k1");

    for bad in [None, Some(value("nokey")), Some(value("k4"))] {
        let r = http_self(p, bad.as_deref());
        assert_eq!(r.status, 401, "{bad:?}: {}", r.text());
        assert_eq!(r.json()["code"], "UNAUTHENTICATED");
    }
}

#[tokio::test]
async fn own_usage_on_the_memory_store() {
    let (_dir, p) = start(None).await;
    scenario(&p).await;
    assert!(!p.log().contains(&value("k1")), "the key value is never logged");
}

#[tokio::test]
async fn own_usage_on_redis() {
    let redis = RedisServer::start();
    let (_dir, p) = start(Some(&redis)).await;
    scenario(&p).await;
}

#[tokio::test]
async fn the_openapi_document_has_v1_self() {
    let (_dir, p) = start(None).await;
    let r = support::http::get(p.http_addr.unwrap(), "/openapi.json", &[]);
    let doc: Value = r.json();
    assert!(doc["paths"]["/v1/self"]["get"].is_object(), "{}", r.text());
}

#[tokio::test]
async fn the_cli_prints_the_same_answer() {
    if near_midnight() {
        return;
    }
    let (_dir, p) = start(None).await;
    call(&p, "k1", 2).await;
    let run = |key: &str, json: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.args(["self", "--server", &p.url()]).env("TOLLGATE_API_KEY", key);
        if json {
            cmd.arg("--json");
        }
        cmd.output().expect("tollgate self runs")
    };
    let out = run(&value("k1"), true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(j["key_id"], "k1");
    let gold = j["plans"].as_array().unwrap().iter().find(|p| p["plan_id"] == "gold").unwrap().clone();
    assert_eq!((gold["quota_remaining"].as_u64(), gold["used_today"].as_u64()), (Some(8), Some(2)), "{j}");

    let out = run(&value("k1"), false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("plan gold (Gold)") && text.contains("2 used, 8 left"), "{text}");

    let out = run(&value("nokey"), false);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNAUTHENTICATED"));
}
