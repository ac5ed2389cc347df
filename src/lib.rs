//! # tollgate
//!
//! A distributed API-key and usage-plan service: gateways and sidecars ask
//! it, over gRPC, "may this API key call this method of this stage now?",
//! and it answers by running one atomic Lua script in Redis, so that any
//! number of stateless replicas enforce one plan's limits exactly as one
//! server would. The behaviour follows Amazon API Gateway's usage plans and
//! API keys (docs/semantics.md).
//!
//! # Layout
//!
//! One request, end to end:
//!
//! ```text
//! api/        the wire: validate, call the limiter, map errors to Status
//!   limiter/  key -> plan -> stage -> method from the catalog snapshot (no I/O);
//!             the limits that apply (semantics step 6)
//!     store/  ONE atomic check-and-consume: memory.rs, or redis/ (one Lua call)
//!   api/      the decision in the caller's protocol
//! ```
//!
//! - [`model`]: the things and their validation; [`model::method`] matching.
//! - [`catalog`]: records, the compiled snapshot, the YAML file and the rules
//!   that apply it to a catalog in Redis.
//! - [`limiter`]: the decision.
//! - [`store`]: limit storage ([`store::LimitStore`]), with `keys.rs`
//!   naming every key and `redis/scripts/*.lua`.
//! - [`calendar`]: UTC quota periods; [`localtime`]: periods in a time zone
//!   or from an anchor day.
//! - [`audit`]: the audit trail of Admin changes; [`alerts`]: quota alert
//!   events and their webhook; [`ring`]: the capped, paged log both keep.
//! - [`api`]: gRPC services; [`server`]: wiring, `run(listener, settings, shutdown)`.
//! - [`tls`]: TLS and mTLS on every listener, certificates reloaded when
//!   their files change.
//! - [`config`]: the settings struct; [`cli`]: the command line; [`telemetry`]:
//!   logs, traces (OTLP) and metrics.

pub mod alerts;
pub mod api;
pub mod audit;
pub mod calendar;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod limiter;
pub mod localtime;
pub mod model;
pub mod ring;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod usage;
