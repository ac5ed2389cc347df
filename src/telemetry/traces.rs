//! Traces: OpenTelemetry spans of every decision, sent over OTLP/gRPC.
//!
//! Off unless an endpoint is given ([`TraceSettings::resolve`]). When off,
//! every span below is disabled by `tracing`'s level check (they are
//! `DEBUG` spans and the log filter stops at `info` by default), so the hot
//! path allocates nothing for them and reads no header.
//!
//! # The spans of one decision
//!
//! ```text
//! tollgate.v1.Authorizer/Authorize      server span: one per data-plane call
//! └─ tollgate.decision                  one per decision (RLS: per descriptor)
//!    └─ tollgate.store                  the atomic check-and-consume
//! ```
//!
//! - The **server span** ([`grpc_span`], installed with tonic's `trace_fn`)
//!   is named after the RPC (`envoy.service.auth.v3.Authorization/Check`,
//!   `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), with
//!   `rpc.system`, `rpc.service`, `rpc.method`. Its parent is the W3C trace
//!   context of the call's metadata (`traceparent`, `tracestate`):
//!   [`parent_context`]. The HTTP API's calls get theirs from [`http_span`]
//!   (or any span and [`set_parent`]), from the request's headers.
//! - The **decision span** ([`decision_span`], made by the limiter, so every
//!   protocol gets the same one) carries the question once it is valid
//!   (`tollgate.stage`, `tollgate.method` in canonical form, `tollgate.cost`,
//!   `tollgate.key_presented`) and the answer (`tollgate.allowed`,
//!   `tollgate.reason`, `tollgate.http_status`, `tollgate.key_id`,
//!   `tollgate.plan_id`, `tollgate.limit`, `tollgate.remaining`,
//!   `tollgate.retry_after_ms`); an error sets the span's status to ERROR
//!   with the message, and `error.type` (`invalid`, `unavailable`,
//!   `internal`). Never the key value: only its id, once it is known.
//! - The **store span** ([`store_span`]): `tollgate.store` (`redis`,
//!   `memory`), `tollgate.limits` (how many limits the check holds),
//!   `db.system.name` with Redis, and `tollgate.batch_size`: how many
//!   decisions shared the script call of this one (recorded by the Redis
//!   batcher, [`record_batch_size`]).
//!
//! Sampling, batching and resource attributes follow the standard
//! `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*` and `OTEL_RESOURCE_ATTRIBUTES`
//! variables (read by the OpenTelemetry SDK).

use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::field::Empty;
use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
use tracing::{Level, Metadata, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::limiter::{AuthorizeError, Decision};
use crate::model::Invalid;

/// Default of `--otlp-service-name` (`OTEL_SERVICE_NAME`).
pub const DEFAULT_SERVICE_NAME: &str = "tollgate";

/// The standard variables that give the collector when `--otlp-endpoint`
/// does not, in the order the OpenTelemetry specification reads them.
pub const ENDPOINT_VARIABLES: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];

/// How long shutdown waits for the last spans to be sent.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The gRPC services whose calls get a server span: the data plane's
/// decisions (not health, reflection or Admin).
const TRACED_SERVICES: [&str; 3] =
    ["tollgate.v1.Authorizer", "envoy.service.auth.v3.Authorization", "envoy.service.ratelimit.v3.RateLimitService"];

/// Where traces go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSettings {
    /// The collector's OTLP/gRPC address, `http://HOST:PORT`.
    pub endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

impl TraceSettings {
    /// The trace settings, if traces are on: `flag` (`--otlp-endpoint` or
    /// `TOLLGATE_OTLP_ENDPOINT`), else the first of [`ENDPOINT_VARIABLES`]
    /// that `env` has. The endpoint must be `http://HOST[:PORT]`: tollgate
    /// sends plaintext gRPC, to a collector next to it.
    pub fn resolve(
        flag: Option<&str>,
        service_name: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, Invalid> {
        let given = flag.map(|f| (f.to_string(), "otlp_endpoint")).or_else(|| {
            ENDPOINT_VARIABLES.iter().find_map(|v| env(v).filter(|e| !e.trim().is_empty()).map(|e| (e, *v)))
        });
        let Some((endpoint, source)) = given else { return Ok(None) };
        let endpoint = endpoint.trim().trim_end_matches('/').to_string();
        check_endpoint(&endpoint).map_err(|why| Invalid::new(source, format!("{endpoint:?} {why}")))?;
        let service_name = service_name.trim();
        if service_name.is_empty() {
            return Err(Invalid::new("otlp_service_name", "is empty; leave it unset for \"tollgate\""));
        }
        Ok(Some(Self { endpoint, service_name: service_name.to_string() }))
    }
}

/// Why `endpoint` is not an OTLP/gRPC address tollgate can send to.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    const EXAMPLE: &str = "write it like http://127.0.0.1:4317 (the collector's OTLP/gRPC port)";
    let uri: http::Uri = endpoint.parse().map_err(|e| format!("is not a URL ({e}); {EXAMPLE}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "uses TLS, which tollgate does not speak to a collector: run a collector beside it (sidecar or \
                 node agent) on http:// and let it forward over TLS; {EXAMPLE}"
            ))
        }
        _ => return Err(format!("has no http:// scheme; {EXAMPLE}")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("has no host; {EXAMPLE}"));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("has a path ({}); OTLP/gRPC takes none; {EXAMPLE}", uri.path()));
    }
    Ok(())
}

/// The OTLP pipeline: exporter, batching, provider. Must run inside a
/// tokio runtime (the gRPC channel's worker runs there).
pub(super) fn provider(settings: &TraceSettings) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.endpoint.clone())
        .build()
        .map_err(|e| format!("otlp_endpoint: cannot send traces to {}: {e}", settings.endpoint))?;
    let resource = Resource::builder().with_service_name(settings.service_name.clone()).build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// The layer that turns tollgate's spans into OpenTelemetry spans: spans of
/// tollgate at `DEBUG` and above (other crates' spans never), and tollgate's
/// warnings and errors inside them as span events.
pub(super) fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let traced = |m: &Metadata<'_>| {
        let limit = if m.is_span() { Level::DEBUG } else { Level::WARN };
        m.target().starts_with("tollgate") && *m.level() <= limit
    };
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("tollgate"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_tracked_inactivity(false)
        .with_filter(FilterFn::new(traced).with_max_level_hint(LevelFilter::DEBUG))
}

/// Whether spans are being recorded at all (traces on, or `RUST_LOG` at
/// `debug`): two comparisons, so the hot path can skip tracing work.
pub(crate) fn spans_enabled() -> bool {
    Level::DEBUG <= STATIC_MAX_LEVEL && Level::DEBUG <= LevelFilter::current()
}

/// The current span when spans are recorded, else a disabled one (free).
pub(crate) fn current_span() -> Span {
    if spans_enabled() {
        Span::current()
    } else {
        Span::none()
    }
}

/// Reads W3C Trace Context headers from an [`http::HeaderMap`].
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The trace context an incoming request carries in its W3C Trace Context
/// headers (`traceparent`, `tracestate`): the parent of the spans it starts.
/// An empty context (a new trace) when they are missing or malformed. gRPC
/// metadata is an `http::HeaderMap` too (`tonic::metadata::MetadataMap::into_headers`).
pub fn parent_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// Makes `span` a child of the trace context in `headers`
/// ([`parent_context`]). Does nothing, and reads no header, when the span is
/// disabled (traces off). Call it before the span is first entered.
pub fn set_parent(span: &Span, headers: &http::HeaderMap) {
    if !span.is_disabled() {
        let _ = span.set_parent(parent_context(headers));
    }
}

/// The server span of a gRPC call of the data plane (tonic's `trace_fn`):
/// named after the RPC, child of the trace context in its metadata. A
/// disabled span for other services (health, reflection, Admin) and when
/// traces are off.
pub fn grpc_span(request: &http::Request<()>) -> Span {
    if !spans_enabled() {
        return Span::none();
    }
    let rpc = request.uri().path().trim_start_matches('/');
    let Some((service, method)) = rpc.split_once('/').filter(|(s, _)| TRACED_SERVICES.contains(s)) else {
        return Span::none();
    };
    let span = tracing::debug_span!(
        "grpc",
        otel.name = rpc,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
    );
    set_parent(&span, request.headers());
    span
}

/// The server span of an HTTP API call, for the HTTP listener's middleware:
/// named `METHOD ROUTE` (`POST /v1/authorize`), with `http.request.method`
/// and `http.route`, child of the trace context in `headers`; run the
/// handler inside it (`handler.instrument(span)`), and the decision span
/// nests under it. `route` is the matched route template (axum's
/// `MatchedPath`, `/v1/keys/{id}`), never the raw path, which may hold ids.
/// Disabled, and free, when traces are off.
pub fn http_span(method: &http::Method, route: &str, headers: &http::HeaderMap) -> Span {
    if !spans_enabled() {
        return Span::none();
    }
    let span = tracing::debug_span!(
        "http",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = method.as_str(),
        http.route = route,
    );
    set_parent(&span, headers);
    span
}

/// The span of one decision (see the module docs); the limiter records the
/// question ([`record_question`]) and the answer ([`record_answer`]).
pub(crate) fn decision_span() -> Span {
    tracing::debug_span!(
        "tollgate.decision",
        tollgate.stage = Empty,
        tollgate.method = Empty,
        tollgate.cost = Empty,
        tollgate.key_presented = Empty,
        tollgate.allowed = Empty,
        tollgate.reason = Empty,
        tollgate.http_status = Empty,
        tollgate.key_id = Empty,
        tollgate.plan_id = Empty,
        tollgate.limit = Empty,
        tollgate.remaining = Empty,
        tollgate.retry_after_ms = Empty,
        tollgate.deny_cache = Empty,
        error.type = Empty,
        otel.status_description = Empty,
    )
}

/// Records a valid question on its decision span. Never the key value:
/// only whether one was presented.
pub(crate) fn record_question(span: &Span, stage: &str, method: &str, cost: u64, key_presented: bool) {
    if span.is_disabled() {
        return;
    }
    span.record("tollgate.stage", stage);
    span.record("tollgate.method", method);
    span.record("tollgate.cost", int(cost));
    span.record("tollgate.key_presented", key_presented);
}

/// Records on a decision span that the local deny cache answered it (no
/// store call, so no store span).
pub(crate) fn record_deny_cache_hit(span: &Span) {
    if !span.is_disabled() {
        span.record("tollgate.deny_cache", true);
    }
}

/// Records the answer, or why there is none, on its decision span.
pub(crate) fn record_answer(span: &Span, result: &Result<Decision, AuthorizeError>) {
    if span.is_disabled() {
        return;
    }
    match result {
        Ok(d) => {
            span.record("tollgate.allowed", d.allowed);
            span.record("tollgate.reason", d.reason.as_str());
            span.record("tollgate.http_status", i64::from(d.reason.http_status()));
            span.record("tollgate.key_id", d.key_id.as_deref());
            span.record("tollgate.plan_id", d.plan_id.as_deref());
            if let Some(rate) = &d.rate {
                span.record("tollgate.limit", crate::api::envoy_http::policy_name(rate.kind));
                span.record("tollgate.remaining", int(rate.remaining));
            }
            span.record("tollgate.retry_after_ms", d.retry_after_ms.map(int));
        }
        Err(e) => {
            span.record("error.type", e.kind());
            record_error(span, e);
        }
    }
}

/// The span of a decision's store call (see the module docs).
pub(crate) fn store_span(store: &'static str, limits: usize) -> Span {
    let (kind, db) = if store == "redis" { ("client", Some("redis")) } else { ("internal", None) };
    tracing::debug_span!(
        "tollgate.store",
        otel.kind = kind,
        tollgate.store = store,
        tollgate.limits = int(limits as u64),
        db.system.name = db,
        tollgate.batch_size = Empty,
        otel.status_description = Empty,
    )
}

/// Records on a store span (the span of the decision's `check`, taken with
/// [`current_span`]) how many decisions share its script call.
pub(crate) fn record_batch_size(span: &Span, n: usize) {
    span.record("tollgate.batch_size", int(n as u64));
}

/// A number as a span attribute: OpenTelemetry integers are `i64`
/// (`tracing-opentelemetry` turns a `u64` into a string).
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Sets a span's status to ERROR with `error`'s message.
pub(crate) fn record_error(span: &Span, error: &dyn std::fmt::Display) {
    if span.is_disabled() {
        return;
    }
    // An error status with this description (recording `otel.status_code`
    // first would set an error status without one, which sticks).
    span.record("otel.status_description", tracing::field::display(error));
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;

    use super::*;

    fn resolve(flag: Option<&str>, env: &[(&str, &str)]) -> Result<Option<TraceSettings>, Invalid> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        TraceSettings::resolve(flag, "tollgate", |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    fn endpoint(flag: Option<&str>, env: &[(&str, &str)]) -> Option<String> {
        resolve(flag, env).expect("valid").map(|t| t.endpoint)
    }

    #[test]
    fn the_flag_wins_then_the_standard_variables_in_order() {
        let traces = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317");
        let generic = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317");
        assert_eq!(endpoint(None, &[]), None, "off unless given");
        assert_eq!(endpoint(None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]), None);
        assert_eq!(endpoint(None, &[generic]).as_deref(), Some("http://generic:4317"));
        assert_eq!(endpoint(None, &[generic, traces]).as_deref(), Some("http://traces:4317"));
        assert_eq!(endpoint(Some("http://flag:4317/"), &[generic, traces]).as_deref(), Some("http://flag:4317"));
    }

    #[test]
    fn endpoints_tollgate_cannot_use_are_refused_with_the_source_named() {
        for (flag, env, field, why) in [
            (Some("127.0.0.1:4317"), vec![], "otlp_endpoint", "http://"),
            (Some("https://collector:4317"), vec![], "otlp_endpoint", "TLS"),
            (Some("http://collector:4317/v1/traces"), vec![], "otlp_endpoint", "path"),
            (Some("http:// bad"), vec![], "otlp_endpoint", "not a URL"),
            (None, vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "grpc://x:4317")], "OTEL_EXPORTER_OTLP_ENDPOINT", "http://"),
        ] {
            let e = resolve(flag, &env).expect_err(&format!("{flag:?} {env:?}"));
            assert_eq!(e.field, field);
            assert!(e.to_string().contains(why) && e.to_string().contains("http://127.0.0.1:4317"), "{e}");
        }
        let e = TraceSettings::resolve(Some("http://c:4317"), " ", |_| None).unwrap_err();
        assert_eq!(e.field, "otlp_service_name");
    }

    #[test]
    fn parent_context_reads_w3c_trace_context() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().unwrap());
        headers.insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
        let cx = parent_context(&headers);
        let span = cx.span();
        let parent = span.span_context();
        assert!(parent.is_valid() && parent.is_remote() && parent.is_sampled());
        assert_eq!(parent.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(parent.span_id().to_string(), "b7ad6b7169203331");
        assert_eq!(parent.trace_state().header(), "congo=t61rcWkgMzE");

        headers.insert("traceparent", "00-not-a-trace-01".parse().unwrap());
        assert!(!parent_context(&headers).span().span_context().is_valid(), "malformed: a new trace");
        assert!(!parent_context(&http::HeaderMap::new()).span().span_context().is_valid(), "none: a new trace");
    }

    /// Keeps what it is given: the spans a test's subscriber finished.
    #[derive(Debug, Clone, Default)]
    struct Kept(std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

    impl opentelemetry_sdk::trace::SpanExporter for Kept {
        async fn export(
            &self,
            batch: Vec<opentelemetry_sdk::trace::SpanData>,
        ) -> opentelemetry_sdk::error::OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    #[test]
    fn server_spans_are_children_of_the_callers_trace_and_only_decision_calls_get_one() {
        use tracing_subscriber::layer::SubscriberExt;
        let kept = Kept::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(kept.clone()).build();
        let subscriber = tracing_subscriber::registry().with(layer(&provider));
        let call = |path: &str| {
            http::Request::builder()
                .uri(path)
                .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
                .body(())
                .unwrap()
        };
        tracing::subscriber::with_default(subscriber, || {
            for path in ["/grpc.health.v1.Health/Check", "/tollgate.v1.Admin/ListKeys", "/x.Y/Z"] {
                assert!(grpc_span(&call(path)).is_disabled(), "{path}");
            }
            grpc_span(&call("/envoy.service.auth.v3.Authorization/Check")).in_scope(|| drop(decision_span()));
            let http = call("/v1/authorize");
            drop(http_span(&http::Method::POST, "/v1/authorize", http.headers()));
        });
        let spans = kept.0.lock().unwrap().clone();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["tollgate.decision", "envoy.service.auth.v3.Authorization/Check", "POST /v1/authorize"]);
        let (decision, server, http) = (&spans[0], &spans[1], &spans[2]);
        assert_eq!(http.span_kind, opentelemetry::trace::SpanKind::Server);
        assert_eq!(http.parent_span_id.to_string(), "b7ad6b7169203331", "in the caller's trace too");
        assert_eq!(server.span_context.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(server.parent_span_id.to_string(), "b7ad6b7169203331");
        assert_eq!(server.span_kind, opentelemetry::trace::SpanKind::Server);
        let attr = |k: &str| server.attributes.iter().find(|a| a.key.as_str() == k).map(|a| a.value.to_string());
        assert_eq!(attr("rpc.system").as_deref(), Some("grpc"));
        assert_eq!(attr("rpc.service").as_deref(), Some("envoy.service.auth.v3.Authorization"));
        assert_eq!(attr("rpc.method").as_deref(), Some("Check"));
        assert_eq!(decision.parent_span_id, server.span_context.span_id());
        assert_eq!(decision.span_context.trace_id(), server.span_context.trace_id());
    }
}
