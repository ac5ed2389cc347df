//! [`RedisSentinel`]: one primary, one replica and three sentinels
//! (`redis-server --sentinel`) as local processes, that tests can kill,
//! restart, demote and watch fail over.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tempfile::TempDir;

use super::node::{LocalNode, NodeKind};
use super::resp::{info_field, Connector, Reply};
use super::tls::{Tls, TlsFiles};
use super::{fixture_tempdir, local_redis_server, node_url, wait_until, FILLER_PREFIX, LOCALHOST};

/// The name the sentinels monitor the primary under.
const MASTER_NAME: &str = "tollgate";
/// How many sentinels, and how many must agree that the primary is down.
const SENTINELS: usize = 3;
const QUORUM: usize = 2;
/// Default `down-after-milliseconds`.
const DOWN_AFTER: Duration = Duration::from_millis(1000);
/// Default `failover-timeout`. Sentinels do not start another automatic
/// failover of the same primary within twice this.
const FAILOVER_TIMEOUT: Duration = Duration::from_millis(3000);
/// How long a new or restarted setup gets to become healthy.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a failover may take beyond `down-after` and `failover-timeout`.
const FAILOVER_SLACK: Duration = Duration::from_secs(30);

/// Options of a [`RedisSentinel`]; start with [`RedisSentinel::builder`].
#[derive(Clone, Debug)]
pub struct SentinelBuilder {
    down_after: Duration,
    failover_timeout: Duration,
    tls: Tls,
}

impl SentinelBuilder {
    /// `down-after-milliseconds`: how long the primary must not answer
    /// before a sentinel considers it down (default 1 s).
    pub fn down_after(mut self, d: Duration) -> Self {
        self.down_after = d;
        self
    }

    /// `failover-timeout` (default 3 s). Sentinels start no new automatic
    /// failover of the same primary within twice this after the last one.
    pub fn failover_timeout(mut self, d: Duration) -> Self {
        self.failover_timeout = d;
        self
    }

    /// TLS mode of the data nodes, the sentinels and replication (default
    /// [`Tls::Off`]).
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }

    /// Starts the primary, the replica (`--replicaof`) and the sentinels,
    /// and waits until the setup is healthy (see
    /// [`RedisSentinel::wait_until_healthy`]). Panics with all logs on failure.
    pub fn start(self) -> RedisSentinel {
        RedisSentinel::start_from(self)
    }
}

/// A primary, a replica and three sentinels monitoring them as
/// [`master_name`](RedisSentinel::master_name) (quorum 2), killed and
/// cleaned up on drop. Nodes (data nodes and sentinels) are named by port.
pub struct RedisSentinel {
    // Dropped before `tempdir` (field order), so the processes are gone first.
    data: Vec<Node>,
    sentinels: Vec<Node>,
    down_after: Duration,
    failover_timeout: Duration,
    tls: Option<Arc<TlsFiles>>,
    connector: Connector,
    tempdir: TempDir,
}

struct Node {
    port: u16,
    name: &'static str,
    node: Mutex<LocalNode>,
}

impl Node {
    fn new(name: &'static str, node: LocalNode) -> Node {
        Node { port: node.port(), name, node: Mutex::new(node) }
    }

    fn lock(&self) -> MutexGuard<'_, LocalNode> {
        self.node.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::new(LOCALHOST, self.port)
    }
}

impl RedisSentinel {
    /// The default setup: plain TCP, `down-after` 1 s, `failover-timeout` 3 s.
    pub fn start() -> RedisSentinel {
        Self::builder().start()
    }

    /// The default setup over TLS ([`Tls::On`]).
    pub fn start_tls() -> RedisSentinel {
        Self::builder().tls(Tls::On).start()
    }

    /// Options: `down-after`, `failover-timeout`, TLS.
    pub fn builder() -> SentinelBuilder {
        SentinelBuilder { down_after: DOWN_AFTER, failover_timeout: FAILOVER_TIMEOUT, tls: Tls::Off }
    }

    fn start_from(opts: SentinelBuilder) -> RedisSentinel {
        let bin = local_redis_server("RedisSentinel");
        let tempdir = fixture_tempdir("tollgate-redis-sentinel-");
        let tls = (opts.tls != Tls::Off).then(|| Arc::new(TlsFiles::generate(&tempdir.path().join("tls"), opts.tls)));
        let connector = tls.as_ref().map_or_else(Connector::plain, |t| Connector::tls(t.client_config()));
        let dir = |name: &str| tempdir.path().join(name);
        let standalone = NodeKind::Standalone;
        let primary = LocalNode::start(bin.clone(), dir("primary"), standalone.clone(), tls.clone(), None);
        let primary_port = primary.port();
        let replica = LocalNode::start(bin.clone(), dir("replica"), standalone, tls.clone(), Some(primary_port));
        let data = vec![Node::new("primary", primary), Node::new("replica", replica)];

        let ms = |d: Duration| d.as_millis();
        let config = format!(
            "sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} {QUORUM}\n\
             sentinel down-after-milliseconds {MASTER_NAME} {}\n\
             sentinel failover-timeout {MASTER_NAME} {}\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            ms(opts.down_after),
            ms(opts.failover_timeout),
        );
        let sentinels = (0..SENTINELS)
            .map(|i| {
                let kind = NodeKind::Sentinel { config: config.clone() };
                Node::new(
                    "sentinel",
                    LocalNode::start(bin.clone(), dir(&format!("sentinel-{i}")), kind, tls.clone(), None),
                )
            })
            .collect();
        let setup = RedisSentinel {
            data,
            sentinels,
            down_after: opts.down_after,
            failover_timeout: opts.failover_timeout,
            tls,
            connector,
            tempdir,
        };
        setup.wait_until_healthy();
        setup
    }

    /// The name the sentinels know the primary by (`sentinel monitor NAME`).
    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// URLs of the three sentinels, e.g. `redis://127.0.0.1:41234/`
    /// (`rediss://` with TLS); the product takes them as a comma list.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(|s| node_url(s.port, self.tls.is_some())).collect()
    }

    /// Ports of the three sentinels.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// Ports of the two data nodes (the first one started as the primary).
    pub fn data_ports(&self) -> Vec<u16> {
        self.data.iter().map(|n| n.port).collect()
    }

    /// The primary's address as the first answering sentinel reports it
    /// (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    pub fn primary_addr(&self) -> SocketAddr {
        let mut errors = Vec::new();
        for sentinel in self.running(&self.sentinels) {
            match self.reported_primary(sentinel) {
                Ok(port) => return SocketAddr::new(LOCALHOST, port),
                Err(err) => errors.push(err),
            }
        }
        panic!("no sentinel reported the primary: {errors:?}\n{}", self.log())
    }

    /// The primary's port (see [`primary_addr`](Self::primary_addr)).
    pub fn primary_port(&self) -> u16 {
        self.primary_addr().port()
    }

    /// URL of a data node (or sentinel) on `port`.
    pub fn url(&self, port: u16) -> String {
        node_url(self.node(port).port, self.tls.is_some())
    }

    /// Ports of the data nodes that are not the primary.
    pub fn replica_ports(&self) -> Vec<u16> {
        let primary = self.primary_port();
        self.data_ports().into_iter().filter(|&p| p != primary).collect()
    }

    /// The TLS files (CA, client certificate), if the setup speaks TLS.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_deref()
    }

    /// The CA certificate (PEM) clients must trust. Panics without TLS.
    pub fn ca_cert_path(&self) -> PathBuf {
        match self.tls() {
            Some(tls) => tls.ca_cert_path(),
            None => panic!("RedisSentinel::ca_cert_path: this setup has no TLS (start it with start_tls)"),
        }
    }

    /// Logs of all nodes, each under a header naming it.
    pub fn log(&self) -> String {
        self.data
            .iter()
            .chain(&self.sentinels)
            .map(|n| format!("===== {} 127.0.0.1:{} =====\n{}", n.name, n.port, n.lock().log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    // -- Failures ------------------------------------------------------------

    /// Kills the current primary with SIGKILL; returns its port.
    pub fn kill_primary(&self) -> u16 {
        let port = self.primary_port();
        self.kill_node(port);
        port
    }

    /// Kills the data node or sentinel on `port` with SIGKILL.
    pub fn kill_node(&self, port: u16) {
        self.node(port).lock().kill();
    }

    /// Waits until every running sentinel reports the same primary other
    /// than `old_primary`, that node answers as a primary (`role:master`),
    /// and no sentinel has a failover in progress; returns its port. If
    /// `old_primary` runs, also waits until it is a replica of the new one.
    pub fn wait_for_failover(&self, old_primary: u16) -> u16 {
        let timeout = self.down_after + self.failover_timeout * 2 + FAILOVER_SLACK;
        wait_until(
            &format!("sentinel failover from 127.0.0.1:{old_primary}"),
            timeout,
            || self.log(),
            || {
                let primary = self.agreed_primary()?;
                if primary == old_primary {
                    return Err(format!("the sentinels still report {old_primary}"));
                }
                self.check_sentinels_settled()?;
                self.check_role(primary, None)?;
                if self.node(old_primary).lock().is_running() {
                    self.check_role(old_primary, Some(primary))?;
                }
                Ok(primary)
            },
        )
    }

    /// Demotes the running primary without killing it (`SENTINEL FAILOVER`,
    /// retried while a sentinel answers `INPROG` or `NOGOODSLAVE`), and waits
    /// until the replica is the primary and the old primary its replica.
    /// The sentinels close the old primary's client connections when they
    /// reconfigure it (`CLIENT KILL TYPE normal`), so a client that connects
    /// to it again gets `READONLY` for writes; to keep connections open, see
    /// [`demote_primary_keeping_clients`](Self::demote_primary_keeping_clients).
    /// Returns `(demoted, promoted)` ports.
    pub fn demote_primary(&self) -> (u16, u16) {
        let old = self.primary_port();
        let sentinel = self.running(&self.sentinels).next().expect("a running sentinel").addr();
        wait_until(
            "SENTINEL FAILOVER accepted",
            HEALTHY_TIMEOUT,
            || self.log(),
            || match self.connector.command(sentinel, &["SENTINEL", "FAILOVER", MASTER_NAME]) {
                Ok(Reply::Status(_)) => Ok(()),
                other => Err(format!("SENTINEL FAILOVER answered {other:?}")),
            },
        );
        (old, self.wait_for_failover(old))
    }

    /// Demotes the running primary behind the sentinels' back, so that
    /// connections already open to it stay open and get `READONLY` for
    /// writes (a sentinel failover closes them): `REPLICAOF NO ONE` on the
    /// replica, `REPLICAOF` that replica on the old primary, then each
    /// sentinel is pointed at the new primary (`SENTINEL REMOVE` and
    /// `SENTINEL MONITOR` with the same settings, as an operator would).
    /// Waits until the setup is healthy; returns `(demoted, promoted)` ports.
    pub fn demote_primary_keeping_clients(&self) -> (u16, u16) {
        self.wait_until_healthy();
        let old = self.primary_port();
        let new = self.replica_ports()[0];
        let new_port = new.to_string();
        self.admin(new, &["REPLICAOF", "NO", "ONE"]);
        self.admin(old, &["REPLICAOF", "127.0.0.1", &new_port]);
        let (down_after, failover_timeout) =
            (self.down_after.as_millis().to_string(), self.failover_timeout.as_millis().to_string());
        for sentinel in self.running(&self.sentinels) {
            // An error only means this sentinel did not monitor it.
            let _ = self.connector.command(sentinel.addr(), &["SENTINEL", "REMOVE", MASTER_NAME]);
            self.admin(
                sentinel.port,
                &["SENTINEL", "MONITOR", MASTER_NAME, "127.0.0.1", &new_port, &QUORUM.to_string()],
            );
            let set = ["SENTINEL", "SET", MASTER_NAME, "down-after-milliseconds", &down_after];
            self.admin(sentinel.port, &set);
            self.admin(sentinel.port, &["SENTINEL", "SET", MASTER_NAME, "failover-timeout", &failover_timeout]);
        }
        self.wait_until_healthy();
        (old, new)
    }

    /// Starts the data node or sentinel on `port` again (killing it first if
    /// it runs), on the same port, and waits until the setup is healthy. A
    /// data node that is not the primary the sentinels report comes back as
    /// its replica (`--replicaof`); the reported primary itself comes back
    /// as a primary. Data nodes start empty; sentinels keep what they
    /// learnt (their config file).
    pub fn restart_node(&self, port: u16) {
        let node = self.node(port);
        if self.data.iter().any(|n| n.port == port) {
            let primary = self.primary_port();
            node.lock().set_replica_of((primary != port).then_some(primary));
        }
        node.lock().restart_same_port();
        self.wait_until_healthy();
    }

    /// Stages `LOADING` on the primary `port` (see the module docs): filler
    /// keys, `SAVE`, SIGKILL, and it comes back answering `-LOADING` (which
    /// sentinels take as alive: no failover) until
    /// [`finish_loading`](Self::finish_loading).
    pub fn restart_node_loading(&self, port: u16) {
        let primary = self.primary_port();
        assert_eq!(
            port, primary,
            "restart_node_loading({port}): LOADING is staged on the primary (127.0.0.1:{primary}); a replica \
             would keep filler keys its primary never had"
        );
        self.node(port).lock().restart_loading(FILLER_PREFIX);
    }

    /// Ends the load staged by [`restart_node_loading`](Self::restart_node_loading)
    /// and waits until the setup is healthy.
    pub fn finish_loading(&self, port: u16) {
        self.node(port).lock().finish_loading();
        self.wait_until_healthy();
    }

    /// Waits until the setup is healthy: every running sentinel reports the
    /// same primary, which runs and answers `role:master`, sees the other
    /// two sentinels, has no failover in progress and sees every running
    /// data node other than the primary as a live replica (flags `slave`
    /// only) of it; and each of those replicas has its link up. Killed
    /// nodes are ignored.
    pub fn wait_until_healthy(&self) {
        wait_until("redis sentinel setup healthy", HEALTHY_TIMEOUT, || self.log(), || self.check_healthy());
    }

    // -- Internals -----------------------------------------------------------

    fn node(&self, port: u16) -> &Node {
        self.data.iter().chain(&self.sentinels).find(|n| n.port == port).unwrap_or_else(|| {
            panic!(
                "RedisSentinel: no node on port {port} (data nodes {:?}, sentinels {:?})",
                self.data_ports(),
                self.sentinel_ports()
            )
        })
    }

    fn running<'a>(&self, nodes: &'a [Node]) -> impl Iterator<Item = &'a Node> {
        nodes.iter().filter(|n| n.lock().is_running())
    }

    /// Sends an admin command that must answer a status (`+OK`).
    fn admin(&self, port: u16, args: &[&str]) {
        match self.connector.command(self.node(port).addr(), args) {
            Ok(Reply::Status(_)) => {}
            other => panic!("{args:?} on 127.0.0.1:{port} answered {other:?}\n{}", self.log()),
        }
    }

    fn sentinel_command(&self, sentinel: &Node, args: &[&str]) -> Result<Reply, String> {
        match self.connector.command(sentinel.addr(), args) {
            Ok(Reply::Error(e)) => Err(format!("{args:?} on sentinel {}: {e}", sentinel.port)),
            Ok(reply) => Ok(reply),
            Err(err) => Err(format!("{args:?} on sentinel {}: {err}", sentinel.port)),
        }
    }

    fn reported_primary(&self, sentinel: &Node) -> Result<u16, String> {
        let reply = self.sentinel_command(sentinel, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])?;
        let addr = reply.into_array().map_err(|e| e.to_string())?;
        let port = addr.into_iter().nth(1).and_then(|p| p.into_string().ok()).and_then(|p| p.parse().ok());
        port.ok_or_else(|| format!("sentinel {} reports no primary", sentinel.port))
    }

    /// The primary all running sentinels report.
    fn agreed_primary(&self) -> Result<u16, String> {
        let mut agreed = None;
        for sentinel in self.running(&self.sentinels) {
            let port = self.reported_primary(sentinel)?;
            match agreed {
                Some(p) if p != port => return Err(format!("sentinels disagree: {p} and {port}")),
                _ => agreed = Some(port),
            }
        }
        agreed.ok_or_else(|| "no sentinel runs".to_string())
    }

    /// Each running sentinel sees the primary as `master` only (not down, no
    /// failover in progress) and knows the other sentinels.
    fn check_sentinels_settled(&self) -> Result<(), String> {
        for sentinel in self.running(&self.sentinels) {
            let reply = self.sentinel_command(sentinel, &["SENTINEL", "MASTER", MASTER_NAME])?;
            let fields = reply.into_pairs().map_err(|e| e.to_string())?;
            let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
            if get("flags") != Some("master") {
                return Err(format!("sentinel {} sees the primary as {:?}", sentinel.port, get("flags")));
            }
            let others = (SENTINELS - 1).to_string();
            if get("num-other-sentinels") != Some(others.as_str()) {
                return Err(format!(
                    "sentinel {} knows {:?} other sentinels",
                    sentinel.port,
                    get("num-other-sentinels")
                ));
            }
        }
        Ok(())
    }

    /// `port` answers `INFO replication` as a primary (`primary` `None`) or
    /// as a replica of `primary` with its link up.
    fn check_role(&self, port: u16, primary: Option<u16>) -> Result<(), String> {
        let addr = SocketAddr::new(LOCALHOST, port);
        let info = self.connector.command_str(addr, &["INFO", "replication"]).map_err(|e| format!("{port}: {e}"))?;
        let role = info_field(&info, "role");
        let ok = match primary {
            None => role == Some("master"),
            Some(p) => {
                role == Some("slave")
                    && info_field(&info, "master_port") == Some(p.to_string().as_str())
                    && info_field(&info, "master_link_status") == Some("up")
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{port} is not {}:\n{info}",
                primary.map_or("the primary".into(), |p| format!("a replica of {p}"))
            ))
        }
    }

    fn check_healthy(&self) -> Result<(), String> {
        let primary = self.agreed_primary()?;
        if !self.node(primary).lock().is_running() {
            return Err(format!("the reported primary {primary} does not run"));
        }
        self.check_sentinels_settled()?;
        self.check_role(primary, None)?;
        let replicas: Vec<u16> = self.running(&self.data).map(|n| n.port).filter(|&p| p != primary).collect();
        for &replica in &replicas {
            self.check_role(replica, Some(primary))?;
        }
        for sentinel in self.running(&self.sentinels) {
            let reply = self.sentinel_command(sentinel, &["SENTINEL", "REPLICAS", MASTER_NAME])?;
            let seen: Vec<Vec<(String, String)>> = reply
                .into_array()
                .and_then(|items| items.into_iter().map(Reply::into_pairs).collect())
                .map_err(|e| e.to_string())?;
            for &replica in &replicas {
                let entry =
                    seen.iter().find(|fields| fields.iter().any(|(k, v)| k == "port" && *v == replica.to_string()));
                let flags = entry.and_then(|f| f.iter().find(|(k, _)| k == "flags")).map(|(_, v)| v.as_str());
                if flags != Some("slave") {
                    return Err(format!("sentinel {} sees replica {replica} with flags {flags:?}", sentinel.port));
                }
            }
        }
        Ok(())
    }
}
