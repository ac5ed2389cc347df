//! The catalog file as a safe bootstrap on Redis (docs/admin.md, "The
//! catalog file at start"), through real `tollgate serve` processes: a
//! revocation made at runtime survives a restart of every replica, a changed
//! file is applied without undoing runtime changes, a conflicting file never
//! blocks readiness, an older file changes nothing, and two replicas starting
//! together apply a new file once.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::redis::RedisServer;
use support::{req, write_temp, TollgateProcess, ADMIN_TOKEN, DEMO_KEY};
use tollgate::api::pb;
use tollgate::catalog::file::key_id_from_hash;
use tollgate::model::KeyHash;

/// The demo key in a plan with room for every call a test makes.
const CATALOG: &str = r#"
apis:
  - id: petstore
    stages:
      - name: prod
usage_plans:
  - id: basic
    name: Basic
    throttle: { rate_limit: 100, burst_limit: 100 }
    api_stages:
      - stage: petstore/prod
api_keys:
  - name: demo
    value: tgdemo0123456789abcdefghijklmnopqrstuvw
    usage_plans: [basic]
"#;

/// A key the changed file adds.
const SECOND_KEY: &str = "secondkey0123456789abcdefghijklmnopq";

/// CATALOG with a second key and the plan's burst changed.
fn changed_catalog() -> String {
    let second = format!("  - name: second\n    value: {SECOND_KEY}\n    usage_plans: [basic]\n");
    CATALOG.replace("burst_limit: 100", "burst_limit: 50") + &second
}

fn demo_id() -> String {
    key_id_from_hash(&KeyHash::of(DEMO_KEY))
}

/// Starts a replica on `redis` with the catalog file at `file` and metrics.
fn start(redis: &RedisServer, file: &Path) -> TollgateProcess {
    let (file, url) = (file.to_str().expect("utf-8 temp path"), redis.url());
    let args = ["--config", file, "--redis-url", &url, "--metrics-listen", "127.0.0.1:0"];
    TollgateProcess::start_with_env(&args, &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)])
}

/// Starts `n` replicas together and waits until every one is SERVING.
async fn start_all(redis: &RedisServer, file: &Path, n: usize) -> Vec<TollgateProcess> {
    let procs: Vec<TollgateProcess> = (0..n).map(|_| start(redis, file)).collect();
    for p in &procs {
        p.wait_serving().await;
    }
    procs
}

/// Kills every replica, then starts as many again with `file`.
async fn restart_all(procs: Vec<TollgateProcess>, redis: &RedisServer, file: &Path) -> Vec<TollgateProcess> {
    let n = procs.len();
    drop(procs);
    start_all(redis, file, n).await
}

async fn authorize(p: &TollgateProcess, key: &str) -> pb::AuthorizeResponse {
    let mut c = p.authorizer().await;
    c.authorize(req(Some(key), "petstore/prod", "/pets/GET", None)).await.expect("authorize").into_inner()
}

/// A counter from the replica's `/metrics` (0 when not there yet).
async fn counter(p: &TollgateProcess, name: &str) -> u64 {
    let text = p.metrics_text().await;
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok())).map_or(0, |v| v as u64)
}

/// Conflicts counted by all replicas together.
async fn conflicts(procs: &[TollgateProcess]) -> u64 {
    let mut n = 0;
    for p in procs {
        n += counter(p, "tollgate_catalog_file_conflicts_total").await;
    }
    n
}

/// Waits until a replica's log contains `needle` (the log is read by a
/// thread, a moment after the process writes it).
async fn wait_log(p: &TollgateProcess, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.log().contains(needle) {
        assert!(Instant::now() < deadline, "{needle:?} not in the log:\n{}", p.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two replicas with CATALOG; `revoke` runs through the Admin service of one;
/// then every replica restarts with the same file. Returns the replicas.
async fn revoke_then_restart_every_replica<F, Fut>(revoke: F) -> (RedisServer, Vec<TollgateProcess>)
where
    F: FnOnce(support::AdminClient) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let redis = RedisServer::start();
    let (_dir, file) = write_temp("catalog.yaml", CATALOG);
    let procs = start_all(&redis, &file, 2).await;
    assert!(authorize(&procs[1], DEMO_KEY).await.allowed);
    revoke(procs[0].admin().await).await;
    let procs = restart_all(procs, &redis, &file).await;
    (redis, procs)
}

#[tokio::test]
async fn a_key_disabled_at_runtime_stays_disabled_when_every_replica_restarts() {
    let (_redis, procs) = revoke_then_restart_every_replica(|mut a| async move {
        let r = pb::UpdateApiKeyRequest { id: demo_id(), enabled: Some(false), ..Default::default() };
        a.update_api_key(r).await.expect("disable");
    })
    .await;
    for p in &procs {
        assert_eq!(authorize(p, DEMO_KEY).await.reason(), pb::Reason::InvalidApiKey);
        wait_log(p, "catalog file already applied at ").await;
    }
}

#[tokio::test]
async fn a_key_deleted_at_runtime_stays_deleted_when_every_replica_restarts() {
    let (_redis, procs) = revoke_then_restart_every_replica(|mut a| async move {
        a.delete_api_key(pb::DeleteApiKeyRequest { id: demo_id() }).await.expect("delete");
    })
    .await;
    for p in &procs {
        assert_eq!(authorize(p, DEMO_KEY).await.reason(), pb::Reason::InvalidApiKey);
    }
    let keys = procs[0].admin().await.list_api_keys(pb::ListApiKeysRequest::default()).await.unwrap().into_inner();
    assert!(keys.keys.is_empty(), "{keys:?}");
}

#[tokio::test]
async fn a_key_rotated_at_runtime_keeps_its_new_value_when_every_replica_restarts() {
    let new_value = "rotatedvalue0123456789abcdefghijklm";
    let (_redis, procs) = revoke_then_restart_every_replica(|mut a| async move {
        let r = pb::RotateApiKeyRequest { id: demo_id(), value: Some(new_value.into()), grace_seconds: 0 };
        a.rotate_api_key(r).await.expect("rotate");
    })
    .await;
    for p in &procs {
        assert_eq!(authorize(p, DEMO_KEY).await.reason(), pb::Reason::InvalidApiKey, "the old value is refused");
        let d = authorize(p, new_value).await;
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.key_id, demo_id());
    }
}

#[tokio::test]
async fn a_key_unsubscribed_at_runtime_stays_unsubscribed_when_every_replica_restarts() {
    let (_redis, procs) = revoke_then_restart_every_replica(|mut a| async move {
        let r = pb::UsagePlanKeyRequest { usage_plan_id: "basic".into(), key_id: demo_id() };
        a.remove_usage_plan_key(r).await.expect("unsubscribe");
    })
    .await;
    for p in &procs {
        assert_eq!(authorize(p, DEMO_KEY).await.reason(), pb::Reason::NotSubscribed);
    }
}

/// A new file is applied (a new key works, a plan unchanged at runtime
/// follows it); a key disabled at runtime is kept, and that is a conflict.
#[tokio::test]
async fn a_changed_file_is_applied_and_keeps_what_changed_at_runtime() {
    let redis = RedisServer::start();
    let (_dir, file) = write_temp("catalog.yaml", CATALOG);
    let procs = start_all(&redis, &file, 2).await;
    let disable = pb::UpdateApiKeyRequest { id: demo_id(), enabled: Some(false), ..Default::default() };
    procs[0].admin().await.update_api_key(disable).await.expect("disable");

    std::fs::write(&file, changed_catalog()).unwrap();
    let procs = restart_all(procs, &redis, &file).await;
    for p in &procs {
        assert!(authorize(p, SECOND_KEY).await.allowed, "the new key works");
        assert_eq!(authorize(p, DEMO_KEY).await.reason(), pb::Reason::InvalidApiKey, "the disable holds");
    }
    let plan = procs[1].admin().await.get_usage_plan(pb::GetUsagePlanRequest { id: "basic".into() }).await.unwrap();
    assert_eq!(plan.into_inner().throttle.unwrap().burst_limit, 50, "the plan follows the file");
    assert_eq!(conflicts(&procs).await, 1, "the disabled key, counted once");
}

/// A file at odds with the catalog in Redis: every replica still becomes
/// SERVING, the conflicts are counted and logged, and the rest is applied.
#[tokio::test]
async fn a_conflicting_file_never_blocks_readiness() {
    let redis = RedisServer::start();
    let (_dir, file) = write_temp("catalog.yaml", CATALOG);
    let procs = start_all(&redis, &file, 2).await;
    let mut a = procs[0].admin().await;
    // A key made at runtime with the id the next file gives another key, and
    // one with the value the next file gives a third key.
    let create = |name: &str, value: &str| pb::CreateApiKeyRequest {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    };
    let taken_id = a.create_api_key(create("runtime", "runtimevalue0123456789abcdefghijklm")).await.unwrap();
    let taken_id = taken_id.into_inner().key.unwrap().id;
    a.create_api_key(create("runtime2", "sharedvalue0123456789abcdefghijklmn")).await.unwrap();
    let clash = format!(
        "  - id: {taken_id}\n    name: clash\n    value: clashvalue0123456789abcdefghijklmno\n    usage_plans: [basic]\n\
         \x20 - name: same value\n    value: sharedvalue0123456789abcdefghijklmn\n"
    );
    std::fs::write(&file, changed_catalog() + &clash).unwrap();

    let procs = restart_all(procs, &redis, &file).await;
    assert_eq!(conflicts(&procs).await, 3, "the key by id, its subscription, the key by value");
    let log = procs.iter().map(|p| p.log()).collect::<String>();
    assert!(log.contains(&format!("catalog file conflict: API key {taken_id:?}")), "{log}");
    assert!(!log.contains("clashvalue0123456789") && !log.contains("sharedvalue0123456789"), "no key values: {log}");
    for p in &procs {
        assert!(authorize(p, SECOND_KEY).await.allowed, "the rest of the file is applied");
        assert_eq!(authorize(p, "clashvalue0123456789abcdefghijklmno").await.reason(), pb::Reason::InvalidApiKey);
        assert_eq!(authorize(p, "runtimevalue0123456789abcdefghijklm").await.reason(), pb::Reason::NotSubscribed);
    }
}

/// A file state in Redis that tollgate cannot read: the file is not applied,
/// an error says why, and the replica serves the catalog Redis has.
#[tokio::test]
async fn a_file_that_cannot_be_applied_at_all_never_blocks_readiness() {
    let redis = RedisServer::start();
    let (_dir, file) = write_temp("catalog.yaml", CATALOG);
    let procs = start_all(&redis, &file, 1).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET").arg("tg:{cat}:file_digests").arg("not a hash").query_async(&mut conn).await.unwrap();

    std::fs::write(&file, changed_catalog()).unwrap();
    let procs = restart_all(procs, &redis, &file).await;
    let p = &procs[0];
    assert!(authorize(p, DEMO_KEY).await.allowed, "the catalog as Redis has it");
    assert_eq!(authorize(p, SECOND_KEY).await.reason(), pb::Reason::InvalidApiKey, "the file is not applied");
    wait_log(p, "the catalog file cannot be applied").await;
    assert!(p.log().contains("tg:{cat}:file_digests"), "the error names what to delete: {}", p.log());
}

/// During a rolling deploy a replica not yet upgraded starts with the older
/// file: it was applied before, so nothing changes.
#[tokio::test]
async fn an_older_file_after_a_newer_one_changes_nothing() {
    let redis = RedisServer::start();
    let (_old_dir, old) = write_temp("catalog.yaml", CATALOG);
    let (_new_dir, new) = write_temp("catalog.yaml", &changed_catalog());
    let first = start_all(&redis, &old, 1).await;
    let newer = restart_all(first, &redis, &new).await;
    let older = start_all(&redis, &old, 1).await;
    let plan = older[0].admin().await.get_usage_plan(pb::GetUsagePlanRequest { id: "basic".into() }).await.unwrap();
    assert_eq!(plan.into_inner().throttle.unwrap().burst_limit, 50, "the plan as the newer file says");
    for p in newer.iter().chain(&older) {
        assert!(authorize(p, SECOND_KEY).await.allowed, "the newer file's key stays");
    }
    wait_log(&older[0], "catalog file already applied at ").await;
}

/// Two replicas starting together with a new file: one applies it, the
/// other finds it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_apply_a_new_file_once() {
    let redis = RedisServer::start();
    let (_dir, file) = write_temp("catalog.yaml", CATALOG);
    let procs = start_all(&redis, &file, 2).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let version: u64 = redis::cmd("HGET").arg("tg:{cat}:head").arg("version").query_async(&mut conn).await.unwrap();
    assert_eq!(version, 1, "one catalog change: the file, applied once");
    for p in &procs {
        wait_log(p, "catalog file").await;
    }
    let applied = procs.iter().filter(|p| p.log().contains("catalog file applied")).count();
    let skipped = procs.iter().filter(|p| p.log().contains("catalog file already applied")).count();
    assert_eq!((applied, skipped), (1, 1), "{}\n{}", procs[0].log(), procs[1].log());
    let keys = procs[0].admin().await.list_api_keys(pb::ListApiKeysRequest::default()).await.unwrap().into_inner();
    assert_eq!(keys.keys.len(), 1);
}
