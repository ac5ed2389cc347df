//! The HTTP/JSON API (`--http-listen`, docs/http.md) through real `tollgate
//! serve` processes: `POST /v1/authorize` and its headers, every Admin route,
//! its errors and credentials, pages, CSV import, usage, `/healthz`,
//! `/readyz` with Redis going away, the OpenAPI document checked by a real
//! validator and against the routes served, and the listener's shutdown.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::http::{self, Response};
use support::redis::RedisServer;
use support::{quickstart, req, TollgateProcess, ADMIN_TOKEN, DEMO_KEY};

/// The id of the quickstart's demo key.
const DEMO_KEY_ID: &str = "6e9fded41e";

/// A tollgate with the quickstart catalog, the test admin token and the HTTP API.
fn start(extra: &[&str]) -> TollgateProcess {
    let config = quickstart();
    let mut args = vec!["--config", config.to_str().unwrap(), "--http-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    TollgateProcess::start_with_env(&args, &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)])
}

/// A client of the HTTP API, sending the admin token when it has one.
struct Api {
    addr: SocketAddr,
    token: Option<String>,
}

impl Api {
    fn new(p: &TollgateProcess) -> Self {
        Self { addr: p.http_addr(), token: Some(ADMIN_TOKEN.into()) }
    }

    fn with_token(&self, token: Option<&str>) -> Self {
        Self { addr: self.addr, token: token.map(str::to_string) }
    }

    /// `method path` with a JSON body (none when `Value::Null`).
    fn call(&self, method: &str, path: &str, body: Value) -> Response {
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![];
        if let Some(b) = &bearer {
            headers.push(("authorization", b.as_str()));
        }
        if body.is_null() {
            return http::send(self.addr, method, path, &headers, b"");
        }
        headers.push(("content-type", "application/json"));
        http::send(self.addr, method, path, &headers, body.to_string().as_bytes())
    }

    fn get(&self, path: &str) -> Response {
        self.call("GET", path, Value::Null)
    }
}

/// The body of `r`, after checking its status.
#[track_caller]
fn expect(r: &Response, status: u16) -> Value {
    assert_eq!(r.status, status, "body: {}", r.text());
    if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    }
}

/// Checks an error answer: status, gRPC code name, field, and a piece of the message.
#[track_caller]
fn expect_error(r: &Response, status: u16, code: &str, field: Option<&str>, needle: &str) {
    let body = expect(r, status);
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["field"].as_str(), field, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "message {message:?} should mention {needle:?}");
}

fn authorize(api: &Api, body: Value) -> Response {
    api.call("POST", "/v1/authorize", body)
}

fn demo(method: &str) -> Value {
    json!({"api_key": DEMO_KEY, "stage": "petstore/prod", "method": method})
}

#[test]
fn authorize_answers_200_for_every_decision_with_the_ratelimit_headers() {
    let p = start(&[]);
    let api = Api::new(&p).with_token(None);

    let r = authorize(&api, demo("/pets/GET"));
    let d = expect(&r, 200);
    let mut fields: Vec<_> = d.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    let proto = [
        "allowed",
        "decision_id",
        "http_status",
        "key_id",
        "message",
        "plan_id",
        "rate_limit",
        "reason",
        "retry_after_ms",
        "shadow_denied",
        "shadow_reason",
    ];
    assert_eq!(fields, proto, "the fields of the gRPC AuthorizeResponse: {d}");
    assert_eq!(
        (d["allowed"].as_bool(), d["reason"].as_str(), d["http_status"].as_u64()),
        (Some(true), Some("OK"), Some(200))
    );
    assert_eq!((d["key_id"].as_str(), d["plan_id"].as_str()), (Some(DEMO_KEY_ID), Some("basic")));
    assert_eq!(d["rate_limit"]["kind"], "PLAN_THROTTLE", "{d}");
    assert_eq!(r.header("ratelimit-policy"), Some("\"throttle\";q=5;w=5"));
    assert!(r.header("ratelimit").is_some_and(|v| v.starts_with("\"throttle\";r=4;t=")), "{:?}", r.headers);
    assert_eq!(r.header("retry-after"), None, "no Retry-After on an allowed request");

    // The burst of 5 spent (one above, four here), the sixth is throttled:
    // still a 200 call, the decision's status in the body.
    for _ in 0..4 {
        expect(&authorize(&api, demo("/pets/GET")), 200);
    }
    let r = authorize(&api, demo("/pets/GET"));
    let d = expect(&r, 200);
    assert_eq!(
        (d["allowed"].as_bool(), d["reason"].as_str(), d["http_status"].as_u64()),
        (Some(false), Some("THROTTLED"), Some(429))
    );
    assert_eq!(d["message"], "Too Many Requests");
    assert!(d["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{d}");
    let retry: u64 = r.header("retry-after").expect("Retry-After on a throttled request").parse().unwrap();
    assert!(retry >= 1, "{retry}");
    assert!(r.header("ratelimit").is_some_and(|v| v.contains(";r=0;")), "{:?}", r.headers);

    // A wrong key, an unknown stage, no key at all: 200 calls, denied decisions.
    let d =
        expect(&authorize(&api, json!({"api_key": "wrongkey", "stage": "petstore/prod", "method": "/pets/GET"})), 200);
    assert_eq!((d["reason"].as_str(), d["http_status"].as_u64()), (Some("INVALID_API_KEY"), Some(403)));
    assert_eq!(d["rate_limit"], Value::Null, "{d}");
    let d =
        expect(&authorize(&api, json!({"api_key": DEMO_KEY, "stage": "petstore/test", "method": "/pets/GET"})), 200);
    assert_eq!((d["reason"].as_str(), d["http_status"].as_u64()), (Some("UNKNOWN_STAGE"), Some(404)));
    let d = expect(&authorize(&api, json!({"stage": "petstore/prod", "method": "/pets/GET"})), 200);
    assert_eq!(d["reason"], "INVALID_API_KEY", "api_key is optional: {d}");
    assert!(!p.log().contains(DEMO_KEY), "key values never reach the log");
}

#[tokio::test]
async fn authorize_bad_requests_are_400_with_the_grpc_message_and_field() {
    let p = start(&[]);
    let api = Api::new(&p).with_token(None);
    let mut grpc = p.authorizer().await;
    let cases = [
        (json!({"api_key": "", "stage": "petstore/prod", "method": "/pets/GET"}), "api_key"),
        (json!({"api_key": DEMO_KEY, "stage": "petstore", "method": "/pets/GET"}), "stage"),
        (json!({"api_key": DEMO_KEY, "stage": "petstore/prod", "method": "pets/GET"}), "method"),
        (json!({"api_key": DEMO_KEY, "stage": "petstore/prod", "method": "/pets/GET", "cost": 0}), "cost"),
    ];
    for (body, field) in cases {
        let r = authorize(&api, body.clone());
        let e = grpc
            .authorize(req(
                body["api_key"].as_str(),
                body["stage"].as_str().unwrap(),
                body["method"].as_str().unwrap(),
                body["cost"].as_u64(),
            ))
            .await
            .expect_err("INVALID_ARGUMENT over gRPC");
        expect_error(&r, 400, "INVALID_ARGUMENT", Some(field), e.message());
        assert_eq!(r.json()["message"], e.message(), "the same message as over gRPC");
    }

    // What only JSON can get wrong: a wrong type, an unknown field (a typo),
    // not JSON at all, not sent as JSON.
    let r = authorize(&api, json!({"api_key": DEMO_KEY, "stage": "petstore/prod", "method": "/pets/GET", "cost": "2"}));
    expect_error(&r, 400, "INVALID_ARGUMENT", Some("cost"), "invalid type");
    let r = authorize(&api, json!({"apikey": DEMO_KEY, "stage": "petstore/prod", "method": "/pets/GET"}));
    expect_error(&r, 400, "INVALID_ARGUMENT", Some("apikey"), "unknown field `apikey`");
    let json = [("content-type", "application/json")];
    let r = http::send(api.addr, "POST", "/v1/authorize", &json, b"{\"stage\":");
    expect_error(&r, 400, "INVALID_ARGUMENT", Some("body"), "is not valid JSON");
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let r = http::send(api.addr, "POST", "/v1/authorize", &form, b"stage=petstore/prod");
    expect_error(&r, 415, "INVALID_ARGUMENT", Some("body"), "application/json");
    // An empty body is an empty request: the stage is missing.
    let r = http::send(api.addr, "POST", "/v1/authorize", &[], b"");
    expect_error(&r, 400, "INVALID_ARGUMENT", Some("stage"), "stage");
    // Larger than --max-message-bytes.
    let p = start(&["--max-message-bytes", "100"]);
    let big = json!({"api_key": DEMO_KEY, "stage": "petstore/prod", "method": format!("/{}/GET", "a".repeat(200))});
    expect_error(&authorize(&Api::new(&p), big), 413, "OUT_OF_RANGE", None, "length limit exceeded");
}

/// Waits (up to 20 s) until `/readyz` answers `status`, and returns its body.
fn wait_readyz(api: &Api, status: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = api.get("/readyz");
        if r.status == status {
            return r.json();
        }
        assert!(Instant::now() < deadline, "/readyz never answered {status}; last: {} {}", r.status, r.text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn readyz_follows_redis_and_a_store_error_is_503_or_the_policy() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let p = start(&["--redis-url", &url]);
    let open = start(&["--redis-url", &url, "--on-store-error", "allow"]);
    let (api, open_api) = (Api::new(&p), Api::new(&open));

    assert_eq!(expect(&api.get("/healthz"), 200), json!({"status": "ok"}));
    let ready = wait_readyz(&api, 200);
    assert_eq!(ready, json!({"ready": true, "store_ready": true, "catalog_ready": true}));
    wait_readyz(&open_api, 200);
    assert_eq!(expect(&authorize(&api, demo("/pets/GET")), 200)["allowed"], true);

    redis.stop();
    let down = wait_readyz(&api, 503);
    assert_eq!((down["ready"].as_bool(), down["store_ready"].as_bool()), (Some(false), Some(false)), "{down}");
    assert!(down["reason"].as_str().is_some_and(|r| r.contains("limit store")), "{down}");
    expect(&api.get("/healthz"), 200);
    // The store cannot decide: 503 UNAVAILABLE, like gRPC's UNAVAILABLE...
    expect_error(&authorize(&api, demo("/pets/GET")), 503, "UNAVAILABLE", None, "limit store unavailable");
    // ... unless --on-store-error says otherwise.
    wait_readyz(&open_api, 503);
    let d = expect(&authorize(&open_api, demo("/pets/GET")), 200);
    assert_eq!((d["allowed"].as_bool(), d["reason"].as_str()), (Some(true), Some("OK")), "{d}");

    redis.restart();
    wait_readyz(&api, 200);
}

#[test]
fn admin_credentials_are_the_grpc_ones() {
    let p = start(&[]);
    let api = Api::new(&p);
    expect_error(&api.with_token(None).get("/v1/keys"), 401, "UNAUTHENTICATED", None, "TOLLGATE_ADMIN_TOKEN");
    let wrong = api.with_token(Some("not-the-right-token-000"));
    expect_error(&wrong.get("/v1/keys"), 401, "UNAUTHENTICATED", None, "not valid");
    // Credentials are checked before the body is read.
    let r = api.with_token(None).call("POST", "/v1/plans", json!({"throttle": "fast"}));
    expect_error(&r, 401, "UNAUTHENTICATED", None, "authorization");
    expect(&api.get("/v1/keys"), 200);
    assert!(!p.log().contains(ADMIN_TOKEN), "the token is never logged");

    // No token configured: refused, saying how to set one; the data plane needs none.
    let bare = TollgateProcess::start(&["--http-listen", "127.0.0.1:0"]);
    let r = Api::new(&bare).get("/v1/keys");
    expect_error(&r, 409, "FAILED_PRECONDITION", None, "TOLLGATE_ADMIN_TOKEN");
    let r = authorize(&Api::new(&bare), json!({"stage": "a/b", "method": "/x/GET"}));
    assert_eq!(expect(&r, 200)["reason"], "UNKNOWN_STAGE");

    // Admin off: every Admin route says so.
    let off = start(&["--admin-listen", "off"]);
    expect_error(&Api::new(&off).get("/v1/plans"), 501, "UNIMPLEMENTED", None, "--admin-listen off");
}

/// `GET /v1/stats`: the counts of the decision metrics, the store and the
/// catalog, behind the admin token.
#[test]
fn stats_count_decisions_as_the_metrics_do() {
    let p = start(&["--metrics-listen", "127.0.0.1:0"]);
    let api = Api::new(&p);
    expect_error(&api.with_token(None).get("/v1/stats"), 401, "UNAUTHENTICATED", None, "TOLLGATE_ADMIN_TOKEN");
    expect_error(
        &api.with_token(Some("not-the-right-token-000")).get("/v1/stats"),
        401,
        "UNAUTHENTICATED",
        None,
        "not valid",
    );

    let before = expect(&api.get("/v1/stats"), 200);
    let zeros = json!({"OK": 0, "THROTTLED": 0, "QUOTA_EXCEEDED": 0, "INVALID_API_KEY": 0, "NOT_SUBSCRIBED": 0, "UNKNOWN_STAGE": 0});
    assert_eq!(before["decisions"], zeros);
    assert_eq!(before["decision_errors"], json!({"invalid": 0, "unavailable": 0, "internal": 0}));
    assert_eq!(before["store"], json!({"kind": "memory", "mode": null, "ready": true}));
    assert_eq!(before["ready"], true);
    let catalog = &before["catalog"];
    assert_eq!(
        (&catalog["apis"], &catalog["stages"], &catalog["plans"], &catalog["key_values"]),
        (&json!(1), &json!(1), &json!(1), &json!(1))
    );
    assert_eq!(catalog["ready"], true);

    // Over HTTP and gRPC alike: 5 allowed, 2 throttled (bursts of 5), a wrong key, a bad request.
    for _ in 0..7 {
        authorize(&api, demo("/pets/GET"));
    }
    let wrong = json!({"api_key": "wrongkey", "stage": "petstore/prod", "method": "/pets/GET"});
    assert_eq!(expect(&authorize(&api, wrong), 200)["reason"], "INVALID_API_KEY");
    expect(&authorize(&api, json!({"stage": "petstore", "method": "/pets/GET"})), 400);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(async { p.authorizer().await.authorize(req(None, "nope/prod", "/x/GET", None)).await });
    assert_eq!(r.unwrap().into_inner().reason, tollgate::api::pb::Reason::UnknownStage as i32);

    let after = expect(&api.get("/v1/stats"), 200);
    let expected = json!({"OK": 5, "THROTTLED": 2, "QUOTA_EXCEEDED": 0, "INVALID_API_KEY": 1, "NOT_SUBSCRIBED": 0, "UNKNOWN_STAGE": 1});
    assert_eq!(after["decisions"], expected);
    assert_eq!(after["decision_errors"]["invalid"], 1);
    assert!(after["now_ms"].as_u64() >= before["now_ms"].as_u64());
    assert_eq!(after["started_at_ms"], before["started_at_ms"]);

    // The same counts as /metrics.
    let metrics = p.metrics_addr();
    let text = http::request(metrics, "GET", "/metrics", &[]).text();
    for (reason, n) in after["decisions"].as_object().unwrap() {
        let line = format!("tollgate_decisions_total{{reason=\"{reason}\"}} {n}");
        assert!(n == 0 || text.lines().any(|l| l == line), "{line:?} in:\n{text}");
    }
    assert!(text.lines().any(|l| l == "tollgate_decision_errors_total{kind=\"invalid\"} 1"), "{text}");
}

#[test]
fn every_admin_route_end_to_end() {
    let p = start(&[]);
    let api = Api::new(&p);

    // Stages: PUT creates the stage and its API, GET reads it back, list.
    let body = json!({"api_name": "Shop", "methods": [
        {"method": "/health/GET", "api_key_required": false},
        {"method": "/items/{id}/GET", "throttle": {"rate_limit": 10.0, "burst_limit": 20}},
    ]});
    let st = expect(&api.call("PUT", "/v1/stages/shop/prod", body), 200);
    assert_eq!((st["stage"].as_str(), st["api_name"].as_str()), (Some("shop/prod"), Some("Shop")), "{st}");
    assert_eq!(st["methods"].as_array().map(Vec::len), Some(2), "{st}");
    expect(&api.call("PUT", "/v1/stages/shop/beta", Value::Null), 200);
    let got = expect(&api.get("/v1/stages/shop/prod"), 200);
    assert_eq!(got, st);
    let list = expect(&api.get("/v1/stages?api_id=shop"), 200);
    assert_eq!(list["stages"].as_array().map(Vec::len), Some(2), "{list}");

    // Plans: create (201 + Location), get, list, patch.
    let r = api.call(
        "POST",
        "/v1/plans",
        json!({
            "name": "Gold", "throttle": {"rate_limit": 5.0, "burst_limit": 10},
            "quota": {"limit": 100, "period": "DAY"}, "api_stages": [{"stage": "shop/prod"}],
        }),
    );
    let plan = expect(&r, 201);
    let plan_id = plan["id"].as_str().unwrap().to_string();
    assert_eq!(r.header("location"), Some(format!("/v1/plans/{plan_id}").as_str()));
    assert_eq!(expect(&api.get(&format!("/v1/plans/{plan_id}")), 200), plan);
    let list = expect(&api.get("/v1/plans"), 200);
    assert!(list["plans"].as_array().unwrap().iter().any(|p| p["id"] == plan_id.as_str()), "{list}");
    let patched = expect(
        &api.call(
            "PATCH",
            &format!("/v1/plans/{plan_id}"),
            json!({"name": "Gold 2", "add_stages": [{"stage": "shop/beta"}]}),
        ),
        200,
    );
    assert_eq!((patched["name"].as_str(), patched["api_stages"].as_array().map(Vec::len)), (Some("Gold 2"), Some(2)));
    assert_eq!(patched["quota"]["limit"], 100, "what the body does not name stays: {patched}");

    // Keys: create (the value only here), get (never the value), patch, rotate.
    let r = api.call("POST", "/v1/keys", json!({"name": "globex", "customer_id": "globex-corp"}));
    let created = expect(&r, 201);
    let (key_id, value) =
        (created["key"]["id"].as_str().unwrap().to_string(), created["value"].as_str().unwrap().to_string());
    assert_eq!(r.header("location"), Some(format!("/v1/keys/{key_id}").as_str()));
    let key = expect(&api.get(&format!("/v1/keys/{key_id}")), 200);
    assert_eq!((key["name"].as_str(), key["customer_id"].as_str()), (Some("globex"), Some("globex-corp")));
    assert!(!key.to_string().contains(&value), "the value is never shown again");
    let key = expect(&api.call("PATCH", &format!("/v1/keys/{key_id}"), json!({"description": "the globex key"})), 200);
    assert_eq!((key["description"].as_str(), key["name"].as_str()), (Some("the globex key"), Some("globex")));

    // Subscriptions: add (201), list, and the key decides through the plan.
    let r = api.call("POST", &format!("/v1/plans/{plan_id}/keys"), json!({"key_id": key_id}));
    let sub = expect(&r, 201);
    assert_eq!(sub["key"]["usage_plan_ids"], json!([plan_id]), "{sub}");
    let keys = expect(&api.get(&format!("/v1/plans/{plan_id}/keys")), 200);
    assert_eq!(keys["keys"][0]["id"], key_id.as_str(), "{keys}");
    let d = expect(&authorize(&api, json!({"api_key": value, "stage": "shop/prod", "method": "/items/7/GET"})), 200);
    assert_eq!((d["allowed"].as_bool(), d["plan_id"].as_str()), (Some(true), Some(plan_id.as_str())), "{d}");
    let plans = expect(&api.get(&format!("/v1/plans?key_id={key_id}")), 200);
    assert_eq!(plans["plans"].as_array().map(Vec::len), Some(1), "{plans}");

    // Rotate: a new value at once (grace 0), the old one refused.
    let rotated = expect(&api.call("POST", &format!("/v1/keys/{key_id}/rotate"), Value::Null), 200);
    let new_value = rotated["value"].as_str().unwrap();
    assert_ne!(new_value, value);
    let old = expect(&authorize(&api, json!({"api_key": value, "stage": "shop/prod", "method": "/items/7/GET"})), 200);
    assert_eq!(old["reason"], "INVALID_API_KEY");
    let new =
        expect(&authorize(&api, json!({"api_key": new_value, "stage": "shop/prod", "method": "/items/7/GET"})), 200);
    assert_eq!(new["allowed"], true, "{new}");

    // Unsubscribe, delete: 204 and no body; then 404.
    let r = api.call("DELETE", &format!("/v1/plans/{plan_id}/keys/{key_id}"), Value::Null);
    assert_eq!(expect(&r, 204), Value::Null);
    expect(&api.call("DELETE", &format!("/v1/keys/{key_id}"), Value::Null), 204);
    expect_error(&api.get(&format!("/v1/keys/{key_id}")), 404, "NOT_FOUND", None, &key_id);
    expect(&api.call("DELETE", &format!("/v1/plans/{plan_id}"), Value::Null), 204);
    expect_error(&api.get(&format!("/v1/plans/{plan_id}")), 404, "NOT_FOUND", None, &plan_id);
    expect(&api.call("DELETE", "/v1/stages/shop/beta", Value::Null), 204);
    expect_error(&api.get("/v1/stages/shop/beta"), 404, "NOT_FOUND", None, "shop/beta");
    expect(&api.call("DELETE", "/v1/apis/shop", Value::Null), 204);
    expect_error(&api.get("/v1/stages/shop/prod"), 404, "NOT_FOUND", None, "shop/prod");
}

#[tokio::test]
async fn admin_errors_have_the_grpc_codes_and_messages() {
    let p = start(&[]);
    let api = Api::new(&p);
    let mut grpc = p.admin().await;

    // 400 naming the field, the same message as over gRPC.
    let bad = json!({"name": "P", "throttle": {"rate_limit": -1.0, "burst_limit": 5}});
    let e = grpc
        .create_usage_plan(tollgate::api::pb::CreateUsagePlanRequest {
            name: "P".into(),
            throttle: Some(tollgate::api::pb::Throttle { rate_limit: -1.0, burst_limit: 5 }),
            ..Default::default()
        })
        .await
        .expect_err("INVALID_ARGUMENT");
    let r = api.call("POST", "/v1/plans", bad);
    expect_error(&r, 400, "INVALID_ARGUMENT", Some("throttle.rate_limit"), e.message());
    assert_eq!(r.json()["message"], e.message());
    expect_error(&api.get("/v1/keys?page_size=501"), 400, "INVALID_ARGUMENT", Some("page_size"), "1 to 500");
    expect_error(&api.get("/v1/keys?page_size=ten"), 400, "INVALID_ARGUMENT", Some("page_size"), "invalid digit");
    expect_error(&api.get("/v1/keys?pagesize=10"), 400, "INVALID_ARGUMENT", Some("pagesize"), "unknown field");
    expect_error(&api.get("/v1/keys?page_token=zz"), 400, "INVALID_ARGUMENT", Some("page_token"), "previous answer");
    let r = api.call("PATCH", &format!("/v1/keys/{DEMO_KEY_ID}"), json!({"id": "other"}));
    expect_error(&r, 400, "INVALID_ARGUMENT", Some("id"), "unknown field `id`");

    // 404.
    expect_error(&api.get("/v1/keys/nosuchkey"), 404, "NOT_FOUND", None, "\"nosuchkey\" does not exist");
    let r = api.call("POST", "/v1/plans/basic/keys", json!({"key_id": "nosuchkey"}));
    expect_error(&r, 404, "NOT_FOUND", None, "nosuchkey");
    expect_error(&api.get("/v1/nothing/here"), 404, "NOT_FOUND", None, "no route GET /v1/nothing/here");

    // 409: ALREADY_EXISTS and FAILED_PRECONDITION.
    let r = api.call("POST", "/v1/keys", json!({"name": "again", "value": DEMO_KEY}));
    expect_error(&r, 409, "ALREADY_EXISTS", None, DEMO_KEY_ID);
    expect_error(
        &api.call("DELETE", "/v1/stages/petstore/prod", Value::Null),
        409,
        "FAILED_PRECONDITION",
        None,
        "basic",
    );

    // 405 for a method a path does not take.
    let r = api.call("PUT", "/v1/keys", Value::Null);
    expect_error(&r, 405, "UNIMPLEMENTED", None, "does not take PUT");
}

#[test]
fn lists_come_in_pages() {
    let p = start(&[]);
    let api = Api::new(&p);
    let plan = expect(&api.call("POST", "/v1/plans", json!({"name": "Paged", "id": "paged"})), 201);
    assert_eq!(plan["id"], "paged");
    let mut made = vec![DEMO_KEY_ID.to_string()];
    for i in 0..4 {
        let k = expect(&api.call("POST", "/v1/keys", json!({"name": format!("k{i}")})), 201);
        let id = k["key"]["id"].as_str().unwrap().to_string();
        expect(&api.call("POST", "/v1/plans/paged/keys", json!({"key_id": id})), 201);
        made.push(id);
    }
    expect(&api.call("POST", "/v1/plans", json!({"name": "Other"})), 201);

    /// Follows `next_page_token` from `first`, collecting `items`' ids.
    fn all(api: &Api, first: &str, items: &str) -> (Vec<String>, usize) {
        let (mut ids, mut pages, mut token) = (Vec::new(), 0, String::new());
        loop {
            let sep = if first.contains('?') { '&' } else { '?' };
            let page = expect(&api.get(&format!("{first}{sep}page_size=2&page_token={token}")), 200);
            pages += 1;
            let got = page[items].as_array().unwrap();
            assert!(got.len() <= 2, "{page}");
            ids.extend(got.iter().map(|k| k["id"].as_str().unwrap().to_string()));
            token = page["next_page_token"].as_str().unwrap().to_string();
            if token.is_empty() {
                return (ids, pages);
            }
        }
    }
    let (mut keys, pages) = all(&api, "/v1/keys", "keys");
    assert_eq!(pages, 3, "5 keys, 2 a page");
    keys.sort();
    made.sort();
    assert_eq!(keys, made);
    let (plans, _) = all(&api, "/v1/plans", "plans");
    assert_eq!(plans.len(), 3, "{plans:?}");
    let (sub, pages) = all(&api, "/v1/plans/paged/keys", "keys");
    assert_eq!((sub.len(), pages), (4, 2), "{sub:?}");
    let (named, _) = all(&api, "/v1/keys?name_prefix=k", "keys");
    assert_eq!(named.len(), 4, "{named:?}");
}

#[test]
fn csv_import_over_http() {
    let p = start(&[]);
    let api = Api::new(&p);
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let auth = ("authorization", bearer.as_str());
    let csv = "Name,Key,Description,Enabled,UsagePlanIds\n\
               Initech,initechkey0123456789abcdefghijklmnop,imported,true,basic\n\
               Broken,short,bad value,true,basic\n";
    let post = |path: &str, content_type: &str, body: &str| {
        http::send(api.addr, "POST", path, &[auth, ("content-type", content_type)], body.as_bytes())
    };

    // fail_on_warnings: the bad row stops the whole import.
    let r = post("/v1/keys/import?fail_on_warnings=true", "text/csv", csv);
    expect_error(&r, 400, "INVALID_ARGUMENT", Some("csv"), "line 3");
    let r = post("/v1/keys/import", "application/json", csv);
    expect_error(&r, 415, "INVALID_ARGUMENT", Some("csv"), "text/csv");

    let done = expect(&post("/v1/keys/import", "text/csv", csv), 200);
    assert_eq!(done["ids"].as_array().map(Vec::len), Some(1), "{done}");
    assert_eq!(done["warnings"][0]["line"], 3, "{done}");
    let id = done["ids"][0].as_str().unwrap();
    let key = expect(&api.get(&format!("/v1/keys/{id}")), 200);
    assert_eq!((key["name"].as_str(), key["usage_plan_ids"].clone()), (Some("Initech"), json!(["basic"])));
    let d = authorize(
        &api,
        json!({"api_key": "initechkey0123456789abcdefghijklmnop", "stage": "petstore/prod", "method": "/pets/GET"}),
    );
    assert_eq!(expect(&d, 200)["allowed"], true);
}

#[test]
fn usage_over_http() {
    let p = start(&[]);
    let api = Api::new(&p);
    let date = utc_today();
    for _ in 0..3 {
        assert_eq!(expect(&authorize(&api, demo("/pets/GET")), 200)["allowed"], true);
    }
    let today = expect(&authorize(&api, demo("/pets/GET")), 200);
    assert_eq!(today["allowed"], true);
    if utc_today() != date {
        eprintln!("the UTC day changed during the test; its usage is split over two days: not checked");
        return;
    }
    let path = format!("/v1/plans/basic/usage?start_date={date}&end_date={date}");
    let usage = expect(&api.get(&path), 200);
    assert_eq!(usage["items"][DEMO_KEY_ID]["days"], json!([{"used": 4, "remaining": 4}]), "{usage}");
    assert_eq!((usage["start_date"].as_str(), usage["position"].as_str()), (Some(date.as_str()), Some("")));
    expect_error(
        &api.get("/v1/plans/basic/usage?start_date=2026-13-01&end_date=2026-13-01"),
        400,
        "INVALID_ARGUMENT",
        Some("start_date"),
        "2026-13-01",
    );

    let r = api.call("PUT", &format!("/v1/plans/basic/keys/{DEMO_KEY_ID}/usage"), json!({"remaining": 50}));
    let updated = expect(&r, 200);
    assert_eq!((updated["remaining"].as_u64(), updated["key_id"].as_str()), (Some(50), Some(DEMO_KEY_ID)), "{updated}");
    let usage = expect(&api.get(&format!("{path}&key_id={DEMO_KEY_ID}")), 200);
    assert_eq!(usage["items"][DEMO_KEY_ID]["days"][0]["remaining"], 50, "{usage}");
    let r = api.call("PUT", "/v1/plans/basic/keys/nosuchkey/usage", json!({"remaining": 1}));
    expect_error(&r, 404, "NOT_FOUND", None, "nosuchkey");
}

/// Today's date in UTC, `YYYY-MM-DD`.
fn utc_today() -> String {
    tollgate::calendar::Date::of_ms(tollgate::model::now_ms()).to_string()
}

/// The HTTP methods a REST API uses.
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

#[test]
fn openapi_is_valid_and_lists_every_route_served() {
    let p = start(&[]);
    let api = Api::new(&p);
    let r = api.get("/openapi.json");
    let doc = expect(&r, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    validate_openapi(&r.body);

    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 17, "{:?}", paths.keys());
    for (template, ops) in paths {
        let path = template.replace(['{', '}'], "");
        for method in METHODS {
            let r = api.call(method, &path, Value::Null);
            let documented = ops.get(method.to_ascii_lowercase()).is_some();
            let routed = r.status != 405 && !(r.status == 404 && r.text().contains("no route"));
            assert_eq!(routed, documented, "{method} {template} is served iff documented: {} {}", r.status, r.text());
        }
    }
}

/// Validates an OpenAPI document with Python's openapi-spec-validator.
fn validate_openapi(doc: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc).unwrap();
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1])))",
        ])
        .arg(&file)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document (or is missing: `python3 -m pip install openapi-spec-validator`, \
         which scripts/test does):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_http_listener_drains_and_stops_with_the_server() {
    let p = start(&[]);
    // A keep-alive connection left open does not hold the process.
    let mut idle = http::Client::connect(p.http_addr()).unwrap();
    assert_eq!(idle.request("GET", "/healthz", &[]).unwrap().status, 200);
    let (status, log) = p.terminate_with_log();
    assert!(status.success(), "{status:?}: {log}");
    assert!(log.contains("tollgate stopped"), "{log}");
    assert!(!log.contains("did not finish in time"), "the idle connection was closed, not waited for: {log}");
}
