//! One local `redis-server` process (a standalone server, a cluster node or
//! a sentinel) with its files in a directory: spawned on a free port,
//! polled until ready, killed with SIGKILL, restarted on the same port,
//! optionally so that it answers `LOADING` until told to finish. Also the
//! port picker and the `redis-cli` runner the fixtures share.

use std::collections::hash_map::RandomState;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::resp::{info_field, Connector, Reply};
use super::tls::TlsFiles;
use super::{LOCALHOST, READY_TIMEOUT, SHARED_REDIS_PORT, START_ATTEMPTS};

/// A cluster node's bus port is its client port plus this.
pub(crate) const BUS_PORT_OFFSET: u16 = 10000;
/// Ports are picked below this, so that `port + 10000` is a valid port.
const PORT_LIMIT: u16 = 55536;
/// Ports are picked at or above this (clear of well-known service ports).
const PORT_FLOOR: u16 = 10000;
/// How long a restart waits for its port to become free again.
const RESTART_PORT_WAIT: Duration = Duration::from_secs(5);

/// How a node stages `LOADING` (see [`LocalNode::restart_loading`]): this
/// many filler keys, each with a value of this many bytes (at least
/// `loading-process-events-interval-bytes`, so the server serves clients,
/// with `-LOADING`, after every key), loaded with this delay per key. The
/// load thus takes up to `FILLER_KEYS * LOADING_KEY_DELAY_US` (60 s) unless
/// [`LocalNode::finish_loading`] sets the delay to 0.
pub(crate) const FILLER_KEYS: u32 = 6000;
const FILLER_VALUE_BYTES: u32 = 1024;
const LOADING_KEY_DELAY_US: u32 = 10_000;
/// The RDB file a node saves to and loads from.
const RDB_FILE: &str = "dump.rdb";

/// What a node is.
#[derive(Clone, Debug)]
pub(crate) enum NodeKind {
    /// A standalone server (possibly a replica, see [`LocalNode::replica_of`]).
    Standalone,
    /// A cluster node.
    Cluster { node_timeout_ms: u64, require_full_coverage: bool },
    /// A sentinel; `config` is its `sentinel.conf` (the port comes from the
    /// command line). Written at the first start only: the sentinel rewrites
    /// it with what it learns, and keeps that across restarts.
    Sentinel { config: String },
}

/// What a spawned process must answer before it counts as started.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// `PING` answers `PONG`.
    Pong,
    /// `PING` answers `-LOADING` (it is loading its RDB file).
    Loading,
}

/// One `redis-server` child process with its files in `dir`.
pub(crate) struct LocalNode {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    kind: NodeKind,
    tls: Option<Arc<TlsFiles>>,
    connector: Connector,
    /// `--replicaof 127.0.0.1 PORT` on the next start.
    replica_of: Option<u16>,
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
    /// Spawns a server on a free port, retrying on other ports when the
    /// chosen one turns out to be taken, and waits until it answers PING.
    /// Panics with its log on failure.
    pub(crate) fn start(
        bin: PathBuf,
        dir: PathBuf,
        kind: NodeKind,
        tls: Option<Arc<TlsFiles>>,
        replica_of: Option<u16>,
    ) -> LocalNode {
        fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("failed to create {}: {err}", dir.display()));
        if let NodeKind::Sentinel { config } = &kind {
            let path = dir.join("sentinel.conf");
            fs::write(&path, config).unwrap_or_else(|err| panic!("failed to write {}: {err}", path.display()));
        }
        let connector = tls.as_ref().map_or_else(Connector::plain, |t| Connector::tls(t.client_config()));
        let mut node = LocalNode { bin, dir, port: 0, kind, tls, connector, replica_of, child: None, log_offset: 0 };
        let mut tried = Vec::new();
        for _ in 0..START_ATTEMPTS {
            node.port = pick_free_port(matches!(node.kind, NodeKind::Cluster { .. }));
            tried.push(node.port);
            match node.spawn_and_wait(Expect::Pong) {
                Ok(()) => return node,
                Err(StartFailure::PortInUse) => continue,
                Err(StartFailure::Other(why)) => panic!("redis-server on port {}: {why}\n{}", node.port, node.log()),
            }
        }
        panic!(
            "redis-server could not bind a free port after {START_ATTEMPTS} attempts (tried {tried:?})\n{}",
            node.log()
        );
    }

    /// Client port (the TLS port for TLS nodes: their plain port is off).
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::new(LOCALHOST, self.port)
    }

    /// Sets the `--replicaof` target of the next (re)start.
    pub(crate) fn set_replica_of(&mut self, primary: Option<u16>) {
        self.replica_of = primary;
    }

    /// Kills the process (SIGKILL) if it runs, then starts it again on the
    /// same port and waits until it answers PING. It starts empty: data is
    /// not persisted. Panics with the log if the port stays taken for a few
    /// seconds or the server does not come up.
    pub(crate) fn restart_same_port(&mut self) {
        self.remove_rdb();
        self.respawn(Expect::Pong);
    }

    /// Stages `LOADING`: writes [`FILLER_KEYS`] filler keys named
    /// `{prefix}:0`, `{prefix}:1`, ... (with `DEBUG POPULATE`; in a cluster
    /// `prefix` must hash to a slot this node serves), saves everything to
    /// its RDB file (`SAVE`, the test's own data too), kills the process
    /// (SIGKILL), and starts it again loading that file slowly. Returns once
    /// it answers `-LOADING` to PING; it goes on loading (for up to a minute)
    /// until [`finish_loading`](Self::finish_loading).
    pub(crate) fn restart_loading(&mut self, prefix: &str) {
        let populate =
            ["DEBUG", "POPULATE", &FILLER_KEYS.to_string(), prefix, &FILLER_VALUE_BYTES.to_string()].map(String::from);
        for args in [populate.to_vec(), vec!["SAVE".to_string()]] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match self.connector.command(self.addr(), &args) {
                Ok(Reply::Status(_)) => {}
                other => panic!("staging LOADING on port {}: {args:?} answered {other:?}\n{}", self.port, self.log()),
            }
        }
        self.respawn(Expect::Loading);
    }

    /// Ends a load staged by [`restart_loading`](Self::restart_loading)
    /// (`CONFIG SET key-load-delay 0`, which a loading server serves) and
    /// waits until the node answers PING.
    pub(crate) fn finish_loading(&self) {
        match self.connector.command(self.addr(), &["CONFIG", "SET", "key-load-delay", "0"]) {
            Ok(Reply::Status(_)) => {}
            other => panic!("finishing LOADING on port {}: CONFIG SET answered {other:?}\n{}", self.port, self.log()),
        }
        self.connector.wait_for_pong(self.addr(), READY_TIMEOUT).unwrap_or_else(|err| {
            panic!("port {} still not answering PING after loading: {err}\n{}", self.port, self.log())
        });
    }

    fn respawn(&mut self, expect: Expect) {
        self.kill();
        let deadline = Instant::now() + RESTART_PORT_WAIT;
        loop {
            match self.spawn_and_wait(expect) {
                Ok(()) => return,
                Err(StartFailure::PortInUse) if Instant::now() < deadline => thread::sleep(Duration::from_millis(200)),
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

    fn remove_rdb(&self) {
        let path = self.dir.join(RDB_FILE);
        if let Err(err) = fs::remove_file(&path) {
            assert!(err.kind() == io::ErrorKind::NotFound, "cannot remove {}: {err}", path.display());
        }
    }

    /// `redis.log`, plus whatever the process wrote to stdout/stderr (early
    /// startup errors such as bad arguments never reach the log file).
    pub(crate) fn log(&self) -> String {
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

    pub(crate) fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn spawn_and_wait(&mut self, expect: Expect) -> Result<(), StartFailure> {
        self.spawn(expect)?;
        let result = self.wait_ready(expect);
        if result.is_err() {
            self.kill();
        }
        result
    }

    fn spawn(&mut self, expect: Expect) -> Result<(), StartFailure> {
        self.log_offset = fs::metadata(self.log_path()).map_or(0, |m| m.len());
        let stdio = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stdio_path())
            .map_err(|err| StartFailure::Other(format!("cannot open {}: {err}", self.stdio_path().display())))?;
        let stdio_err = stdio
            .try_clone()
            .map_err(|err| StartFailure::Other(format!("cannot duplicate the stdio file handle: {err}")))?;
        let mut cmd = self.command(expect);
        cmd.stdin(Stdio::null()).stdout(stdio).stderr(stdio_err);
        let child = cmd.spawn().map_err(|err| StartFailure::Other(format!("failed to run {cmd:?}: {err}")))?;
        self.child = Some(child);
        Ok(())
    }

    fn command(&self, expect: Expect) -> Command {
        let mut cmd = Command::new(&self.bin);
        if matches!(self.kind, NodeKind::Sentinel { .. }) {
            cmd.arg(self.dir.join("sentinel.conf")).arg("--sentinel");
        }
        let cluster = matches!(self.kind, NodeKind::Cluster { .. });
        match &self.tls {
            Some(tls) => cmd.args(tls.server_args(self.port, cluster)),
            None => cmd.arg("--port").arg(self.port.to_string()),
        };
        cmd.args(["--bind", "127.0.0.1"]).arg("--dir").arg(&self.dir).arg("--logfile").arg(self.log_path());
        if matches!(self.kind, NodeKind::Sentinel { .. }) {
            return cmd;
        }
        cmd.args(["--save", "", "--appendonly", "no", "--dbfilename", RDB_FILE]).args([
            "--enable-debug-command",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        ]);
        if expect == Expect::Loading {
            cmd.args(["--key-load-delay", &LOADING_KEY_DELAY_US.to_string()])
                .args(["--loading-process-events-interval-bytes", "1024"]);
        }
        if let Some(primary) = self.replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        if let NodeKind::Cluster { node_timeout_ms, require_full_coverage } = self.kind {
            let coverage = if require_full_coverage { "yes" } else { "no" };
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", &node_timeout_ms.to_string()])
                .arg("--cluster-config-file")
                .arg(self.dir.join(format!("nodes-{}.conf", self.port)))
                // Always promote a replica, however long its link was down.
                .args(["--cluster-replica-validity-factor", "0"])
                // Keep the topology the test built (no replica moves).
                .args(["--cluster-allow-replica-migration", "no"])
                .args(["--cluster-require-full-coverage", coverage]);
        }
        cmd
    }

    /// Polls until the server on our port answers PING as `expect`ed *and*
    /// is our process (another test's server may own the port if we lost a
    /// race for it).
    fn wait_ready(&mut self, expect: Expect) -> Result<(), StartFailure> {
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
                return Err(StartFailure::Other(format!(
                    "redis-server exited during startup ({status}){}",
                    self.tls_hint()
                )));
            }
            let last = match self.probe_pid(expect) {
                Ok(p) if p == pid => return Ok(()),
                Ok(p) => format!("port {} is served by another process (pid {p})", self.port),
                Err(err) => err,
            };
            if Instant::now() >= deadline {
                return Err(StartFailure::Other(format!(
                    "redis-server (pid {pid}) not ready within {READY_TIMEOUT:?}; last probe: {last}{}",
                    self.tls_hint()
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// PINGs the node (expecting `PONG` or `-LOADING`) and returns the
    /// `process_id` from `INFO server`.
    fn probe_pid(&self, expect: Expect) -> Result<u32, String> {
        let mut conn = self.connector.connect(self.addr()).map_err(|err| err.to_string())?;
        let pong = conn.request(&["PING"]).map_err(|err| err.to_string())?;
        let ok = match (&pong, expect) {
            (Reply::Status(s), Expect::Pong) => s == "PONG",
            (Reply::Error(e), Expect::Loading) => e.starts_with("LOADING"),
            _ => false,
        };
        if !ok {
            return Err(format!("PING answered {pong:?}"));
        }
        let info = conn.request_str(&["INFO", "server"]).map_err(|err| err.to_string())?;
        let pid = info_field(&info, "process_id").ok_or_else(|| "INFO server has no process_id".to_string())?;
        pid.parse().map_err(|_| format!("bad process_id {pid:?}"))
    }

    /// For a TLS node, a sentence on what to check when it does not come up.
    fn tls_hint(&self) -> String {
        if self.tls.is_none() {
            return String::new();
        }
        format!(
            ". This is a TLS server: {} must be built with TLS support (BUILD_TLS=yes; Debian's \
             redis-server is), and the probe must complete a TLS handshake with it",
            self.bin.display()
        )
    }

    /// Kills the process with SIGKILL (like a crash). Does nothing if it is
    /// not running.
    pub(crate) fn kill(&mut self) {
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

pub(crate) fn kill_and_reap(child: &mut Child) {
    // `Child::kill` is SIGKILL on Unix. Errors only mean it has already exited.
    let _ = child.kill();
    let _ = child.wait();
}

/// Picks a port that is currently free on 127.0.0.1, in `[10000, 55536)`
/// and outside the kernel's ephemeral range (so outgoing connections do not
/// grab it while a node is down between a kill and a restart), never 6379.
/// For cluster nodes the bus port (`port + 10000`) must satisfy the same.
/// Falls back to ignoring the ephemeral range when nothing else is free.
pub(crate) fn pick_free_port(cluster: bool) -> u16 {
    let ephemeral = ephemeral_port_range();
    let hasher = RandomState::new();
    for attempt in 0..4000u32 {
        let mut h = hasher.build_hasher();
        h.write_u32(attempt);
        let span = u64::from(PORT_LIMIT - PORT_FLOOR);
        let port = PORT_FLOOR + u16::try_from(h.finish() % span).expect("span fits in u16");
        let strict = attempt < 3000;
        let usable = |p: u16| {
            p != SHARED_REDIS_PORT
                && !(strict && ephemeral.as_ref().is_some_and(|r| r.contains(&p)))
                && TcpListener::bind((LOCALHOST, p)).is_ok()
        };
        if usable(port) && (!cluster || usable(port + BUS_PORT_OFFSET)) {
            return port;
        }
    }
    panic!("could not find a free TCP port (and bus port) on 127.0.0.1 below {PORT_LIMIT}");
}

/// The kernel's ephemeral port range (Linux only).
fn ephemeral_port_range() -> Option<std::ops::RangeInclusive<u16>> {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut bounds = text.split_whitespace().filter_map(|s| s.parse::<u16>().ok());
    Some(bounds.next()?..=bounds.next()?)
}

/// Finds an executable named `name` on `PATH`, like `which`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
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

/// Runs `redis-cli ARGS` (plus the TLS options when `tls` is set), its
/// output going to `out_path`; kills it after `timeout`. Returns the output,
/// or why it failed (with the output).
pub(crate) fn run_cli(
    cli_bin: &Path,
    args: &[String],
    tls: Option<&TlsFiles>,
    out_path: &Path,
    timeout: Duration,
) -> Result<String, String> {
    let out = File::create(out_path).map_err(|err| format!("cannot create {}: {err}", out_path.display()))?;
    let err_out = out.try_clone().map_err(|err| format!("cannot duplicate a file handle: {err}"))?;
    let mut cmd = Command::new(cli_bin);
    cmd.args(tls.map(TlsFiles::cli_args).unwrap_or_default()).args(args);
    cmd.stdin(Stdio::null()).stdout(out).stderr(err_out);
    let mut child = cmd.spawn().map_err(|err| format!("failed to run {cmd:?}: {err}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                kill_and_reap(&mut child);
                break None;
            }
            Err(err) => return Err(format!("failed to wait for {cmd:?}: {err}")),
        }
    };
    let output = fs::read_to_string(out_path).unwrap_or_default();
    match status {
        Some(status) if status.success() => Ok(output),
        Some(status) => Err(format!("{cmd:?} failed ({status})\n--- redis-cli output ---\n{output}")),
        None => Err(format!("{cmd:?} did not finish within {timeout:?}\n--- redis-cli output ---\n{output}")),
    }
}
