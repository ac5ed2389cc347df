//! The decision path's connection to Redis, in every mode (`target.rs`).
//!
//! - single and sentinel: one multiplexed [`ConnectionManager`] to the
//!   primary. It reconnects by itself when the connection drops; a reply that
//!   says the node is no primary any more (READONLY after a failover,
//!   MASTERDOWN) or, with Sentinel, a node that cannot be reached, makes the
//!   link find the primary again and connect to it ([`Link::relocate`]):
//!   without that, a connection kept open to a demoted node would answer
//!   READONLY to every script for good.
//! - cluster: the `redis` crate's cluster connection, which routes by slot,
//!   follows MOVED/ASK and refreshes its view of the cluster by itself.
//!
//! The link is built lazily: Redis unreachable at start is not an error, the
//! probe keeps trying.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;

use super::target::{Mode, Target};
use super::{classify, redact_url};
use crate::store::StoreError;

/// A connection to Redis as the mode wants it.
#[derive(Clone)]
pub enum Conn {
    /// To one node (single, or the primary found through Sentinel).
    Node {
        /// The connection.
        conn: ConnectionManager,
        /// `host:port`, for logs and metrics.
        addr: String,
    },
    /// To a cluster.
    Cluster(ClusterConnection),
}

/// The shared connection, replaced when the primary moves.
pub struct Link {
    /// Where Redis is.
    pub target: Target,
    response_timeout: Duration,
    current: ArcSwapOption<Conn>,
    relocating: tokio::sync::Mutex<()>,
    /// On a cluster: who serves which slots, as last read (for metrics per
    /// node and for counting failovers); refreshed by the probe.
    slots: arc_swap::ArcSwap<Vec<(u16, u16, String)>>,
}

impl Link {
    /// A link to `target`; nothing is connected yet.
    pub fn new(target: Target, response_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            target,
            response_timeout,
            current: ArcSwapOption::empty(),
            relocating: Default::default(),
            slots: Default::default(),
        })
    }

    /// The connection, connecting first if there is none.
    pub async fn conn(&self) -> Result<Conn, StoreError> {
        if let Some(c) = self.current.load_full() {
            return Ok((*c).clone());
        }
        self.relocate("first connection").await
    }

    /// The connection if there is one, without connecting.
    pub fn current(&self) -> Option<Conn> {
        self.current.load_full().map(|c| (*c).clone())
    }

    /// Finds the primary again and connects to it (single: a new connection
    /// to the same URL). Callers racing to relocate wait for one to finish.
    pub async fn relocate(&self, why: &str) -> Result<Conn, StoreError> {
        let before = self.current.load_full();
        let _g = self.relocating.lock().await;
        // Someone relocated while we waited: use theirs.
        let now = self.current.load_full();
        if let (Some(now), false) = (&now, same(&before, &now)) {
            return Ok((**now).clone());
        }
        let conn = self.connect().await?;
        if let Conn::Node { addr, .. } = &conn {
            let old = before.as_ref().and_then(|c| match &**c {
                Conn::Node { addr, .. } => Some(addr.clone()),
                Conn::Cluster(_) => None,
            });
            if old.as_deref() != Some(addr.as_str()) {
                if old.is_some() {
                    metrics::counter!("tollgate_redis_failovers_total").increment(1);
                    tracing::warn!(from = ?old, to = %addr, why, "Redis primary moved; connected to the new one");
                } else {
                    tracing::debug!(to = %addr, why, "connected to Redis");
                }
            }
        }
        self.current.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        match self.target.mode {
            Mode::Cluster => {
                let client = self.target.cluster(self.response_timeout)?;
                let c = tokio::time::timeout(Duration::from_secs(2), client.get_async_connection())
                    .await
                    .map_err(|_| {
                        StoreError::Unavailable(format!("no cluster node answered ({})", self.target.describe()))
                    })?
                    .map_err(classify)?;
                Ok(Conn::Cluster(c))
            }
            Mode::Single | Mode::Sentinel => {
                let (host, port) = self.target.primary(None).await?;
                let client = if self.target.mode == Mode::Single {
                    self.target.url_client(&self.target.urls[0])?
                } else {
                    self.target.node(&host, port)?
                };
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(self.response_timeout))
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(1));
                let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
                    StoreError::Internal(format!(
                        "cannot set up the Redis connection ({}): {e}",
                        self.target.describe()
                    ))
                })?;
                Ok(Conn::Node { conn, addr: format!("{host}:{port}") })
            }
        }
    }

    /// Whether an error means the connection is to the wrong node (a demoted
    /// primary, or with Sentinel an unreachable one), so that the link should
    /// find the primary again.
    pub fn calls_for_relocation(&self, e: &redis::RedisError) -> bool {
        use redis::{ErrorKind::Server, ServerErrorKind as S};
        if self.target.mode == Mode::Cluster {
            return false;
        }
        let wrong_node = matches!(e.kind(), Server(S::ReadOnly | S::MasterDown)) || e.to_string().contains("READONLY");
        let unreachable = e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped();
        wrong_node || (self.target.mode == Mode::Sentinel && unreachable)
    }

    /// The node (`host:port`) that serves `slot` as last read, or `?`.
    pub fn node_of(&self, slot: u16) -> String {
        let map = self.slots.load();
        let i = map.partition_point(|(_, end, _)| *end < slot);
        match map.get(i) {
            Some((start, _, addr)) if *start <= slot => addr.clone(),
            _ => "?".into(),
        }
    }

    /// Takes a new view of the cluster's slots; counts and logs each range
    /// whose primary changed (a failover or a resharding).
    pub fn set_slots(&self, new: Vec<(u16, u16, String)>) {
        if new.is_empty() {
            return;
        }
        let old = self.slots.load();
        if !old.is_empty() {
            let moved = new.iter().filter(|(s, _, a)| self.node_at(&old, *s).is_some_and(|o| o != *a)).count();
            if moved > 0 {
                metrics::counter!("tollgate_redis_failovers_total").increment(1);
                tracing::warn!(
                    ranges = moved,
                    "Redis Cluster slots moved to other primaries (a failover or a resharding)"
                );
            }
        }
        self.slots.store(Arc::new(new));
    }

    fn node_at(&self, map: &[(u16, u16, String)], slot: u16) -> Option<String> {
        map.iter().find(|(s, e, _)| (*s..=*e).contains(&slot)).map(|(_, _, a)| a.clone())
    }

    /// Where the link points, for logs.
    pub fn describe(&self) -> String {
        match self.current().as_ref() {
            Some(Conn::Node { addr, .. }) => format!("{} at {addr}", self.target.mode.as_str()),
            _ => format!("{} {}", self.target.mode.as_str(), self.target.describe()),
        }
    }
}

fn same(a: &Option<Arc<Conn>>, b: &Option<Arc<Conn>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// `redact_url` for the first URL of a list (for logs).
pub fn first_url(urls: &str) -> String {
    redact_url(urls.split(',').next().unwrap_or(""))
}
