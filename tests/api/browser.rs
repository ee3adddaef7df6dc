//! A headless Chromium for the portal's tests, driven through chromedriver's WebDriver API
//! (W3C WebDriver, JSON over HTTP) with the tests' own HTTP client: Debian's `chromium` and
//! `chromium-driver`, started here on a free loopback port and stopped when the test ends.
//!
//! Without them the tests fail, naming what to install, unless the run opts out with
//! `BRAID_SKIP_BROWSER_TESTS=1`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// WebDriver's codes for the Tab and Enter keys.
pub(crate) const TAB: &str = "\u{E004}";
pub(crate) const ENTER: &str = "\u{E007}";
/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub(crate) struct Browser {
    driver: Child,
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    _profile: tempfile::TempDir,
}

/// Whether this run opted out of browser tests.
pub(crate) fn skipped() -> bool {
    if std::env::var_os("BRAID_SKIP_BROWSER_TESTS").is_some_and(|value| value == "1") {
        eprintln!("BRAID_SKIP_BROWSER_TESTS=1: this browser test does not run");
        return true;
    }
    false
}

/// Where the tests write screenshots of each page, for a person to look at.
pub(crate) fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("portal-screenshots");
    std::fs::create_dir_all(&dir).expect("the screenshot folder");
    dir
}

impl Browser {
    /// A browser (see [`Browser::start_with`]) with a camera that plays `video` (a Y4M file)
    /// and is allowed without asking.
    pub(crate) async fn with_camera(video: &std::path::Path) -> Browser {
        let flags = [
            "--use-fake-device-for-media-stream".to_owned(),
            "--use-fake-ui-for-media-stream".to_owned(),
            format!("--use-file-for-fake-video-capture={}", video.display()),
        ];
        Browser::start_with(false, &flags).await
    }

    /// Starts chromedriver and a headless Chromium with a fresh profile (a phone-sized window
    /// when `phone`) and the `extra` flags.
    pub(crate) async fn start_with(phone: bool, extra: &[String]) -> Browser {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(tool).exists(),
                "{tool} is missing: install Debian's chromium and chromium-driver (.ci/run does), \
                 or opt out with BRAID_SKIP_BROWSER_TESTS=1"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http.get(format!("{root}/status")).send().await.ok().map(|r| r.status().is_success());
            if ready == Some(true) {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not answer on port {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let size = if phone { "--window-size=390,844" } else { "--window-size=1280,900" };
        let mut args = vec![
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            size,
        ];
        let profile_flag = format!("--user-data-dir={}", profile.path().display());
        args.push(&profile_flag);
        args.extend(extra.iter().map(String::as_str));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let reply: Value =
            http.post(format!("{root}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let id = reply["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no browser session: {reply}"));
        Browser { session: format!("{root}/session/{id}"), driver, http, _profile: profile }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply: Value = request.send().await.expect("chromedriver answers").json().await.expect("JSON");
        if let Some(error) = reply["value"]["error"].as_str() {
            panic!("WebDriver {path}: {error}: {}", reply["value"]["message"]);
        }
        reply["value"].clone()
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    pub(crate) async fn url(&self) -> String {
        self.command(reqwest::Method::GET, "/url", None).await.as_str().unwrap_or_default().to_owned()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns its value.
    pub(crate) async fn run(&self, script: &str, args: Value) -> Value {
        self.command(reqwest::Method::POST, "/execute/sync", Some(json!({"script": script, "args": args}))).await
    }

    /// The elements matching a CSS selector now.
    async fn find_all(&self, css: &str) -> Vec<String> {
        let found = self
            .command(reqwest::Method::POST, "/elements", Some(json!({"using": "css selector", "value": css})))
            .await;
        found.as_array().into_iter().flatten().filter_map(|e| e[ELEMENT].as_str().map(str::to_owned)).collect()
    }

    /// Waits (up to 20 s) until `css` matches an element and returns the first.
    pub(crate) async fn wait_for(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(first) = self.find_all(css).await.into_iter().next() {
                return first;
            }
            if Instant::now() > deadline {
                let page = self.run("return document.body ? document.body.innerText : ''", json!([])).await;
                panic!("nothing matches {css} at {}; the page reads: {page}", self.url().await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn click(&self, css: &str) {
        let element = self.wait_for(css).await;
        self.command(reqwest::Method::POST, &format!("/element/{element}/click"), Some(json!({}))).await;
    }

    pub(crate) async fn type_into(&self, css: &str, text: &str) {
        let element = self.wait_for(css).await;
        self.command(reqwest::Method::POST, &format!("/element/{element}/value"), Some(json!({"text": text}))).await;
    }

    pub(crate) async fn text(&self, css: &str) -> String {
        let element = self.wait_for(css).await;
        self.command(reqwest::Method::GET, &format!("/element/{element}/text"), None)
            .await
            .as_str()
            .unwrap_or("")
            .into()
    }

    pub(crate) async fn attribute(&self, css: &str, name: &str) -> String {
        let element = self.wait_for(css).await;
        let value = self.command(reqwest::Method::GET, &format!("/element/{element}/attribute/{name}"), None).await;
        value.as_str().unwrap_or("").to_owned()
    }

    /// Presses and releases a key on whatever has the focus (`"\u{E004}"` is Tab, `"\u{E007}"`
    /// Enter), as a person at a keyboard would.
    pub(crate) async fn press(&self, key: &str) {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]});
        self.command(reqwest::Method::POST, "/actions", Some(actions)).await;
    }

    /// Presses Tab until the element matching `css` has the focus (at most `max` times).
    pub(crate) async fn tab_to(&self, css: &str, max: usize) {
        for _ in 0..max {
            self.press(TAB).await;
            if self.run("return document.activeElement.matches(arguments[0]);", json!([css])).await == true {
                return;
            }
        }
        let at = self.run("return document.activeElement.outerHTML.slice(0, 200);", json!([])).await;
        panic!("{css} is not reached with {max} Tabs; the focus is on {at}");
    }

    /// Resizes the window (e.g. to a phone's 390 × 844).
    pub(crate) async fn resize(&self, width: u32, height: u32) {
        self.command(reqwest::Method::POST, "/window/rect", Some(json!({"width": width, "height": height}))).await;
    }

    /// Writes a PNG of the page to [`screenshot_dir`]`/<name>.png`.
    pub(crate) async fn screenshot(&self, name: &str) {
        let data = self.command(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(data.as_str().unwrap_or("")).expect("a PNG");
        std::fs::write(screenshot_dir().join(format!("{name}.png")), png).expect("the screenshot is written");
    }

    /// Runs axe-core (from npm, installed by `conformance/setup.sh`) on the page and panics
    /// with every serious or critical violation it finds.
    pub(crate) async fn assert_accessible(&self, page: &str) {
        let script = format!(
            "{}\nconst done = arguments[arguments.length - 1];\n\
             axe.run(document, {{resultTypes: ['violations']}}).then(result => done(result.violations\n\
               .filter(v => v.impact === 'serious' || v.impact === 'critical')\n\
               .map(v => ({{id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' '))}}))))\n\
             .catch(error => done({{error: String(error)}}));",
            axe_source()
        );
        let found =
            self.command(reqwest::Method::POST, "/execute/async", Some(json!({"script": script, "args": []}))).await;
        assert!(found.is_array(), "axe-core did not run on {page}: {found}");
        assert_eq!(found, json!([]), "serious or critical accessibility violations on {page}");
    }

    /// Ends the browser session (Chromium exits) and chromedriver.
    pub(crate) async fn close(mut self) {
        let _ = self.http.delete(&self.session).send().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    /// A failed test still stops chromedriver (which takes Chromium down with it).
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// axe-core's script. Installed by `conformance/setup.sh` when missing; a test fails if it cannot
/// be (`BRAID_SKIP_BROWSER_TESTS=1` opts out of the browser tests altogether).
fn axe_source() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance/node_modules/axe-core/axe.min.js");
    if !path.exists() {
        let setup = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance/setup.sh");
        let status = Command::new("bash").arg(setup).status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()) && path.exists(),
            "axe-core is missing and conformance/setup.sh could not install it ({status:?}): it needs npm"
        );
    }
    std::fs::read_to_string(path).expect("axe-core's script")
}
