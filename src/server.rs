//! Wires the services together and runs them on their listeners:
//! `run(listener, settings, shutdown)`.
//!
//! - The data plane, on `listener` (`--listen`): `tollgate.v1.Authorizer`,
//!   Envoy's ext_authz (`envoy.service.auth.v3.Authorization`) and rate limit
//!   service (`envoy.service.ratelimit.v3.RateLimitService`),
//!   `grpc.health.v1.Health` (overall status and per service: SERVING while
//!   the store can answer, NOT_SERVING while it cannot) and gRPC reflection.
//! - The Admin service, with health and reflection, on `--admin-listen`
//!   (loopback by default), so that the network gateways reach never serves
//!   it; or on the data-plane listener when `--admin-listen` is the address
//!   `listener` bound; or nowhere (`off`).
//!
//! - The HTTP/JSON API ([`crate::api::http`]) on `--http-listen`, when given:
//!   the same services, called in-process.
//! - Prometheus metrics on `--metrics-listen`, when given.
//!
//! With `--tls-cert`, every one of these listeners speaks TLS (mTLS with
//! `--tls-client-ca`), with the certificate [`crate::tls`] reloads when its
//! files change.
//!
//! Each listener's reflection (v1 and v1alpha) describes only the services
//! it serves. Both gRPC listeners get the limits of [`Settings`] (streams per
//! connection, a deadline per call, HTTP/2 and TCP keepalive, header list
//! size; message size on the data plane); every listener stops together on
//! `shutdown`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use prost::Message;
use prost_types::FileDescriptorSet;
use tokio::net::TcpListener;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::transport::Server;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_reflection::pb::{v1, v1alpha};

use crate::api::admin::{AdminAuth, AdminGate, AdminService};
use crate::api::authorizer::AuthorizerService;
use crate::api::envoy_authz::EnvoyAuthzService;
use crate::api::envoy_http::EnvoyOptions;
use crate::api::envoy_rls::EnvoyRlsService;
use crate::api::http::{HttpApi, HttpLimits};
use crate::api::pb;
use crate::api::pb::admin_server::AdminServer;
use crate::api::pb::authorizer_server::AuthorizerServer;
use crate::api::readiness::Readiness;
use crate::catalog::file::{self, CatalogFile};
use crate::catalog::store::CatalogService;
use crate::config::{AdminListen, RedisMode, Settings};
use crate::limiter::deny::DEFAULT_CAPACITY as DENY_CACHE_CAPACITY;
use crate::limiter::refund::{DecisionSigner, Refunds};
use crate::limiter::{DenyCache, LeaseTable, Limiter};
use crate::store::keys::Keys;
use crate::store::memory::MemoryStore;
use crate::store::redis::{RedisSettings, RedisStore};
use crate::store::Store;
use crate::tls::{Alpn, ServerTls, TlsIncoming};
use crate::usage::UsageService;

/// Errors that stop the server from starting.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Builds the store the settings ask for.
pub fn open_store(settings: &Settings) -> Result<Store, BoxError> {
    Ok(match &settings.redis_url {
        None => {
            let m = MemoryStore::new();
            m.events.set_max(settings.events_max);
            Store::Memory(Arc::new(m))
        }
        Some(_) => {
            let mut rs = RedisSettings::with_target(settings.redis_target()?);
            rs.timeout = settings.store_timeout();
            rs.max_batch = settings.redis_max_batch.max(1);
            rs.max_in_flight = settings.redis_max_in_flight.max(1);
            rs.wait = settings.redis_wait();
            rs.events = crate::store::redis::EventsAt {
                stream: Keys::new(&settings.redis_prefix).events(),
                max: settings.events_max,
            };
            Store::Redis(Arc::new(RedisStore::open(rs)?))
        }
    })
}

/// The deny cache the settings ask for: with Redis only (the memory store
/// decides in-process in about a microsecond: a cache would only add
/// lookups). On a Redis Cluster the shared throttles (stage, account) are
/// not cached: the cluster's steps may give their tokens back
/// (`store::redis::cluster`), so they can refill sooner than a retry-after
/// says.
pub fn deny_cache(settings: &Settings, store: &Store) -> Option<DenyCache> {
    if !settings.deny_cache || !matches!(store, Store::Redis(_)) {
        return None;
    }
    let shared = settings.redis_mode != RedisMode::Cluster;
    tracing::info!(capacity = DENY_CACHE_CAPACITY, shared_throttles = shared, "deny cache on");
    Some(DenyCache::new(DENY_CACHE_CAPACITY).shared_throttles(shared))
}

/// The signer of decision ids (docs/semantics.md, "Refunds"): the
/// `--decision-secret`; else with Redis the secret shared by every replica
/// (created once with SET NX beside the catalog; read by a task that retries
/// until Redis answers: until then answers carry no decision id); else a
/// random one for this process.
fn decision_signer(settings: &Settings, store: &Store, keys: &Keys) -> Arc<DecisionSigner> {
    if let Some(s) = &settings.decision_secret {
        return Arc::new(DecisionSigner::with_secret(s.0.as_bytes()));
    }
    let Store::Redis(redis) = store else {
        return Arc::new(DecisionSigner::random());
    };
    let signer = Arc::new(DecisionSigner::new());
    let (redis, key, task_signer) = (redis.clone(), keys.decision_secret(), signer.clone());
    tokio::spawn(async move {
        let fresh = hex::encode(rand::random::<[u8; 32]>());
        let mut pause = Duration::from_millis(50);
        loop {
            match redis.shared_secret(&key, &fresh).await {
                Ok(secret) => {
                    task_signer.set(secret.as_bytes());
                    tracing::info!("decision secret read from Redis: decision ids on");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the decision secret from Redis yet; retrying"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    });
    signer
}

/// How often the settler looks for leases whose use ended, ms: a lease's
/// settle then reaches Redis well within the `LEASE_MS / 2` its slot lasts
/// beyond its use (`limiter::lease`).
const SETTLE_EVERY_MS: u64 = 10;

/// The lease table of plans with `admission: leased`, with Redis in single
/// or Sentinel mode (`--lease-max`, 0 = off). **(decision)** On a Redis
/// Cluster, leased plans are decided per request: a request's limits may
/// live on several nodes there, and the cluster's steps
/// (`store::redis::cluster`) take and give back tokens node by node, which a
/// lease held across nodes would have to follow; exact per-request decisions
/// are the simpler guarantee. In memory, a lease would save nothing.
pub fn lease_table(settings: &Settings, store: &Store) -> Option<Arc<LeaseTable>> {
    if settings.lease_max == 0 || !matches!(store, Store::Redis(_)) || settings.redis_mode == RedisMode::Cluster {
        return None;
    }
    Some(Arc::new(LeaseTable::new(settings.lease_max)))
}

/// Reads the catalog file, if any.
pub fn read_catalog_file(settings: &Settings) -> Result<Option<CatalogFile>, BoxError> {
    Ok(match &settings.config {
        Some(path) => Some(file::read(path, crate::model::now_ms())?),
        None => None,
    })
}

/// Opens the catalog the settings ask for: in memory from the file, or in
/// Redis with the file as a bootstrap (docs/admin.md, "The catalog file at
/// start").
pub fn open_catalog(settings: &Settings, keys: &Keys) -> Result<Arc<CatalogService>, BoxError> {
    let file = read_catalog_file(settings)?;
    Ok(match &settings.redis_url {
        None => CatalogService::memory(file.map(|f| f.records).unwrap_or_default())?,
        Some(_) => CatalogService::redis(
            settings.redis_target()?,
            keys.clone(),
            Duration::from_millis(settings.catalog_poll_ms.max(50)),
            file,
        )?,
    })
}

/// The Admin service as served: behind its credentials and roles check.
type AdminSvc = AdminGate<AdminServer<AdminService>>;

/// The proto file of `tollgate.v1.Authorizer` in [`pb::FILE_DESCRIPTOR_SET`].
const AUTHORIZER_PROTO: &str = "tollgate/v1/authorizer.proto";
/// The proto file of `tollgate.v1.Admin` in [`pb::FILE_DESCRIPTOR_SET`].
const ADMIN_PROTO: &str = "tollgate/v1/admin.proto";

/// The Admin service accepts 16 MiB (over gRPC and HTTP): room for a CSV
/// import of the largest accepted size (5 MiB), so that a too-big file gets a
/// clear INVALID_ARGUMENT, not a transport error.
const ADMIN_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The gRPC services, built once and added to the listeners that serve them.
struct Services {
    authorizer: AuthorizerServer<AuthorizerService>,
    authz: AuthorizationServer<EnvoyAuthzService>,
    rls: RateLimitServiceServer<EnvoyRlsService>,
    health: HealthServer<HealthService>,
    /// `None` with `--admin-listen off`.
    admin: Option<AdminSvc>,
    /// The HTTP/JSON API over the same services (served with `--http-listen`).
    http: HttpApi,
    /// The limiter, to settle its leases at shutdown.
    limiter: Arc<Limiter<Store>>,
    /// The quota alert webhook's task (`--webhook-url`), stopped on drop.
    _webhook: Option<crate::alerts::webhook::Running>,
}

/// Where the Admin service is served, once its listener is bound.
enum AdminAt {
    /// Nowhere (`--admin-listen off`).
    Off,
    /// On the data-plane listener (`--admin-listen` = the bound `--listen`).
    DataPlane,
    /// On a listener of its own.
    Own(TcpListener),
}

/// Runs the server on `listener` (and the Admin listener the settings ask
/// for) until `shutdown` completes, then drains in-flight calls and returns.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    // The recorder first: what starts next may count.
    let metrics = bind_metrics(&settings).await?;
    let tls = load_tls(&settings)?;
    let services = open_services(&settings)?;
    let addr = listener.local_addr()?;
    let admin_at = bind_admin(&settings, addr).await?;
    let http_listener = bind_http(&settings).await?;
    match &settings.redis_url {
        Some(_) => {
            let t = settings.redis_target()?;
            tracing::info!(%addr, store = "redis", mode = t.mode.as_str(), redis = %t.describe(), tls = tls.is_some(), "tollgate listening")
        }
        None => tracing::info!(%addr, store = "memory", tls = tls.is_some(), "tollgate listening"),
    }

    // Shutdown: tell every server to stop accepting and drain, and give the
    // drain at most `drain_timeout_secs` (a client holding a stream open
    // must not keep the process alive).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.changed().await;
        }
    };
    let data_plane = data_plane_router(&settings, &services, matches!(admin_at, AdminAt::DataPlane))?;
    let data_plane = serve_grpc(data_plane, listener, &settings, tls.as_ref(), stopped());
    let admin = match admin_at {
        AdminAt::Own(admin_listener) => {
            Some(serve_grpc(admin_router(&settings, &services)?, admin_listener, &settings, tls.as_ref(), stopped()))
        }
        AdminAt::Off | AdminAt::DataPlane => None,
    };
    let admin = async move {
        match admin {
            Some(server) => server.await,
            None => Ok(()),
        }
    };
    let http = serve_http(http_listener.map(|l| (l, services.http.clone().router())), tls.clone(), stopped());
    let metrics = serve_http(metrics.map(|(l, h)| (l, crate::telemetry::metrics_router(h))), tls, stopped());
    let grpc = async move { futures::future::try_join(data_plane, admin).await.map_err(BoxError::from) };
    let servers = futures::future::try_join3(grpc, http, metrics);
    tokio::pin!(servers);
    let drain = Duration::from_secs(settings.drain_timeout_secs);
    tokio::select! {
        r = &mut servers => { r?; }
        _ = shutdown => {
            let _ = stop_tx.send(());
            match tokio::time::timeout(drain, &mut servers).await {
                Ok(r) => { r?; }
                Err(_) => tracing::warn!(?drain, "in-flight calls did not finish in time; exiting anyway"),
            }
        }
    }
    // What this replica leased goes back to Redis (what it used is counted).
    let settled = services.limiter.settle_all().await;
    if settled > 0 {
        tracing::info!(leases = settled, "leases settled");
    }
    tracing::info!("tollgate stopped");
    Ok(())
}

/// Reads the TLS files, if `--tls-cert` is given, and starts watching them
/// for changes ([`crate::tls`]); a file that does not load stops the start.
fn load_tls(settings: &Settings) -> Result<Option<ServerTls>, BoxError> {
    let Some(files) = settings.tls_files() else { return Ok(None) };
    let tls = ServerTls::load(files)?;
    tls.watch(crate::tls::RELOAD_INTERVAL);
    let f = tls.files();
    tracing::info!(
        tls_cert = %f.cert.display(),
        tls_key = %f.key.display(),
        tls_client_ca = f.client_ca.as_ref().map(|p| p.display().to_string()),
        client_certificates = if tls.requires_client_cert() { "required" } else { "not asked for" },
        not_after = %tls.not_after().as_deref().unwrap_or("unknown"),
        "TLS on every listener"
    );
    Ok(Some(tls))
}

/// A gRPC router served on `listener` until `stop`: plaintext (h2c), or
/// TLS with ALPN `h2` when `tls` is given.
fn serve_grpc(
    router: Router,
    listener: TcpListener,
    settings: &Settings,
    tls: Option<&ServerTls>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> futures::future::BoxFuture<'static, Result<(), tonic::transport::Error>> {
    let tcp = incoming(listener, settings);
    match tls {
        None => Box::pin(router.serve_with_incoming_shutdown(tcp, stop)),
        Some(tls) => {
            let tls = TlsIncoming::new(tcp, tls.clone(), Alpn::Grpc);
            Box::pin(router.serve_with_incoming_shutdown(tls, stop))
        }
    }
}

/// An HTTP router (the HTTP/JSON API, or metrics) served on its listener
/// until `stop`, if there is one.
fn serve_http(
    served: Option<(TcpListener, axum::Router)>,
    tls: Option<ServerTls>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = Result<(), BoxError>> {
    let server = served.map(|(listener, router)| crate::api::http::serve(listener, router, tls, stop));
    async move {
        match server {
            Some(server) => server.await.map_err(BoxError::from),
            None => Ok(()),
        }
    }
}

/// Installs the Prometheus recorder and binds its listener, if
/// `--metrics-listen` asks for one, and logs it (`metrics_addr=`).
async fn bind_metrics(
    settings: &Settings,
) -> Result<Option<(TcpListener, metrics_exporter_prometheus::PrometheusHandle)>, BoxError> {
    let Some(addr) = settings.metrics_listen else { return Ok(None) };
    let listener =
        TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on --metrics-listen {addr}: {e}"))?;
    let handle = crate::telemetry::prometheus()?;
    tracing::info!(metrics_addr = %listener.local_addr()?, "Prometheus metrics at /metrics");
    Ok(Some((listener, handle)))
}

/// Opens the catalog and the store and builds every service on them; starts
/// the task that keeps health in step with the store.
fn open_services(settings: &Settings) -> Result<Services, BoxError> {
    let account = settings.account_throttle()?;
    let envoy = Arc::new(EnvoyOptions::from_settings(settings)?);
    let admin_tokens = settings.admin_tokens()?;
    let keys = Keys::new(&settings.redis_prefix);
    let catalog = open_catalog(settings, &keys)?;
    catalog.set_audit_max(settings.audit_max_records);
    if settings.config.is_none() && settings.redis_url.is_none() {
        tracing::warn!("no --config and no Redis: the catalog starts empty; add to it through the Admin service");
    }
    let store = open_store(settings)?;
    // The webhook's delivery task, stopped with the server (dropped with
    // its services).
    let webhook = crate::alerts::webhook::Webhook::from_settings(settings)?.map(|hook| hook.spawn(store.clone()));
    let limiter = Limiter::new(catalog.handle(), store.clone(), keys.clone(), account);
    let limiter = match deny_cache(settings, &store) {
        Some(cache) => limiter.with_deny_cache(cache),
        None => limiter,
    };
    let limiter = match lease_table(settings, &store) {
        Some(table) => limiter.with_leases(table),
        None => limiter,
    };
    let limiter = Arc::new(limiter.with_refunds(Refunds {
        signer: decision_signer(settings, &store, &keys),
        window_ms: settings.refund_window.as_millis() as u64,
    }));
    if limiter.leases().is_some() {
        // The settler: hands the leases whose use ended back to Redis.
        let weak = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(SETTLE_EVERY_MS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(limiter) = weak.upgrade() else { return };
                limiter.settle_due().await;
            }
        });
    }
    let admin_service = match settings.admin_listen {
        AdminListen::Off => None,
        AdminListen::Addr(_) => {
            if !admin_tokens.current().configured() {
                tracing::warn!("no admin token configured (TOLLGATE_ADMIN_TOKEN, --admin-token-file or --admin-tokens-file): the Admin service refuses all calls");
            }
            admin_tokens.watch();
            Some(Arc::new(AdminService::new(catalog.clone(), UsageService::new(store.clone(), keys))))
        }
    };
    let admin_auth = AdminAuth::with_tokens(admin_tokens);
    let admin = admin_service.clone().map(|a| {
        let server = AdminServer::from_arc(a).max_decoding_message_size(ADMIN_MAX_MESSAGE_BYTES);
        AdminGate::new(server, admin_auth.clone())
    });
    let readiness = Readiness::new(store.clone(), catalog.clone());

    let reporter = HealthReporter::new();
    let health = HealthServer::new(HealthService::from_health_reporter(reporter.clone()))
        .max_decoding_message_size(settings.max_message_bytes);
    tokio::spawn(watch_health(reporter, readiness.clone()));

    let max = settings.max_message_bytes;
    let authorizer =
        Arc::new(AuthorizerService::new(limiter.clone(), settings.on_store_error).with_catalog(catalog.clone()));
    let http_limits = HttpLimits {
        request_timeout: settings.request_timeout(),
        admin_request_timeout: settings.admin_request_timeout(),
        max_body_bytes: max,
        admin_max_body_bytes: ADMIN_MAX_MESSAGE_BYTES,
    };
    Ok(Services {
        http: HttpApi::new(authorizer.clone(), admin_service, admin_auth, readiness, http_limits)
            .with_api_key_header(&envoy.api_key_header),
        authorizer: AuthorizerServer::from_arc(authorizer).max_decoding_message_size(max),
        authz: AuthorizationServer::new(EnvoyAuthzService::new(limiter.clone(), envoy.clone()))
            .max_decoding_message_size(max),
        rls: RateLimitServiceServer::new(EnvoyRlsService::new(limiter.clone(), envoy)).max_decoding_message_size(max),
        health,
        admin,
        limiter,
        _webhook: webhook,
    })
}

/// Binds the Admin listener, if `--admin-listen` asks for one of its own,
/// and logs where Admin is (`admin_addr=` when it is served).
async fn bind_admin(settings: &Settings, data_plane: SocketAddr) -> Result<AdminAt, BoxError> {
    let addr = match settings.admin_listen {
        AdminListen::Off => {
            tracing::info!("Admin service off (--admin-listen off)");
            return Ok(AdminAt::Off);
        }
        AdminListen::Addr(addr) if addr == data_plane => {
            tracing::info!(admin_addr = %addr, "Admin service on the data-plane listener (--admin-listen is --listen)");
            return Ok(AdminAt::DataPlane);
        }
        AdminListen::Addr(addr) => addr,
    };
    let admin_listener = TcpListener::bind(addr).await.map_err(|e| {
        format!(
            "cannot listen on --admin-listen {addr}: {e}; give it a free address (each replica on a machine \
             needs its own), the --listen address to serve Admin there, or `off`"
        )
    })?;
    tracing::info!(admin_addr = %admin_listener.local_addr()?, "Admin service listening");
    Ok(AdminAt::Own(admin_listener))
}

/// Binds the HTTP/JSON API's listener, if `--http-listen` asks for one, and
/// logs it (`http_addr=`).
async fn bind_http(settings: &Settings) -> Result<Option<TcpListener>, BoxError> {
    let Some(addr) = settings.http_listen else { return Ok(None) };
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot listen on --http-listen {addr}: {e}; give it a free address (each replica on a machine needs its own)")
    })?;
    tracing::info!(http_addr = %listener.local_addr()?, "HTTP/JSON API listening");
    Ok(Some(listener))
}

/// A gRPC server with the listener limits of `settings` and `timeout` as
/// the server-side deadline of every call (a client's shorter
/// `grpc-timeout` wins; tonic answers a call past it CANCELLED "Timeout
/// expired"). Data-plane calls get a server span when traces are on
/// ([`crate::telemetry::traces::grpc_span`]).
fn server(settings: &Settings, timeout: Duration) -> Server {
    Server::builder()
        .trace_fn(crate::telemetry::traces::grpc_span)
        .timeout(timeout)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .http2_keepalive_interval(settings.keepalive_interval())
        .http2_keepalive_timeout(Some(settings.keepalive_timeout()))
        .http2_max_header_list_size(settings.max_header_list_bytes)
}

/// The accepted connections of `listener`, with TCP keepalive and
/// TCP_NODELAY: a decision is a few small HTTP/2 frames; with Nagle on,
/// Envoy's delayed ACK held some ext_authz answers back ~40 ms.
fn incoming(listener: TcpListener, settings: &Settings) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(settings.keepalive_interval())
}

/// The data-plane listener's services (and Admin's, when it shares it).
fn data_plane_router(settings: &Settings, s: &Services, with_admin: bool) -> Result<Router, BoxError> {
    let mut files = vec![AUTHORIZER_PROTO];
    if with_admin {
        files.push(ADMIN_PROTO);
    }
    let max = settings.max_message_bytes;
    let (v1, v1alpha) = reflection(settings, &files)?
        .map(|(v1, v1alpha)| (v1.max_decoding_message_size(max), v1alpha.max_decoding_message_size(max)))
        .unzip();
    Ok(server(settings, settings.request_timeout())
        .add_service(s.health.clone())
        .add_optional_service(v1)
        .add_optional_service(v1alpha)
        .add_service(s.authorizer.clone())
        .add_service(s.authz.clone())
        .add_service(s.rls.clone())
        .add_optional_service(if with_admin { s.admin.clone() } else { None }))
}

/// The Admin listener's services.
fn admin_router(settings: &Settings, s: &Services) -> Result<Router, BoxError> {
    let (v1, v1alpha) = reflection(settings, &[ADMIN_PROTO])?.unzip();
    Ok(server(settings, settings.admin_request_timeout())
        .add_service(s.health.clone())
        .add_optional_service(v1)
        .add_optional_service(v1alpha)
        .add_optional_service(s.admin.clone()))
}

/// gRPC reflection, v1 and v1alpha (the version older clients speak:
/// Python's grpcio-reflection, older grpcurl, Postman, Evans), describing
/// `files` of tollgate's protos, health and reflection itself (both
/// versions), and listing the services they declare; `None` with
/// `--reflection false`.
#[allow(clippy::type_complexity)] // two opaque services; naming them would need a type per version
fn reflection(
    settings: &Settings,
    files: &[&str],
) -> Result<
    Option<(
        v1::server_reflection_server::ServerReflectionServer<impl v1::server_reflection_server::ServerReflection>,
        v1alpha::server_reflection_server::ServerReflectionServer<
            impl v1alpha::server_reflection_server::ServerReflection,
        >,
    )>,
    BoxError,
> {
    if !settings.reflection {
        return Ok(None);
    }
    let all = FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET)?;
    let mut ours = FileDescriptorSet::default();
    for name in files {
        let file = all.file.iter().find(|f| f.name() == *name);
        ours.file.push(file.ok_or_else(|| format!("{name} is missing from the compiled descriptor set"))?.clone());
    }
    // Each version's builder registers its own reflection file; the other's
    // is added so that both list the same services.
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_file_descriptor_set(ours.clone())
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = builder().register_encoded_file_descriptor_set(v1alpha::FILE_DESCRIPTOR_SET).build_v1()?;
    let v1alpha = builder().register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET).build_v1alpha()?;
    Ok(Some((v1, v1alpha)))
}

/// Keeps the health service in step with the store: SERVING while it can
/// answer, NOT_SERVING while it cannot.
async fn watch_health(health: HealthReporter, readiness: Readiness) {
    let mut last = None;
    loop {
        metrics::gauge!("tollgate_catalog_version").set(readiness.catalog_version() as f64);
        let ready = readiness.ready();
        metrics::gauge!("tollgate_store_ready").set(if ready { 1.0 } else { 0.0 });
        if last != Some(ready) {
            let status =
                if ready { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
            health.set_service_status("", status).await;
            for service in [
                "tollgate.v1.Authorizer",
                "envoy.service.auth.v3.Authorization",
                "envoy.service.ratelimit.v3.RateLimitService",
            ] {
                health.set_service_status(service, status).await;
            }
            last = Some(ready);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; draining");
}
