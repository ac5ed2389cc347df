//! The local deny cache (issue 11; docs/semantics.md, "The local deny
//! cache"), with real replicas on a real Redis. Redis's work is counted with
//! `INFO commandstats` (script calls), never timed.
//!
//! Exactness on a test clock (the same sequences with the cache on and off
//! give the same answers) is in `tests/model.rs`.

mod support;

use std::time::{Duration, Instant};

use support::redis::RedisServer;
use support::{req, write_temp, TollgateProcess, ADMIN_TOKEN};
use tollgate::api::pb;

const KEY: &str = "denycachekey0123456789abcdefghijklmnopq";

/// A catalog with one plan per stage of API `api`, each with the given
/// limits (YAML lines), and one key subscribed to all of them.
fn catalog(plans: &[(&str, &str)]) -> String {
    let mut y = String::from("apis:\n  - id: api\n    stages:\n");
    for (stage, _) in plans {
        y += &format!("      - name: {stage}\n");
    }
    y += "usage_plans:\n";
    for (stage, limits) in plans {
        y +=
            &format!("  - id: {stage}\n    name: {stage}\n    {limits}\n    api_stages:\n      - stage: api/{stage}\n");
    }
    let ids: Vec<&str> = plans.iter().map(|(s, _)| *s).collect();
    y += &format!("api_keys:\n  - name: flood\n    value: {KEY}\n    usage_plans: [{}]\n", ids.join(", "));
    y
}

/// Starts `n` replicas on one Redis, with the admin token and `extra` args.
fn replicas(redis: &RedisServer, yaml: &str, n: usize, extra: &[&str]) -> (tempfile::TempDir, Vec<TollgateProcess>) {
    let (dir, path) = write_temp("catalog.yaml", yaml);
    let path = path.to_str().unwrap().to_string();
    let url = redis.url();
    let procs = (0..n)
        .map(|_| {
            let mut args = vec!["--config", &path, "--redis-url", &url];
            args.extend_from_slice(extra);
            TollgateProcess::start_with_env(&args, &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)])
        })
        .collect();
    (dir, procs)
}

type Client = pb::authorizer_client::AuthorizerClient<tonic::transport::Channel>;

async fn ask(c: &mut Client, stage: &str, cost: u64) -> pb::AuthorizeResponse {
    c.authorize(req(Some(KEY), &format!("api/{stage}"), "/things/GET", Some(cost)))
        .await
        .expect("authorize")
        .into_inner()
}

/// Asks until a request is allowed (the replica has seen a change), at most
/// 10 s; returns how many were denied first.
async fn until_allowed(c: &mut Client, stage: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut denied = 0;
    while !ask(c, stage, 1).await.allowed {
        denied += 1;
        assert!(Instant::now() < deadline, "never allowed again ({denied} denials)");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    denied
}

/// The flood: one key with a throttle of 5/s (burst 5), sent about
/// 20 times its rate from each of 3 replicas for about 2 s. Redis runs at
/// most one script call per allowed request, plus, per replica and per
/// refill of a token (a retry window, 200 ms), the denial that opens the
/// window and at most one request in its last millisecond and round trip
/// (the cache ends an entry that early, to stay exact: module
/// `limiter::deny`). Each replica's caller waits for each answer, so no two
/// requests of one replica are in flight at once. Without the cache every
/// request is a script call (about 600).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_costs_redis_one_call_per_replica_per_retry_window() {
    let redis = RedisServer::start();
    let (_dir, procs) = replicas(&redis, &catalog(&[("live", "throttle: { rate_limit: 5, burst_limit: 5 }")]), 3, &[]);
    let mut clients = Vec::new();
    for p in &procs {
        p.wait_serving().await;
        let mut c = p.authorizer().await;
        // Loads the script and opens the connections (a token each).
        assert!(ask(&mut c, "live", 1).await.allowed);
        clients.push(c);
    }
    let before = redis.script_calls().await;
    let start = Instant::now();
    let per_replica = 200;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let (mut allowed, mut cached_like) = (0u64, 0u64);
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for _ in 0..per_replica {
                    tick.tick().await;
                    let r = ask(&mut c, "live", 1).await;
                    if r.allowed {
                        allowed += 1;
                    } else {
                        assert_eq!(
                            (r.reason(), r.http_status, r.message.as_str()),
                            (pb::Reason::Throttled, 429, "Too Many Requests")
                        );
                        let rate = r.rate_limit.expect("the throttle's numbers");
                        assert_eq!((rate.kind(), rate.limit), (pb::LimitKind::PlanThrottle, 5));
                        assert!(r.retry_after_ms.is_some_and(|ms| (1..=200).contains(&ms)), "{r:?}");
                        cached_like += 1;
                    }
                }
                (allowed, cached_like)
            })
        })
        .collect();
    let (mut allowed, mut denied) = (0, 0);
    for t in tasks {
        let (a, d) = t.await.unwrap();
        allowed += a;
        denied += d;
    }
    let elapsed = start.elapsed();
    let calls = redis.script_calls().await - before;
    let windows = (elapsed.as_millis() / 200) as u64 + 2;
    let bound = allowed + 2 * 3 * windows;
    eprintln!(
        "flood: {} requests in {elapsed:?}: {allowed} allowed, {denied} denied; {calls} script calls (bound {bound})",
        3 * per_replica
    );
    assert!(allowed >= 1, "tokens refill during the flood");
    assert!(
        calls <= bound,
        "{calls} script calls for {allowed} allowed requests over {windows} retry windows of 3 replicas: more than {bound}"
    );
}

/// A quota denial holds until the period ends; UpdateUsage through another
/// replica clears it there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_denial_is_cached_until_update_usage_through_another_replica() {
    let redis = RedisServer::start();
    let (_dir, procs) = replicas(&redis, &catalog(&[("q", "quota: { limit: 3, period: DAY }")]), 2, &[]);
    for p in &procs {
        p.wait_serving().await;
    }
    let mut a = procs[0].authorizer().await;
    for _ in 0..3 {
        assert!(ask(&mut a, "q", 1).await.allowed);
    }
    let before = redis.script_calls().await;
    let first = ask(&mut a, "q", 1).await;
    assert_eq!(redis.script_calls().await, before + 1, "the first denial is Redis's");
    assert_eq!(first.reason(), pb::Reason::QuotaExceeded);
    for _ in 0..5 {
        let again = ask(&mut a, "q", 1).await;
        assert_eq!(
            (again.allowed, again.reason(), again.http_status, again.message.as_str()),
            (false, pb::Reason::QuotaExceeded, 429, "Limit Exceeded")
        );
        assert_eq!((&again.key_id, &again.plan_id), (&first.key_id, &first.plan_id));
        let (r0, r) = (first.rate_limit.unwrap(), again.rate_limit.unwrap());
        assert_eq!((r.kind(), r.limit, r.remaining, r.window_secs), (pb::LimitKind::PlanQuota, 3, 0, r0.window_secs));
        assert!(r.reset_ms <= r0.reset_ms && again.retry_after_ms.unwrap() <= first.retry_after_ms.unwrap());
        assert!(again.retry_after_ms.unwrap() > 0);
    }
    // A larger cost too.
    assert_eq!(ask(&mut a, "q", 2).await.reason(), pb::Reason::QuotaExceeded);
    assert_eq!(redis.script_calls().await, before + 1, "later denials are the cache's");

    // UpdateUsage through the other replica.
    let mut admin = procs[1].admin().await;
    admin
        .update_usage(pb::UpdateUsageRequest { usage_plan_id: "q".into(), key_id: first.key_id.clone(), remaining: 2 })
        .await
        .expect("update usage");
    until_allowed(&mut a, "q").await;
    assert!(ask(&mut a, "q", 1).await.allowed, "2 were granted");
    assert!(!ask(&mut a, "q", 1).await.allowed);
}

/// A catalog change (the plan's throttle raised) clears the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_change_clears_the_cache() {
    let redis = RedisServer::start();
    // One token every 100 s: a denial is cached for about 100 s.
    let (_dir, procs) =
        replicas(&redis, &catalog(&[("slow", "throttle: { rate_limit: 0.01, burst_limit: 1 }")]), 2, &[]);
    for p in &procs {
        p.wait_serving().await;
    }
    let mut a = procs[0].authorizer().await;
    assert!(ask(&mut a, "slow", 1).await.allowed);
    let before = redis.script_calls().await;
    let denied = ask(&mut a, "slow", 1).await;
    assert!(denied.retry_after_ms.unwrap() > 90_000, "{denied:?}");
    assert!(!ask(&mut a, "slow", 1).await.allowed);
    assert_eq!(redis.script_calls().await, before + 1, "the second denial is the cache's");

    let mut admin = procs[1].admin().await;
    admin
        .update_usage_plan(pb::UpdateUsagePlanRequest {
            id: "slow".into(),
            throttle: Some(pb::Throttle { rate_limit: 100.0, burst_limit: 10 }),
            ..Default::default()
        })
        .await
        .expect("update the plan");
    until_allowed(&mut a, "slow").await;
}

/// A smaller cost than the one denied still goes to Redis, and can pass: for
/// a bucket (cost below the denied one) and a quota (cost within what was
/// left). With `--deny-cache false` every request goes to Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smaller_cost_still_goes_to_redis_and_can_pass() {
    let redis = RedisServer::start();
    let yaml = catalog(&[
        ("bucket", "throttle: { rate_limit: 0.01, burst_limit: 5 }"),
        ("quota", "quota: { limit: 5, period: MONTH }"),
    ]);
    let (_dir, procs) = replicas(&redis, &yaml, 1, &["--metrics-listen", "127.0.0.1:0"]);
    let p = &procs[0];
    p.wait_serving().await;
    let mut c = p.authorizer().await;
    let calls = || redis.script_calls();

    // The bucket: 3 of 5, then 3 more denied (2 left), 4 denied locally.
    assert!(ask(&mut c, "bucket", 3).await.allowed);
    let n = calls().await;
    let d3 = ask(&mut c, "bucket", 3).await;
    assert!(!d3.allowed);
    let d4 = ask(&mut c, "bucket", 4).await;
    assert_eq!((d4.allowed, d4.reason()), (false, pb::Reason::Throttled));
    assert!(d4.retry_after_ms.unwrap() > d3.retry_after_ms.unwrap(), "4 tokens take longer than 3: {d4:?} {d3:?}");
    assert_eq!(ask(&mut c, "bucket", 6).await.retry_after_ms, None, "above the burst: never");
    assert_eq!(calls().await, n + 1);
    let ok = ask(&mut c, "bucket", 2).await;
    assert!(ok.allowed, "2 tokens are left: {ok:?}");
    assert_eq!(calls().await, n + 2, "the smaller cost went to Redis");

    // The quota: 4 of 5, then 3 denied (1 left), 2 denied locally, 1 passes.
    assert!(ask(&mut c, "quota", 4).await.allowed);
    let n = calls().await;
    assert!(!ask(&mut c, "quota", 3).await.allowed);
    assert_eq!(ask(&mut c, "quota", 2).await.reason(), pb::Reason::QuotaExceeded);
    assert_eq!(calls().await, n + 1);
    assert!(ask(&mut c, "quota", 1).await.allowed, "1 is left");
    assert_eq!(calls().await, n + 2);

    // The hits, by reason, in the metrics.
    let text = p.metrics_text().await;
    for line in [
        "tollgate_deny_cache_hits_total{reason=\"THROTTLED\"} 2",
        "tollgate_deny_cache_hits_total{reason=\"QUOTA_EXCEEDED\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in:\n{text}");
    }

    // Off: every denial is Redis's.
    let (_dir2, off) = replicas(&redis, &yaml, 1, &["--deny-cache", "false"]);
    off[0].wait_serving().await;
    let mut c = off[0].authorizer().await;
    let n = calls().await;
    for _ in 0..3 {
        assert!(!ask(&mut c, "bucket", 4).await.allowed);
    }
    assert_eq!(calls().await, n + 3);
}
