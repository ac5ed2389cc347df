//! The catalog at scale (issue 9), through real `tollgate serve` processes on
//! one throwaway Redis: replicas follow the change log and converge whatever
//! happens to them — a log trimmed while a replica was stopped, changes made
//! while a replica loads, a Redis restored from an older copy — and starting a
//! replica writes nothing. A 20,000-key catalog goes through import, paged
//! listings, a second replica's load, usage pages and a plan deletion.

mod support;

use std::time::{Duration, Instant};

use support::redis::RedisServer;
use support::{req, AdminClient, TollgateProcess, ADMIN_TOKEN};
use tollgate::api::pb;

fn start(redis: &RedisServer, extra: &[&str]) -> TollgateProcess {
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str()];
    args.extend_from_slice(extra);
    TollgateProcess::start_with_env(&args, &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)])
}

async fn redis_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// A stage `shop/prod` and a plan `basic` on it.
async fn stage_and_plan(a: &mut AdminClient) {
    a.put_stage(pb::PutStageRequest { stage: "shop/prod".into(), ..Default::default() }).await.unwrap();
    a.create_usage_plan(pb::CreateUsagePlanRequest {
        id: Some("basic".into()),
        name: "Basic".into(),
        api_stages: vec![pb::PlanStage { stage: "shop/prod".into(), ..Default::default() }],
        ..Default::default()
    })
    .await
    .unwrap();
}

/// The value of bench-like key `i`.
fn value(i: usize) -> String {
    format!("logkey{i:034}")
}

/// Creates keys `from..to` on plan `basic` with one CSV import.
async fn import(a: &mut AdminClient, from: usize, to: usize) {
    let mut csv = String::from("Name,Key,Enabled,UsagePlanIds\n");
    for i in from..to {
        csv.push_str(&format!("key{i},{},true,basic\n", value(i)));
    }
    let r = a
        .import_api_keys(pb::ImportApiKeysRequest { csv: csv.into_bytes(), fail_on_warnings: true })
        .await
        .expect("import")
        .into_inner();
    assert_eq!(r.ids.len(), to - from, "{:?}", r.warnings);
}

async fn reason(p: &TollgateProcess, key: &str) -> pb::Reason {
    let mut c = p.authorizer().await;
    c.authorize(req(Some(key), "shop/prod", "/x/GET", None)).await.expect("authorize").into_inner().reason()
}

/// Waits until `p` answers `want` for `key`, up to 10 s.
async fn until(p: &TollgateProcess, key: &str, want: pb::Reason) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = reason(p, key).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{key}: {got:?}, never {want:?}; log:\n{}", p.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn key_id(a: &mut AdminClient, name: &str) -> String {
    let r = a
        .list_api_keys(pb::ListApiKeysRequest { name_prefix: name.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    r.keys.into_iter().find(|k| k.name == name).unwrap_or_else(|| panic!("no key named {name}")).id
}

async fn set_enabled(a: &mut AdminClient, id: &str, enabled: bool) {
    a.update_api_key(pb::UpdateApiKeyRequest { id: id.into(), enabled: Some(enabled), ..Default::default() })
        .await
        .unwrap();
}

/// A replica stopped while changes were made and the log was trimmed behind
/// it finds the log no longer continues what it saw, loads everything again,
/// and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_a_trimmed_log_loads_again() {
    let redis = RedisServer::start();
    let (a, b) = (start(&redis, &[]), start(&redis, &[]));
    a.wait_serving().await;
    b.wait_serving().await;
    let mut admin = a.admin().await;
    stage_and_plan(&mut admin).await;
    import(&mut admin, 0, 2).await;
    until(&b, &value(0), pb::Reason::Ok).await;

    b.pause();
    let k0 = key_id(&mut admin, "key0").await;
    set_enabled(&mut admin, &k0, false).await;
    import(&mut admin, 2, 3).await;
    let mut c = redis_conn(&redis).await;
    let _: i64 = redis::cmd("XTRIM").arg("tg:{cat}:changes").arg("MAXLEN").arg(0).query_async(&mut c).await.unwrap();
    b.resume();

    until(&b, &value(0), pb::Reason::InvalidApiKey).await;
    until(&b, &value(2), pb::Reason::Ok).await;
    assert!(b.log().contains("no longer holds the changes"), "{}", b.log());
}

/// Changes made while a replica loads the catalog are not lost: the load
/// notes where the catalog stood and reads the log from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_a_replica_starts_are_not_lost() {
    let redis = RedisServer::start();
    let a = start(&redis, &[]);
    a.wait_serving().await;
    let mut admin = a.admin().await;
    stage_and_plan(&mut admin).await;
    import(&mut admin, 0, 3000).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(key_id(&mut admin, &format!("key{i}")).await);
    }
    let b = start(&redis, &[]);
    for id in &ids {
        set_enabled(&mut admin, id, false).await;
    }
    b.wait_serving().await;
    for i in 0..40 {
        until(&b, &value(i), pb::Reason::InvalidApiKey).await;
    }
    for i in [40, 1000, 2999] {
        assert_eq!(reason(&b, &value(i)).await, pb::Reason::Ok);
    }
}

/// Redis restored from an older copy, then changed further: the history a
/// replica saw is not Redis's any more (each change names the one before),
/// so it loads again and follows the restored catalog, even when the
/// version numbers have passed what it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_redis_is_detected_by_its_history() {
    let redis = RedisServer::start();
    let (a, b) = (start(&redis, &[]), start(&redis, &[]));
    a.wait_serving().await;
    b.wait_serving().await;
    let mut admin = a.admin().await;
    stage_and_plan(&mut admin).await;
    import(&mut admin, 0, 1).await;
    // A copy of the catalog as it is now.
    let mut c = redis_conn(&redis).await;
    let names: Vec<String> = redis::cmd("KEYS").arg("tg:{cat}:*").query_async(&mut c).await.unwrap();
    let mut dumps = Vec::new();
    for n in &names {
        let d: Vec<u8> = redis::cmd("DUMP").arg(n).query_async(&mut c).await.unwrap();
        dumps.push((n.clone(), d));
    }
    // Later changes, seen by both replicas.
    import(&mut admin, 1, 2).await;
    let k0 = key_id(&mut admin, "key0").await;
    set_enabled(&mut admin, &k0, false).await;
    until(&b, &value(1), pb::Reason::Ok).await;
    until(&b, &value(0), pb::Reason::InvalidApiKey).await;

    b.pause();
    // The restore: the older copy, then more changes than were lost.
    let now: Vec<String> = redis::cmd("KEYS").arg("tg:{cat}:*").query_async(&mut c).await.unwrap();
    let _: i64 = redis::cmd("DEL").arg(&now).query_async(&mut c).await.unwrap();
    for (n, d) in &dumps {
        let _: () = redis::cmd("RESTORE").arg(n).arg(0).arg(d).query_async(&mut c).await.unwrap();
    }
    until(&a, &value(0), pb::Reason::Ok).await;
    import(&mut admin, 10, 14).await;
    b.resume();

    until(&b, &value(1), pb::Reason::InvalidApiKey).await;
    until(&b, &value(0), pb::Reason::Ok).await;
    until(&b, &value(13), pb::Reason::Ok).await;
    assert!(b.log().contains("reloading the whole catalog"), "{}", b.log());
}

/// Starting a replica writes nothing to Redis and makes no other replica
/// load again (a rolling restart of R replicas costs R loads, not R²).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_a_replica_writes_nothing() {
    let redis = RedisServer::start();
    let qs = support::quickstart();
    let a = start(&redis, &["--config", qs.to_str().unwrap()]);
    a.wait_serving().await;
    let mut c = redis_conn(&redis).await;
    let head = |c: &mut redis::aio::MultiplexedConnection| {
        let mut c = c.clone();
        async move {
            let h: Vec<String> = redis::cmd("HGETALL").arg("tg:{cat}:head").query_async(&mut c).await.unwrap();
            let n: u64 = redis::cmd("XLEN").arg("tg:{cat}:changes").query_async(&mut c).await.unwrap();
            (h, n)
        }
    };
    let before = head(&mut c).await;
    assert!(!before.0.is_empty(), "the file was applied");
    for _ in 0..2 {
        let b = start(&redis, &["--config", qs.to_str().unwrap()]);
        b.wait_serving().await;
        let mut cb = b.authorizer().await;
        let r = cb.authorize(req(Some(support::DEMO_KEY), "petstore/prod", "/pets/GET", None)).await.unwrap();
        assert!(r.get_ref().allowed, "{:?}\n{}", r.get_ref(), b.log());
        drop(b);
    }
    assert_eq!(head(&mut c).await, before, "nothing written");
    assert_eq!(a.log().matches("catalog loaded").count(), 2, "one full load, one 'loaded' line; log:\n{}", a.log());
}

/// 20,000 keys: one import (1,000 rows per transaction), every key once in
/// the paged listings, a second replica's load, usage in pages, and a plan
/// deletion that takes its 20,000 subscriptions with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_keys() {
    const N: usize = 20_000;
    let redis = RedisServer::start();
    let a = start(&redis, &[]);
    a.wait_serving().await;
    let mut admin = a.admin().await;
    stage_and_plan(&mut admin).await;
    import(&mut admin, 0, N).await;

    let mut seen = std::collections::HashSet::new();
    let mut token = String::new();
    loop {
        let r = admin
            .list_api_keys(pb::ListApiKeysRequest { page_size: 500, page_token: token, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(r.keys.len() <= 500);
        for k in r.keys {
            assert!(seen.insert(k.id), "a key listed twice");
        }
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(seen.len(), N);
    let named = admin
        .list_api_keys(pb::ListApiKeysRequest { name_prefix: "key1999".into(), page_size: 500, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<String> = named.keys.into_iter().map(|k| k.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "key1999", "key19990", "key19991", "key19992", "key19993", "key19994", "key19995", "key19996", "key19997",
            "key19998", "key19999"
        ]
    );

    let b = start(&redis, &[]);
    b.wait_serving().await;
    for i in (0..N).step_by(997) {
        assert_eq!(reason(&b, &value(i)).await, pb::Reason::Ok, "key {i}");
    }

    let today = std::process::Command::new("date").args(["-u", "+%F"]).output().unwrap();
    let today = String::from_utf8(today.stdout).unwrap().trim().to_string();
    let (mut listed, mut position) = (0, String::new());
    loop {
        let u = admin
            .get_usage(pb::GetUsageRequest {
                usage_plan_id: "basic".into(),
                start_date: today.clone(),
                end_date: today.clone(),
                limit: 500,
                position,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        listed += u.items.len();
        if u.position.is_empty() {
            break;
        }
        position = u.position;
    }
    assert_eq!(listed, N);

    admin.delete_usage_plan(pb::DeleteUsagePlanRequest { id: "basic".into() }).await.unwrap();
    for i in [0, N / 2, N - 1] {
        until(&b, &value(i), pb::Reason::NotSubscribed).await;
    }
    let id = key_id(&mut admin, "key7").await;
    let k = admin.get_api_key(pb::GetApiKeyRequest { id }).await.unwrap();
    assert!(k.into_inner().usage_plan_ids.is_empty());
}
