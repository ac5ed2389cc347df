//! Test support: Redis fixtures ([`redis`]), a real Envoy ([`envoy`]), an
//! HTTP/1.1 client and echoing upstream ([`http`]), tollgate servers (in this
//! process or as child processes), and small helpers shared by the suites.

#![allow(dead_code)]

pub mod envoy;
pub mod http;
pub mod redis;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate::api::pb;

/// A `tollgate serve` child process, killed on drop. Its stderr is kept so
/// failures can show it.
pub struct TollgateProcess {
    child: Child,
    /// The data-plane address it listens on.
    pub addr: SocketAddr,
    /// Where the Admin service listens (`admin_addr=` in the log): its own
    /// address, or `addr` when it shares the data-plane listener; `None`
    /// with `--admin-listen off`.
    pub admin_addr: Option<SocketAddr>,
    /// Where the HTTP/JSON API listens (`http_addr=` in the log); `None`
    /// without `--http-listen`.
    pub http_addr: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    /// The thread that reads stderr; it ends when the process has exited.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl TollgateProcess {
    /// Starts `tollgate serve ARGS...` listening on free loopback ports (the
    /// data plane and the Admin service each on its own, unless ARGS or the
    /// environment say otherwise) and waits until it listens.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Like [`start`](Self::start), with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.arg("serve").args(args);
        cmd.env("RUST_LOG", "info").env_remove("TOLLGATE_REDIS_URL").env_remove("TOLLGATE_CONFIG");
        // No traces unless a test asks (a developer's shell may name a collector).
        for v in ["TOLLGATE_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"] {
            cmd.env_remove(v);
        }
        // Free ports, never the fixed defaults (tests run in parallel). Given
        // as environment variables so that a test's own --listen or
        // --admin-listen (or `env`) wins.
        cmd.env("TOLLGATE_LISTEN", "127.0.0.1:0").env("TOLLGATE_ADMIN_LISTEN", "127.0.0.1:0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the tollgate binary");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(&str, String)>();
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    for announced in listening(&line) {
                        let _ = tx.send(announced);
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            })
        };
        let (mut admin_addr, mut http_addr) = (None, None);
        let addr = loop {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok((kind, a)) => {
                    let a: SocketAddr = a.parse().unwrap_or_else(|e| panic!("bad address {a:?} in tollgate log: {e}"));
                    match kind {
                        "main" => break a,
                        "admin" => admin_addr = Some(a),
                        _ => http_addr = Some(a),
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("tollgate did not start listening within 20 s; log:\n{}", log.lock().unwrap());
                }
            }
        };
        Self { child, addr, admin_addr, http_addr, log, reader: Some(reader) }
    }

    /// `http://ADDR` of the data plane.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id (for `bench --server-pid`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The Admin service's address; panics when it is off.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr.unwrap_or_else(|| panic!("this tollgate serves no Admin; log:\n{}", self.log()))
    }

    /// The HTTP/JSON API's address; panics without `--http-listen`.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr.unwrap_or_else(|| panic!("this tollgate serves no HTTP API; log:\n{}", self.log()))
    }

    /// The Prometheus listener's address (`--metrics-listen`), from the
    /// start line of the log; panics when there is none.
    pub fn metrics_addr(&self) -> SocketAddr {
        let log = self.log();
        log.split("metrics_addr=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("metrics address in the log: {log}"))
    }

    /// The text of `/metrics` now.
    pub async fn metrics_text(&self) -> String {
        let addr = self.metrics_addr();
        tokio::task::spawn_blocking(move || http::request(addr, "GET", "/metrics", &[]).text()).await.unwrap()
    }

    /// `http://ADDR` of the Admin service.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr())
    }

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until gRPC health says SERVING (the store and the catalog are
    /// ready), up to 15 s.
    pub async fn wait_serving(&self) {
        use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
        let ch = tonic::transport::Endpoint::from_shared(self.url()).unwrap().connect().await.expect("connect");
        let mut h = HealthClient::new(ch);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = h.check(HealthCheckRequest { service: String::new() }).await;
            if r.is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving) {
                return;
            }
            assert!(Instant::now() < deadline, "tollgate never became SERVING; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client of its Authorizer service.
    pub async fn authorizer(&self) -> pb::authorizer_client::AuthorizerClient<tonic::transport::Channel> {
        authorizer_client(self.addr).await
    }

    /// Stops the process (SIGSTOP): it holds its connections but does
    /// nothing, like a replica stuck in a long pause.
    pub fn pause(&self) {
        let _ = Command::new("kill").args(["-STOP", &self.child.id().to_string()]).status();
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&self) {
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
    }

    /// Sends SIGTERM, waits for the exit, and returns the exit status with
    /// everything the process wrote to stderr.
    pub fn terminate_with_log(mut self) -> (std::process::ExitStatus, String) {
        let reader = self.reader.take();
        let log = self.log.clone();
        let status = self.terminate();
        if let Some(r) = reader {
            let _ = r.join();
        }
        let log = log.lock().unwrap().clone();
        (status, log)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tollgate did not stop within 10 s of SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The addresses a log line announces: `("main", addr)` for the data
/// plane, `("admin", addr)` for the Admin service, `("http", addr)` for the
/// HTTP/JSON API; in text (`tollgate listening addr=…`, `admin_addr=…`,
/// `http_addr=…`) or JSON (`--log-format json`).
fn listening(line: &str) -> Vec<(&'static str, String)> {
    if line.starts_with('{') {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { return Vec::new() };
        let main = (v["message"] == "tollgate listening").then(|| v["addr"].as_str()).flatten();
        let admin = v["admin_addr"].as_str();
        let http = v["http_addr"].as_str();
        return [("main", main), ("admin", admin), ("http", http)]
            .into_iter()
            .filter_map(|(k, a)| Some((k, a?.to_string())))
            .collect();
    }
    let mut found = Vec::new();
    for (marker, kind) in [("tollgate listening addr=", "main"), ("admin_addr=", "admin"), ("http_addr=", "http")] {
        if let Some(i) = line.find(marker) {
            found.push((kind, line[i + marker.len()..].split_whitespace().next().unwrap_or("").to_string()));
        }
    }
    found
}

impl Drop for TollgateProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of the Authorizer at `addr`, retrying the connection for up to 10 s.
pub async fn authorizer_client(addr: SocketAddr) -> pb::authorizer_client::AuthorizerClient<tonic::transport::Channel> {
    let url = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await {
            Ok(ch) => return pb::authorizer_client::AuthorizerClient::new(ch),
            Err(e) if Instant::now() > deadline => panic!("cannot connect to {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// An Authorize request.
pub fn req(key: Option<&str>, stage: &str, method: &str, cost: Option<u64>) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest { api_key: key.map(str::to_string), stage: stage.into(), method: method.into(), cost }
}

/// Writes `text` to a file in a fresh temporary directory (kept alive by the
/// returned guard).
pub fn write_temp(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write temp file");
    (dir, path)
}

/// The repository's `examples/quickstart.yaml`.
pub fn quickstart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart.yaml")
}

/// The demo key of the quickstart.
pub const DEMO_KEY: &str = "tgdemo0123456789abcdefghijklmnopqrstuvw";

/// The admin token the test servers are started with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// An Admin client that sends `token` (if any) as a bearer token.
pub type AdminClient = pb::admin_client::AdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
>;

/// Adds `authorization: Bearer TOKEN` to every request.
#[derive(Clone)]
pub struct BearerToken(pub Option<String>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().expect("ascii token"));
        }
        Ok(req)
    }
}

/// An Admin client of the server at `addr`.
pub async fn admin_client(addr: SocketAddr, token: Option<&str>) -> AdminClient {
    let ch =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connect");
    pb::admin_client::AdminClient::with_interceptor(ch, BearerToken(token.map(str::to_string)))
}

impl TollgateProcess {
    /// An Admin client of its Admin listener, with the test token.
    pub async fn admin(&self) -> AdminClient {
        admin_client(self.admin_addr(), Some(ADMIN_TOKEN)).await
    }
}

/// The services gRPC reflection at `addr` lists (ListServices).
pub async fn reflection_services(addr: SocketAddr) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let ch =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connect");
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream =
        ServerReflectionClient::new(ch).server_reflection_info(tokio_stream::iter(vec![req])).await?.into_inner();
    let msg = stream.message().await?.expect("an answer");
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else { panic!("{msg:?}") };
    Ok(list.service.into_iter().map(|s| s.name).collect())
}
