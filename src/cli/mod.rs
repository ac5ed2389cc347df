//! The `tollgate` command line: `serve` runs the server; the other
//! subcommands are clients of a running server.

pub mod admin;
pub mod authorize;
pub mod bench;
pub mod bench_catalog;
pub mod refund;
pub mod self_usage;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::LazyLock;

use clap::{Parser, Subcommand};

use crate::config::{Settings, DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN};

/// Where `authorize` and `bench` connect by default: the data plane at
/// `http://` + [`DEFAULT_LISTEN`].
pub static DEFAULT_SERVER: LazyLock<String> = LazyLock::new(|| format!("http://{DEFAULT_LISTEN}"));

/// Where the admin commands connect by default: the Admin listener at
/// `http://` + [`DEFAULT_ADMIN_LISTEN`].
pub static DEFAULT_ADMIN_SERVER: LazyLock<String> = LazyLock::new(|| format!("http://{DEFAULT_ADMIN_LISTEN}"));

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
    Serve(Box<Settings>),
    /// Ask a server whether a key may call a method of a stage now.
    Authorize(authorize::AuthorizeArgs),
    /// A key's own usage: its plans, quota left and today's use (no admin
    /// token; the key itself authenticates).
    #[command(name = "self")]
    OwnUsage(self_usage::SelfArgs),
    /// Give back what one allowed decision consumed, by its decision id
    /// (no admin token; the signed id authenticates).
    Refund(refund::RefundArgs),
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
    /// Read the audit trail of Admin changes (Admin service).
    Audit(admin::audit::AuditArgs),
    /// Read quota alert events (Admin service).
    Events(admin::events::EventsArgs),
    /// Load-test a server: Authorize throughput and latency, as a ratio to
    /// health checks measured in the same run.
    Bench(bench::BenchArgs),
    /// Measure the catalog at scale: generate a catalog of bench keys, time
    /// propagation, churn, list pages and readiness (benches/scale.sh).
    #[command(name = "bench-catalog")]
    BenchCatalog(bench_catalog::BenchCatalogArgs),
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
    // `serve` installs its logs (format, traces) from its settings, inside
    // the runtime; the client commands log text.
    if !matches!(cli.command, Command::Serve(_)) {
        crate::telemetry::init_logs();
    }
    // TLS (rediss://) uses rustls with ring; say so once for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
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
            Command::Serve(settings) => serve(*settings).await,
            Command::Authorize(args) => authorize::run(args).await,
            Command::OwnUsage(args) => self_usage::run(args).await,
            Command::Refund(args) => refund::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::BenchCatalog(args) => bench_catalog::run(args).await,
            Command::CheckConfig(args) => check_config(args),
            Command::Keys(args) => admin::keys::run(args).await,
            Command::Stages(args) => admin::stages::run(args).await,
            Command::Plans(args) => admin::plans::run(args).await,
            Command::PlanKeys(args) => admin::plan_keys::run(args).await,
            Command::Usage(args) => admin::usage::run(args).await,
            Command::Audit(args) => admin::audit::run(args).await,
            Command::Events(args) => admin::events::run(args).await,
        }
    })
}

/// `tollgate serve`: logs and traces, the server until a signal, then the
/// last spans sent. An error that stops it is one line on stderr, in the
/// log format (`error: ...` as text), whatever `RUST_LOG` says.
async fn serve(settings: Settings) -> ExitCode {
    let format = settings.log_format;
    let started = settings.traces().map_err(|e| e.to_string()).and_then(|t| crate::telemetry::init(format, t.as_ref()));
    let telemetry = match started {
        Ok(t) => t,
        Err(e) => {
            crate::telemetry::print_error(format, &e);
            return ExitCode::FAILURE;
        }
    };
    let result = run_server(settings).await;
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::telemetry::print_error(format, &e);
            ExitCode::FAILURE
        }
    }
}

async fn run_server(settings: Settings) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    crate::server::run(listener, settings, crate::server::shutdown_signal()).await.map_err(|e| e.to_string())
}

/// How a client command reaches an `https://` server: the CA to trust and,
/// for a server that requires client certificates (`--tls-client-ca`), the
/// certificate and key to present. Given with an `http://` server they are
/// an error, so that a slip cannot send plaintext where TLS was meant.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "TLS (https:// servers)")]
pub struct TlsOpts {
    /// The CA certificate (PEM) that signed the server's certificate; the
    /// only one trusted for an https:// server. Without it, the system's
    /// roots are.
    #[arg(long, global = true, env = "TOLLGATE_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// A client certificate (PEM) to present, for a server that requires
    /// one (mTLS); with --client-key.
    #[arg(long, global = true, env = "TOLLGATE_CLIENT_CERT", value_name = "FILE")]
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of --client-cert.
    #[arg(long, global = true, env = "TOLLGATE_CLIENT_KEY", value_name = "FILE")]
    pub client_key: Option<PathBuf>,
}

impl TlsOpts {
    /// Whether any TLS option is given.
    fn any(&self) -> bool {
        self.ca_cert.is_some() || self.client_cert.is_some() || self.client_key.is_some()
    }

    /// The TLS configuration of a channel to an `https://` server.
    fn client_config(&self) -> Result<tonic::transport::ClientTlsConfig, String> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |flag: &str, path: &Path| {
            std::fs::read(path).map_err(|e| format!("{flag} {}: cannot read it: {e}", path.display()))
        };
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_cert {
            Some(path) => {
                let pem = read("--ca-cert", path)?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(format!("--ca-cert {}: no certificate in it (expected PEM)", path.display()));
                }
                config.ca_certificate(Certificate::from_pem(pem))
            }
            None => config.with_native_roots(),
        };
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let identity = Identity::from_pem(read("--client-cert", cert)?, read("--client-key", key)?);
                config = config.identity(identity);
            }
            (Some(_), None) => return Err("--client-cert needs --client-key (its private key)".into()),
            (None, Some(_)) => return Err("--client-key needs --client-cert".into()),
            (None, None) => {}
        }
        Ok(config)
    }
}

/// An Authorizer client of the data plane at `server` for the commands that
/// call it once (`authorize`, `self`, `refund`); when it cannot connect,
/// the error is printed and the exit code to end with (2) is returned.
pub async fn authorizer(
    server: &str,
    tls: &TlsOpts,
) -> Result<crate::api::pb::authorizer_client::AuthorizerClient<tonic::transport::Channel>, ExitCode> {
    match connect(server, tls).await {
        Ok(c) => Ok(crate::api::pb::authorizer_client::AuthorizerClient::new(c)),
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// Connects a gRPC channel to `server` (`http://host:port`, or
/// `https://host:port` with `tls`), with a clear error when the address is
/// malformed, nothing listens there, or TLS fails (with a hint at the
/// option that would help).
pub async fn connect(server: &str, tls: &TlsOpts) -> Result<tonic::transport::Channel, String> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(server.to_string())
        .map_err(|e| format!("invalid --server {server:?}: {e}; write it like {}", *DEFAULT_SERVER))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30));
    match endpoint.uri().scheme_str() {
        Some("https") => {
            endpoint = endpoint.tls_config(tls.client_config()?).map_err(|e| format!("TLS: {}", error_chain(&e)))?;
        }
        _ if tls.any() => {
            return Err(format!(
                "--ca-cert, --client-cert and --client-key are for https:// servers; {server} is not one \
                 (write https://HOST:PORT for a server started with --tls-cert)"
            ))
        }
        _ => {}
    }
    endpoint.connect().await.map_err(|e| {
        let chain = error_chain(&e);
        format!("cannot connect to {server}: {chain}{}", tls_hint(&chain, tls))
    })
}

/// An error and its sources, `: `-separated, each said once.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// A failed call's transport error (the source of its status, if any) and
/// advice when TLS is the likely cause: `" (cause)\nhint: ..."`, or empty.
pub fn status_cause(s: &tonic::Status, server: &str, tls: &TlsOpts) -> String {
    use std::error::Error;
    let Some(source) = s.source() else { return String::new() };
    let chain = error_chain(source);
    let shown = chain.strip_prefix(s.message()).map(|c| c.trim_start_matches(": ")).unwrap_or(&chain);
    let mut text = if shown.is_empty() { String::new() } else { format!(" ({shown})") };
    if server.starts_with("https://") {
        text.push_str(&tls_hint(&chain, tls));
    }
    text
}

/// Advice for a TLS failure, from the words of the error.
fn tls_hint(chain: &str, tls: &TlsOpts) -> String {
    let refused_client = "the server refused the client certificate: it must be signed by a CA in the \
                          server's --tls-client-ca";
    let hint = if chain.contains("UnknownIssuer") || chain.contains("invalid peer certificate") {
        if tls.ca_cert.is_some() {
            "the server's certificate is not signed by --ca-cert, or does not name the host of --server"
        } else {
            "the server's certificate is not signed by a CA this machine trusts: give --ca-cert FILE \
             (the CA that signed the server's --tls-cert)"
        }
    } else if chain.contains("CertificateRequired") || chain.contains("certificate required") {
        "the server requires a client certificate (--tls-client-ca): give --client-cert and --client-key"
    } else if chain.contains("BadCertificate") || chain.contains("UnknownCA") || chain.contains("unknown ca") {
        refused_client
    } else if chain.contains("connection closed") || chain.contains("reset") || chain.contains("broken pipe") {
        // With TLS 1.3 a refused client certificate shows only as a
        // connection the server closed.
        if tls.client_cert.is_none() {
            "the server closed the connection: if it requires client certificates (--tls-client-ca), \
             give --client-cert and --client-key"
        } else {
            "the server closed the connection: it may have refused the client certificate (it must be \
             signed by a CA in the server's --tls-client-ca)"
        }
    } else {
        return String::new();
    };
    format!("\nhint: {hint}")
}

/// Writes to stdout, ignoring a closed pipe (`tollgate ... | head -1` must
/// not panic).
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};
    use crate::config::AdminListen;

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("tollgate").chain(args.iter().copied())).expect("parses").command
    }

    #[test]
    fn admin_listens_apart_from_the_data_plane_by_default() {
        let Command::Serve(s) = parse(&["serve"]) else { unreachable!() };
        assert_eq!(s.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(s.admin_listen, AdminListen::Addr("127.0.0.1:50052".parse().unwrap()));
        assert!(s.reflection);
        let Command::Serve(s) = parse(&["serve", "--admin-listen", "OFF", "--reflection", "false"]) else {
            unreachable!()
        };
        assert_eq!((s.admin_listen, s.reflection), (AdminListen::Off, false));
        let err = Cli::try_parse_from(["tollgate", "serve", "--admin-listen", "localhost"]).unwrap_err().to_string();
        assert!(err.contains("127.0.0.1:50052") && err.contains("`off`"), "{err}");
    }

    #[test]
    fn each_client_command_defaults_to_its_listener() {
        let Command::Authorize(a) = parse(&["authorize", "--stage", "a/b", "--method", "/x/GET"]) else {
            unreachable!()
        };
        assert_eq!(a.server, "http://127.0.0.1:50051");
        let Command::Keys(k) = parse(&["keys", "list"]) else { unreachable!() };
        assert_eq!(k.opts.server, "http://127.0.0.1:50052");
        let Command::Usage(u) = parse(&["usage", "get", "p", "--start", "2026-01-01", "--end", "2026-01-01"]) else {
            unreachable!()
        };
        assert_eq!(u.opts.server, "http://127.0.0.1:50052");
    }

    #[test]
    fn limits_reject_zero() {
        for flag in [
            "--max-concurrent-streams",
            "--request-timeout-ms",
            "--admin-request-timeout-ms",
            "--keepalive-timeout-secs",
            "--max-header-list-bytes",
            "--max-message-bytes",
        ] {
            let err = Cli::try_parse_from(["tollgate", "serve", flag, "0"]).unwrap_err().to_string();
            assert!(err.contains(flag), "{flag}: {err}");
        }
        let Command::Serve(s) = parse(&["serve", "--keepalive-interval-secs", "0"]) else { unreachable!() };
        assert_eq!(s.keepalive_interval(), None, "0 turns keepalive off");
    }
}
