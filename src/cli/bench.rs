//! `tollgate bench`: the project's load generator. It drives a running
//! server with Authorize calls at a fixed concurrency and, in the same run,
//! with `grpc.health.v1.Health/Check` calls, so that the throughput of a
//! decision is reported as a ratio to the cheapest call the same server can
//! answer (a shared, noisy machine makes absolute numbers meaningless; ratios
//! measured in one run are comparable).
//!
//! Phases alternate (health, authorize, health, authorize, ...) for
//! `--rounds` pairs of `--duration` each; the report gives each phase's
//! calls/s and latency percentiles, the mean ratio over the pairs, and the
//! Authorize latency percentiles over all of them. Calls go as fast as the
//! server answers, or paced at `--rate` calls/s (latency below saturation).
//!
//! With `--redis-url` it reads the Redis the server uses (`INFO`) before and
//! after each Authorize phase, and reports Redis's CPU time and commands
//! per decision and its memory per key; with `--server-pid`, the server's
//! resident memory at the end (docs/benchmarks.md, "What `bench --json`
//! reports").
//!
//! With `--keys K` each call presents one of K *bench keys*, picked uniformly
//! at random, so that a catalog of K keys is exercised as a whole. Bench key
//! number `i` is [`bench_key_value`]`(i)`, named [`bench_key_name`]`(i)`:
//! the catalog generator (`tollgate bench-catalog generate`, which writes
//! them into a catalog file and an import CSV) and the load generator agree
//! on them by this rule alone, without sharing a file.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::api::pb;

mod redis_stats;

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
    /// writes them). The first K Authorize calls of the run (warm-up
    /// included) take keys 0..K in order, so that every key is used; then
    /// one is picked at random per call. 1 means key 0.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..=MAX_BENCH_KEYS))]
    pub keys: Option<u64>,
    /// Stage, API/STAGE.
    #[arg(long, default_value = "petstore/prod")]
    pub stage: String,
    /// Method, e.g. /pets/GET.
    #[arg(long, default_value = "/pets/GET")]
    pub method: String,
    /// Calls in flight at once (at most, with --rate).
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
    /// Pace every phase at R calls/s in all (on a fixed schedule, each of
    /// the --concurrency callers at R/concurrency), instead of as fast as
    /// the server answers: for latency below saturation.
    #[arg(long, value_name = "R", value_parser = positive_rate)]
    pub rate: Option<f64>,
    /// The Redis the server uses (URL; a comma-separated list of nodes, e.g.
    /// a cluster's primaries, is read node by node and summed): reports its
    /// CPU time, commands and memory per decision, from `INFO` before and
    /// after the Authorize phases.
    #[arg(long, value_name = "URLS")]
    pub redis_url: Option<String>,
    /// The server's process id: reports its resident memory (VmRSS) at the end.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// TLS, for an https:// server.
    #[command(flatten)]
    pub tls: super::TlsOpts,
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("not a positive number of calls per second: {s}")),
    }
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

/// Which bench key each Authorize call presents: the first K calls of the
/// run take keys 0..K in order, so that every key is used (and the number
/// of keys with state in the store is known), then one at random.
#[derive(Debug)]
struct KeyPicker {
    keys: u64,
    next: AtomicU64,
}

impl KeyPicker {
    fn pick(&self) -> u64 {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if n < self.keys {
            n
        } else {
            rand::random_range(0..self.keys)
        }
    }

    /// How many distinct keys the calls so far presented.
    fn distinct(&self) -> u64 {
        self.next.load(Ordering::Relaxed).min(self.keys)
    }
}

/// A paced call that starts later than this after its slot counts as
/// behind schedule (the timer's own granularity is 1 ms).
const BEHIND: Duration = Duration::from_millis(5);

/// What one phase measured.
#[derive(Debug, Clone)]
struct Phase {
    calls: u64,
    errors: u64,
    allowed: u64,
    /// Paced calls started more than [`BEHIND`] after their slot.
    behind: u64,
    secs: f64,
    /// Each call's latency, µs, ascending.
    lat: Vec<u64>,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.secs
    }

    /// Calls that got an answer (allowed or denied): decisions.
    fn answered(&self) -> u64 {
        self.calls - self.errors
    }

    fn p(&self, q: f64) -> u64 {
        percentile(&self.lat, q)
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "calls": self.calls, "calls_per_sec": self.rate(), "errors": self.errors,
            "p50_us": self.p(0.50), "p99_us": self.p(0.99), "p999_us": self.p(0.999),
        })
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    Health,
    Authorize,
}

/// Runs `rpc` for `duration` from `concurrency` callers, as fast as the
/// server answers or, with `rate`, each caller on a fixed schedule (its
/// slots every `concurrency / rate` seconds, the callers' slots staggered);
/// a caller behind schedule calls at once until it has caught up.
async fn phase(
    channels: &[Channel],
    args: &Arc<BenchArgs>,
    picker: &Arc<KeyPicker>,
    rpc: Rpc,
    duration: Duration,
    rate: Option<f64>,
) -> Phase {
    let n = args.concurrency.max(1);
    let start = Instant::now();
    let deadline = start + duration;
    let interval = rate.map(|r| Duration::from_secs_f64(n as f64 / r));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let ch = channels[i % channels.len()].clone();
        let (args, picker) = (args.clone(), picker.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let (mut errors, mut allowed, mut behind) = (0u64, 0u64, 0u64);
            let mut auth = pb::authorizer_client::AuthorizerClient::new(ch.clone());
            let mut health = HealthClient::new(ch);
            let req = pb::AuthorizeRequest {
                api_key: args.key.clone(),
                stage: args.stage.clone(),
                method: args.method.clone(),
                cost: None,
            };
            let mut slot = interval.map(|iv| start + iv.mul_f64(i as f64 / n as f64));
            loop {
                match (slot, interval) {
                    (Some(at), Some(iv)) => {
                        if at >= deadline {
                            break;
                        }
                        tokio::time::sleep_until(at.into()).await;
                        behind += (at.elapsed() > BEHIND) as u64;
                        slot = Some(at + iv);
                    }
                    _ if Instant::now() >= deadline => break,
                    _ => {}
                }
                let t = Instant::now();
                let ok = match rpc {
                    Rpc::Health => health.check(HealthCheckRequest { service: String::new() }).await.is_ok(),
                    Rpc::Authorize => {
                        let mut req = req.clone();
                        if args.keys.is_some() {
                            req.api_key = Some(bench_key_value(picker.pick()));
                        }
                        match auth.authorize(req).await {
                            Ok(r) => {
                                allowed += r.get_ref().allowed as u64;
                                true
                            }
                            Err(_) => false,
                        }
                    }
                };
                lat.push(t.elapsed().as_micros() as u64);
                errors += (!ok) as u64;
            }
            (lat, errors, allowed, behind)
        }));
    }
    let mut lat = Vec::new();
    let (mut errors, mut allowed, mut behind) = (0, 0, 0);
    for t in tasks {
        if let Ok((l, e, a, b)) = t.await {
            lat.extend(l);
            errors += e;
            allowed += a;
            behind += b;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    Phase { calls: lat.len() as u64, errors, allowed, behind, secs, lat }
}

/// A figure per decision, or nothing without decisions.
fn per(x: f64, decisions: u64) -> Option<f64> {
    (decisions > 0).then(|| x / decisions as f64)
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> ExitCode {
    match measure(args).await {
        Ok(out) => {
            super::emit(&out);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs the phases and returns the report (text or one JSON object).
async fn measure(args: BenchArgs) -> Result<String, String> {
    let args = Arc::new(args);
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(super::connect(&args.server, &args.tls).await.map_err(|e| e.to_string())?);
    }
    if let Some(pid) = args.server_pid {
        redis_stats::rss_bytes(pid).map_err(|e| format!("--server-pid {pid}: {e}"))?;
    }
    let mut redis = match &args.redis_url {
        Some(urls) => Some(redis_stats::Nodes::connect(urls).await?),
        None => None,
    };
    let picker = Arc::new(KeyPicker { keys: args.keys.unwrap_or(1), next: AtomicU64::new(0) });
    // Redis memory before any decision of this run (the warm-up's included).
    let first = match &mut redis {
        Some(r) => Some(r.snapshot().await?),
        None => None,
    };
    // Warm up connections and the server (not measured, not paced).
    let _ = phase(&channels, &args, &picker, Rpc::Authorize, Duration::from_millis(300), None).await;
    let mut pairs = Vec::new();
    let mut delta = redis_stats::Delta::default();
    let mut last = None;
    for _ in 0..args.rounds.max(1) {
        let h = phase(&channels, &args, &picker, Rpc::Health, args.duration, args.rate).await;
        // Redis is read around the Authorize phases only: the health
        // phases' background work (catalog polls) is not a decision's.
        let before = match &mut redis {
            Some(r) => Some(r.snapshot().await?),
            None => None,
        };
        let a = phase(&channels, &args, &picker, Rpc::Authorize, args.duration, args.rate).await;
        if let (Some(r), Some(before)) = (&mut redis, before) {
            let after = r.snapshot().await?;
            delta.add(&before, &after, r.count() as u64);
            last = Some(after);
        }
        pairs.push((h, a));
    }
    let rss = args.server_pid.map(|pid| redis_stats::rss_bytes(pid).map_err(|e| format!("--server-pid {pid}: {e}")));
    let rss = rss.transpose()?;

    let ratios: Vec<f64> = pairs.iter().map(|(h, a)| a.rate() / h.rate()).collect();
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let best = ratios.iter().cloned().fold(f64::MIN, f64::max);
    let mut all = Vec::new();
    for (_, a) in &pairs {
        all.extend_from_slice(&a.lat);
    }
    all.sort_unstable();
    let ms = |q: f64| percentile(&all, q) as f64 / 1000.0;
    let decisions: u64 = pairs.iter().map(|(_, a)| a.answered()).sum();
    let sum = |f: fn(&Phase) -> f64, health: bool| -> f64 {
        pairs.iter().map(|(h, a)| if health { f(h) } else { f(a) }).sum()
    };
    let authorize_rate = sum(|p| p.calls as f64, false) / sum(|p| p.secs, false);
    let health_rate = sum(|p| p.calls as f64, true) / sum(|p| p.secs, true);
    let distinct_keys = match (args.keys, &args.key) {
        (Some(_), _) => picker.distinct(),
        (None, Some(_)) => 1,
        (None, None) => 0,
    };

    let mut report = json!({
        "keys": args.keys,
        "rounds": [],
        "mean_ratio": mean,
        "best_ratio": best,
        "ratio": mean,
        "health_per_sec": health_rate,
        "authorize_per_sec": authorize_rate,
        "decisions": decisions,
        "errors": pairs.iter().map(|(_, a)| a.errors).sum::<u64>(),
        "p50_ms": ms(0.50),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "concurrency": args.concurrency,
        "rate": args.rate,
        "distinct_keys": distinct_keys,
    });
    report["rounds"] = pairs
        .iter()
        .map(|(h, a)| {
            let (mut hj, mut aj) = (h.json(), a.json());
            aj["allowed"] = a.allowed.into();
            aj["answered"] = a.answered().into();
            if args.rate.is_some() {
                hj["behind_schedule"] = h.behind.into();
                aj["behind_schedule"] = a.behind.into();
            }
            json!({ "health": hj, "authorize": aj, "ratio": a.rate() / h.rate() })
        })
        .collect();
    if let (Some(r), Some(first), Some(last)) = (&redis, &first, &last) {
        let memory = last.used_memory as f64 - first.used_memory as f64;
        let commands: serde_json::Map<String, serde_json::Value> = delta
            .commands
            .iter()
            .map(|(name, (calls, usec))| {
                let v = json!({
                    "calls": calls,
                    "calls_per_decision": per(*calls as f64, decisions),
                    "us_per_decision": per(*usec as f64, decisions),
                });
                (name.clone(), v)
            })
            .collect();
        report["redis_nodes"] = r.count().into();
        report["redis_cpu_secs"] = delta.cpu_secs.into();
        report["redis_us_per_decision"] = per(delta.cpu_secs * 1e6, decisions).into();
        report["redis_calls"] = delta.calls().into();
        report["redis_calls_per_decision"] = per(delta.calls() as f64, decisions).into();
        report["redis_commands"] = commands.into();
        report["redis_used_memory_before"] = first.used_memory.into();
        report["redis_used_memory_after"] = last.used_memory.into();
        report["redis_bytes_per_key"] = per(memory, distinct_keys).into();
    }
    if let Some(rss) = rss {
        report["rss_bytes"] = rss.into();
    }
    if args.json {
        return Ok(format!("{report}\n"));
    }

    let mut out = format!(
        "concurrency {}, {} connection(s), {} x {:?} per phase{}{}\n",
        args.concurrency,
        channels.len(),
        args.rounds,
        args.duration,
        args.keys.map(|k| format!(", over bench keys 0..{k}")).unwrap_or_default(),
        args.rate.map(|r| format!(", paced at {r} calls/s")).unwrap_or_default(),
    );
    for (i, (h, a)) in pairs.iter().enumerate() {
        out.push_str(&format!(
            "round {}: health {:>8.0}/s (p50 {} us, p99 {} us)   authorize {:>8.0}/s (p50 {} us, p99 {} us, p99.9 {} us, {} allowed, {} errors)   ratio {:.2}\n",
            i + 1,
            h.rate(),
            h.p(0.50),
            h.p(0.99),
            a.rate(),
            a.p(0.50),
            a.p(0.99),
            a.p(0.999),
            a.allowed,
            a.errors,
            a.rate() / h.rate()
        ));
        if args.rate.is_some() && (h.behind > 0 || a.behind > 0) {
            out.push_str(&format!("  behind schedule: {} health, {} authorize calls\n", h.behind, a.behind));
        }
    }
    out.push_str(&format!("authorize / health throughput: mean {mean:.2}, best {best:.2}\n"));
    out.push_str(&format!(
        "authorize latency over all rounds: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms\n",
        ms(0.50),
        ms(0.99),
        ms(0.999)
    ));
    let f = |k: &str| report[k].as_f64().map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
    if redis.is_some() {
        out.push_str(&format!(
            "redis per decision: {} us of CPU, {} commands; {} bytes per key ({} keys)\n",
            f("redis_us_per_decision"),
            f("redis_calls_per_decision"),
            f("redis_bytes_per_key"),
            distinct_keys
        ));
    }
    if let Some(rss) = rss {
        out.push_str(&format!("server RSS: {:.1} MB\n", rss as f64 / 1e6));
    }
    Ok(out)
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
    fn the_first_k_picks_walk_every_key() {
        let p = KeyPicker { keys: 5, next: AtomicU64::new(0) };
        assert_eq!(p.distinct(), 0);
        assert_eq!((0..5).map(|_| p.pick()).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        assert!((0..100).all(|_| p.pick() < 5));
        assert_eq!(p.distinct(), 5);
    }

    #[test]
    fn rate_is_a_positive_number() {
        use clap::Parser;
        let parse = |a: &[&str]| crate::cli::Cli::try_parse_from(std::iter::once("tollgate").chain(a.iter().copied()));
        for bad in ["0", "-1", "x", "inf", "NaN"] {
            assert!(parse(&["bench", "--rate", bad]).is_err(), "{bad}");
        }
        let crate::cli::Command::Bench(b) = parse(&["bench", "--rate", "2500.5"]).unwrap().command else {
            unreachable!()
        };
        assert_eq!(b.rate, Some(2500.5));
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
