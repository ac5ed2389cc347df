//! Refunds (issue 14; docs/semantics.md, "Refunds"): an allowed decision's
//! signed `decision_id` gives its cost back to exactly the limits it
//! consumed, once. In-process limiters on the memory store, Redis and a
//! Redis Cluster (the same scenarios on each); then real servers: two
//! replicas sharing Redis refund each other's ids, over gRPC, HTTP and the
//! CLI.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::redis::{RedisCluster, RedisServer};
use support::{req, write_temp, TollgateProcess};
use tollgate::api::pb;
use tollgate::catalog::{file, Catalog, CatalogHandle};
use tollgate::limiter::refund::{DecisionSigner, RefundError, Refunded, Refunds};
use tollgate::limiter::{Decision, DenyCache, Limiter, Request};
use tollgate::model::Throttle;
use tollgate::store::keys::Keys;
use tollgate::store::memory::MemoryStore;
use tollgate::store::redis::target::{Mode, Target};
use tollgate::store::redis::{RedisSettings, RedisStore};
use tollgate::store::{DayUsage, LimitStore, Store};
use tonic::Code;

const K1: &str = "k1keyaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const K2: &str = "k2keybbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const K3: &str = "k3keycccccccccccccccccccccccccccccccccccc";

/// Rates so slow (one token per 1000 s) that nothing refills during a test:
/// every token counted is one taken or given back.
fn catalog(quota: u64) -> String {
    format!(
        r#"
apis:
  - id: shop
    stages:
      - name: prod
        methods:
          /items/GET: {{ throttle: {{ rate_limit: 0.001, burst_limit: 8 }} }}
      - name: other
usage_plans:
  - id: p1
    name: Plan one
    throttle: {{ rate_limit: 0.001, burst_limit: 6 }}
    quota: {{ limit: {quota}, period: MONTH }}
    api_stages:
      - stage: shop/prod
  - id: p2
    name: Plan two
    api_stages:
      - stage: shop/other
api_keys:
  - id: k1
    name: one
    value: {K1}
    usage_plans: [p1]
  - id: k2
    name: two
    value: {K2}
    usage_plans: [p2]
  - id: k3
    name: three
    value: {K3}
    usage_plans: [p1]
"#
    )
}

const ACCOUNT: Throttle = Throttle { rate_limit: 0.001, burst_limit: 10 };

struct Backend {
    store: Store,
    _redis: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
}

impl Backend {
    fn memory() -> Self {
        Self { store: Store::Memory(Arc::new(MemoryStore::new())), _redis: None, _cluster: None }
    }

    async fn on(target: Target) -> Store {
        let store = Store::Redis(Arc::new(RedisStore::open(RedisSettings::with_target(target)).expect("open")));
        for _ in 0..200 {
            if store.is_ready() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(store.is_ready(), "the Redis store never became ready");
        store
    }

    async fn redis() -> Self {
        let server = RedisServer::start();
        let store = Self::on(Target::single(&server.url()).unwrap()).await;
        Self { store, _redis: Some(server), _cluster: None }
    }

    async fn cluster() -> Self {
        let cluster = RedisCluster::start(3);
        let target = Target::new(Mode::Cluster, &cluster.urls().join(","), None, None).expect("cluster target");
        let store = Self::on(target).await;
        Self { store, _redis: None, _cluster: Some(cluster) }
    }

    /// A limiter with refunds (and, on Redis, a deny cache), signing with
    /// `secret`.
    fn limiter(&self, yaml: &str, secret: &[u8], window_ms: u64) -> Limiter<Store> {
        let data = file::parse("test.yaml", yaml, tollgate::model::now_ms()).unwrap_or_else(|e| panic!("{e}"));
        let catalog = Catalog::compile(data).expect("catalog compiles");
        let l = Limiter::new(CatalogHandle::new(catalog), self.store.clone(), Keys::default(), Some(ACCOUNT));
        let l = match self.store {
            Store::Redis(_) => l.with_deny_cache(DenyCache::new(1000)),
            Store::Memory(_) => l,
        };
        l.with_refunds(Refunds { signer: Arc::new(DecisionSigner::with_secret(secret)), window_ms })
    }
}

macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod memory { $( #[tokio::test] async fn $name() { super::$name(super::Backend::memory()).await; } )* }
        mod redis { $( #[tokio::test] async fn $name() { super::$name(super::Backend::redis().await).await; } )* }
        mod cluster { $( #[tokio::test] async fn $name() { super::$name(super::Backend::cluster().await).await; } )* }
    };
}

on_every_store!(
    a_refund_gives_back_exactly_the_cost_once,
    forged_and_malformed_ids_are_refused,
    concurrent_refunds_of_one_id_give_back_once,
    a_refund_past_its_window_is_refused,
    a_refund_of_a_plan_gone_is_not_found,
    a_refund_in_another_quota_period_is_refused,
    the_shared_secret_is_created_once,
    a_local_time_quota_is_refunded_in_its_own_period_and_day,
);

const SECRET: &[u8] = b"the test's decision secret";

async fn ask(l: &Limiter<Store>, key: &str, stage: &str, cost: u64) -> Decision {
    let method = if stage == "shop/prod" { "/items/GET" } else { "/x/GET" };
    l.authorize(Request { api_key: Some(key), stage, method, cost }).await.expect("authorize answers")
}

async fn allowed_in_a_row(l: &Limiter<Store>, key: &str, stage: &str, max: usize) -> usize {
    for i in 0..max {
        if !ask(l, key, stage, 1).await.allowed {
            return i;
        }
    }
    max
}

async fn refund(l: &Limiter<Store>, id: &str) -> Result<Refunded, RefundError> {
    let t = l.open_decision_id(id)?;
    l.refund(&t).await
}

async fn usage_today(l: &Limiter<Store>, key_id: &str, plan: &str) -> Option<DayUsage> {
    let today = (tollgate::model::now_ms() / 86_400_000) as i64;
    let keys = vec![l.keys().usage(key_id, plan)];
    l.store().read_usage(keys, vec![today]).await.expect("usage read")[0]
}

/// Cost 4 then 2 empty k1's plan throttle (burst 6) and take 6 from the
/// stage throttle (8), the account throttle (10), the quota (100) and the
/// usage; refunding the first gives 4 back to each of them — no more, no
/// less — and a second refund is refused.
async fn a_refund_gives_back_exactly_the_cost_once(b: Backend) {
    let l = b.limiter(&catalog(100), SECRET, 3_600_000);
    let d1 = ask(&l, K1, "shop/prod", 4).await;
    let d2 = ask(&l, K1, "shop/prod", 2).await;
    assert!(d1.allowed && d2.allowed, "{d1:?} {d2:?}");
    let id1 = d1.decision_id.clone().expect("an allowed decision carries an id");
    assert_ne!(d1.decision_id, d2.decision_id, "every id is unique");
    // Empty: denied (and, on Redis, the denial is cached).
    let denied = ask(&l, K1, "shop/prod", 1).await;
    assert!(!denied.allowed);
    assert_eq!(denied.decision_id, None, "a denial has no id");
    assert_eq!(usage_today(&l, "k1", "p1").await, Some(DayUsage { n: 6, q: Some(6) }));

    let r = refund(&l, &id1).await.expect("refunded");
    assert_eq!(
        r,
        Refunded { key_id: "k1".into(), plan_id: "p1".into(), cost: 4, quota_remaining: Some(98) },
        "the quota gets exactly the cost back"
    );
    assert_eq!(usage_today(&l, "k1", "p1").await, Some(DayUsage { n: 2, q: Some(2) }), "the usage too");
    // The plan throttle: 6 - 2 left = 4 (the cached denial is forgotten).
    assert_eq!(allowed_in_a_row(&l, K1, "shop/prod", 10).await, 4, "the plan throttle gets 4 back");
    // The stage throttle: 8 - 6 + 4 - 4 = 2 (k3 has a plan throttle of its own).
    assert_eq!(allowed_in_a_row(&l, K3, "shop/prod", 10).await, 2, "the stage throttle gets 4 back");
    // The account throttle: 10 - 6 + 4 - 4 - 2 = 2 (shop/other has no stage throttle).
    assert_eq!(allowed_in_a_row(&l, K2, "shop/other", 10).await, 2, "the account throttle gets 4 back");
    assert_eq!(usage_today(&l, "k1", "p1").await, Some(DayUsage { n: 6, q: Some(6) }));

    match refund(&l, &id1).await {
        Err(RefundError::AlreadyRefunded(_)) => {}
        other => panic!("a second refund: {other:?}"),
    }
    let e = tonic::Status::from(refund(&l, &id1).await.unwrap_err());
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().contains("was already refunded"), "{}", e.message());
    assert_eq!(allowed_in_a_row(&l, K1, "shop/prod", 10).await, 0, "nothing more was given back");
    assert_eq!(usage_today(&l, "k1", "p1").await, Some(DayUsage { n: 6, q: Some(6) }));
}

/// A flipped byte anywhere, another server's secret, garbage: INVALID_ARGUMENT,
/// and nothing is given back.
async fn forged_and_malformed_ids_are_refused(b: Backend) {
    let l = b.limiter(&catalog(3), SECRET, 3_600_000);
    let d = ask(&l, K1, "shop/prod", 3).await;
    let id = d.decision_id.expect("an id");
    let other = b.limiter(&catalog(3), b"another deployment's secret", 3_600_000);
    let theirs = ask(&other, K1, "shop/prod", 1).await;
    assert!(!theirs.allowed, "the quota of 3 is used up");
    let foreign = DecisionSigner::with_secret(b"another deployment's secret");
    let forged_by_other = foreign.sign(&l.open_decision_id(&id).unwrap()).unwrap();
    let mut flipped = Vec::new();
    for i in 0..id.len() {
        let mut b = id.clone().into_bytes();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        flipped.push(String::from_utf8(b).unwrap());
    }
    for bad in flipped.iter().map(String::as_str).chain([forged_by_other.as_str(), "", "not an id!", "AAAA"]) {
        match refund(&l, bad).await {
            Err(e @ RefundError::Invalid(_)) => assert_eq!(tonic::Status::from(e).code(), Code::InvalidArgument),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert_eq!(allowed_in_a_row(&l, K1, "shop/prod", 5).await, 0, "nothing was given back");
    assert!(refund(&l, &id).await.is_ok(), "the genuine id still refunds");
}

/// 32 tasks refund one id at once: exactly one gives back.
async fn concurrent_refunds_of_one_id_give_back_once(b: Backend) {
    let l = Arc::new(b.limiter(&catalog(10), SECRET, 3_600_000));
    let d = ask(&l, K3, "shop/prod", 5).await;
    let id = d.decision_id.expect("an id");
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (l, id) = (l.clone(), id.clone());
            tokio::spawn(async move { refund(&l, &id).await })
        })
        .collect();
    let mut given = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                given += 1;
                assert_eq!(r.quota_remaining, Some(10));
            }
            Err(RefundError::AlreadyRefunded(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(given, 1, "one refund of 32 gives back");
    assert_eq!(usage_today(&l, "k3", "p1").await, Some(DayUsage { n: 0, q: Some(0) }));
}

/// A window of 1 ms: by the time the refund comes, it has passed.
async fn a_refund_past_its_window_is_refused(b: Backend) {
    let l = b.limiter(&catalog(10), SECRET, 1);
    let d = ask(&l, K1, "shop/prod", 2).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    match refund(&l, &d.decision_id.expect("an id")).await {
        Err(e @ RefundError::TooLate(_)) => {
            assert!(e.to_string().contains("refund window"), "{e}");
            assert_eq!(tonic::Status::from(e).code(), Code::FailedPrecondition);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(usage_today(&l, "k1", "p1").await, Some(DayUsage { n: 2, q: Some(2) }), "nothing given back");
}

/// The plan is deleted after the decision: NOT_FOUND.
async fn a_refund_of_a_plan_gone_is_not_found(b: Backend) {
    let l = b.limiter(&catalog(10), SECRET, 3_600_000);
    let d = ask(&l, K1, "shop/prod", 2).await;
    let without_p1 =
        catalog(10).replace("  - id: p1\n", "  - id: p9\n").replace("usage_plans: [p1]", "usage_plans: [p9]");
    let data = file::parse("test.yaml", &without_p1, tollgate::model::now_ms()).unwrap();
    l.catalog().store(Catalog::compile(data).unwrap());
    match refund(&l, &d.decision_id.expect("an id")).await {
        Err(e @ RefundError::NotFound(_)) => assert_eq!(tonic::Status::from(e).code(), Code::NotFound),
        other => panic!("{other:?}"),
    }
}

/// Ids signed with this limiter's secret for a decision of an earlier
/// month, and for one made in the first second of this month: both
/// FAILED_PRECONDITION, nothing given back. (The store's refusal of a past
/// period at the instant it passes is in tests/model_refunds.rs, on a test
/// clock.)
async fn a_refund_in_another_quota_period_is_refused(b: Backend) {
    let l = b.limiter(&catalog(10), SECRET, 90 * 86_400_000);
    let d = ask(&l, K1, "shop/prod", 2).await;
    let mut t = l.open_decision_id(&d.decision_id.expect("an id")).expect("opens");
    let signer = DecisionSigner::with_secret(SECRET);
    let this_month = t.period_day.expect("the plan has a quota");
    // The month before this one started at least 28 days earlier.
    t.period_day = Some(this_month - 28);
    t.at_ms = (this_month as u64 - 28) * 86_400_000 + 5_000;
    match refund(&l, &signer.sign(&t).unwrap()).await {
        Err(e @ RefundError::TooLate(_)) => {
            assert!(e.to_string().contains("quota period that has ended"), "{e}");
            assert_eq!(tonic::Status::from(e).code(), Code::FailedPrecondition);
        }
        other => panic!("{other:?}"),
    }
    t.period_day = Some(this_month);
    t.at_ms = this_month as u64 * 86_400_000 + 10;
    t.nonce[0] ^= 1;
    match refund(&l, &signer.sign(&t).unwrap()).await {
        Err(e @ RefundError::TooLate(_)) => assert!(e.to_string().contains("first second"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(usage_today(&l, "k1", "p1").await, Some(DayUsage { n: 2, q: Some(2) }), "nothing given back");
}

/// A quota in a time zone with an anchor day (docs/semantics.md,
/// "Local-time quotas"): the refund finds the decision's local period and
/// local usage day.
async fn a_local_time_quota_is_refunded_in_its_own_period_and_day(b: Backend) {
    let yaml = catalog(4).replace("    throttle: { rate_limit: 0.001, burst_limit: 6 }\n", "").replace(
        "quota: { limit: 4, period: MONTH }",
        "quota: { limit: 4, period: MONTH, time_zone: Pacific/Kiritimati, anchor_day: 9 }",
    );
    let l = b.limiter(&yaml, SECRET, 3_600_000);
    let ask = |cost| l.authorize(Request { api_key: Some(K1), stage: "shop/prod", method: "/x/GET", cost });
    let d = ask(4).await.unwrap();
    assert!(d.allowed, "{d:?}");
    assert!(!ask(1).await.unwrap().allowed, "the quota of 4 is used");
    let r = refund(&l, &d.decision_id.expect("an id")).await.expect("refunded");
    assert_eq!(r.quota_remaining, Some(4));
    let zone = tollgate::localtime::Zone::parse("Pacific/Kiritimati").ok();
    let day = tollgate::localtime::usage_day(zone, tollgate::model::now_ms());
    let mut keys = l.keys().usage("k1", "p1");
    keys.zone = zone;
    let u = l.store().read_usage(vec![keys], vec![day]).await.unwrap()[0];
    assert_eq!(u, Some(DayUsage { n: 0, q: Some(0) }), "the local day's usage is taken off");
    assert!(ask(4).await.unwrap().allowed, "the whole quota is back");
}

/// With Redis (single or cluster), the first replica's secret is the one
/// every replica reads.
async fn the_shared_secret_is_created_once(b: Backend) {
    let Store::Redis(r) = &b.store else { return };
    let key = Keys::default().decision_secret();
    assert_eq!(r.shared_secret(&key, "first-replica-secret").await.unwrap(), "first-replica-secret");
    assert_eq!(r.shared_secret(&key, "second-replica-secret").await.unwrap(), "first-replica-secret");
}

// ---------------------------------------------------------------------------
// Real servers
// ---------------------------------------------------------------------------

fn server_catalog() -> String {
    catalog(10)
}

async fn start(dir: &std::path::Path, redis: &RedisServer) -> TollgateProcess {
    let path = dir.join("catalog.yaml");
    let args = ["--config", path.to_str().unwrap(), "--redis-url", &redis.url(), "--http-listen", "127.0.0.1:0"];
    let p = TollgateProcess::start_with_env(&args, &[("TOLLGATE_ADMIN_TOKEN", support::ADMIN_TOKEN)]);
    p.wait_serving().await;
    p
}

async fn authorize(p: &TollgateProcess, cost: u64) -> pb::AuthorizeResponse {
    let mut c = p.authorizer().await;
    c.authorize(req(Some(K1), "shop/prod", "/items/GET", Some(cost))).await.unwrap().into_inner()
}

/// Waits until `p` gives decision ids (it reads the shared secret from Redis
/// at start).
async fn an_allowed_id(p: &TollgateProcess, cost: u64) -> String {
    for _ in 0..100 {
        let r = authorize(p, cost).await;
        assert!(r.allowed, "{r:?}");
        if !r.decision_id.is_empty() {
            return r.decision_id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no decision id; log:\n{}", p.log());
}

/// Two replicas on one Redis share the secret: each refunds the other's ids,
/// over gRPC, HTTP (`POST /v1/refund`) and the CLI (`tollgate refund`); the
/// second refund of one id is refused on either; a forged id is 400.
#[tokio::test]
async fn two_replicas_refund_each_others_ids_over_grpc_http_and_the_cli() {
    let redis = RedisServer::start();
    let (dir, _) = write_temp("catalog.yaml", &server_catalog());
    let a = start(dir.path(), &redis).await;
    let b = start(dir.path(), &redis).await;

    // gRPC: made on A, refunded on B.
    let id = an_allowed_id(&a, 1).await;
    let mut cb = b.authorizer().await;
    let r = cb.refund(pb::RefundRequest { decision_id: id.clone() }).await.expect("B refunds A's id").into_inner();
    assert_eq!((r.key_id.as_str(), r.plan_id.as_str(), r.cost, r.has_quota), ("k1", "p1", 1, true));
    let mut ca = a.authorizer().await;
    let again = ca.refund(pb::RefundRequest { decision_id: id.clone() }).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");

    // HTTP, on B, of an id made on A.
    let id2 = an_allowed_id(&a, 2).await;
    let body = serde_json::json!({ "decision_id": id2 }).to_string();
    let http = support::http::send(
        b.http_addr(),
        "POST",
        "/v1/refund",
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(http.status, 200, "{}", http.text());
    assert_eq!(http.json()["cost"], 2);
    let http = support::http::send(
        b.http_addr(),
        "POST",
        "/v1/refund",
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(http.status, 409, "{}", http.text());
    assert_eq!(http.json()["code"], "ALREADY_EXISTS", "{}", http.text());
    let forged = serde_json::json!({ "decision_id": format!("{id2}A") }).to_string();
    let http = support::http::send(
        a.http_addr(),
        "POST",
        "/v1/refund",
        &[("content-type", "application/json")],
        forged.as_bytes(),
    );
    assert_eq!(http.status, 400, "{}", http.text());

    // The CLI, against A, of an id made on B.
    let id3 = an_allowed_id(&b, 3).await;
    let cli = |server: String, id: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["refund", "--server", &server, "--decision-id", id])
            .output()
            .expect("tollgate refund runs")
    };
    let out = cli(a.url(), &id3);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("REFUNDED 3 to key k1 in plan p1"), "{text}");
    let out = cli(b.url(), &id3);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already refunded"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The key deleted (through A's Admin): its decisions are NOT_FOUND on B.
    let id4 = an_allowed_id(&a, 1).await;
    let mut admin = a.admin().await;
    admin.delete_api_key(pb::DeleteApiKeyRequest { id: "k1".into() }).await.expect("delete k1");
    let gone = cb.refund(pb::RefundRequest { decision_id: id4 }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    assert!(gone.message().contains("key k1 no longer exists"), "{}", gone.message());

    // The secret is never logged.
    let mut conn = ::redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let secret: String = ::redis::cmd("GET").arg("tg:{cat}:decision_secret").query_async(&mut conn).await.unwrap();
    assert_eq!(secret.len(), 64, "a 256-bit secret in hex");
    assert!(!a.log().contains(&secret) && !b.log().contains(&secret), "the secret is never logged");
}

/// A leased plan (`admission: leased`): decisions admitted from this
/// replica's lease carry ids too, and their refunds go to Redis directly.
/// Once every lease is settled, every admission refunded leaves the quota
/// whole again: exactly what was taken came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_plans_local_admissions_are_refunded_exactly() {
    use tollgate::limiter::LeaseTable;
    use tollgate::model::{Period, Quota};
    use tollgate::store::{Check, Limit, Rule};
    let b = Backend::redis().await;
    let yaml = catalog(1000)
        .replace(
            "    quota: { limit: 1000, period: MONTH }\n",
            "    quota: { limit: 1000, period: MONTH }\n    admission: leased\n",
        )
        .replace("    throttle: { rate_limit: 0.001, burst_limit: 6 }\n", "");
    let data = file::parse("test.yaml", &yaml, tollgate::model::now_ms()).unwrap_or_else(|e| panic!("{e}"));
    let table = Arc::new(LeaseTable::new(1000));
    let l = Arc::new(
        Limiter::new(CatalogHandle::new(Catalog::compile(data).unwrap()), b.store.clone(), Keys::default(), None)
            .with_leases(table.clone())
            .with_refunds(Refunds { signer: Arc::new(DecisionSigner::with_secret(SECRET)), window_ms: 3_600_000 }),
    );
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let l = l.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..50 {
                    // (shop/prod's /x/GET: no stage throttle; no account throttle)
                    let req = Request { api_key: Some(K1), stage: "shop/prod", method: "/x/GET", cost: 1 };
                    let d = l.authorize(req).await.expect("answers");
                    assert!(d.allowed, "{d:?}");
                    ids.push(d.decision_id.expect("every allowed decision has an id, local ones too"));
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    assert!(table.pools() > 0, "the sequence was admitted from leases");
    for id in &ids {
        refund(&l, id).await.expect("refunded");
    }
    l.settle_all().await;
    let quota = Check {
        limits: vec![Limit {
            key: l.keys().state("k1", "p1"),
            field: Some("q".into()),
            rule: Rule::Quota {
                quota: Quota { limit: 1000, period: Period::Month, offset: 0, time_zone: None, anchor_day: 0 },
                created_at_ms: 0,
            },
        }],
        cost: 0,
        usage: None,
        lease: Default::default(),
    };
    let v = l.store().check(quota).await.expect("read the quota");
    assert_eq!(v.remaining, 1000, "200 admitted, 200 refunded, every lease settled: the quota is whole");
}
