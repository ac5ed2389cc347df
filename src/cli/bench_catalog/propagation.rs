//! `bench-catalog propagation`: how long a catalog change takes to reach the
//! data plane of every replica.
//!
//! A trial flips the `enabled` flag of one bench key through Admin and, from
//! the moment the call is sent, polls Authorize with that key on every
//! replica until each answers by the new state (disabled: INVALID_API_KEY;
//! enabled: anything else). The time of a trial is that of the last replica;
//! the report gives its p50/p99/max over the trials, the same per replica,
//! and the Admin call's own time (the change is committed somewhere within
//! it). The key is left as it was found.

use std::time::{Duration, Instant};

use clap::Args;
use futures::future::join_all;
use serde_json::json;
use tonic::transport::Channel;

use super::{find_bench_key, summary, AdminTarget};
use crate::api::pb;
use crate::cli::admin::{client, Failure, Outcome};
use crate::cli::bench::bench_key_value;

/// Arguments of `bench-catalog propagation`.
#[derive(Debug, Args)]
pub struct PropagationArgs {
    #[command(flatten)]
    pub admin: AdminTarget,
    /// A replica's data-plane address (its --listen); repeat for each, or
    /// separate with commas.
    #[arg(long = "replica", value_name = "URL", required = true, value_delimiter = ',')]
    pub replicas: Vec<String>,
    /// Which bench key to change.
    #[arg(long, default_value_t = 0)]
    pub key_index: u64,
    /// How many changes.
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// The stage the bench key may call.
    #[arg(long, default_value = "bench/live")]
    pub stage: String,
    /// The method to ask for.
    #[arg(long, default_value = "/items/42/GET")]
    pub method: String,
    /// Pause between two Authorize calls to one replica.
    #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    /// How long a replica may take to show one change before the trial
    /// counts it as timed out (at this value).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// One replica's data plane, asked whether the key is enabled there.
#[derive(Clone)]
struct Replica {
    client: pb::authorizer_client::AuthorizerClient<Channel>,
    req: pb::AuthorizeRequest,
}

impl Replica {
    /// Whether the replica answers as if the key were `enabled`.
    async fn shows(&mut self, enabled: bool) -> bool {
        match self.client.authorize(self.req.clone()).await {
            Ok(r) => (r.get_ref().reason() != pb::Reason::InvalidApiKey) == enabled,
            Err(_) => false,
        }
    }

    /// Polls until the replica shows `enabled`: the time since `from`, in
    /// microseconds, or `None` after `a.timeout`.
    async fn until(&mut self, enabled: bool, from: Instant, a: &PropagationArgs) -> Option<u64> {
        loop {
            if self.shows(enabled).await {
                return Some(from.elapsed().as_micros() as u64);
            }
            if from.elapsed() > a.timeout {
                return None;
            }
            tokio::time::sleep(a.poll).await;
        }
    }
}

/// Runs the trials and prints the report.
pub async fn run(a: &PropagationArgs) -> Outcome {
    let mut admin = client(&a.admin.opts()).await?;
    let key = find_bench_key(&mut admin, a.key_index).await?;
    let mut replicas = Vec::new();
    for url in &a.replicas {
        let ch = crate::cli::connect(url, &crate::cli::TlsOpts::default()).await?;
        let req = pb::AuthorizeRequest {
            api_key: Some(bench_key_value(a.key_index)),
            stage: a.stage.clone(),
            method: a.method.clone(),
            cost: None,
        };
        replicas.push(Replica { client: pb::authorizer_client::AuthorizerClient::new(ch), req });
    }
    // Every replica first shows the key as Admin has it.
    let start = Instant::now();
    for (r, url) in replicas.iter_mut().zip(&a.replicas) {
        if r.until(key.enabled, start, a).await.is_none() {
            return Err(Failure::Message(format!(
                "{url} does not answer for bench key {} as Admin has it (enabled: {}) within {:?}: is it a replica of the same catalog, with stage {}?",
                a.key_index, key.enabled, a.timeout, a.stage
            )));
        }
    }
    let mut enabled = key.enabled;
    let (mut all, mut admin_us, mut timeouts) = (Vec::new(), Vec::new(), 0usize);
    let mut per_replica: Vec<Vec<u64>> = vec![Vec::new(); replicas.len()];
    for _ in 0..a.trials {
        enabled = !enabled;
        let t = trial(&mut admin, &mut replicas, &key.id, enabled, a).await?;
        admin_us.push(t.admin_us);
        let cap = a.timeout.as_micros() as u64;
        let times: Vec<u64> = t.replicas.iter().map(|r| r.unwrap_or(cap)).collect();
        timeouts += t.replicas.iter().filter(|r| r.is_none()).count();
        all.push(times.iter().copied().max().unwrap_or(0));
        for (v, us) in per_replica.iter_mut().zip(times) {
            v.push(us);
        }
    }
    if enabled != key.enabled {
        trial(&mut admin, &mut replicas, &key.id, key.enabled, a).await?;
    }
    let per: Vec<_> = a
        .replicas
        .iter()
        .zip(per_replica.iter_mut())
        .map(|(url, v)| {
            let mut s = summary(v);
            s["replica"] = json!(url);
            s
        })
        .collect();
    let report = json!({
        "key_index": a.key_index,
        "trials": a.trials,
        "replicas": a.replicas.len(),
        "all": summary(&mut all),
        "admin_call": summary(&mut admin_us),
        "timeouts": timeouts,
        "per_replica": per,
    });
    crate::cli::emit(&format!("{report}\n"));
    Ok(())
}

/// What one trial measured, in microseconds from sending the change.
struct Trial {
    admin_us: u64,
    /// Per replica; `None`: not seen within the timeout.
    replicas: Vec<Option<u64>>,
}

async fn trial(
    admin: &mut crate::cli::admin::Client,
    replicas: &mut [Replica],
    id: &str,
    enabled: bool,
    a: &PropagationArgs,
) -> Result<Trial, Failure> {
    let start = Instant::now();
    let req = pb::UpdateApiKeyRequest { id: id.to_string(), enabled: Some(enabled), ..Default::default() };
    let change = async {
        let r = admin.update_api_key(req).await;
        (r, start.elapsed().as_micros() as u64)
    };
    let mut change = std::pin::pin!(change);
    let mut polls = std::pin::pin!(join_all(replicas.iter_mut().map(|r| r.until(enabled, start, a))));
    // A failed change ends the trial at once; the polls go on until every
    // replica shows a change that went through.
    tokio::select! {
        (changed, admin_us) = &mut change => {
            changed?;
            Ok(Trial { admin_us, replicas: polls.await })
        }
        seen = &mut polls => {
            let (changed, admin_us) = change.await;
            changed?;
            Ok(Trial { admin_us, replicas: seen })
        }
    }
}
