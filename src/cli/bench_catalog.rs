//! `tollgate bench-catalog`: the tools that measure the catalog at scale
//! (`benches/scale.sh` runs them; docs/benchmarks.md, "The catalog at
//! scale"). Each measuring command prints one JSON object on stdout.
//!
//! - `generate`: a catalog file and an import CSV with bench keys 0..K
//!   ([`super::bench::bench_key_value`]) on the plan of `benches/catalog.yaml`.
//! - `wait-serving`: waits until a server's gRPC health says SERVING.
//! - `propagation`: how long a key change made through Admin takes to reach
//!   every replica's data plane.
//! - `churn`: a steady stream of Admin changes (to run beside `tollgate
//!   bench`), counting the ones that fail.
//! - `list`: the time of `ListApiKeys` pages.
//! - `slowlog`: the slowest catalog command in Redis's `SLOWLOG`.
//!
//! The Admin commands find a bench key by its name ([`super::bench::bench_key_name`]),
//! since an imported key's id is random.

mod churn;
mod generate;
mod list;
mod propagation;
mod slowlog;
mod wait_serving;

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::admin::{AdminOpts, Client, Failure, Secret};
use super::bench::bench_key_name;
use crate::api::pb;

pub use generate::{write_csv, write_yaml, BENCH_PLAN_ID};

/// Arguments of `tollgate bench-catalog`.
#[derive(Debug, Args)]
pub struct BenchCatalogArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: BenchCatalogCommand,
}

/// The `bench-catalog` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCatalogCommand {
    /// Write a catalog file and/or an import CSV with bench keys 0..K on the
    /// plan of benches/catalog.yaml.
    Generate(generate::GenerateArgs),
    /// Wait until a server's gRPC health says SERVING; print how long it took.
    WaitServing(wait_serving::WaitServingArgs),
    /// Change a bench key through Admin again and again; time until every
    /// replica's data plane answers by the change.
    Propagation(propagation::PropagationArgs),
    /// Make a steady stream of key changes through Admin; count failures.
    Churn(churn::ChurnArgs),
    /// Time ListApiKeys pages.
    List(list::ListArgs),
    /// The slowest command touching the catalog (`{cat}`) in Redis's SLOWLOG.
    Slowlog(slowlog::SlowlogArgs),
}

/// Runs `tollgate bench-catalog ...`.
pub async fn run(args: BenchCatalogArgs) -> ExitCode {
    match args.command {
        BenchCatalogCommand::Generate(a) => generate::run(a),
        BenchCatalogCommand::WaitServing(a) => wait_serving::run(a).await,
        BenchCatalogCommand::Propagation(a) => {
            let outcome = propagation::run(&a).await;
            super::admin::finish(&a.admin.opts(), outcome)
        }
        BenchCatalogCommand::Churn(a) => {
            let outcome = churn::run(&a).await;
            super::admin::finish(&a.admin.opts(), outcome)
        }
        BenchCatalogCommand::List(a) => {
            let outcome = list::run(&a).await;
            super::admin::finish(&a.admin.opts(), outcome)
        }
        BenchCatalogCommand::Slowlog(a) => slowlog::run(a).await,
    }
}

/// The Admin service the measuring commands talk to: `--server` and
/// `--admin-token` as for every admin command (they always print JSON).
#[derive(Debug, Args)]
pub struct AdminTarget {
    /// A replica's Admin address (its --admin-listen).
    #[arg(long, env = "TOLLGATE_ADMIN_SERVER", default_value = super::DEFAULT_ADMIN_SERVER.as_str())]
    pub server: String,
    /// The admin token (the server's TOLLGATE_ADMIN_TOKEN); prefer the
    /// environment variable.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub admin_token: Option<Secret>,
}

impl AdminTarget {
    /// The same as the admin commands' options, for their client and errors.
    pub fn opts(&self) -> AdminOpts {
        AdminOpts {
            server: self.server.clone(),
            admin_token: self.admin_token.clone(),
            json: true,
            tls: Default::default(),
        }
    }
}

/// Bench key number `i` as Admin has it, found by its name.
async fn find_bench_key(c: &mut Client, i: u64) -> Result<pb::ApiKey, Failure> {
    let name = bench_key_name(i);
    let req = pb::ListApiKeysRequest { page_size: 2, name_prefix: name.clone(), ..Default::default() };
    let keys = c.list_api_keys(req).await?.into_inner().keys;
    keys.into_iter().find(|k| k.name == name).ok_or_else(|| {
        Failure::Message(format!(
            "no API key is named {name:?} (bench key {i}): create the bench keys first (tollgate bench-catalog generate, then keys import)"
        ))
    })
}

/// Milliseconds, with microsecond precision, for JSON.
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// `{p50_ms, p99_ms, max_ms, n}` of microsecond samples.
fn summary(samples: &mut [u64]) -> serde_json::Value {
    samples.sort_unstable();
    serde_json::json!({
        "n": samples.len(),
        "p50_ms": ms(super::bench::percentile(samples, 0.50)),
        "p99_ms": ms(super::bench::percentile(samples, 0.99)),
        "max_ms": ms(samples.last().copied().unwrap_or(0)),
    })
}
