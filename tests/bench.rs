//! The scale benchmark's tools (`benches/scale.sh`, docs/benchmarks.md "The
//! catalog at scale") on small catalogs: the generated file and CSV are a
//! catalog the real binary accepts and serves key by key, and each measuring
//! command runs against real servers and prints its JSON. No timing is
//! asserted: the numbers are the benchmark's business.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::redis::{RedisCluster, RedisServer};
use support::TollgateProcess;
use tollgate::cli::bench::{bench_key_name, bench_key_value};

const TOKEN: &str = "bench-admin-token-0123";

/// Runs the tollgate binary; returns (exit code, stdout, stderr).
fn tollgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env("RUST_LOG", "off")
        .env("TOLLGATE_ADMIN_TOKEN", TOKEN)
        .env_remove("TOLLGATE_SERVER")
        .env_remove("TOLLGATE_ADMIN_SERVER")
        .output()
        .expect("run the tollgate binary");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

/// Runs a command that prints one JSON object, and parses it.
fn json(args: &[&str]) -> Value {
    let (code, out, err) = tollgate(args);
    assert_eq!(code, 0, "tollgate {args:?} failed: {err}");
    assert_eq!(out.lines().count(), 1, "one JSON object: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn generate(dir: &Path, keys: u64) -> (String, String) {
    let (yaml, csv) = (dir.join("catalog.yaml"), dir.join("keys.csv"));
    let (yaml, csv) = (yaml.to_str().unwrap().to_string(), csv.to_str().unwrap().to_string());
    let v = json(&["bench-catalog", "generate", "--keys", &keys.to_string(), "--yaml", &yaml, "--csv", &csv]);
    assert_eq!(v["keys"], keys, "{v}");
    (yaml, csv)
}

/// `bench --keys 100 ... --json` against `server` for 1 s: the authorize phase.
fn bench_100(server: &str) -> Value {
    let v = json(&[
        "bench",
        "--server",
        server,
        "--keys",
        "100",
        "--stage",
        "bench/live",
        "--method",
        "/items/42/GET",
        "--duration",
        "1s",
        "--rounds",
        "1",
        "--concurrency",
        "4",
        "--connections",
        "1",
        "--json",
    ]);
    assert_eq!(v["keys"], 100, "{v}");
    v["rounds"][0]["authorize"].clone()
}

#[test]
fn a_generated_catalog_checks_and_every_bench_key_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (yaml, csv) = generate(dir.path(), 100);
    let (code, out, err) = tollgate(&["check-config", &yaml]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("100 API keys, 100 subscriptions"), "{out}");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), 101);
    assert!(text.contains(&format!("{},{},,true,unbounded\n", bench_key_name(99), bench_key_value(99))));

    // A memory-store server with the file: `bench --keys 100` presents only
    // keys it knows, so every call is allowed.
    let p = TollgateProcess::start(&["--config", &yaml]);
    let a = bench_100(&p.url());
    let calls = a["calls"].as_u64().unwrap();
    assert!(calls > 0, "{a}");
    assert_eq!((a["errors"].as_u64(), a["allowed"].as_u64()), (Some(0), Some(calls)), "{a}");

    // The same load with one key too many is refused now and then: the keys
    // are picked over the whole range.
    let (_d, small) = {
        let d = tempfile::tempdir().unwrap();
        let (y, _) = generate(d.path(), 50);
        (d, y)
    };
    let q = TollgateProcess::start(&["--config", &small]);
    let a = bench_100(&q.url());
    let (calls, allowed) = (a["calls"].as_u64().unwrap(), a["allowed"].as_u64().unwrap());
    assert!(allowed > 0 && allowed < calls, "half of the keys exist: {a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_measuring_commands_run_against_replicas_on_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (_, csv) = generate(dir.path(), 30);
    let base = dir.path().join("base.yaml");
    let base = base.to_str().unwrap();
    json(&["bench-catalog", "generate", "--keys", "0", "--yaml", base]);
    let env = [("TOLLGATE_ADMIN_TOKEN", TOKEN)];
    let serve = ["--config", base, "--redis-url", &redis.url()];
    let a = TollgateProcess::start_with_env(&serve, &env);
    let b = TollgateProcess::start_with_env(&serve, &env);
    for p in [&a, &b] {
        let v = json(&["bench-catalog", "wait-serving", "--server", &p.url(), "--timeout", "20s"]);
        assert!(v["serving_after_ms"].as_f64().is_some(), "{v}");
    }
    let admin = a.admin_url();

    // Imported in chunks of 7 rows: all 30 keys, and the file is safe to import again.
    let v = json(&["keys", "import", &csv, "--chunk-rows", "7", "--server", &admin, "--json"]);
    assert_eq!((v["ids"].as_array().unwrap().len(), v["warnings"].as_array().unwrap().len()), (30, 0), "{v}");
    let again = json(&["keys", "import", &csv, "--chunk-rows", "7", "--server", &admin, "--json"]);
    assert_eq!(again["ids"], v["ids"], "a re-run updates the same keys");

    let replicas = format!("{},{}", a.url(), b.url());
    let v = json(&[
        "bench-catalog",
        "propagation",
        "--server",
        &admin,
        "--replica",
        &replicas,
        "--trials",
        "3",
        "--key-index",
        "29",
    ]);
    assert_eq!(
        (v["trials"].as_u64(), v["replicas"].as_u64(), v["timeouts"].as_u64()),
        (Some(3), Some(2), Some(0)),
        "{v}"
    );
    assert_eq!(v["all"]["n"], 3, "{v}");
    assert_eq!(v["per_replica"].as_array().unwrap().len(), 2, "{v}");
    // An odd number of flips, and the key is enabled again afterwards.
    let key = json(&["keys", "list", "--name-prefix", &bench_key_name(29), "--server", &admin, "--json"]);
    assert_eq!(key["keys"][0]["enabled"], true, "{key}");

    let v = json(&["bench-catalog", "churn", "--server", &admin, "--rate", "20", "--duration", "1s", "--pool", "10"]);
    let attempted = v["attempted"].as_u64().unwrap();
    assert!(attempted > 0, "{v}");
    assert_eq!(v["pool"], 10, "{v}");
    assert_eq!(v["ok"].as_u64().unwrap() + v["failed"].as_u64().unwrap(), attempted, "{v}");
    assert_eq!((&v["failed"], &v["first_errors"]), (&serde_json::json!(0), &serde_json::json!({})), "{v}");

    let v = json(&["bench-catalog", "list", "--server", &admin, "--page-size", "7", "--pages", "100"]);
    assert_eq!((v["keys"].as_u64(), v["n"].as_u64()), (Some(30), Some(5)), "30 keys in pages of 7: {v}");

    let v = json(&["bench-catalog", "slowlog", "--redis-url", &redis.url()]);
    assert!(v["entries"].as_u64().is_some() && v.get("longest_catalog").is_some(), "{v}");

    // A bench key that does not exist is reported, naming it.
    let (code, _, err) =
        tollgate(&["bench-catalog", "propagation", "--server", &admin, "--replica", &a.url(), "--key-index", "30"]);
    assert_eq!(code, 2);
    assert!(err.contains(&bench_key_name(30)), "{err}");
}

/// `bench --json` with `--redis-url` and `--server-pid` against a server on
/// a real Redis: the Redis cost per decision, memory per key and the
/// server's RSS are reported, and every bench key was used. Counts and
/// signs only: no timing.
#[test]
fn bench_reports_redis_cost_per_decision_and_rss() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (yaml, _) = generate(dir.path(), 20);
    let p = TollgateProcess::start(&["--config", &yaml, "--redis-url", &redis.url()]);
    json(&["bench-catalog", "wait-serving", "--server", &p.url(), "--timeout", "20s"]);
    let (pid, url, server) = (p.pid().to_string(), redis.url(), p.url());
    let mut args = vec![
        "bench",
        "--server",
        &server,
        "--keys",
        "20",
        "--stage",
        "bench/live",
        "--method",
        "/items/42/GET",
        "--duration",
        "500ms",
        "--rounds",
        "2",
        "--concurrency",
        "4",
        "--connections",
        "1",
        "--redis-url",
        &url,
        "--server-pid",
        &pid,
        "--json",
    ];
    let v = json(&args);
    let num = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} is not a number: {v}"));
    let decisions = v["decisions"].as_u64().unwrap();
    assert!(decisions > 0, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["rounds"].as_array().unwrap().len(), 2, "{v}");
    let answered: u64 = (0..2).map(|i| v["rounds"][i]["authorize"]["answered"].as_u64().unwrap()).sum();
    assert_eq!(answered, decisions, "{v}");
    assert!(num("ratio") > 0.0 && num("authorize_per_sec") > 0.0 && num("health_per_sec") > 0.0, "{v}");
    assert!(0.0 < num("p50_ms") && num("p50_ms") <= num("p99_ms") && num("p99_ms") <= num("p999_ms"), "{v}");
    assert_eq!(v["redis_nodes"], 1, "{v}");
    assert!(num("redis_us_per_decision") > 0.0, "{v}");
    // Each decision runs the decision script: at least one command, and the
    // per-command breakdown adds up to the total.
    assert!(num("redis_calls_per_decision") > 0.0, "{v}");
    let commands = v["redis_commands"].as_object().unwrap();
    assert!(!commands.is_empty(), "{v}");
    let calls: u64 = commands.values().map(|c| c["calls"].as_u64().unwrap()).sum();
    assert_eq!(calls, v["redis_calls"].as_u64().unwrap(), "{v}");
    assert!(commands.keys().any(|c| c.starts_with("eval")), "the decision script is called: {v}");
    // The 20 keys got state in Redis: the first calls walk them all.
    assert_eq!(v["distinct_keys"], 20, "{v}");
    assert!(num("redis_bytes_per_key") > 0.0, "{v}");
    assert!(v["rss_bytes"].as_u64().unwrap() > 0, "{v}");

    // Paced: no more calls than the schedule has slots (rate × duration, plus
    // one per caller), and the same fields.
    args.extend(["--rate", "200"]);
    let v = json(&args);
    for i in 0..2 {
        let a = &v["rounds"][i]["authorize"];
        assert!(a["calls"].as_u64().unwrap() <= 100 + 4, "{v}");
        assert!(a["behind_schedule"].as_u64().is_some(), "{v}");
    }
    assert_eq!(v["rate"], 200.0, "{v}");
    assert!(v["redis_calls_per_decision"].as_f64().unwrap() > 0.0, "{v}");

    // A Redis that is not there is a clear error.
    let (code, _, err) = tollgate(&["bench", "--server", &server, "--redis-url", "redis://127.0.0.1:1", "--json"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("Redis redis://127.0.0.1:1"), "{err}");
}

/// On a Redis Cluster, `--redis-url` lists the primaries and the figures are
/// summed over them.
#[test]
fn bench_sums_redis_figures_over_a_clusters_primaries() {
    let cluster = RedisCluster::start(3);
    let urls = cluster.urls().join(",");
    let dir = tempfile::tempdir().unwrap();
    let (yaml, _) = generate(dir.path(), 50);
    let p = TollgateProcess::start(&["--config", &yaml, "--redis-mode", "cluster", "--redis-url", &urls]);
    json(&["bench-catalog", "wait-serving", "--server", &p.url(), "--timeout", "20s"]);
    let v = json(&[
        "bench",
        "--server",
        &p.url(),
        "--keys",
        "50",
        "--stage",
        "bench/live",
        "--method",
        "/items/42/GET",
        "--duration",
        "500ms",
        "--rounds",
        "1",
        "--concurrency",
        "4",
        "--connections",
        "1",
        "--redis-url",
        &urls,
        "--json",
    ]);
    assert_eq!(v["redis_nodes"], 3, "{v}");
    assert!(v["decisions"].as_u64().unwrap() > 0, "{v}");
    assert!(v["redis_calls_per_decision"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["redis_us_per_decision"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["distinct_keys"], 50, "{v}");
    assert!(v["redis_bytes_per_key"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v.get("rss_bytes").is_none(), "no --server-pid, no RSS: {v}");
}
