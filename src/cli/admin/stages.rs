//! `tollgate stages`: APIs, their stages and the stages' method settings
//! (API Gateway's stage-level method throttling and `api_key_required`).

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::table::{kv, Table};
use super::{client, emit_json, finish, stage_json, throttle_text, AdminOpts, Outcome};
use crate::api::pb;

/// Arguments of `tollgate stages`.
#[derive(Debug, Args)]
pub struct StagesArgs {
    #[command(flatten)]
    pub opts: AdminOpts,
    /// What to do.
    #[command(subcommand)]
    pub command: StagesCommand,
}

/// The `stages` subcommands.
#[derive(Debug, Subcommand)]
pub enum StagesCommand {
    /// Create or update a stage (and its API): `stages put petstore/prod
    /// --method /pets/GET --rate 100 --burst 200`. One --method per call;
    /// run the command again to set more methods.
    Put(PutArgs),
    /// Show a stage and its method settings.
    Get {
        /// API/STAGE.
        stage: String,
    },
    /// List stages.
    List {
        /// Only the stages of this API.
        #[arg(long, value_name = "API", default_value = "", hide_default_value = true)]
        api: String,
    },
    /// Delete a stage.
    Delete {
        /// API/STAGE.
        stage: String,
    },
    /// Delete an API with all its stages.
    DeleteApi {
        /// The API's id.
        api: String,
    },
}

/// Arguments of `stages put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// API/STAGE, e.g. petstore/prod; created when missing.
    pub stage: String,
    /// The API's name (kept when omitted).
    #[arg(long, value_name = "N")]
    pub api_name: Option<String>,
    /// A method to set (its settings are replaced as a whole): /pets/GET,
    /// /pets/{petId}/DELETE, or */* for every method.
    #[arg(long, value_name = "M")]
    pub method: Option<String>,
    /// Throttle of the method for all callers together, requests per second
    /// (with --burst).
    #[arg(long, value_name = "R", requires_all = ["method", "burst"], allow_negative_numbers = true)]
    pub rate: Option<f64>,
    /// Bucket size of that throttle (with --rate).
    #[arg(long, value_name = "B", requires_all = ["method", "rate"])]
    pub burst: Option<u64>,
    /// Callers of the method need no API key (usage plans do not apply to it).
    #[arg(long, requires = "method")]
    pub no_key_required: bool,
    /// A method whose settings to remove (repeatable).
    #[arg(long, value_name = "M")]
    pub remove_method: Vec<String>,
}

/// Runs `tollgate stages ...`.
pub async fn run(args: StagesArgs) -> std::process::ExitCode {
    let outcome = dispatch(&args.opts, args.command).await;
    finish(&args.opts, outcome)
}

async fn dispatch(opts: &AdminOpts, cmd: StagesCommand) -> Outcome {
    let mut c = client(opts).await?;
    match cmd {
        StagesCommand::Put(a) => {
            let methods = match a.method {
                Some(method) => vec![pb::MethodSetting {
                    method,
                    throttle: match (a.rate, a.burst) {
                        (Some(rate_limit), Some(burst_limit)) => Some(pb::Throttle { rate_limit, burst_limit }),
                        _ => None,
                    },
                    api_key_required: a.no_key_required.then_some(false),
                }],
                None => Vec::new(),
            };
            let req =
                pb::PutStageRequest { stage: a.stage, api_name: a.api_name, methods, remove_methods: a.remove_method };
            let s = c.put_stage(req).await?.into_inner();
            print_stage(opts, &s);
        }
        StagesCommand::Get { stage } => {
            let s = c.get_stage(pb::GetStageRequest { stage }).await?.into_inner();
            print_stage(opts, &s);
        }
        StagesCommand::List { api } => {
            let r = c.list_stages(pb::ListStagesRequest { api_id: api }).await?.into_inner();
            if opts.json {
                let stages: Vec<Value> = r.stages.iter().map(stage_json).collect();
                emit_json(&json!({ "stages": stages }));
            } else if r.stages.is_empty() {
                crate::cli::emit("no stages\n");
            } else {
                let mut t = Table::new(&["STAGE", "API NAME", "METHODS", "PLANS"]);
                for s in &r.stages {
                    let methods: Vec<&str> = s.methods.iter().map(|m| m.method.as_str()).collect();
                    t.row(vec![s.stage.clone(), s.api_name.clone(), methods.join(" "), s.usage_plan_ids.join(",")]);
                }
                crate::cli::emit(&t.render());
            }
        }
        StagesCommand::Delete { stage } => {
            c.delete_stage(pb::DeleteStageRequest { stage: stage.clone() }).await?;
            if opts.json {
                emit_json(&json!({ "stage": stage, "deleted": true }));
            } else {
                crate::cli::emit(&format!("deleted stage {stage}\n"));
            }
        }
        StagesCommand::DeleteApi { api } => {
            c.delete_api(pb::DeleteApiRequest { api_id: api.clone() }).await?;
            if opts.json {
                emit_json(&json!({ "api_id": api, "deleted": true }));
            } else {
                crate::cli::emit(&format!("deleted API {api}\n"));
            }
        }
    }
    Ok(())
}

fn print_stage(opts: &AdminOpts, s: &pb::Stage) {
    if opts.json {
        emit_json(&stage_json(s));
        return;
    }
    let plans = if s.usage_plan_ids.is_empty() { "-".to_string() } else { s.usage_plan_ids.join(", ") };
    let mut out = kv(&[("stage", s.stage.clone()), ("api name", s.api_name.clone()), ("usage plans", plans)]);
    if s.methods.is_empty() {
        out.push_str("no method settings\n");
    } else {
        let mut t = Table::new(&["METHOD", "THROTTLE (ALL CALLERS)", "KEY REQUIRED"]);
        for m in &s.methods {
            t.row(vec![
                m.method.clone(),
                throttle_text(m.throttle.as_ref()),
                m.api_key_required.unwrap_or(true).to_string(),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    crate::cli::emit(&out);
}
