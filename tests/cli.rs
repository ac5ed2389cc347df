//! The admin command line as an operator uses it: the real `tollgate` binary
//! against a real server (memory store, and the walk-through on Redis too),
//! checking the JSON every command prints, the tables people read, and exit
//! code 2 with `error: CODE: message` when a call fails.

mod support;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use support::redis::RedisServer;
use support::{write_temp, TollgateProcess};

const TOKEN: &str = "secret-token-123";

/// A server with the admin token set.
fn server(args: &[&str]) -> TollgateProcess {
    TollgateProcess::start_with_env(args, &[("TOLLGATE_ADMIN_TOKEN", TOKEN)])
}

/// What one run of the CLI did.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        assert_eq!(self.code, 0, "exit code; stderr: {}", self.stderr);
        assert_eq!(self.stdout.lines().count(), 1, "one JSON object on one line: {}", self.stdout);
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "exit code; stderr: {}", self.stderr);
        &self.stdout
    }

    /// Asserts a failure noticed before any call: exit code 2 and
    /// `error: message` on stderr.
    fn failed_with_message(&self) -> &str {
        assert_eq!(self.code, 2, "exit code; stdout: {} stderr: {}", self.stdout, self.stderr);
        assert!(self.stderr.starts_with("error: "), "{}", self.stderr);
        &self.stderr
    }

    /// Asserts a failed call: exit code 2 and `error: CODE: ...` on stderr.
    fn failed(&self, code: &str) -> &str {
        assert_eq!(self.code, 2, "exit code; stdout: {} stderr: {}", self.stdout, self.stderr);
        assert!(self.stderr.starts_with(&format!("error: {code}: ")), "stderr names {code}: {}", self.stderr);
        &self.stderr
    }
}

/// Runs `tollgate ARGS --server URL` with `token` in TOLLGATE_ADMIN_TOKEN;
/// URL is the data plane for `authorize`, the Admin listener otherwise.
fn run_with(p: &TollgateProcess, token: Option<&str>, args: &[&str]) -> Out {
    let server = if args.first() == Some(&"authorize") { p.url() } else { p.admin_url() };
    run_at(&server, token, args)
}

/// Runs `tollgate ARGS --server SERVER` with `token` in TOLLGATE_ADMIN_TOKEN.
fn run_at(server: &str, token: Option<&str>, args: &[&str]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(args).arg("--server").arg(server).env("RUST_LOG", "off");
    cmd.env_remove("TOLLGATE_SERVER").env_remove("TOLLGATE_ADMIN_SERVER");
    match token {
        Some(t) => cmd.env("TOLLGATE_ADMIN_TOKEN", t),
        None => cmd.env_remove("TOLLGATE_ADMIN_TOKEN"),
    };
    let out = cmd.output().expect("run the tollgate binary");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs an admin command with the right token.
fn tg(p: &TollgateProcess, args: &[&str]) -> Out {
    run_with(p, Some(TOKEN), args)
}

/// Runs an admin command with `--json` and parses its answer.
fn tgj(p: &TollgateProcess, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    tg(p, &a).json()
}

/// `tollgate authorize ... --json` with `key`: (allowed, reason).
fn authorize(p: &TollgateProcess, key: &str, method: &str) -> (bool, String) {
    let v = tgj(p, &["authorize", "--key", key, "--stage", "petstore/prod", "--method", method]);
    (v["allowed"].as_bool().unwrap(), v["reason"].as_str().unwrap().to_string())
}

/// Polls `authorize` until it answers `want` (changes reach the data plane
/// within a second), failing after 3 s.
fn await_decision(p: &TollgateProcess, key: &str, want: (bool, &str)) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let got = authorize(p, key, "/pets/GET");
        if (got.0, got.1.as_str()) == want {
            return;
        }
        assert!(Instant::now() < deadline, "authorize answered {got:?}, want {want:?}; log:\n{}", p.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn today() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()[..10].to_string()
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or_else(|| panic!("{field} is a string: {v}"))
}

/// The README walk-through: a stage, a plan, a key, a subscription; the key
/// works; disabled, it does not; usage shows the call.
fn walk_through(p: &TollgateProcess) {
    let s = tgj(p, &["stages", "put", "petstore/prod", "--api-name", "Pet Store", "--method", "/pets/GET"]);
    assert_eq!((str_of(&s, "stage"), str_of(&s, "api_name")), ("petstore/prod", "Pet Store"));
    let s =
        tgj(p, &["stages", "put", "petstore/prod", "--method", "/pets/{petId}/GET", "--rate", "50", "--burst", "100"]);
    assert_eq!(s["methods"].as_array().unwrap().len(), 2, "a second put adds a method: {s}");
    assert_eq!(s["api_name"], "Pet Store", "the API's name is kept when not given");

    let plan = tgj(
        p,
        &[
            "plans",
            "create",
            "--name",
            "Basic",
            "--stage",
            "petstore/prod",
            "--rate",
            "10",
            "--burst",
            "20",
            "--quota-limit",
            "1000",
            "--quota-period",
            "day",
            "--id",
            "basic",
        ],
    );
    assert_eq!(str_of(&plan, "id"), "basic");
    assert_eq!(plan["quota"], serde_json::json!({ "limit": 1000, "period": "DAY", "offset": 0 }));
    assert_eq!(plan["throttle"]["burst_limit"], 20);

    let key = tgj(p, &["keys", "create", "--name", "alice", "--customer-id", "cust-1"]);
    let (id, value) = (str_of(&key, "id").to_string(), str_of(&key, "value").to_string());
    assert_eq!(value.len(), 40, "a generated value: {key}");
    assert!(value.chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!((key["enabled"].as_bool(), str_of(&key, "customer_id")), (Some(true), "cust-1"));
    assert!(key["created_at_ms"].as_u64().unwrap() > 0);
    assert!(str_of(&key, "created_at").ends_with('Z'), "{key}");
    assert_eq!((key["expires_at_ms"].is_null(), key["expires_at"].is_null()), (true, true));

    // Not subscribed yet.
    await_decision(p, &value, (false, "NOT_SUBSCRIBED"));
    let sub = tgj(p, &["plan-keys", "add", "basic", &id]);
    assert_eq!((str_of(&sub, "usage_plan_id"), str_of(&sub["key"], "id")), ("basic", id.as_str()));
    await_decision(p, &value, (true, "OK"));

    let listed = tgj(p, &["plan-keys", "list", "basic"]);
    let ids: Vec<&str> = listed["keys"].as_array().unwrap().iter().map(|k| str_of(k, "id")).collect();
    assert_eq!(ids, [id.as_str()]);

    // get never shows the value, neither as JSON nor as a table.
    let got = tgj(p, &["keys", "get", &id]);
    assert!(got.get("value").is_none() && !got.to_string().contains(&value), "{got}");
    assert_eq!(got["usage_plan_ids"], serde_json::json!(["basic"]));
    let table = tg(p, &["keys", "get", &id]).ok().to_string();
    assert!(table.contains(&id) && table.contains("alice") && !table.contains(&value), "{table}");

    // Usage: today's one allowed call (the denied ones count nothing).
    let day = today();
    let u = tgj(p, &["usage", "get", "basic", "--start", &day, "--end", &day]);
    let mut fields: Vec<&str> = u.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(fields, ["end_date", "items", "position", "start_date", "usage_plan_id"], "{u}");
    assert_eq!(
        (str_of(&u, "usage_plan_id"), str_of(&u, "start_date"), str_of(&u, "end_date")),
        ("basic", &*day, &*day)
    );
    let used = u["items"][&id][0][0].as_u64().unwrap();
    assert!(used >= 1, "{u}");
    assert_eq!(u["items"][&id], serde_json::json!([[used, 1000 - used]]), "{u}");
    assert!(u["position"].is_null(), "{u}");
    let csv = tg(p, &["usage", "get", "basic", "--start", &day, "--end", &day, "--csv"]).ok().to_string();
    assert_eq!(csv, format!("key_id,date,used,remaining\n{id},{day},{used},{}\n", 1000 - used));

    // A grant of extra quota.
    let g = tgj(p, &["usage", "update", "basic", &id, "--remaining", "5000"]);
    assert_eq!((g["remaining"].as_u64(), str_of(&g, "key_id")), (Some(5000), id.as_str()), "{g}");

    // Disabled: refused like an unknown key.
    let k = tgj(p, &["keys", "update", &id, "--enabled", "false"]);
    assert_eq!(k["enabled"], false);
    await_decision(p, &value, (false, "INVALID_API_KEY"));
    let k = tgj(p, &["keys", "update", &id, "--enabled", "true", "--expires-at", "2099-01-01T00:00:00Z"]);
    assert_eq!(
        (k["expires_at_ms"].as_u64(), str_of(&k, "expires_at")),
        (Some(4_070_908_800_000), "2099-01-01T00:00:00.000Z")
    );
    await_decision(p, &value, (true, "OK"));

    // Rotation without grace: the old value stops, the new one works.
    let r = tgj(p, &["keys", "rotate", &id]);
    let new_value = str_of(&r, "value").to_string();
    assert_eq!(str_of(&r, "id"), id);
    assert_ne!(new_value, value);
    await_decision(p, &value, (false, "INVALID_API_KEY"));
    await_decision(p, &new_value, (true, "OK"));

    // With a grace period and a chosen value: both work for now.
    let chosen = "chosenvalue0123456789abcdefghijklmnop";
    let r = tgj(p, &["keys", "rotate", &id, "--value", chosen, "--grace", "600"]);
    assert_eq!(str_of(&r, "value"), chosen);
    await_decision(p, chosen, (true, "OK"));
    assert_eq!(authorize(p, &new_value, "/pets/GET"), (true, "OK".to_string()), "the old value in its grace period");
}

#[test]
fn walk_through_on_memory() {
    let p = server(&[]);
    walk_through(&p);
    assert!(!p.log().contains(TOKEN), "the token never reaches the log");
}

#[test]
fn walk_through_on_redis() {
    let redis = RedisServer::start();
    let p = server(&["--redis-url", &redis.url()]);
    walk_through(&p);
}

#[test]
fn people_read_tables_and_see_a_new_value_once() {
    let p = server(&[]);
    let out = tg(&p, &["keys", "create", "--name", "bob", "--value", "bobsvalue0123456789abcdefghijklmn"]);
    let text = out.ok();
    assert!(text.contains("bobsvalue0123456789abcdefghijklmn"), "{text}");
    assert!(text.contains("cannot be shown again"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("id:")), "{text}");

    let out = tg(&p, &["keys", "list"]);
    let mut lines = out.ok().lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("ID") && header.contains("NAME") && header.contains("ENABLED"), "{header}");
    let row = lines.next().unwrap();
    assert!(row.contains("bob") && !row.contains("bobsvalue0123456789abcdefghijklmn"), "{row}");
    // Aligned: NAME starts in the same column in the header and the row.
    let col = header.find("NAME").unwrap();
    assert_eq!(&row[col..col + 3], "bob", "{header}\n{row}");

    tg(&p, &["stages", "put", "petstore/prod", "--method", "*/*", "--rate", "1.5", "--burst", "3"]).ok();
    let text = tg(&p, &["stages", "get", "petstore/prod"]).ok().to_string();
    assert!(text.contains("*/*") && text.contains("1.5 req/s, burst 3"), "{text}");
    let text =
        tg(&p, &["plans", "create", "--name", "Gold", "--stage", "petstore/prod", "--id", "gold"]).ok().to_string();
    assert!(text.contains("gold") && text.contains("petstore/prod"), "{text}");
    let text = tg(&p, &["plans", "list"]).ok().to_string();
    assert!(text.starts_with("ID") && text.contains("Gold"), "{text}");
}

#[test]
fn keys_import_csv_gives_ids_and_warnings() {
    let p = server(&[]);
    tg(&p, &["stages", "put", "shop/a"]).ok();
    tg(&p, &["stages", "put", "shop/b"]).ok();
    tg(&p, &["plans", "create", "--name", "A", "--stage", "shop/a", "--id", "pa"]).ok();
    tg(&p, &["plans", "create", "--name", "B", "--stage", "shop/b", "--id", "pb"]).ok();
    let csv = "Name,Key,Description,Enabled,UsagePlanIds\n\
               first,importfirst0123456789abcdefghijk,A key for my first api,true,\"pa,pb\"\n\
               second,importsecond0123456789abcdefghij,,false,pa\n\
               short,tooshort,,true,pa\n\
               third,importthird0123456789abcdefghijk,,true,nosuchplan\n";
    let (_d, path) = write_temp("keys.csv", csv);
    let path = path.to_str().unwrap();

    // fail_on_warnings: nothing imported, exit 2 with the reasons.
    let err = tg(&p, &["keys", "import", path, "--fail-on-warnings", "--json"]).failed("INVALID_ARGUMENT").to_string();
    assert!(err.contains("line 4") && err.contains("line 5"), "{err}");
    assert_eq!(tgj(&p, &["keys", "list"])["keys"], serde_json::json!([]), "nothing was imported");

    let v = tgj(&p, &["keys", "import", path]);
    let ids: Vec<String> = v["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 2, "{v}");
    let mut warnings: Vec<(u64, &str)> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["line"].as_u64().unwrap(), w["message"].as_str().unwrap()))
        .collect();
    warnings.sort();
    assert_eq!(warnings.iter().map(|w| w.0).collect::<Vec<_>>(), [4, 5], "{v}");
    assert!(warnings[1].1.contains("nosuchplan"), "names the plan: {v}");

    let first = tgj(&p, &["keys", "get", &ids[0]]);
    assert_eq!((str_of(&first, "name"), str_of(&first, "description")), ("first", "A key for my first api"));
    let mut plans: Vec<&str> =
        first["usage_plan_ids"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    plans.sort();
    assert_eq!(plans, ["pa", "pb"], "the quoted cell holds two plans: {first}");
    assert_eq!(tgj(&p, &["keys", "get", &ids[1]])["enabled"], false);

    // Header in another order and case; re-import updates the same key.
    let (_d2, path2) =
        write_temp("again.csv", "key,ENABLED,name\nimportsecond0123456789abcdefghij,TRUE,second-renamed\n");
    let v = tgj(&p, &["keys", "import", path2.to_str().unwrap()]);
    assert_eq!(v["ids"], serde_json::json!([ids[1]]), "{v}");
    assert_eq!(v["warnings"], serde_json::json!([]));
    let second = tgj(&p, &["keys", "get", &ids[1]]);
    assert_eq!((str_of(&second, "name"), second["enabled"].as_bool()), ("second-renamed", Some(true)));

    // A people's summary.
    let text = tg(&p, &["keys", "import", path]).ok().to_string();
    assert!(text.contains("imported 2 key(s)") && text.contains("LINE") && text.contains("nosuchplan"), "{text}");

    // Too big: refused before sending.
    let big = format!("Name,Key\n{}", "x".repeat(5 * 1024 * 1024));
    let (_d3, big_path) = write_temp("big.csv", &big);
    let out = tg(&p, &["keys", "import", big_path.to_str().unwrap()]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("5 MiB"), "{}", out.stderr);
    let out = tg(&p, &["keys", "import", "/nonexistent/keys.csv"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("/nonexistent/keys.csv"), "{}", out.stderr);
}

/// A file imported a few rows per call: the warnings name the file's own
/// lines, and --fail-on-warnings still imports nothing for a bad row anywhere.
#[test]
fn keys_import_in_chunks_names_the_files_lines() {
    let p = server(&[]);
    tg(&p, &["stages", "put", "shop/a"]).ok();
    tg(&p, &["plans", "create", "--name", "A", "--stage", "shop/a", "--id", "pa"]).ok();
    let csv = "Name,Key,Enabled,UsagePlanIds\n\
               one,chunkone0123456789abcdefghijklm,true,pa\n\
               two,chunktwo0123456789abcdefghijklm,true,pa\n\
               short,tooshort,true,pa\n\
               four,chunkfour0123456789abcdefghijkl,true,pa\n\
               five,chunkfive0123456789abcdefghijkl,true,nosuchplan\n\
               six,chunksix0123456789abcdefghijklm,true,pa\n";
    let (_d, path) = write_temp("keys.csv", csv);
    let path = path.to_str().unwrap();

    // A bad row in the second chunk: nothing imported, the file's line named.
    let err =
        tg(&p, &["keys", "import", path, "--chunk-rows", "2", "--fail-on-warnings"]).failed_with_message().to_string();
    assert!(err.contains("line 4:") && err.contains("nothing imported"), "{err}");
    assert_eq!(tgj(&p, &["keys", "list"])["keys"], serde_json::json!([]), "nothing was imported");

    let out = tg(&p, &["keys", "import", path, "--chunk-rows", "2", "--json"]);
    let v = out.json();
    assert_eq!(v["ids"].as_array().unwrap().len(), 4, "{v}");
    let lines: Vec<u64> = v["warnings"].as_array().unwrap().iter().map(|w| w["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [4, 6], "the file's lines, not the chunks': {v}");
    assert!(out.stderr.contains("chunk 3/3: 2 row(s) from line 6: 1 warning(s)"), "{}", out.stderr);
}

#[test]
fn keys_list_pages_and_filters() {
    let p = server(&[]);
    let mut made = Vec::new();
    for i in 0..5 {
        let customer = if i % 2 == 0 { "even" } else { "odd" };
        let k = tgj(&p, &["keys", "create", "--name", &format!("page-{i}"), "--customer-id", customer]);
        made.push(str_of(&k, "id").to_string());
    }
    tg(&p, &["keys", "create", "--name", "other", "--disabled"]).ok();

    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut args = vec!["keys", "list", "--name-prefix", "page-", "--page-size", "2"];
        if let Some(t) = &token {
            args.extend(["--page-token", t.as_str()]);
        }
        let v = tgj(&p, &args);
        pages += 1;
        let keys = v["keys"].as_array().unwrap();
        assert!(keys.len() <= 2, "{v}");
        seen.extend(keys.iter().map(|k| str_of(k, "id").to_string()));
        match v["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    seen.sort();
    made.sort();
    assert_eq!(seen, made);

    let all = tgj(&p, &["keys", "list", "--all", "--page-size", "2"]);
    assert_eq!(all["keys"].as_array().unwrap().len(), 6);
    assert!(all["next_page_token"].is_null());
    let odd = tgj(&p, &["keys", "list", "--customer-id", "odd"]);
    assert_eq!(odd["keys"].as_array().unwrap().len(), 2, "{odd}");

    // Delete.
    let d = tgj(&p, &["keys", "delete", &made[0]]);
    assert_eq!(d, serde_json::json!({ "id": made[0], "deleted": true }));
    tg(&p, &["keys", "get", &made[0]]).failed("NOT_FOUND");
}

#[test]
fn plans_get_update_delete() {
    let p = server(&[]);
    tg(&p, &["stages", "put", "petstore/prod", "--method", "/pets/GET"]).ok();
    tg(&p, &["stages", "put", "petstore/prod", "--method", "/pets/{petId}/GET"]).ok();
    tg(&p, &["stages", "put", "petstore/beta"]).ok();
    let plan = tgj(
        &p,
        &[
            "plans",
            "create",
            "--name",
            "Pro",
            "--description",
            "for pros",
            "--stage",
            "petstore/prod",
            "--quota-limit",
            "100",
            "--quota-period",
            "MONTH",
            "--quota-offset",
            "10",
        ],
    );
    let id = str_of(&plan, "id").to_string();
    assert!(!id.is_empty());
    let got = tgj(&p, &["plans", "get", &id]);
    assert_eq!(got, plan);
    assert_eq!(got["quota"], serde_json::json!({ "limit": 100, "period": "MONTH", "offset": 10 }));
    assert!(got["throttle"].is_null());
    assert_eq!(got["api_stages"], serde_json::json!([{ "stage": "petstore/prod", "throttle": {} }]));
    assert!(got["created_at_ms"].as_u64().unwrap() > 0 && str_of(&got, "created_at").ends_with('Z'));

    let up = tgj(
        &p,
        &[
            "plans",
            "update",
            &id,
            "--name",
            "Pro 2",
            "--rate",
            "5",
            "--burst",
            "10",
            "--no-quota",
            "--add-stage",
            "petstore/beta",
            "--method-throttle",
            "petstore/prod:/pets/{petId}/GET:0.5:2",
        ],
    );
    assert_eq!(str_of(&up, "name"), "Pro 2");
    assert_eq!(str_of(&up, "description"), "for pros", "unchanged");
    assert_eq!(up["throttle"], serde_json::json!({ "rate_limit": 5.0, "burst_limit": 10 }));
    assert!(up["quota"].is_null(), "{up}");
    let stages = up["api_stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "{up}");
    let prod = stages.iter().find(|s| s["stage"] == "petstore/prod").unwrap();
    assert_eq!(prod["throttle"]["/pets/{petId}/GET"], serde_json::json!({ "rate_limit": 0.5, "burst_limit": 2 }));

    let up = tgj(
        &p,
        &[
            "plans",
            "update",
            &id,
            "--no-throttle",
            "--remove-stage",
            "petstore/beta",
            "--remove-method-throttle",
            "petstore/prod:/pets/{petId}/GET",
            "--quota-limit",
            "7",
            "--quota-period",
            "WEEK",
        ],
    );
    assert!(up["throttle"].is_null(), "{up}");
    assert_eq!(up["quota"], serde_json::json!({ "limit": 7, "period": "WEEK", "offset": 0 }));
    assert_eq!(up["api_stages"], serde_json::json!([{ "stage": "petstore/prod", "throttle": {} }]));

    let list = tgj(&p, &["plans", "list"]);
    assert_eq!(list["plans"].as_array().unwrap().len(), 1);
    let k = tgj(&p, &["keys", "create", "--name", "k"]);
    let kid = str_of(&k, "id");
    tg(&p, &["plan-keys", "add", &id, kid]).ok();
    assert_eq!(tgj(&p, &["plans", "list", "--key-id", kid])["plans"][0]["id"], id.as_str());
    let r = tgj(&p, &["plan-keys", "remove", &id, kid]);
    assert_eq!(r, serde_json::json!({ "usage_plan_id": id, "key_id": kid, "removed": true }));
    assert_eq!(tgj(&p, &["plans", "list", "--key-id", kid])["plans"], serde_json::json!([]));

    assert_eq!(tgj(&p, &["plans", "delete", &id]), serde_json::json!({ "id": id, "deleted": true }));
    let err = tg(&p, &["plans", "get", &id]).failed("NOT_FOUND").to_string();
    assert!(err.contains(&id), "names the plan: {err}");
}

#[test]
fn stages_put_get_list_delete() {
    let p = server(&[]);
    let s = tgj(&p, &["stages", "put", "petstore/prod", "--method", "/health/GET", "--no-key-required"]);
    assert_eq!(
        s["methods"],
        serde_json::json!([{ "method": "/health/GET", "throttle": null, "api_key_required": false }])
    );
    tg(&p, &["stages", "put", "petstore/dev", "--method", "*/*", "--rate", "1", "--burst", "1"]).ok();
    tg(&p, &["stages", "put", "other/prod"]).ok();
    let s = tgj(&p, &["stages", "put", "petstore/prod", "--remove-method", "/health/GET"]);
    assert_eq!(s["methods"], serde_json::json!([]));
    assert_eq!(tgj(&p, &["stages", "get", "petstore/dev"])["methods"][0]["throttle"]["burst_limit"], 1);

    let names = |v: &Value| -> Vec<String> {
        let mut n: Vec<String> =
            v["stages"].as_array().unwrap().iter().map(|s| str_of(s, "stage").to_string()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&tgj(&p, &["stages", "list"])), ["other/prod", "petstore/dev", "petstore/prod"]);
    assert_eq!(names(&tgj(&p, &["stages", "list", "--api", "petstore"])), ["petstore/dev", "petstore/prod"]);
    let d = tgj(&p, &["stages", "delete", "petstore/dev"]);
    assert_eq!(d, serde_json::json!({ "stage": "petstore/dev", "deleted": true }));
    tg(&p, &["stages", "get", "petstore/dev"]).failed("NOT_FOUND");
    assert_eq!(tgj(&p, &["stages", "delete-api", "other"]), serde_json::json!({ "api_id": "other", "deleted": true }));
    assert_eq!(names(&tgj(&p, &["stages", "list"])), ["petstore/prod"]);
}

#[test]
fn failures_exit_2_with_code_and_message() {
    let p = server(&[]);
    // The server's answers.
    let err = tg(&p, &["keys", "get", "nosuchkey", "--json"]).failed("NOT_FOUND").to_string();
    assert!(err.contains("nosuchkey"), "{err}");
    tg(&p, &["keys", "create", "--name", "x", "--value", "short"]).failed("INVALID_ARGUMENT");
    tg(&p, &["plans", "create", "--name", "x", "--stage", "no/such"]).failed("NOT_FOUND");
    tg(&p, &["stages", "put", "a/b"]).ok();
    let err = tg(&p, &["plans", "create", "--name", "x", "--stage", "a/b", "--rate", "-1", "--burst", "1"])
        .failed("INVALID_ARGUMENT")
        .to_string();
    assert!(err.contains("rate_limit"), "names the field: {err}");
    let day = today();
    tg(&p, &["usage", "get", "nosuchplan", "--start", &day, "--end", &day]).failed("NOT_FOUND");

    // Credentials.
    let out = run_with(&p, None, &["keys", "list"]);
    out.failed("UNAUTHENTICATED");
    let out = run_with(&p, Some("wrong-token-456"), &["keys", "list"]);
    out.failed("UNAUTHENTICATED");
    assert!(!out.stderr.contains("wrong-token-456") && !out.stdout.contains("wrong-token-456"));
    let out = run_with(&p, None, &["keys", "list", "--admin-token", TOKEN, "--json"]);
    assert_eq!(out.json()["keys"], serde_json::json!([]), "--admin-token works like the variable");
    let help = run_with(&p, Some(TOKEN), &["keys", "list", "--help"]);
    assert!(!help.stdout.contains(TOKEN), "help never shows the token: {}", help.stdout);

    // Caught before calling: usage mistakes and malformed input.
    for args in [
        &["stages", "put", "a/b", "--method", "/x/GET", "--rate", "1"][..],
        &["stages", "put", "a/b", "--burst", "1"],
        &["plans", "create", "--name", "x", "--stage", "a/b", "--quota-limit", "5"],
        &["plans", "create", "--name", "x", "--stage", "a/b", "--quota-limit", "5", "--quota-period", "YEAR"],
        &["plans", "update", "x", "--rate", "1", "--burst", "1", "--no-throttle"],
        &["plans", "update", "x", "--method-throttle", "a/b:/x/GET:1"],
        &["plans", "update", "x", "--remove-method-throttle", "a/b"],
        &["keys", "update", "x", "--enabled", "maybe"],
        &["keys", "update", "x", "--expires-at", "tomorrow"],
        &["keys", "create", "--name", "x", "--expires-at", "2030-02-30"],
        &["usage", "get", "x", "--start", "2024-13-01", "--end", "2024-12-01"],
        &["usage", "get", "x", "--start", "2024-01-01", "--end", "2024-01-02", "--json", "--csv"],
    ] {
        let out = tg(&p, args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("error"), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
    let err = tg(&p, &["usage", "get", "x", "--start", "2024-1-1", "--end", "2024-01-02"]).stderr;
    assert!(err.contains("--start") && err.contains("YYYY-MM-DD"), "{err}");

    // The data-plane port: no Admin there, and the hint says where it is.
    let err = run_at(&p.url(), Some(TOKEN), &["keys", "list"]).failed("UNIMPLEMENTED").to_string();
    assert!(err.contains("--admin-listen") && err.contains("http://127.0.0.1:50052"), "{err}");

    // Nothing listening.
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["keys", "list", "--server", "http://127.0.0.1:1", "--admin-token", TOKEN])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
    assert!(!p.log().contains(TOKEN) && !p.log().contains("wrong-token-456"), "tokens never reach the log");
}
