//! Logs, traces and metrics.
//!
//! Logs: `tracing` to stderr, filtered by `RUST_LOG` (default `info`).
//! `tollgate serve` writes them as text (coloured only on a terminal) or,
//! with `--log-format json`, one JSON object per line ([`LogFormat`]); the
//! client commands always write text. Key values never reach a log line:
//! requests are logged by key id only.
//!
//! Traces (with `--otlp-endpoint`): OpenTelemetry spans of every decision,
//! over OTLP/gRPC ([`traces`]). [`init`] installs logs and traces together;
//! [`Telemetry::shutdown`] sends the spans still buffered when the server
//! stops.
//!
//! Metrics (with `--metrics-listen ADDR`): Prometheus text format at
//! `http://ADDR/metrics` (`https://` with `--tls-cert`), served by
//! [`metrics_router`] on the recorder [`prometheus`] installs:
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `tollgate_decisions_total` | counter | `reason` (`OK`, `THROTTLED`, ...) | answered decisions (native, ext_authz, RLS) |
//! | `tollgate_decision_errors_total` | counter | `kind` (`invalid`, `unavailable`, `internal`) | decisions that could not be answered |
//! | `tollgate_store_seconds` | histogram | `store` (`memory`, `redis`) | time of the store's check-and-consume |
//! | `tollgate_deny_cache_hits_total` | counter | `reason` (`THROTTLED`, `QUOTA_EXCEEDED`) | denials answered by the local deny cache, without the store (`limiter::deny`) |
//! | `tollgate_shadow_denials_total` | counter | `reason` | requests a shadow plan allowed that it would have denied (`limiter`) |
//! | `tollgate_lease_admissions_total` | counter | | requests admitted from a lease, without the store (`limiter::lease`) |
//! | `tollgate_leases_total` / `tollgate_leased_tokens_total` | counter | | leases granted to this replica, and their tokens |
//! | `tollgate_lease_settles_total` | counter | `outcome` (`ok`, `lapsed`, `failed`) | leases handed back; `lapsed`: the settle came after the lease's slot ended (charged in full) |
//! | `tollgate_store_ready` | gauge | | 1 while the store and catalog can answer |
//! | `tollgate_catalog_version` | gauge | | the catalog version this replica serves |
//! | `tollgate_catalog_file_conflicts_total` | counter | | catalog file records not applied (`catalog::bootstrap`) |
//! | `tollgate_tls_reloads_total` | counter | | certificate changes on disk swapped in (`tls`) |
//! | `tollgate_tls_reload_errors_total` | counter | | certificate changes on disk that did not load; the previous certificate stays (`tls`) |
//! | `tollgate_tls_cert_not_after_seconds` | gauge | | when the certificate served expires, Unix seconds (`tls`) |
//! | `tollgate_tls_handshake_failures_total` | counter | | TLS handshakes that failed or timed out, on any listener (`tls`) |
//! | `tollgate_admin_auth_failures_total` | counter | `reason` (`missing`, `malformed`, `invalid`, `forbidden`, `unconfigured`) | Admin calls refused for their credentials (`api::access`) |
//! | `tollgate_admin_auth_throttled_total` | counter | | Admin calls made to wait after repeated failures of their peer |
//! | `tollgate_admin_tokens_reload_errors_total` | counter | | changes of the tokens file refused |

pub mod traces;

use std::io::IsTerminal;
use std::sync::Mutex;

use metrics_exporter_prometheus::PrometheusHandle;

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

pub use traces::{parent_context, set_parent, TraceSettings};

/// How log lines are written to stderr (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines: time, level, target, message, fields.
    #[default]
    Text,
    /// One JSON object per line: `timestamp` (RFC 3339, UTC), `level`,
    /// `target`, `message`, and the event's fields beside them
    /// (docs/operations.md, "Traces and logs").
    Json,
}

/// What [`init`] installed; [`Telemetry::shutdown`] it when the server stops.
#[must_use = "call shutdown() when the server stops, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the log subscriber (and the OTLP trace pipeline when `traces`
/// says where to send them). Call it once, inside the tokio runtime; a
/// second call installs nothing and says so.
pub fn init(format: LogFormat, traces: Option<&TraceSettings>) -> Result<Telemetry, String> {
    let provider = traces.map(traces::provider).transpose()?;
    let otel = provider.as_ref().map(traces::layer);
    tracing_subscriber::registry()
        .with(log_layer(format))
        .with(otel)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    if let Some(t) = traces {
        tracing::info!(otlp_endpoint = %t.endpoint, service_name = %t.service_name, "sending traces over OTLP/gRPC");
    }
    Ok(Telemetry { provider })
}

/// Installs text logs for the client commands; later calls do nothing.
pub fn init_logs() {
    let _ = tracing_subscriber::registry().with(log_layer(LogFormat::Text)).try_init();
}

/// The stderr layer in `format`, filtered by `RUST_LOG` (default `info`).
fn log_layer(format: LogFormat) -> Box<dyn Layer<Registry> + Send + Sync> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => layer.with_ansi(std::io::stderr().is_terminal()).with_filter(filter).boxed(),
        LogFormat::Json => layer.json().flatten_event(true).with_filter(filter).boxed(),
    }
}

/// Writes the error that stops the process to stderr, in `format`, past
/// any filter: `error: MESSAGE` as text; as JSON, a line with the fields of
/// every other (`level` `ERROR`, `target` `tollgate`).
pub fn print_error(format: LogFormat, message: &str) {
    match format {
        LogFormat::Text => eprintln!("error: {message}"),
        LogFormat::Json => {
            let timestamp = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
            let line =
                serde_json::json!({"timestamp": timestamp, "level": "ERROR", "message": message, "target": "tollgate"});
            eprintln!("{line}");
        }
    }
}

impl Telemetry {
    /// Sends the spans still buffered and stops the exporter, waiting at most
    /// [`traces::FLUSH_TIMEOUT`]. Call it when the server has stopped.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else { return };
        // The flush blocks its thread until the export is done, and the
        // export needs this runtime's threads (its gRPC channel runs here).
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(traces::FLUSH_TIMEOUT)).await;
        match flushed {
            Ok(Ok(())) => tracing::info!("trace exporter stopped"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the trace exporter did not stop cleanly; the last spans may be lost")
            }
            Err(e) => tracing::warn!(error = %e, "the trace exporter did not stop cleanly; the last spans may be lost"),
        }
    }
}

/// Latency buckets from 50 µs to 1 s: a decision is sub-millisecond when
/// all is well, and the store deadline is 250 ms by default.
const BUCKETS: &[f64] = &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// How often the Prometheus recorder's upkeep runs (it drains histogram
/// samples into their buckets, so memory stays bounded between scrapes).
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// The Prometheus recorder, installed as the process's metrics recorder on
/// first use (later calls, e.g. a second server in one test process, get
/// the same handle), with a thread that runs its upkeep.
pub fn prometheus() -> Result<PrometheusHandle, String> {
    static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut installed = HANDLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = installed.as_ref() {
        return Ok(h.clone());
    }
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("cannot install the Prometheus recorder: {e}"))?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(METRICS_UPKEEP);
            upkeep.run_upkeep();
        })
        .map_err(|e| format!("cannot start the metrics upkeep thread: {e}"))?;
    *installed = Some(handle.clone());
    Ok(handle)
}

/// The metrics listener's routes: Prometheus text at `GET /metrics`. It is
/// served like the HTTP/JSON API ([`crate::api::http::serve`]), so TLS
/// applies to it too.
pub fn metrics_router(handle: PrometheusHandle) -> axum::Router {
    use axum::http::header::CONTENT_TYPE;
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()) }
        }),
    )
}
