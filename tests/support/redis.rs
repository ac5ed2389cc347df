//! Throwaway Redis servers for integration tests, in the style of redis-rs's
//! `redis-test` crate.
//!
//! * [`RedisServer`] is a standalone server that can be stopped and restarted
//!   on the same port, to simulate Redis going down and coming back.
//! * [`RedisCluster`] is a Redis Cluster of N primaries, with or without
//!   replicas: kill, restart and fail over nodes, and reshard.
//! * [`RedisSentinel`] is one primary, one replica and three sentinels: kill
//!   or demote the primary and watch the sentinels fail over.
//! * Each of them can speak TLS only ([`Tls`]): a CA and certificates are
//!   made in the test ([`TlsFiles`]), URLs are `rediss://`, and the plain
//!   port is off.
//! * Each of them can restart a primary so that it answers `-LOADING` for as
//!   long as the test wants: [`RedisServer::restart_loading`] and
//!   [`RedisServer::finish_loading`] (and the same on the cluster and
//!   sentinel fixtures). How: the node gets 6,000 filler keys of 1 KiB
//!   (`DEBUG POPULATE`, named `fixture:loading[:{tag}]:N`; they stay after
//!   the load), `SAVE`s, is killed with SIGKILL and restarted on the same
//!   port loading that RDB file with `key-load-delay` 10 ms per key (60 s
//!   in all); `finish_loading` sets the delay to 0 (`CONFIG SET` is served
//!   while loading), so the load ends at once. The test's own data is in the
//!   RDB file too, so it survives this restart.
//!
//! Servers are local `redis-server` processes bound to `127.0.0.1`, with
//! persistence disabled (`--save ""`; a plain restart starts empty) and
//! their data, config and log files in a temporary directory. Ports are
//! picked at random in `[10000, 55536)`, outside the kernel's ephemeral port
//! range (so no outgoing connection takes a node's port while it is down),
//! never 6379, and for cluster nodes with the bus port (`port + 10000`) free
//! too; port races between tests running in parallel (e.g. under
//! cargo-nextest) are handled by retrying on another port. When
//! `redis-server` is not on `PATH`, a plain [`RedisServer::start`] falls
//! back to a `redis:7` container started through testcontainers (needs a
//! reachable Docker engine); everything else needs the local binaries
//! (`redis-server` and `redis-cli`, Redis 7).
//!
//! Set `TOLLGATE_TEST_REDIS_BACKEND=docker` (or `process`) to force a backend
//! for [`RedisServer::start`].
//!
//! Everything here is synchronous (it blocks the calling thread while servers
//! start, fail over or reshard), so it works from plain `#[test]`s and from
//! `#[tokio::test]`s alike. [`RedisCluster`] and [`RedisSentinel`] take
//! `&self` everywhere and are `Send + Sync`: to reshard or kill a node while
//! the test's own tasks keep running, put the fixture in an `Arc` and call
//! it from `tokio::task::spawn_blocking`. Failures panic with the servers'
//! logs. Processes are killed (and files removed) on drop.

// Each integration test crate compiles this module separately and uses only
// part of it.
#![allow(dead_code)]

mod cluster;
mod docker;
mod node;
mod resp;
mod sentinel;
mod tls;

// Re-exported for the test crates; each uses only some.
#[allow(unused_imports)]
pub use cluster::{ClusterBuilder, RedisCluster, RedisClusterNode};
#[allow(unused_imports)]
pub use sentinel::{RedisSentinel, SentinelBuilder};
#[allow(unused_imports)]
pub use tls::{Tls, TlsFiles};

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use docker::DockerRedis;
use node::{find_on_path, LocalNode, NodeKind};

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
/// The machine's shared Redis; tests must never use it.
const SHARED_REDIS_PORT: u16 = 6379;
/// Prefix of the filler keys of a staged `LOADING` on a standalone server.
const FILLER_PREFIX: &str = "fixture:loading";

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// `redis-server` from `PATH`, or a panic saying how to get it; `who` names
/// the fixture that needs it.
fn local_redis_server(who: &str) -> PathBuf {
    find_on_path("redis-server").unwrap_or_else(|| {
        panic!("redis-server not found on PATH ({who} needs local Redis binaries, it has no Docker fallback): {INSTALL_REDIS}")
    })
}

/// `redis-cli` from `PATH`, or a panic saying how to get it.
fn local_redis_cli(who: &str) -> PathBuf {
    find_on_path("redis-cli").unwrap_or_else(|| {
        panic!(
            "redis-cli not found on PATH (needed by {who}): {INSTALL_REDIS} (redis-cli is in the redis-tools package)"
        )
    })
}

/// A temporary directory named after the fixture.
fn fixture_tempdir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|err| panic!("failed to create a temporary directory ({prefix}...): {err}"))
}

/// Polls `check` (every 100 ms) until it returns `Ok`, and returns that.
/// After `timeout`, panics naming `what`, with the last error and `logs()`.
fn wait_until<T>(
    what: &str,
    timeout: Duration,
    logs: impl Fn() -> String,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not done after {timeout:?}; last check: {last}\n--- logs ---\n{}", logs())
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `redis://` or `rediss://` URL of a local node.
fn node_url(port: u16, tls: bool) -> String {
    let scheme = if tls { "rediss" } else { "redis" };
    format!("{scheme}://127.0.0.1:{port}/")
}

// ---------------------------------------------------------------------------
// RedisServer
// ---------------------------------------------------------------------------

/// A standalone Redis server for one test, killed and cleaned up on drop.
///
/// Data is not persisted: after [`RedisServer::restart`] the server is empty.
pub struct RedisServer {
    addr: SocketAddr,
    backend: Backend,
    tls: Option<Arc<TlsFiles>>,
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
            Some(bin) => Self::start_process(bin, Tls::Off),
            None if forced == "process" => {
                panic!("{BACKEND_ENV}=process but redis-server not found on PATH: {HOW_TO_GET_REDIS}")
            }
            None => Self::start_docker(),
        }
    }

    /// Starts a TLS-only server ([`Tls::On`]): [`url`](Self::url) is
    /// `rediss://127.0.0.1:PORT/`, and clients must trust
    /// [`ca_cert_path`](Self::ca_cert_path). Needs a local `redis-server`
    /// built with TLS (Debian's is); panics saying so otherwise.
    pub fn start_tls() -> RedisServer {
        Self::start_with_tls(Tls::On)
    }

    /// Starts a server with the given TLS mode ([`Tls::Off`] is a plain
    /// local server, never a container).
    pub fn start_with_tls(tls: Tls) -> RedisServer {
        Self::start_process(local_redis_server("RedisServer::start_with_tls"), tls)
    }

    fn start_process(bin: PathBuf, tls: Tls) -> RedisServer {
        let tempdir = fixture_tempdir("tollgate-redis-");
        let tls = (tls != Tls::Off).then(|| Arc::new(TlsFiles::generate(&tempdir.path().join("tls"), tls)));
        let node = LocalNode::start(bin, tempdir.path().join("node"), NodeKind::Standalone, tls.clone(), None);
        RedisServer { addr: node.addr(), backend: Backend::Process { node, _tempdir: tempdir }, tls }
    }

    fn start_docker() -> RedisServer {
        let docker = DockerRedis::start();
        let addr = docker.addr;
        resp::Connector::plain().wait_for_pong(addr, READY_TIMEOUT).unwrap_or_else(|err| {
            panic!("redis container on {addr} not ready after {READY_TIMEOUT:?}: {err}\n{}", docker.logs())
        });
        RedisServer { addr, backend: Backend::Docker(docker), tls: None }
    }

    /// Connection URL, e.g. `redis://127.0.0.1:41234/` (`rediss://` with TLS).
    pub fn url(&self) -> String {
        node_url(self.addr.port(), self.tls.is_some())
    }

    /// TCP port the server listens on (kept across [`RedisServer::restart`]).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A Redis store on this server, once it is ready to answer (the store
    /// connects in the background); decided on `clock` when given (the
    /// `test-clock` feature), else on Redis's own clock.
    pub async fn ready_store(
        &self,
        clock: Option<Arc<tollgate::store::clock::ManualClock>>,
    ) -> tollgate::store::redis::RedisStore {
        use tollgate::store::redis::{RedisSettings, RedisStore, TestClock};
        use tollgate::store::LimitStore;
        let mut s = RedisSettings::new(&self.url());
        s.timeout = Duration::from_secs(5);
        s.clock = clock.map(|c| TestClock(c));
        let store = RedisStore::open(s).expect("open the Redis store");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !store.is_ready() {
            assert!(Instant::now() < deadline, "the Redis store never became ready; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        store
    }

    /// Script calls this Redis has run (decisions, settles, UpdateUsage),
    /// from `INFO commandstats`: EVALSHA, and EVAL should a client ever send
    /// the script itself. Counted, never timed.
    pub async fn script_calls(&self) -> u64 {
        let mut c = redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut c).await.unwrap();
        info.lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
            .sum()
    }

    /// The TLS files (CA, client certificate), if the server speaks TLS.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_deref()
    }

    /// The CA certificate (PEM) clients must trust. Panics if the server
    /// does not speak TLS.
    pub fn ca_cert_path(&self) -> PathBuf {
        match self.tls() {
            Some(tls) => tls.ca_cert_path(),
            None => panic!("RedisServer::ca_cert_path: this server has no TLS (start it with start_tls)"),
        }
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
                resp::Connector::plain().wait_for_pong(addr, READY_TIMEOUT).unwrap_or_else(|err| {
                    panic!(
                        "restarted redis container on {addr} not ready after {READY_TIMEOUT:?}: {err}\n{}",
                        docker.logs()
                    )
                });
            }
        }
    }

    /// Restarts the (running) server so that it answers `-LOADING` until
    /// [`finish_loading`](Self::finish_loading) (or for about a minute):
    /// see the module docs. Its data, the test's keys included, survives
    /// this restart. Local servers only (not the Docker fallback).
    pub fn restart_loading(&mut self) {
        match &mut self.backend {
            Backend::Process { node, .. } => node.restart_loading(FILLER_PREFIX),
            Backend::Docker(_) => panic!("RedisServer::restart_loading needs a local redis-server: {INSTALL_REDIS}"),
        }
    }

    /// Ends the load staged by [`restart_loading`](Self::restart_loading)
    /// and waits until the server answers PING.
    pub fn finish_loading(&self) {
        match &self.backend {
            Backend::Process { node, .. } => node.finish_loading(),
            Backend::Docker(_) => panic!("RedisServer::finish_loading needs a local redis-server: {INSTALL_REDIS}"),
        }
    }
}
