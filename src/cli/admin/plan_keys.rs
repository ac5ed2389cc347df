//! `tollgate plan-keys`: subscribe keys to usage plans (API Gateway's
//! `create-usage-plan-key`, `delete-usage-plan-key`, `get-usage-plan-keys`).

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::keys::keys_table;
use super::{all_pages, client, emit_json, finish, key_json, AdminOpts, Outcome};
use crate::api::pb;

/// Arguments of `tollgate plan-keys`.
#[derive(Debug, Args)]
pub struct PlanKeysArgs {
    #[command(flatten)]
    pub opts: AdminOpts,
    /// What to do.
    #[command(subcommand)]
    pub command: PlanKeysCommand,
}

/// The `plan-keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum PlanKeysCommand {
    /// Subscribe a key to a plan (refused when another plan of the key has
    /// one of the plan's stages).
    Add {
        /// The plan's id.
        plan_id: String,
        /// The key's id.
        key_id: String,
    },
    /// Unsubscribe a key from a plan.
    Remove {
        /// The plan's id.
        plan_id: String,
        /// The key's id.
        key_id: String,
    },
    /// List the keys of a plan (every page).
    List {
        /// The plan's id.
        plan_id: String,
        /// Only keys whose name starts with this.
        #[arg(long, default_value = "", hide_default_value = true)]
        name_prefix: String,
    },
}

/// Runs `tollgate plan-keys ...`.
pub async fn run(args: PlanKeysArgs) -> std::process::ExitCode {
    let outcome = dispatch(&args.opts, args.command).await;
    finish(&args.opts, outcome)
}

async fn dispatch(opts: &AdminOpts, cmd: PlanKeysCommand) -> Outcome {
    let mut c = client(opts).await?;
    match cmd {
        PlanKeysCommand::Add { plan_id, key_id } => {
            let r = c.add_usage_plan_key(pb::UsagePlanKeyRequest { usage_plan_id: plan_id, key_id }).await?;
            let r = r.into_inner();
            let key = r.key.unwrap_or_default();
            if opts.json {
                emit_json(&json!({ "usage_plan_id": r.usage_plan_id, "key": key_json(&key) }));
            } else {
                crate::cli::emit(&format!("key {} is now in usage plan {}\n", key.id, r.usage_plan_id));
            }
        }
        PlanKeysCommand::Remove { plan_id, key_id } => {
            let req = pb::UsagePlanKeyRequest { usage_plan_id: plan_id.clone(), key_id: key_id.clone() };
            c.remove_usage_plan_key(req).await?;
            if opts.json {
                emit_json(&json!({ "usage_plan_id": plan_id, "key_id": key_id, "removed": true }));
            } else {
                crate::cli::emit(&format!("key {key_id} is no longer in usage plan {plan_id}\n"));
            }
        }
        PlanKeysCommand::List { plan_id, name_prefix } => {
            let keys = all_pages(|page_token| {
                let req = pb::ListUsagePlanKeysRequest {
                    usage_plan_id: plan_id.clone(),
                    page_size: 0,
                    page_token,
                    name_prefix: name_prefix.clone(),
                };
                let mut c = c.clone();
                async move {
                    let r = c.list_usage_plan_keys(req).await?.into_inner();
                    Ok((r.keys, r.next_page_token))
                }
            })
            .await?;
            if opts.json {
                let keys: Vec<Value> = keys.iter().map(|k| Value::Object(key_json(k))).collect();
                emit_json(&json!({ "usage_plan_id": plan_id, "keys": keys }));
            } else {
                crate::cli::emit(&keys_table(&keys));
            }
        }
    }
    Ok(())
}
