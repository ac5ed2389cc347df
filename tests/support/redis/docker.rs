//! The `redis:7` container fallback of [`RedisServer`](super::RedisServer)
//! when `redis-server` is not on `PATH` (needs a reachable Docker engine).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::node::pick_free_port;
use super::{HOW_TO_GET_REDIS, START_ATTEMPTS};

/// Docker image used by the container backend.
const DOCKER_IMAGE: &str = "redis";
const DOCKER_TAG: &str = "7";

/// A `redis:7` container owned by a dedicated thread with its own tokio
/// runtime (testcontainers' async API must not run on the test's runtime, and
/// its sync API needs the `blocking` feature).
///
/// The host port is fixed when the container is created, so it stays the same
/// across stop/start.
pub(crate) struct DockerRedis {
    pub(crate) addr: SocketAddr,
    pub(crate) running: bool,
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
    pub(crate) fn start() -> DockerRedis {
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

    pub(crate) fn logs(&self) -> String {
        self.call(DockerOp::Logs).unwrap_or_else(|err| format!("<cannot read container logs: {err}>"))
    }

    pub(crate) fn stop(&mut self) {
        if !self.running {
            return;
        }
        if let Err(err) = self.call(DockerOp::Stop) {
            panic!("stopping the redis container failed: {err}\n{}", self.logs());
        }
        self.running = false;
    }

    pub(crate) fn start_again(&mut self) {
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
