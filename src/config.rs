//! Server settings: one struct, every field with its flag, environment
//! variable and default (`tollgate serve --help` prints the same).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::model::{Invalid, Throttle};

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

/// Everything `tollgate serve` can be told.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// The catalog file (YAML) to load at start: APIs, stages, usage plans, keys.
    /// Without it the catalog starts empty.
    #[arg(long, env = "TOLLGATE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address of the gRPC server (Authorizer, Envoy ext_authz and RLS, health,
    /// reflection).
    #[arg(long, env = "TOLLGATE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Redis URL (redis://host:port/db, rediss:// for TLS). Without it, limits
    /// live in this process only (the embedded memory store).
    #[arg(long, env = "TOLLGATE_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key tollgate writes.
    #[arg(long, env = "TOLLGATE_REDIS_PREFIX", default_value = "tg:")]
    pub redis_prefix: String,

    /// Deadline of one decision's round trip to the store, in milliseconds.
    #[arg(long, env = "TOLLGATE_STORE_TIMEOUT_MS", default_value_t = 250)]
    pub store_timeout_ms: u64,

    /// Most decisions sent to Redis in one script call.
    #[arg(long, env = "TOLLGATE_REDIS_MAX_BATCH", default_value_t = 64)]
    pub redis_max_batch: usize,

    /// Most script calls in flight to Redis at once.
    #[arg(long, env = "TOLLGATE_REDIS_MAX_IN_FLIGHT", default_value_t = 4)]
    pub redis_max_in_flight: usize,

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

    /// Envoy ext_authz: the request header that carries the API key (RLS
    /// reads the descriptor entry `api_key` instead).
    #[arg(long, env = "TOLLGATE_API_KEY_HEADER", default_value = "x-api-key")]
    pub api_key_header: String,

    /// Envoy ext_authz and RLS: the stage (API/STAGE) of a request whose
    /// route names none (ext_authz: no context_extensions["stage"]; RLS: an
    /// empty domain). Without it such requests are denied as unknown stage.
    #[arg(long, env = "TOLLGATE_DEFAULT_STAGE")]
    pub default_stage: Option<String>,

    /// Envoy ext_authz: leave the API key header on the request sent
    /// upstream (by default it is removed).
    #[arg(long, env = "TOLLGATE_FORWARD_API_KEY")]
    pub forward_api_key: bool,

    /// The admin bearer token: Admin calls must send `authorization: Bearer
    /// TOKEN`. Without a token (here or in --admin-token-file) the Admin
    /// service refuses every call.
    #[arg(long = "admin-token", env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// A file holding the admin token (surrounding whitespace is ignored);
    /// for secrets mounted as files.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,

    /// Serve the Admin service on this address only (not on --listen), e.g. to
    /// keep it off the network gateways reach.
    #[arg(long, env = "TOLLGATE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// With Redis: how often each replica checks the catalog version, in
    /// milliseconds, besides listening for change messages (heals a lost
    /// message or subscription).
    #[arg(long, env = "TOLLGATE_CATALOG_POLL_MS", default_value_t = 1000)]
    pub catalog_poll_ms: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics (off unless given).
    #[arg(long, env = "TOLLGATE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

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
    /// Settings with every default and the given listen address (tests).
    pub fn for_listen(listen: SocketAddr) -> Self {
        Self {
            config: None,
            listen,
            redis_url: None,
            redis_prefix: "tg:".into(),
            store_timeout_ms: 250,
            redis_max_batch: 64,
            redis_max_in_flight: 4,
            account_rate: None,
            account_burst: None,
            on_store_error: OnStoreError::Unavailable,
            api_key_header: "x-api-key".into(),
            default_stage: None,
            forward_api_key: false,
            admin_token: None,
            admin_token_file: None,
            admin_listen: None,
            catalog_poll_ms: 1000,
            metrics_listen: None,
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

    /// The store deadline.
    pub fn store_timeout(&self) -> Duration {
        Duration::from_millis(self.store_timeout_ms.max(1))
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
