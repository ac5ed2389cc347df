//! Who may call which Admin operation: named admin tokens, each with a
//! [`Role`], and the one table ([`OPERATIONS`]) of the role every operation
//! needs, by gRPC method and by HTTP route. The gRPC Admin service
//! ([`AdminGate`](super::admin::AdminGate)) and the HTTP/JSON API
//! (`http::admin::require_admin`) both call [`AdminAuth::admit`], so the two
//! cannot disagree; docs/admin.md ("Roles") has the same table for people.
//!
//! - [`tokens`]: the tokens (`--admin-tokens-file`, plus the single
//!   `TOLLGATE_ADMIN_TOKEN` as a token named `admin` with role `admin`),
//!   kept as SHA-256 hashes, compared in constant time, reloaded when the
//!   file changes.
//! - [`throttle`]: failed authentications slow their peer down.
//!
//! Answers: no token configured → FAILED_PRECONDITION (the Admin service is
//! off); no or unknown token → UNAUTHENTICATED; a known token whose role is
//! too small → PERMISSION_DENIED naming the token, its role and the role
//! needed. A token is never logged; its name is (in the audit trail too).

pub mod throttle;
pub mod tokens;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tonic::Status;

pub use self::throttle::FailureThrottle;
pub use self::tokens::{AdminTokens, TokenSet};
use crate::audit::Caller;

/// What a token may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read: get and list keys, stages, plans and subscriptions, usage,
    /// stats, the audit trail, quota alert events.
    Read,
    /// Read, and manage API keys and their subscriptions: create, update,
    /// delete, rotate and import keys, add and remove plan keys, set a key's
    /// remaining quota.
    Keys,
    /// Everything: also APIs and stages, usage plans.
    Admin,
}

impl Role {
    /// The role's name as written in the tokens file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Keys => "keys",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One Admin operation: its gRPC method, the role it needs, its HTTP route
/// (if it has one) and whether it changes anything (then it is audited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    /// The gRPC method of `tollgate.v1.Admin` (the HTTP-only `GetStats` has
    /// none, but is named the same way).
    pub name: &'static str,
    /// The role it needs.
    pub role: Role,
    /// The HTTP route: method and path as the router writes it.
    pub http: Option<(&'static str, &'static str)>,
    /// Whether it is a gRPC method (false: HTTP only).
    pub grpc: bool,
    /// Whether it changes the catalog or usage (recorded in the audit trail).
    pub changes: bool,
}

const fn op(name: &'static str, role: Role, method: &'static str, path: &'static str, changes: bool) -> Operation {
    Operation { name, role, http: Some((method, path)), grpc: true, changes }
}

/// Every Admin operation and the role it needs: the one table, over gRPC and
/// HTTP (docs/admin.md, "Roles", shows it; a test checks that every method of
/// the proto and every Admin route of the HTTP API is here).
pub const OPERATIONS: &[Operation] = &[
    // API keys.
    op("CreateApiKey", Role::Keys, "POST", "/v1/keys", true),
    op("GetApiKey", Role::Read, "GET", "/v1/keys/{id}", false),
    op("ListApiKeys", Role::Read, "GET", "/v1/keys", false),
    op("UpdateApiKey", Role::Keys, "PATCH", "/v1/keys/{id}", true),
    op("DeleteApiKey", Role::Keys, "DELETE", "/v1/keys/{id}", true),
    op("ImportApiKeys", Role::Keys, "POST", "/v1/keys/import", true),
    op("RotateApiKey", Role::Keys, "POST", "/v1/keys/{id}/rotate", true),
    // APIs and stages.
    op("PutStage", Role::Admin, "PUT", "/v1/stages/{api}/{stage}", true),
    op("GetStage", Role::Read, "GET", "/v1/stages/{api}/{stage}", false),
    op("ListStages", Role::Read, "GET", "/v1/stages", false),
    op("DeleteStage", Role::Admin, "DELETE", "/v1/stages/{api}/{stage}", true),
    op("DeleteApi", Role::Admin, "DELETE", "/v1/apis/{api}", true),
    // Usage plans.
    op("CreateUsagePlan", Role::Admin, "POST", "/v1/plans", true),
    op("GetUsagePlan", Role::Read, "GET", "/v1/plans/{id}", false),
    op("ListUsagePlans", Role::Read, "GET", "/v1/plans", false),
    op("UpdateUsagePlan", Role::Admin, "PATCH", "/v1/plans/{id}", true),
    op("DeleteUsagePlan", Role::Admin, "DELETE", "/v1/plans/{id}", true),
    // Subscriptions.
    op("AddUsagePlanKey", Role::Keys, "POST", "/v1/plans/{id}/keys", true),
    op("RemoveUsagePlanKey", Role::Keys, "DELETE", "/v1/plans/{id}/keys/{key_id}", true),
    op("ListUsagePlanKeys", Role::Read, "GET", "/v1/plans/{id}/keys", false),
    // Usage.
    op("GetUsage", Role::Read, "GET", "/v1/plans/{id}/usage", false),
    op("UpdateUsage", Role::Keys, "PUT", "/v1/plans/{id}/keys/{key_id}/usage", true),
    // The audit trail, and this replica's counts (the console's overview).
    op("ListAuditRecords", Role::Read, "GET", "/v1/audit", false),
    // Quota alert events.
    op("ListEvents", Role::Read, "GET", "/v1/events", false),
    Operation { name: "GetStats", role: Role::Read, http: Some(("GET", "/v1/stats")), grpc: false, changes: false },
];

/// The role a gRPC method or route not in [`OPERATIONS`] needs: all of them
/// (a method added without a row fails closed).
pub const UNLISTED: Operation =
    Operation { name: "unlisted", role: Role::Admin, http: None, grpc: false, changes: true };

/// The operation of gRPC method `name` of `tollgate.v1.Admin`.
pub fn by_rpc(name: &str) -> Option<&'static Operation> {
    OPERATIONS.iter().find(|o| o.grpc && o.name == name)
}

/// The operation of an HTTP route (`method`, the router's `path` pattern).
pub fn by_route(method: &str, path: &str) -> Option<&'static Operation> {
    OPERATIONS.iter().find(|o| o.http == Some((method, path)))
}

/// Why a call was refused, as counted by `tollgate_admin_auth_failures_total{reason}`.
fn count_failure(reason: &'static str) {
    metrics::counter!("tollgate_admin_auth_failures_total", "reason" => reason).increment(1);
}

/// The credentials check of every Admin call (gRPC and HTTP): the tokens and
/// the failure throttle. Cheap to clone.
#[derive(Clone)]
pub struct AdminAuth {
    tokens: AdminTokens,
    throttle: Arc<FailureThrottle>,
}

impl AdminAuth {
    /// Accepts the one token `token` (role admin, named `admin`); with
    /// `None`, refuses every call and says how to set one.
    pub fn new(token: Option<String>) -> Self {
        let set = match token {
            Some(t) => TokenSet::legacy(&t),
            None => TokenSet::unconfigured(),
        };
        Self::with_tokens(AdminTokens::fixed(set))
    }

    /// Accepts `tokens` (which may be reloaded meanwhile).
    pub fn with_tokens(tokens: AdminTokens) -> Self {
        Self { tokens, throttle: Arc::new(FailureThrottle::default()) }
    }

    /// The tokens.
    pub fn tokens(&self) -> &AdminTokens {
        &self.tokens
    }

    /// Checks the `authorization` value of a call to `op` from `peer`: the
    /// caller (token name, peer, operation) if its token has the role `op`
    /// needs. A peer that failed too often lately waits first
    /// ([`FailureThrottle`]).
    pub async fn admit(
        &self,
        op: &Operation,
        authorization: Option<&[u8]>,
        peer: Option<IpAddr>,
    ) -> Result<Caller, Status> {
        if let Some(ip) = peer {
            if let Some(wait) = self.throttle.delay(ip) {
                metrics::counter!("tollgate_admin_auth_throttled_total").increment(1);
                tokio::time::sleep(wait).await;
            }
        }
        let outcome = self.check(op, authorization);
        if let Some(ip) = peer {
            match &outcome {
                Ok(_) => self.throttle.succeeded(ip),
                Err(s) if s.code() == tonic::Code::Unauthenticated => self.throttle.failed(ip),
                Err(_) => {}
            }
        }
        let token = outcome?;
        Ok(Caller {
            token,
            peer: peer.map(|p| p.to_string()).unwrap_or_else(|| "in-process".into()),
            operation: op.name,
        })
    }

    /// The name of the token of `authorization` if it may call `op`.
    fn check(&self, op: &Operation, authorization: Option<&[u8]>) -> Result<String, Status> {
        let set = self.tokens.current();
        if !set.configured() {
            count_failure("unconfigured");
            return Err(Status::failed_precondition(
                "the Admin service is disabled because no admin token is configured: start tollgate with \
                 TOLLGATE_ADMIN_TOKEN=<secret>, --admin-token-file FILE or --admin-tokens-file FILE",
            ));
        }
        let Some(header) = authorization else {
            count_failure("missing");
            return Err(Status::unauthenticated(
                "missing `authorization: Bearer TOKEN` metadata: pass --admin-token or set TOLLGATE_ADMIN_TOKEN",
            ));
        };
        let given = std::str::from_utf8(header)
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim);
        let Some(given) = given else {
            count_failure("malformed");
            return Err(Status::unauthenticated("the authorization metadata must be `Bearer TOKEN`"));
        };
        let Some(token) = set.find(given) else {
            count_failure("invalid");
            return Err(Status::unauthenticated(
                "the admin token is not valid: it is none of the server's admin tokens",
            ));
        };
        if token.role < op.role {
            count_failure("forbidden");
            return Err(Status::permission_denied(format!(
                "token {:?} has role {}; {} needs role {}",
                token.name, token.role, op.name, op.role
            )));
        }
        Ok(token.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;

    #[test]
    fn every_admin_method_has_a_row() {
        let set = prost_types::FileDescriptorSet::decode(crate::api::pb::FILE_DESCRIPTOR_SET).unwrap();
        let admin = set
            .file
            .iter()
            .flat_map(|f| &f.service)
            .find(|s| s.name() == "Admin")
            .expect("the Admin service in the descriptor set");
        let methods: BTreeSet<&str> = admin.method.iter().map(|m| m.name()).collect();
        let rows: BTreeSet<&str> = OPERATIONS.iter().filter(|o| o.grpc).map(|o| o.name).collect();
        assert_eq!(methods, rows, "every method of tollgate.v1.Admin has exactly one row in OPERATIONS");
        let names: BTreeSet<&str> = OPERATIONS.iter().map(|o| o.name).collect();
        assert_eq!(names.len(), OPERATIONS.len(), "names are unique");
        let routes: BTreeSet<_> = OPERATIONS.iter().filter_map(|o| o.http).collect();
        assert_eq!(routes.len(), OPERATIONS.len(), "routes are unique");
    }

    #[test]
    fn reads_need_read_and_changes_need_more() {
        for o in OPERATIONS {
            assert_eq!(o.changes, o.role > Role::Read, "{}: a change needs keys or admin, a read needs read", o.name);
            let (method, _) = o.http.unwrap();
            assert_eq!(method == "GET", !o.changes, "{}: GET routes are the reads", o.name);
        }
        assert!(Role::Read < Role::Keys && Role::Keys < Role::Admin);
    }

    fn auth(role: Role) -> AdminAuth {
        let yaml = format!(
            "tokens:\n  - name: someone\n    role: {role}\n    sha256: {}\n",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"the-token-of-someone"))
        );
        AdminAuth::with_tokens(AdminTokens::fixed(TokenSet::parse(&yaml, None).unwrap()))
    }

    #[tokio::test]
    async fn roles_and_answers() {
        let bearer = b"Bearer the-token-of-someone".as_slice();
        let read = auth(Role::Read);
        let get = by_rpc("GetApiKey").unwrap();
        let delete = by_rpc("DeleteApiKey").unwrap();
        let caller = read.admit(get, Some(bearer), None).await.unwrap();
        assert_eq!((caller.token.as_str(), caller.operation), ("someone", "GetApiKey"));
        let e = read.admit(delete, Some(bearer), None).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(e.message(), "token \"someone\" has role read; DeleteApiKey needs role keys");
        assert!(auth(Role::Keys).admit(delete, Some(bearer), None).await.is_ok());
        let put = by_rpc("PutStage").unwrap();
        assert_eq!(
            auth(Role::Keys).admit(put, Some(bearer), None).await.unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(auth(Role::Admin).admit(put, Some(bearer), None).await.is_ok());
        for bad in [None, Some(b"Bearer nope".as_slice()), Some(b"Basic x".as_slice())] {
            let e = read.admit(get, bad, None).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        let off = AdminAuth::new(None).admit(get, Some(bearer), None).await.unwrap_err();
        assert_eq!(off.code(), tonic::Code::FailedPrecondition);
        let legacy = AdminAuth::new(Some("a-legacy-admin-token".into()));
        let c = legacy.admit(put, Some(b"Bearer a-legacy-admin-token"), None).await.unwrap();
        assert_eq!(c.token, "admin");
    }

    #[tokio::test]
    async fn failures_slow_the_peer_down_until_it_succeeds() {
        let read = auth(Role::Read);
        let get = by_rpc("GetApiKey").unwrap();
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..throttle::FREE_FAILURES {
            assert!(read.throttle.delay(peer).is_none());
            let _ = read.admit(get, Some(b"Bearer wrong"), Some(peer)).await;
        }
        let first = read.throttle.delay(peer).expect("throttled after the free failures");
        let _ = read.admit(get, Some(b"Bearer wrong"), Some(peer)).await;
        let second = read.throttle.delay(peer).unwrap();
        assert!(second > first, "the delay grows: {first:?} then {second:?}");
        // Another peer is not slowed down.
        assert!(read.throttle.delay("192.0.2.8".parse().unwrap()).is_none());
        // Success resets.
        read.admit(get, Some(b"Bearer the-token-of-someone"), Some(peer)).await.unwrap();
        assert!(read.throttle.delay(peer).is_none());
    }
}
