//! TLS and mTLS on every listener (`--tls-cert`, `--tls-key`,
//! `--tls-client-ca`), with a test CA made here (rcgen): the real binary,
//! real TLS clients (tonic's, rustls over std sockets for HTTP/1.1, the
//! `tollgate` CLI, and Envoy).
//!
//! - every listener (data plane, Admin, HTTP/JSON, metrics) refuses a client
//!   that does not trust the CA, and serves one that does;
//! - mTLS: no client certificate, or one from another CA, is refused;
//! - a certificate (and a client CA) swapped on disk is served without a
//!   restart; a broken file keeps the old one serving;
//! - bad files stop the start with an error naming the flag;
//! - the CLI's `--ca-cert`, `--client-cert`, `--client-key` and `https://`;
//! - Envoy → tollgate ext_authz over mTLS (`deploy/envoy/ext_authz_mtls.yaml`).

mod support;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tempfile::TempDir;
use tollgate::api::pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use support::envoy::EnvoyProcess;
use support::http::{Response, Upstream};
use support::{quickstart, TollgateProcess, ADMIN_TOKEN, DEMO_KEY};

// ---------------------------------------------------------------------------
// A test PKI
// ---------------------------------------------------------------------------

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key, as PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Leaf {
    /// The certificate's DER bytes (what a TLS peer sees).
    fn der(&self) -> Vec<u8> {
        CertificateDer::from_pem_slice(self.cert.as_bytes()).expect("leaf PEM").to_vec()
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert, &self.key)
    }
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        Self { cert, issuer: rcgen::Issuer::new(params, key) }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses), with a key of
    /// its own (and so a serial and key of its own).
    fn issue(&self, names: &[&str]) -> Leaf {
        self.issue_with(names, |_| {})
    }

    /// [`issue`](Self::issue), with `edit` applied to the parameters.
    fn issue_with(&self, names: &[&str], edit: impl FnOnce(&mut rcgen::CertificateParams)) -> Leaf {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, names[0]);
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Leaf { cert: cert.pem(), key: key.serialize_pem() }
    }

    /// A certificate for the server: its loopback address, `localhost` and
    /// `tollgate` (the name Envoy's shipped config checks).
    fn server(&self) -> Leaf {
        self.issue(&["127.0.0.1", "localhost", "tollgate"])
    }
}

/// The server's TLS files, in a directory of their own.
struct Files {
    dir: TempDir,
}

impl Files {
    /// Writes the server's certificate and key (and the client CA, for mTLS).
    fn new(server: &Leaf, client_ca: Option<&Ca>) -> Self {
        let files = Self { dir: tempfile::tempdir().expect("temp dir") };
        files.put_server(server);
        if let Some(ca) = client_ca {
            files.write("client-ca.crt", &ca.pem());
        }
        files
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().expect("utf-8 temp path").to_string()
    }

    /// Replaces a file the way a careful deployment does: write aside, rename.
    fn write(&self, name: &str, text: &str) {
        let aside = self.path(&format!(".{name}.new"));
        std::fs::write(&aside, text).expect("write");
        std::fs::rename(&aside, self.path(name)).expect("rename");
    }

    fn put_server(&self, leaf: &Leaf) {
        self.write("tls.key", &leaf.key);
        self.write("tls.crt", &leaf.cert);
    }

    /// `serve` arguments for these files.
    fn serve_args(&self) -> Vec<String> {
        let mut args = vec!["--tls-cert".into(), self.arg("tls.crt"), "--tls-key".into(), self.arg("tls.key")];
        if self.path("client-ca.crt").exists() {
            args.extend(["--tls-client-ca".into(), self.arg("client-ca.crt")]);
        }
        args
    }
}

/// A tollgate with TLS on every listener: the quickstart catalog, the admin
/// token, the HTTP/JSON API and metrics.
fn start(files: &Files) -> TollgateProcess {
    let mut args = files.serve_args();
    let config = quickstart();
    args.extend(
        ["--config", config.to_str().unwrap(), "--http-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]
            .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TollgateProcess::start_with_env(&args, &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)])
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// tonic's TLS: trusting `ca` (else the system's roots), presenting `id`.
fn grpc_tls(ca: Option<&Ca>, id: Option<&Leaf>) -> ClientTlsConfig {
    let mut c = ClientTlsConfig::new();
    c = match ca {
        Some(ca) => c.ca_certificate(Certificate::from_pem(ca.pem())),
        None => c.with_native_roots(),
    };
    match id {
        Some(id) => c.identity(id.identity()),
        None => c,
    }
}

/// A channel to `https://addr`.
async fn channel(addr: SocketAddr, tls: ClientTlsConfig) -> Result<Channel, String> {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Authorize for the demo key over TLS; `Err` when the connection or the
/// call fails (with TLS 1.3 a refused client certificate shows at the
/// first call, not at connect).
async fn authorize(addr: SocketAddr, tls: ClientTlsConfig) -> Result<pb::AuthorizeResponse, String> {
    let ch = channel(addr, tls).await?;
    let mut client = pb::authorizer_client::AuthorizerClient::new(ch);
    let req = support::req(Some(DEMO_KEY), "petstore/prod", "/pets/GET", None);
    client.authorize(req).await.map(|r| r.into_inner()).map_err(|s| format!("{s:?}"))
}

/// ListApiKeys on the Admin listener over TLS, with the admin token.
async fn list_keys(addr: SocketAddr, tls: ClientTlsConfig) -> Result<usize, String> {
    let ch = channel(addr, tls).await?;
    let mut client =
        pb::admin_client::AdminClient::with_interceptor(ch, support::BearerToken(Some(ADMIN_TOKEN.to_string())));
    let r = client.list_api_keys(pb::ListApiKeysRequest::default()).await.map_err(|s| format!("{s:?}"))?;
    Ok(r.into_inner().keys.len())
}

/// A rustls client configuration: trusting `ca`, presenting `id`.
fn rustls_client(ca: &Ca, id: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match id {
        Some(id) => {
            let certs = CertificateDer::pem_slice_iter(id.cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
            builder.with_client_auth_cert(certs, PrivateKeyDer::from_pem_slice(id.key.as_bytes()).unwrap()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// `GET path` over HTTPS/1.1 on a new connection.
fn https_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    tls: Arc<rustls::ClientConfig>,
) -> Result<Response, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = rustls::ClientConnection::new(tls, ServerName::try_from("127.0.0.1").unwrap()).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    support::http::read_response(&mut BufReader::new(stream)).map_err(|e| e.to_string())
}

/// The certificate `addr` presents now (the handshake only; `tls` must
/// be accepted by the server).
fn served_cert(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<Vec<u8>, String> {
    let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut conn = rustls::ClientConnection::new(tls, ServerName::try_from("127.0.0.1").unwrap()).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    Ok(conn.peer_certificates().expect("a server certificate")[0].to_vec())
}

/// A counter's value on the metrics listener (0 when absent).
fn counter(p: &TollgateProcess, tls: Arc<rustls::ClientConfig>, name: &str) -> f64 {
    let r = https_get(p.metrics_addr(), "/metrics", &[], tls).expect("scrape /metrics");
    r.text().lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

/// Polls `f` until it is true, for up to `secs` seconds.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// Every listener
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_serves_tls_to_clients_that_trust_the_ca() {
    let ca = Ca::new("test CA");
    let files = Files::new(&ca.server(), None);
    let p = start(&files);
    // A client that connects and never says a word holds up no one's
    // handshake (each has its own; the clients here give up after 5 s).
    let _silent = TcpStream::connect(p.addr).expect("connect");

    // gRPC data plane: Authorize with the CA; the system's roots do not know it.
    let r = authorize(p.addr, grpc_tls(Some(&ca), None)).await.unwrap_or_else(|e| panic!("{e}\n{}", p.log()));
    assert!(r.allowed, "{r:?}");
    let err = authorize(p.addr, grpc_tls(None, None)).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // Plaintext h2c to a TLS port is no call at all.
    let plain = async {
        let ch = Endpoint::from_shared(format!("http://{}", p.addr)).unwrap().connect().await?;
        let req = support::req(Some(DEMO_KEY), "petstore/prod", "/pets/GET", None);
        pb::authorizer_client::AuthorizerClient::new(ch).authorize(req).await.map_err(Into::into).map(|_| ())
    };
    let plain: Result<(), Box<dyn std::error::Error>> = plain.await;
    assert!(plain.is_err(), "plaintext must not be served on a TLS listener");

    // Admin listener.
    assert_eq!(list_keys(p.admin_addr(), grpc_tls(Some(&ca), None)).await, Ok(1), "{}", p.log());
    let err = list_keys(p.admin_addr(), grpc_tls(None, None)).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // HTTP/JSON listener (HTTP/1.1 by ALPN), and what it says without the CA.
    let other = Ca::new("another CA");
    let http1: &[&[u8]] = &[b"http/1.1"];
    let r = https_get(p.http_addr(), "/healthz", &[], rustls_client(&ca, None, http1)).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = https_get(p.http_addr(), "/v1/keys", &[("authorization", &auth)], rustls_client(&ca, None, http1));
    assert_eq!(r.map(|r| r.status), Ok(200));
    let err = https_get(p.http_addr(), "/healthz", &[], rustls_client(&other, None, http1)).unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // Metrics listener: the TLS counters are there from the start.
    let r = https_get(p.metrics_addr(), "/metrics", &[], rustls_client(&ca, None, http1)).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.text().contains("tollgate_tls_reload_errors_total 0"), "{}", r.text());
    // When the certificate expires (rcgen's default: 4096-01-01).
    assert!(r.text().contains("tollgate_tls_cert_not_after_seconds 67090118400"), "{}", r.text());
    let err = https_get(p.metrics_addr(), "/metrics", &[], rustls_client(&other, None, http1)).unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // gRPC listeners speak h2 only: a client offering only HTTP/1.1 is refused.
    let err = served_cert(p.addr, rustls_client(&ca, None, http1)).unwrap_err();
    assert!(err.contains("NoApplicationProtocol") || err.contains("no_application_protocol"), "{err}");
}

// ---------------------------------------------------------------------------
// mTLS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_clients_without_a_certificate_from_the_client_ca() {
    let ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    let rogue = Ca::new("rogue CA");
    let files = Files::new(&ca.server(), Some(&clients));
    let p = start(&files);
    let good = clients.issue(&["client.test"]);
    let forged = rogue.issue(&["client.test"]);

    // Data plane. (With TLS 1.3 the client learns of the refusal at its
    // first call, often only as a closed connection.)
    assert!(authorize(p.addr, grpc_tls(Some(&ca), None)).await.is_err(), "no client certificate");
    assert!(authorize(p.addr, grpc_tls(Some(&ca), Some(&forged))).await.is_err(), "a rogue CA's certificate");
    let r = authorize(p.addr, grpc_tls(Some(&ca), Some(&good))).await.unwrap_or_else(|e| panic!("{e}\n{}", p.log()));
    assert!(r.allowed, "{r:?}");

    // Admin.
    assert!(list_keys(p.admin_addr(), grpc_tls(Some(&ca), None)).await.is_err());
    assert_eq!(list_keys(p.admin_addr(), grpc_tls(Some(&ca), Some(&good))).await, Ok(1));

    // HTTP/JSON and metrics.
    let http1: &[&[u8]] = &[b"http/1.1"];
    for addr in [p.http_addr(), p.metrics_addr()] {
        let path = if addr == p.http_addr() { "/healthz" } else { "/metrics" };
        assert!(https_get(addr, path, &[], rustls_client(&ca, None, http1)).is_err(), "{path} without a certificate");
        assert!(https_get(addr, path, &[], rustls_client(&ca, Some(&forged), http1)).is_err(), "{path}, rogue CA");
        let r = https_get(addr, path, &[], rustls_client(&ca, Some(&good), http1)).unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert!(counter(&p, rustls_client(&ca, Some(&good), http1), "tollgate_tls_handshake_failures_total") >= 4.0);
}

// ---------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------

#[test]
fn a_certificate_swapped_on_disk_is_served_without_a_restart() {
    let ca = Ca::new("test CA");
    let first = ca.server();
    let files = Files::new(&first, None);
    let p = start(&files);
    let trust = rustls_client(&ca, None, &[b"h2"]);
    assert_eq!(served_cert(p.addr, trust.clone()), Ok(first.der()));

    let second = ca.issue_with(&["127.0.0.1", "rotated.test"], |p| p.not_after = rcgen::date_time_ymd(2040, 1, 1));
    files.put_server(&second);
    let swapped = eventually(20, || served_cert(p.addr, trust.clone()) == Ok(second.der()));
    assert!(swapped, "the new certificate was never served; log:\n{}", p.log());
    // Every listener serves it, and calls work.
    for addr in [p.admin_addr(), p.http_addr(), p.metrics_addr()] {
        assert_eq!(served_cert(addr, rustls_client(&ca, None, &[b"h2"])), Ok(second.der()), "{addr}");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(authorize(p.addr, grpc_tls(Some(&ca), None))).unwrap();
    assert!(r.allowed, "{r:?}");
    assert!(p.log().contains("TLS certificate reloaded"), "{}", p.log());
    let http1 = rustls_client(&ca, None, &[b"http/1.1"]);
    assert!(counter(&p, http1.clone(), "tollgate_tls_reloads_total") >= 1.0);
    // The expiry gauge follows the certificate served (2040-01-01T00:00:00Z).
    assert_eq!(counter(&p, http1, "tollgate_tls_cert_not_after_seconds"), 2_208_988_800.0);
    assert!(p.log().contains("not_after=2040-01-01T00:00:00Z"), "{}", p.log());
}

#[test]
fn a_broken_file_on_disk_keeps_the_old_certificate() {
    let ca = Ca::new("test CA");
    let first = ca.server();
    let files = Files::new(&first, None);
    let p = start(&files);
    let http1 = rustls_client(&ca, None, &[b"http/1.1"]);
    assert_eq!(counter(&p, http1.clone(), "tollgate_tls_reload_errors_total"), 0.0);

    files.write("tls.crt", "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n");
    let noticed = eventually(20, || counter(&p, http1.clone(), "tollgate_tls_reload_errors_total") >= 1.0);
    assert!(noticed, "the broken file was never reported; log:\n{}", p.log());
    assert!(p.log().contains("TLS reload failed; still serving the previous certificate"), "{}", p.log());
    assert!(p.log().contains("--tls-cert"), "the error names the flag: {}", p.log());
    // The old certificate is still served, and calls work.
    assert_eq!(served_cert(p.addr, rustls_client(&ca, None, &[b"h2"])), Ok(first.der()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(authorize(p.addr, grpc_tls(Some(&ca), None))).unwrap();
    assert!(r.allowed, "{r:?}");

    // A good file afterwards is picked up: the watcher goes on.
    let next = ca.server();
    files.put_server(&next);
    let swapped = eventually(20, || served_cert(p.addr, rustls_client(&ca, None, &[b"h2"])) == Ok(next.der()));
    assert!(swapped, "the good certificate after a broken one was never served; log:\n{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_ca_is_trusted_without_a_restart() {
    let ca = Ca::new("server CA");
    let old_clients = Ca::new("old client CA");
    let new_clients = Ca::new("new client CA");
    let files = Files::new(&ca.server(), Some(&old_clients));
    let p = start(&files);
    let old_id = old_clients.issue(&["client.test"]);
    let new_id = new_clients.issue(&["client.test"]);
    assert!(authorize(p.addr, grpc_tls(Some(&ca), Some(&old_id))).await.is_ok());
    assert!(authorize(p.addr, grpc_tls(Some(&ca), Some(&new_id))).await.is_err());

    files.write("client-ca.crt", &new_clients.pem());
    let deadline = Instant::now() + Duration::from_secs(20);
    while authorize(p.addr, grpc_tls(Some(&ca), Some(&new_id))).await.is_err() {
        assert!(Instant::now() < deadline, "the new client CA was never trusted; log:\n{}", p.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(authorize(p.addr, grpc_tls(Some(&ca), Some(&old_id))).await.is_err(), "the old client CA is gone");
}

// ---------------------------------------------------------------------------
// Start-up errors
// ---------------------------------------------------------------------------

/// `tollgate serve ARGS` that must fail at start: its stderr.
fn serve_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .args(args)
        .env("TOLLGATE_LISTEN", "127.0.0.1:0")
        .env("TOLLGATE_ADMIN_LISTEN", "off")
        .output()
        .expect("run tollgate");
    assert!(!out.status.success(), "serve {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_tls_files_stop_the_start_with_the_flag_named() {
    let ca = Ca::new("test CA");
    let files = Files::new(&ca.server(), None);
    let (cert, key) = (files.arg("tls.crt"), files.arg("tls.key"));
    let missing = files.arg("missing.pem");

    let err = serve_fails(&["--tls-cert", &cert]);
    assert!(err.contains("--tls-key"), "{err}");
    let err = serve_fails(&["--tls-client-ca", &cert]);
    assert!(err.contains("--tls-cert"), "{err}");
    let err = serve_fails(&["--tls-cert", &missing, "--tls-key", &key]);
    assert!(err.contains("--tls-cert") && err.contains("missing.pem"), "{err}");
    let err = serve_fails(&["--tls-cert", &cert, "--tls-key", &cert]);
    assert!(err.contains("--tls-key") && err.contains("no private key"), "{err}");
    let other = ca.server();
    files.write("other.key", &other.key);
    let err = serve_fails(&["--tls-cert", &cert, "--tls-key", &files.arg("other.key")]);
    assert!(err.contains("is not the private key of the certificate in --tls-cert"), "{err}");
    let err = serve_fails(&["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &key]);
    assert!(err.contains("--tls-client-ca") && err.contains("no certificate"), "{err}");
}

// ---------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------

/// Runs the `tollgate` CLI with `args`: (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(args).env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN);
    for v in
        ["TOLLGATE_SERVER", "TOLLGATE_ADMIN_SERVER", "TOLLGATE_CA_CERT", "TOLLGATE_CLIENT_CERT", "TOLLGATE_CLIENT_KEY"]
    {
        cmd.env_remove(v);
    }
    let out = cmd.output().expect("run tollgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_speaks_https_with_ca_cert() {
    let ca = Ca::new("test CA");
    let files = Files::new(&ca.server(), None);
    files.write("ca.crt", &ca.pem());
    let p = start(&files);
    let ca_file = files.arg("ca.crt");
    let server = format!("https://{}", p.addr);
    let admin = format!("https://{}", p.admin_addr());
    let demo = ["authorize", "--key", DEMO_KEY, "--stage", "petstore/prod", "--method", "/pets/GET", "--json"];

    let (code, out, err) = cli(&[&demo[..], &["--server", &server, "--ca-cert", &ca_file]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"allowed\":true"), "{out}");
    let (code, out, err) = cli(&["keys", "list", "--json", "--server", &admin, "--ca-cert", &ca_file]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"keys\""), "{out}");
    let bench = ["bench", "--key", DEMO_KEY, "--duration", "200ms", "--rounds", "1", "--concurrency", "2", "--json"];
    let (code, out, err) =
        cli(&[&bench[..], &["--connections", "1", "--server", &server, "--ca-cert", &ca_file]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"rounds\""), "{out}");

    // Without the CA: a clear failure, with the option that would help.
    let (code, _, err) = cli(&[&demo[..], &["--server", &server]].concat());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid peer certificate") && err.contains("hint:") && err.contains("--ca-cert"), "{err}");
    let (code, _, err) = cli(&["keys", "list", "--server", &admin]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--ca-cert"), "{err}");
    // TLS options with an http:// server are a mistake, not plaintext.
    let (code, _, err) =
        cli(&[&demo[..], &["--server", &format!("http://{}", p.addr), "--ca-cert", &ca_file]].concat());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("are for https:// servers"), "{err}");
}

#[test]
fn the_cli_presents_a_client_certificate() {
    let ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    let files = Files::new(&ca.server(), Some(&clients));
    let id = clients.issue(&["operator"]);
    files.write("ca.crt", &ca.pem());
    files.write("client.crt", &id.cert);
    files.write("client.key", &id.key);
    let p = start(&files);
    let admin = format!("https://{}", p.admin_addr());
    let tls = ["--ca-cert", &files.arg("ca.crt")];
    let id_args = ["--client-cert", &files.arg("client.crt"), "--client-key", &files.arg("client.key")];

    let (code, out, err) = cli(&[&["keys", "list", "--json", "--server", &admin][..], &tls, &id_args].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"keys\""), "{out}");
    let (code, _, err) = cli(&[&["keys", "list", "--server", &admin][..], &tls].concat());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--client-cert"), "the hint names the option: {err}");
    let server = format!("https://{}", p.addr);
    let (code, out, err) = cli(&[
        &["authorize", "--key", DEMO_KEY, "--stage", "petstore/prod", "--method", "/pets/GET", "--server", &server][..],
        &tls,
        &id_args,
    ]
    .concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ALLOWED"), "{out}");
}

// ---------------------------------------------------------------------------
// Envoy over mTLS
// ---------------------------------------------------------------------------

/// `deploy/envoy/ext_authz_mtls.yaml` with its ports and files replaced
/// (each `from` must occur exactly once, so a change of the shipped file
/// fails loudly here).
fn envoy_mtls_config(tollgate: SocketAddr, upstream: SocketAddr, files: &Files, id: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/envoy/ext_authz_mtls.yaml");
    let mut text = std::fs::read_to_string(&path).expect("read the shipped Envoy config");
    let tollgate_port = format!("port_value: {}", tollgate.port());
    let upstream_port = format!("port_value: {}", upstream.port());
    let (cert, key, ca) = (files.arg(&format!("{id}.crt")), files.arg(&format!("{id}.key")), files.arg("ca.crt"));
    let all: Vec<(&str, &str)> = vec![
        ("port_value: 9901", "port_value: 0"),
        ("port_value: 10000", "port_value: 0"),
        ("port_value: 50051", &tollgate_port),
        ("port_value: 8080", &upstream_port),
        (" timeout: 0.5s ", " timeout: 2s "),
        ("/etc/envoy/tls/client.crt", &cert),
        ("/etc/envoy/tls/client.key", &key),
        ("/etc/envoy/tls/ca.crt", &ca),
    ];
    for (from, to) in all {
        assert_eq!(text.matches(from).count(), 1, "{from:?} should occur once in {}", path.display());
        text = text.replace(from, to);
    }
    text
}

#[test]
fn envoy_calls_tollgate_over_mtls() {
    let ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    let files = Files::new(&ca.server(), Some(&clients));
    let envoy_id = clients.issue(&["envoy"]);
    files.write("ca.crt", &ca.pem());
    files.write("envoy.crt", &envoy_id.cert);
    files.write("envoy.key", &envoy_id.key);
    let p = start(&files);
    let upstream = Upstream::start();

    // The shipped config, with real files, validates.
    let config = envoy_mtls_config(p.addr, upstream.addr, &files, "envoy");
    let (_dir, path) = support::write_temp("envoy.yaml", &config);
    let out = Command::new(support::envoy::envoy_binary())
        .args(["--mode", "validate", "-l", "error", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy --mode validate");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    let envoy = EnvoyProcess::start(&config);
    let logs = || format!("--- tollgate ---\n{}\n{}", p.log(), envoy.log());
    let r = support::http::get(envoy.addr, "/pets", &[("x-api-key", DEMO_KEY)]);
    assert_eq!(r.status, 200, "{r:?}\n{}", logs());
    let r = support::http::get(envoy.addr, "/pets", &[]);
    assert_eq!(r.status, 403, "no key: tollgate's answer, over mTLS: {r:?}\n{}", logs());
    assert!(envoy.stat("cluster.tollgate.ssl.handshake") >= 1, "{}", logs());

    // An Envoy whose client certificate another CA signed: tollgate refuses
    // the connection, and Envoy fails closed (503).
    let rogue = Ca::new("rogue CA").issue(&["envoy"]);
    files.write("rogue.crt", &rogue.cert);
    files.write("rogue.key", &rogue.key);
    let refused = EnvoyProcess::start(&envoy_mtls_config(p.addr, upstream.addr, &files, "rogue"));
    let r = support::http::get(refused.addr, "/pets", &[("x-api-key", DEMO_KEY)]);
    assert_eq!(r.status, 503, "{r:?}\n{}", refused.log());
}
