//! `tollgate bench`: the project's load generator. It drives a running
//! server with Authorize calls at a fixed concurrency and, in the same run,
//! with `grpc.health.v1.Health/Check` calls, so that the throughput of a
//! decision is reported as a ratio to the cheapest call the same server can
//! answer (a shared, noisy machine makes absolute numbers meaningless; ratios
//! measured in one run are comparable).
//!
//! Phases alternate (health, authorize, health, authorize, ...) for
//! `--rounds` pairs of `--duration` each; the report gives each phase's
//! calls/s and latency percentiles, and the mean ratio over the pairs.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::api::pb;

/// Arguments of `tollgate bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The server's data-plane address (its --listen).
    #[arg(long, env = "TOLLGATE_SERVER", default_value = super::DEFAULT_SERVER.as_str())]
    pub server: String,
    /// The API key value to send (omit for no key).
    #[arg(long)]
    pub key: Option<String>,
    /// Stage, API/STAGE.
    #[arg(long, default_value = "petstore/prod")]
    pub stage: String,
    /// Method, e.g. /pets/GET.
    #[arg(long, default_value = "/pets/GET")]
    pub method: String,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Length of each phase, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Pairs of (health, authorize) phases.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What one phase measured.
#[derive(Debug, Clone)]
struct Phase {
    calls: u64,
    errors: u64,
    allowed: u64,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.secs
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    Health,
    Authorize,
}

async fn phase(channels: &[Channel], args: &Arc<BenchArgs>, rpc: Rpc) -> Phase {
    let deadline = Instant::now() + args.duration;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.concurrency);
    for i in 0..args.concurrency.max(1) {
        let ch = channels[i % channels.len()].clone();
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let (mut errors, mut allowed) = (0u64, 0u64);
            let mut auth = pb::authorizer_client::AuthorizerClient::new(ch.clone());
            let mut health = HealthClient::new(ch);
            let req = pb::AuthorizeRequest {
                api_key: args.key.clone(),
                stage: args.stage.clone(),
                method: args.method.clone(),
                cost: None,
            };
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = match rpc {
                    Rpc::Health => health.check(HealthCheckRequest { service: String::new() }).await.is_ok(),
                    Rpc::Authorize => match auth.authorize(req.clone()).await {
                        Ok(r) => {
                            allowed += r.get_ref().allowed as u64;
                            true
                        }
                        Err(_) => false,
                    },
                };
                lat.push(t.elapsed().as_micros() as u64);
                errors += (!ok) as u64;
            }
            (lat, errors, allowed)
        }));
    }
    let mut lat = Vec::new();
    let (mut errors, mut allowed) = (0, 0);
    for t in tasks {
        if let Ok((l, e, a)) = t.await {
            lat.extend(l);
            errors += e;
            allowed += a;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct =
        |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    Phase { calls: lat.len() as u64, errors, allowed, secs, p50_us: pct(0.50), p99_us: pct(0.99) }
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> ExitCode {
    let args = Arc::new(args);
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        match super::connect(&args.server).await {
            Ok(c) => channels.push(c),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    // Warm up connections and the server.
    let _ = phase(
        &channels,
        &Arc::new(BenchArgs { duration: Duration::from_millis(300), ..(*args).clone() }),
        Rpc::Authorize,
    )
    .await;
    let mut pairs = Vec::new();
    for _ in 0..args.rounds.max(1) {
        let h = phase(&channels, &args, Rpc::Health).await;
        let a = phase(&channels, &args, Rpc::Authorize).await;
        pairs.push((h, a));
    }
    let ratios: Vec<f64> = pairs.iter().map(|(h, a)| a.rate() / h.rate()).collect();
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let best = ratios.iter().cloned().fold(f64::MIN, f64::max);
    if args.json {
        let rounds: Vec<_> = pairs
            .iter()
            .map(|(h, a)| {
                json!({
                    "health": {"calls_per_sec": h.rate(), "p50_us": h.p50_us, "p99_us": h.p99_us, "errors": h.errors},
                    "authorize": {"calls_per_sec": a.rate(), "p50_us": a.p50_us, "p99_us": a.p99_us, "errors": a.errors, "allowed": a.allowed},
                    "ratio": a.rate() / h.rate(),
                })
            })
            .collect();
        super::emit(&format!("{}\n", json!({"rounds": rounds, "mean_ratio": mean, "best_ratio": best})));
    } else {
        let mut out = format!(
            "concurrency {}, {} connection(s), {} x {:?} per phase\n",
            args.concurrency,
            channels.len(),
            args.rounds,
            args.duration
        );
        for (i, (h, a)) in pairs.iter().enumerate() {
            out.push_str(&format!(
                "round {}: health {:>8.0}/s (p50 {} us, p99 {} us)   authorize {:>8.0}/s (p50 {} us, p99 {} us, {} allowed, {} errors)   ratio {:.2}\n",
                i + 1,
                h.rate(),
                h.p50_us,
                h.p99_us,
                a.rate(),
                a.p50_us,
                a.p99_us,
                a.allowed,
                a.errors,
                a.rate() / h.rate()
            ));
        }
        out.push_str(&format!("authorize / health throughput: mean {mean:.2}, best {best:.2}\n"));
        super::emit(&out);
    }
    ExitCode::SUCCESS
}
