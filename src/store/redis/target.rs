//! Where Redis is: one node, a Redis Cluster, or a primary found through
//! Sentinel; how to connect to any of its nodes (credentials and TLS taken
//! from the URLs given); and how to find the node that holds a slot or the
//! current primary.
//!
//! - **single** (`--redis-mode single`, the default): one URL, one node.
//! - **cluster**: `--redis-url` is a comma-separated list of seed nodes; the
//!   `redis` crate's cluster client routes every command by its key's slot and
//!   follows MOVED/ASK and failovers.
//! - **sentinel**: `--redis-url` lists the sentinels and
//!   `--redis-sentinel-master` names the primary; the primary's address is
//!   asked of the sentinels (the first that answers), and asked again when the
//!   node stops being a primary (READONLY, a refused connection, `ROLE`).
//!
//! `rediss://` URLs use TLS in every mode, trusting the system's roots or the
//! CA of `--redis-ca-cert`. Credentials and TLS of the first URL are used for
//! every node the mode finds (cluster nodes, the primary behind Sentinel).

use std::path::Path;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use super::redact_url;
use crate::store::StoreError;

/// How the Redis deployment is organised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// One Redis node (or a primary behind a fixed address).
    #[default]
    Single,
    /// A Redis Cluster.
    Cluster,
    /// A primary and its replicas, watched by Redis Sentinel.
    Sentinel,
}

impl Mode {
    /// The name used in settings and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Cluster => "cluster",
            Mode::Sentinel => "sentinel",
        }
    }
}

/// A Redis deployment as the settings describe it.
#[derive(Clone)]
pub struct Target {
    /// The mode.
    pub mode: Mode,
    /// The URLs as given (nodes, seeds or sentinels).
    pub urls: Vec<String>,
    /// With Sentinel: the primary's name.
    pub master: Option<String>,
    /// A CA certificate (PEM) to trust for `rediss://`.
    ca_pem: Option<Vec<u8>>,
    /// The first URL, parsed: credentials, database and TLS for every node.
    template: ConnectionInfo,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({}, {})", self.mode.as_str(), self.describe())
    }
}

fn invalid(msg: String) -> StoreError {
    StoreError::Internal(msg)
}

impl Target {
    /// Reads the settings: `urls` comma-separated.
    pub fn new(mode: Mode, urls: &str, master: Option<&str>, ca_cert: Option<&Path>) -> Result<Self, StoreError> {
        let list: Vec<String> = urls.split(',').map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect();
        let Some(first) = list.first() else {
            return Err(invalid(
                "--redis-url is empty: give redis://HOST:PORT (a comma-separated list in cluster and sentinel modes)"
                    .into(),
            ));
        };
        if mode == Mode::Single && list.len() > 1 {
            return Err(invalid(format!(
                "--redis-url lists {} URLs, but --redis-mode is single: use --redis-mode cluster (seed nodes) or sentinel (sentinels)",
                list.len()
            )));
        }
        let master = master.map(str::trim).filter(|m| !m.is_empty()).map(str::to_string);
        if mode == Mode::Sentinel && master.is_none() {
            return Err(invalid("--redis-mode sentinel needs --redis-sentinel-master NAME (the primary's name in the sentinels' config)".into()));
        }
        for u in &list {
            u.as_str()
                .into_connection_info()
                .map_err(|e| invalid(format!("invalid Redis URL {}: {e}", redact_url(u))))?;
        }
        let ca_pem = match ca_cert {
            Some(p) => Some(std::fs::read(p).map_err(|e| invalid(format!("--redis-ca-cert {}: {e}", p.display())))?),
            None => None,
        };
        let template = first.as_str().into_connection_info().map_err(|e| invalid(e.to_string()))?;
        Ok(Self { mode, urls: list, master, ca_pem, template })
    }

    /// A single-node target (tests, and the single mode).
    pub fn single(url: &str) -> Result<Self, StoreError> {
        Self::new(Mode::Single, url, None, None)
    }

    /// The URLs with passwords hidden, for logs.
    pub fn describe(&self) -> String {
        self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(",")
    }

    fn tls(&self) -> bool {
        matches!(self.template.addr(), ConnectionAddr::TcpTls { .. })
    }

    fn certs(&self) -> redis::TlsCertificates {
        redis::TlsCertificates { client_tls: None, root_cert: self.ca_pem.clone() }
    }

    /// A client for the node at `host:port`, with the first URL's
    /// credentials, database and TLS.
    pub fn node(&self, host: &str, port: u16) -> Result<redis::Client, StoreError> {
        let addr = if self.tls() {
            ConnectionAddr::TcpTls { host: host.to_string(), port, insecure: false, tls_params: None }
        } else {
            ConnectionAddr::Tcp(host.to_string(), port)
        };
        let info = self.template.clone().set_addr(addr);
        self.client(info)
    }

    /// A client for one of the URLs given.
    pub fn url_client(&self, url: &str) -> Result<redis::Client, StoreError> {
        let info =
            url.into_connection_info().map_err(|e| invalid(format!("invalid Redis URL {}: {e}", redact_url(url))))?;
        self.client(info)
    }

    fn client(&self, info: ConnectionInfo) -> Result<redis::Client, StoreError> {
        let r = if self.tls() && self.ca_pem.is_some() {
            redis::Client::build_with_tls(info, self.certs())
        } else {
            redis::Client::open(info)
        };
        r.map_err(|e| invalid(format!("cannot set up a Redis client ({}): {e}", self.describe())))
    }

    /// A cluster client on the seed URLs.
    pub fn cluster(&self, response: std::time::Duration) -> Result<redis::cluster::ClusterClient, StoreError> {
        let infos: Vec<ConnectionInfo> = self
            .urls
            .iter()
            .map(|u| u.as_str().into_connection_info())
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        let mut b = redis::cluster::ClusterClientBuilder::new(infos)
            .connection_timeout(std::time::Duration::from_secs(1))
            .response_timeout(response)
            .retries(2);
        if self.tls() && self.ca_pem.is_some() {
            b = b.certs(self.certs());
        }
        b.build().map_err(|e| invalid(format!("cannot set up the Redis Cluster client ({}): {e}", self.describe())))
    }

    /// The connection information of a client (for pools).
    pub fn info_of(client: &redis::Client) -> ConnectionInfo {
        client.get_connection_info().clone()
    }

    /// The address of the node that should take writes for `slot` (cluster)
    /// or of the primary (single: the URL; sentinel: asked of the sentinels).
    pub async fn primary(&self, slot: Option<u16>) -> Result<(String, u16), StoreError> {
        match self.mode {
            Mode::Single => Ok(host_port(self.template.addr())),
            Mode::Sentinel => self.ask_sentinels().await,
            Mode::Cluster => self.slot_owner(slot.unwrap_or(0)).await,
        }
    }

    async fn ask_sentinels(&self) -> Result<(String, u16), StoreError> {
        let name = self.master.as_deref().unwrap_or_default();
        let mut last = String::from("no sentinel given");
        for u in &self.urls {
            let client = self.url_client(u)?;
            let answer = async {
                let mut c = client.get_multiplexed_async_connection().await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(name)
                    .query_async::<Option<(String, u16)>>(&mut c)
                    .await
            };
            match tokio::time::timeout(std::time::Duration::from_secs(1), answer).await {
                Ok(Ok(Some(addr))) => return Ok(addr),
                Ok(Ok(None)) => last = format!("sentinel {} does not know a primary named {name:?}", redact_url(u)),
                Ok(Err(e)) => last = format!("sentinel {}: {e}", redact_url(u)),
                Err(_) => last = format!("sentinel {} did not answer within 1 s", redact_url(u)),
            }
        }
        Err(StoreError::Unavailable(format!("no sentinel gave the address of primary {name:?}: {last}")))
    }

    async fn slot_owner(&self, slot: u16) -> Result<(String, u16), StoreError> {
        let mut last = String::from("no seed given");
        for u in &self.urls {
            let client = self.url_client(u)?;
            let answer = async {
                let mut c = client.get_multiplexed_async_connection().await?;
                redis::cmd("CLUSTER").arg("SLOTS").query_async::<redis::Value>(&mut c).await
            };
            match tokio::time::timeout(std::time::Duration::from_secs(1), answer).await {
                Ok(Ok(v)) => {
                    if let Some(addr) = owner_in_slots(&v, slot) {
                        return Ok(addr);
                    }
                    last = format!("{} knows no primary for slot {slot}", redact_url(u));
                }
                Ok(Err(e)) => last = format!("{}: {e}", redact_url(u)),
                Err(_) => last = format!("{} did not answer within 1 s", redact_url(u)),
            }
        }
        Err(StoreError::Unavailable(format!("no cluster node named the primary of slot {slot}: {last}")))
    }
}

fn host_port(addr: &ConnectionAddr) -> (String, u16) {
    match addr {
        ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
        ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
        _ => (String::new(), 0),
    }
}

/// The slot ranges of a `CLUSTER SLOTS` reply with their primaries:
/// `(first slot, last slot, "host:port")`, sorted.
pub fn slot_ranges(v: &redis::Value) -> Vec<(u16, u16, String)> {
    let redis::Value::Array(ranges) = v else { return Vec::new() };
    let mut out: Vec<(u16, u16, String)> = ranges
        .iter()
        .filter_map(|r| {
            let redis::Value::Array(parts) = r else { return None };
            let (start, end) = (int(parts.first()?)?, int(parts.get(1)?)?);
            let (host, port) = owner_in_slots(v, start as u16)?;
            Some((start as u16, end as u16, format!("{host}:{port}")))
        })
        .collect();
    out.sort();
    out
}

/// The primary of `slot` in a `CLUSTER SLOTS` reply: ranges of
/// `[start, end, [host, port, id], replicas...]`.
fn owner_in_slots(v: &redis::Value, slot: u16) -> Option<(String, u16)> {
    let redis::Value::Array(ranges) = v else { return None };
    for r in ranges {
        let redis::Value::Array(parts) = r else { continue };
        let (Some(start), Some(end)) = (parts.first().and_then(int), parts.get(1).and_then(int)) else { continue };
        if (start..=end).contains(&i64::from(slot)) {
            let redis::Value::Array(node) = parts.get(2)? else { return None };
            let host = match node.first()? {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            let port = int(node.get(1)?)? as u16;
            return Some((host, port));
        }
    }
    None
}

fn int(v: &redis::Value) -> Option<i64> {
    match v {
        redis::Value::Int(i) => Some(*i),
        _ => None,
    }
}

/// The cluster slot of a key: CRC16 (XMODEM) of its hash tag (the part
/// between the first `{` and the next `}`, when not empty) or of the whole
/// key, modulo 16384 (the Redis Cluster specification).
pub fn slot_of(key: &str) -> u16 {
    let k = key.as_bytes();
    let tagged = match k.iter().position(|&b| b == b'{') {
        Some(open) => match k[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &k[open + 1..open + 1 + len],
            _ => k,
        },
        None => k,
    };
    let mut crc: u16 = 0;
    for &b in tagged {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert!(Target::new(Mode::Single, "redis://a:1,redis://b:2", None, None).is_err());
        assert!(Target::new(Mode::Sentinel, "redis://a:26379", None, None).is_err());
        assert!(Target::new(Mode::Cluster, " , ", None, None).is_err());
        let t = Target::new(Mode::Cluster, "redis://:pw@a:1, redis://b:2", None, None).unwrap();
        assert_eq!(t.urls.len(), 2);
        assert_eq!(t.describe(), "redis://:***@a:1,redis://b:2");
        let c = t.node("10.0.0.9", 7001).unwrap();
        let info = c.get_connection_info();
        assert_eq!(host_port(info.addr()), ("10.0.0.9".to_string(), 7001));
        assert_eq!(info.redis_settings().password(), Some("pw"), "credentials of the first URL");
    }

    #[test]
    fn slots_are_the_cluster_specification_s() {
        for k in ["foo", "somekey", "{user1000}.following", "a{}b", "{}{x}", "tg:{k:abc}:tb:p", "tg:{cat}:head", ""] {
            let theirs = format!("{:?}", redis::cluster_routing::Slot::for_key(k.as_bytes()));
            assert_eq!(theirs, format!("Slot({})", slot_of(k)), "{k:?}");
        }
        assert_eq!(slot_of("foo"), 12182);
    }

    #[test]
    fn slots_of_keys_follow_hash_tags() {
        assert_eq!(slot_of("tg:{k:abc}:tb:p"), slot_of("tg:{k:abc}:q:p:20270101"));
        assert_eq!(slot_of("{cat}"), slot_of("tg:{cat}:head"));
    }
}
