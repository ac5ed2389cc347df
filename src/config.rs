//! Server settings: one struct, every field with its flag, environment
//! variable and default (`tollgate serve --help` prints the same). Each
//! default that other code needs too is a named constant here.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgAction, Args, ValueEnum};

use crate::model::{Invalid, Throttle};
pub use crate::store::redis::target::Mode as RedisMode;
use crate::store::redis::target::Target as RedisTarget;
use crate::store::redis::WaitReplicas;
use crate::telemetry::traces::DEFAULT_SERVICE_NAME;
use crate::telemetry::{LogFormat, TraceSettings};
use crate::tls::TlsFiles;

/// How long a batch waits for --redis-wait-replicas by default.
pub const DEFAULT_REDIS_WAIT_TIMEOUT_MS: u64 = 100;

/// What the native Authorize RPC answers when the store cannot decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OnStoreError {
    /// gRPC UNAVAILABLE: the caller decides (the default).
    #[default]
    Unavailable,
    /// Allow the request (fail open), reason OK, with no limit numbers.
    Allow,
    /// Deny the request (fail closed) as THROTTLED, HTTP 429.
    Deny,
}

/// Default of `--listen`: the data plane (Authorizer, Envoy ext_authz and
/// RLS, health, reflection). `tollgate authorize` and `bench` connect here
/// by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// Default of `--admin-listen`: the Admin service, on loopback only. The
/// admin commands (`keys`, `stages`, `plans`, `plan-keys`, `usage`) connect
/// here by default.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:50052";

/// Default of `--max-concurrent-streams`: HTTP/2 streams (calls in flight)
/// per connection. Envoy and gRPC clients open more connections when they
/// need more.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Default of `--request-timeout-ms`: the server-side deadline of a
/// data-plane call (a decision's store deadline is 250 ms).
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 1000;

/// Default of `--admin-request-timeout-ms`: the deadline of an Admin call on
/// its own listener (a 5 MiB CSV import takes a while).
pub const DEFAULT_ADMIN_REQUEST_TIMEOUT_MS: u64 = 60_000;

/// Default of `--keepalive-interval-secs`: idle time before an HTTP/2 PING
/// and before TCP keepalive probes.
pub const DEFAULT_KEEPALIVE_INTERVAL_SECS: u64 = 30;

/// Default of `--keepalive-timeout-secs`: how long an HTTP/2 PING may go
/// unanswered before the connection is closed.
pub const DEFAULT_KEEPALIVE_TIMEOUT_SECS: u64 = 10;

/// Default of `--max-header-list-bytes` (64 KiB): at least Envoy's own cap on
/// a request's headers (60 KiB), so metadata Envoy accepted always fits.
pub const DEFAULT_MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// Default of `--max-message-bytes` (4 MiB, gRPC's customary limit): a
/// decoded data-plane request. An Envoy CheckRequest carries the HTTP
/// request's headers (Envoy caps them at 60 KiB) and, only when
/// `with_request_body` is configured, part of its body.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Where the Admin service listens (`--admin-listen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminListen {
    /// Nowhere: the Admin service is off.
    Off,
    /// On this address: a listener of its own, or the data-plane listener
    /// when it is the address `--listen` bound.
    Addr(SocketAddr),
}

impl FromStr for AdminListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(AdminListen::Off);
        }
        s.parse().map(AdminListen::Addr).map_err(|e| {
            format!("{e}: write an address like {DEFAULT_ADMIN_LISTEN}, the --listen address to share it, or `off`")
        })
    }
}

impl fmt::Display for AdminListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminListen::Off => f.write_str("off"),
            AdminListen::Addr(a) => a.fmt(f),
        }
    }
}

/// Everything `tollgate serve` can be told.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// The catalog file (YAML) to load at start: APIs, stages, usage plans, keys.
    /// Without it the catalog starts empty.
    #[arg(long, env = "TOLLGATE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address of the data-plane gRPC server: Authorizer, Envoy ext_authz and
    /// RLS, health, reflection. Never Admin, unless --admin-listen is this
    /// same address.
    #[arg(long, env = "TOLLGATE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Redis URL (redis://host:port/db, rediss:// for TLS). Without it, limits
    /// live in this process only (the embedded memory store).
    #[arg(long, env = "TOLLGATE_REDIS_URL")]
    pub redis_url: Option<String>,

    /// How Redis is deployed: `single` (one node), `cluster` (a Redis
    /// Cluster: --redis-url lists seed nodes) or `sentinel` (--redis-url
    /// lists the sentinels, --redis-sentinel-master names the primary).
    #[arg(long, env = "TOLLGATE_REDIS_MODE", value_enum, default_value_t = RedisMode::Single)]
    pub redis_mode: RedisMode,

    /// With --redis-mode sentinel: the primary's name in the sentinels'
    /// configuration (`sentinel monitor NAME ...`).
    #[arg(long, env = "TOLLGATE_REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// A CA certificate (PEM) to trust for rediss:// URLs, besides the
    /// system's roots.
    #[arg(long, env = "TOLLGATE_REDIS_CA_CERT")]
    pub redis_ca_cert: Option<PathBuf>,

    /// Replicas that must acknowledge every batch of decisions (Redis `WAIT`)
    /// before its answers are given, so that a failover never forgets an
    /// admitted request; 0 (the default) does not wait. Fewer acknowledgements
    /// within --redis-wait-timeout-ms make the batch's admitted requests
    /// answer UNAVAILABLE.
    #[arg(long, env = "TOLLGATE_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// How long a batch waits for --redis-wait-replicas, in milliseconds.
    #[arg(long, env = "TOLLGATE_REDIS_WAIT_TIMEOUT_MS", default_value_t = DEFAULT_REDIS_WAIT_TIMEOUT_MS)]
    pub redis_wait_timeout_ms: u64,

    /// Prefix of every Redis key tollgate writes.
    #[arg(long, env = "TOLLGATE_REDIS_PREFIX", default_value = "tg:")]
    pub redis_prefix: String,

    /// Deadline of one decision in the store, in milliseconds, from the
    /// moment it arrives (time spent queueing for Redis included). A decision
    /// not yet sent to Redis when it passes is never sent, so never charged.
    #[arg(long, env = "TOLLGATE_STORE_TIMEOUT_MS", default_value_t = 250)]
    pub store_timeout_ms: u64,

    /// Most decisions sent to Redis in one script call.
    #[arg(long, env = "TOLLGATE_REDIS_MAX_BATCH", default_value_t = 64)]
    pub redis_max_batch: usize,

    /// Most script calls in flight to Redis at once.
    #[arg(long, env = "TOLLGATE_REDIS_MAX_IN_FLIGHT", default_value_t = 4)]
    pub redis_max_in_flight: usize,

    /// The local deny cache (with Redis): a request Redis denied is denied
    /// again here, with no Redis call, while nothing can make Redis allow it
    /// (a throttle until its retry-after, a quota until its period ends);
    /// exact (docs/semantics.md, "The local deny cache"). Ignored without
    /// Redis. `--deny-cache false` turns it off.
    #[arg(long, env = "TOLLGATE_DENY_CACHE", default_value_t = true, action = ArgAction::Set)]
    pub deny_cache: bool,

    /// The largest lease a replica asks for, in tokens, for plans with
    /// `admission: leased` (docs/semantics.md, "Leased admission"); 0 turns
    /// leases off (such plans are then decided per request). Redis single
    /// and Sentinel modes only.
    #[arg(long, env = "TOLLGATE_LEASE_MAX", default_value_t = crate::limiter::lease::DEFAULT_MAX_LEASE)]
    pub lease_max: u64,

    /// Account throttle: steady requests per second for all traffic together
    /// (off unless given, with --account-burst).
    #[arg(long, env = "TOLLGATE_ACCOUNT_RATE", requires = "account_burst")]
    pub account_rate: Option<f64>,

    /// Account throttle: burst capacity.
    #[arg(long, env = "TOLLGATE_ACCOUNT_BURST", requires = "account_rate")]
    pub account_burst: Option<u32>,

    /// What the native Authorize RPC answers when the store cannot decide
    /// (Envoy's ext_authz and RLS always get UNAVAILABLE, so that Envoy's own
    /// failure_mode_allow decides).
    #[arg(long, env = "TOLLGATE_ON_STORE_ERROR", value_enum, default_value_t = OnStoreError::Unavailable)]
    pub on_store_error: OnStoreError,

    /// How long after a decision it can be refunded (`Refund`,
    /// docs/semantics.md "Refunds"), e.g. `1h`, `90s`; and only while its
    /// quota period lasts.
    #[arg(long, env = "TOLLGATE_REFUND_WINDOW", default_value = "1h", value_parser = parse_refund_window)]
    pub refund_window: Duration,

    /// The secret that signs decision ids (any string; 32+ random bytes in
    /// hex is good). Every replica must have the same. Without it: with
    /// Redis, a secret created once in Redis and shared by all replicas;
    /// with the memory store, a random one per process. Never logged.
    #[arg(long, env = "TOLLGATE_DECISION_SECRET", hide_env_values = true)]
    pub decision_secret: Option<DecisionSecret>,

    /// Envoy ext_authz: the request header that carries the API key (RLS
    /// reads the descriptor entry `api_key` instead).
    #[arg(long, env = "TOLLGATE_API_KEY_HEADER", default_value = "x-api-key")]
    pub api_key_header: String,

    /// Envoy ext_authz and RLS: the stage (API/STAGE) of a request whose
    /// route names none (ext_authz: no context_extensions["stage"]; RLS: an
    /// empty domain). Without it such requests are denied as unknown stage.
    #[arg(long, env = "TOLLGATE_DEFAULT_STAGE")]
    pub default_stage: Option<String>,

    /// Envoy ext_authz: leave the API key header (and the --api-key-query
    /// parameter) on the request sent upstream (by default they are removed).
    #[arg(long, env = "TOLLGATE_FORWARD_API_KEY")]
    pub forward_api_key: bool,

    /// Envoy ext_authz: also take the API key from this query parameter
    /// (percent-decoded; removed from the upstream request unless
    /// --forward-api-key). Off unless given. Where several sources carry a
    /// key, they must agree (docs/envoy.md, "Key sources").
    #[arg(long, env = "TOLLGATE_API_KEY_QUERY")]
    pub api_key_query: Option<String>,

    /// Envoy ext_authz: also take the API key from Envoy's dynamic metadata,
    /// written FILTER:PATH: the metadata namespace an earlier filter wrote
    /// (listed in ext_authz's `metadata_context_namespaces`) and a dot path
    /// to a string in it, e.g. `envoy.filters.http.jwt_authn:jwt_payload.sub`
    /// for a JWT claim. Off unless given.
    #[arg(long, env = "TOLLGATE_API_KEY_METADATA")]
    pub api_key_metadata: Option<String>,

    /// The admin bearer token: Admin calls must send `authorization: Bearer
    /// TOKEN`. Without a token (here or in --admin-token-file) the Admin
    /// service refuses every call.
    #[arg(long = "admin-token", env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// A file holding the admin token (surrounding whitespace is ignored);
    /// for secrets mounted as files.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,

    /// A YAML file of named admin tokens, each with a role (`read`, `keys`
    /// or `admin`) and the hex SHA-256 of the token (the file holds no
    /// secret): `tokens: [{name, role, sha256}]`. Read again when it
    /// changes; a bad new file keeps the tokens in force. May be given with
    /// the single token above (named `admin`, role admin). docs/admin.md,
    /// "Credentials and roles".
    #[arg(long, env = "TOLLGATE_ADMIN_TOKENS_FILE")]
    pub admin_tokens_file: Option<PathBuf>,

    /// About how many audit records are kept (oldest dropped first): in
    /// Redis, the stream `{cat}:audit` (`XADD MAXLEN ~`); in memory, a ring.
    #[arg(long, env = "TOLLGATE_AUDIT_MAX_RECORDS", default_value_t = crate::audit::DEFAULT_MAX_RECORDS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub audit_max_records: usize,

    /// About how many quota alert events are kept (oldest dropped first):
    /// in Redis, the stream `{cat}:events` (`XADD MAXLEN ~`); in memory, a
    /// ring. docs/semantics.md, "Quota alerts".
    #[arg(long, env = "TOLLGATE_EVENTS_MAX", default_value_t = crate::alerts::DEFAULT_MAX_EVENTS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub events_max: usize,

    /// Deliver every quota alert event to this URL (http:// or https://) as
    /// a signed JSON POST, at least once, off the decision's path
    /// (docs/operations.md, "Webhooks"). Needs --webhook-secret.
    #[arg(long, env = "TOLLGATE_WEBHOOK_URL", requires = "webhook_secret")]
    pub webhook_url: Option<String>,

    /// The secret the webhook signs each body with (HMAC-SHA256, header
    /// `X-Tollgate-Signature: t=UNIX_SECONDS,v1=HEX`).
    #[arg(long, env = "TOLLGATE_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// With Redis: seconds an event may stay undelivered by the replica that
    /// took it (one that died) before another replica takes it over.
    #[arg(long, env = "TOLLGATE_WEBHOOK_CLAIM_AFTER_SECS", default_value_t = crate::alerts::webhook::DEFAULT_CLAIM_AFTER_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_claim_after_secs: u64,

    /// Address of the Admin service (with health and reflection), apart from
    /// the data plane; loopback by default, so the network gateways reach
    /// never serves Admin. The --listen address serves Admin on the
    /// data-plane listener instead (simple setups); `off` turns Admin off.
    #[arg(long, env = "TOLLGATE_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: AdminListen,

    /// gRPC reflection on both listeners, each describing only its own
    /// services (`--reflection false` turns it off).
    #[arg(long, env = "TOLLGATE_REFLECTION", default_value_t = true, action = ArgAction::Set)]
    pub reflection: bool,

    /// Most HTTP/2 streams (calls in flight) per connection, on both
    /// listeners; advertised to clients, which open more connections when
    /// they need more.
    #[arg(long, env = "TOLLGATE_MAX_CONCURRENT_STREAMS", default_value_t = DEFAULT_MAX_CONCURRENT_STREAMS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,

    /// Server-side deadline of every data-plane call, in milliseconds (a
    /// shorter grpc-timeout from the client wins). A call past it is answered
    /// CANCELLED "Timeout expired".
    #[arg(long, env = "TOLLGATE_REQUEST_TIMEOUT_MS", default_value_t = DEFAULT_REQUEST_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,

    /// Server-side deadline of every call on the Admin listener, in
    /// milliseconds. (Admin on the data-plane listener gets
    /// --request-timeout-ms.)
    #[arg(long, env = "TOLLGATE_ADMIN_REQUEST_TIMEOUT_MS", default_value_t = DEFAULT_ADMIN_REQUEST_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub admin_request_timeout_ms: u64,

    /// Idle seconds before the server PINGs a connection (HTTP/2) and before
    /// the kernel sends TCP keepalive probes, on both listeners; 0 turns both
    /// off.
    #[arg(long, env = "TOLLGATE_KEEPALIVE_INTERVAL_SECS", default_value_t = DEFAULT_KEEPALIVE_INTERVAL_SECS)]
    pub keepalive_interval_secs: u64,

    /// Seconds an HTTP/2 PING may go unanswered before the connection is
    /// closed (a dead peer is dropped).
    #[arg(long, env = "TOLLGATE_KEEPALIVE_TIMEOUT_SECS", default_value_t = DEFAULT_KEEPALIVE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub keepalive_timeout_secs: u64,

    /// Largest HTTP/2 header list (a call's metadata) accepted, in bytes, on
    /// both listeners; advertised to clients.
    #[arg(long, env = "TOLLGATE_MAX_HEADER_LIST_BYTES", default_value_t = DEFAULT_MAX_HEADER_LIST_BYTES,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_header_list_bytes: u32,

    /// Largest decoded request message of a data-plane call, in bytes; a
    /// bigger one is answered OUT_OF_RANGE (tonic's code for it). (Admin
    /// accepts 16 MiB, room for its largest CSV import.)
    #[arg(long, env = "TOLLGATE_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_message_bytes: usize,

    /// With Redis: how often, in milliseconds, each replica checks the
    /// catalog's head when no change comes (it follows the change log with a
    /// blocking read of at most this long); a reset or restore of Redis is
    /// noticed within it.
    #[arg(long, env = "TOLLGATE_CATALOG_POLL_MS", default_value_t = 1000)]
    pub catalog_poll_ms: u64,

    /// Address of the HTTP/JSON API (off unless given): `POST /v1/authorize`,
    /// every Admin operation as REST under `/v1/` (with the admin token),
    /// `/openapi.json`, `/healthz` and `/readyz` (docs/http.md). Its Admin
    /// routes answer 501 with `--admin-listen off`.
    #[arg(long, env = "TOLLGATE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// Serve Prometheus metrics at http://ADDR/metrics (off unless given;
    /// https:// with --tls-cert).
    #[arg(long, env = "TOLLGATE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// TLS on every listener (data plane, Admin, HTTP/JSON, metrics): the
    /// server's certificate chain, leaf first (PEM); with --tls-key. Re-read
    /// when the file changes (docs/operations.md, "TLS and mTLS").
    #[arg(long, env = "TOLLGATE_TLS_CERT", requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, RSA or EC).
    #[arg(long, env = "TOLLGATE_TLS_KEY", requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// mTLS: require a client certificate signed by one of these CA
    /// certificates (PEM) on every listener; needs --tls-cert.
    #[arg(long, env = "TOLLGATE_TLS_CLIENT_CA", requires = "tls_cert", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Send a trace of every decision over OTLP/gRPC to this collector, e.g.
    /// http://127.0.0.1:4317 (plaintext gRPC: a collector beside tollgate).
    /// Without it, the standard OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
    /// OTEL_EXPORTER_OTLP_ENDPOINT; without any of them traces are off.
    #[arg(long, env = "TOLLGATE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// The service.name of the traces.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = DEFAULT_SERVICE_NAME)]
    pub otlp_service_name: String,

    /// How log lines are written to stderr: `text`, or `json` (one object
    /// per line). RUST_LOG filters them either way.
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// On SIGTERM/SIGINT, how long to let in-flight calls finish before
    /// exiting anyway, in seconds.
    #[arg(long, env = "TOLLGATE_DRAIN_TIMEOUT_SECS", default_value_t = 5)]
    pub drain_timeout_secs: u64,

    /// Tokio worker threads; 1 runs everything on one thread (the least CPU
    /// per request on small machines), 0 uses one per CPU.
    #[arg(long, env = "TOLLGATE_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
}

impl Settings {
    /// Settings with every default and the given listen address (tests),
    /// except that the Admin service gets a free loopback port
    /// (`127.0.0.1:0`, logged as `admin_addr=`), so that servers run side by
    /// side do not compete for 50052.
    pub fn for_listen(listen: SocketAddr) -> Self {
        Self {
            config: None,
            listen,
            redis_url: None,
            redis_mode: RedisMode::Single,
            redis_sentinel_master: None,
            redis_ca_cert: None,
            redis_wait_replicas: 0,
            redis_wait_timeout_ms: DEFAULT_REDIS_WAIT_TIMEOUT_MS,
            redis_prefix: "tg:".into(),
            store_timeout_ms: 250,
            redis_max_batch: 64,
            redis_max_in_flight: 4,
            deny_cache: true,
            lease_max: crate::limiter::lease::DEFAULT_MAX_LEASE,
            account_rate: None,
            account_burst: None,
            on_store_error: OnStoreError::Unavailable,
            refund_window: Duration::from_millis(crate::limiter::refund::DEFAULT_REFUND_WINDOW_MS),
            decision_secret: None,
            api_key_header: "x-api-key".into(),
            default_stage: None,
            forward_api_key: false,
            api_key_query: None,
            api_key_metadata: None,
            admin_token: None,
            admin_token_file: None,
            admin_tokens_file: None,
            audit_max_records: crate::audit::DEFAULT_MAX_RECORDS,
            events_max: crate::alerts::DEFAULT_MAX_EVENTS,
            webhook_url: None,
            webhook_secret: None,
            webhook_claim_after_secs: crate::alerts::webhook::DEFAULT_CLAIM_AFTER_SECS,
            admin_listen: AdminListen::Addr(SocketAddr::from(([127, 0, 0, 1], 0))),
            reflection: true,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            admin_request_timeout_ms: DEFAULT_ADMIN_REQUEST_TIMEOUT_MS,
            keepalive_interval_secs: DEFAULT_KEEPALIVE_INTERVAL_SECS,
            keepalive_timeout_secs: DEFAULT_KEEPALIVE_TIMEOUT_SECS,
            max_header_list_bytes: DEFAULT_MAX_HEADER_LIST_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            catalog_poll_ms: 1000,
            http_listen: None,
            metrics_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            otlp_endpoint: None,
            otlp_service_name: DEFAULT_SERVICE_NAME.into(),
            log_format: LogFormat::Text,
            drain_timeout_secs: 5,
            worker_threads: 0,
        }
    }

    /// The admin token, from the flag/env or the file.
    pub fn admin_token(&self) -> Result<Option<String>, Invalid> {
        let token = match (&self.admin_token, &self.admin_token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| Invalid::new("admin_token_file", format!("{}: {e}", f.display())))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        match token {
            Some(t) if t.len() < 16 => {
                Err(Invalid::new("admin_token", "must be at least 16 characters (use a random secret)"))
            }
            t => Ok(t),
        }
    }

    /// The TLS files of every listener, when --tls-cert and --tls-key are
    /// given (clap makes sure they come together, and --tls-client-ca only
    /// with them).
    pub fn tls_files(&self) -> Option<TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                Some(TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: self.tls_client_ca.clone() })
            }
            _ => None,
        }
    }

    /// The admin tokens: those of --admin-tokens-file (checked now) and the
    /// single token (TOLLGATE_ADMIN_TOKEN, --admin-token-file) as `admin`.
    pub fn admin_tokens(&self) -> Result<crate::api::access::AdminTokens, Invalid> {
        let token = self.admin_token()?;
        crate::api::access::AdminTokens::load(self.admin_tokens_file.as_deref(), token.as_deref())
            .map_err(|e| Invalid::new("admin_tokens_file", e))
    }

    /// Where Redis is, from --redis-url, --redis-mode, --redis-sentinel-master
    /// and --redis-ca-cert.
    pub fn redis_target(&self) -> Result<RedisTarget, Invalid> {
        let url = self.redis_url.as_deref().unwrap_or_default();
        RedisTarget::new(self.redis_mode, url, self.redis_sentinel_master.as_deref(), self.redis_ca_cert.as_deref())
            .map_err(|e| Invalid::new("redis_url", e.to_string()))
    }

    /// The replicas that must acknowledge each batch, if any.
    pub fn redis_wait(&self) -> Option<WaitReplicas> {
        (self.redis_wait_replicas > 0).then(|| WaitReplicas {
            replicas: self.redis_wait_replicas,
            timeout: Duration::from_millis(self.redis_wait_timeout_ms.max(1)),
        })
    }

    /// The store deadline.
    pub fn store_timeout(&self) -> Duration {
        Duration::from_millis(self.store_timeout_ms.max(1))
    }

    /// The deadline of a data-plane call.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }

    /// The deadline of a call on the Admin listener.
    pub fn admin_request_timeout(&self) -> Duration {
        Duration::from_millis(self.admin_request_timeout_ms.max(1))
    }

    /// The HTTP/2 PING and TCP keepalive idle time; `None` when off.
    pub fn keepalive_interval(&self) -> Option<Duration> {
        (self.keepalive_interval_secs > 0).then(|| Duration::from_secs(self.keepalive_interval_secs))
    }

    /// How long a PING may go unanswered.
    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_secs(self.keepalive_timeout_secs.max(1))
    }

    /// Where traces go, if anywhere: `--otlp-endpoint`, else the standard
    /// OTLP variables of the process environment ([`TraceSettings::resolve`]).
    pub fn traces(&self) -> Result<Option<TraceSettings>, Invalid> {
        TraceSettings::resolve(self.otlp_endpoint.as_deref(), &self.otlp_service_name, |v| std::env::var(v).ok())
    }

    /// The account throttle, checked.
    pub fn account_throttle(&self) -> Result<Option<Throttle>, Invalid> {
        match (self.account_rate, self.account_burst) {
            (Some(rate_limit), Some(burst_limit)) => {
                let t = Throttle { rate_limit, burst_limit };
                t.validate().map_err(|e| e.within("account"))?;
                Ok(Some(t))
            }
            _ => Ok(None),
        }
    }
}

/// `--decision-secret`: shown as `***` by `Debug`, so never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct DecisionSecret(pub String);

impl fmt::Debug for DecisionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for DecisionSecret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() < 16 {
            return Err("a decision secret must be at least 16 characters (32+ random bytes in hex is good)".into());
        }
        Ok(Self(s.to_string()))
    }
}

/// `--refund-window`: a humantime duration from 1 s to 92 days.
fn parse_refund_window(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e}; write it like 1h, 15m or 90s"))?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(92 * 86_400) {
        return Err("must be from 1s to 92 days (usage records are kept 92 days)".into());
    }
    Ok(d)
}
