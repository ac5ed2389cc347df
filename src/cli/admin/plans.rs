//! `tollgate plans`: usage plans (a throttle and a quota per key, over a set
//! of stages, with optional per-method throttles).

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::table::{kv, Table};
use super::{
    all_pages, client, emit_json, finish, parse_method_throttle, parse_period, parse_stage_method, parse_tag,
    plan_json, tags_map, tags_text, throttle_text, AdminOpts, Outcome,
};
use crate::api::pb;

/// Arguments of `tollgate plans`.
#[derive(Debug, Args)]
pub struct PlansArgs {
    #[command(flatten)]
    pub opts: AdminOpts,
    /// What to do.
    #[command(subcommand)]
    pub command: PlansCommand,
}

/// The `plans` subcommands.
#[derive(Debug, Subcommand)]
pub enum PlansCommand {
    /// Create a usage plan.
    Create(CreateArgs),
    /// List usage plans.
    List {
        /// Only the plans this key is in.
        #[arg(long, value_name = "K", default_value = "", hide_default_value = true)]
        key_id: String,
        /// Only plans with this tag, KEY=VALUE (repeatable: all must match).
        #[arg(long, value_name = "KEY=VALUE", value_parser = parse_tag)]
        tag: Vec<(String, String)>,
    },
    /// Show a usage plan.
    Get {
        /// The plan's id.
        id: String,
    },
    /// Change a usage plan: only what is given changes.
    Update(UpdateArgs),
    /// Delete a usage plan (its keys stay, unsubscribed).
    Delete {
        /// The plan's id.
        id: String,
    },
}

/// Arguments of `plans create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The plan's name.
    #[arg(long)]
    pub name: String,
    /// A stage of the plan, API/STAGE (repeatable).
    #[arg(long, value_name = "API/STAGE", required = true)]
    pub stage: Vec<String>,
    /// Per-key throttle, requests per second (with --burst).
    #[arg(long, value_name = "R", requires = "burst", allow_negative_numbers = true)]
    pub rate: Option<f64>,
    /// Per-key bucket size (with --rate).
    #[arg(long, value_name = "B", requires = "rate")]
    pub burst: Option<u64>,
    /// Requests per key per quota period (with --quota-period).
    #[arg(long, value_name = "Q", requires = "quota_period")]
    pub quota_limit: Option<u64>,
    /// DAY, WEEK (from Monday) or MONTH, in UTC unless --quota-time-zone
    /// (with --quota-limit).
    #[arg(long, value_name = "DAY|WEEK|MONTH", value_parser = parse_period, requires = "quota_limit")]
    pub quota_period: Option<String>,
    /// Subtracted from the quota limit in the plan's first period.
    #[arg(long, value_name = "O", requires = "quota_limit")]
    pub quota_offset: Option<u64>,
    /// Periods start at local midnight of this IANA time zone, e.g.
    /// Asia/Tokyo (with --quota-limit; default UTC).
    #[arg(long, value_name = "ZONE", requires = "quota_limit")]
    pub quota_time_zone: Option<String>,
    /// MONTH only: the day of the month (1-28) periods start on (with
    /// --quota-limit; default the 1st).
    #[arg(long, value_name = "DAY", requires = "quota_limit")]
    pub quota_anchor_day: Option<u32>,
    /// A description.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub description: String,
    /// The plan's id ([A-Za-z0-9_.-], 1 to 64); generated when omitted.
    #[arg(long)]
    pub id: Option<String>,
    /// How its limits are decided: exact (every request asks the store) or
    /// leased (replicas lease small blocks of tokens; docs/semantics.md).
    #[arg(long, value_name = "exact|leased", value_parser = parse_admission, default_value = "exact")]
    pub admission: pb::Admission,
    /// A shadow plan: decides and counts as usual but never denies for its
    /// own limits; answers say `shadow_denied` (docs/semantics.md).
    #[arg(long)]
    pub shadow: bool,
    /// A quota alert: a percentage of the quota (1-100, repeatable, at most
    /// 10; needs a quota). Crossing it records one event per key and
    /// period (`tollgate events list`; docs/semantics.md, "Quota alerts").
    #[arg(long = "alert", value_name = "PERCENT", requires = "quota_limit")]
    pub alerts: Vec<u32>,
    /// A tag, KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tag: Vec<(String, String)>,
}

/// Arguments of `plans update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The plan's id.
    pub id: String,
    /// A new name.
    #[arg(long)]
    pub name: Option<String>,
    /// A new description.
    #[arg(long)]
    pub description: Option<String>,
    /// A new per-key throttle, requests per second (with --burst).
    #[arg(long, value_name = "R", requires = "burst", allow_negative_numbers = true)]
    pub rate: Option<f64>,
    /// Its bucket size (with --rate).
    #[arg(long, value_name = "B", requires = "rate")]
    pub burst: Option<u64>,
    /// Remove the per-key throttle.
    #[arg(long, conflicts_with_all = ["rate", "burst"])]
    pub no_throttle: bool,
    /// A new quota: requests per period (with --quota-period).
    #[arg(long, value_name = "Q", requires = "quota_period")]
    pub quota_limit: Option<u64>,
    /// DAY, WEEK or MONTH (with --quota-limit).
    #[arg(long, value_name = "P", value_parser = parse_period, requires = "quota_limit")]
    pub quota_period: Option<String>,
    /// The new quota's offset (default 0).
    #[arg(long, value_name = "O", requires = "quota_limit")]
    pub quota_offset: Option<u64>,
    /// The new quota's IANA time zone, e.g. Asia/Tokyo (default UTC).
    #[arg(long, value_name = "ZONE", requires = "quota_limit")]
    pub quota_time_zone: Option<String>,
    /// The new MONTH quota's anchor day, 1-28 (default the 1st).
    #[arg(long, value_name = "DAY", requires = "quota_limit")]
    pub quota_anchor_day: Option<u32>,
    /// Remove the quota.
    #[arg(long, conflicts_with_all = ["quota_limit", "quota_period", "quota_offset", "quota_time_zone", "quota_anchor_day"])]
    pub no_quota: bool,
    /// Add a stage, API/STAGE (repeatable).
    #[arg(long, value_name = "S")]
    pub add_stage: Vec<String>,
    /// Remove a stage (repeatable).
    #[arg(long, value_name = "S")]
    pub remove_stage: Vec<String>,
    /// Set a per-key throttle of one method, STAGE:METHOD:RATE:BURST, e.g.
    /// petstore/prod:/pets/GET:10:20 (repeatable).
    #[arg(long, value_name = "STAGE:METHOD:RATE:BURST", value_parser = parse_method_throttle)]
    pub method_throttle: Vec<pb::MethodThrottle>,
    /// Remove the throttle of one method, STAGE:METHOD (repeatable).
    #[arg(long, value_name = "STAGE:METHOD", value_parser = parse_stage_method)]
    pub remove_method_throttle: Vec<pb::MethodThrottle>,
    /// Set how its limits are decided: exact or leased.
    #[arg(long, value_name = "exact|leased", value_parser = parse_admission)]
    pub admission: Option<pb::Admission>,
    /// Make it a shadow plan (true) or an enforcing one (false).
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
    pub shadow: Option<bool>,
    /// The plan's quota alerts, percent of the quota (repeatable): they
    /// replace all its alerts.
    #[arg(long = "alert", value_name = "PERCENT", conflicts_with = "clear_alerts")]
    pub alerts: Vec<u32>,
    /// Remove all the plan's quota alerts.
    #[arg(long)]
    pub clear_alerts: bool,
    /// The plan's tags, KEY=VALUE (repeatable): they replace all its tags.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_tag, conflicts_with = "clear_tags")]
    pub tag: Vec<(String, String)>,
    /// Remove all the plan's tags.
    #[arg(long)]
    pub clear_tags: bool,
}

fn parse_admission(s: &str) -> Result<pb::Admission, String> {
    match s.to_ascii_lowercase().as_str() {
        "exact" => Ok(pb::Admission::Exact),
        "leased" => Ok(pb::Admission::Leased),
        _ => Err(format!("{s:?} is not an admission: exact or leased")),
    }
}

/// Runs `tollgate plans ...`.
pub async fn run(args: PlansArgs) -> std::process::ExitCode {
    let outcome = dispatch(&args.opts, args.command).await;
    finish(&args.opts, outcome)
}

fn throttle(rate: Option<f64>, burst: Option<u64>) -> Option<pb::Throttle> {
    match (rate, burst) {
        (Some(rate_limit), Some(burst_limit)) => Some(pb::Throttle { rate_limit, burst_limit }),
        _ => None,
    }
}

fn quota(
    limit: Option<u64>,
    period: Option<String>,
    offset: Option<u64>,
    time_zone: Option<String>,
    anchor_day: Option<u32>,
) -> Option<pb::Quota> {
    match (limit, period) {
        (Some(limit), Some(period)) => Some(pb::Quota {
            limit,
            period,
            offset: offset.unwrap_or(0),
            time_zone: time_zone.unwrap_or_default(),
            anchor_day: anchor_day.unwrap_or(0),
        }),
        _ => None,
    }
}

fn plan_stage(stage: String) -> pb::PlanStage {
    pb::PlanStage { stage, throttle: Default::default() }
}

async fn dispatch(opts: &AdminOpts, cmd: PlansCommand) -> Outcome {
    let mut c = client(opts).await?;
    match cmd {
        PlansCommand::Create(a) => {
            let req = pb::CreateUsagePlanRequest {
                name: a.name,
                description: a.description,
                throttle: throttle(a.rate, a.burst),
                quota: quota(a.quota_limit, a.quota_period, a.quota_offset, a.quota_time_zone, a.quota_anchor_day),
                api_stages: a.stage.into_iter().map(plan_stage).collect(),
                id: a.id,
                admission: a.admission as i32,
                shadow: a.shadow,
                alerts: a.alerts,
                tags: tags_map(a.tag),
            };
            let p = c.create_usage_plan(req).await?.into_inner();
            print_plan(opts, &p);
        }
        PlansCommand::List { key_id, tag } => {
            let tags = tags_map(tag);
            let plans = all_pages(|page_token| {
                let req =
                    pb::ListUsagePlansRequest { page_size: 0, page_token, key_id: key_id.clone(), tags: tags.clone() };
                let mut c = c.clone();
                async move {
                    let r = c.list_usage_plans(req).await?.into_inner();
                    Ok((r.plans, r.next_page_token))
                }
            })
            .await?;
            if opts.json {
                let plans: Vec<Value> = plans.iter().map(plan_json).collect();
                emit_json(&json!({ "plans": plans }));
            } else if plans.is_empty() {
                crate::cli::emit("no usage plans\n");
            } else {
                let mut t = Table::new(&["ID", "NAME", "THROTTLE", "QUOTA", "STAGES", "TAGS"]);
                for p in &plans {
                    let stages: Vec<&str> = p.api_stages.iter().map(|s| s.stage.as_str()).collect();
                    t.row(vec![
                        p.id.clone(),
                        p.name.clone(),
                        throttle_text(p.throttle.as_ref()),
                        quota_text(p.quota.as_ref()),
                        stages.join(","),
                        tags_text(&p.tags),
                    ]);
                }
                crate::cli::emit(&t.render());
            }
        }
        PlansCommand::Get { id } => {
            let p = c.get_usage_plan(pb::GetUsagePlanRequest { id }).await?.into_inner();
            print_plan(opts, &p);
        }
        PlansCommand::Update(a) => {
            let req = pb::UpdateUsagePlanRequest {
                id: a.id,
                name: a.name,
                description: a.description,
                throttle: throttle(a.rate, a.burst),
                clear_throttle: a.no_throttle,
                quota: quota(a.quota_limit, a.quota_period, a.quota_offset, a.quota_time_zone, a.quota_anchor_day),
                clear_quota: a.no_quota,
                add_stages: a.add_stage.into_iter().map(plan_stage).collect(),
                remove_stages: a.remove_stage,
                set_method_throttles: a.method_throttle,
                remove_method_throttles: a.remove_method_throttle,
                admission: a.admission.map(|a| a as i32),
                shadow: a.shadow,
                alerts: a.alerts,
                clear_alerts: a.clear_alerts,
                tags: tags_map(a.tag),
                clear_tags: a.clear_tags,
            };
            let p = c.update_usage_plan(req).await?.into_inner();
            print_plan(opts, &p);
        }
        PlansCommand::Delete { id } => {
            c.delete_usage_plan(pb::DeleteUsagePlanRequest { id: id.clone() }).await?;
            if opts.json {
                emit_json(&json!({ "id": id, "deleted": true }));
            } else {
                crate::cli::emit(&format!("deleted usage plan {id}\n"));
            }
        }
    }
    Ok(())
}

fn quota_text(q: Option<&pb::Quota>) -> String {
    let Some(q) = q else { return "-".into() };
    let mut out = format!("{} per {}", q.limit, q.period);
    if q.anchor_day > 1 {
        out.push_str(&format!(" from day {}", q.anchor_day));
    }
    if !q.time_zone.is_empty() {
        out.push_str(&format!(" in {}", q.time_zone));
    }
    if q.offset > 0 {
        out.push_str(&format!(" (offset {})", q.offset));
    }
    out
}

/// Quota alerts as shown: `80%, 100% of the quota`, or `-`.
fn alerts_text(alerts: &[u32]) -> String {
    if alerts.is_empty() {
        return "-".into();
    }
    let each: Vec<String> = alerts.iter().map(|a| format!("{a}%")).collect();
    format!("{} of the quota", each.join(", "))
}

fn print_plan(opts: &AdminOpts, p: &pb::UsagePlan) {
    if opts.json {
        emit_json(&plan_json(p));
        return;
    }
    let mut out = kv(&[
        ("id", p.id.clone()),
        ("name", p.name.clone()),
        ("description", p.description.clone()),
        ("throttle", throttle_text(p.throttle.as_ref())),
        ("quota", quota_text(p.quota.as_ref())),
        ("admission", super::admission_text(p.admission).into()),
        ("shadow", if p.shadow { "yes: never denies for its own limits" } else { "no" }.into()),
        ("alerts", alerts_text(&p.alerts)),
        ("created at", if p.created_at_ms == 0 { "-".into() } else { super::rfc3339_s(p.created_at_ms) }),
        ("tags", tags_text(&p.tags)),
    ]);
    if p.api_stages.is_empty() {
        out.push_str("no stages\n");
    } else {
        let mut t = Table::new(&["STAGE", "METHOD", "THROTTLE (PER KEY)"]);
        for s in &p.api_stages {
            if s.throttle.is_empty() {
                t.row(vec![s.stage.clone(), "-".into(), "-".into()]);
            }
            let mut methods: Vec<_> = s.throttle.iter().collect();
            methods.sort_by(|a, b| a.0.cmp(b.0));
            for (m, th) in methods {
                t.row(vec![s.stage.clone(), m.clone(), throttle_text(Some(th))]);
            }
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    crate::cli::emit(&out);
}
