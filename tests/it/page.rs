//! The status page (issue 19) on the real binary: its login, cookie and cross-site rules, what
//! it shows, its buttons; then end to end in a real headless Chromium, driven over the DevTools
//! protocol.
//!
//! Chromium (Debian package `chromium`) is installed by `scripts/install-chromium.sh` when it is
//! missing and we are root (`.ci/run` runs it first); under `CI=true` a missing browser fails
//! the test, elsewhere it is skipped with the reason printed. The browser is driven over
//! `--remote-debugging-pipe` (the protocol's JSON messages, each ended by a NUL, on the
//! browser's descriptors 3 and 4, which a shell sets up before it execs the browser: the tests
//! may not use `unsafe` for `pre_exec`), so no WebSocket client is needed.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::support::{eventually, free_port, http, Daemon, PATIENCE};

/// An answer: status, head (lower-case header lines) and body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    /// The value of header `name` (lower case), if present.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim().eq_ignore_ascii_case(name)).then(|| value.trim())
        })
    }
}

/// `method path` with `headers` and a form `body`, on a connection of its own.
fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut text = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        text.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    stream.write_all(text.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    Answer {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

const TOKEN: &str = "s3cret-token";

fn jobs_file(port: u16, token: bool) -> String {
    let token = if token {
        format!("http_token = \"{TOKEN}\"\n")
    } else {
        String::new()
    };
    format!(
        r#"
[daemon]
http = "127.0.0.1:{port}"
{token}shutdown_timeout = "1s"
timezone = "Europe/Berlin"

[jobs.evil]
every = "1h"
run_on_start = true
shell = "echo '<script>alert(1)</script>'"

[jobs.fails]
every = "1h"
run_on_start = true
shell = "echo nope >&2; exit 3"

[jobs.slow]
every = "1h"
run_on_start = true
shell = "sleep 300"

[jobs.beat]
every = "1s"
log = "none"
handler = "log"

[jobs.nightly]
cron = "0 3 * * *"
command = ["true"]
"#
    )
}

#[test]
fn the_page_needs_a_login_shows_the_jobs_and_refuses_cross_site_posts() {
    let port = free_port();
    let d = Daemon::start(&jobs_file(port, true));
    d.wait_log("HTTP endpoint listening");
    let same = [("Sec-Fetch-Site", "same-origin")];

    // Not logged in: the page sends a browser to the login form; the form and the stylesheet
    // are open, and every answer carries the policy.
    let answer = request(port, "GET", "/ui/jobs/evil", &[], "");
    assert_eq!(answer.status, 303, "{}", answer.head);
    assert_eq!(
        answer.header("location"),
        Some("/login?next=%2Fui%2Fjobs%2Fevil")
    );
    let form = request(port, "GET", "/login?next=/ui/jobs/evil", &[], "");
    assert_eq!(form.status, 200);
    assert!(form.body.contains("name=\"token\""), "{}", form.body);
    let csp = form.header("content-security-policy").unwrap_or("");
    assert!(
        csp.starts_with("default-src 'none'; style-src 'self'"),
        "{csp}"
    );
    assert_eq!(request(port, "GET", "/ui/page.css", &[], "").status, 200);

    // A wrong token, a login from elsewhere, then the right one.
    let wrong = request(port, "POST", "/login", &same, "token=nope&next=%2F");
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    let body = format!("token={TOKEN}&next=%2Fui%2Fjobs%2Fevil");
    assert_eq!(request(port, "POST", "/login", &[], &body).status, 403);
    let cross = [("Origin", "http://evil.example")];
    assert_eq!(request(port, "POST", "/login", &cross, &body).status, 403);
    let login = request(port, "POST", "/login", &same, &body);
    assert_eq!(login.status, 303, "{}", login.head);
    assert_eq!(login.header("location"), Some("/ui/jobs/evil"));
    let set_cookie = login.header("set-cookie").expect("a cookie").to_owned();
    assert!(
        set_cookie.contains("; HttpOnly") && set_cookie.contains("; SameSite=Strict"),
        "{set_cookie}"
    );
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    assert!(
        !set_cookie.contains(TOKEN),
        "the cookie is not the token: {set_cookie}"
    );
    let cookie = set_cookie.split(';').next().expect("name=value").to_owned();
    let with_cookie = [("Cookie", cookie.as_str())];
    // Behind a TLS proxy the cookie is Secure.
    let proxied = [
        ("Sec-Fetch-Site", "same-origin"),
        ("X-Forwarded-Proto", "https"),
    ];
    let login = request(port, "POST", "/login", &proxied, &body);
    assert!(login
        .header("set-cookie")
        .is_some_and(|c| c.contains("; Secure")));

    // The cookie opens the page, not the JSON API; the bearer token opens both.
    let page = request(port, "GET", "/", &with_cookie, "");
    assert_eq!(page.status, 200);
    for job in ["evil", "fails", "slow", "beat", "nightly"] {
        assert!(
            page.body.contains(&format!("href=\"/ui/jobs/{job}\"")),
            "{job}: {}",
            page.body
        );
    }
    assert!(
        page.body.contains("every day at 03:00 (Europe/Berlin)"),
        "{}",
        page.body
    );
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(
        request(port, "GET", "/", &[("Authorization", &bearer)], "").status,
        200
    );
    assert_eq!(request(port, "GET", "/jobs", &with_cookie, "").status, 401);
    assert_eq!(
        request(port, "GET", "/", &[("Cookie", "tickd_session=forged")], "").status,
        303
    );

    // The job's output is shown as text.
    eventually("evil's run shows with its output", || {
        request(port, "GET", "/ui/jobs/evil", &with_cookie, "")
            .body
            .contains("&lt;script&gt;alert(1)&lt;/script&gt;")
    });
    let evil = request(port, "GET", "/ui/jobs/evil", &with_cookie, "").body;
    assert!(!evil.contains("<script"), "{evil}");

    // Filter and sort, on the server.
    let filtered = request(port, "GET", "/?q=EVI&sort=failures", &with_cookie, "").body;
    assert!(
        filtered.contains("/ui/jobs/evil") && !filtered.contains("/ui/jobs/slow"),
        "{filtered}"
    );
    eventually("fails has failed", || {
        request(
            port,
            "GET",
            "/jobs/fails",
            &[("Authorization", &bearer)],
            "",
        )
        .body
        .contains("\"failure\":1")
    });
    let by_failures = request(port, "GET", "/?sort=failures", &with_cookie, "").body;
    let first = by_failures
        .find("/ui/jobs/")
        .map(|at| &by_failures[at..at + 15]);
    assert_eq!(first, Some("/ui/jobs/fails\""), "{by_failures}");

    // The buttons: no session, cross-site, from elsewhere: refused; from the page: done.
    let post = |path: &str, headers: &[(&str, &str)]| request(port, "POST", path, headers, "");
    assert_eq!(post("/ui/jobs/slow/run", &same).status, 401);
    let cross_site = [
        ("Cookie", cookie.as_str()),
        ("Sec-Fetch-Site", "cross-site"),
    ];
    assert_eq!(post("/ui/jobs/slow/run", &cross_site).status, 403);
    let elsewhere = [
        ("Cookie", cookie.as_str()),
        ("Origin", "http://evil.example"),
    ];
    assert_eq!(post("/ui/jobs/slow/run", &elsewhere).status, 403);
    let no_origin = [("Cookie", cookie.as_str())];
    assert_eq!(post("/ui/jobs/slow/run", &no_origin).status, 403);
    let ours = [
        ("Cookie", cookie.as_str()),
        ("Origin", &*format!("http://127.0.0.1:{port}")),
    ];
    let refused = post("/ui/jobs/slow/run", &ours);
    assert_eq!(refused.status, 303);
    assert_eq!(
        refused.header("location"),
        Some("/ui/jobs/slow?done=refused")
    );
    let slow = request(port, "GET", "/ui/jobs/slow?done=refused", &with_cookie, "").body;
    assert!(
        slow.contains(
            "Run now refused: a run is still going; the overlap policy refuses this one."
        ),
        "{slow}"
    );
    assert!(slow.contains("1 running</span> for "), "{slow}");
    let started = post("/ui/jobs/evil/run", &ours);
    let location = started.header("location").unwrap_or("").to_owned();
    let run_id = location
        .strip_prefix("/ui/jobs/evil?done=started&run=")
        .expect("started, with its run id")
        .to_owned();
    eventually("the run started from the page shows in the history", || {
        request(port, "GET", "/ui/jobs/evil", &with_cookie, "")
            .body
            .contains(&format!("<th scope=\"row\">{run_id}</th>"))
    });
    assert_eq!(
        post("/ui/jobs/evil/pause", &ours).header("location"),
        Some("/ui/jobs/evil?done=paused")
    );
    let (_, json) = http(port, "GET", "/jobs/evil", Some(TOKEN));
    assert!(json.contains("\"paused\":true"), "{json}");
    assert!(request(port, "GET", "/", &with_cookie, "")
        .body
        .contains("paused</span>"));
    assert_eq!(post("/ui/jobs/nope/run", &ours).status, 404);

    // A refused reload shows with its problem; the configuration loaded stays.
    std::fs::write(
        d.path("jobs.toml"),
        "[jobs.broken]\nevery = \"0s\"\nhandler = \"log\"\n",
    )
    .expect("write");
    d.signal(Signal::SIGHUP);
    eventually("the refused reload shows", || {
        let page = request(port, "GET", "/", &with_cookie, "").body;
        page.contains("refused</span>") && page.contains("must be greater than zero")
    });

    // Logging out ends the session for this browser (the cookie is cleared).
    let out = post("/logout", &ours);
    assert!(out
        .header("set-cookie")
        .is_some_and(|c| c.contains("Max-Age=0")));
    d.signal(Signal::SIGTERM);
}

#[test]
fn without_a_token_on_loopback_the_page_is_open_but_its_buttons_still_refuse_other_sites() {
    let port = free_port();
    let d = Daemon::start(&jobs_file(port, false));
    d.wait_log("HTTP endpoint listening");
    let page = request(port, "GET", "/", &[], "");
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("/logout"), "no session to end");
    // Nothing to log in to.
    assert_eq!(
        request(port, "GET", "/login", &[], "").header("location"),
        Some("/")
    );
    // A page elsewhere posting to localhost (no cookie for SameSite to withhold).
    let cross = [
        ("Origin", "http://evil.example"),
        ("Sec-Fetch-Site", "cross-site"),
    ];
    assert_eq!(
        request(port, "POST", "/ui/jobs/evil/pause", &cross, "").status,
        403
    );
    let ours = [("Sec-Fetch-Site", "same-origin")];
    assert_eq!(
        request(port, "POST", "/ui/jobs/evil/pause", &ours, "").status,
        303
    );
    d.signal(Signal::SIGTERM);
}

// The browser.

/// The `chromium` binary, installed first by `scripts/install-chromium.sh` when it is missing
/// and we are root; `None` (with the reason printed) when there is still none outside CI;
/// panics under `CI=true`.
fn chromium() -> Option<PathBuf> {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if which::which("chromium").is_err() && nix::unistd::Uid::effective().is_root() {
        INSTALLED.get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-chromium.sh");
            match Command::new("bash").arg(&script).status() {
                Ok(status) if status.success() => {}
                other => eprintln!("{} failed: {other:?}", script.display()),
            }
        });
    }
    match which::which("chromium") {
        Ok(path) => Some(path),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "CI=true but no chromium on PATH: the status page's browser test needs it; \
             scripts/install-chromium.sh installs the Debian chromium package (as root)"
        ),
        Err(_) => {
            eprintln!(
                "skipping the browser test: no chromium on PATH (apt-get install chromium, or \
                 as root scripts/install-chromium.sh)"
            );
            None
        }
    }
}

/// A headless Chromium driven over its DevTools pipe.
struct Browser {
    child: Child,
    to: ChildStdin,
    from: mpsc::Receiver<Value>,
    next_id: u64,
    /// Every event received so far (method and params).
    events: Vec<Value>,
    /// The page's session.
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch(program: &Path, log: &Path) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new("sh")
            .args([
                "-c",
                // Descriptors 3 and 4 are the pipe's ends, then stdin and stdout are closed off.
                "exec \"$0\" \"$@\" 3<&0 4>&1 </dev/null >/dev/null",
                &program.display().to_string(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("browser log"))
            .spawn()
            .expect("start chromium");
        let to = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                if message.last() == Some(&0) {
                    message.pop();
                }
                if let Ok(value) = serde_json::from_slice::<Value>(&message) {
                    if tx.send(value).is_err() {
                        return;
                    }
                }
                message.clear();
            }
        });
        let mut browser = Browser {
            child,
            to,
            from,
            next_id: 0,
            events: Vec::new(),
            session: String::new(),
            _profile: profile,
        };
        let target = browser.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let target = target["targetId"].as_str().expect("a target").to_owned();
        let attached = browser.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session")
            .to_owned();
        browser.page("Page.enable", json!({}));
        browser.page("Runtime.enable", json!({}));
        browser.page(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1100, "height": 820, "deviceScaleFactor": 1, "mobile": false }),
        );
        browser
    }

    /// Sends `method` (to the page's session if `session`) and waits for its result.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let answer = self.call_raw(session, method, params);
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// [`Browser::call`], returning the whole answer, an error included.
    fn call_raw(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).expect("json");
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to the browser");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer to {method} from the browser"));
            if answer["id"] == json!(id) {
                return answer;
            }
            self.events.push(answer);
        }
    }

    /// [`Browser::call`] on the page.
    fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(Some(&session), method, params)
    }

    /// The value of the expression `js` in the page (DevTools' own evaluation: the page itself
    /// runs no script, and its policy forbids any); null while the page is being replaced.
    fn eval(&mut self, js: &str) -> Value {
        let session = self.session.clone();
        let answer = self.call_raw(
            Some(&session),
            "Runtime.evaluate",
            json!({ "expression": js, "returnByValue": true }),
        );
        answer["result"]["result"]["value"].clone()
    }

    /// Waits until `js` is true in the page, as a navigation going on ends.
    fn wait_until(&mut self, what: &str, js: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.eval(&format!("document.readyState === 'complete' && !!({js})")) != json!(true) {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `js` is true in the page, reloading it (as its refresh would) between tries.
    fn wait_for(&mut self, what: &str, js: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.eval(&format!("document.readyState === 'complete' && !!({js})")) == json!(true)
            {
                return;
            }
            if Instant::now() >= deadline {
                let text = self.eval("location.href + '\\n' + document.body.innerText");
                panic!(
                    "timed out waiting for: {what}; the page:\n{}",
                    text.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(300));
            if self.eval("document.readyState") == json!("complete") {
                self.page("Page.reload", json!({}));
            }
        }
    }

    fn navigate(&mut self, url: &str) {
        self.page("Page.navigate", json!({ "url": url }));
    }

    /// A real mouse click in the middle of the element `selector`.
    fn click(&mut self, selector: &str) {
        let rect = self.eval(&format!(
            "(() => {{ const r = document.querySelector({selector:?}).getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (x, y) = (rect[0].as_f64().expect("x"), rect[1].as_f64().expect("y"));
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.page(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            );
        }
    }

    /// Types `text` into the element `selector`.
    fn type_into(&mut self, selector: &str, text: &str) {
        self.eval(&format!("document.querySelector({selector:?}).focus()"));
        self.page("Input.insertText", json!({ "text": text }));
    }

    /// A PNG of the whole page.
    fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine as _;
        let shot = self.page(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("png data"))
            .expect("base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number of distinct colours of a PNG, and its size.
fn colours(png_bytes: &[u8]) -> (usize, u32, u32) {
    let mut decoder = png::Decoder::new(png_bytes);
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).expect("a frame");
    let step = info.color_type.samples();
    let distinct: HashSet<&[u8]> = pixels[..info.buffer_size()].chunks(step).collect();
    (distinct.len(), info.width, info.height)
}

#[test]
fn in_a_real_browser_the_page_logs_in_shows_the_jobs_and_runs_one_now() {
    let Some(program) = chromium() else {
        return;
    };
    let port = free_port();
    let d = Daemon::start(&jobs_file(port, true));
    d.wait_log("HTTP endpoint listening");
    // The runs on start have ended (the slow one goes on): the page has outcomes to show.
    eventually("the runs on start end", || {
        let (_, body) = http(port, "GET", "/jobs", Some(TOKEN));
        body.matches("\"last_run\":{").count() >= 2
    });
    let mut browser = Browser::launch(&program, &d.path("chromium.log"));
    let base = format!("http://127.0.0.1:{port}");

    // Logged out, the page sends the browser to the login form.
    browser.navigate(&format!("{base}/"));
    browser.wait_until("the login form", "!!document.querySelector('#token')");
    browser.type_into("#token", TOKEN);
    browser.click("form.login button");
    browser.wait_until("the login's answer", "location.pathname === '/'");
    browser.wait_for(
        "the jobs table, with each job's last outcome",
        "(() => { const t = document.querySelector('table.jobs'); if (!t) return false; \
         const row = n => [...t.rows].find(r => r.cells[0].textContent === n); \
         return row('evil') && row('evil').textContent.includes('success') \
             && row('fails') && row('fails').textContent.includes('failure') \
             && row('slow') && row('slow').textContent.includes('running') \
             && row('nightly') && row('beat'); })()",
    );
    // The stylesheet applied (the policy allows it): the header is laid out as a flex row.
    assert_eq!(
        browser.eval("getComputedStyle(document.querySelector('header')).display"),
        json!("flex")
    );
    let overview = browser.screenshot();

    // The job's page: its output as text, no script element anywhere.
    browser.navigate(&format!("{base}/ui/jobs/evil"));
    browser.wait_for("evil's page", "!!document.querySelector('table.runs')");
    assert_eq!(
        browser.eval("document.querySelector('tr.output pre').textContent"),
        json!("<script>alert(1)</script>\n")
    );
    assert_eq!(browser.eval("document.scripts.length"), json!(0));
    browser.click("button[aria-label='Run evil now']");
    browser.wait_until(
        "the answer to run now",
        "location.search.includes('done=started')",
    );
    let search = browser.eval("location.search");
    let run_id = search
        .as_str()
        .and_then(|s| s.split("run=").nth(1))
        .expect("the run's id")
        .to_owned();
    assert!(
        browser
            .eval("document.querySelector('.notice').textContent")
            .as_str()
            .is_some_and(|t| t.contains(&format!("Run {run_id} started"))),
        "{search}"
    );
    browser.wait_for(
        "the run in the job's history",
        &format!(
            "[...document.querySelectorAll('table.runs th[scope=row]')].some(th => th.textContent === '{run_id}')"
        ),
    );
    // Open the newest run's output for the picture.
    browser.eval("document.querySelector('tr.output details').open = true");
    let job_page = browser.screenshot();

    let dialogs: Vec<&Value> = browser
        .events
        .iter()
        .filter(|e| e["method"] == json!("Page.javascriptDialogOpening"))
        .collect();
    assert!(
        dialogs.is_empty(),
        "a JavaScript dialog opened: {dialogs:?}"
    );

    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .to_owned();
    for (name, png) in [
        ("status-page.png", &overview),
        ("status-page-job.png", &job_page),
    ] {
        let (distinct, width, height) = colours(png);
        assert!(
            width >= 800 && height >= 400 && distinct >= 16,
            "{name}: {width}x{height}, {distinct} colours: blank?"
        );
        std::fs::write(target.join(name), png).expect("save the screenshot");
    }
    d.signal(Signal::SIGTERM);
}
