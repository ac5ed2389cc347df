//! `tollgate authorize`: one Authorize call, printed for a person or as JSON.
//! Exits 0 for any answer (allowed or denied); non-zero only when the call
//! itself fails.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use crate::api::pb;

/// Arguments of `tollgate authorize`.
#[derive(Debug, Args)]
pub struct AuthorizeArgs {
    /// The server's data-plane address (its --listen).
    #[arg(long, env = "TOLLGATE_SERVER", default_value = super::DEFAULT_SERVER.as_str())]
    pub server: String,
    /// The API key value (omit to ask as a caller without a key).
    #[arg(long)]
    pub key: Option<String>,
    /// The stage, API/STAGE.
    #[arg(long)]
    pub stage: String,
    /// Resource path and HTTP method, e.g. /pets/GET.
    #[arg(long)]
    pub method: String,
    /// Units to consume.
    #[arg(long)]
    pub cost: Option<u64>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// TLS, for an https:// server.
    #[command(flatten)]
    pub tls: super::TlsOpts,
}

/// Runs the call.
pub async fn run(args: AuthorizeArgs) -> ExitCode {
    let mut client = match super::authorizer(&args.server, &args.tls).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let req = pb::AuthorizeRequest { api_key: args.key, stage: args.stage, method: args.method, cost: args.cost };
    let r = match client.authorize(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            let cause = super::status_cause(&s, &args.server, &args.tls);
            eprintln!("error: {}: {}{cause}", super::admin::code_name(s.code()), s.message());
            return ExitCode::from(2);
        }
    };
    let reason = r.reason().as_str_name();
    let rl = r.rate_limit.as_ref();
    if args.json {
        let v = json!({
            "allowed": r.allowed,
            "reason": reason,
            "http_status": r.http_status,
            "message": r.message,
            "key_id": (!r.key_id.is_empty()).then_some(&r.key_id),
            "plan_id": (!r.plan_id.is_empty()).then_some(&r.plan_id),
            "limit_kind": rl.map(|l| l.kind().as_str_name()),
            "limit": rl.map(|l| l.limit),
            "remaining": rl.map(|l| l.remaining),
            "reset_ms": rl.map(|l| l.reset_ms),
            "window_secs": rl.map(|l| l.window_secs),
            "retry_after_ms": r.retry_after_ms,
            "shadow_denied": r.shadow_denied,
            "shadow_reason": r.shadow_denied.then(|| r.shadow_reason().as_str_name()),
            "decision_id": (!r.decision_id.is_empty()).then_some(&r.decision_id),
        });
        super::emit(&format!("{v}\n"));
    } else {
        use std::fmt::Write;
        let mut s = String::new();
        let verdict = if r.allowed { "ALLOWED" } else { "DENIED" };
        let _ = write!(s, "{verdict} {} {} ({reason})", r.http_status, r.message);
        if !r.key_id.is_empty() {
            let _ = write!(s, "  key {}", r.key_id);
        }
        if !r.plan_id.is_empty() {
            let _ = write!(s, "  plan {}", r.plan_id);
        }
        s.push('\n');
        if let Some(l) = rl {
            let _ = writeln!(
                s,
                "  {}: limit {}, remaining {}, resets in {:.1}s",
                l.kind().as_str_name(),
                l.limit,
                l.remaining,
                l.reset_ms as f64 / 1000.0
            );
        }
        if let Some(ms) = r.retry_after_ms {
            let _ = writeln!(s, "  retry after {:.1}s", ms as f64 / 1000.0);
        }
        if r.shadow_denied {
            let _ = writeln!(s, "  shadow plan: would have been DENIED ({})", r.shadow_reason().as_str_name());
        }
        if !r.decision_id.is_empty() {
            let _ = writeln!(s, "  decision id {} (tollgate refund --decision-id ...)", r.decision_id);
        }
        super::emit(&s);
    }
    ExitCode::SUCCESS
}
