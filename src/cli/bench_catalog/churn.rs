//! `bench-catalog churn`: a steady stream of catalog changes through Admin,
//! to run beside `tollgate bench` ("decision p99 with and without a stream
//! of changes").
//!
//! Each change sets the description of a bench key picked at random from a
//! pool (the first `--pool` bench keys Admin lists: ids are random, so they
//! are a random sample): a real change every replica must take in, that
//! leaves every decision as it was. Changes start on a fixed schedule,
//! `--rate` per second, whatever the previous ones are doing (open loop); a
//! change due while `--max-in-flight` are still running is skipped and
//! counted. The report counts failures by gRPC code, with the first message
//! of each. When the pool is ready, `churn: started` goes to stderr, so a
//! script can start its load then.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tokio::task::JoinSet;

use super::{summary, AdminTarget};
use crate::api::pb;
use crate::cli::admin::{client, code_name, note, Client, Failure, Outcome};
use crate::cli::bench::BENCH_KEY_NAME_PREFIX;

/// Arguments of `bench-catalog churn`.
#[derive(Debug, Args)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub admin: AdminTarget,
    /// Changes per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long to keep changing, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// How many bench keys to pick from.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub pool: u32,
    /// Most changes running at once; a change due beyond it is skipped.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
}

/// The ids of up to `n` bench keys.
async fn pool(c: &mut Client, n: u32) -> Result<Vec<String>, Failure> {
    let mut ids = Vec::new();
    let mut token = String::new();
    while ids.len() < n as usize {
        let req = pb::ListApiKeysRequest {
            page_size: 500.min(n - ids.len() as u32),
            page_token: token,
            name_prefix: BENCH_KEY_NAME_PREFIX.to_string(),
            ..Default::default()
        };
        let r = c.list_api_keys(req).await?.into_inner();
        ids.extend(r.keys.into_iter().map(|k| k.id));
        token = r.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    if ids.is_empty() {
        return Err(Failure::Message("no bench keys (names bench-...) to change: import them first".into()));
    }
    Ok(ids)
}

/// Runs the changes and prints the report.
pub async fn run(a: &ChurnArgs) -> Outcome {
    if !(a.rate > 0.0 && a.rate.is_finite()) {
        return Err(Failure::Message(format!("--rate {}: must be a positive number of changes per second", a.rate)));
    }
    let mut c = client(&a.admin.opts()).await?;
    let ids = pool(&mut c, a.pool).await?;
    note(&format!("churn: started: {} changes/s for {:?} over {} bench keys", a.rate, a.duration, ids.len()));
    let start = Instant::now();
    let mut tasks: JoinSet<(u64, Result<(), tonic::Status>)> = JoinSet::new();
    let (mut attempted, mut skipped) = (0u64, 0u64);
    let mut finished = Vec::new();
    for n in 0u64.. {
        let at = start + Duration::from_secs_f64(n as f64 / a.rate);
        if at >= start + a.duration {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        while let Some(done) = tasks.try_join_next() {
            finished.extend(done.ok());
        }
        if tasks.len() >= a.max_in_flight as usize {
            skipped += 1;
            continue;
        }
        attempted += 1;
        let mut c = c.clone();
        let id = ids[rand::random_range(0..ids.len())].clone();
        tasks.spawn(async move {
            let t = Instant::now();
            let req = pb::UpdateApiKeyRequest { id, description: Some(format!("churn {n}")), ..Default::default() };
            let r = c.update_api_key(req).await.map(|_| ());
            (t.elapsed().as_micros() as u64, r)
        });
    }
    let secs = start.elapsed().as_secs_f64();
    finished.extend(tasks.join_all().await);
    let mut latency: Vec<u64> = finished.iter().map(|(us, _)| *us).collect();
    let (mut errors, mut first_errors): (BTreeMap<&str, u64>, BTreeMap<&str, &str>) = Default::default();
    for (_, r) in &finished {
        if let Err(s) = r {
            *errors.entry(code_name(s.code())).or_default() += 1;
            first_errors.entry(code_name(s.code())).or_insert(s.message());
        }
    }
    let failed: u64 = errors.values().sum();
    let report = json!({
        "rate": a.rate,
        "duration_s": secs,
        "pool": ids.len(),
        "attempted": attempted,
        "ok": attempted - failed,
        "failed": failed,
        "skipped": skipped,
        "achieved_per_sec": (attempted - failed) as f64 / secs,
        "latency": summary(&mut latency),
        "errors": errors,
        "first_errors": first_errors,
    });
    crate::cli::emit(&format!("{report}\n"));
    Ok(())
}
