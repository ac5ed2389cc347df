//! `tollgate refund`: gives back what one allowed decision consumed
//! (`Authorizer/Refund`; docs/semantics.md, "Refunds").

use std::process::ExitCode;

use clap::Args;

use crate::api::pb;

/// Arguments of `tollgate refund`.
#[derive(Debug, Args)]
pub struct RefundArgs {
    /// The server's data-plane address (its --listen).
    #[arg(long, env = "TOLLGATE_SERVER", default_value = super::DEFAULT_SERVER.as_str())]
    pub server: String,
    /// The `decision_id` of an allowed Authorize answer (`tollgate authorize`
    /// prints it).
    #[arg(long)]
    pub decision_id: String,
    /// Print the JSON object `POST /v1/refund` answers.
    #[arg(long)]
    pub json: bool,
    /// TLS, for an https:// server.
    #[command(flatten)]
    pub tls: super::TlsOpts,
}

/// Runs the call: exit 0 when given back, 1 when refused (refunded before,
/// too late, forged, gone), 2 when the server could not be asked.
pub async fn run(args: RefundArgs) -> ExitCode {
    let mut client = match super::authorizer(&args.server, &args.tls).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let r = match client.refund(pb::RefundRequest { decision_id: args.decision_id }).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            use tonic::Code;
            let refused = matches!(
                s.code(),
                Code::InvalidArgument | Code::AlreadyExists | Code::FailedPrecondition | Code::NotFound
            );
            let cause = if refused { String::new() } else { super::status_cause(&s, &args.server, &args.tls) };
            eprintln!("error: {}: {}{cause}", super::admin::code_name(s.code()), s.message());
            return if refused { ExitCode::FAILURE } else { ExitCode::from(2) };
        }
    };
    if args.json {
        match serde_json::to_string(&r) {
            Ok(j) => super::emit(&format!("{j}\n")),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    let mut s = format!("REFUNDED {} to key {} in plan {}", r.cost, r.key_id, r.plan_id);
    if r.has_quota {
        s.push_str(&format!(", quota remaining {}", r.quota_remaining));
    }
    s.push('\n');
    super::emit(&s);
    ExitCode::SUCCESS
}
