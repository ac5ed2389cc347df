//! The web console (`/console/`, docs/http.md "The web console"): the
//! committed bundle matches its sources, the server serves it with its
//! content types and Content-Security-Policy, and a real browser (headless
//! Chromium driven over WebDriver by fantoccini, against a real `tollgate
//! serve` on a real Redis) signs in, creates a key, sees its usage change
//! after Authorize calls, and disables it.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/test installs
//! them with apt when missing); without them the browser test fails saying
//! so, it never skips. `TOLLGATE_SCREENSHOTS=1` also writes a screenshot of
//! each page to docs/img/ (the README shows them).

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::http;
use support::redis::RedisServer;
use support::{quickstart, TollgateProcess, ADMIN_TOKEN};

const HOW_TO_INSTALL: &str = "the console's browser tests need Chromium and its WebDriver: \
    install them with `apt-get install -y chromium chromium-driver` (scripts/test does it when they are missing), \
    or name them in TOLLGATE_CHROMIUM and TOLLGATE_CHROMEDRIVER";

fn console_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("console")
}

// ---- the bundle ----

/// What scripts/build-console writes to console/dist/SOURCES.sha256: the
/// SHA-256 of each source file, sorted by path (bytewise), as `sha256sum`
/// prints them.
fn sources_listing(dir: &Path) -> String {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let entry = entry.unwrap();
            let name = format!("{rel}/{}", entry.file_name().to_string_lossy());
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), &name, out);
            } else {
                out.push(name);
            }
        }
    }
    let mut files = vec![];
    walk(&dir.join("src"), "src", &mut files);
    files.extend(["index.html", "package.json", "package-lock.json", "vite.config.js"].map(String::from));
    files.sort();
    files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("read console/{f}: {e}"));
            format!("{}  {f}\n", hex::encode(Sha256::digest(bytes)))
        })
        .collect()
}

#[test]
fn console_bundle_matches_its_sources() {
    let dir = console_dir();
    let expected = sources_listing(&dir);
    let committed = std::fs::read_to_string(dir.join("dist/SOURCES.sha256")).unwrap_or_default();
    if committed != expected {
        let lines = |s: &str| {
            s.lines()
                .map(|l| l.split_once("  ").map(|(h, f)| (f.to_string(), h.to_string())))
                .collect::<Option<BTreeMap<_, _>>>()
        };
        let (now, then) = (lines(&expected).unwrap_or_default(), lines(&committed).unwrap_or_default());
        let changed: Vec<&String> = now
            .keys()
            .chain(then.keys())
            .filter(|f| now.get(*f) != then.get(*f))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        panic!(
            "console/dist was not built from the sources in console/ (changed since: {changed:?}): \
             run scripts/build-console and commit console/dist"
        );
    }
    let mut total = 0;
    for f in ["index.html", "app.js", "app.css", "favicon.svg"] {
        total += std::fs::metadata(dir.join("dist").join(f)).unwrap_or_else(|e| panic!("console/dist/{f}: {e}")).len();
    }
    assert!(total < 150 * 1024, "the console's bundle is {total} bytes: keep it under 150 KB");
}

// ---- serving it ----

#[test]
fn console_is_served_with_content_types_and_a_strict_csp() {
    let p = TollgateProcess::start(&["--http-listen", "127.0.0.1:0"]);
    let addr = p.http_addr();

    let r = http::get(addr, "/console", &[]);
    assert_eq!(r.status, 308, "{}", r.text());
    assert_eq!(r.header("location"), Some("/console/"));

    let dist = console_dir().join("dist");
    for (path, file, content_type) in [
        ("/console/", "index.html", "text/html; charset=utf-8"),
        ("/console/index.html", "index.html", "text/html; charset=utf-8"),
        ("/console/app.js", "app.js", "text/javascript; charset=utf-8"),
        ("/console/app.css", "app.css", "text/css; charset=utf-8"),
        ("/console/favicon.svg", "favicon.svg", "image/svg+xml"),
    ] {
        let r = http::get(addr, path, &[]);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        assert_eq!(r.header("content-type"), Some(content_type), "GET {path}");
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(csp.starts_with("default-src 'self';"), "GET {path}: CSP {csp:?}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.body, std::fs::read(dist.join(file)).unwrap(), "GET {path} serves console/dist/{file}");
    }
    let html = http::get(addr, "/console/", &[]).text();
    assert!(html.contains("src=\"/console/app.js\"") && html.contains("href=\"/console/app.css\""), "{html}");
    assert!(
        !html.contains("<style") && !html.contains("style=") && !html.contains("http"),
        "nothing inline or remote: {html}"
    );

    let r = http::get(addr, "/console/secrets.txt", &[]);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], "NOT_FOUND");
    assert_eq!(http::send(addr, "POST", "/console/", &[], b"").status, 405);
}

// ---- in a browser ----

/// A chromedriver on a free loopback port, killed on drop.
struct ChromeDriver {
    child: Child,
    url: String,
    chromium: String,
}

impl ChromeDriver {
    fn start() -> Self {
        let chromium = std::env::var("TOLLGATE_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let driver = std::env::var("TOLLGATE_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let chromium = which(&chromium).unwrap_or_else(|| panic!("{chromium:?} not found: {HOW_TO_INSTALL}"));
        let driver = which(&driver).unwrap_or_else(|| panic!("{driver:?} not found: {HOW_TO_INSTALL}"));
        let mut child = Command::new(driver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start chromedriver: {e}; {HOW_TO_INSTALL}"));
        // "ChromeDriver was started successfully on port 40207."
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.split("started successfully on port ").nth(1) {
                    let _ = tx.send(port.trim_end_matches('.').trim().to_string());
                }
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("chromedriver did not say its port within 20 s")
        });
        // It says so a moment before it accepts connections.
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "chromedriver does not accept connections on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, url: format!("http://{addr}"), chromium }
    }

    /// A new headless browser session.
    async fn browser(&self, profile: &Path) -> Client {
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,900", "--force-device-scale-factor=1", "--no-first-run",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let caps = caps.as_object().unwrap().clone();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("a Chromium session through chromedriver: {e}; {HOW_TO_INSTALL}"))
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `name` as a path, or found on PATH.
fn which(name: &str) -> Option<String> {
    if name.contains('/') {
        return Path::new(name).is_file().then(|| name.to_string());
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
        .map(|p| p.display().to_string())
}

/// The browser and the page it shows.
struct Page {
    c: Client,
    base: String,
    shots: Option<PathBuf>,
}

impl Page {
    /// Goes to `#/route` of the console.
    async fn open(&self, route: &str) {
        self.c.goto(&format!("{}/console/#/{route}", self.base)).await.expect("navigate");
    }

    /// Waits (up to 10 s) until `css` matches an element whose text
    /// satisfies `ok`, and answers that text.
    async fn text_when(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = String::from("(no such element)");
        loop {
            if let Ok(el) = self.c.find(Locator::Css(css)).await {
                if let Ok(t) = el.text().await {
                    if ok(&t) {
                        return t;
                    }
                    last = t;
                }
            }
            if Instant::now() > deadline {
                panic!("{css}: never as expected; last text {last:?}; page:\n{}", self.body_text().await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to 10 s) until `css` matches an element, and answers its `attr`.
    async fn attr_when(&self, css: &str, attr: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = None;
        loop {
            if let Ok(el) = self.c.find(Locator::Css(css)).await {
                if let Ok(Some(v)) = el.attr(attr).await {
                    if ok(&v) {
                        return v;
                    }
                    last = Some(v);
                }
            }
            if Instant::now() > deadline {
                panic!("{css}[{attr}]: never as expected; last {last:?}; page:\n{}", self.body_text().await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn body_text(&self) -> String {
        match self.c.find(Locator::Css("body")).await {
            Ok(b) => b.text().await.unwrap_or_default(),
            Err(e) => format!("(no body: {e})"),
        }
    }

    async fn fill(&self, css: &str, text: &str) {
        let el = self.c.wait().for_element(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
        el.clear().await.unwrap();
        el.send_keys(text).await.unwrap();
    }

    async fn click(&self, css: &str) {
        let el = self.c.wait().for_element(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
        el.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// With TOLLGATE_SCREENSHOTS=1: docs/img/console-NAME.png.
    async fn screenshot(&self, name: &str) {
        if let Some(dir) = &self.shots {
            let png = self.c.screenshot().await.expect("screenshot");
            std::fs::write(dir.join(format!("console-{name}.png")), png).expect("write the screenshot");
        }
    }
}

/// `POST /v1/authorize` for the quickstart's `GET /pets`.
fn authorize(addr: SocketAddr, key: &str) -> Value {
    let body = json!({"api_key": key, "stage": "petstore/prod", "method": "/pets/GET"}).to_string();
    let r = tokio::task::block_in_place(|| {
        http::send(addr, "POST", "/v1/authorize", &[("content-type", "application/json")], body.as_bytes())
    });
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_browser_signs_in_creates_a_key_charts_its_usage_and_disables_it() {
    let driver = ChromeDriver::start();
    let redis = RedisServer::start();
    let config = quickstart();
    let server = TollgateProcess::start_with_env(
        &["--config", config.to_str().unwrap(), "--redis-url", &redis.url(), "--http-listen", "127.0.0.1:0"],
        &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    server.wait_serving().await;
    let addr = server.http_addr();
    let profile = tempfile::tempdir().unwrap();
    let shots = std::env::var("TOLLGATE_SCREENSHOTS").is_ok_and(|v| v == "1").then(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    });
    let page = Page { c: driver.browser(profile.path()).await, base: format!("http://{addr}"), shots };

    // /console redirects to the console, which asks for the token; a wrong
    // one is refused with the API's error.
    page.c.goto(&format!("{}/console", page.base)).await.unwrap();
    assert_eq!(page.c.current_url().await.unwrap().path(), "/console/");
    page.fill("#token", "not-the-admin-token-000").await;
    page.screenshot("signin").await;
    page.click("#signin-button").await;
    let error = page.text_when("#signin-error", |t| !t.is_empty()).await;
    assert!(error.contains("401") && error.contains("UNAUTHENTICATED"), "{error}");

    // The right one opens the overview: live counts, store and catalog.
    page.fill("#token", ADMIN_TOKEN).await;
    page.click("#signin-button").await;
    page.text_when("#store-state [data-fact=kind]", |t| t == "redis (single)").await;
    page.text_when("#catalog-state [data-fact=plans]", |t| t == "1").await;
    page.text_when("#store-state [data-fact=store-ready]", |t| t == "yes").await;

    // Keys: create one in the quickstart plan; its value is shown once.
    page.open("keys").await;
    page.fill("#new-name", "browser-test").await;
    page.fill("#new-customer", "acme-browser").await;
    page.c.wait().for_element(Locator::Css("#new-plan")).await.unwrap().select_by_value("basic").await.unwrap();
    page.click("#create-key").await;
    let value = page.text_when("#secret-value", |t| !t.is_empty()).await;
    assert_eq!(value.len(), 40, "a generated value: {value:?}");
    let key_id = page.attr_when("#secret", "data-key-id", |v| !v.is_empty()).await;
    page.text_when("#message", |t| t.contains("subscribed to basic")).await;
    page.text_when(&format!("tr[data-key-id='{key_id}'] td.state"), |t| t == "enabled").await;
    page.screenshot("keys").await;
    // Shown once: the list has only its first characters.
    let listed = page.text_when("#keys", |t| t.contains(&key_id)).await;
    assert!(!listed.contains(&value), "the key's value is never shown again");

    // Usage: none yet; after three allowed calls the chart's data says 3.
    page.open(&format!("usage?plan=basic&key={key_id}&days=7")).await;
    page.attr_when("#usage-total", "data-total", |v| v == "0").await;
    for _ in 0..3 {
        let d = authorize(addr, &value);
        assert_eq!(d["reason"], "OK", "{d}");
    }
    page.click("#usage-refresh").await;
    page.attr_when("#usage-total", "data-total", |v| v == "3").await;
    page.attr_when("#usage-chart", "data-series", |v| v == "1").await;
    page.attr_when("#usage-chart", "data-points", |v| v == "7").await;
    page.click("button.range[data-days='30']").await;
    page.attr_when("#usage-chart", "data-points", |v| v == "30").await;
    page.attr_when("#usage-total", "data-total", |v| v == "3").await;

    // The plan's usage, all keys: the demo key's calls count too.
    authorize(addr, support::DEMO_KEY);
    page.open("usage?plan=basic&days=30").await;
    page.attr_when("#usage-total", "data-total", |v| v == "4").await;
    page.attr_when("#usage-total", "data-keys", |v| v == "2").await;
    page.screenshot("usage").await;
    page.attr_when("#usage-total", "data-zone", |v| v == "UTC").await;

    // A plan whose quota has a time zone: its days are local dates there
    // (the server counts its usage per local date), up to today in that
    // zone. Kiritimati is UTC+14: its date is not the UTC date from 10:00 UTC.
    let zone = "Pacific/Kiritimati";
    let today = || {
        let tz = jiff::tz::TimeZone::get(zone).unwrap();
        tz.to_datetime(jiff::Timestamp::now()).date().to_string()
    };
    let body = json!({"quota": {"limit": 8, "period": "DAY", "time_zone": zone}}).to_string();
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let headers = [("content-type", "application/json"), ("authorization", bearer.as_str())];
    let r = tokio::task::block_in_place(|| http::send(addr, "PATCH", "/v1/plans/basic", &headers, body.as_bytes()));
    assert_eq!(r.status, 200, "{}", r.text());
    let before = today();
    page.open("usage?plan=basic&days=7").await;
    page.attr_when("#usage-total", "data-zone", |v| v == zone).await;
    let end = page.attr_when("#usage-total", "data-end", |v| !v.is_empty()).await;
    assert!(end == before || end == today(), "the last day is today in {zone} ({before}), not {end}");
    let text = page.text_when("#usage-total", |t| t.contains(zone)).await;
    assert!(text.contains(&format!("to {end}, {zone})")), "{text}");
    // (back to UTC for the plan checks below)
    let body = json!({"quota": {"limit": 8, "period": "DAY"}}).to_string();
    let r = tokio::task::block_in_place(|| http::send(addr, "PATCH", "/v1/plans/basic", &headers, body.as_bytes()));
    assert_eq!(r.status, 200, "{}", r.text());

    // The overview counts the decisions (THROTTLED ones too).
    page.open("overview").await;
    page.text_when("tr[data-reason=OK] td.total", |t| t == "4").await;
    if page.shots.is_some() {
        // A few seconds of traffic, for a chart worth a screenshot.
        for i in 0..40 {
            authorize(addr, support::DEMO_KEY);
            authorize(addr, if i % 3 == 0 { "tgwrongkey0000000000000000000000000000000" } else { &value });
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        page.text_when("tr[data-reason=THROTTLED] td.rate", |t| t != "–").await;
        page.screenshot("overview").await;
    }

    // Plans: the quickstart plan's limits, with the new key subscribed.
    page.open("plans").await;
    page.text_when("section[data-plan-id=basic] dd.throttle", |t| t == "1/s, bursts of 5").await;
    page.text_when("section[data-plan-id=basic] dd.quota", |t| t == "8 requests a day (UTC)").await;
    page.text_when(&format!("section[data-plan-id=basic] tr[data-key-id='{key_id}']"), |t| t.contains("browser-test"))
        .await;
    page.screenshot("plans").await;

    // Search by customer, disable the key: the console shows it and
    // Authorize refuses it.
    page.open("keys").await;
    page.c.wait().for_element(Locator::Css("#search-by")).await.unwrap().select_by_value("customer").await.unwrap();
    page.fill("#search", "acme-browser").await;
    page.click("#key-search button[type=submit]").await;
    page.attr_when("#keys tbody tr", "data-key-id", |v| v == key_id).await;
    page.click(&format!("tr[data-key-id='{key_id}'] button.toggle")).await;
    page.text_when(&format!("tr[data-key-id='{key_id}'] td.state"), |t| t == "disabled").await;
    page.attr_when(&format!("tr[data-key-id='{key_id}']"), "data-enabled", |v| v == "false").await;
    assert_eq!(authorize(addr, &value)["reason"], "INVALID_API_KEY");

    // Rotate: a new value, shown once, different from the old one.
    page.click(&format!("tr[data-key-id='{key_id}'] form.rotate button")).await;
    let rotated = page.text_when("#secret-value", |t| !t.is_empty() && t != value).await;
    assert_eq!(rotated.len(), 40);

    // An error of the API is shown as it says it: a key that does not exist.
    page.open("plans").await;
    page.fill("section[data-plan-id=basic] form.subscribe input", "nosuchkey").await;
    page.click("section[data-plan-id=basic] form.subscribe button").await;
    let error = page.text_when("#message[data-kind=error]", |t| !t.is_empty()).await;
    assert!(error.starts_with("404 NOT_FOUND: "), "{error}");

    // Nothing broke the Content-Security-Policy.
    let body = page.c.find(Locator::Css("body")).await.unwrap();
    assert_eq!(body.attr("data-csp-violations").await.unwrap(), None, "CSP violations");

    // Signing out forgets the token.
    page.click("#signout").await;
    page.c.wait().for_element(Locator::Css("#signin")).await.unwrap();
    let stored = page.c.execute("return sessionStorage.length", vec![]).await.unwrap();
    assert_eq!(stored, json!(0));
    page.c.clone().close().await.unwrap();
    assert!(!server.log().contains(ADMIN_TOKEN) && !server.log().contains(&value), "no secret in the log");
}
