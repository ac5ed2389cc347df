//! Delivery of quota alert events to `--webhook-url` (docs/operations.md,
//! "Webhooks"): each event POSTed as JSON, signed, at least once, by a
//! background task per replica, never on a decision's path.
//!
//! - **Signature**: `X-Tollgate-Signature: t=UNIX_SECONDS,v1=HEX`, where
//!   `HEX` is the HMAC-SHA256 of `UNIX_SECONDS.BODY` with
//!   `--webhook-secret` ([`sign`], [`verify`]); `X-Tollgate-Event-Id` is the
//!   event's id (a receiver deduplicates by it: delivery is at least once).
//! - **Retries**: any answer but 2xx, a refused or dropped connection, or no
//!   answer within [`HTTP_TIMEOUT`] is tried again after 1 s, doubling to
//!   60 s, for as long as it takes; events are delivered one at a time, in
//!   order, per replica.
//! - **With Redis**, the replicas share the stream through a consumer group
//!   ([`GROUP`]): each replica is a consumer (`XREADGROUP`), acknowledges an
//!   event (`XACK`) only once it was delivered, and takes over (`XAUTOCLAIM`)
//!   the events another consumer left undelivered for
//!   `--webhook-claim-after-secs` (a replica that died). While it retries,
//!   a replica marks its event as still in hand (`XCLAIM ... JUSTID`), so a
//!   live replica's slow receiver is not taken over. So each event is
//!   delivered at least once whatever replica dies. The group is made at the
//!   start of the stream the first time: events already kept are delivered
//!   too.
//! - **In memory**, the task reads the store's ring in order; events not yet
//!   delivered when the process stops are not delivered (as everything the
//!   memory store keeps, they are gone).
//!
//! The task reads on the store's shared connection with no blocking
//! command (it polls every [`POLL`]), so it never holds up a decision.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;

use super::AlertEvent;
use crate::config::Settings;
use crate::store::redis::events::{events_of, query};
use crate::store::redis::link::Link;
use crate::store::{Store, StoreError};

/// Default of `--webhook-claim-after-secs`.
pub const DEFAULT_CLAIM_AFTER_SECS: u64 = 30;
/// The consumer group of the webhook on the events stream.
pub const GROUP: &str = "tollgate-webhook";
/// The first wait before a failed delivery is tried again.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long one attempt may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the task looks for new events when there were none.
pub const POLL: Duration = Duration::from_millis(250);
/// Events taken at once: one, so that a replica holds (in the group's
/// pending list) only the event it is delivering, and the others stay for
/// the other replicas.
const BATCH: usize = 1;

type HttpClient = Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>>;

/// The webhook: where to, with which secret.
pub struct Webhook {
    url: http::Uri,
    secret: Arc<[u8]>,
    claim_after: Duration,
    /// This replica's consumer name in the group.
    consumer: String,
    client: HttpClient,
    /// Waits between attempts (tests shorten them).
    backoff: (Duration, Duration),
    /// Whether the consumer group is known to exist (made again after an
    /// error: a Redis that restarted empty has none).
    group: std::sync::atomic::AtomicBool,
}

/// The running task; stopped when dropped.
pub struct Running(tokio::task::JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The signature header's value of `body` sent at `unix_secs`.
pub fn sign(secret: &[u8], unix_secs: u64, body: &[u8]) -> String {
    format!("t={unix_secs},v1={}", hex::encode(mac(secret, unix_secs, body)))
}

fn mac(secret: &[u8], unix_secs: u64, body: &[u8]) -> Vec<u8> {
    // (HMAC takes a key of any length)
    let mut m = Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(unix_secs.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().to_vec()
}

/// Whether `header` (`t=…,v1=…`) signs `body` with `secret` (compared in
/// constant time). A receiver should also refuse a `t` far from its clock.
pub fn verify(secret: &[u8], header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    let mut m = Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.verify_slice(&v1).is_ok()
}

impl Webhook {
    /// The webhook `settings` ask for (`--webhook-url`), if any.
    pub fn from_settings(settings: &Settings) -> Result<Option<Self>, crate::server::BoxError> {
        let Some(url) = &settings.webhook_url else { return Ok(None) };
        let secret = settings.webhook_secret.as_deref().unwrap_or_default();
        if secret.is_empty() {
            return Err(
                "--webhook-url needs --webhook-secret (or TOLLGATE_WEBHOOK_SECRET): the key its bodies are signed with"
                    .into(),
            );
        }
        let hook = Self::new(url, secret.as_bytes(), Duration::from_secs(settings.webhook_claim_after_secs))?;
        tracing::info!(url = %redacted(&hook.url), "quota alert webhook on");
        Ok(Some(hook))
    }

    /// A webhook to `url`, signing with `secret`.
    pub fn new(url: &str, secret: &[u8], claim_after: Duration) -> Result<Self, crate::server::BoxError> {
        let uri: http::Uri = url.parse().map_err(|e| format!("--webhook-url {url:?}: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(format!("--webhook-url {url:?}: give an http:// or https:// URL with a host").into());
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
            Ok(b) => b,
            Err(e) if uri.scheme_str() == Some("https") => {
                return Err(format!("--webhook-url: the system's root certificates cannot be read: {e}").into())
            }
            // (an http:// URL needs no roots)
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
        };
        let https = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "tollgate".into());
        let consumer = format!("{host}-{}-{:08x}", std::process::id(), rand::random::<u32>());
        Ok(Self {
            url: uri,
            secret: secret.into(),
            claim_after,
            consumer,
            client,
            backoff: (FIRST_BACKOFF, MAX_BACKOFF),
            group: Default::default(),
        })
    }

    /// Starts delivering the events of `store`.
    pub fn spawn(self, store: Store) -> Running {
        Running(tokio::spawn(async move {
            match store {
                Store::Memory(m) => self.run_memory(m.events.clone()).await,
                Store::Redis(r) => self.run_redis(r.link(), r.events_at().stream.clone()).await,
            }
        }))
    }

    /// One attempt: POST the event; `Ok` on a 2xx answer.
    async fn attempt(&self, e: &AlertEvent, body: &Bytes) -> Result<(), String> {
        let now = crate::model::now_ms() / 1000;
        let req = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .header("x-tollgate-event-id", &e.id)
            .header("x-tollgate-signature", sign(&self.secret, now, body))
            .body(Full::new(body.clone()))
            .map_err(|err| err.to_string())?;
        let answer = tokio::time::timeout(HTTP_TIMEOUT, async {
            let resp = self.client.request(req).await.map_err(|err| format!("{err:?}"))?;
            let status = resp.status();
            // The body is read (so the connection can be used again); one
            // cut off is a failed delivery, whatever the status said.
            resp.into_body().collect().await.map_err(|err| format!("the answer broke off: {err}"))?;
            Ok::<_, String>(status)
        })
        .await
        .map_err(|_| format!("no answer within {HTTP_TIMEOUT:?}"))??;
        if answer.is_success() {
            Ok(())
        } else {
            Err(format!("answered {answer}"))
        }
    }

    /// Delivers `e`, trying again (1 s doubling to 60 s) until it is
    /// accepted. `still_mine` runs after a failed attempt and every half
    /// claim-after time while waiting (Redis: keeps the event from being
    /// taken over while this replica is alive).
    async fn deliver<F, Fut>(&self, e: &AlertEvent, mut still_mine: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let body = Bytes::from(e.to_json());
        let mut wait = self.backoff.0;
        loop {
            match self.attempt(e, &body).await {
                Ok(()) => {
                    metrics::counter!("tollgate_webhook_deliveries_total", "result" => "delivered").increment(1);
                    return;
                }
                Err(why) => {
                    metrics::counter!("tollgate_webhook_deliveries_total", "result" => "failed").increment(1);
                    tracing::warn!(event_id = %e.id, error = %why, retry_in = ?wait, "a quota alert webhook delivery failed; trying again");
                }
            }
            still_mine().await;
            let until = tokio::time::Instant::now() + wait;
            while tokio::time::Instant::now() < until {
                let slice = (self.claim_after / 2).max(Duration::from_millis(100));
                tokio::time::sleep_until(until.min(tokio::time::Instant::now() + slice)).await;
                still_mine().await;
            }
            wait = (wait * 2).min(self.backoff.1);
        }
    }

    /// Memory: the ring, in order.
    async fn run_memory(self, ring: Arc<super::EventRing>) {
        let mut after: Option<String> = None;
        loop {
            let appended = ring.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let page = ring.page(0, after.as_deref(), BATCH);
            if page.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(1), appended).await;
                continue;
            }
            for e in page {
                self.deliver(&e, || async {}).await;
                after = Some(e.id);
            }
        }
    }

    /// Redis: the consumer group (module docs).
    async fn run_redis(self, link: Arc<Link>, stream: String) {
        let mut wait = self.backoff.0;
        loop {
            match self.redis_round(&link, &stream).await {
                Ok(true) => wait = self.backoff.0,
                Ok(false) => tokio::time::sleep(POLL).await,
                Err(e) => {
                    self.group.store(false, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(error = %e, retry_in = ?wait, "the quota alert webhook cannot read the events stream");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(self.backoff.1);
                }
            }
        }
    }

    /// Takes over what a dead consumer left, else reads new events, and
    /// delivers them; `Ok(false)` when there was nothing.
    async fn redis_round(&self, link: &Link, stream: &str) -> Result<bool, StoreError> {
        self.ensure_group(link, stream).await?;
        let mut claim = redis::cmd("XAUTOCLAIM");
        claim
            .arg(stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(self.claim_after.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(BATCH);
        let claimed: redis::streams::StreamAutoClaimReply = query(link, &claim).await?;
        let mut events = events_of(claimed.claimed);
        if !events.is_empty() {
            tracing::info!(events = events.len(), "quota alert events taken over from a replica that left them");
        } else {
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg(GROUP)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(BATCH)
                .arg("STREAMS")
                .arg(stream)
                .arg(">");
            let reply: Option<redis::streams::StreamReadReply> = query(link, &read).await?;
            events = reply.map(|r| r.keys.into_iter().flat_map(|k| events_of(k.ids)).collect()).unwrap_or_default();
        }
        if events.is_empty() {
            return Ok(false);
        }
        for e in events {
            let touch = || async {
                let mut c = redis::cmd("XCLAIM");
                c.arg(stream).arg(GROUP).arg(&self.consumer).arg(0).arg(&e.id).arg("JUSTID");
                let _ = query::<redis::Value>(link, &c).await;
            };
            self.deliver(&e, touch).await;
            let mut ack = redis::cmd("XACK");
            ack.arg(stream).arg(GROUP).arg(&e.id);
            // (an ack lost here delivers the event again later: at least once)
            if let Err(err) = query::<i64>(link, &ack).await {
                tracing::warn!(event_id = %e.id, error = %err, "a delivered quota alert event could not be acknowledged; it may be delivered again");
            }
        }
        Ok(true)
    }

    /// Makes the group at the start of the stream, unless it exists.
    async fn ensure_group(&self, link: &Link, stream: &str) -> Result<(), StoreError> {
        if self.group.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let mut c = redis::cmd("XGROUP");
        c.arg("CREATE").arg(stream).arg(GROUP).arg("0").arg("MKSTREAM");
        match query::<redis::Value>(link, &c).await {
            Ok(_) => {}
            Err(StoreError::Internal(m)) if m.contains("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
        self.group.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Shortens the waits between attempts (tests).
    pub fn with_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = (first, max);
        self
    }
}

/// The URL as logged: scheme, host and port (a path or query may hold a
/// token).
fn redacted(u: &http::Uri) -> String {
    format!("{}://{}", u.scheme_str().unwrap_or("?"), u.authority().map_or("?", |a| a.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_with_the_secret_only() {
        let h = sign(b"s3cret", 1_700_000_000, b"{\"a\":1}");
        assert!(h.starts_with("t=1700000000,v1="), "{h}");
        assert!(verify(b"s3cret", &h, b"{\"a\":1}"));
        assert!(!verify(b"other", &h, b"{\"a\":1}"));
        assert!(!verify(b"s3cret", &h, b"{\"a\":2}"));
        assert!(!verify(b"s3cret", "t=1,v1=zz", b"{}"));
    }
}
