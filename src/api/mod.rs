//! The wire: gRPC services that turn requests into domain calls and answers
//! back into each protocol's shape.
//!
//! - [`authorizer`]: `tollgate.v1.Authorizer` (native).
//! - [`admin`]: `tollgate.v1.Admin`, behind [`access`]: admin tokens, roles,
//!   and the one table of the role each Admin operation needs.
//! - [`envoy_authz`]: Envoy's `envoy.service.auth.v3.Authorization` (ext_authz).
//! - [`envoy_rls`]: Envoy's `envoy.service.ratelimit.v3.RateLimitService`.
//! - [`envoy_http`]: what those two share (request → method, headers).
//! - [`envoy_keys`]: where ext_authz finds the API key (header, query
//!   parameter, Envoy metadata).
//! - [`status`]: the one mapping of errors to gRPC statuses.
//! - [`http`]: the HTTP/JSON API (`--http-listen`): Authorize and every
//!   Admin operation as REST, OpenAPI, health and readiness.
//! - [`readiness`]: whether the store and the catalog are ready (gRPC health
//!   and `/readyz`).

pub mod access;
pub mod admin;
pub mod authorizer;
pub mod envoy_authz;
pub mod envoy_http;
pub mod envoy_keys;
pub mod envoy_rls;
pub mod http;
pub mod readiness;
pub mod status;

/// Code generated from `proto/tollgate/v1/*.proto`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("tollgate.v1");

    /// The descriptor set for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tollgate_descriptor");
}
