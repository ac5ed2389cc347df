//! Throwaway Redis servers for integration tests, in the style of redis-rs's
//! `redis-test` crate.
//!
//! * [`RedisServer`] is a standalone server that can be stopped and restarted
//!   on the same port, to simulate Redis going down and coming back.
//! * [`RedisCluster`] is an N-master Redis Cluster (no replicas).
//!
//! Servers are local `redis-server` processes bound to `127.0.0.1` on a free
//! port (never 6379), with persistence disabled and their data, config and log
//! files in a temporary directory. Port races between tests running in
//! parallel (e.g. under cargo-nextest) are handled by retrying on another port.
//! When `redis-server` is not on `PATH`, [`RedisServer`] falls back to a
//! `redis:7` container started through testcontainers (needs a reachable Docker
//! engine); [`RedisCluster`] always needs the local binaries.
//!
//! Set `TOLLGATE_TEST_REDIS_BACKEND=docker` (or `process`) to force a backend
//! for [`RedisServer`].
//!
//! Everything here is synchronous (it blocks the calling thread for at most a
//! few seconds while a server starts), so it works from plain `#[test]`s and
//! from `#[tokio::test]`s alike. Failures panic with the server logs.

// Each integration test crate compiles this module separately and uses only
// part of it.
#![allow(dead_code)]

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How to install Redis locally.
const INSTALL_REDIS: &str = "install Redis 7 (e.g. `apt-get install -y redis-server`)";
/// How to get a Redis server when none could be started.
const HOW_TO_GET_REDIS: &str = "install Redis 7 (e.g. `apt-get install -y redis-server`) or start Docker";
/// Environment variable that forces the [`RedisServer`] backend.
const BACKEND_ENV: &str = "TOLLGATE_TEST_REDIS_BACKEND";
/// How many ports to try before giving up when the chosen one is taken.
const START_ATTEMPTS: usize = 5;
/// How long a freshly spawned server gets to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a freshly created cluster gets to report `cluster_state:ok`.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `redis-cli --cluster create` may run.
const CLUSTER_CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-request timeout of the raw RESP probes.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Redis Cluster's fixed number of hash slots.
const CLUSTER_SLOTS: usize = 16384;
/// The machine's shared Redis; tests must never use it.
const SHARED_REDIS_PORT: u16 = 6379;
/// Docker image used by the container backend.
const DOCKER_IMAGE: &str = "redis";
const DOCKER_TAG: &str = "7";

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

// ---------------------------------------------------------------------------
// RedisServer
// ---------------------------------------------------------------------------

/// A standalone Redis server for one test, killed and cleaned up on drop.
///
/// Data is not persisted: after [`RedisServer::restart`] the server is empty.
pub struct RedisServer {
    addr: SocketAddr,
    backend: Backend,
}

enum Backend {
    Process {
        node: LocalNode,
        // Dropped after `node` (field order), so the process is gone first.
        _tempdir: TempDir,
    },
    Docker(DockerRedis),
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    ///
    /// Uses `redis-server` from `PATH`, or else a `redis:7` container when a
    /// Docker engine is reachable. Panics (with the server log) on failure.
    pub fn start() -> RedisServer {
        let forced = std::env::var(BACKEND_ENV).unwrap_or_default();
        match forced.as_str() {
            "docker" => return Self::start_docker(),
            "process" | "" => {}
            other => panic!("{BACKEND_ENV}={other:?}: expected `process` or `docker`"),
        }
        match find_on_path("redis-server") {
            Some(bin) => Self::start_process(bin),
            None if forced == "process" => {
                panic!("{BACKEND_ENV}=process but redis-server not found on PATH: {HOW_TO_GET_REDIS}")
            }
            None => Self::start_docker(),
        }
    }

    fn start_process(bin: PathBuf) -> RedisServer {
        let tempdir = tempfile::Builder::new()
            .prefix("tollgate-redis-")
            .tempdir()
            .expect("failed to create a temporary directory for redis-server");
        let node = LocalNode::start(bin, tempdir.path().to_path_buf(), false);
        RedisServer {
            addr: SocketAddr::new(LOCALHOST, node.port),
            backend: Backend::Process { node, _tempdir: tempdir },
        }
    }

    fn start_docker() -> RedisServer {
        let docker = DockerRedis::start();
        let addr = docker.addr;
        wait_for_ping(addr, READY_TIMEOUT).unwrap_or_else(|err| {
            panic!("redis container on {addr} not ready after {READY_TIMEOUT:?}: {err}\n{}", docker.logs())
        });
        RedisServer { addr, backend: Backend::Docker(docker) }
    }

    /// Connection URL, e.g. `redis://127.0.0.1:41234/`.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// TCP port the server listens on (kept across [`RedisServer::restart`]).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's log so far (all runs, including the ones before restarts).
    pub fn log(&self) -> String {
        match &self.backend {
            Backend::Process { node, .. } => node.log(),
            Backend::Docker(docker) => docker.logs(),
        }
    }

    /// Whether the server process (or container) is currently up.
    pub fn is_running(&mut self) -> bool {
        match &mut self.backend {
            Backend::Process { node, .. } => node.is_running(),
            Backend::Docker(docker) => docker.running,
        }
    }

    /// Kills the server (like a crash; connections are dropped, new ones are
    /// refused). The port is remembered for [`RedisServer::restart`].
    /// Does nothing if it is already stopped.
    pub fn stop(&mut self) {
        match &mut self.backend {
            Backend::Process { node, .. } => node.kill(),
            Backend::Docker(docker) => docker.stop(),
        }
    }

    /// Starts the server again on the same port (stopping it first if it is
    /// running) and waits until it answers PING. The new server is empty.
    ///
    /// Panics (with the log) if the port was taken meanwhile and does not
    /// become free within a few seconds.
    pub fn restart(&mut self) {
        self.stop();
        let addr = self.addr;
        match &mut self.backend {
            Backend::Process { node, .. } => node.restart_same_port(),
            Backend::Docker(docker) => {
                docker.start_again();
                wait_for_ping(addr, READY_TIMEOUT).unwrap_or_else(|err| {
                    panic!(
                        "restarted redis container on {addr} not ready after \
                         {READY_TIMEOUT:?}: {err}\n{}",
                        docker.logs()
                    )
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------
// RedisCluster
// ---------------------------------------------------------------------------

/// A Redis Cluster of local `redis-server` processes (masters only), killed
/// and cleaned up on drop.
pub struct RedisCluster {
    // Dropped before `tempdir` (field order), so the processes are gone first.
    nodes: Vec<RedisClusterNode>,
    tempdir: TempDir,
}

/// One master of a [`RedisCluster`].
pub struct RedisClusterNode {
    node: LocalNode,
}

impl RedisClusterNode {
    /// Client port of this node (its cluster bus port is `port() + 10000`).
    pub fn port(&self) -> u16 {
        self.node.port
    }

    /// Socket address of this node.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(LOCALHOST, self.node.port)
    }

    /// Connection URL of this node, e.g. `redis://127.0.0.1:41234/`.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr())
    }

    /// This node's log so far.
    pub fn log(&self) -> String {
        self.node.log()
    }
}

impl RedisCluster {
    /// Starts `masters` (at least 3) cluster-enabled `redis-server`s, joins
    /// them with `redis-cli --cluster create`, and waits until every node
    /// reports `cluster_state:ok` with all 16384 slots assigned.
    ///
    /// Needs `redis-server` and `redis-cli` on `PATH` (no Docker fallback).
    /// Panics (with all node logs) on failure.
    pub fn start(masters: usize) -> RedisCluster {
        assert!(masters >= 3, "RedisCluster::start({masters}): Redis Cluster needs at least 3 masters");
        let server_bin = find_on_path("redis-server").unwrap_or_else(|| {
            panic!(
                "redis-server not found on PATH (RedisCluster needs local Redis binaries, \
                 it has no Docker fallback): {INSTALL_REDIS}"
            )
        });
        let cli_bin = find_on_path("redis-cli").unwrap_or_else(|| {
            panic!(
                "redis-cli not found on PATH (needed by RedisCluster): {INSTALL_REDIS} \
                 (redis-cli is in the redis-tools package)"
            )
        });
        let tempdir = tempfile::Builder::new()
            .prefix("tollgate-redis-cluster-")
            .tempdir()
            .expect("failed to create a temporary directory for the redis cluster");

        let mut nodes = Vec::with_capacity(masters);
        for i in 0..masters {
            let dir = tempdir.path().join(format!("node-{i}"));
            fs::create_dir(&dir).unwrap_or_else(|err| panic!("failed to create {}: {err}", dir.display()));
            nodes.push(RedisClusterNode { node: LocalNode::start(server_bin.clone(), dir, true) });
        }
        let cluster = RedisCluster { nodes, tempdir };
        cluster.create(&cli_bin);
        cluster.wait_until_ok();
        cluster
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

    /// Logs of all nodes, each under a header naming its port.
    pub fn log(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("===== node 127.0.0.1:{} =====\n{}", n.port(), n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn create(&self, cli_bin: &Path) {
        let out_path = self.tempdir.path().join("cluster-create.log");
        let out =
            File::create(&out_path).unwrap_or_else(|err| panic!("failed to create {}: {err}", out_path.display()));
        let err_out = out.try_clone().expect("failed to duplicate the redis-cli output file handle");
        let mut cmd = Command::new(cli_bin);
        cmd.arg("--cluster").arg("create");
        for node in &self.nodes {
            cmd.arg(format!("127.0.0.1:{}", node.port()));
        }
        cmd.args(["--cluster-replicas", "0", "--cluster-yes"]).stdin(Stdio::null()).stdout(out).stderr(err_out);
        let mut child = cmd.spawn().unwrap_or_else(|err| panic!("failed to run {cmd:?}: {err}"));

        let deadline = Instant::now() + CLUSTER_CREATE_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                Ok(None) => {
                    kill_and_reap(&mut child);
                    break None;
                }
                Err(err) => panic!("failed to wait for {cmd:?}: {err}"),
            }
        };
        if status.is_some_and(|s| s.success()) {
            return;
        }
        let output = fs::read_to_string(&out_path).unwrap_or_default();
        let what = match status {
            Some(status) => format!("failed ({status})"),
            None => format!("did not finish within {CLUSTER_CREATE_TIMEOUT:?}"),
        };
        panic!("{cmd:?} {what}\n--- redis-cli output ---\n{output}\n--- node logs ---\n{}", self.log());
    }

    fn wait_until_ok(&self) {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        let mut last = String::new();
        loop {
            let mut all_ok = true;
            for node in &self.nodes {
                match raw_command(node.addr(), &["CLUSTER", "INFO"]) {
                    Ok(info) => {
                        let ok = info_field(&info, "cluster_state") == Some("ok")
                            && info_field(&info, "cluster_slots_assigned") == Some(&*CLUSTER_SLOTS.to_string())
                            && info_field(&info, "cluster_known_nodes") == Some(&*self.nodes.len().to_string());
                        if !ok {
                            all_ok = false;
                            last = format!("CLUSTER INFO on {}:\n{info}", node.addr());
                        }
                    }
                    Err(err) => {
                        all_ok = false;
                        last = format!("CLUSTER INFO on {} failed: {err}", node.addr());
                    }
                }
            }
            if all_ok {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "redis cluster not ok after {CLUSTER_READY_TIMEOUT:?}; last: {last}\n\
                     --- node logs ---\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

// ---------------------------------------------------------------------------
// Local redis-server processes
// ---------------------------------------------------------------------------

/// One `redis-server` child process with its files in `dir`.
struct LocalNode {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    cluster: bool,
    child: Option<Child>,
    /// Length of `redis.log` when the current process was spawned, so that
    /// failure detection only looks at the current run.
    log_offset: u64,
}

/// Why a spawned server did not become ready.
enum StartFailure {
    /// The port (or cluster bus port) was taken: try another one.
    PortInUse,
    /// Anything else; the string explains.
    Other(String),
}

impl LocalNode {
    /// Spawns a server on a free port, retrying on other ports when the chosen
    /// one turns out to be taken.
    fn start(bin: PathBuf, dir: PathBuf, cluster: bool) -> LocalNode {
        let mut node = LocalNode { bin, dir, port: 0, cluster, child: None, log_offset: 0 };
        let mut tried = Vec::new();
        for _ in 0..START_ATTEMPTS {
            node.port = pick_free_port(cluster);
            tried.push(node.port);
            match node.spawn_and_wait() {
                Ok(()) => return node,
                Err(StartFailure::PortInUse) => continue,
                Err(StartFailure::Other(why)) => {
                    panic!("redis-server on port {}: {why}\n{}", node.port, node.log())
                }
            }
        }
        panic!(
            "redis-server could not bind a free port after {START_ATTEMPTS} attempts \
             (tried {tried:?})\n{}",
            node.log()
        );
    }

    /// Starts the (stopped) server again on its port. The port may briefly be
    /// taken by someone else: keep trying for a few seconds.
    fn restart_same_port(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(StartFailure::PortInUse) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(200));
                }
                Err(StartFailure::PortInUse) => {
                    panic!("restarting redis-server: port {} stayed in use\n{}", self.port, self.log())
                }
                Err(StartFailure::Other(why)) => {
                    panic!("restarting redis-server on port {}: {why}\n{}", self.port, self.log())
                }
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn stdio_path(&self) -> PathBuf {
        self.dir.join("redis-stdio.log")
    }

    /// `redis.log`, plus whatever the process wrote to stdout/stderr (early
    /// startup errors such as bad arguments never reach the log file).
    fn log(&self) -> String {
        let log = fs::read_to_string(self.log_path())
            .unwrap_or_else(|err| format!("<no {}: {err}>\n", self.log_path().display()));
        let stdio = fs::read_to_string(self.stdio_path()).unwrap_or_default();
        let mut out = format!("--- {} ---\n{log}", self.log_path().display());
        if !stdio.trim().is_empty() {
            out.push_str(&format!("--- {} ---\n{stdio}", self.stdio_path().display()));
        }
        out
    }

    fn log_since_spawn(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(self.log_path()) {
            let mut bytes = Vec::new();
            if io::Seek::seek(&mut file, io::SeekFrom::Start(self.log_offset)).is_ok()
                && file.read_to_end(&mut bytes).is_ok()
            {
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        text
    }

    fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), StartFailure> {
        self.spawn()?;
        let result = self.wait_ready();
        if result.is_err() {
            self.kill();
        }
        result
    }

    fn spawn(&mut self) -> Result<(), StartFailure> {
        self.log_offset = fs::metadata(self.log_path()).map_or(0, |m| m.len());
        let stdio = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stdio_path())
            .map_err(|err| StartFailure::Other(format!("cannot open {}: {err}", self.stdio_path().display())))?;
        let stdio_err = stdio
            .try_clone()
            .map_err(|err| StartFailure::Other(format!("cannot duplicate the stdio file handle: {err}")))?;

        let mut cmd = Command::new(&self.bin);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.log_path());
        if self.cluster {
            let conf: OsString = self.dir.join(format!("nodes-{}.conf", self.port)).into();
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
                .arg("--cluster-config-file")
                .arg(conf);
        }
        cmd.stdin(Stdio::null()).stdout(stdio).stderr(stdio_err);
        let child = cmd.spawn().map_err(|err| StartFailure::Other(format!("failed to run {cmd:?}: {err}")))?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls until the server on our port answers PING *and* is our process
    /// (another test's server may own the port if we lost a race for it).
    fn wait_ready(&mut self) -> Result<(), StartFailure> {
        let addr = SocketAddr::new(LOCALHOST, self.port);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("wait_ready called without a spawned redis-server");
            let pid = child.id();
            let exited: Option<ExitStatus> = child
                .try_wait()
                .map_err(|err| StartFailure::Other(format!("cannot poll redis-server (pid {pid}): {err}")))?;
            if let Some(status) = exited {
                self.child = None;
                let log = self.log_since_spawn();
                if log.contains("Address already in use") {
                    return Err(StartFailure::PortInUse);
                }
                return Err(StartFailure::Other(format!("redis-server exited during startup ({status})")));
            }
            if probe_pid(addr) == Some(pid) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartFailure::Other(format!(
                    "redis-server (pid {pid}) did not answer PING within {READY_TIMEOUT:?}"
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kill_and_reap(child: &mut Child) {
    // Errors only mean it has already exited.
    let _ = child.kill();
    let _ = child.wait();
}

/// PINGs `addr` and returns the `process_id` from `INFO server`.
fn probe_pid(addr: SocketAddr) -> Option<u32> {
    let mut conn = RespConn::connect(addr).ok()?;
    if conn.request(&["PING"]).ok()? != "PONG" {
        return None;
    }
    let info = conn.request(&["INFO", "server"]).ok()?;
    info_field(&info, "process_id")?.parse().ok()
}

/// Picks a port that is currently free on 127.0.0.1 (and never 6379). For
/// cluster nodes the bus port (`port + 10000`) must be valid and free too.
fn pick_free_port(cluster: bool) -> u16 {
    for _ in 0..1000 {
        let listener = TcpListener::bind((LOCALHOST, 0)).expect("cannot bind an ephemeral port on 127.0.0.1");
        let port = listener.local_addr().expect("cannot read the local address of a bound listener").port();
        if port == SHARED_REDIS_PORT {
            continue;
        }
        if cluster {
            let Some(bus) = port.checked_add(10000) else {
                continue;
            };
            if bus == SHARED_REDIS_PORT || TcpListener::bind((LOCALHOST, bus)).is_err() {
                continue;
            }
        }
        return port;
    }
    panic!("could not find a free TCP port on 127.0.0.1");
}

// ---------------------------------------------------------------------------
// Docker fallback
// ---------------------------------------------------------------------------

/// A `redis:7` container owned by a dedicated thread with its own tokio
/// runtime (testcontainers' async API must not run on the test's runtime, and
/// its sync API needs the `blocking` feature).
///
/// The host port is fixed when the container is created, so it stays the same
/// across stop/start.
struct DockerRedis {
    addr: SocketAddr,
    running: bool,
    requests: Option<tokio::sync::mpsc::UnboundedSender<DockerRequest>>,
    worker: Option<thread::JoinHandle<()>>,
}

enum DockerOp {
    Stop,
    Start,
    Logs,
}

struct DockerRequest {
    op: DockerOp,
    reply: mpsc::Sender<Result<String, String>>,
}

impl DockerRedis {
    fn start() -> DockerRedis {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<SocketAddr, String>>();
        let (req_tx, req_rx) = tokio::sync::mpsc::unbounded_channel();
        let worker = thread::Builder::new()
            .name("redis-container".into())
            .spawn(move || docker_worker(ready_tx, req_rx))
            .expect("failed to spawn the redis container thread");
        let ready =
            ready_rx.recv().unwrap_or_else(|_| Err("the redis container thread died during startup".to_string()));
        match ready {
            Ok(addr) => DockerRedis { addr, running: true, requests: Some(req_tx), worker: Some(worker) },
            Err(why) => {
                drop(req_tx);
                let _ = worker.join();
                panic!("{why}");
            }
        }
    }

    fn call(&self, op: DockerOp) -> Result<String, String> {
        let (tx, rx) = mpsc::channel();
        let requests = self.requests.as_ref().ok_or_else(|| "redis container already shut down".to_string())?;
        requests.send(DockerRequest { op, reply: tx }).map_err(|_| "the redis container thread is gone".to_string())?;
        rx.recv().map_err(|_| "the redis container thread is gone".to_string())?
    }

    fn logs(&self) -> String {
        self.call(DockerOp::Logs).unwrap_or_else(|err| format!("<cannot read container logs: {err}>"))
    }

    fn stop(&mut self) {
        if !self.running {
            return;
        }
        if let Err(err) = self.call(DockerOp::Stop) {
            panic!("stopping the redis container failed: {err}\n{}", self.logs());
        }
        self.running = false;
    }

    fn start_again(&mut self) {
        if let Err(err) = self.call(DockerOp::Start) {
            panic!("starting the redis container again failed: {err}\n{}", self.logs());
        }
        self.running = true;
    }
}

impl Drop for DockerRedis {
    fn drop(&mut self) {
        // Closing the channel makes the worker remove the container and exit.
        self.requests = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn docker_worker(
    ready: mpsc::Sender<Result<SocketAddr, String>>,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<DockerRequest>,
) {
    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{GenericImage, ImageExt};

    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            let _ = ready.send(Err(format!("cannot build a tokio runtime: {err}")));
            return;
        }
    };
    runtime.block_on(async move {
        if let Err(err) = docker_ping().await {
            let _ = ready.send(Err(format!(
                "redis-server not found on PATH and no Docker engine reachable: \
                 {HOW_TO_GET_REDIS} (docker: {err})"
            )));
            return;
        }

        let mut errors = Vec::new();
        let mut started = None;
        for _ in 0..START_ATTEMPTS {
            let host_port = pick_free_port(false);
            let request = GenericImage::new(DOCKER_IMAGE, DOCKER_TAG)
                .with_exposed_port(6379.tcp())
                .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
                .with_mapped_port(host_port, 6379.tcp())
                .with_cmd(["redis-server", "--save", "", "--appendonly", "no"])
                .with_startup_timeout(Duration::from_secs(120));
            match request.start().await {
                Ok(container) => {
                    started = Some((container, host_port));
                    break;
                }
                Err(err) => {
                    let err = err.to_string();
                    let port_clash = err.contains("already allocated") || err.contains("already in use");
                    errors.push(format!("host port {host_port}: {err}"));
                    if !port_clash {
                        break;
                    }
                }
            }
        }
        let Some((container, host_port)) = started else {
            let _ = ready
                .send(Err(format!("starting a {DOCKER_IMAGE}:{DOCKER_TAG} container failed:\n{}", errors.join("\n"))));
            return;
        };

        let host = match container.get_host().await {
            Ok(host) => host.to_string(),
            Err(err) => {
                let _ = ready.send(Err(format!("cannot get the container host: {err}")));
                let _ = container.rm().await;
                return;
            }
        };
        let addr = match resolve_ipv4_first(&host, host_port) {
            Some(addr) => addr,
            None => {
                let _ = ready.send(Err(format!("cannot resolve docker host {host:?}")));
                let _ = container.rm().await;
                return;
            }
        };
        if ready.send(Ok(addr)).is_err() {
            let _ = container.rm().await;
            return;
        }

        while let Some(DockerRequest { op, reply }) = requests.recv().await {
            let result = match op {
                DockerOp::Stop => container.stop().await.map(|()| String::new()),
                DockerOp::Start => container.start().await.map(|()| String::new()),
                DockerOp::Logs => {
                    let out = container.stdout_to_vec().await;
                    let err = container.stderr_to_vec().await;
                    out.and_then(|out| {
                        err.map(|err| {
                            format!(
                                "--- container stdout ---\n{}--- container stderr ---\n{}",
                                String::from_utf8_lossy(&out),
                                String::from_utf8_lossy(&err)
                            )
                        })
                    })
                }
            };
            let _ = reply.send(result.map_err(|err| err.to_string()));
        }
        let _ = container.rm().await;
    });
}

/// Checks that a Docker engine answers (`DOCKER_HOST` or the default socket).
async fn docker_ping() -> Result<(), String> {
    let docker = testcontainers::bollard::Docker::connect_with_defaults().map_err(|err| err.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), docker.ping()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("ping timed out".to_string()),
    }
}

fn resolve_ipv4_first(host: &str, port: u16) -> Option<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().ok()?.collect();
    addrs.iter().find(|a| a.is_ipv4()).or_else(|| addrs.first()).copied()
}

// ---------------------------------------------------------------------------
// Minimal RESP client for readiness probes
// ---------------------------------------------------------------------------

/// A blocking RESP connection that understands simple strings, errors,
/// integers and bulk strings (all the probes need).
struct RespConn {
    reader: BufReader<TcpStream>,
}

impl RespConn {
    fn connect(addr: SocketAddr) -> io::Result<RespConn> {
        let stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
        stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
        stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(RespConn { reader: BufReader::new(stream) })
    }

    fn request(&mut self, args: &[&str]) -> io::Result<String> {
        let mut buf = format!("*{}\r\n", args.len());
        for arg in args {
            buf.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.reader.get_mut().write_all(buf.as_bytes())?;

        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let (kind, rest) = line.split_at(line.len().min(1));
        match kind {
            "+" | ":" => Ok(rest.to_string()),
            "-" => Err(io::Error::other(format!("redis error: {rest}"))),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| io::Error::other(format!("bad bulk length {rest:?}")))?;
                if len < 0 {
                    return Ok(String::new());
                }
                let len = usize::try_from(len).map_err(io::Error::other)?;
                let mut body = vec![0; len + 2];
                self.reader.read_exact(&mut body)?;
                body.truncate(len);
                Ok(String::from_utf8_lossy(&body).into_owned())
            }
            _ => Err(io::Error::other(format!("unexpected reply {line:?}"))),
        }
    }
}

/// Sends one command on a fresh connection.
fn raw_command(addr: SocketAddr, args: &[&str]) -> io::Result<String> {
    RespConn::connect(addr)?.request(args)
}

/// Polls PING until `+PONG` or `timeout`.
fn wait_for_ping(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let err = match raw_command(addr, &["PING"]) {
            Ok(reply) if reply == "PONG" => return Ok(()),
            Ok(reply) => format!("unexpected PING reply {reply:?}"),
            Err(err) => err.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(err);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Value of `field` in an `INFO`-style `field:value` listing.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == field).then(|| value.trim())
    })
}

/// Finds an executable named `name` on `PATH`, like `which`.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}
