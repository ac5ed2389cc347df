//! Self-tests for the Redis fixtures in `tests/support/redis.rs`.

mod support {
    pub mod redis;
}

use std::collections::HashSet;
use std::time::Duration;

use redis::AsyncCommands;
use support::redis::{RedisCluster, RedisServer};

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
