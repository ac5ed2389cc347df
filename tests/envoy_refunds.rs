//! The Envoy recipe `deploy/envoy/refund_on_5xx.yaml` (issue 14; docs/envoy.md,
//! "Refund on upstream 5xx") with a real Envoy: ext_authz puts the signed
//! decision id on the upstream request, and a Lua filter refunds it when
//! the upstream answers 5xx. A failed call does not count against the
//! quota; a good one does; a client cannot name the id.

mod support;

use std::time::{Duration, Instant};

use support::envoy::EnvoyProcess;
use support::http::{self, Upstream};
use support::{write_temp, TollgateProcess};
use tollgate::api::pb;

const KEY: &str = "refundkey0123456789abcdefghijklmnopqrst";

/// A quota of 3 a day on petstore/prod.
const CATALOG: &str = r#"
apis:
  - id: petstore
    stages:
      - name: prod
usage_plans:
  - id: basic
    name: Basic
    quota: { limit: 3, period: DAY }
    api_stages:
      - stage: petstore/prod
api_keys:
  - name: refunds
    value: refundkey0123456789abcdefghijklmnopqrst
    usage_plans: [basic]
"#;

async fn quota_remaining(p: &TollgateProcess) -> u64 {
    let mut c = p.authorizer().await;
    let u = c.get_own_usage(pb::GetOwnUsageRequest { api_key: KEY.into() }).await.expect("own usage").into_inner();
    u.plans[0].quota_remaining
}

/// Waits until the quota left is `want` (the refunds are sent without the
/// client waiting for them).
async fn wait_remaining(p: &TollgateProcess, want: u64, envoy: &EnvoyProcess) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = quota_remaining(p).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "quota left {got}, want {want}; envoy log:\n{}", envoy.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_5xx_gives_the_quota_back_and_2xx_does_not() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    if 86_400_000 - now % 86_400_000 < 60_000 {
        eprintln!("skipped: within a minute of midnight UTC (the DAY quota would reset mid-test)");
        return;
    }
    let (_dir, path) = write_temp("catalog.yaml", CATALOG);
    let p = TollgateProcess::start(&["--config", path.to_str().unwrap(), "--http-listen", "127.0.0.1:0"]);
    p.wait_serving().await;
    let upstream = Upstream::start();
    let http_port = format!("port_value: {}", p.http_addr().port());
    let config = support::envoy::shipped_config(
        "refund_on_5xx.yaml",
        p.addr,
        upstream.addr,
        &[("port_value: 8081", &http_port)],
    );
    let envoy = EnvoyProcess::start(&config);
    let get = |path: &str, forged: Option<&str>| {
        let mut h = vec![("x-api-key", KEY)];
        if let Some(f) = forged {
            h.push(("x-tollgate-decision-id", f));
        }
        http::get(envoy.addr, path, &h)
    };

    // Five upstream failures against a quota of 3: each is refunded.
    for i in 0..5 {
        let r = get("/pets/status/500", None);
        assert_eq!(r.status, 500, "call {i}: {r:?}\n{}", envoy.log());
        wait_remaining(&p, 3, &envoy).await;
    }
    let seen = upstream.last().expect("the upstream was called");
    let id = seen.header("x-tollgate-decision-id").expect("the upstream gets the decision id").to_string();
    // A refunded id cannot be refunded again (what the Lua filter sent).
    let mut c = p.authorizer().await;
    let again = c.refund(pb::RefundRequest { decision_id: id.clone() }).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists);

    // Successes count: 3 pass, the 4th is over the quota. A client's own
    // x-tollgate-decision-id never reaches the upstream.
    for i in 0..3 {
        let r = get("/pets", Some(&id));
        assert_eq!(r.status, 200, "call {i}: {r:?}");
        let up = upstream.last().unwrap().header("x-tollgate-decision-id").map(str::to_string);
        assert!(up.is_some() && up.as_deref() != Some(id.as_str()), "the client's id is replaced: {up:?}");
    }
    assert_eq!(quota_remaining(&p).await, 0, "2xx answers are not refunded");
    let r = get("/pets", None);
    assert_eq!(r.status, 429, "{r:?}");
    // A denied request has no id to refund, even when the upstream is not
    // reached: the quota stays used up.
    let r = get("/pets/status/503", Some(&id));
    assert_eq!(r.status, 429, "{r:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(quota_remaining(&p).await, 0);
}

/// The upstream cannot be reached: Envoy answers 503 itself (no upstream
/// answer at all), and the Lua filter refunds that call too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_own_503_when_the_upstream_is_down_is_refunded() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    if 86_400_000 - now % 86_400_000 < 60_000 {
        eprintln!("skipped: within a minute of midnight UTC (the DAY quota would reset mid-test)");
        return;
    }
    let (_dir, path) = write_temp("catalog.yaml", CATALOG);
    let p = TollgateProcess::start(&["--config", path.to_str().unwrap(), "--http-listen", "127.0.0.1:0"]);
    p.wait_serving().await;
    // A port nothing listens on: bound, then closed.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let http_port = format!("port_value: {}", p.http_addr().port());
    let config =
        support::envoy::shipped_config("refund_on_5xx.yaml", p.addr, down, &[("port_value: 8081", &http_port)]);
    let envoy = EnvoyProcess::start(&config);
    for i in 0..4 {
        let r = http::get(envoy.addr, "/pets", &[("x-api-key", KEY)]);
        assert_eq!(r.status, 503, "call {i}: Envoy's own answer: {r:?}\n{}", envoy.log());
        wait_remaining(&p, 3, &envoy).await;
    }
}
