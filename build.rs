//! Compiles `proto/` into Rust with tonic-prost-build and writes a descriptor
//! set that the server hands to tonic-reflection.
//!
//! The messages the HTTP/JSON API speaks (`src/api/http/`, docs/http.md) also
//! get serde and utoipa derives here, so that the JSON bodies and the OpenAPI
//! document are the proto's own messages: the same field names and the same
//! comments (which become the schema's descriptions), with no second copy to
//! drift. What the JSON side changes is listed below, each with its reason.

use std::{env, path::PathBuf};

/// Messages that are JSON bodies (requests, answers, or both). Unknown fields
/// are refused (a typo is an error, not an ignored field) and missing ones
/// take the proto3 default, as in gRPC.
const JSON_MESSAGES: &[&str] = &[
    // Authorizer.
    "AuthorizeRequest",
    "AuthorizeResponse",
    "RateLimitInfo",
    "OwnUsage",
    "OwnPlanUsage",
    "RefundRequest",
    "RefundResponse",
    // Admin: things, as answered and as written.
    "Throttle",
    "Quota",
    "ApiKey",
    "CreateApiKeyRequest",
    "CreateApiKeyResponse",
    "ListApiKeysResponse",
    "UpdateApiKeyRequest",
    "ImportWarning",
    "ImportApiKeysResponse",
    "RotateApiKeyRequest",
    "MethodSetting",
    "Stage",
    "PutStageRequest",
    "ListStagesResponse",
    "PlanStage",
    "UsagePlan",
    "CreateUsagePlanRequest",
    "ListUsagePlansResponse",
    "MethodThrottle",
    "UpdateUsagePlanRequest",
    "UsagePlanKeyRequest",
    "UsagePlanKey",
    "ListUsagePlanKeysResponse",
    "DailyUsage",
    "KeyUsage",
    "Usage",
    "UpdateUsageRequest",
    "UsageUpdated",
    "AuditChange",
    "AuditRecord",
    "ListAuditRecordsResponse",
    "Event",
    "ListEventsResponse",
];

/// Messages that are query strings (`?page_size=10&page_token=...`).
const QUERY_MESSAGES: &[&str] = &[
    "ListApiKeysRequest",
    "ListStagesRequest",
    "ListUsagePlansRequest",
    "ListUsagePlanKeysRequest",
    "GetUsageRequest",
    "ImportApiKeysRequest",
    "ListAuditRecordsRequest",
    "ListEventsRequest",
];

/// Fields the HTTP API takes from the URL path (`PATCH /v1/keys/{id}`) or, for
/// `csv`, from the raw body: left out of the JSON and the query string, so a
/// body cannot name a second id.
const FROM_PATH_OR_BODY: &[&str] = &[
    "UpdateApiKeyRequest.id",
    "RotateApiKeyRequest.id",
    "PutStageRequest.stage",
    "UpdateUsagePlanRequest.id",
    "UsagePlanKeyRequest.usage_plan_id",
    "UpdateUsageRequest.usage_plan_id",
    "UpdateUsageRequest.key_id",
    "ListUsagePlanKeysRequest.usage_plan_id",
    "GetUsageRequest.usage_plan_id",
    "ImportApiKeysRequest.csv",
    // Tag filters come as `?tag=KEY=VALUE`, repeated (src/api/http/json.rs,
    // `TaggedQuery`), which a query string cannot express as a map.
    "ListApiKeysRequest.tags",
    "ListUsagePlansRequest.tags",
];

/// Enums, written in JSON by their proto names (`"THROTTLED"`); prost drops
/// the `REASON_` / `LIMIT_KIND_` prefix of the zero value, which is put back.
const ENUMS: &[(&str, &str)] = &[("Reason", "REASON_UNSPECIFIED"), ("LimitKind", "LIMIT_KIND_UNSPECIFIED")];

/// Enum-typed fields (an `i32` in prost): written as the enum's name, and
/// described in OpenAPI as that enum.
/// (field, module of `crate::api::http::json` that reads and writes it, enum,
/// the enum's zero value).
const ENUM_FIELDS: &[(&str, &str, &str, &str)] = &[
    ("AuthorizeResponse.reason", "reason", "Reason", "REASON_UNSPECIFIED"),
    ("AuthorizeResponse.shadow_reason", "reason", "Reason", "REASON_UNSPECIFIED"),
    ("RateLimitInfo.kind", "limit_kind", "LimitKind", "LIMIT_KIND_UNSPECIFIED"),
    ("UsagePlan.admission", "admission", "Admission", "EXACT"),
    ("CreateUsagePlanRequest.admission", "admission", "Admission", "EXACT"),
];

/// Enums whose every value (the zero one too) is written without its prefix
/// (`"LEASED"`).
const PLAIN_ENUMS: &[&str] = &["Admission"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // A protoc shipped inside a crate, so that a fresh machine needs nothing
    // installed; an explicit PROTOC in the environment still wins.
    if env::var_os("PROTOC").is_none() {
        env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let protos = ["proto/tollgate/v1/authorizer.proto", "proto/tollgate/v1/admin.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut b = tonic_prost_build::configure().file_descriptor_set_path(out_dir.join("tollgate_descriptor.bin"));
    for m in JSON_MESSAGES {
        b = b.message_attribute(
            format!("tollgate.v1.{m}"),
            "#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)] \
             #[serde(default, deny_unknown_fields)]",
        );
    }
    for m in QUERY_MESSAGES {
        b = b.message_attribute(
            format!("tollgate.v1.{m}"),
            "#[derive(serde::Deserialize, utoipa::IntoParams)] \
             #[serde(default, deny_unknown_fields)] #[into_params(parameter_in = Query)]",
        );
    }
    for f in FROM_PATH_OR_BODY {
        b = b.field_attribute(format!("tollgate.v1.{f}"), "#[serde(skip)]");
    }
    for (e, zero) in ENUMS {
        b = b
            .enum_attribute(
                format!("tollgate.v1.{e}"),
                "#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)] \
                 #[serde(rename_all = \"SCREAMING_SNAKE_CASE\")]",
            )
            .field_attribute(format!("tollgate.v1.{e}.{zero}"), format!("#[serde(rename = \"{zero}\")]"));
    }
    for e in PLAIN_ENUMS {
        b = b.enum_attribute(
            format!("tollgate.v1.{e}"),
            "#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)] \
             #[serde(rename_all = \"SCREAMING_SNAKE_CASE\")]",
        );
    }
    // An optional enum field: by name, or absent.
    b = b.field_attribute(
        "tollgate.v1.UpdateUsagePlanRequest.admission",
        "#[serde(with = \"crate::api::http::json::admission_opt\")] \
         #[schema(value_type = Option<Admission>)]",
    );
    for (field, with, ty, zero) in ENUM_FIELDS {
        b = b.field_attribute(
            format!("tollgate.v1.{field}"),
            format!(
                "#[serde(with = \"crate::api::http::json::{with}\")] \
                 #[schema(value_type = {ty}, default = \"{zero}\")]"
            ),
        );
    }
    b.compile_protos(&protos, &["proto"])?;
    Ok(())
}
