//! The conformance suite: every scenario is written once, as
//! `async fn scenario(backend)`, and the `conformance!` macro runs it on every
//! store (memory, and Redis on a throwaway `redis-server`). A store that
//! answers differently from docs/semantics.md fails here.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::redis::{RedisCluster, RedisSentinel, RedisServer};
use tollgate::catalog::{file, Catalog, CatalogHandle};
use tollgate::limiter::{Decision, LimitKind, Limiter, Reason, Request};
use tollgate::model::Throttle;
use tollgate::store::keys::Keys;
use tollgate::store::memory::MemoryStore;
use tollgate::store::redis::target::{Mode, Target};
use tollgate::store::redis::{RedisSettings, RedisStore};
use tollgate::store::{LimitStore, Store};

/// A store under test, with the Redis server it needs (if any), and the key
/// prefix of its scenario (scenarios sharing one cluster get one each).
struct Backend {
    store: Store,
    redis: Option<RedisServer>,
    keys: Keys,
}

impl Backend {
    fn memory() -> Self {
        Self { store: Store::Memory(Arc::new(MemoryStore::new())), redis: None, keys: Keys::default() }
    }

    /// A store on `target`, its keys under `prefix`.
    async fn on(target: Target, prefix: &str, logs: impl Fn() -> String) -> Self {
        let store = Store::Redis(Arc::new(RedisStore::open(RedisSettings::with_target(target)).expect("open")));
        for _ in 0..200 {
            if store.is_ready() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(store.is_ready(), "Redis store not ready; logs:\n{}", logs());
        Self { store, redis: None, keys: Keys::new(prefix) }
    }

    /// A Redis Cluster store on `cluster`.
    async fn cluster(cluster: &RedisCluster, prefix: &str) -> Self {
        let target = Target::new(Mode::Cluster, &cluster.urls().join(","), None, None).expect("cluster target");
        Self::on(target, prefix, || cluster.log()).await
    }

    /// A store on the primary that `sentinel`'s sentinels name.
    async fn sentinel(sentinel: &RedisSentinel, prefix: &str) -> Self {
        let urls = sentinel.sentinel_urls().join(",");
        let target = Target::new(Mode::Sentinel, &urls, Some(sentinel.master_name()), None).expect("sentinel target");
        Self::on(target, prefix, || sentinel.log()).await
    }

    /// A store on a Redis that speaks only TLS (`rediss://`, trusting the
    /// test's CA).
    async fn tls(server: &RedisServer, prefix: &str) -> Self {
        let ca = server.tls().expect("a TLS server").ca_cert_path();
        let target = Target::new(Mode::Single, &server.url(), None, Some(&ca)).expect("TLS target");
        Self::on(target, prefix, || server.log()).await
    }

    async fn redis() -> Self {
        let server = RedisServer::start();
        let store = RedisStore::open(RedisSettings::new(&server.url())).expect("open the Redis store");
        let store = Store::Redis(Arc::new(store));
        for _ in 0..100 {
            if store.is_ready() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(store.is_ready(), "Redis store not ready; log:\n{}", server.log());
        Self { store, redis: Some(server), keys: Keys::default() }
    }

    fn limiter(&self, yaml: &str) -> Limiter<Store> {
        self.limiter_with_account(yaml, None)
    }

    fn limiter_with_account(&self, yaml: &str, account: Option<Throttle>) -> Limiter<Store> {
        let data = file::parse("test.yaml", yaml, tollgate::model::now_ms()).unwrap_or_else(|e| panic!("{e}"));
        let catalog = Catalog::compile(data).expect("catalog compiles");
        Limiter::new(CatalogHandle::new(catalog), self.store.clone(), self.keys.clone(), account)
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::memory()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::redis().await).await;
                }
            )*
        }
        /// Every scenario, one after the other, on one Redis Cluster of 3
        /// primaries with a replica each (a cluster per scenario would cost
        /// seconds each).
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn cluster_runs_every_scenario() {
            let cluster = RedisCluster::start_with_replicas(3, 1);
            $(
                $name(Backend::cluster(&cluster, concat!("c:", stringify!($name), ":")).await).await;
            )*
        }
        /// Every scenario on a primary and a replica watched by three
        /// sentinels.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn sentinel_runs_every_scenario() {
            let sentinel = RedisSentinel::start();
            $(
                $name(Backend::sentinel(&sentinel, concat!("s:", stringify!($name), ":")).await).await;
            )*
        }
        /// Every scenario over TLS (`rediss://`).
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn tls_runs_every_scenario() {
            let server = RedisServer::start_tls();
            $(
                $name(Backend::tls(&server, concat!("t:", stringify!($name), ":")).await).await;
            )*
        }
    };
}

conformance!(
    every_reason_code,
    allow_reports_the_tightest_limit,
    plan_method_throttle_applies_by_template,
    plan_throttle_denies_with_retry_after,
    quota_denies_until_the_period_ends,
    stage_method_throttle_counts_all_callers,
    account_throttle_counts_all_traffic,
    throttle_denial_does_not_burn_quota,
    quota_denial_does_not_burn_tokens,
    stage_denial_does_not_burn_plan_limits,
    plan_denial_does_not_burn_stage_or_account_tokens,
    reason_is_the_first_failing_limit_in_order,
    bucket_refills_over_time,
    cost_above_one,
    cost_above_burst_never_passes,
    quota_is_shared_by_the_stages_of_a_plan,
    local_time_quota_counts_on_the_local_date,
    disabled_and_expired_keys,
    method_without_key_requirement,
    quota_offset_applies_in_the_first_period,
    zero_rate_and_burst_blocks_everything,
);

const K1: &str = "k1keyaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const K2: &str = "k2keybbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const K3: &str = "k3keycccccccccccccccccccccccccccccccccccc";

/// A catalog with one plan and its knobs in the scenario's hands.
fn catalog(plan_limits: &str, stage_methods: &str) -> String {
    format!(
        r#"
apis:
  - id: shop
    stages:
      - name: prod
        methods:
          /items/GET: {{}}
          /items/{{id}}/GET: {{}}
{stage_methods}
      - name: beta
      - name: other
usage_plans:
  - id: p1
    name: Plan one
{plan_limits}
    api_stages:
      - stage: shop/prod
        throttle:
          /items/{{id}}/DELETE: {{ rate_limit: 1, burst_limit: 2 }}
      - stage: shop/beta
  - id: p2
    name: Plan two
    api_stages:
      - stage: shop/other
api_keys:
  - name: one
    value: {K1}
    usage_plans: [p1]
  - name: two
    value: {K2}
    usage_plans: [p2]
  - name: three
    value: {K3}
    usage_plans: [p1]
"#
    )
}

async fn ask(l: &Limiter<Store>, key: Option<&str>, stage: &str, method: &str, cost: u64) -> Decision {
    l.authorize(Request { api_key: key, stage, method, cost }).await.expect("authorize answers")
}

async fn allowed_in_a_row(l: &Limiter<Store>, key: &str, stage: &str, method: &str, max: usize) -> usize {
    for i in 0..max {
        if !ask(l, Some(key), stage, method, 1).await.allowed {
            return i;
        }
    }
    max
}

async fn every_reason_code(b: Backend) {
    let l = b.limiter(&catalog(
        "    throttle: { rate_limit: 1, burst_limit: 1 }\n    quota: { limit: 100, period: DAY }",
        "",
    ));
    let d = ask(&l, Some(K1), "shop/prod", "/items/GET", 1).await;
    assert_eq!((d.allowed, d.reason, d.reason.http_status()), (true, Reason::Ok, 200));
    assert_eq!(d.plan_id.as_deref(), Some("p1"));
    assert!(d.key_id.is_some());

    let d = ask(&l, Some(K1), "shop/prod", "/items/GET", 1).await;
    assert_eq!((d.allowed, d.reason, d.reason.http_status()), (false, Reason::Throttled, 429));
    assert_eq!(d.reason.message(), "Too Many Requests");

    let d = ask(&l, Some(K1), "shop/nope", "/items/GET", 1).await;
    assert_eq!((d.reason, d.reason.http_status()), (Reason::UnknownStage, 404));

    let d = ask(&l, Some("unknownkey0000000000000000000000000"), "shop/prod", "/items/GET", 1).await;
    assert_eq!((d.reason, d.reason.http_status(), d.reason.message()), (Reason::InvalidApiKey, 403, "Forbidden"));
    assert_eq!(d.key_id, None, "an unknown key reveals nothing");
    let d = ask(&l, None, "shop/prod", "/items/GET", 1).await;
    assert_eq!(d.reason, Reason::InvalidApiKey, "a missing key");

    let d = ask(&l, Some(K2), "shop/prod", "/items/GET", 1).await;
    assert_eq!((d.reason, d.reason.http_status()), (Reason::NotSubscribed, 403));

    let l = b.limiter(&catalog("    quota: { limit: 1, period: DAY }", ""));
    assert!(ask(&l, Some(K3), "shop/prod", "/items/GET", 1).await.allowed);
    let d = ask(&l, Some(K3), "shop/prod", "/items/GET", 1).await;
    assert_eq!((d.reason, d.reason.http_status(), d.reason.message()), (Reason::QuotaExceeded, 429, "Limit Exceeded"));
}

async fn allow_reports_the_tightest_limit(b: Backend) {
    let l = b.limiter(&catalog(
        "    throttle: { rate_limit: 10, burst_limit: 5 }\n    quota: { limit: 3, period: DAY }",
        "",
    ));
    let d = ask(&l, Some(K1), "shop/prod", "/items/GET", 1).await;
    let r = d.rate.expect("limit numbers");
    assert_eq!((r.kind, r.limit, r.remaining), (LimitKind::PlanQuota, 3, 2));
    assert!(r.reset_ms > 0 && r.reset_ms <= 86_400_000, "{r:?}");
    assert_eq!(r.window_secs, 86_400);
    assert_eq!(d.retry_after_ms, None);

    let l = b.limiter(&catalog(
        "    throttle: { rate_limit: 10, burst_limit: 5 }\n    quota: { limit: 300, period: DAY }",
        "",
    ));
    let r = ask(&l, Some(K3), "shop/prod", "/items/GET", 1).await.rate.unwrap();
    assert_eq!((r.kind, r.limit, r.remaining), (LimitKind::PlanThrottle, 5, 4));
    assert_eq!(r.window_secs, 1);
}

async fn plan_method_throttle_applies_by_template(b: Backend) {
    let l =
        b.limiter(&catalog("    throttle: { rate_limit: 100, burst_limit: 100 }", "          /items/{id}/DELETE: {}"));
    // /items/{id}/DELETE has a per-method plan throttle of burst 2, matched by template.
    let d1 = ask(&l, Some(K1), "shop/prod", "/items/7/DELETE", 1).await;
    assert_eq!(d1.rate.unwrap().kind, LimitKind::PlanMethodThrottle);
    assert!(ask(&l, Some(K1), "shop/prod", "/items/8/DELETE", 1).await.allowed, "one bucket for the template");
    let d = ask(&l, Some(K1), "shop/prod", "/items/9/DELETE", 1).await;
    assert_eq!((d.allowed, d.reason), (false, Reason::Throttled));
    assert_eq!(d.rate.unwrap().kind, LimitKind::PlanMethodThrottle);
    // Other methods are not held back by it.
    assert!(ask(&l, Some(K1), "shop/prod", "/items/9/GET", 1).await.allowed);
    // It is per key.
    assert!(ask(&l, Some(K3), "shop/prod", "/items/9/DELETE", 1).await.allowed);
}

async fn plan_throttle_denies_with_retry_after(b: Backend) {
    let l = b.limiter(&catalog("    throttle: { rate_limit: 2, burst_limit: 3 }", ""));
    assert_eq!(allowed_in_a_row(&l, K1, "shop/prod", "/items/GET", 10).await, 3);
    let d = ask(&l, Some(K1), "shop/prod", "/items/GET", 1).await;
    let r = d.rate.unwrap();
    assert_eq!((r.kind, r.limit, r.remaining), (LimitKind::PlanThrottle, 3, 0));
    let retry = d.retry_after_ms.expect("retry_after on a throttle denial");
    assert!(retry > 0 && retry <= 500, "one token at 2/s comes within 500 ms, got {retry}");
    // Aggregated over the plan's stages: shop/beta shares the bucket.
    assert!(!ask(&l, Some(K1), "shop/beta", "/anything/GET", 1).await.allowed);
    // Another key has its own bucket.
    assert!(ask(&l, Some(K3), "shop/prod", "/items/GET", 1).await.allowed);
}

async fn quota_denies_until_the_period_ends(b: Backend) {
    let l = b.limiter(&catalog("    quota: { limit: 4, period: WEEK }", ""));
    assert_eq!(allowed_in_a_row(&l, K1, "shop/prod", "/items/GET", 10).await, 4);
    let d = ask(&l, Some(K1), "shop/prod", "/items/GET", 1).await;
    assert_eq!(d.reason, Reason::QuotaExceeded);
    let r = d.rate.unwrap();
    assert_eq!((r.kind, r.limit, r.remaining, r.window_secs), (LimitKind::PlanQuota, 4, 0, 7 * 86_400));
    let now = tollgate::model::now_ms();
    let (_, end) = tollgate::calendar::period_bounds_ms(tollgate::model::Period::Week, now);
    let retry = d.retry_after_ms.unwrap();
    assert!(retry.abs_diff(end - now) < 5_000, "retry_after {retry} is the time to the period's end {}", end - now);
    assert_eq!(r.reset_ms, retry);
}

async fn stage_method_throttle_counts_all_callers(b: Backend) {
    let l = b.limiter(&catalog(
        "    throttle: { rate_limit: 100, burst_limit: 100 }",
        "          /orders/{id}/GET: { throttle: { rate_limit: 1, burst_limit: 3 } }",
    ));
    assert!(ask(&l, Some(K1), "shop/prod", "/orders/1/GET", 1).await.allowed);
    assert!(ask(&l, Some(K3), "shop/prod", "/orders/2/GET", 1).await.allowed);
    assert!(ask(&l, Some(K1), "shop/prod", "/orders/3/GET", 1).await.allowed);
    let d = ask(&l, Some(K3), "shop/prod", "/orders/4/GET", 1).await;
    assert_eq!((d.allowed, d.reason), (false, Reason::Throttled));
    assert_eq!(d.rate.unwrap().kind, LimitKind::StageMethodThrottle);
    assert!(ask(&l, Some(K1), "shop/prod", "/items/GET", 1).await.allowed, "other methods are free");
}

/// A request denied by its plan takes nothing from the stage and account
/// buckets (on a Redis Cluster, where those live in other slots, what was
/// taken is given back).
async fn plan_denial_does_not_burn_stage_or_account_tokens(b: Backend) {
    let limits = "    quota: { limit: 1, period: DAY }";
    let stage = "          /shared/GET: { throttle: { rate_limit: 0.001, burst_limit: 3 } }";
    let l = b.limiter_with_account(&catalog(limits, stage), Some(Throttle { rate_limit: 0.001, burst_limit: 4 }));
    assert!(ask(&l, Some(K1), "shop/prod", "/shared/GET", 1).await.allowed);
    for _ in 0..5 {
        let d = ask(&l, Some(K1), "shop/prod", "/shared/GET", 1).await;
        assert_eq!(d.reason, Reason::QuotaExceeded, "{d:?}");
    }
    // K3 (same plan, its own quota) still finds 2 of the stage's 3 tokens and
    // 3 of the account's 4: the five denials took nothing.
    let d = ask(&l, Some(K3), "shop/prod", "/shared/GET", 1).await;
    assert!(d.allowed, "{d:?}");
    let d = ask(&l, Some(K3), "shop/prod", "/shared/GET", 1).await;
    assert_eq!(d.reason, Reason::QuotaExceeded, "{d:?}");
    let d = ask(&l, Some(K2), "shop/other", "/x/GET", 2).await;
    assert!(d.allowed, "the account had 2 of 4 left: {d:?}");
}

/// When several limits would deny, the reason is the first in the order of
/// docs/semantics.md (plan limits before the stage and account throttles),
/// whatever order the store checks them in.
async fn reason_is_the_first_failing_limit_in_order(b: Backend) {
    let limits = "    quota: { limit: 1, period: DAY }";
    let stage = "          /shared/GET: { throttle: { rate_limit: 0.001, burst_limit: 1 } }";
    let l = b.limiter(&catalog(limits, stage));
    assert!(ask(&l, Some(K1), "shop/prod", "/shared/GET", 1).await.allowed);
    // Both the quota and the stage throttle are spent: the quota is the reason.
    let d = ask(&l, Some(K1), "shop/prod", "/shared/GET", 1).await;
    assert_eq!((d.reason, d.rate.unwrap().kind), (Reason::QuotaExceeded, LimitKind::PlanQuota), "{d:?}");
    // Only the stage throttle is spent for K3.
    let d = ask(&l, Some(K3), "shop/prod", "/shared/GET", 1).await;
    assert_eq!((d.reason, d.rate.unwrap().kind), (Reason::Throttled, LimitKind::StageMethodThrottle), "{d:?}");
}

async fn account_throttle_counts_all_traffic(b: Backend) {
    let l = b.limiter_with_account(&catalog("", ""), Some(Throttle { rate_limit: 1.0, burst_limit: 2 }));
    assert!(ask(&l, Some(K1), "shop/prod", "/items/GET", 1).await.allowed);
    assert!(ask(&l, Some(K3), "shop/beta", "/x/POST", 1).await.allowed);
    let d = ask(&l, Some(K1), "shop/prod", "/items/7/GET", 1).await;
    assert_eq!((d.reason, d.rate.unwrap().kind), (Reason::Throttled, LimitKind::AccountThrottle));
}

async fn throttle_denial_does_not_burn_quota(b: Backend) {
    let l = b.limiter(&catalog(
        "    throttle: { rate_limit: 0.001, burst_limit: 2 }\n    quota: { limit: 5, period: DAY }",
        "",
    ));
    assert_eq!(allowed_in_a_row(&l, K1, "shop/prod", "/items/GET", 10).await, 2);
    for _ in 0..10 {
        assert_eq!(ask(&l, Some(K1), "shop/prod", "/items/GET", 1).await.reason, Reason::Throttled);
    }
    // Same quota counter, no throttle: 3 left, not 0.
    let l = b.limiter(&catalog("    quota: { limit: 5, period: DAY }", ""));
    assert_eq!(allowed_in_a_row(&l, K1, "shop/prod", "/items/GET", 10).await, 3);
}

async fn quota_denial_does_not_burn_tokens(b: Backend) {
    let l = b.limiter(&catalog(
        "    throttle: { rate_limit: 0.001, burst_limit: 5 }\n    quota: { limit: 2, period: DAY }",
        "",
    ));
    assert_eq!(allowed_in_a_row(&l, K1, "shop/prod", "/items/GET", 10).await, 2);
    for _ in 0..5 {
        assert_eq!(ask(&l, Some(K1), "shop/prod", "/items/GET", 1).await.reason, Reason::QuotaExceeded);
    }
    // Same bucket, bigger quota: 3 tokens left, not 0.
    let l = b.limiter(&catalog(
        "    throttle: { rate_limit: 0.001, burst_limit: 5 }\n    quota: { limit: 100, period: DAY }",
        "",
    ));
    assert_eq!(allowed_in_a_row(&l, K1, "shop/prod", "/items/GET", 10).await, 3);
}

async fn stage_denial_does_not_burn_plan_limits(b: Backend) {
    let limits = "    throttle: { rate_limit: 0.001, burst_limit: 5 }\n    quota: { limit: 100, period: DAY }";
    let l = b.limiter(&catalog(limits, "          /slow/GET: { throttle: { rate_limit: 0.001, burst_limit: 1 } }"));
    assert!(ask(&l, Some(K1), "shop/prod", "/slow/GET", 1).await.allowed);
    for _ in 0..5 {
        let d = ask(&l, Some(K1), "shop/prod", "/slow/GET", 1).await;
        assert_eq!(d.rate.unwrap().kind, LimitKind::StageMethodThrottle);
    }
    // 4 plan tokens left: the stage denials took none.
    assert_eq!(allowed_in_a_row(&l, K1, "shop/prod", "/items/GET", 10).await, 4);
}

async fn bucket_refills_over_time(b: Backend) {
    let l = b.limiter(&catalog("    throttle: { rate_limit: 10, burst_limit: 2 }", ""));
    assert_eq!(allowed_in_a_row(&l, K1, "shop/prod", "/items/GET", 10).await, 2);
    let d = ask(&l, Some(K1), "shop/prod", "/items/GET", 1).await;
    assert!(!d.allowed);
    let retry = d.retry_after_ms.unwrap();
    assert!(retry <= 100, "{retry}");
    tokio::time::sleep(Duration::from_millis(retry + 20)).await;
    assert!(ask(&l, Some(K1), "shop/prod", "/items/GET", 1).await.allowed, "a token came back");
    assert!(!ask(&l, Some(K1), "shop/prod", "/items/GET", 1).await.allowed, "only one");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Refilled to the burst, not beyond.
    assert_eq!(allowed_in_a_row(&l, K1, "shop/prod", "/items/GET", 10).await, 2);
}

async fn cost_above_one(b: Backend) {
    let l = b.limiter(&catalog(
        "    throttle: { rate_limit: 0.001, burst_limit: 10 }\n    quota: { limit: 7, period: DAY }",
        "",
    ));
    let d = ask(&l, Some(K1), "shop/prod", "/items/GET", 4).await;
    assert!(d.allowed);
    assert_eq!(d.rate.unwrap().remaining, 3, "quota 7 - 4");
    let d = ask(&l, Some(K1), "shop/prod", "/items/GET", 4).await;
    assert_eq!(d.reason, Reason::QuotaExceeded, "4 > 3 left");
    assert!(ask(&l, Some(K1), "shop/prod", "/items/GET", 3).await.allowed);
    // Bucket: 10 - 4 - 3 = 3 tokens left.
    let l = b.limiter(&catalog("    throttle: { rate_limit: 0.001, burst_limit: 10 }", ""));
    assert!(!ask(&l, Some(K1), "shop/prod", "/items/GET", 4).await.allowed);
    assert!(ask(&l, Some(K1), "shop/prod", "/items/GET", 3).await.allowed);
}

async fn cost_above_burst_never_passes(b: Backend) {
    let l = b.limiter(&catalog("    throttle: { rate_limit: 100, burst_limit: 5 }", ""));
    let d = ask(&l, Some(K1), "shop/prod", "/items/GET", 6).await;
    assert_eq!((d.allowed, d.reason), (false, Reason::Throttled));
    assert_eq!(d.retry_after_ms, None, "it can never pass");
    // Nothing was taken.
    assert!(ask(&l, Some(K1), "shop/prod", "/items/GET", 5).await.allowed);
}

async fn quota_is_shared_by_the_stages_of_a_plan(b: Backend) {
    let l = b.limiter(&catalog("    quota: { limit: 5, period: MONTH }", ""));
    assert_eq!(allowed_in_a_row(&l, K1, "shop/prod", "/items/GET", 3).await, 3);
    assert_eq!(allowed_in_a_row(&l, K1, "shop/beta", "/whatever/POST", 10).await, 2);
    assert_eq!(ask(&l, Some(K1), "shop/prod", "/items/GET", 1).await.reason, Reason::QuotaExceeded);
    // Another key of the plan has its own quota.
    assert_eq!(allowed_in_a_row(&l, K3, "shop/prod", "/items/GET", 10).await, 5);
}

async fn disabled_and_expired_keys(b: Backend) {
    let mut yaml = catalog("", "");
    yaml.push_str(
        "  - name: disabled\n    value: disabledkeyddddddddddddddddddddddddddd\n    enabled: false\n    usage_plans: [p1]\n\
         \x20 - name: expired\n    value: expiredkeyeeeeeeeeeeeeeeeeeeeeeeeeeeee\n    expires_at: 2020-01-01T00:00:00Z\n    usage_plans: [p1]\n\
         \x20 - name: later\n    value: laterkeyffffffffffffffffffffffffffffffff\n    expires_at: 2999-01-01T00:00:00Z\n    usage_plans: [p1]\n",
    );
    let l = b.limiter(&yaml);
    for k in ["disabledkeyddddddddddddddddddddddddddd", "expiredkeyeeeeeeeeeeeeeeeeeeeeeeeeeeee"] {
        let d = ask(&l, Some(k), "shop/prod", "/items/GET", 1).await;
        assert_eq!((d.reason, d.key_id), (Reason::InvalidApiKey, None), "{k}");
    }
    assert!(ask(&l, Some("laterkeyffffffffffffffffffffffffffffffff"), "shop/prod", "/items/GET", 1).await.allowed);
}

async fn method_without_key_requirement(b: Backend) {
    let l = b.limiter(&catalog(
        "    quota: { limit: 1, period: DAY }",
        "          /health/GET: { api_key_required: false, throttle: { rate_limit: 0.001, burst_limit: 2 } }",
    ));
    let d = ask(&l, None, "shop/prod", "/health/GET", 1).await;
    assert_eq!((d.allowed, d.plan_id), (true, None));
    assert_eq!(d.rate.unwrap().kind, LimitKind::StageMethodThrottle);
    // A key, even a wrong one, is not checked, and the plan's quota does not apply.
    assert!(ask(&l, Some("notakeyatall"), "shop/prod", "/health/GET", 1).await.allowed);
    let d = ask(&l, Some(K1), "shop/prod", "/health/GET", 1).await;
    assert_eq!((d.reason, d.rate.unwrap().kind), (Reason::Throttled, LimitKind::StageMethodThrottle));
    assert!(ask(&l, Some(K1), "shop/prod", "/items/GET", 1).await.allowed, "quota untouched");
}

async fn quota_offset_applies_in_the_first_period(b: Backend) {
    // The plan is created now (file load time), so the offset applies.
    let l = b.limiter(&catalog("    quota: { limit: 5, period: DAY, offset: 3 }", ""));
    let d = ask(&l, Some(K1), "shop/prod", "/items/GET", 1).await;
    assert_eq!(d.rate.unwrap().limit, 2);
    assert_eq!(allowed_in_a_row(&l, K1, "shop/prod", "/items/GET", 10).await, 1);
}

async fn zero_rate_and_burst_blocks_everything(b: Backend) {
    let l = b.limiter(&catalog("    throttle: { rate_limit: 0, burst_limit: 0 }", ""));
    let d = ask(&l, Some(K1), "shop/prod", "/items/GET", 1).await;
    assert_eq!((d.reason, d.retry_after_ms), (Reason::Throttled, None));
}

/// Redis only: a `SCRIPT FLUSH` between calls does not fail a request or
/// charge twice, and every key written has a TTL.
#[tokio::test]
async fn redis_noscript_and_ttls() {
    let b = Backend::redis().await;
    let l = b.limiter(&catalog(
        "    throttle: { rate_limit: 0.001, burst_limit: 4 }\n    quota: { limit: 100, period: DAY }",
        "          /x/GET: { throttle: { rate_limit: 1, burst_limit: 5 } }",
    ));
    let server = b.redis.as_ref().unwrap();
    let client = ::redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    assert!(ask(&l, Some(K1), "shop/prod", "/x/GET", 1).await.allowed);
    let _: () = ::redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
    assert!(ask(&l, Some(K1), "shop/prod", "/x/GET", 1).await.allowed, "NOSCRIPT is handled");
    // Exactly two tokens taken: two more pass, the fifth call does not.
    assert_eq!(allowed_in_a_row(&l, K1, "shop/prod", "/x/GET", 10).await, 2);

    let keys: Vec<String> = ::redis::cmd("KEYS").arg("tg:*").query_async(&mut conn).await.unwrap();
    // The key's state in its plan (throttle, quota, usage: one hash) and the
    // stage's method throttle.
    assert_eq!(keys.len(), 2, "a state hash and a stage bucket: {keys:?}");
    assert!(keys.iter().any(|k| k.contains("}:s:")) && keys.iter().any(|k| k.contains("{s:")), "{keys:?}");
    for k in keys {
        let ttl: i64 = ::redis::cmd("PTTL").arg(&k).query_async(&mut conn).await.unwrap();
        assert!(ttl > 0, "{k} has no TTL ({ttl})");
    }
}

/// Local-time quotas (docs/semantics.md, "Local-time quotas"): a DAY quota
/// in a zone whose date is not UTC's now (UTC+14 or UTC-11: one of them at
/// every hour) counts the request's usage on the local date, and its window
/// is the local day; a MONTH quota from an anchor day has that month's
/// length. Skipped within two minutes of a midnight.
async fn local_time_quota_counts_on_the_local_date(b: Backend) {
    use jiff::{tz::TimeZone, Timestamp, ToSpan};
    let now = Timestamp::now();
    let utc = now.to_zoned_datetime(TimeZone::UTC).date();
    let first =
        |d: jiff::civil::Date, tz: &TimeZone| d.to_zoned_datetime(tz.clone()).unwrap().timestamp().as_millisecond();
    let near = |d: jiff::civil::Date, tz: &TimeZone| {
        let ms = now.as_millisecond();
        first(d.checked_add(1.day()).unwrap(), tz) - ms < 120_000 || ms - first(d, tz) < 120_000
    };
    let picked = ["Pacific/Kiritimati", "Pacific/Pago_Pago"].into_iter().find_map(|name| {
        let tz = TimeZone::get(name).unwrap();
        let local = now.to_zoned_datetime(tz.clone()).date();
        (local != utc).then_some((name, tz, local))
    });
    let Some((zone, tz, local)) = picked.filter(|(_, tz, local)| !near(*local, tz) && !near(utc, &TimeZone::UTC))
    else {
        eprintln!("skipped: within two minutes of a midnight");
        return;
    };
    let l = b.limiter(&catalog(&format!("    quota: {{ limit: 2, period: DAY, time_zone: {zone} }}"), ""));
    let d = ask(&l, Some(K1), "shop/prod", "/items/GET", 1).await;
    assert!(d.allowed);
    let r = d.rate.expect("the quota");
    assert_eq!((r.kind, r.limit, r.remaining), (LimitKind::PlanQuota, 2, 1));
    let day_len = first(local.checked_add(1.day()).unwrap(), &tz) - first(local, &tz);
    assert_eq!(r.window_secs as i64, day_len / 1000, "the window is the local day");
    assert!(ask(&l, Some(K1), "shop/prod", "/items/GET", 1).await.allowed);
    assert_eq!(ask(&l, Some(K1), "shop/prod", "/items/GET", 1).await.reason, Reason::QuotaExceeded);
    let key_id = d.key_id.expect("the key's id");
    let day = |d: jiff::civil::Date| d.duration_since(jiff::civil::date(1970, 1, 1)).as_secs() / 86_400;
    let got = b.store.read_usage(vec![b.keys.usage(&key_id, "p1")], vec![day(local), day(utc)]).await.unwrap();
    assert_eq!(
        got.iter().map(|u| u.map(|u| u.n)).collect::<Vec<_>>(),
        vec![Some(2), None],
        "{zone}: {local}, not {utc}"
    );

    let l = b.limiter(&catalog("    quota: { limit: 5, period: MONTH, anchor_day: 28 }", ""));
    let d = ask(&l, Some(K3), "shop/prod", "/items/GET", 1).await;
    let today = now.to_zoned_datetime(TimeZone::UTC).date();
    let start = if today.day() >= 28 {
        today.with().day(28).build().unwrap()
    } else {
        today.checked_sub(1.month()).unwrap().with().day(28).build().unwrap()
    };
    let len = start.checked_add(1.month()).unwrap().duration_since(start).as_secs();
    if !near(utc, &TimeZone::UTC) {
        assert_eq!(d.rate.expect("the quota").window_secs as i64, len, "the month from the 28th");
    }
}
