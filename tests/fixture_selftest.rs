//! Self-tests for the Redis fixtures in `tests/support/redis.rs`.

mod support {
    pub mod redis;
}

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use redis::AsyncCommands;
use support::redis::{RedisCluster, RedisSentinel, RedisServer, Tls};

/// Generous bound for single Redis operations, so a broken fixture fails the
/// test instead of hanging it.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    match tokio::time::timeout(OP_TIMEOUT, client.get_multiplexed_async_connection()).await {
        Ok(result) => result,
        Err(_) => panic!("connecting to {url} timed out"),
    }
}

#[tokio::test]
async fn server_set_get_stop_restart() {
    let mut server = RedisServer::start();
    let port = server.port();
    assert_ne!(port, 6379, "must never use the shared Redis port");
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}/"));
    assert_eq!(server.addr().port(), port);

    let mut conn = connect(&server.url()).await.unwrap_or_else(|err| panic!("connect failed: {err}\n{}", server.log()));
    let () = conn.set("fixture:key", "v1").await.expect("SET on a running server");
    let got: Option<String> = conn.get("fixture:key").await.expect("GET");
    assert_eq!(got.as_deref(), Some("v1"));

    server.stop();
    assert!(!server.is_running());
    assert!(connect(&server.url()).await.is_err(), "connecting to a stopped server must fail");
    let old: redis::RedisResult<Option<String>> = tokio::time::timeout(OP_TIMEOUT, conn.get("fixture:key"))
        .await
        .expect("GET on a dead connection must fail, not hang");
    assert!(old.is_err(), "the old connection must be broken: {old:?}");

    server.restart();
    assert!(server.is_running());
    assert_eq!(server.port(), port, "restart must keep the port");
    let mut conn = connect(&server.url())
        .await
        .unwrap_or_else(|err| panic!("connect after restart failed: {err}\n{}", server.log()));
    let got: Option<String> = conn.get("fixture:key").await.expect("GET after restart");
    assert_eq!(got, None, "data is not persisted across restarts");
    let () = conn.set("fixture:key", "v2").await.expect("SET after restart");
    let got: Option<String> = conn.get("fixture:key").await.expect("GET after restart");
    assert_eq!(got.as_deref(), Some("v2"));

    assert!(server.log().contains("Ready to accept connections"), "log should show the startup:\n{}", server.log());
}

#[test]
fn server_works_from_plain_tests_and_restarts_twice() {
    let mut server = RedisServer::start();
    let client = redis::Client::open(server.url()).expect("valid URL");
    for round in 0..3 {
        let mut conn = client.get_connection().unwrap_or_else(|err| panic!("round {round}: {err}\n{}", server.log()));
        let pong: String = redis::cmd("PING").query(&mut conn).expect("PING");
        assert_eq!(pong, "PONG");
        server.restart();
    }
}

#[test]
fn servers_started_at_once_get_different_ports() {
    let servers: Vec<RedisServer> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6).map(|_| scope.spawn(RedisServer::start)).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    let ports: HashSet<u16> = servers.iter().map(RedisServer::port).collect();
    assert_eq!(ports.len(), servers.len(), "ports: {ports:?}");
    assert!(!ports.contains(&6379));
    for server in &servers {
        let mut conn = redis::Client::open(server.url())
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|err| panic!("{err}\n{}", server.log()));
        let pong: String = redis::cmd("PING").query(&mut conn).expect("PING");
        assert_eq!(pong, "PONG");
    }
}

#[tokio::test]
async fn cluster_comes_up_and_serves_requests() {
    let cluster = RedisCluster::start(3);
    assert_eq!(cluster.nodes().len(), 3);
    assert_eq!(cluster.urls().len(), 3);
    assert!(!cluster.ports().contains(&6379));

    for node in cluster.nodes() {
        let mut conn = connect(&node.url()).await.unwrap_or_else(|err| panic!("{err}\n{}", node.log()));
        let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut conn).await.expect("CLUSTER INFO");
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    }

    let client = redis::cluster::ClusterClient::new(cluster.urls()).expect("cluster client");
    let mut conn = tokio::time::timeout(OP_TIMEOUT, client.get_async_connection())
        .await
        .expect("cluster connect timed out")
        .unwrap_or_else(|err| panic!("cluster connect failed: {err}\n{}", cluster.log()));
    // Keys spread over all masters' slot ranges.
    for i in 0..30 {
        let key = format!("fixture:cluster:{i}");
        let () = conn.set(&key, i).await.expect("cluster SET");
        let got: i64 = conn.get(&key).await.expect("cluster GET");
        assert_eq!(got, i);
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Runs `redis-cli -p PORT ARGS...` and returns (success, stdout + stderr).
/// An independent client for the TLS checks (the `redis` crate is built
/// without TLS).
fn redis_cli(port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // redis-cli exits 0 on some errors; an error reply or a refused
    // connection shows in its output.
    let failed = !out.status.success() || text.contains("ERR") || text.contains("Could not connect");
    (!failed, text.trim().to_string())
}

/// `redis-cli` options trusting the fixture's CA (no client certificate).
fn with_ca<'a>(ca: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--tls", "--cacert", ca];
    all.extend_from_slice(args);
    all
}

fn path_str(path: &Path) -> String {
    path.to_str().expect("temporary paths are UTF-8").to_string()
}

async fn cluster_conn(cluster: &RedisCluster) -> redis::cluster_async::ClusterConnection {
    let client = redis::cluster::ClusterClient::new(cluster.urls()).expect("cluster client");
    tokio::time::timeout(OP_TIMEOUT, client.get_async_connection())
        .await
        .expect("cluster connect timed out")
        .unwrap_or_else(|err| panic!("cluster connect failed: {err}\n{}", cluster.log()))
}

fn assert_send_sync<T: Send + Sync>() {}

// ---------------------------------------------------------------------------
// Cluster with replicas, failover, reshard
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cluster_with_replicas_serves_every_slot_and_fails_over() {
    assert_send_sync::<RedisCluster>();
    let cluster = RedisCluster::start_with_replicas(3, 1);
    assert_eq!(cluster.nodes().len(), 6);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let ephemeral: Vec<u16> = ephemeral.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    for port in cluster.ports() {
        assert!(port < 55536 && port != 6379, "port {port}");
        if let [lo, hi] = ephemeral[..] {
            for p in [port, port + 10000] {
                assert!(!(lo..=hi).contains(&p), "{p} is in the ephemeral range {lo}-{hi}");
            }
        }
    }

    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    let mut covered = 0;
    for &primary in &primaries {
        let replicas = cluster.replicas_of(primary);
        assert_eq!(replicas.len(), 1, "replicas of {primary}: {replicas:?}");
        assert!(!primaries.contains(&replicas[0]));
        covered += cluster.slots_of(primary).len();
    }
    assert_eq!(covered, 16384, "the primaries serve every slot");

    // Every node agrees, and a cluster client can use every primary.
    let mut conn = cluster_conn(&cluster).await;
    let mut keys_per_primary = std::collections::HashMap::new();
    for i in 0..60 {
        let key = format!("fixture:cluster:{i}");
        let () = conn.set(&key, i).await.expect("cluster SET");
        *keys_per_primary.entry(cluster.primary_for_key(&key)).or_insert(0) += 1;
    }
    assert_eq!(keys_per_primary.len(), 3, "keys spread over all primaries: {keys_per_primary:?}");
    let key = "fixture:cluster:7";
    let slot = cluster.slot_for_key(key);
    let old = cluster.primary_for_key(key);
    assert_eq!(cluster.primary_for_slot(slot), old);
    assert!(cluster.slots_of(old).contains(&slot));
    let replica = cluster.replicas_of(old)[0];
    // Write the key again on the primary itself and wait until its replica
    // has it (WAIT counts this connection's writes), before it dies.
    let mut direct = connect(&cluster.node(old).url()).await.expect("connect to the primary");
    let () = direct.set(key, 7).await.expect("SET on the primary");
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(5000).query_async(&mut direct).await.expect("WAIT");
    assert_eq!(acked, 1, "the replica acknowledged the writes");

    cluster.kill_node(old);
    assert!(!cluster.node(old).is_running());
    let new = cluster.wait_for_failover(old);
    assert_eq!(new, replica, "its replica took over");
    assert_eq!(cluster.primary_for_key(key), new);
    let mut conn = cluster_conn(&cluster).await;
    let got: i64 = conn.get(key).await.expect("GET after the failover");
    assert_eq!(got, 7);

    cluster.restart_node(old);
    assert!(cluster.node(old).is_running());
    assert_eq!(cluster.replicas_of(new), vec![old], "the old primary rejoined as a replica");
    assert!(cluster.slots_of(old).is_empty());
}

#[tokio::test]
async fn cluster_reshard_moves_slots_and_their_keys() {
    let cluster = RedisCluster::start(3);
    let mut conn = cluster_conn(&cluster).await;
    let keys: Vec<String> = (0..300).map(|i| format!("fixture:reshard:{i}")).collect();
    for key in &keys {
        let () = conn.set(key, key).await.expect("SET");
    }
    let primaries = cluster.primaries();
    let (from, to) = (primaries[0], primaries[1]);
    let before = cluster.slots_of(from);

    let moved = cluster.reshard(from, to, 200);

    assert_eq!(moved.len(), 200);
    let after_from = cluster.slots_of(from);
    let after_to = cluster.slots_of(to);
    for slot in &moved {
        assert!(before.contains(slot) && !after_from.contains(slot) && after_to.contains(slot), "slot {slot}");
    }
    assert_eq!(after_from.len(), before.len() - 200);
    let moved_keys: Vec<&String> =
        keys.iter().filter(|k| moved.binary_search(&cluster.slot_for_key(k)).is_ok()).collect();
    assert!(!moved_keys.is_empty(), "some keys were in the moved slots");
    let mut conn = cluster_conn(&cluster).await;
    for key in &keys {
        let got: String = conn.get(key.as_str()).await.expect("GET after reshard");
        assert_eq!(&got, key);
    }
    for key in moved_keys {
        assert_eq!(cluster.primary_for_key(key), to);
    }
}

#[tokio::test]
async fn cluster_manual_failover_demotes_a_running_primary() {
    let cluster = RedisCluster::start_with_replicas(3, 1);
    let primary = cluster.primaries()[0];
    let replica = cluster.replicas_of(primary)[0];
    let demoted = cluster.failover_to(replica);
    assert_eq!(demoted, primary);
    assert!(cluster.primaries().contains(&replica));
    assert_eq!(cluster.replicas_of(replica), vec![primary]);
    // The demoted node redirects writes for its former slots.
    let mut conn = connect(&cluster.node(primary).url()).await.expect("connect to the demoted node");
    let slot_key =
        (0..).map(|i| format!("fixture:manual:{i}")).find(|k| cluster.primary_for_key(k) == replica).unwrap();
    let err = conn.set::<_, _, ()>(&slot_key, 1).await.expect_err("a replica does not take writes");
    assert_eq!(err.code(), Some("MOVED"), "{err}");
}

// ---------------------------------------------------------------------------
// Sentinel
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sentinel_fails_over_when_the_primary_is_killed() {
    assert_send_sync::<RedisSentinel>();
    let setup = RedisSentinel::start();
    assert_eq!(setup.sentinel_urls().len(), 3);
    assert!(setup.sentinel_urls().iter().all(|u| u.starts_with("redis://127.0.0.1:")));
    let old = setup.primary_port();
    assert_eq!(setup.data_ports(), vec![old, setup.replica_ports()[0]]);
    let sentinel = setup.sentinel_ports()[0];
    let (ok, reply) = redis_cli(sentinel, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", setup.master_name()]);
    assert!(ok && reply.ends_with(&old.to_string()), "{reply}");

    let mut conn = connect(&setup.url(old)).await.expect("connect to the primary");
    let () = conn.set("fixture:sentinel", "v").await.expect("SET");
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(5000).query_async(&mut conn).await.expect("WAIT");
    assert_eq!(acked, 1);

    assert_eq!(setup.kill_primary(), old);
    let new = setup.wait_for_failover(old);
    assert_ne!(new, old);
    assert_eq!(setup.primary_port(), new);
    let mut conn = connect(&setup.url(new)).await.expect("connect to the new primary");
    let got: String = conn.get("fixture:sentinel").await.expect("GET on the new primary");
    assert_eq!(got, "v");
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await.expect("ROLE");
    assert_eq!(role[0], redis::Value::BulkString(b"master".to_vec()));

    setup.restart_node(old);
    assert_eq!(setup.replica_ports(), vec![old]);
    let mut conn = connect(&setup.url(old)).await.expect("connect to the restarted node");
    let got: String = conn.get("fixture:sentinel").await.expect("GET on the new replica");
    assert_eq!(got, "v", "the restarted node synced from the new primary");
}

#[tokio::test]
async fn sentinel_demoted_primary_answers_readonly() {
    let setup = RedisSentinel::start();
    let old = setup.primary_port();
    let mut kept = connect(&setup.url(old)).await.expect("connect to the primary");
    let () = kept.set("fixture:demote", 1).await.expect("SET on the primary");

    // Behind the sentinels' back: open connections stay open.
    let (demoted, promoted) = setup.demote_primary_keeping_clients();
    assert_eq!(demoted, old);
    assert_eq!(setup.primary_port(), promoted);
    let err = kept.set::<_, _, ()>("fixture:demote", 2).await.expect_err("the demoted primary refuses writes");
    assert_eq!(err.code(), Some("READONLY"), "{err}");
    let mut conn = connect(&setup.url(promoted)).await.expect("connect to the new primary");
    let () = conn.set("fixture:demote", 3).await.expect("SET on the new primary");

    // Through the sentinels: they close the old primary's connections, and
    // a client that reconnects to it gets READONLY.
    assert_eq!(setup.demote_primary(), (promoted, old), "the old primary is the primary again");
    let mut conn = connect(&setup.url(promoted)).await.expect("reconnect to the demoted primary");
    let err = conn.set::<_, _, ()>("fixture:demote", 4).await.expect_err("the demoted primary refuses writes");
    assert_eq!(err.code(), Some("READONLY"), "{err}");
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

#[test]
fn tls_server_answers_with_the_ca_and_refuses_clients_without_it() {
    let server = RedisServer::start_tls();
    let port = server.port();
    assert_eq!(server.url(), format!("rediss://127.0.0.1:{port}/"));
    let tls = server.tls().expect("TLS files");
    let ca = path_str(&server.ca_cert_path());
    assert!(std::fs::read_to_string(&ca).unwrap().contains("BEGIN CERTIFICATE"));
    assert_eq!(tls.ca_cert_pem(), std::fs::read_to_string(&ca).unwrap());

    let (ok, reply) = redis_cli(port, &with_ca(&ca, &["PING"]));
    assert!(ok && reply == "PONG", "with the CA: {reply}");
    let (ok, reply) = redis_cli(port, &["--tls", "PING"]);
    assert!(!ok && reply.contains("certificate verify failed"), "without the CA: {reply}");
    let (ok, reply) = redis_cli(port, &["PING"]);
    assert!(!ok, "plain TCP to the TLS port: {reply}");
}

#[test]
fn mutual_tls_server_requires_the_client_certificate() {
    let server = RedisServer::start_with_tls(Tls::Mutual);
    let tls = server.tls().expect("TLS files");
    let ca = path_str(&tls.ca_cert_path());
    let (cert, key) = (path_str(&tls.client_cert_path()), path_str(&tls.client_key_path()));
    let (ok, reply) = redis_cli(server.port(), &with_ca(&ca, &["--cert", &cert, "--key", &key, "PING"]));
    assert!(ok && reply == "PONG", "with a client certificate: {reply}");
    let (ok, reply) = redis_cli(server.port(), &with_ca(&ca, &["PING"]));
    assert!(!ok, "without a client certificate: {reply}");
}

#[test]
fn tls_cluster_with_replicas_serves_over_tls_only() {
    let cluster = RedisCluster::builder().replicas_per_master(1).tls(Tls::On).start();
    assert!(cluster.urls().iter().all(|u| u.starts_with("rediss://127.0.0.1:")));
    let ca = path_str(&cluster.ca_cert_path());
    let port = cluster.primaries()[0];
    for i in 0..20 {
        let key = format!("fixture:tls:{i}");
        let (ok, reply) = redis_cli(port, &with_ca(&ca, &["-c", "SET", &key, "v"]));
        assert!(ok && reply == "OK", "SET {key}: {reply}");
    }
    // The cluster announces its TLS ports (there are no others).
    let (ok, slots) = redis_cli(port, &with_ca(&ca, &["CLUSTER", "SLOTS"]));
    assert!(ok, "{slots}");
    for primary in cluster.primaries() {
        assert!(slots.lines().any(|l| l == primary.to_string()), "{primary} in {slots}");
    }
    let (ok, reply) = redis_cli(port, &["PING"]);
    assert!(!ok, "plain TCP: {reply}");
}

#[test]
fn tls_sentinel_fails_over() {
    let setup = RedisSentinel::start_tls();
    assert!(setup.sentinel_urls().iter().all(|u| u.starts_with("rediss://127.0.0.1:")));
    let tls = setup.tls().expect("TLS files");
    let ca = path_str(&tls.ca_cert_path());
    let sentinel = setup.sentinel_ports()[0];
    let old = setup.primary_port();
    let args = ["SENTINEL", "GET-MASTER-ADDR-BY-NAME", setup.master_name()];
    let (ok, reply) = redis_cli(sentinel, &with_ca(&ca, &args));
    assert!(ok && reply.ends_with(&old.to_string()), "{reply}");

    setup.kill_primary();
    let new = setup.wait_for_failover(old);
    let (ok, reply) = redis_cli(sentinel, &with_ca(&ca, &args));
    assert!(ok && reply.ends_with(&new.to_string()), "{reply}");
}

// ---------------------------------------------------------------------------
// LOADING
// ---------------------------------------------------------------------------

#[tokio::test]
async fn server_restart_loading_answers_loading_until_finished() {
    let mut server = RedisServer::start();
    let mut conn = connect(&server.url()).await.expect("connect");
    let () = conn.set("fixture:loading-test", "kept").await.expect("SET");

    server.restart_loading();
    let mut conn = connect(&server.url()).await.expect("connect while loading");
    for _ in 0..3 {
        let err = redis::cmd("PING").query_async::<String>(&mut conn).await.expect_err("PING while loading");
        assert_eq!(err.code(), Some("LOADING"), "{err}");
    }

    server.finish_loading();
    let mut conn = connect(&server.url()).await.expect("connect after loading");
    let got: String = conn.get("fixture:loading-test").await.expect("GET after loading");
    assert_eq!(got, "kept", "the data survives a LOADING restart");
}

#[test]
fn cluster_and_sentinel_primaries_can_be_held_in_loading() {
    let cluster = RedisCluster::start(3);
    let primary = cluster.primaries()[1];
    cluster.restart_node_loading(primary);
    let (_, reply) = redis_cli(primary, &["PING"]);
    assert!(reply.starts_with("LOADING"), "{reply}");
    cluster.finish_loading(primary);
    assert_eq!(redis_cli(primary, &["PING"]).1, "PONG");

    let setup = RedisSentinel::start();
    let primary = setup.primary_port();
    setup.restart_node_loading(primary);
    let (_, reply) = redis_cli(primary, &["PING"]);
    assert!(reply.starts_with("LOADING"), "{reply}");
    setup.finish_loading(primary);
    assert_eq!(setup.primary_port(), primary, "a loading primary is alive to the sentinels");
    assert_eq!(redis_cli(primary, &["PING"]).1, "PONG");
}
