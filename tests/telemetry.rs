//! Traces and logs of a real `tollgate serve` process: its decision spans
//! reach an OTLP collector started by the test, in the caller's trace; and
//! `--log-format json` writes one JSON object per line
//! (docs/operations.md, "Traces and logs").

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use support::redis::RedisServer;
use support::{quickstart, req, TollgateProcess, DEMO_KEY};

/// An OTLP/gRPC trace collector in the test process: keeps every export.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// Starts it on a free loopback port.
    async fn start() -> (Self, SocketAddr) {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
        (collector, addr)
    }

    /// Every span received, with its resource's `service.name`.
    fn spans(&self) -> Vec<(String, Span)> {
        let mut out = Vec::new();
        for export in self.0.lock().unwrap().iter() {
            for rs in &export.resource_spans {
                let service = rs.resource.as_ref().and_then(|r| string_attr(&r.attributes, "service.name"));
                for ss in &rs.scope_spans {
                    out.extend(ss.spans.iter().map(|s| (service.clone().unwrap_or_default(), s.clone())));
                }
            }
        }
        out
    }
}

type Attrs = [opentelemetry_proto::tonic::common::v1::KeyValue];

fn attr<'a>(attrs: &'a Attrs, key: &str) -> Option<&'a Value> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn string_attr(attrs: &Attrs, key: &str) -> Option<String> {
    match attr(attrs, key) {
        Some(Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn int_attr(attrs: &Attrs, key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

fn bool_attr(attrs: &Attrs, key: &str) -> Option<bool> {
    match attr(attrs, key) {
        Some(Value::BoolValue(b)) => Some(*b),
        _ => None,
    }
}

/// The caller's trace: trace id and the id of its span that calls tollgate.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn traced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01").parse().unwrap());
    request
}

/// The one span named `name` in the caller's trace, whose parent is `parent`.
fn child<'a>(spans: &'a [&'a Span], name: &str, parent: &[u8]) -> &'a Span {
    let found: Vec<&&Span> = spans.iter().filter(|s| s.name == name && s.parent_span_id == parent).collect();
    assert_eq!(found.len(), 1, "one {name:?} under {}; spans: {spans:#?}", hex::encode(parent));
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_is_traced_to_the_collector_in_the_callers_trace_and_flushed_at_shutdown() {
    let (collector, collector_addr) = Collector::start().await;
    let redis = RedisServer::start();
    let endpoint = format!("http://{collector_addr}");
    let config = quickstart();
    let server = TollgateProcess::start_with_env(
        // One runtime thread: the flush at exit must not wait on the thread
        // it blocks.
        &[
            "--config",
            config.to_str().unwrap(),
            "--redis-url",
            &redis.url(),
            "--otlp-endpoint",
            &endpoint,
            "--worker-threads",
            "1",
            "--http-listen",
            "127.0.0.1:0",
        ],
        &[("OTEL_SERVICE_NAME", "tollgate-under-test")],
    );
    server.wait_serving().await;
    let mut client = server.authorizer().await;
    let allowed = client
        .authorize(traced(req(Some(DEMO_KEY), "petstore/prod", "/pets/GET", None)))
        .await
        .expect("authorize")
        .into_inner();
    assert!(allowed.allowed, "{allowed:?}");
    let invalid = client.authorize(traced(req(Some(DEMO_KEY), "petstore/prod", "pets", None))).await.unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    drop(client);
    // The same question over the HTTP/JSON API, in the same trace.
    let http_addr = server.http_addr();
    let body = serde_json::json!({"api_key": DEMO_KEY, "stage": "petstore/prod", "method": "/pets/GET"}).to_string();
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    let r = tokio::task::spawn_blocking(move || {
        let headers = [("content-type", "application/json"), ("traceparent", traceparent.as_str())];
        support::http::send(http_addr, "POST", "/v1/authorize", &headers, body.as_bytes())
    })
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Spans are sent in batches every 5 s; stopping sends what is left.
    let (status, log) = server.terminate_with_log();
    assert!(status.success(), "log:\n{log}");

    let all = collector.spans();
    assert!(!all.is_empty(), "the collector got no span; log:\n{log}");
    assert!(all.iter().all(|(service, _)| service == "tollgate-under-test"), "service.name: {all:?}");
    let received = format!("{:?}", collector.0.lock().unwrap());
    assert!(!received.contains(DEMO_KEY), "a key value reached the collector");
    let ours: Vec<&Span> = all.iter().map(|(_, s)| s).filter(|s| hex::encode(&s.trace_id) == TRACE_ID).collect();

    // Two calls: each a server span under the caller's span, with its
    // decision under it.
    let servers: Vec<&&Span> = ours.iter().filter(|s| s.name == "tollgate.v1.Authorizer/Authorize").collect();
    assert_eq!(servers.len(), 2, "spans in the trace: {ours:#?}");
    let mut decisions = Vec::new();
    for server in servers {
        assert_eq!(hex::encode(&server.parent_span_id), PARENT_ID);
        assert_eq!(server.kind, SpanKind::Server as i32);
        assert_eq!(string_attr(&server.attributes, "rpc.system").as_deref(), Some("grpc"));
        decisions.push(child(&ours, "tollgate.decision", &server.span_id));
    }
    // The HTTP call: its server span, named by the route, with its decision.
    let http: Vec<&&Span> = ours.iter().filter(|s| s.name == "POST /v1/authorize").collect();
    assert_eq!(http.len(), 1, "spans in the trace: {ours:#?}");
    assert_eq!(hex::encode(&http[0].parent_span_id), PARENT_ID);
    assert_eq!(http[0].kind, SpanKind::Server as i32);
    assert_eq!(string_attr(&http[0].attributes, "http.route").as_deref(), Some("/v1/authorize"));
    let over_http = child(&ours, "tollgate.decision", &http[0].span_id);
    assert_eq!(bool_attr(&over_http.attributes, "tollgate.allowed"), Some(true));

    let (ok, bad): (Vec<&Span>, Vec<&Span>) =
        decisions.into_iter().partition(|d| bool_attr(&d.attributes, "tollgate.allowed").is_some());

    // The allowed decision: the question, the answer, and its Redis call.
    let d = &ok[0].attributes;
    assert_eq!(string_attr(d, "tollgate.stage").as_deref(), Some("petstore/prod"));
    assert_eq!(string_attr(d, "tollgate.method").as_deref(), Some("/pets/GET"));
    assert_eq!(int_attr(d, "tollgate.cost"), Some(1), "{d:#?}");
    assert_eq!(bool_attr(d, "tollgate.key_presented"), Some(true));
    assert_eq!(bool_attr(d, "tollgate.allowed"), Some(true));
    assert_eq!(string_attr(d, "tollgate.reason").as_deref(), Some("OK"));
    assert_eq!(int_attr(d, "tollgate.http_status"), Some(200));
    assert_eq!(string_attr(d, "tollgate.key_id"), Some(allowed.key_id.clone()));
    assert_eq!(string_attr(d, "tollgate.plan_id"), Some(allowed.plan_id.clone()));
    assert_eq!(int_attr(d, "tollgate.remaining"), allowed.rate_limit.map(|r| r.remaining as i64));
    let store = child(&ours, "tollgate.store", &ok[0].span_id);
    assert_eq!(store.kind, SpanKind::Client as i32);
    assert_eq!(string_attr(&store.attributes, "tollgate.store").as_deref(), Some("redis"));
    assert_eq!(string_attr(&store.attributes, "db.system.name").as_deref(), Some("redis"));
    assert!(int_attr(&store.attributes, "tollgate.batch_size").is_some_and(|n| n >= 1), "{store:#?}");
    assert!(int_attr(&store.attributes, "tollgate.limits").is_some_and(|n| n >= 1), "{store:#?}");

    // The invalid one: an error, with the message, and no store call.
    let status = bad[0].status.as_ref().expect("a status");
    assert_eq!(status.code, StatusCode::Error as i32);
    assert!(status.message.starts_with("method"), "{status:?}");
    assert_eq!(string_attr(&bad[0].attributes, "error.type").as_deref(), Some("invalid"));
    assert!(ours.iter().all(|s| s.parent_span_id != bad[0].span_id), "no store call for a bad request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_documented_fields() {
    let server = TollgateProcess::start(&["--config", quickstart().to_str().unwrap(), "--log-format", "json"]);
    server.wait_serving().await;
    let mut client = server.authorizer().await;
    client.authorize(req(Some(DEMO_KEY), "petstore/prod", "/pets/GET", None)).await.expect("authorize");
    drop(client);
    let addr = server.addr.to_string();
    let (status, log) = server.terminate_with_log();
    assert!(status.success(), "log:\n{log}");

    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object ({e}): {l:?}")))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        let o = line.as_object().unwrap_or_else(|| panic!("not an object: {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(o.get(field).is_some_and(|v| v.is_string()), "no {field:?} in {line}");
        }
        assert!(["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&o["level"].as_str().unwrap()), "{line}");
        let ts = o["timestamp"].as_str().unwrap();
        assert!(ts.len() >= 20 && ts.as_bytes()[10] == b'T' && ts.ends_with('Z'), "RFC 3339 UTC: {ts}");
    }
    assert!(lines.iter().any(|l| l["message"] == "tollgate stopped"), "JSON up to the exit: {log}");
    let listening = lines.iter().find(|l| l["message"] == "tollgate listening").expect("the listening line");
    assert_eq!(listening["addr"], addr, "the event's fields sit beside the message");
    assert_eq!(listening["target"], "tollgate::server");
    assert!(!log.contains(DEMO_KEY));
}

#[test]
fn an_endpoint_tollgate_cannot_send_to_stops_the_start_with_the_error_in_the_log_format() {
    let start = |format: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "off", "--log-format", format])
            .args(["--otlp-endpoint", "https://collector.example:4317"])
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let text = start("text");
    assert!(text.starts_with("error: otlp_endpoint: ") && text.contains("TLS"), "{text}");
    let json = start("json");
    let line: serde_json::Value = serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(line["level"], "ERROR");
    assert!(line["message"].as_str().is_some_and(|m| m.starts_with("otlp_endpoint: ")), "{line}");
    assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
}
