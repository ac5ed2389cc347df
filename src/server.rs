//! Wires the services together and runs them on one listener:
//! `run(listener, settings, shutdown)`.
//!
//! On the one port: `tollgate.v1.Authorizer`, Envoy's ext_authz
//! (`envoy.service.auth.v3.Authorization`) and rate limit service
//! (`envoy.service.ratelimit.v3.RateLimitService`), `grpc.health.v1.Health`
//! (overall status and per service: SERVING while the store can answer,
//! NOT_SERVING while it cannot) and gRPC reflection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::api::admin::{AdminAuth, AdminService};
use crate::api::authorizer::AuthorizerService;
use crate::api::envoy_authz::EnvoyAuthzService;
use crate::api::envoy_http::EnvoyOptions;
use crate::api::envoy_rls::EnvoyRlsService;
use crate::api::pb;
use crate::catalog::file::{self, CatalogFile};
use crate::catalog::store::CatalogService;
use crate::config::Settings;
use crate::limiter::Limiter;
use crate::store::keys::Keys;
use crate::store::memory::MemoryStore;
use crate::store::redis::{redact_url, RedisSettings, RedisStore};
use crate::store::{LimitStore, Store};
use crate::usage::UsageService;

/// Errors that stop the server from starting.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Builds the store the settings ask for.
pub fn open_store(settings: &Settings) -> Result<Store, BoxError> {
    Ok(match &settings.redis_url {
        None => Store::Memory(Arc::new(MemoryStore::new())),
        Some(url) => {
            let mut rs = RedisSettings::new(url);
            rs.timeout = settings.store_timeout();
            rs.max_batch = settings.redis_max_batch.max(1);
            rs.max_in_flight = settings.redis_max_in_flight.max(1);
            Store::Redis(Arc::new(RedisStore::open(rs)?))
        }
    })
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
        Some(url) => {
            CatalogService::redis(url, keys.clone(), Duration::from_millis(settings.catalog_poll_ms.max(50)), file)?
        }
    })
}

/// Runs the server on `listener` until `shutdown` completes, then drains
/// in-flight calls and returns.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    if let Some(addr) = settings.metrics_listen {
        crate::telemetry::serve_metrics(addr)?;
    }
    let account = settings.account_throttle()?;
    let envoy = Arc::new(EnvoyOptions::from_settings(&settings)?);
    let admin_token = settings.admin_token()?;
    let keys = Keys::new(&settings.redis_prefix);
    let catalog = open_catalog(&settings, &keys)?;
    if settings.config.is_none() && settings.redis_url.is_none() {
        tracing::warn!("no --config and no Redis: the catalog starts empty; add to it through the Admin service");
    }
    let store = open_store(&settings)?;
    let limiter = Arc::new(Limiter::new(catalog.handle(), store.clone(), keys.clone(), account));
    // 16 MiB: room for a CSV import of the largest accepted size (5 MiB), so
    // that a too-big file gets a clear INVALID_ARGUMENT, not a transport error.
    let admin = tonic::service::interceptor::InterceptedService::new(
        pb::admin_server::AdminServer::new(AdminService::new(catalog.clone(), UsageService::new(store.clone(), keys)))
            .max_decoding_message_size(16 * 1024 * 1024),
        AdminAuth::new(admin_token.clone()),
    );
    if admin_token.is_none() {
        tracing::warn!("no admin token configured (TOLLGATE_ADMIN_TOKEN or --admin-token-file): the Admin service refuses all calls");
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    let ready = {
        let (store, catalog) = (store.clone(), catalog.clone());
        move || {
            metrics::gauge!("tollgate_catalog_version").set(catalog.version() as f64);
            store.is_ready() && catalog.is_ready()
        }
    };
    tokio::spawn(watch_health(health, ready));

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let addr = listener.local_addr()?;
    let mut main_admin = Some(admin);
    if let Some(admin_addr) = settings.admin_listen {
        let admin = main_admin.take().expect("set above");
        let admin_listener = TcpListener::bind(admin_addr)
            .await
            .map_err(|e| format!("cannot listen on --admin-listen {admin_addr}: {e}"))?;
        tracing::info!(admin_addr = %admin_listener.local_addr()?, "Admin service listening");
        tokio::spawn(async move {
            let r = tonic::transport::Server::builder()
                .add_service(admin)
                .serve_with_incoming(TcpIncoming::from(admin_listener).with_nodelay(Some(true)))
                .await;
            if let Err(e) = r {
                tracing::error!("the Admin listener failed: {e}");
            }
        });
    }
    match &settings.redis_url {
        Some(url) => {
            tracing::info!(%addr, store = "redis", redis = %redact_url(url), "tollgate listening")
        }
        None => tracing::info!(%addr, store = "memory", "tollgate listening"),
    }
    // Shutdown: tell tonic to stop accepting and drain, and give the drain
    // at most `drain_timeout_secs` (a client holding a stream open must not
    // keep the process alive).
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drain = Duration::from_secs(settings.drain_timeout_secs);
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(pb::authorizer_server::AuthorizerServer::new(AuthorizerService::new(
            limiter.clone(),
            settings.on_store_error,
        )))
        .add_service(AuthorizationServer::new(EnvoyAuthzService::new(limiter.clone(), envoy.clone())))
        .add_service(RateLimitServiceServer::new(EnvoyRlsService::new(limiter.clone(), envoy)))
        .add_optional_service(main_admin)
        // TCP_NODELAY: a decision is a few small HTTP/2 frames; with Nagle
        // on, Envoy's delayed ACK held some ext_authz answers back ~40 ms.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r?,
        _ = shutdown => {
            let _ = stop_tx.send(());
            match tokio::time::timeout(drain, &mut server).await {
                Ok(r) => r?,
                Err(_) => tracing::warn!(?drain, "in-flight calls did not finish in time; exiting anyway"),
            }
        }
    }
    tracing::info!("tollgate stopped");
    Ok(())
}

/// Keeps the health service in step with the store: SERVING while it can
/// answer, NOT_SERVING while it cannot.
async fn watch_health(health: tonic_health::server::HealthReporter, ready: impl Fn() -> bool) {
    let mut last = None;
    loop {
        let ready = ready();
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
