//! `bench-catalog wait-serving`: polls a server's gRPC health until it says
//! SERVING (its store and catalog are ready), so that a script can time a
//! replica's start without sleeping.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// How often health is asked.
const POLL: Duration = Duration::from_millis(10);

/// Arguments of `bench-catalog wait-serving`.
#[derive(Debug, Args)]
pub struct WaitServingArgs {
    /// The server's data-plane address (its --listen).
    #[arg(long, env = "TOLLGATE_SERVER", default_value = crate::cli::DEFAULT_SERVER.as_str())]
    pub server: String,
    /// Give up after this long, e.g. 10m.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Runs `bench-catalog wait-serving`: exit 0 and `{"serving_after_ms": N}`
/// once SERVING; exit 2 after the timeout.
pub async fn run(a: WaitServingArgs) -> ExitCode {
    let start = Instant::now();
    let endpoint = match tonic::transport::Endpoint::from_shared(a.server.clone()) {
        Ok(e) => e.connect_timeout(Duration::from_secs(1)).timeout(Duration::from_secs(5)),
        Err(e) => {
            eprintln!("error: invalid --server {:?}: {e}", a.server);
            return ExitCode::from(2);
        }
    };
    let mut last = String::from("no answer yet");
    let mut client = None;
    while start.elapsed() < a.timeout {
        if client.is_none() {
            match endpoint.connect().await {
                Ok(ch) => client = Some(HealthClient::new(ch)),
                Err(e) => last = format!("cannot connect: {e}"),
            }
        }
        if let Some(c) = &mut client {
            match c.check(HealthCheckRequest { service: String::new() }).await {
                Ok(r) if r.get_ref().status() == ServingStatus::Serving => {
                    let ms = start.elapsed().as_secs_f64() * 1000.0;
                    crate::cli::emit(&format!("{}\n", json!({ "server": a.server, "serving_after_ms": ms })));
                    return ExitCode::SUCCESS;
                }
                Ok(r) => last = format!("health says {}", r.get_ref().status().as_str_name()),
                Err(s) => {
                    last = format!("health answered {}: {}", crate::cli::admin::code_name(s.code()), s.message());
                    client = None;
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    eprintln!("error: {} not SERVING after {:?} ({last})", a.server, a.timeout);
    ExitCode::from(2)
}
