//! `tollgate usage`: daily usage of a plan's keys (API Gateway's `get-usage`)
//! and grants of extra quota (`update-usage`).

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::table::Table;
use super::{client, date_after, emit_json, finish, parse_date, AdminOpts, Failure, Outcome};
use crate::api::pb;

/// Arguments of `tollgate usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub opts: AdminOpts,
    /// What to do.
    #[command(subcommand)]
    pub command: UsageCommand,
}

/// The `usage` subcommands.
#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Requests per key per UTC day, and the quota left at the end of each
    /// day (at most 90 days per call).
    Get(GetArgs),
    /// Set the quota a key has left in the current period (may exceed the
    /// plan's limit: a temporary extension).
    Update(UpdateArgs),
}

/// Arguments of `usage get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The plan's id.
    pub plan_id: String,
    /// The first day, YYYY-MM-DD (UTC, or the plan's quota's time zone).
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub start: String,
    /// The last day, YYYY-MM-DD (UTC, or the plan's quota's time zone),
    /// inclusive.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub end: String,
    /// Only this key.
    #[arg(long, value_name = "ID")]
    pub key: Option<String>,
    /// Keys per page, 1 to 500 (server default 25).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// The page to read (the position of the previous answer).
    #[arg(long, value_name = "P", default_value = "", hide_default_value = true)]
    pub position: String,
    /// Print CSV: key_id,date,used,remaining (one row per key per day).
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
}

/// Arguments of `usage update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The plan's id.
    pub plan_id: String,
    /// The key's id.
    pub key_id: String,
    /// The quota the key has left in the current period.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub remaining: i64,
}

/// Runs `tollgate usage ...`.
pub async fn run(args: UsageArgs) -> std::process::ExitCode {
    let outcome = dispatch(&args.opts, args.command).await;
    finish(&args.opts, outcome)
}

async fn dispatch(opts: &AdminOpts, cmd: UsageCommand) -> Outcome {
    match cmd {
        UsageCommand::Get(a) => get(opts, a).await,
        UsageCommand::Update(a) => {
            let req = pb::UpdateUsageRequest { usage_plan_id: a.plan_id, key_id: a.key_id, remaining: a.remaining };
            let r = client(opts).await?.update_usage(req).await?.into_inner();
            if opts.json {
                emit_json(&json!({
                    "usage_plan_id": r.usage_plan_id,
                    "key_id": r.key_id,
                    "remaining": r.remaining,
                    "period_end_ms": r.period_end_ms,
                    "period_end": super::rfc3339_ms(r.period_end_ms),
                }));
            } else {
                crate::cli::emit(&format!(
                    "key {} of usage plan {}: {} request(s) left until {}\n",
                    r.key_id,
                    r.usage_plan_id,
                    r.remaining,
                    super::rfc3339_s(r.period_end_ms)
                ));
            }
            Ok(())
        }
    }
}

async fn get(opts: &AdminOpts, a: GetArgs) -> Outcome {
    let start = parse_date("--start", &a.start)?;
    parse_date("--end", &a.end)?;
    let req = pb::GetUsageRequest {
        usage_plan_id: a.plan_id,
        start_date: a.start,
        end_date: a.end,
        key_id: a.key,
        limit: a.limit.unwrap_or(0),
        position: a.position,
    };
    let u = client(opts).await?.get_usage(req).await?.into_inner();
    // Days are counted from the start date the server answers with.
    let start = parse_date("start_date", &u.start_date).unwrap_or(start);
    let mut keys: Vec<(&String, &pb::KeyUsage)> = u.items.iter().collect();
    keys.sort_by(|x, y| x.0.cmp(y.0));
    if opts.json {
        let items: Map<String, Value> = keys
            .iter()
            .map(|(k, ku)| {
                let days: Vec<Value> = ku.days.iter().map(|d| json!([d.used, d.remaining])).collect();
                ((*k).clone(), Value::Array(days))
            })
            .collect();
        emit_json(&json!({
            "usage_plan_id": u.usage_plan_id,
            "start_date": u.start_date,
            "end_date": u.end_date,
            "items": items,
            "position": (!u.position.is_empty()).then_some(&u.position),
        }));
    } else if a.csv {
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut rows = vec![["key_id".to_string(), "date".into(), "used".into(), "remaining".into()]];
        for (k, ku) in &keys {
            for (i, d) in ku.days.iter().enumerate() {
                let remaining = d.remaining.map(|r| r.to_string()).unwrap_or_default();
                rows.push([(*k).clone(), date_after(start, i as u64), d.used.to_string(), remaining]);
            }
        }
        for r in &rows {
            w.write_record(r).map_err(|e| Failure::Message(format!("cannot write CSV: {e}")))?;
        }
        let bytes = w.into_inner().map_err(|e| Failure::Message(format!("cannot write CSV: {e}")))?;
        crate::cli::emit(&String::from_utf8_lossy(&bytes));
    } else {
        let zone = if u.time_zone.is_empty() { "UTC" } else { u.time_zone.as_str() };
        let mut out = format!("usage plan {}, {} to {} ({zone})\n", u.usage_plan_id, u.start_date, u.end_date);
        if keys.is_empty() {
            out.push_str("no keys\n");
        } else {
            let mut t = Table::new(&["KEY", "DATE", "USED", "REMAINING"]);
            for (k, ku) in &keys {
                for (i, d) in ku.days.iter().enumerate() {
                    let remaining = d.remaining.map(|r| r.to_string()).unwrap_or_else(|| "-".into());
                    t.row(vec![(*k).clone(), date_after(start, i as u64), d.used.to_string(), remaining]);
                }
            }
            out.push_str(&t.render());
        }
        crate::cli::emit(&out);
    }
    if !opts.json && !u.position.is_empty() {
        super::note(&format!("more keys: --position {}", u.position));
    }
    Ok(())
}
