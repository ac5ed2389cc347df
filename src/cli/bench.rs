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
//!
//! With `--keys K` each call presents one of K *bench keys*, picked uniformly
//! at random, so that a catalog of K keys is exercised as a whole. Bench key
//! number `i` is [`bench_key_value`]`(i)`, named [`bench_key_name`]`(i)`:
//! the catalog generator (`tollgate bench-catalog generate`, which writes
//! them into a catalog file and an import CSV) and the load generator agree
//! on them by this rule alone, without sharing a file.

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
    #[arg(long, conflicts_with = "keys")]
    pub key: Option<String>,
    /// Spread the calls over the bench keys 0..K (`bench` and the number,
    /// zero-padded to 40 characters; `tollgate bench-catalog generate`
    /// writes them), one picked at random per call. 1 means key 0.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..=MAX_BENCH_KEYS))]
    pub keys: Option<u64>,
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

/// The most bench keys there can be: a value has 35 digits for the number,
/// a name 9 (so that a name is never a prefix of another).
pub const MAX_BENCH_KEYS: u64 = 1_000_000_000;

/// The value of bench key number `i`: `bench` and `i` zero-padded to 35
/// digits, 40 alphanumerics in all (a valid key value). The one definition
/// of the rule: the catalog generator and `bench --keys` both call it.
pub fn bench_key_value(i: u64) -> String {
    format!("bench{i:035}")
}

/// The name of bench key number `i`: `bench-` and `i` zero-padded to 9
/// digits. Every bench key name has the same length below
/// [`MAX_BENCH_KEYS`], so a name used as `ListApiKeys`' `name_prefix` finds
/// that key alone.
pub fn bench_key_name(i: u64) -> String {
    format!("bench-{i:09}")
}

/// The `name_prefix` that lists the bench keys.
pub const BENCH_KEY_NAME_PREFIX: &str = "bench-";

/// The `p`-th quantile (0.0 to 1.0) of `sorted` (ascending; 0 when empty).
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or(0)
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
                let mut req = req.clone();
                if let Some(k) = args.keys {
                    req.api_key = Some(bench_key_value(rand::random_range(0..k)));
                }
                let t = Instant::now();
                let ok = match rpc {
                    Rpc::Health => health.check(HealthCheckRequest { service: String::new() }).await.is_ok(),
                    Rpc::Authorize => match auth.authorize(req).await {
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
    Phase {
        calls: lat.len() as u64,
        errors,
        allowed,
        secs,
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
    }
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
                    "health": {"calls": h.calls, "calls_per_sec": h.rate(), "p50_us": h.p50_us, "p99_us": h.p99_us, "errors": h.errors},
                    "authorize": {"calls": a.calls, "calls_per_sec": a.rate(), "p50_us": a.p50_us, "p99_us": a.p99_us, "errors": a.errors, "allowed": a.allowed},
                    "ratio": a.rate() / h.rate(),
                })
            })
            .collect();
        let keys = args.keys;
        super::emit(&format!("{}\n", json!({"keys": keys, "rounds": rounds, "mean_ratio": mean, "best_ratio": best})));
    } else {
        let mut out = format!(
            "concurrency {}, {} connection(s), {} x {:?} per phase{}\n",
            args.concurrency,
            channels.len(),
            args.rounds,
            args.duration,
            args.keys.map(|k| format!(", over bench keys 0..{k}")).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::validate_key_value;

    #[test]
    fn bench_keys_are_valid_distinct_and_fixed_width() {
        assert_eq!(bench_key_value(0), "bench00000000000000000000000000000000000");
        assert_eq!(bench_key_value(42), "bench00000000000000000000000000000000042");
        assert_eq!(bench_key_name(42), "bench-000000042");
        for i in [0, 1, 9, 10, 999_999, MAX_BENCH_KEYS - 1, u64::MAX] {
            let v = bench_key_value(i);
            assert_eq!(v.len(), 40, "{v}");
            validate_key_value("value", &v).unwrap();
        }
        assert_ne!(bench_key_value(1), bench_key_value(10));
        // A name is never the prefix of another below MAX_BENCH_KEYS.
        let (a, b) = (bench_key_name(1), bench_key_name(MAX_BENCH_KEYS - 1));
        assert_eq!(a.len(), b.len());
        assert!(a.starts_with(BENCH_KEY_NAME_PREFIX));
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!((percentile(&v, 0.5), percentile(&v, 0.99), percentile(&v, 1.0)), (51, 100, 100));
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn keys_and_key_exclude_each_other() {
        use clap::Parser;
        let parse = |a: &[&str]| crate::cli::Cli::try_parse_from(std::iter::once("tollgate").chain(a.iter().copied()));
        assert!(parse(&["bench", "--keys", "10", "--key", "x"]).is_err());
        assert!(parse(&["bench", "--keys", "0"]).is_err());
        let crate::cli::Command::Bench(b) = parse(&["bench", "--keys", "1"]).unwrap().command else { unreachable!() };
        assert_eq!((b.keys, b.key), (Some(1), None));
    }
}
