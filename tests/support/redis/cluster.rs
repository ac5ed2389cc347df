//! [`RedisCluster`]: a Redis Cluster of local `redis-server` processes, with
//! or without replicas, that tests can kill, restart, fail over and reshard,
//! plus the parsing of `CLUSTER NODES` it judges the cluster's health by.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tempfile::TempDir;

use super::node::{run_cli, LocalNode, NodeKind};
use super::resp::{info_field, Connector, Reply};
use super::tls::{Tls, TlsFiles};
use super::{fixture_tempdir, local_redis_cli, local_redis_server, node_url, wait_until, LOCALHOST};

/// Redis Cluster's fixed number of hash slots.
const CLUSTER_SLOTS: usize = 16384;
/// Node timeout of a cluster with replicas (short, so failovers are quick).
const NODE_TIMEOUT_WITH_REPLICAS: Duration = Duration::from_millis(2000);
/// Node timeout of a cluster without replicas (no failover is possible, so a
/// longer one only avoids spurious `fail` flags on a loaded machine).
const NODE_TIMEOUT_WITHOUT_REPLICAS: Duration = Duration::from_millis(5000);
/// How long `redis-cli --cluster create` may run.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a new or restarted cluster gets to become healthy (replicas
/// included: they need a full sync).
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `redis-cli --cluster reshard` may run.
const RESHARD_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a failover may take beyond the node timeout.
const FAILOVER_SLACK: Duration = Duration::from_secs(30);

/// Options of a [`RedisCluster`]; start with [`RedisCluster::builder`].
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    masters: usize,
    replicas_per_master: usize,
    node_timeout: Option<Duration>,
    require_full_coverage: bool,
    tls: Tls,
}

impl ClusterBuilder {
    /// Number of primaries (at least 3; default 3).
    pub fn masters(mut self, masters: usize) -> Self {
        self.masters = masters;
        self
    }

    /// Replicas of each primary (default 0).
    pub fn replicas_per_master(mut self, replicas: usize) -> Self {
        self.replicas_per_master = replicas;
        self
    }

    /// `cluster-node-timeout`: how long a node must be unreachable before it
    /// is failed (and its replica promoted). Default 2 s with replicas, 5 s
    /// without.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = Some(timeout);
        self
    }

    /// `cluster-require-full-coverage` (Redis's default, and ours: `true`):
    /// with `true` the whole cluster refuses commands (`CLUSTERDOWN`) while
    /// any slot has no primary; with `false` only that slot's keys fail.
    pub fn require_full_coverage(mut self, require: bool) -> Self {
        self.require_full_coverage = require;
        self
    }

    /// TLS mode of every node, the cluster bus and replication included
    /// (default [`Tls::Off`]).
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }

    /// Starts the nodes, creates the cluster with `redis-cli --cluster create
    /// ... --cluster-replicas N`, and waits until it is healthy (see
    /// [`RedisCluster::wait_until_healthy`]) with every primary's replicas
    /// in sync. Panics (with all node logs) on failure.
    pub fn start(self) -> RedisCluster {
        RedisCluster::start_from(self)
    }
}

/// A Redis Cluster of local `redis-server` processes, killed and cleaned up
/// on drop.
///
/// Nodes are named by their client port (the TLS port with [`Tls::On`]).
/// Every node runs with `cluster-replica-validity-factor 0` (a replica is
/// always promoted, however long its link was down) and
/// `cluster-allow-replica-migration no` (replicas stay where the test put
/// them).
pub struct RedisCluster {
    // Dropped before `tempdir` (field order), so the processes are gone first.
    nodes: Vec<RedisClusterNode>,
    masters: usize,
    replicas_per_master: usize,
    node_timeout: Duration,
    cli: PathBuf,
    tls: Option<Arc<TlsFiles>>,
    connector: Connector,
    /// Slots a primary served when [`RedisCluster::kill_node`] killed it.
    killed_primaries: Mutex<HashMap<u16, Vec<u16>>>,
    tempdir: TempDir,
}

/// One node of a [`RedisCluster`].
pub struct RedisClusterNode {
    port: u16,
    tls: bool,
    node: Mutex<LocalNode>,
}

impl RedisClusterNode {
    /// Client port of this node (its cluster bus port is `port() + 10000`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Socket address of this node.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(LOCALHOST, self.port)
    }

    /// Connection URL of this node, e.g. `redis://127.0.0.1:41234/`
    /// (`rediss://` with TLS).
    pub fn url(&self) -> String {
        node_url(self.port, self.tls)
    }

    /// This node's log so far (all its runs).
    pub fn log(&self) -> String {
        self.lock().log()
    }

    /// Whether its process is up.
    pub fn is_running(&self) -> bool {
        self.lock().is_running()
    }

    fn lock(&self) -> MutexGuard<'_, LocalNode> {
        self.node.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RedisCluster {
    /// A cluster of `masters` (at least 3) primaries and no replicas.
    pub fn start(masters: usize) -> RedisCluster {
        Self::builder().masters(masters).start()
    }

    /// A cluster of `masters` primaries with `replicas_per_master` replicas
    /// each, node timeout 2 s.
    pub fn start_with_replicas(masters: usize, replicas_per_master: usize) -> RedisCluster {
        Self::builder().masters(masters).replicas_per_master(replicas_per_master).start()
    }

    /// Options: primaries, replicas, node timeout, full coverage, TLS.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            masters: 3,
            replicas_per_master: 0,
            node_timeout: None,
            require_full_coverage: true,
            tls: Tls::Off,
        }
    }

    fn start_from(opts: ClusterBuilder) -> RedisCluster {
        let masters = opts.masters;
        assert!(masters >= 3, "RedisCluster with {masters} masters: Redis Cluster needs at least 3");
        let server_bin = local_redis_server("RedisCluster");
        let cli = local_redis_cli("RedisCluster");
        let tempdir = fixture_tempdir("tollgate-redis-cluster-");
        let tls = (opts.tls != Tls::Off).then(|| Arc::new(TlsFiles::generate(&tempdir.path().join("tls"), opts.tls)));
        let connector = tls.as_ref().map_or_else(Connector::plain, |t| Connector::tls(t.client_config()));
        let default_timeout =
            if opts.replicas_per_master > 0 { NODE_TIMEOUT_WITH_REPLICAS } else { NODE_TIMEOUT_WITHOUT_REPLICAS };
        let node_timeout = opts.node_timeout.unwrap_or(default_timeout);
        let kind = NodeKind::Cluster {
            node_timeout_ms: u64::try_from(node_timeout.as_millis()).expect("node timeout fits in u64 milliseconds"),
            require_full_coverage: opts.require_full_coverage,
        };

        let total = masters * (1 + opts.replicas_per_master);
        let nodes = (0..total)
            .map(|i| {
                let dir = tempdir.path().join(format!("node-{i}"));
                let node = LocalNode::start(server_bin.clone(), dir, kind.clone(), tls.clone(), None);
                RedisClusterNode { port: node.port(), tls: tls.is_some(), node: Mutex::new(node) }
            })
            .collect();
        let cluster = RedisCluster {
            nodes,
            masters,
            replicas_per_master: opts.replicas_per_master,
            node_timeout,
            cli,
            tls,
            connector,
            killed_primaries: Mutex::new(HashMap::new()),
            tempdir,
        };
        cluster.create();
        wait_until("new redis cluster healthy", HEALTHY_TIMEOUT, || cluster.log(), || cluster.check_healthy(true));
        cluster
    }

    fn create(&self) {
        let mut args = vec!["--cluster".to_string(), "create".to_string()];
        args.extend(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend(["--cluster-replicas".into(), self.replicas_per_master.to_string(), "--cluster-yes".into()]);
        if let Err(err) = self.cli(&args, "cluster-create.log", CREATE_TIMEOUT) {
            panic!("{err}\n--- node logs ---\n{}", self.log());
        }
    }

    fn cli(&self, args: &[String], log_name: &str, timeout: Duration) -> Result<String, String> {
        run_cli(&self.cli, args, self.tls.as_deref(), &self.tempdir.path().join(log_name), timeout)
    }

    /// Connection URLs of all nodes (for `redis::cluster::ClusterClient::new`).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisClusterNode::url).collect()
    }

    /// Client ports of all nodes.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisClusterNode::port).collect()
    }

    /// The cluster's nodes.
    pub fn nodes(&self) -> &[RedisClusterNode] {
        &self.nodes
    }

    /// The node on `port`; panics if there is none.
    pub fn node(&self, port: u16) -> &RedisClusterNode {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("RedisCluster: no node on port {port} (the nodes are on {:?})", self.ports()))
    }

    /// The TLS files (CA, client certificate), if the cluster speaks TLS.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_deref()
    }

    /// The CA certificate (PEM) clients must trust. Panics without TLS.
    pub fn ca_cert_path(&self) -> PathBuf {
        match self.tls() {
            Some(tls) => tls.ca_cert_path(),
            None => panic!("RedisCluster::ca_cert_path: this cluster has no TLS (build it with .tls(Tls::On))"),
        }
    }

    /// The `cluster-node-timeout` the nodes run with.
    pub fn node_timeout(&self) -> Duration {
        self.node_timeout
    }

    /// Logs of all nodes, each under a header naming its port.
    pub fn log(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("===== node 127.0.0.1:{} =====\n{}", n.port(), n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    // -- Topology ------------------------------------------------------------

    /// The hash slot of `key` (`CLUSTER KEYSLOT`, asked of a running node).
    pub fn slot_for_key(&self, key: &str) -> u16 {
        let reply = self.ask_any(&["CLUSTER", "KEYSLOT", key]);
        match reply {
            Reply::Int(slot) => u16::try_from(slot).expect("CLUSTER KEYSLOT answers a slot below 16384"),
            other => panic!("CLUSTER KEYSLOT {key:?} answered {other:?}"),
        }
    }

    /// The primary that serves `slot`, in the view of the first running node
    /// that answers (call it when the cluster is settled: after start or a
    /// `wait_*`).
    pub fn primary_for_slot(&self, slot: u16) -> u16 {
        let view = self.view();
        match view.owner_of(slot) {
            Some(owner) => owner.port,
            None => panic!("slot {slot} has no primary in the view of {}:\n{}", view.from, view.text),
        }
    }

    /// The primary that serves `key` (see [`primary_for_slot`](Self::primary_for_slot)).
    pub fn primary_for_key(&self, key: &str) -> u16 {
        self.primary_for_slot(self.slot_for_key(key))
    }

    /// Ports of the primaries that serve slots (and are not failed), in
    /// slot order.
    pub fn primaries(&self) -> Vec<u16> {
        let view = self.view();
        let mut primaries: Vec<&ViewNode> =
            view.nodes.iter().filter(|n| n.is_master() && !n.is_failing() && !n.slots.is_empty()).collect();
        primaries.sort_by_key(|n| n.slots[0]);
        primaries.iter().map(|n| n.port).collect()
    }

    /// Ports of `primary`'s replicas, as the cluster sees them (a killed
    /// replica stays listed).
    pub fn replicas_of(&self, primary: u16) -> Vec<u16> {
        let view = self.view();
        let id = &view.by_port(primary).unwrap_or_else(|| panic!("no node on port {primary}:\n{}", view.text)).id;
        view.nodes.iter().filter(|n| n.master_id.as_ref() == Some(id)).map(|n| n.port).collect()
    }

    /// The slots `port` serves (empty for a replica).
    pub fn slots_of(&self, port: u16) -> Vec<u16> {
        let view = self.view();
        view.by_port(port).map(|n| n.slots.clone()).unwrap_or_default()
    }

    // -- Failures ------------------------------------------------------------

    /// Kills the node with SIGKILL (connections drop, new ones are refused).
    /// Remembers the slots it served, for
    /// [`wait_for_failover`](Self::wait_for_failover).
    pub fn kill_node(&self, port: u16) {
        let node = self.node(port);
        let slots = self.slots_of(port);
        if !slots.is_empty() {
            self.killed_primaries.lock().unwrap_or_else(PoisonError::into_inner).insert(port, slots);
        }
        node.lock().kill();
    }

    /// Waits until a replica of the killed primary `old_primary` serves all
    /// its slots in the view of every running node and the cluster is
    /// healthy again; returns the new primary's port. `old_primary` must
    /// have been killed with [`kill_node`](Self::kill_node) while it served
    /// slots.
    pub fn wait_for_failover(&self, old_primary: u16) -> u16 {
        let slots = self.killed_primaries.lock().unwrap_or_else(PoisonError::into_inner).get(&old_primary).cloned();
        let slots = slots.unwrap_or_else(|| {
            panic!("wait_for_failover({old_primary}): that node was not killed with kill_node while it served slots")
        });
        let timeout = self.node_timeout + FAILOVER_SLACK;
        let new_primary = wait_until(
            &format!("failover of 127.0.0.1:{old_primary}"),
            timeout,
            || self.log(),
            || {
                let new_primary = self.agreed_owner(&slots, old_primary)?;
                self.check_healthy(false)?;
                Ok(new_primary)
            },
        );
        self.killed_primaries.lock().unwrap_or_else(PoisonError::into_inner).remove(&old_primary);
        new_primary
    }

    /// Demotes a running primary without killing it: `CLUSTER FAILOVER` on
    /// `replica`, then waits until `replica` serves its former primary's
    /// slots everywhere, the old primary is its replica, and the cluster is
    /// healthy. Returns the demoted primary's port.
    pub fn failover_to(&self, replica: u16) -> u16 {
        let view = self.view();
        let me = view.by_port(replica).unwrap_or_else(|| panic!("no node on port {replica}:\n{}", view.text));
        let old =
            me.master_id.as_ref().and_then(|id| view.by_id(id)).unwrap_or_else(|| {
                panic!("failover_to({replica}): 127.0.0.1:{replica} is not a replica:\n{}", view.text)
            });
        let (old_port, slots) = (old.port, old.slots.clone());
        match self.connector.command(self.node(replica).addr(), &["CLUSTER", "FAILOVER"]) {
            Ok(Reply::Status(_)) => {}
            other => panic!("CLUSTER FAILOVER on 127.0.0.1:{replica} answered {other:?}"),
        }
        wait_until(
            &format!("manual failover to 127.0.0.1:{replica}"),
            self.node_timeout + FAILOVER_SLACK,
            || self.log(),
            || {
                let owner = self.agreed_owner(&slots, old_port)?;
                if owner != replica {
                    return Err(format!("slots went to {owner}, not {replica}"));
                }
                self.check_healthy(false)
            },
        );
        old_port
    }

    /// Starts the node on `port` again (killing it first if it runs): same
    /// port, same `nodes.conf`, so it rejoins the cluster (as a replica if
    /// a replica was promoted in its place); it starts empty. Waits until
    /// the cluster is healthy (see [`wait_until_healthy`](Self::wait_until_healthy)).
    /// A primary restarted before any replica took over comes back empty
    /// *as the primary* (Redis without persistence), and its replicas
    /// resync to that.
    pub fn restart_node(&self, port: u16) {
        self.node(port).lock().restart_same_port();
        self.wait_until_healthy();
    }

    /// Stages `LOADING` on the primary `port` (see the module docs): it gets
    /// filler keys in one of its slots, saves, is killed and comes back
    /// answering `-LOADING` until [`finish_loading`](Self::finish_loading).
    /// A loading node does not answer on the cluster bus: if it has a
    /// replica, that replica takes over once the node timeout has passed
    /// (seen with Redis 7.0: about 4 s with the 2 s default), and the node
    /// rejoins as its replica after the load. To keep a primary in
    /// `LOADING` with its slots, use a cluster without replicas.
    pub fn restart_node_loading(&self, port: u16) {
        let slots = self.slots_of(port);
        assert!(
            !slots.is_empty(),
            "restart_node_loading({port}): 127.0.0.1:{port} serves no slots; LOADING is staged on primaries \
             (a replica would keep filler keys its primary never had)"
        );
        let prefix = (0u32..)
            .map(|i| format!("fixture:loading:{{{i}}}"))
            .find(|prefix| slots.binary_search(&self.slot_for_key(prefix)).is_ok())
            .expect("some hash tag falls in one of the node's slots");
        self.node(port).lock().restart_loading(&prefix);
    }

    /// Ends the load staged by [`restart_node_loading`](Self::restart_node_loading)
    /// and waits until the cluster is healthy.
    pub fn finish_loading(&self, port: u16) {
        self.node(port).lock().finish_loading();
        self.wait_until_healthy();
    }

    /// Moves `n_slots` slots from the primary `from` to the primary `to`
    /// with `redis-cli --cluster reshard ... --cluster-yes` (keys included,
    /// with `MIGRATE`), then waits until every node agrees and the cluster
    /// is healthy. Returns the slots that moved.
    pub fn reshard(&self, from: u16, to: u16, n_slots: usize) -> Vec<u16> {
        self.wait_until_healthy();
        let view = self.view();
        let id_of = |port: u16| {
            view.by_port(port).map(|n| n.id.clone()).unwrap_or_else(|| panic!("no node on port {port}:\n{}", view.text))
        };
        let (from_id, to_id) = (id_of(from), id_of(to));
        let before = self.slots_of(from);
        assert!(
            before.len() >= n_slots,
            "reshard: 127.0.0.1:{from} serves {} slots, cannot move {n_slots}",
            before.len()
        );
        let args: Vec<String> = vec![
            "--cluster".into(),
            "reshard".into(),
            format!("127.0.0.1:{from}"),
            "--cluster-from".into(),
            from_id,
            "--cluster-to".into(),
            to_id,
            "--cluster-slots".into(),
            n_slots.to_string(),
            "--cluster-yes".into(),
        ];
        if let Err(err) = self.cli(&args, "cluster-reshard.log", RESHARD_TIMEOUT) {
            panic!("{err}\n--- node logs ---\n{}", self.log());
        }
        let moved = wait_until(
            &format!("reshard of {n_slots} slots from 127.0.0.1:{from} to 127.0.0.1:{to}"),
            HEALTHY_TIMEOUT,
            || self.log(),
            || {
                self.check_healthy(false)?;
                let after = self.slots_of(from);
                let moved: Vec<u16> = before.iter().copied().filter(|s| after.binary_search(s).is_err()).collect();
                let to_slots = self.slots_of(to);
                match moved.iter().find(|s| to_slots.binary_search(s).is_err()) {
                    Some(s) => Err(format!("slot {s} left {from} but is not on {to}")),
                    None => Ok(moved),
                }
            },
        );
        assert_eq!(moved.len(), n_slots, "reshard moved {} slots, not {n_slots}", moved.len());
        moved
    }

    /// Waits until the cluster is healthy: every running node reports
    /// `cluster_state:ok` and knows all nodes; in every running node's view
    /// each of the 16384 slots is served by a running, non-failing primary
    /// and all views agree; no running node is flagged failing; every
    /// running replica's link to its primary is up (in sync). Killed nodes
    /// are ignored.
    pub fn wait_until_healthy(&self) {
        wait_until("redis cluster healthy", HEALTHY_TIMEOUT, || self.log(), || self.check_healthy(false));
    }

    // -- Internals -----------------------------------------------------------

    fn running_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| n.is_running()).map(|n| n.port).collect()
    }

    /// Sends a command to the first running node that answers without an
    /// error.
    fn ask_any(&self, args: &[&str]) -> Reply {
        let mut errors = Vec::new();
        for port in self.running_ports() {
            match self.connector.command(SocketAddr::new(LOCALHOST, port), args) {
                Ok(Reply::Error(e)) => errors.push(format!("{port}: {e}")),
                Ok(reply) => return reply,
                Err(err) => errors.push(format!("{port}: {err}")),
            }
        }
        panic!("no running cluster node answered {args:?}: {errors:?}\n{}", self.log())
    }

    /// `CLUSTER NODES` of the first running node that answers.
    fn view(&self) -> View {
        let text = self.ask_any(&["CLUSTER", "NODES"]).into_string().expect("CLUSTER NODES answers a bulk string");
        View::parse(&text).unwrap_or_else(|err| panic!("cannot parse CLUSTER NODES: {err}\n{text}"))
    }

    /// The one running primary other than `old` that serves all of `slots` in
    /// every running node's view.
    fn agreed_owner(&self, slots: &[u16], old: u16) -> Result<u16, String> {
        let running = self.running_ports();
        let mut agreed = None;
        for &port in &running {
            let view = self.view_of(port)?;
            for &slot in slots {
                let owner = view.owner_of(slot).ok_or_else(|| format!("{port} sees no owner of slot {slot}"))?;
                if owner.port == old || !running.contains(&owner.port) || owner.is_failing() {
                    return Err(format!("{port} sees slot {slot} on {} ({})", owner.port, owner.flags.join(",")));
                }
                match agreed {
                    None => agreed = Some(owner.port),
                    Some(p) if p != owner.port => return Err(format!("slots split between {p} and {}", owner.port)),
                    Some(_) => {}
                }
            }
        }
        agreed.ok_or_else(|| "no running node, or no slots".to_string())
    }

    fn view_of(&self, port: u16) -> Result<View, String> {
        let text = self
            .connector
            .command_str(SocketAddr::new(LOCALHOST, port), &["CLUSTER", "NODES"])
            .map_err(|err| format!("CLUSTER NODES on {port}: {err}"))?;
        View::parse(&text).map_err(|err| format!("CLUSTER NODES on {port}: {err}\n{text}"))
    }

    /// One pass of the health check of [`wait_until_healthy`]; with
    /// `topology`, also the shape the cluster was created with (all
    /// primaries, each with all its replicas).
    fn check_healthy(&self, topology: bool) -> Result<(), String> {
        let running = self.running_ports();
        let mut first: Option<(u16, Vec<u16>)> = None;
        for &port in &running {
            let view = self.node_health(port, &running)?;
            let owners = view.owner_ports();
            match &first {
                None => first = Some((port, owners)),
                Some((p, theirs)) => {
                    if let Some(slot) = (0..CLUSTER_SLOTS).find(|&s| theirs[s] != owners[s]) {
                        return Err(format!(
                            "views differ: {p} has slot {slot} on {}, {port} on {}",
                            theirs[slot], owners[slot]
                        ));
                    }
                }
            }
            if topology {
                self.check_topology(&view)?;
            }
        }
        Ok(())
    }

    /// Health of one running node and its view; returns the view.
    fn node_health(&self, port: u16, running: &[u16]) -> Result<View, String> {
        let mut conn = self.connector.connect(SocketAddr::new(LOCALHOST, port)).map_err(|e| format!("{port}: {e}"))?;
        let mut ask = |args: &[&str]| conn.request_str(args).map_err(|e| format!("{args:?} on {port}: {e}"));
        let info = ask(&["CLUSTER", "INFO"])?;
        let nodes_text = ask(&["CLUSTER", "NODES"])?;
        let replication = ask(&["INFO", "replication"])?;
        if info_field(&info, "cluster_state") != Some("ok") {
            return Err(format!("{port}: cluster_state is not ok:\n{info}"));
        }
        let known = self.nodes.len().to_string();
        if info_field(&info, "cluster_known_nodes") != Some(known.as_str()) {
            return Err(format!("{port}: knows {:?} nodes, not {known}", info_field(&info, "cluster_known_nodes")));
        }
        let view = View::parse(&nodes_text).map_err(|e| format!("{port}: {e}\n{nodes_text}"))?;
        if let Some(bad) = view.nodes.iter().find(|n| running.contains(&n.port) && n.is_failing()) {
            return Err(format!("{port} sees running node {} as {}", bad.port, bad.flags.join(",")));
        }
        for (slot, owner) in view.owner_ports().iter().enumerate() {
            let live_master = view.by_port(*owner).is_some_and(|o| o.is_master() && !o.is_failing());
            if !running.contains(owner) || !live_master {
                return Err(format!("{port} sees slot {slot} served by {owner}, not a running primary"));
            }
        }
        let me = view.myself().ok_or_else(|| format!("{port}: no `myself` in CLUSTER NODES"))?;
        if !me.is_master() {
            let link = info_field(&replication, "master_link_status");
            let primary = me.master_id.as_ref().and_then(|id| view.by_id(id)).map(|m| m.port);
            let primary_port = info_field(&replication, "master_port").and_then(|p| p.parse::<u16>().ok());
            if link != Some("up") || primary.is_none() || primary != primary_port {
                return Err(format!("replica {port}: link {link:?} to {primary_port:?}, cluster says {primary:?}"));
            }
        }
        Ok(view)
    }

    fn check_topology(&self, view: &View) -> Result<(), String> {
        let primaries: Vec<&ViewNode> = view.nodes.iter().filter(|n| n.is_master() && !n.slots.is_empty()).collect();
        if primaries.len() != self.masters {
            return Err(format!("{} primaries serve slots, not {}", primaries.len(), self.masters));
        }
        for primary in primaries {
            let replicas = view.nodes.iter().filter(|n| n.master_id.as_ref() == Some(&primary.id)).count();
            if replicas != self.replicas_per_master {
                return Err(format!(
                    "primary {} has {replicas} replicas, not {}",
                    primary.port, self.replicas_per_master
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// CLUSTER NODES
// ---------------------------------------------------------------------------

/// One node's `CLUSTER NODES` listing.
struct View {
    nodes: Vec<ViewNode>,
    /// The raw listing, for error messages.
    text: String,
    from: String,
}

/// One line of `CLUSTER NODES`.
struct ViewNode {
    id: String,
    port: u16,
    flags: Vec<String>,
    master_id: Option<String>,
    /// Served slots, ascending (importing/migrating markers skipped).
    slots: Vec<u16>,
}

impl ViewNode {
    fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    /// Flagged `fail`, `fail?` (pfail), `handshake` or `noaddr`.
    fn is_failing(&self) -> bool {
        self.flags.iter().any(|f| matches!(f.as_str(), "fail" | "fail?" | "handshake" | "noaddr"))
    }
}

impl View {
    /// Parses `<id> <ip:port@cport[,hostname]> <flags> <master> <ping-sent>
    /// <pong-recv> <config-epoch> <link-state> <slot> <slot> ...` lines.
    fn parse(text: &str) -> io::Result<View> {
        let bad = |line: &str, what: &str| io::Error::other(format!("bad CLUSTER NODES line ({what}): {line:?}"));
        let mut nodes = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return Err(bad(line, "fewer than 8 fields"));
            }
            let addr = fields[1].split([',', '@']).next().unwrap_or_default();
            let port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).ok_or_else(|| bad(line, "address"))?;
            let mut slots = Vec::new();
            for range in fields[8..].iter().filter(|r| !r.starts_with('[')) {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                let lo: u16 = lo.parse().map_err(|_| bad(line, "slot"))?;
                let hi: u16 = hi.parse().map_err(|_| bad(line, "slot"))?;
                slots.extend(lo..=hi);
            }
            slots.sort_unstable();
            nodes.push(ViewNode {
                id: fields[0].to_string(),
                port,
                flags: fields[2].split(',').map(String::from).collect(),
                master_id: (fields[3] != "-").then(|| fields[3].to_string()),
                slots,
            });
        }
        let from = nodes.iter().find(|n| n.flags.iter().any(|f| f == "myself")).map_or(0, |n| n.port);
        Ok(View { nodes, text: text.to_string(), from: format!("127.0.0.1:{from}") })
    }

    fn myself(&self) -> Option<&ViewNode> {
        self.nodes.iter().find(|n| n.flags.iter().any(|f| f == "myself"))
    }

    fn by_port(&self, port: u16) -> Option<&ViewNode> {
        self.nodes.iter().find(|n| n.port == port)
    }

    fn by_id(&self, id: &str) -> Option<&ViewNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    fn owner_of(&self, slot: u16) -> Option<&ViewNode> {
        self.nodes.iter().find(|n| n.slots.binary_search(&slot).is_ok())
    }

    /// For each slot, the port of the node serving it (0: none).
    fn owner_ports(&self) -> Vec<u16> {
        let mut owners = vec![0; CLUSTER_SLOTS];
        for node in &self.nodes {
            for &slot in &node.slots {
                owners[usize::from(slot)] = node.port;
            }
        }
        owners
    }
}
