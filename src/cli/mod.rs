//! The `tollgate` command line: `serve` runs the server; the other
//! subcommands are clients of a running server.

pub mod admin;
pub mod authorize;
pub mod bench;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Settings;

/// tollgate: API keys, usage plans, throttles and quotas, enforced exactly
/// across replicas.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (memory store by default; Redis with --redis-url).
    Serve(Settings),
    /// Ask a server whether a key may call a method of a stage now.
    Authorize(authorize::AuthorizeArgs),
    /// Manage API keys (Admin service).
    Keys(admin::keys::KeysArgs),
    /// Manage APIs, stages and their method settings (Admin service).
    Stages(admin::stages::StagesArgs),
    /// Manage usage plans (Admin service).
    Plans(admin::plans::PlansArgs),
    /// Subscribe keys to usage plans (Admin service).
    #[command(name = "plan-keys")]
    PlanKeys(admin::plan_keys::PlanKeysArgs),
    /// Read daily usage and grant quota (Admin service).
    Usage(admin::usage::UsageArgs),
    /// Load-test a server: Authorize throughput and latency, as a ratio to
    /// health checks measured in the same run.
    Bench(bench::BenchArgs),
    /// Check a catalog file without starting a server (exit 0 when valid;
    /// otherwise the error with file:line, exit 1). For CI of GitOps repos.
    CheckConfig(CheckConfigArgs),
}

/// Arguments of `tollgate check-config`.
#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// The catalog file (YAML).
    pub file: std::path::PathBuf,
}

/// `tollgate check-config FILE`.
fn check_config(args: CheckConfigArgs) -> ExitCode {
    match crate::catalog::file::load(&args.file, crate::model::now_ms()) {
        Ok(d) => {
            emit(&format!(
                "{}: ok ({} APIs, {} stages, {} usage plans, {} API keys, {} subscriptions)\n",
                args.file.display(),
                d.apis.len(),
                d.stages.len(),
                d.plans.len(),
                d.keys.len(),
                d.plan_keys.len()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the parsed command line and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    crate::telemetry::init();
    let threads = match &cli.command {
        Command::Serve(s) => s.worker_threads,
        _ => 1,
    };
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            b.worker_threads(threads);
        }
        b.enable_all().build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match cli.command {
            Command::Serve(settings) => serve(settings).await,
            Command::Authorize(args) => authorize::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::CheckConfig(args) => check_config(args),
            Command::Keys(args) => admin::keys::run(args).await,
            Command::Stages(args) => admin::stages::run(args).await,
            Command::Plans(args) => admin::plans::run(args).await,
            Command::PlanKeys(args) => admin::plan_keys::run(args).await,
            Command::Usage(args) => admin::usage::run(args).await,
        }
    })
}

async fn serve(settings: Settings) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", settings.listen);
            return ExitCode::FAILURE;
        }
    };
    match crate::server::run(listener, settings, crate::server::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Connects a gRPC channel to `server` (`http://host:port`), with a clear
/// error when the address is malformed or nothing listens there.
pub async fn connect(server: &str) -> Result<tonic::transport::Channel, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(server.to_string())
        .map_err(|e| format!("invalid --server {server:?}: {e}; write it like http://127.0.0.1:50051"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30));
    endpoint.connect().await.map_err(|e| format!("cannot connect to {server}: {e}"))
}

/// Writes to stdout, ignoring a closed pipe (`tollgate ... | head -1` must
/// not panic).
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}
