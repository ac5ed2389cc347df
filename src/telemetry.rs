//! Logs and metrics.
//!
//! Logs: `tracing` to stderr, filtered by `RUST_LOG` (default `info`),
//! coloured only on a terminal. Key values never reach a log line: requests
//! are logged by key id only.
//!
//! Metrics (with `--metrics-listen ADDR`): Prometheus text format at
//! `http://ADDR/metrics`:
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `tollgate_decisions_total` | counter | `reason` (`OK`, `THROTTLED`, ...) | answered decisions (native, ext_authz, RLS) |
//! | `tollgate_decision_errors_total` | counter | `kind` (`invalid`, `unavailable`, `internal`) | decisions that could not be answered |
//! | `tollgate_store_seconds` | histogram | `store` (`memory`, `redis`) | time of the store's check-and-consume |
//! | `tollgate_store_ready` | gauge | | 1 while the store and catalog can answer |
//! | `tollgate_catalog_version` | gauge | | the catalog version this replica serves |
//! | `tollgate_catalog_file_conflicts_total` | counter | | catalog file records not applied (`catalog::bootstrap`) |

use std::io::IsTerminal;
use std::net::SocketAddr;

/// Installs the log subscriber once; later calls do nothing.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Serves Prometheus metrics on `addr` (must run inside a tokio runtime).
pub fn serve_metrics(addr: SocketAddr) -> Result<(), String> {
    // Latency buckets from 50 µs to 1 s: a decision is sub-millisecond when
    // all is well, and the store deadline is 250 ms by default.
    const BUCKETS: &[f64] =
        &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
    let std_listener =
        std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on --metrics-listen {addr}: {e}"))?;
    let bound = std_listener.local_addr().map_err(|e| e.to_string())?;
    drop(std_listener);
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(bound)
        .set_buckets(BUCKETS)
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| format!("cannot serve metrics on {bound}: {e}"))?;
    tracing::info!(metrics_addr = %bound, "Prometheus metrics at /metrics");
    Ok(())
}
