//! The listeners as a client sees them: which services each port serves and
//! describes (Admin apart from the data plane by default, shared, or off),
//! and the limits every connection gets (HTTP/2 SETTINGS, a deadline per
//! call, keepalive, message size), on real `tollgate serve` processes.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::redis::RedisServer;
use support::{quickstart, req, TollgateProcess, ADMIN_TOKEN, DEMO_KEY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate::api::pb;
use tonic::Code;

const ADMIN: &str = "tollgate.v1.Admin";
const AUTHORIZER: &str = "tollgate.v1.Authorizer";
const HEALTH: &str = "grpc.health.v1.Health";
/// The id of the quickstart's demo key.
const DEMO_KEY_ID: &str = "6e9fded41e";

fn start(args: &[&str]) -> TollgateProcess {
    let config = quickstart();
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    TollgateProcess::start_with_env(&all, &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)])
}

/// What an Admin call at `addr` answers: Ok, or the status code.
async fn admin_answer(addr: SocketAddr) -> Result<(), Code> {
    let mut a = support::admin_client(addr, Some(ADMIN_TOKEN)).await;
    a.list_api_keys(pb::ListApiKeysRequest::default()).await.map(drop).map_err(|s| s.code())
}

/// What an Authorize call for the demo key at `addr` answers.
async fn authorize_answer(addr: SocketAddr) -> Result<bool, Code> {
    let mut c = support::authorizer_client(addr).await;
    let r = c.authorize(req(Some(DEMO_KEY), "petstore/prod", "/pets/GET", None)).await;
    r.map(|r| r.into_inner().allowed).map_err(|s| s.code())
}

/// Whether reflection at `addr` describes `symbol` (FileContainingSymbol).
async fn describes(addr: SocketAddr, symbol: &str) -> bool {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
    };
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    // tonic-reflection ends the stream with NOT_FOUND for an unknown symbol.
    match stream.message().await {
        Ok(Some(msg)) => matches!(msg.message_response, Some(MessageResponse::FileDescriptorResponse(_))),
        Err(s) if s.code() == Code::NotFound => false,
        other => panic!("unexpected reflection answer for {symbol}: {other:?}"),
    }
}

#[tokio::test]
async fn admin_is_on_its_own_listener_and_never_on_the_data_plane() {
    let p = start(&[]);
    let admin = p.admin_addr();
    assert_ne!(admin, p.addr);

    assert_eq!(admin_answer(p.addr).await, Err(Code::Unimplemented), "no Admin on the data plane");
    assert_eq!(admin_answer(admin).await, Ok(()));
    assert_eq!(authorize_answer(p.addr).await, Ok(true));
    assert_eq!(authorize_answer(admin).await, Err(Code::Unimplemented), "no data plane on the Admin listener");

    let data_plane = support::reflection_services(p.addr).await.unwrap();
    assert!(data_plane.iter().any(|s| s == AUTHORIZER) && data_plane.iter().any(|s| s == HEALTH), "{data_plane:?}");
    assert!(!data_plane.iter().any(|s| s == ADMIN), "{data_plane:?}");
    assert!(!describes(p.addr, ADMIN).await, "the data plane does not describe Admin either");
    assert!(describes(p.addr, AUTHORIZER).await);

    let admin_side = support::reflection_services(admin).await.unwrap();
    assert!(admin_side.iter().any(|s| s == ADMIN) && admin_side.iter().any(|s| s == HEALTH), "{admin_side:?}");
    assert!(!admin_side.iter().any(|s| s == AUTHORIZER), "{admin_side:?}");
    assert!(describes(admin, ADMIN).await && !describes(admin, AUTHORIZER).await);
}

#[tokio::test]
async fn admin_listen_equal_to_listen_serves_both_on_one_port() {
    // A fixed port is needed to name the same address twice; take a free one.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let p = start(&["--listen", &addr, "--admin-listen", &addr]);
    assert_eq!(p.admin_addr(), p.addr, "log: {}", p.log());
    assert_eq!(admin_answer(p.addr).await, Ok(()));
    assert_eq!(authorize_answer(p.addr).await, Ok(true));
    let names = support::reflection_services(p.addr).await.unwrap();
    assert!(names.iter().any(|s| s == ADMIN) && names.iter().any(|s| s == AUTHORIZER), "{names:?}");
}

#[tokio::test]
async fn admin_listen_off_serves_no_admin() {
    let p = start(&["--admin-listen", "off"]);
    assert_eq!(p.admin_addr, None, "no admin_addr in the log: {}", p.log());
    assert!(p.log().contains("Admin service off"), "{}", p.log());
    assert_eq!(admin_answer(p.addr).await, Err(Code::Unimplemented));
    assert_eq!(authorize_answer(p.addr).await, Ok(true));
}

#[tokio::test]
async fn reflection_false_turns_it_off_on_both_listeners() {
    let p = start(&["--reflection", "false"]);
    for addr in [p.addr, p.admin_addr()] {
        let r = support::reflection_services(addr).await;
        assert_eq!(r.map_err(|s| s.code()), Err(Code::Unimplemented), "{addr}");
    }
    assert_eq!(admin_answer(p.admin_addr()).await, Ok(()));
}

#[test]
fn a_busy_admin_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", &addr])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("cannot listen on --admin-listen {addr}")) && err.contains("`off`"), "{err}");
}

// ----- HTTP/2 limits, read off the wire -----

/// HTTP/2 frame types and settings (RFC 9113 §6, §6.5.2).
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
const MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// Guard against a hung server: generous, only there so a broken test fails
/// instead of hanging (never what a test measures).
const GUARD: Duration = Duration::from_secs(20);

/// A bare HTTP/2 client connection: enough to read what the server sends.
struct RawH2(TcpStream);

impl RawH2 {
    /// Connects and sends the client preface and an empty SETTINGS frame.
    async fn connect(addr: SocketAddr) -> Self {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        tcp.write_all(&frame_header(0, SETTINGS, 0)).await.unwrap();
        RawH2(tcp)
    }

    /// The next frame (type, flags, payload); `None` once the server closed
    /// the connection.
    async fn frame(&mut self) -> Option<(u8, u8, Vec<u8>)> {
        let mut head = [0u8; 9];
        tokio::time::timeout(GUARD, self.0.read_exact(&mut head)).await.expect("a frame within the guard").ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        self.0.read_exact(&mut payload).await.ok()?;
        Some((head[3], head[4], payload))
    }

    /// The server's SETTINGS (its first frame), acknowledged.
    async fn settings(&mut self) -> HashMap<u16, u32> {
        let (kind, flags, payload) = self.frame().await.expect("the server's SETTINGS");
        assert_eq!((kind, flags & ACK), (SETTINGS, 0), "the server starts with its SETTINGS");
        self.0.write_all(&frame_header(0, SETTINGS, ACK)).await.unwrap();
        payload
            .chunks_exact(6)
            .map(|c| (u16::from_be_bytes([c[0], c[1]]), u32::from_be_bytes([c[2], c[3], c[4], c[5]])))
            .collect()
    }
}

fn frame_header(len: usize, kind: u8, flags: u8) -> [u8; 9] {
    let l = (len as u32).to_be_bytes();
    [l[1], l[2], l[3], kind, flags, 0, 0, 0, 0]
}

#[tokio::test]
async fn both_listeners_advertise_the_stream_and_header_limits() {
    let p = start(&[]);
    for addr in [p.addr, p.admin_addr()] {
        let s = RawH2::connect(addr).await.settings().await;
        assert_eq!(s.get(&MAX_CONCURRENT_STREAMS), Some(&1024), "{addr}: {s:?}");
        assert_eq!(s.get(&MAX_HEADER_LIST_SIZE), Some(&65536), "{addr}: {s:?}");
    }
    let p = start(&["--max-concurrent-streams", "7", "--max-header-list-bytes", "20000"]);
    for addr in [p.addr, p.admin_addr()] {
        let s = RawH2::connect(addr).await.settings().await;
        assert_eq!(s.get(&MAX_CONCURRENT_STREAMS), Some(&7), "{addr}: {s:?}");
        assert_eq!(s.get(&MAX_HEADER_LIST_SIZE), Some(&20000), "{addr}: {s:?}");
    }
}

#[tokio::test]
async fn a_peer_that_does_not_answer_pings_is_dropped() {
    let p = start(&["--keepalive-interval-secs", "1", "--keepalive-timeout-secs", "1"]);
    for addr in [p.addr, p.admin_addr()] {
        let mut h2 = RawH2::connect(addr).await;
        h2.settings().await;
        // Read (and never answer) until the server closes the connection.
        let mut pinged = false;
        while let Some((kind, flags, _)) = h2.frame().await {
            pinged |= kind == PING && flags & ACK == 0;
        }
        assert!(pinged, "{addr}: the server PINGed the idle connection before closing it");
    }
}

/// `/proc/net/tcp`'s timer column for the server's side of the connection
/// from `client` to `server`: 2 is the keepalive timer.
#[cfg(target_os = "linux")]
fn server_socket_timer(server: SocketAddr, client: SocketAddr) -> Option<u8> {
    let hex = |a: SocketAddr| {
        let std::net::IpAddr::V4(ip) = a.ip() else { panic!("IPv4 expected: {a}") };
        format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), a.port())
    };
    let (local, remote) = (hex(server), hex(client));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str()) && f.get(2) == Some(&remote.as_str()))
            .then(|| u8::from_str_radix(f[5].split(':').next().unwrap(), 16).unwrap())
    })
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn accepted_connections_have_tcp_keepalive() {
    let p = start(&[]);
    for addr in [p.addr, p.admin_addr()] {
        let mut h2 = RawH2::connect(addr).await;
        h2.settings().await;
        let client = h2.0.local_addr().unwrap();
        let deadline = Instant::now() + GUARD;
        loop {
            let timer = server_socket_timer(addr, client);
            if timer == Some(2) {
                break;
            }
            assert!(Instant::now() < deadline, "{addr}: the server's socket has no keepalive timer ({timer:?})");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn data_plane_messages_are_capped() {
    let p = start(&["--max-message-bytes", "1024"]);
    let mut c = p.authorizer().await;
    let big = "a".repeat(2000);
    let e = c.authorize(req(Some(&big), "petstore/prod", "/pets/GET", None)).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "tonic's code for a message over the limit: {e:?}");
    assert!(e.message().contains("message length too large"), "{e:?}");
    assert_eq!(authorize_answer(p.addr).await, Ok(true), "a normal request still passes");
    // The Admin listener keeps its own (16 MiB) cap.
    let mut a = p.admin().await;
    let r =
        a.create_api_key(pb::CreateApiKeyRequest { name: "x".into(), description: big, ..Default::default() }).await;
    assert!(r.is_ok(), "{r:?}");
}

// ----- deadlines -----

/// Two servers on one Redis, each with one short deadline: A's data plane,
/// B's Admin listener. With Redis holding scripts, the call under the short
/// deadline is answered CANCELLED "Timeout expired" (the store's own
/// deadline is far longer), and both serve again once Redis does.
#[tokio::test]
async fn calls_past_the_request_timeout_are_cancelled_and_the_server_keeps_serving() {
    let redis = RedisServer::start();
    let url = redis.url();
    let common = ["--redis-url", url.as_str(), "--store-timeout-ms", "30000"];
    let a = start(&[&common[..], &["--request-timeout-ms", "300", "--admin-request-timeout-ms", "60000"]].concat());
    let b = start(&[&common[..], &["--request-timeout-ms", "60000", "--admin-request-timeout-ms", "300"]].concat());
    a.wait_serving().await;
    b.wait_serving().await;
    assert_eq!(authorize_answer(a.addr).await, Ok(true));

    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Scripts and transactions wait; reads (health probes) go on.
    let () = redis::cmd("CLIENT").arg("PAUSE").arg(20_000).arg("WRITE").query_async(&mut conn).await.unwrap();

    let mut c = a.authorizer().await;
    let e = c.authorize(req(Some(DEMO_KEY), "petstore/prod", "/pets/GET", None)).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::Cancelled, "Timeout expired"), "data plane: {e:?}");
    // UpdateUsage runs a script through the limit store (deadline 30 s here).
    let mut admin = b.admin().await;
    let grant = pb::UpdateUsageRequest { usage_plan_id: "basic".into(), key_id: DEMO_KEY_ID.into(), remaining: 5 };
    let e = admin.update_usage(grant).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::Cancelled, "Timeout expired"), "admin: {e:?}");

    let () = redis::cmd("CLIENT").arg("UNPAUSE").query_async(&mut conn).await.unwrap();
    assert_eq!(authorize_answer(a.addr).await, Ok(true), "A serves again");
    assert_eq!(admin_answer(b.admin_addr()).await, Ok(()), "B serves again");
}
