//! Several `tollgate serve` processes on one Redis enforce one plan's limits
//! exactly as one server would.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::redis::RedisServer;
use support::{req, write_temp, TollgateProcess};

const KEY: &str = "replicakey0123456789abcdefghijklmnopqrstu";

fn catalog(limits: &str) -> String {
    format!(
        r#"
apis:
  - id: api
    stages:
      - name: live
usage_plans:
  - id: plan
    name: Plan
{limits}
    api_stages:
      - stage: api/live
api_keys:
  - name: hammer
    value: {KEY}
    usage_plans: [plan]
"#
    )
}

/// Starts `n` replicas on one Redis with the given catalog.
fn replicas(redis: &RedisServer, yaml: &str, n: usize) -> (tempfile::TempDir, Vec<TollgateProcess>) {
    let (dir, path) = write_temp("catalog.yaml", yaml);
    let path = path.to_str().unwrap().to_string();
    let url = redis.url();
    let procs = (0..n).map(|_| TollgateProcess::start(&["--config", &path, "--redis-url", &url])).collect();
    (dir, procs)
}

/// Runs `callers` concurrent callers spread over the replicas until
/// `until()` says stop; returns (allowed, denied).
async fn hammer(procs: &[TollgateProcess], callers: usize, deadline: Instant, stop_after: Option<u64>) -> (u64, u64) {
    let mut clients = Vec::new();
    for p in procs {
        p.wait_serving().await;
        clients.push(p.authorizer().await);
    }
    let allowed = Arc::new(AtomicU64::new(0));
    let denied = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..callers {
        let mut c = clients[i % clients.len()].clone();
        let (allowed, denied) = (allowed.clone(), denied.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if let Some(n) = stop_after {
                    if denied.load(Ordering::Relaxed) >= n {
                        break;
                    }
                }
                let r = c.authorize(req(Some(KEY), "api/live", "/things/GET", None)).await.expect("authorize");
                if r.get_ref().allowed {
                    allowed.fetch_add(1, Ordering::Relaxed);
                } else {
                    denied.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (allowed.load(Ordering::Relaxed), denied.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_of_500_admits_exactly_500_across_three_replicas() {
    let redis = RedisServer::start();
    let (_dir, procs) = replicas(&redis, &catalog("    quota: { limit: 500, period: DAY }"), 3);
    // Run until well past the quota: 48 callers, stop once 500 denials were seen.
    let (allowed, denied) = hammer(&procs, 48, Instant::now() + Duration::from_secs(60), Some(500)).await;
    assert!(denied >= 500, "the run ended by time before the quota was exhausted: allowed {allowed}, denied {denied}");
    assert_eq!(allowed, 500, "exactly the quota is admitted (denied {denied})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_admits_burst_plus_rate_times_elapsed_across_three_replicas() {
    let redis = RedisServer::start();
    let (_dir, procs) = replicas(&redis, &catalog("    throttle: { rate_limit: 50, burst_limit: 20 }"), 3);
    for p in &procs {
        p.wait_serving().await;
    }
    let mut warm = procs[0].authorizer().await;
    // A request of an unknown method, to open connections; it costs a token,
    // so count it.
    let first = warm.authorize(req(Some(KEY), "api/live", "/warm/GET", None)).await.unwrap();
    assert!(first.get_ref().allowed);
    let start = Instant::now();
    let (allowed, denied) = hammer(&procs, 48, start + Duration::from_secs(3), None).await;
    let elapsed = start.elapsed().as_secs_f64();
    let allowed = allowed + 1;
    let bound = 20.0 + 50.0 * elapsed + 1.0;
    assert!(denied > 0, "the bucket was never exhausted");
    assert!((allowed as f64) <= bound, "admitted {allowed} > burst + rate x elapsed + 1 = {bound:.1}");
    assert!((allowed as f64) >= 0.9 * bound, "admitted {allowed} < 90% of {bound:.1}");
}
