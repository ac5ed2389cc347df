//! Tags on API keys and usage plans (docs/admin.md, "Tags"): set at creation
//! and from the catalog file, shown by get and list, replaced and cleared by
//! update, filtered in list calls (before paging, so pages stay full and the
//! page token keeps working), checked with errors naming the tag; over gRPC
//! on the memory store and on Redis (whose tag index must follow every
//! change), over HTTP (`?tag=KEY=VALUE`) and from the CLI.

mod support;

use std::collections::HashMap;
use std::process::Command;

use support::redis::RedisServer;
use support::{http, write_temp, AdminClient, TollgateProcess, ADMIN_TOKEN};
use tollgate::api::pb;
use tonic::Code;

fn tags(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn create_key(a: &mut AdminClient, name: &str, t: &[(&str, &str)]) -> String {
    let r = a
        .create_api_key(pb::CreateApiKeyRequest { name: name.into(), tags: tags(t), ..Default::default() })
        .await
        .expect("create key")
        .into_inner();
    let k = r.key.expect("the key");
    assert_eq!(k.tags, tags(t), "the answer shows the tags");
    k.id
}

/// Every page of a filtered key listing, `size` keys at a time; each page
/// but the last is full.
async fn list_keys(a: &mut AdminClient, filter: pb::ListApiKeysRequest, size: u32) -> Vec<String> {
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let r = a
            .list_api_keys(pb::ListApiKeysRequest { page_size: size, page_token: token, ..filter.clone() })
            .await
            .expect("list keys")
            .into_inner();
        names.extend(r.keys.iter().map(|k| k.name.clone()));
        if r.next_page_token.is_empty() {
            return names;
        }
        assert_eq!(r.keys.len(), size as usize, "a page before the last is full");
        token = r.next_page_token;
    }
}

fn by_tags(t: &[(&str, &str)]) -> pb::ListApiKeysRequest {
    pb::ListApiKeysRequest { tags: tags(t), ..Default::default() }
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, needle: &str) {
    let e = r.expect_err("should be refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains(needle), "{needle:?} in {:?}", e.message());
}

/// The scenario, on whichever store `p` has.
async fn key_tags_scenario(p: &TollgateProcess) {
    p.wait_serving().await;
    let mut a = p.admin().await;
    // Ten keys: even ones env=prod, odd ones env=dev; every third team=a.
    let mut ids = Vec::new();
    for i in 0..10 {
        let env = if i % 2 == 0 { "prod" } else { "dev" };
        let mut t = vec![("env", env)];
        if i % 3 == 0 {
            t.push(("team", "a"));
        }
        ids.push(create_key(&mut a, &format!("key{i}"), &t).await);
    }
    create_key(&mut a, "untagged", &[]).await;

    // Get shows them.
    let k = a.get_api_key(pb::GetApiKeyRequest { id: ids[0].clone() }).await.unwrap().into_inner();
    assert_eq!(k.tags, tags(&[("env", "prod"), ("team", "a")]));

    // Filters: one tag, two tags (all must match), a value that is no one's;
    // with pages of 2, so paging goes across filtered-out keys.
    let mut prod = list_keys(&mut a, by_tags(&[("env", "prod")]), 2).await;
    prod.sort();
    assert_eq!(prod, ["key0", "key2", "key4", "key6", "key8"]);
    let mut both = list_keys(&mut a, by_tags(&[("env", "prod"), ("team", "a")]), 1).await;
    both.sort();
    assert_eq!(both, ["key0", "key6"]);
    assert!(list_keys(&mut a, by_tags(&[("env", "staging")]), 2).await.is_empty());
    // With the name prefix, and the customer index.
    let f = pb::ListApiKeysRequest { name_prefix: "key1".into(), ..by_tags(&[("env", "dev")]) };
    assert_eq!(list_keys(&mut a, f, 2).await, ["key1"]);
    let set_customer =
        |id: &str| pb::UpdateApiKeyRequest { id: id.into(), customer_id: Some("cust".into()), ..Default::default() };
    a.update_api_key(set_customer(&ids[3])).await.unwrap();
    a.update_api_key(set_customer(&ids[4])).await.unwrap();
    let f = pb::ListApiKeysRequest { customer_id: "cust".into(), ..by_tags(&[("env", "dev")]) };
    assert_eq!(list_keys(&mut a, f, 1).await, ["key3"]);

    // Update replaces all the tags; the filters follow (Redis's index too).
    let r = a
        .update_api_key(pb::UpdateApiKeyRequest {
            id: ids[0].clone(),
            tags: tags(&[("env", "dev"), ("owner", "bob")]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.tags, tags(&[("env", "dev"), ("owner", "bob")]));
    assert_eq!(list_keys(&mut a, by_tags(&[("team", "a"), ("env", "prod")]), 5).await, ["key6"]);
    assert_eq!(list_keys(&mut a, by_tags(&[("owner", "bob")]), 5).await, ["key0"]);
    assert!(!list_keys(&mut a, by_tags(&[("env", "prod")]), 50).await.contains(&"key0".to_string()));
    // An update that names no tags keeps them.
    let r = a
        .update_api_key(pb::UpdateApiKeyRequest { id: ids[0].clone(), enabled: Some(true), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.tags.len(), 2, "kept: {r:?}");
    // clear_tags removes them all.
    let r = a
        .update_api_key(pb::UpdateApiKeyRequest { id: ids[0].clone(), clear_tags: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(r.tags.is_empty());
    assert!(list_keys(&mut a, by_tags(&[("owner", "bob")]), 5).await.is_empty());
    // A deleted key leaves the filter.
    a.delete_api_key(pb::DeleteApiKeyRequest { id: ids[6].clone() }).await.unwrap();
    assert!(list_keys(&mut a, by_tags(&[("team", "a"), ("env", "prod")]), 5).await.is_empty());

    // Invalid tags are refused, naming the tag.
    let bad =
        |t: HashMap<String, String>| pb::CreateApiKeyRequest { name: "bad".into(), tags: t, ..Default::default() };
    let long_key = "k".repeat(129);
    assert_invalid(a.create_api_key(bad(tags(&[(&long_key, "v")]))).await, "tags[\"kkkk");
    assert_invalid(a.create_api_key(bad(tags(&[("big", &"v".repeat(257))]))).await, "tags[\"big\"]");
    assert_invalid(a.create_api_key(bad(tags(&[("", "v")]))).await, "tags[\"\"]");
    assert_invalid(a.create_api_key(bad(tags(&[("a=b", "v")]))).await, "may not contain `=`");
    assert_invalid(a.create_api_key(bad(tags(&[("ctl", "a\nb")]))).await, "tags[\"ctl\"]");
    let many: HashMap<String, String> = (0..51).map(|i| (format!("t{i}"), String::new())).collect();
    assert_invalid(a.create_api_key(bad(many)).await, "tags: at most 50");
    let fifty: HashMap<String, String> = (0..50).map(|i| (format!("t{i}"), "x".repeat(256))).collect();
    a.create_api_key(bad(fifty)).await.expect("50 tags of the longest value are fine");
    assert_invalid(
        a.update_api_key(pb::UpdateApiKeyRequest {
            id: ids[1].clone(),
            tags: tags(&[("x", "y")]),
            clear_tags: true,
            ..Default::default()
        })
        .await,
        "give either tags or clear_tags",
    );
    assert_invalid(
        a.update_api_key(pb::UpdateApiKeyRequest {
            id: ids[1].clone(),
            tags: tags(&[(&long_key, "v")]),
            ..Default::default()
        })
        .await,
        "tags[\"kkkk",
    );
    assert_invalid(a.list_api_keys(by_tags(&[(&long_key, "v")])).await, "tags[\"kkkk");
}

async fn plan_tags_scenario(p: &TollgateProcess) {
    p.wait_serving().await;
    let mut a = p.admin().await;
    for i in 0..6 {
        let tier = if i < 4 { "gold" } else { "silver" };
        let r = a
            .create_usage_plan(pb::CreateUsagePlanRequest {
                name: format!("Plan {i}"),
                id: Some(format!("plan{i}")),
                tags: tags(&[("tier", tier)]),
                ..Default::default()
            })
            .await
            .expect("create plan")
            .into_inner();
        assert_eq!(r.tags, tags(&[("tier", tier)]));
    }
    let list = |t: &[(&str, &str)], size: u32, token: String| pb::ListUsagePlansRequest {
        page_size: size,
        page_token: token,
        tags: tags(t),
        ..Default::default()
    };
    // Filtered before paging: pages of 3 gold plans, then the 4th.
    let r = a.list_usage_plans(list(&[("tier", "gold")], 3, String::new())).await.unwrap().into_inner();
    let ids: Vec<_> = r.plans.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["plan0", "plan1", "plan2"]);
    assert!(!r.next_page_token.is_empty());
    let r = a.list_usage_plans(list(&[("tier", "gold")], 3, r.next_page_token)).await.unwrap().into_inner();
    let ids: Vec<_> = r.plans.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["plan3"]);
    assert!(r.next_page_token.is_empty());

    // Update replaces; get shows it.
    let r = a
        .update_usage_plan(pb::UpdateUsagePlanRequest {
            id: "plan0".into(),
            tags: tags(&[("tier", "silver"), ("legacy", "")]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.tags, tags(&[("tier", "silver"), ("legacy", "")]));
    let got = a.get_usage_plan(pb::GetUsagePlanRequest { id: "plan0".into() }).await.unwrap().into_inner();
    assert_eq!(got.tags, r.tags);
    let r = a.list_usage_plans(list(&[("tier", "silver"), ("legacy", "")], 10, String::new())).await.unwrap();
    let ids: Vec<_> = r.get_ref().plans.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["plan0"]);
    let r = a
        .update_usage_plan(pb::UpdateUsagePlanRequest { id: "plan0".into(), clear_tags: true, ..Default::default() })
        .await
        .unwrap();
    assert!(r.get_ref().tags.is_empty());

    let bad = a
        .create_usage_plan(pb::CreateUsagePlanRequest {
            name: "Bad".into(),
            tags: tags(&[("note", &"x".repeat(300))]),
            ..Default::default()
        })
        .await;
    assert_invalid(bad, "tags[\"note\"]");
    assert_invalid(
        a.update_usage_plan(pb::UpdateUsagePlanRequest {
            id: "plan1".into(),
            tags: tags(&[("a=b", "c")]),
            ..Default::default()
        })
        .await,
        "may not contain `=`",
    );
}

fn memory() -> TollgateProcess {
    TollgateProcess::start_with_env(&[], &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)])
}

fn on_redis(redis: &RedisServer, extra: &[&str]) -> TollgateProcess {
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str()];
    args.extend_from_slice(extra);
    TollgateProcess::start_with_env(&args, &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)])
}

#[tokio::test]
async fn key_tags_on_memory() {
    key_tags_scenario(&memory()).await;
}

#[tokio::test]
async fn key_tags_on_redis() {
    let redis = RedisServer::start();
    let p = on_redis(&redis, &[]);
    key_tags_scenario(&p).await;
    // The tag index lives in Redis, beside the records.
    let client = redis::Client::open(redis.url()).expect("Redis URL");
    let mut c = client.get_multiplexed_async_connection().await.expect("connect to Redis");
    let n: u64 = redis::cmd("ZCARD").arg("tg:{cat}:key_tags").query_async(&mut c).await.expect("ZCARD");
    assert!(n > 0, "tg:{{cat}}:key_tags holds the tags");
    // A second replica, started on the same Redis, filters the same way.
    let q = on_redis(&redis, &[]);
    q.wait_serving().await;
    let mut a = q.admin().await;
    let mut names = list_keys(&mut a, by_tags(&[("env", "prod")]), 2).await;
    names.sort();
    assert_eq!(names, ["key2", "key4", "key8"]);
}

#[tokio::test]
async fn plan_tags_on_memory() {
    plan_tags_scenario(&memory()).await;
}

#[tokio::test]
async fn plan_tags_on_redis() {
    let redis = RedisServer::start();
    plan_tags_scenario(&on_redis(&redis, &[])).await;
}

const CATALOG: &str = r#"
apis:
  - id: petstore
    stages:
      - name: prod
        methods: { "*/*": {} }
usage_plans:
  - id: basic
    name: Basic
    tags: { tier: bronze, cost-center: "42" }
    api_stages: [{ stage: petstore/prod }]
api_keys:
  - id: key-demo
    name: demo
    value: tgdemo0123456789abcdefghijklmnopqrstuvw
    usage_plans: [basic]
    tags: { env: prod }
"#;

#[tokio::test]
async fn tags_from_the_catalog_file() {
    let redis = RedisServer::start();
    let (_dir, path) = write_temp("catalog.yaml", CATALOG);
    let p = on_redis(&redis, &["--config", path.to_str().unwrap()]);
    p.wait_serving().await;
    let mut a = p.admin().await;
    let k = a.get_api_key(pb::GetApiKeyRequest { id: "key-demo".into() }).await.unwrap().into_inner();
    assert_eq!(k.tags, tags(&[("env", "prod")]));
    assert_eq!(list_keys(&mut a, by_tags(&[("env", "prod")]), 5).await, ["demo"]);
    let plan = a.get_usage_plan(pb::GetUsagePlanRequest { id: "basic".into() }).await.unwrap().into_inner();
    assert_eq!(plan.tags, tags(&[("tier", "bronze"), ("cost-center", "42")]));

    let bad = CATALOG.replace("tags: { env: prod }", "tags: { \"a=b\": prod }");
    let (_dir2, path) = write_temp("bad.yaml", &bad);
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "off", "--config"])
        .arg(&path)
        .output()
        .expect("run tollgate");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tags[\\\"a=b\\\"]") || err.contains("tags[\"a=b\"]"), "{err}");
}

#[tokio::test]
async fn tags_over_http() {
    let p =
        TollgateProcess::start_with_env(&["--http-listen", "127.0.0.1:0"], &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)]);
    p.wait_serving().await;
    let addr = p.http_addr();
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let json = [("authorization", auth.as_str()), ("content-type", "application/json")];
    for (name, env) in [("a", "prod"), ("b", "dev"), ("c", "prod")] {
        let body = serde_json::json!({ "name": name, "tags": { "env": env, "team": "x y" } }).to_string();
        let r = http::send(addr, "POST", "/v1/keys", &json, body.as_bytes());
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(r.json()["key"]["tags"]["env"], env);
    }
    let r = http::get(addr, "/v1/keys?tag=env%3Dprod&tag=team=x%20y&page_size=1", &json);
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let first = v["keys"][0]["name"].as_str().expect("a key").to_string();
    let token = v["next_page_token"].as_str().expect("a next page").to_string();
    let r = http::get(addr, &format!("/v1/keys?tag=env=prod&page_size=1&page_token={token}"), &json);
    let second = r.json()["keys"][0]["name"].as_str().expect("a key").to_string();
    let mut both = [first, second];
    both.sort();
    assert_eq!(both, ["a", "c"], "pages of one, in id order");
    let r = http::get(addr, "/v1/keys?tag=noequals", &json);
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["field"], "tag", "{r:?}");
    let r = http::get(addr, "/v1/plans?tag=tier=gold", &json);
    assert_eq!(r.status, 200, "{r:?}");
    // The OpenAPI document describes `tag` (not a `tags` map) on both lists.
    let doc = http::get(addr, "/openapi.json", &[]).json();
    for path in ["/v1/keys", "/v1/plans"] {
        let params = doc["paths"][path]["get"]["parameters"].as_array().expect("parameters");
        let names: Vec<&str> = params.iter().filter_map(|p| p["name"].as_str()).collect();
        assert!(names.contains(&"tag") && !names.contains(&"tags"), "{path}: {names:?}");
    }
    // PATCH replaces; a bad tag names itself.
    let id = http::get(addr, "/v1/keys?tag=env=dev", &json).json()["keys"][0]["id"].as_str().unwrap().to_string();
    let r = http::send(addr, "PATCH", &format!("/v1/keys/{id}"), &json, br#"{"tags":{"env":"prod"}}"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["tags"], serde_json::json!({ "env": "prod" }));
    let r = http::send(addr, "PATCH", &format!("/v1/keys/{id}"), &json, br#"{"tags":{"a=b":"c"}}"#);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.text().contains("a=b"), "{r:?}");
}

fn cli(p: &TollgateProcess, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .arg("--server")
        .arg(p.admin_url())
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "off")
        .output()
        .expect("run the CLI");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn cli_sets_shows_and_filters_tags() {
    let p = memory();
    p.wait_serving().await;
    let created = cli(&p, &["keys", "create", "--name", "alpha", "--tag", "env=prod", "--tag", "team=core", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(v["tags"], serde_json::json!({ "env": "prod", "team": "core" }));
    let id = v["id"].as_str().unwrap().to_string();
    cli(&p, &["keys", "create", "--name", "beta", "--tag", "env=dev"]);

    let table = cli(&p, &["keys", "list", "--tag", "env=prod"]);
    assert!(table.lines().next().unwrap().ends_with("TAGS"), "{table}");
    assert!(table.contains("env=prod,team=core"), "{table}");
    assert!(!table.contains("beta"), "{table}");
    let got = cli(&p, &["keys", "get", &id]);
    assert!(got.contains("env=prod,team=core"), "{got}");

    let updated = cli(&p, &["keys", "update", &id, "--tag", "env=staging", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&updated).unwrap();
    assert_eq!(v["tags"], serde_json::json!({ "env": "staging" }));
    let cleared = cli(&p, &["keys", "update", &id, "--clear-tags", "--json"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&cleared).unwrap()["tags"], serde_json::json!({}));

    cli(&p, &["stages", "put", "petstore/prod", "--method", "/pets/GET"]);
    cli(&p, &["plans", "create", "--name", "Gold", "--id", "gold", "--stage", "petstore/prod", "--tag", "tier=gold"]);
    cli(&p, &["plans", "create", "--name", "Free", "--id", "free", "--stage", "petstore/prod"]);
    let plans = cli(&p, &["plans", "list", "--tag", "tier=gold"]);
    assert!(plans.contains("gold") && plans.contains("tier=gold") && !plans.contains("free"), "{plans}");
    let plan = cli(&p, &["plans", "update", "gold", "--tag", "tier=platinum", "--json"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&plan).unwrap()["tags"]["tier"], "platinum");

    // A malformed --tag is refused before any call.
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["keys", "create", "--name", "x", "--tag", "novalue", "--server", &p.admin_url()])
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEY=VALUE"), "{}", String::from_utf8_lossy(&out.stderr));
}
