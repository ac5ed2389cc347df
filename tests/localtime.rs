//! Local-time quotas (issue 14; docs/semantics.md, "Local-time quotas")
//! through the native API of a real server, on the memory store and on
//! Redis: Authorize over gRPC counts in the zone's day, GetUsage reports the
//! zone's dates, GetOwnUsage names the local midnight as the reset; the
//! catalog file, the Admin API, the HTTP API and the CLI take and show
//! `time_zone` / `anchor_day`, and refuse bad ones with clear errors.
//!
//! The server runs on the real clock, so the test picks a zone whose date
//! differs from UTC's at the moment it runs (Pacific/Kiritimati, UTC+14, or
//! Pacific/Pago_Pago, UTC-11: at every hour one of them does), and skips,
//! saying so, within two minutes of a midnight.

mod support;

use std::process::Command;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde_json::{json, Value};
use support::redis::RedisServer;
use support::{req, write_temp, TollgateProcess, ADMIN_TOKEN};
use tollgate::api::pb;
use tonic::Code;

fn value(id: &str) -> String {
    format!("{id}{}", "v".repeat(40 - id.len()))
}

fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

fn ms_of(d: Date, tz: &TimeZone) -> i64 {
    d.to_zoned_datetime(tz.clone()).unwrap().timestamp().as_millisecond()
}

/// A zone whose local date is not UTC's now: (name, local date, UTC date);
/// None within two minutes of a midnight (UTC or local), when a date could
/// change between the calls of the test.
fn pick_zone() -> Option<(&'static str, Date, Date)> {
    let now = Timestamp::now();
    let utc = now.to_zoned_datetime(TimeZone::UTC).date();
    for name in ["Pacific/Kiritimati", "Pacific/Pago_Pago"] {
        let tz = TimeZone::get(name).unwrap();
        let local = now.to_zoned_datetime(tz.clone()).date();
        if local == utc {
            continue;
        }
        let near = |d: Date, tz: &TimeZone| {
            let next = ms_of(d.checked_add(1.day()).unwrap(), tz);
            next - now.as_millisecond() < 120_000 || now.as_millisecond() - ms_of(d, tz) < 120_000
        };
        if near(local, &tz) || near(utc, &TimeZone::UTC) {
            break;
        }
        return Some((name, local, utc));
    }
    eprintln!("skipped: within two minutes of a midnight");
    None
}

fn catalog(zone: &str) -> String {
    format!(
        r#"
apis:
  - id: shop
    stages:
      - name: prod
      - name: month
usage_plans:
  - id: local
    name: Local
    quota: {{ limit: 5, period: DAY, time_zone: {zone} }}
    api_stages:
      - stage: shop/prod
  - id: monthly
    name: Monthly
    quota: {{ limit: 100, period: MONTH, time_zone: asia/tokyo, anchor_day: 15 }}
    api_stages:
      - stage: shop/month
api_keys:
  - id: k1
    name: one
    value: {}
    usage_plans: [local, monthly]
"#,
        value("k1")
    )
}

async fn start(zone: &str, redis: Option<&RedisServer>) -> (tempfile::TempDir, TollgateProcess) {
    let (dir, path) = write_temp("catalog.yaml", &catalog(zone));
    let path = path.to_str().unwrap().to_string();
    let mut args = vec!["--config".to_string(), path, "--http-listen".into(), "127.0.0.1:0".into()];
    if let Some(r) = redis {
        args.extend(["--redis-url".to_string(), r.url()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = TollgateProcess::start_with_env(&args, &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)]);
    p.wait_serving().await;
    (dir, p)
}

/// The next start of an anchor-15 month in Tokyo after now.
fn next_tokyo_15th() -> i64 {
    let tz = TimeZone::get("Asia/Tokyo").unwrap();
    let today = Timestamp::now().to_zoned_datetime(tz.clone()).date();
    let this = today.with().day(15).build().unwrap();
    let next = if today.day() >= 15 { this.checked_add(1.month()).unwrap() } else { this };
    ms_of(next, &tz)
}

async fn scenario(p: &TollgateProcess) {
    let Some((zone, local, utc)) = pick_zone() else { return };
    let tz = TimeZone::get(zone).unwrap();
    let mut a = p.authorizer().await;
    let mut last = None;
    for _ in 0..3 {
        let r = a.authorize(req(Some(&value("k1")), "shop/prod", "/x/GET", None)).await.unwrap().into_inner();
        assert!(r.allowed, "{r:?}");
        last = r.rate_limit;
    }
    let rl = last.expect("the quota is described");
    assert_eq!((rl.limit, rl.remaining), (5, 2));
    let next_midnight = ms_of(local.checked_add(1.day()).unwrap(), &tz);
    assert!(rl.reset_ms as i64 <= next_midnight - now_ms() + 1_000, "resets at local midnight: {rl:?}");
    let r = a.authorize(req(Some(&value("k1")), "shop/month", "/x/GET", None)).await.unwrap().into_inner();
    assert!(r.allowed);

    // GetUsage: the calls are on the zone's date, not UTC's.
    let mut admin = p.admin().await;
    let usage = |d: Date| pb::GetUsageRequest {
        usage_plan_id: "local".into(),
        start_date: d.to_string(),
        end_date: d.to_string(),
        key_id: Some("k1".into()),
        ..Default::default()
    };
    let u = admin.get_usage(usage(local)).await.unwrap().into_inner();
    let day = &u.items["k1"].days[0];
    assert_eq!((day.used, day.remaining), (3, Some(2)), "{zone}: local date {local}");
    assert_eq!(u.time_zone, zone, "the answer names the zone of its dates");
    let u = admin.get_usage(usage(utc)).await.unwrap().into_inner();
    assert_eq!(u.items["k1"].days[0].used, 0, "{zone}: nothing on the UTC date {utc}");

    // GetOwnUsage: today is the local date; the reset, local midnight.
    let own = a.get_own_usage(pb::GetOwnUsageRequest { api_key: value("k1") }).await.unwrap().into_inner();
    let plan = |id: &str| own.plans.iter().find(|p| p.plan_id == id).unwrap().clone();
    let l = plan("local");
    assert_eq!((l.used_today, l.quota_remaining, l.quota_time_zone.as_str()), (3, 2, zone));
    assert_eq!(l.quota_reset_ms as i64, next_midnight, "{zone}: the next local midnight");
    let m = plan("monthly");
    assert_eq!((m.quota_used, m.quota_reset_ms as i64), (1, next_tokyo_15th()), "the next 15th, 00:00 JST");

    // The Admin API and the HTTP API show them (canonical names).
    let got = admin.get_usage_plan(pb::GetUsagePlanRequest { id: "monthly".into() }).await.unwrap().into_inner();
    let q = got.quota.unwrap();
    assert_eq!((q.time_zone.as_str(), q.anchor_day), ("Asia/Tokyo", 15));
    let r =
        support::http::get(p.http_addr(), "/v1/plans/local", &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["quota"]["time_zone"], zone);
}

#[tokio::test]
async fn the_native_api_counts_in_the_zone_on_memory() {
    let Some((zone, ..)) = pick_zone() else { return };
    let (_d, p) = start(zone, None).await;
    scenario(&p).await;
}

#[tokio::test]
async fn the_native_api_counts_in_the_zone_on_redis() {
    let Some((zone, ..)) = pick_zone() else { return };
    let server = RedisServer::start();
    let (_d, p) = start(zone, Some(&server)).await;
    scenario(&p).await;
}

/// Bad zones and anchors: INVALID_ARGUMENT naming the field, over gRPC and
/// HTTP; the catalog file is refused at start.
#[tokio::test]
async fn bad_zones_and_anchors_are_refused_clearly() {
    let (_d, p) = start("Asia/Tokyo", None).await;
    let mut admin = p.admin().await;
    let create = |quota: pb::Quota| pb::CreateUsagePlanRequest {
        name: "P".into(),
        quota: Some(quota),
        api_stages: vec![pb::PlanStage { stage: "shop/prod".into(), throttle: Default::default() }],
        ..Default::default()
    };
    let q = |period: &str, zone: &str, anchor| pb::Quota {
        limit: 10,
        period: period.into(),
        offset: 0,
        time_zone: zone.into(),
        anchor_day: anchor,
    };
    let e = admin.create_usage_plan(create(q("DAY", "Mars/Olympus", 0))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "quota.time_zone: unknown time zone 'Mars/Olympus' (an IANA name such as Asia/Tokyo)");
    let e = admin.create_usage_plan(create(q("MONTH", "", 29))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("quota.anchor_day: must be 1 to 28"), "{}", e.message());
    let e = admin.create_usage_plan(create(q("WEEK", "", 3))).await.unwrap_err();
    assert!(e.message().starts_with("quota.anchor_day: applies to MONTH quotas only"), "{}", e.message());
    // UTC with an anchor, a zone from the 1st: both fine.
    admin.create_usage_plan(create(q("MONTH", "", 28))).await.unwrap();
    admin.create_usage_plan(create(q("WEEK", "Europe/Berlin", 0))).await.unwrap();

    let body = json!({ "name": "H", "quota": { "limit": 5, "period": "DAY", "time_zone": "Nowhere/Land" },
                       "api_stages": [{ "stage": "shop/prod" }] });
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = support::http::send(
        p.http_addr(),
        "POST",
        "/v1/plans",
        &[("authorization", &auth), ("content-type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let v: Value = r.json();
    assert_eq!((v["code"].as_str(), v["field"].as_str()), (Some("INVALID_ARGUMENT"), Some("quota.time_zone")), "{v}");

    let (_d, path) = write_temp(
        "bad.yaml",
        "usage_plans:\n  - name: P\n    quota: { limit: 5, period: DAY, time_zone: Mars/Olympus }\n",
    );
    let out =
        Command::new(env!("CARGO_BIN_EXE_tollgate")).args(["check-config", path.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown time zone 'Mars/Olympus'"), "{err}");
    let (_d, path) =
        write_temp("bad2.yaml", "usage_plans:\n  - name: P\n    quota: { limit: 5, period: MONTH, anchor_day: 31 }\n");
    let out =
        Command::new(env!("CARGO_BIN_EXE_tollgate")).args(["check-config", path.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("anchor_day") && err.contains("1 to 28"), "{err}");
}

/// Runs the CLI against the server's Admin listener.
fn tg(p: &TollgateProcess, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .arg("--server")
        .arg(p.admin_url())
        .env("RUST_LOG", "off")
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("TOLLGATE_SERVER")
        .env_remove("TOLLGATE_ADMIN_SERVER")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_takes_and_shows_zones_and_anchors() {
    let (_d, p) = start("Asia/Tokyo", None).await;
    let (code, out, err) = tg(
        &p,
        &[
            "plans",
            "create",
            "--name",
            "Tokyo",
            "--stage",
            "shop/prod",
            "--id",
            "tokyo",
            "--quota-limit",
            "1000",
            "--quota-period",
            "DAY",
            "--quota-time-zone",
            "asia/tokyo",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["quota"], json!({ "limit": 1000, "period": "DAY", "offset": 0, "time_zone": "Asia/Tokyo" }));

    let (code, out, err) = tg(
        &p,
        &["plans", "update", "tokyo", "--quota-limit", "50", "--quota-period", "MONTH", "--quota-anchor-day", "15"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("50 per MONTH from day 15"), "{out}");
    let (_, out, _) = tg(&p, &["plans", "get", "tokyo", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["quota"], json!({ "limit": 50, "period": "MONTH", "offset": 0, "anchor_day": 15 }), "UTC again");

    let today = Timestamp::now().to_zoned_datetime(TimeZone::get("Asia/Tokyo").unwrap()).date().to_string();
    let (code, out, err) = tg(&p, &["usage", "get", "local", "--start", &today, "--end", &today]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("usage plan local, {today} to {today} (Asia/Tokyo)")), "{out}");

    let (code, _, err) = tg(
        &p,
        &["plans", "update", "tokyo", "--quota-limit", "50", "--quota-period", "DAY", "--quota-time-zone", "Tokio"],
    );
    assert_eq!(code, 2);
    assert!(err.starts_with("error: INVALID_ARGUMENT: quota.time_zone: unknown time zone 'Tokio'"), "{err}");
    let (code, _, err) = tg(
        &p,
        &["plans", "update", "tokyo", "--quota-limit", "50", "--quota-period", "MONTH", "--quota-anchor-day", "29"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("quota.anchor_day: must be 1 to 28"), "{err}");
}
