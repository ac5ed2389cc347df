//! The audit trail through the real server, on memory and on Redis: a record
//! for every kind of Admin change (table-driven: every operation that
//! `api::access::OPERATIONS` marks as a change), with the token's name, the
//! peer, the operation, the record ids and the before/after of the changed
//! fields; no key value, value hash or admin token anywhere in the trail,
//! the stream or the log; the trail stays capped; `tollgate audit list
//! --json` reads it back.

mod support;

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};
use support::redis::RedisServer;
use support::{admin_client, AdminClient, TollgateProcess};
use tollgate::api::access::OPERATIONS;
use tollgate::api::pb;
use tollgate::model::KeyHash;

const READ: &str = "read-token-0123456789abcdef";
const KEYS: &str = "keys-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";

const V1: &str = "auditvalueone0123456789abcdefghij";
const V2: &str = "auditvaluetwo0123456789abcdefghij";
const V3: &str = "auditvaluethree123456789abcdefghij";

fn tokens_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let mut y = String::from("tokens:\n");
    for (name, role, token) in [("dash", "read", READ), ("ci", "keys", KEYS), ("ops", "admin", ADMIN)] {
        y.push_str(&format!(
            "  - name: {name}\n    role: {role}\n    sha256: {}\n",
            hex::encode(Sha256::digest(token.as_bytes()))
        ));
    }
    support::write_temp("tokens.yaml", &y)
}

fn start(redis: Option<&RedisServer>, extra: &[&str]) -> (TollgateProcess, tempfile::TempDir) {
    let (dir, file) = tokens_file();
    let url = redis.map(|r| r.url());
    let mut args = vec!["--admin-tokens-file", file.to_str().unwrap()];
    if let Some(u) = &url {
        args.extend(["--redis-url", u.as_str()]);
    }
    args.extend_from_slice(extra);
    let p = TollgateProcess::start(&args);
    (p, dir)
}

async fn clients(p: &TollgateProcess) -> (AdminClient, AdminClient, AdminClient) {
    p.wait_serving().await;
    (
        admin_client(p.admin_addr(), Some(READ)).await,
        admin_client(p.admin_addr(), Some(KEYS)).await,
        admin_client(p.admin_addr(), Some(ADMIN)).await,
    )
}

async fn all_records(read: &mut AdminClient) -> Vec<pb::AuditRecord> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = read
            .list_audit_records(pb::ListAuditRecordsRequest { since_ms: 0, page_size: 3, page_token })
            .await
            .expect("list audit records")
            .into_inner();
        out.extend(r.records);
        if r.next_page_token.is_empty() {
            return out;
        }
        page_token = r.next_page_token;
    }
}

/// Every kind of change, each by the token whose role it needs; returns the
/// key values it used or was given (to search the trail for).
async fn every_change(ci: &mut AdminClient, ops: &mut AdminClient) -> Vec<String> {
    let mut values = vec![V1.to_string(), V2.to_string(), V3.to_string()];
    ops.put_stage(pb::PutStageRequest {
        stage: "shop/prod".into(),
        api_name: Some("Shop".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    ops.create_usage_plan(pb::CreateUsagePlanRequest {
        id: Some("gold".into()),
        name: "gold plan".into(),
        quota: Some(pb::Quota { limit: 100, period: "DAY".into(), offset: 0, ..Default::default() }),
        api_stages: vec![pb::PlanStage { stage: "shop/prod".into(), ..Default::default() }],
        ..Default::default()
    })
    .await
    .unwrap();
    ops.update_usage_plan(pb::UpdateUsagePlanRequest {
        id: "gold".into(),
        name: Some("Gold".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let k = ci
        .create_api_key(pb::CreateApiKeyRequest { name: "k1".into(), value: Some(V1.into()), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let id = k.key.unwrap().id;
    let generated = ci
        .create_api_key(pb::CreateApiKeyRequest { name: "k2".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    values.push(generated.value);
    ci.update_api_key(pb::UpdateApiKeyRequest { id: id.clone(), enabled: Some(false), ..Default::default() })
        .await
        .unwrap();
    ci.rotate_api_key(pb::RotateApiKeyRequest { id: id.clone(), value: Some(V2.into()), grace_seconds: 60 })
        .await
        .unwrap();
    let rotated = ci
        .rotate_api_key(pb::RotateApiKeyRequest { id: id.clone(), value: None, grace_seconds: 0 })
        .await
        .unwrap()
        .into_inner();
    values.push(rotated.value);
    ci.add_usage_plan_key(pb::UsagePlanKeyRequest { usage_plan_id: "gold".into(), key_id: id.clone() }).await.unwrap();
    ci.update_usage(pb::UpdateUsageRequest { usage_plan_id: "gold".into(), key_id: id.clone(), remaining: 5 })
        .await
        .unwrap();
    ci.remove_usage_plan_key(pb::UsagePlanKeyRequest { usage_plan_id: "gold".into(), key_id: id.clone() })
        .await
        .unwrap();
    let csv = format!("Name,Key,UsagePlanIds\nimported,{V3},gold\n");
    ci.import_api_keys(pb::ImportApiKeysRequest { csv: csv.into_bytes(), fail_on_warnings: true }).await.unwrap();
    ci.delete_api_key(pb::DeleteApiKeyRequest { id }).await.unwrap();
    ops.delete_usage_plan(pb::DeleteUsagePlanRequest { id: "gold".into() }).await.unwrap();
    ops.delete_stage(pb::DeleteStageRequest { stage: "shop/prod".into() }).await.unwrap();
    ops.put_stage(pb::PutStageRequest { stage: "other/x".into(), ..Default::default() }).await.unwrap();
    ops.delete_api(pb::DeleteApiRequest { api_id: "other".into() }).await.unwrap();
    values
}

fn change<'a>(r: &'a pb::AuditRecord, field: &str) -> &'a pb::AuditChange {
    r.changes.iter().find(|c| c.field == field).unwrap_or_else(|| panic!("{field} in {r:?}"))
}

fn find<'a>(records: &'a [pb::AuditRecord], op: &str) -> &'a pb::AuditRecord {
    records.iter().find(|r| r.operation == op).unwrap_or_else(|| panic!("a record of {op}: {records:#?}"))
}

/// What must never be in the trail or the log: the values, their hashes,
/// the tokens and the tokens' hashes.
fn secrets(values: &[String]) -> Vec<String> {
    let mut s = Vec::new();
    for v in values {
        s.push(v.clone());
        s.push(KeyHash::of(v).to_hex());
    }
    for t in [READ, KEYS, ADMIN] {
        s.push(t.to_string());
        s.push(hex::encode(Sha256::digest(t.as_bytes())));
    }
    s
}

async fn every_change_is_recorded(redis: Option<&RedisServer>) {
    let (p, _dir) = start(redis, &[]);
    let (mut read, mut ci, mut ops) = clients(&p).await;
    let values = every_change(&mut ci, &mut ops).await;
    let records = all_records(&mut read).await;

    // One record (at least) for every kind of change, and nothing else.
    let wanted: BTreeSet<&str> = OPERATIONS.iter().filter(|o| o.changes).map(|o| o.name).collect();
    let seen: BTreeSet<&str> = records.iter().map(|r| r.operation.as_str()).collect();
    assert_eq!(seen, wanted, "every change operation is recorded, and no read");
    for r in &records {
        let role = OPERATIONS.iter().find(|o| o.name == r.operation).unwrap().role;
        let token = if role == tollgate::api::access::Role::Keys { "ci" } else { "ops" };
        assert_eq!(r.token_name, token, "{r:?}");
        assert_eq!(r.peer, "127.0.0.1", "{r:?}");
        assert!(!r.record_ids.is_empty() && !r.changes.is_empty(), "{r:?}");
        assert!(r.time_ms > 0 && !r.id.is_empty());
    }
    let ids: Vec<&String> = records.iter().map(|r| &r.id).collect();
    let mut sorted = ids.clone();
    sorted.sort_by_key(|id| {
        let (ms, seq) = id.split_once('-').unwrap();
        (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    });
    assert_eq!(ids, sorted, "oldest first");

    // Before and after of the fields changed.
    let put = find(&records, "PutStage");
    assert!(put.record_ids.contains(&"api:shop".to_string()) && put.record_ids.contains(&"stage:shop/prod".into()));
    let name = change(find(&records, "UpdateUsagePlan"), "name");
    assert_eq!(
        (name.record.as_str(), name.before.as_str(), name.after.as_str()),
        ("plan:gold", "\"gold plan\"", "\"Gold\"")
    );
    let enabled = change(find(&records, "UpdateApiKey"), "enabled");
    assert_eq!((enabled.before.as_str(), enabled.after.as_str()), ("true", "false"));
    let grace = change(find(&records, "RotateApiKey"), "rotated_valid_until_ms");
    assert!(grace.before.is_empty() && grace.after.starts_with('['), "the old value's grace, not its hash: {grace:?}");
    let plans = change(find(&records, "AddUsagePlanKey"), "plans");
    assert_eq!((plans.before.as_str(), plans.after.as_str()), ("", "[\"gold\"]"));
    let usage = find(&records, "UpdateUsage");
    assert!(usage.record_ids[0].starts_with("usage:gold/"), "{usage:?}");
    assert_eq!(change(usage, "remaining").after, "5");
    let deleted = find(&records, "DeleteApiKey");
    assert!(deleted.changes.iter().all(|c| c.after.is_empty() && !c.before.is_empty()), "{deleted:?}");
    let created = find(&records, "CreateApiKey");
    assert!(created.changes.iter().all(|c| c.before.is_empty()), "{created:?}");
    // A plan's deletion: its subscriptions first (a record per chunk), then the plan.
    let plan_deleted = records.iter().filter(|r| r.operation == "DeleteUsagePlan");
    let ids: Vec<&String> = plan_deleted.flat_map(|r| &r.record_ids).collect();
    assert!(ids.iter().any(|i| *i == "plan:gold") && ids.iter().any(|i| i.starts_with("key:")), "{ids:?}");

    // No secret anywhere: the answers, the stored trail, the log.
    let answers = serde_json::to_string(&records).unwrap();
    let log = p.log();
    assert!(log.matches("admin change").count() >= records.len(), "each record is logged (target audit)");
    let mut stored = String::new();
    if let Some(redis) = redis {
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let len: usize = redis::cmd("XLEN").arg("tg:{cat}:audit").query_async(&mut conn).await.unwrap();
        assert_eq!(len, records.len(), "the trail is the stream");
        let raw: redis::Value =
            redis::cmd("XRANGE").arg("tg:{cat}:audit").arg("-").arg("+").query_async(&mut conn).await.unwrap();
        stored = format!("{raw:?}");
        assert!(stored.contains("DeleteApiKey"), "{stored}");
    }
    for s in secrets(&values) {
        assert!(!answers.contains(&s), "{s} in the audit answers");
        assert!(!stored.contains(&s), "{s} in the stored trail");
        assert!(!log.contains(&s), "{s} in the log");
    }

    // Pages, and since.
    let last = records.last().unwrap();
    let later = read
        .list_audit_records(pb::ListAuditRecordsRequest { since_ms: last.time_ms + 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(later.records.is_empty() && later.next_page_token.is_empty(), "{later:?}");
    let bad = read
        .list_audit_records(pb::ListAuditRecordsRequest { page_token: "zz".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn every_change_is_recorded_in_memory() {
    every_change_is_recorded(None).await;
}

#[tokio::test]
async fn every_change_is_recorded_in_redis() {
    let redis = RedisServer::start();
    every_change_is_recorded(Some(&redis)).await;
}

async fn make_changes(ci: &mut AdminClient, n: usize) {
    let k = ci
        .create_api_key(pb::CreateApiKeyRequest { name: "churn".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let id = k.key.unwrap().id;
    for i in 0..n {
        let req = pb::UpdateApiKeyRequest { id: id.clone(), description: Some(format!("d{i}")), ..Default::default() };
        ci.update_api_key(req).await.unwrap();
    }
}

#[tokio::test]
async fn the_trail_stays_capped() {
    // Memory: exactly the last N.
    let (p, _d) = start(None, &["--audit-max-records", "5"]);
    let (mut read, mut ci, _) = clients(&p).await;
    make_changes(&mut ci, 9).await;
    let records = all_records(&mut read).await;
    assert_eq!(records.len(), 5);
    assert_eq!(change(records.last().unwrap(), "description").after, "\"d8\"");

    // Redis: `MAXLEN ~ N` trims whole stream nodes (100 entries each by
    // default), so about N are kept.
    let redis = RedisServer::start();
    let (p, _d) = start(Some(&redis), &["--audit-max-records", "10"]);
    let (mut read, mut ci, _) = clients(&p).await;
    make_changes(&mut ci, 250).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let len: usize = redis::cmd("XLEN").arg("tg:{cat}:audit").query_async(&mut conn).await.unwrap();
    assert!((10..=110).contains(&len), "about 10 kept of 251: {len}");
    let records = all_records(&mut read).await;
    assert_eq!(records.len(), len);
    assert_eq!(change(records.last().unwrap(), "description").after, "\"d249\"");
}

#[tokio::test]
async fn the_cli_and_http_read_the_trail_back() {
    let (p, _d) = start(None, &["--http-listen", "127.0.0.1:0"]);
    let (_, mut ci, _) = clients(&p).await;
    make_changes(&mut ci, 3).await;
    // GET /v1/audit: the same records, in pages.
    let auth = format!("Bearer {READ}");
    let r = support::http::get(p.http_addr(), "/v1/audit?page_size=3", &[("authorization", &auth)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    assert_eq!(page["records"].as_array().unwrap().len(), 3, "{page}");
    assert_eq!(page["records"][0]["operation"], "CreateApiKey");
    let next = page["next_page_token"].as_str().unwrap().to_string();
    let r = support::http::get(p.http_addr(), &format!("/v1/audit?page_token={next}"), &[("authorization", &auth)]);
    let rest = r.json();
    assert_eq!(rest["records"].as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(rest["records"][0]["token_name"], "ci");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["audit", "list", "--server", &p.admin_url()])
            .args(args)
            .env("TOLLGATE_ADMIN_TOKEN", READ)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let json = run(&["--json"]);
    let lines: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "{json}");
    assert_eq!(lines[0]["operation"], "CreateApiKey");
    assert_eq!((lines[3]["token"].as_str(), lines[3]["peer"].as_str()), (Some("ci"), Some("127.0.0.1")));
    let c = &lines[3]["changes"].as_array().unwrap().iter().find(|c| c["field"] == "description").unwrap().clone();
    assert_eq!((c["before"].as_str(), c["after"].as_str()), (Some("d1"), Some("d2")));
    assert_eq!(run(&["--json", "--since", "1h"]).lines().count(), 4);
    assert_eq!(run(&["--json", "--limit", "2"]).lines().count(), 2);
    assert_eq!(run(&["--json", "--since", "2100-01-01"]).lines().count(), 0);
    let table = run(&[]);
    assert!(table.contains("UpdateApiKey") && table.contains("TOKEN"), "{table}");
}
