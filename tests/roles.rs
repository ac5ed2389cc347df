//! Scoped admin credentials through the real server: each role is allowed
//! exactly its operations (every Admin RPC and every Admin HTTP route, from
//! the one table `api::access::OPERATIONS`), the tokens file is read again
//! when it changes, a bad file is refused (at start, and on reload, keeping
//! the tokens in force), the single legacy token is the `admin` token, and
//! repeated failures from one peer are slowed down (counted, not timed).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::{admin_client, http, AdminClient, TollgateProcess, ADMIN_TOKEN};
use tollgate::api::access::{Role, OPERATIONS};
use tollgate::api::pb;
use tonic::{Code, Status};

const READ: &str = "read-token-0123456789abcdef";
const KEYS: &str = "keys-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";

fn sha(t: &str) -> String {
    hex::encode(Sha256::digest(t.as_bytes()))
}

fn tokens_yaml(tokens: &[(&str, &str, &str)]) -> String {
    let mut y = String::from("tokens:\n");
    for (name, role, token) in tokens {
        y.push_str(&format!("  - name: {name}\n    role: {role}\n    sha256: {}\n", sha(token)));
    }
    y
}

fn three_roles() -> String {
    tokens_yaml(&[("dash", "read", READ), ("ci", "keys", KEYS), ("ops", "admin", ADMIN)])
}

fn start_with_file(file: &Path, extra: &[&str], env: &[(&str, &str)]) -> TollgateProcess {
    let f = file.to_str().unwrap();
    let mut args = vec!["--admin-tokens-file", f, "--http-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    TollgateProcess::start_with_env(&args, env)
}

/// Calls the gRPC method `name` with a request that names things that do
/// not exist: the answer says whether the credentials let it through.
async fn call(a: &mut AdminClient, name: &str) -> Result<(), Status> {
    let id = || "nosuch".to_string();
    match name {
        "CreateApiKey" => a.create_api_key(pb::CreateApiKeyRequest::default()).await.map(drop),
        "GetApiKey" => a.get_api_key(pb::GetApiKeyRequest { id: id() }).await.map(drop),
        "ListApiKeys" => a.list_api_keys(pb::ListApiKeysRequest::default()).await.map(drop),
        "UpdateApiKey" => a.update_api_key(pb::UpdateApiKeyRequest { id: id(), ..Default::default() }).await.map(drop),
        "DeleteApiKey" => a.delete_api_key(pb::DeleteApiKeyRequest { id: id() }).await.map(drop),
        "ImportApiKeys" => a.import_api_keys(pb::ImportApiKeysRequest::default()).await.map(drop),
        "RotateApiKey" => a.rotate_api_key(pb::RotateApiKeyRequest { id: id(), ..Default::default() }).await.map(drop),
        "PutStage" => a.put_stage(pb::PutStageRequest { stage: "bad".into(), ..Default::default() }).await.map(drop),
        "GetStage" => a.get_stage(pb::GetStageRequest { stage: "a/b".into() }).await.map(drop),
        "ListStages" => a.list_stages(pb::ListStagesRequest::default()).await.map(drop),
        "DeleteStage" => a.delete_stage(pb::DeleteStageRequest { stage: "a/b".into() }).await.map(drop),
        "DeleteApi" => a.delete_api(pb::DeleteApiRequest { api_id: id() }).await.map(drop),
        "CreateUsagePlan" => a.create_usage_plan(pb::CreateUsagePlanRequest::default()).await.map(drop),
        "GetUsagePlan" => a.get_usage_plan(pb::GetUsagePlanRequest { id: id() }).await.map(drop),
        "ListUsagePlans" => a.list_usage_plans(pb::ListUsagePlansRequest::default()).await.map(drop),
        "UpdateUsagePlan" => {
            a.update_usage_plan(pb::UpdateUsagePlanRequest { id: id(), ..Default::default() }).await.map(drop)
        }
        "DeleteUsagePlan" => a.delete_usage_plan(pb::DeleteUsagePlanRequest { id: id() }).await.map(drop),
        "AddUsagePlanKey" => {
            a.add_usage_plan_key(pb::UsagePlanKeyRequest { usage_plan_id: id(), key_id: id() }).await.map(drop)
        }
        "RemoveUsagePlanKey" => {
            a.remove_usage_plan_key(pb::UsagePlanKeyRequest { usage_plan_id: id(), key_id: id() }).await.map(drop)
        }
        "ListUsagePlanKeys" => a
            .list_usage_plan_keys(pb::ListUsagePlanKeysRequest { usage_plan_id: id(), ..Default::default() })
            .await
            .map(drop),
        "GetUsage" => a.get_usage(pb::GetUsageRequest { usage_plan_id: id(), ..Default::default() }).await.map(drop),
        "UpdateUsage" => {
            a.update_usage(pb::UpdateUsageRequest { usage_plan_id: id(), key_id: id(), remaining: 1 }).await.map(drop)
        }
        "ListAuditRecords" => a.list_audit_records(pb::ListAuditRecordsRequest::default()).await.map(drop),
        "ListEvents" => a.list_events(pb::ListEventsRequest::default()).await.map(drop),
        other => panic!("no call for {other}: add it here"),
    }
}

fn role_name(r: Role) -> &'static str {
    r.as_str()
}

#[tokio::test]
async fn each_role_is_allowed_exactly_its_operations() {
    let (_dir, file) = support::write_temp("tokens.yaml", &three_roles());
    let p = start_with_file(&file, &[], &[]);
    let tokens = [("dash", Role::Read, READ), ("ci", Role::Keys, KEYS), ("ops", Role::Admin, ADMIN)];
    let mut checked = 0;
    for (name, role, token) in tokens {
        let mut a = admin_client(p.admin_addr(), Some(token)).await;
        for op in OPERATIONS.iter() {
            let allowed = role >= op.role;
            if op.grpc {
                let r = call(&mut a, op.name).await;
                match r {
                    Err(e) if !allowed => {
                        assert_eq!(e.code(), Code::PermissionDenied, "{name} calling {}: {e:?}", op.name);
                        let want = format!(
                            "token {name:?} has role {}; {} needs role {}",
                            role_name(role),
                            op.name,
                            role_name(op.role)
                        );
                        assert_eq!(e.message(), want);
                    }
                    Ok(()) if !allowed => panic!("{name} ({role:?}) may not call {}", op.name),
                    Err(e) => assert!(
                        !matches!(e.code(), Code::PermissionDenied | Code::Unauthenticated),
                        "{name} ({role:?}) may call {}: {e:?}",
                        op.name
                    ),
                    Ok(()) => {}
                }
                checked += 1;
            }
            // The same over HTTP.
            let (method, route) = op.http.unwrap();
            let path = route.replace("{id}", "nosuch").replace("{key_id}", "nosuch").replace("{api}", "a");
            let path = path.replace("{stage}", "b");
            let auth = format!("Bearer {token}");
            let mut headers = vec![("authorization", auth.as_str())];
            let body: &[u8] = if method == "GET" || method == "DELETE" {
                b""
            } else if route.ends_with("/import") {
                headers.push(("content-type", "text/csv"));
                b"Name,Key\n"
            } else {
                headers.push(("content-type", "application/json"));
                b"{}"
            };
            let r = http::send(p.http_addr(), method, &path, &headers, body);
            if allowed {
                assert!(![401, 403].contains(&r.status), "{name} may {method} {path}: {} {}", r.status, r.text());
            } else {
                assert_eq!(r.status, 403, "{name} may not {method} {path}: {}", r.text());
                let body = r.json();
                assert_eq!(body["code"], "PERMISSION_DENIED");
                let msg = body["message"].as_str().unwrap();
                assert!(msg.contains(&format!("needs role {}", role_name(op.role))) && msg.contains(name), "{msg}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 3 * 2 * 23, "every operation checked for every role: {checked}");
    // No token, an unknown one: UNAUTHENTICATED (401), never a role answer.
    let mut none = admin_client(p.admin_addr(), None).await;
    assert_eq!(call(&mut none, "ListApiKeys").await.unwrap_err().code(), Code::Unauthenticated);
    let mut wrong = admin_client(p.admin_addr(), Some("not-a-known-token-000000")).await;
    assert_eq!(call(&mut wrong, "ListApiKeys").await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(http::get(p.http_addr(), "/v1/keys", &[]).status, 401);
    let log = p.log();
    for t in [READ, KEYS, ADMIN] {
        assert!(!log.contains(t), "a token is never logged");
    }
}

/// Waits until `f` holds, for at most 15 s (the file is looked at every second).
async fn eventually<F, Fut>(what: &str, p: &TollgateProcess, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f().await {
        assert!(Instant::now() < deadline, "{what} within 15 s; log:\n{}", p.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn code_of(p: &TollgateProcess, token: &str, op: &str) -> Code {
    let mut a = admin_client(p.admin_addr(), Some(token)).await;
    match call(&mut a, op).await {
        Ok(()) => Code::Ok,
        Err(e) => e.code(),
    }
}

#[tokio::test]
async fn the_tokens_file_is_read_again_when_it_changes() {
    let (dir, file) = support::write_temp("tokens.yaml", &tokens_yaml(&[("dash", "read", READ)]));
    let p = start_with_file(&file, &[], &[]);
    assert_eq!(code_of(&p, READ, "ListApiKeys").await, Code::Ok);
    assert_eq!(code_of(&p, KEYS, "ListApiKeys").await, Code::Unauthenticated);

    // A token added works without a restart.
    std::fs::write(&file, tokens_yaml(&[("dash", "read", READ), ("ci", "keys", KEYS)])).unwrap();
    eventually("the added token works", &p, || async { code_of(&p, KEYS, "ListApiKeys").await == Code::Ok }).await;
    assert_eq!(code_of(&p, KEYS, "DeleteApiKey").await, Code::NotFound, "with its role");

    // A bad file keeps the tokens in force, and says why.
    std::fs::write(&file, "tokens:\n  - name: dash\n    role: writer\n    sha256: 00\n").unwrap();
    eventually("the bad file is reported", &p, || async { p.log().contains("admin tokens file not reloaded") }).await;
    assert!(p.log().contains("tokens[0].role"), "names the field: {}", p.log());
    assert_eq!(code_of(&p, KEYS, "ListApiKeys").await, Code::Ok);
    assert_eq!(code_of(&p, READ, "ListApiKeys").await, Code::Ok);

    // A token removed stops working.
    std::fs::write(&file, tokens_yaml(&[("ci", "keys", KEYS)])).unwrap();
    eventually("the removed token is refused", &p, || async {
        code_of(&p, READ, "ListApiKeys").await == Code::Unauthenticated
    })
    .await;
    assert_eq!(code_of(&p, KEYS, "ListApiKeys").await, Code::Ok);

    // A role changed applies too.
    std::fs::write(&file, tokens_yaml(&[("ci", "read", KEYS)])).unwrap();
    eventually("the new role applies", &p, || async {
        code_of(&p, KEYS, "DeleteApiKey").await == Code::PermissionDenied
    })
    .await;
    drop(dir);
}

#[tokio::test]
async fn the_single_token_is_the_admin_token_beside_the_file() {
    let (_dir, file) = support::write_temp("tokens.yaml", &tokens_yaml(&[("dash", "read", READ)]));
    let p = start_with_file(&file, &[], &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)]);
    let mut legacy = p.admin().await;
    legacy.put_stage(pb::PutStageRequest { stage: "a/b".into(), ..Default::default() }).await.expect("admin role");
    assert_eq!(code_of(&p, READ, "ListStages").await, Code::Ok);
    let e = admin_client(p.admin_addr(), Some(READ))
        .await
        .delete_stage(pb::DeleteStageRequest { stage: "a/b".into() })
        .await
        .unwrap_err();
    assert_eq!(e.message(), "token \"dash\" has role read; DeleteStage needs role admin");

    // Alone, as before: every operation.
    let alone = TollgateProcess::start_with_env(&[], &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)]);
    for op in OPERATIONS.iter().filter(|o| o.grpc) {
        let code = code_of(&alone, ADMIN_TOKEN, op.name).await;
        assert!(!matches!(code, Code::PermissionDenied | Code::Unauthenticated), "{}: {code:?}", op.name);
    }
}

#[test]
fn a_bad_tokens_file_stops_the_start_naming_the_mistake() {
    let cases = [
        ("tokens:\n  - name: ci\n    role: writer\n    sha256: 00\n", "tokens[0].role"),
        (&*format!("tokens:\n  - name: ci\n    role: read\n    sha256: {}\n", "ab".repeat(31)), "64 hex digits"),
        (
            &*format!(
                "tokens:\n  - {{name: ci, role: read, sha256: {}}}\n  - {{name: ci, role: keys, sha256: {}}}\n",
                sha("a"),
                sha("b")
            ),
            "tokens[1].name: \"ci\" is taken",
        ),
        (
            &*format!(
                "tokens:\n  - {{name: a, role: read, sha256: {}}}\n  - {{name: b, role: keys, sha256: {}}}\n",
                sha("a"),
                sha("a")
            ),
            "tokens[1].sha256: the same token as token \"a\"",
        ),
    ];
    for (yaml, needle) in cases {
        let (_dir, file) = support::write_temp("tokens.yaml", yaml);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--admin-tokens-file"])
            .arg(&file)
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{yaml}: must not start");
        assert!(err.contains(needle) && err.contains("admin_tokens_file"), "{needle:?} in {err}");
    }
}

/// The metric's value with these labels (0 when absent).
fn metric(text: &str, name_and_labels: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .map_or(0, |v| v as u64)
}

#[tokio::test]
async fn repeated_failures_from_one_peer_are_slowed_down() {
    let (_dir, file) = support::write_temp("tokens.yaml", &three_roles());
    let p = start_with_file(&file, &["--metrics-listen", "127.0.0.1:0"], &[]);
    let free = tollgate::api::access::throttle::FREE_FAILURES as u64;
    for _ in 0..free {
        assert_eq!(code_of(&p, "a-wrong-token-000000000", "ListApiKeys").await, Code::Unauthenticated);
    }
    let m = p.metrics_text().await;
    assert_eq!(metric(&m, "tollgate_admin_auth_failures_total{reason=\"invalid\"}"), free, "{m}");
    assert_eq!(metric(&m, "tollgate_admin_auth_throttled_total"), 0, "the first failures are free: {m}");
    // Each further attempt waits first (gRPC and HTTP alike).
    for _ in 0..2 {
        assert_eq!(code_of(&p, "a-wrong-token-000000000", "ListApiKeys").await, Code::Unauthenticated);
    }
    let r = http::get(p.http_addr(), "/v1/keys", &[("authorization", "Bearer a-wrong-token-000000000")]);
    assert_eq!(r.status, 401);
    let m = p.metrics_text().await;
    assert_eq!(metric(&m, "tollgate_admin_auth_throttled_total"), 3, "{m}");
    // Even the right token waits once; then the peer is forgotten.
    assert_eq!(code_of(&p, READ, "ListApiKeys").await, Code::Ok);
    assert_eq!(code_of(&p, "a-wrong-token-000000000", "ListApiKeys").await, Code::Unauthenticated);
    let m = p.metrics_text().await;
    assert_eq!(metric(&m, "tollgate_admin_auth_throttled_total"), 4, "success resets: {m}");
    assert_eq!(metric(&m, "tollgate_admin_auth_failures_total{reason=\"invalid\"}"), free + 4, "{m}");
    // A role refusal is counted apart and does not slow the peer down.
    assert_eq!(code_of(&p, READ, "DeleteApiKey").await, Code::PermissionDenied);
    let m = p.metrics_text().await;
    assert_eq!(metric(&m, "tollgate_admin_auth_failures_total{reason=\"forbidden\"}"), 1, "{m}");
    assert_eq!(metric(&m, "tollgate_admin_auth_throttled_total"), 4, "{m}");
}
