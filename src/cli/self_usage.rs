//! `tollgate self`: a key's own usage (`Authorizer/GetOwnUsage`), printed for
//! a person or as the JSON of `GET /v1/self`.

use std::process::ExitCode;

use clap::Args;

use crate::api::pb;

/// Arguments of `tollgate self`.
#[derive(Debug, Args)]
pub struct SelfArgs {
    /// The server's data-plane address (its --listen).
    #[arg(long, env = "TOLLGATE_SERVER", default_value = super::DEFAULT_SERVER.as_str())]
    pub server: String,
    /// The API key value (better from the environment: command lines are
    /// visible to other users of the machine).
    #[arg(long, env = "TOLLGATE_API_KEY", hide_env_values = true)]
    pub key: String,
    /// Print the JSON object `GET /v1/self` answers.
    #[arg(long)]
    pub json: bool,
    /// TLS, for an https:// server.
    #[command(flatten)]
    pub tls: super::TlsOpts,
}

/// Runs the call.
pub async fn run(args: SelfArgs) -> ExitCode {
    let mut client = match super::authorizer(&args.server, &args.tls).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let r = match client.get_own_usage(pb::GetOwnUsageRequest { api_key: args.key }).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            let cause = super::status_cause(&s, &args.server, &args.tls);
            eprintln!("error: {}: {}{cause}", super::admin::code_name(s.code()), s.message());
            return ExitCode::from(2);
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
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "key {}", r.key_id);
    if r.plans.is_empty() {
        let _ = writeln!(s, "  no usage plans");
    }
    for p in &r.plans {
        let _ = writeln!(s, "  plan {} ({}), stages {}", p.plan_id, p.plan_name, p.stages.join(", "));
        if p.throttle_burst_limit > 0 {
            let _ = writeln!(s, "    throttle: {}/s, burst {}", p.throttle_rate_limit, p.throttle_burst_limit);
        }
        if p.has_quota {
            let _ = writeln!(
                s,
                "    quota: {} per {}, {} used, {} left, resets {}{}",
                p.quota_limit,
                p.quota_period,
                p.quota_used,
                p.quota_remaining,
                p.quota_reset_at,
                if p.quota_time_zone.is_empty() {
                    String::new()
                } else {
                    format!(" (periods in {})", p.quota_time_zone)
                }
            );
        }
        let _ = writeln!(s, "    used today: {}", p.used_today);
    }
    super::emit(&s);
    ExitCode::SUCCESS
}
