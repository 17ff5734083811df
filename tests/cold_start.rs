//! On-demand app start: a request for a site whose app is not running starts it (vassal
//! into the emperor's directory, or the control plane asked), waits for its socket, and is
//! retried once; one start per site; a cap on starts; broken, slow and misconfigured apps get
//! clear pages; idle apps stop and start again. Real uWSGI emperor, loopback only.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Backend {
    emperor: Emperor,
    port: u16,
    metrics: u16,
    herald: Option<Herald>,
    // Dropped last: the processes above stop (and print their logs on failure) first.
    dir: tempfile::TempDir,
}

impl Backend {
    /// An emperor with `available` sites (none running) and a herald backend over them.
    fn start(available: &[&str], extra: &str) -> Backend {
        let backend = Backend::without_herald(available);
        backend.with_herald(extra)
    }

    fn without_herald(available: &[&str]) -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let emperor = Emperor::start(dir.path(), &[], available);
        Backend {
            dir,
            emperor,
            port: free_port(),
            metrics: free_port(),
            herald: None,
        }
    }

    fn with_herald(mut self, extra: &str) -> Backend {
        let yaml = self.emperor.backend_yaml(self.port, self.metrics, extra);
        self.herald = Some(Herald::start(
            self.dir.path(),
            "backend",
            &yaml,
            &[self.port, self.metrics],
        ));
        self
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn starts(&self, result: &str) -> f64 {
        metric(
            self.metrics,
            "herald_app_starts_total",
            &[("result", result)],
        )
    }

    fn all_starts(&self) -> f64 {
        ["ok", "timeout", "failed", "refused"]
            .iter()
            .map(|r| self.starts(r))
            .sum()
    }

    fn herald_log(&self) -> String {
        self.herald.as_ref().map(Herald::log).unwrap_or_default()
    }
}

fn post(port: u16, site: &str, body: &[u8]) -> Response {
    let mut raw = format!(
        "POST /upload HTTP/1.1\r\nHost: {site}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    send_raw(port, &raw)
}

fn sha256_hex(data: &[u8]) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(data)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_cold_site_answers_its_first_request_and_a_large_post_arrives_intact() {
    let backend = Backend::start(&["cold.example", "post.example"], "");
    let resp = get(backend.port, "cold.example", "/hello");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        resp.text().starts_with("Hello from cold.example"),
        "{}",
        resp.text()
    );
    assert_eq!(
        fs::read_to_string(backend.emperor.enabled("cold.example")).unwrap(),
        fs::read_to_string(backend.emperor.sites_dir.join("cold.example.ini")).unwrap(),
        "the vassal is the site's file, whole"
    );

    let body: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let answer = post(backend.port, "post.example", &body).json();
    assert_eq!(answer["site"], "post.example");
    assert_eq!(answer["method"], "POST");
    assert_eq!(answer["body_length"], body.len());
    assert_eq!(answer["body_sha256"], sha256_hex(&body));

    assert_eq!(get(backend.port, "cold.example", "/hello").status, 200);
    assert_eq!(backend.starts("ok"), 2.0);
    assert_eq!(backend.emperor.spawn_count("cold.example"), 1);
    // No temporary file is left behind in the emperor's directory.
    let mut names: Vec<String> = fs::read_dir(&backend.emperor.vassals_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["cold.example.ini", "post.example.ini"]);
}

#[test]
fn two_hundred_concurrent_requests_share_one_start() {
    let backend = Backend::start(&["crowd.example"], "");
    let threads: Vec<_> = (0..200)
        .map(|_| {
            let port = backend.port;
            std::thread::spawn(move || {
                let resp = get(port, "crowd.example", "/hello");
                (resp.status, resp.text())
            })
        })
        .collect();
    for thread in threads {
        let (status, text) = thread.join().unwrap();
        assert_eq!(status, 200, "{text}");
        assert!(text.starts_with("Hello from crowd.example"));
    }
    assert_eq!(backend.all_starts(), 1.0);
    assert_eq!(backend.emperor.spawn_count("crowd.example"), 1);
    assert!(
        metric(
            backend.metrics,
            "herald_requests_waited_on_start_total",
            &[]
        ) >= 1.0
    );
}

#[test]
fn starts_in_progress_never_exceed_max_starts() {
    let sites: Vec<String> = (0..50).map(|i| format!("site{i}.example")).collect();
    let names: Vec<&str> = sites.iter().map(String::as_str).collect();
    // One client starting 50 sites: past max_starts_per_client, which is not under test here.
    let backend = Backend::start(
        &names,
        "  max_starts: 4\n  start_timeout: 90s\n  max_starts_per_client: 0\n",
    );
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, metrics) = (done.clone(), backend.metrics);
        std::thread::spawn(move || {
            let mut peak = 0.0f64;
            let deadline = Instant::now() + Duration::from_secs(120);
            while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
                peak = peak.max(metric(metrics, "herald_app_starts_in_progress", &[]));
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    let requests: Vec<_> = sites
        .iter()
        .map(|site| {
            let (port, site) = (backend.port, site.clone());
            std::thread::spawn(move || (get(port, &site, "/hello").status, site))
        })
        .collect();
    for request in requests {
        let (status, site) = request.join().unwrap();
        assert_eq!(status, 200, "{site}");
    }
    done.store(true, Ordering::SeqCst);
    let peak = sampler.join().unwrap();
    assert!(peak <= 4.0, "{peak} starts at once with max_starts 4");
    assert!(peak >= 2.0, "starts ran in parallel (peak {peak})");
    assert_eq!(backend.starts("ok"), 50.0);
}

/// `start_queue: 0`: no site waits for a slot; a start goes ahead only when one is free.
#[test]
fn with_no_start_queue_a_free_slot_still_starts_an_app() {
    let sites: Vec<String> = (0..4).map(|i| format!("unqueued{i}.example")).collect();
    let names: Vec<&str> = sites.iter().map(String::as_str).collect();
    let backend = Backend::start(&names, "  max_starts: 1\n  start_queue: 0\n");
    assert_eq!(
        get(backend.port, &sites[0], "/hello").status,
        200,
        "a free slot starts it"
    );
    let requests: Vec<_> = sites[1..]
        .iter()
        .map(|site| {
            let (port, site) = (backend.port, site.clone());
            std::thread::spawn(move || get(port, &site, "/hello").status)
        })
        .collect();
    let statuses: Vec<u16> = requests.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.contains(&503),
        "nobody waits for the one slot: {statuses:?}"
    );
}

#[test]
fn a_full_start_queue_answers_503_with_retry_after() {
    let sites: Vec<String> = (0..6).map(|i| format!("queued{i}.example")).collect();
    let names: Vec<&str> = sites.iter().map(String::as_str).collect();
    let backend = Backend::start(&names, "  max_starts: 1\n  start_queue: 1\n");
    let requests: Vec<_> = sites
        .iter()
        .map(|site| {
            let (port, site) = (backend.port, site.clone());
            std::thread::spawn(move || get(port, &site, "/hello"))
        })
        .collect();
    let answers: Vec<Response> = requests.into_iter().map(|r| r.join().unwrap()).collect();
    let refused: Vec<&Response> = answers.iter().filter(|r| r.status == 503).collect();
    assert!(
        !refused.is_empty(),
        "with one slot and one queue place, six starts cannot all wait"
    );
    for resp in &refused {
        assert_eq!(resp.header("retry-after"), Some("1"));
        assert!(
            resp.text().contains("cannot be started right now"),
            "{}",
            resp.text()
        );
    }
    assert!(answers.iter().all(|r| r.status == 200 || r.status == 503));
    assert!(answers.iter().any(|r| r.status == 200));
    assert_eq!(backend.starts("refused"), refused.len() as f64);
}

/// `max_running_apps: 3` with 5 sites: each start past three stops the least recently used
/// idle app first; an app with a request in flight is never stopped; every request is answered.
#[test]
fn the_least_recently_used_idle_app_makes_room_under_max_running_apps() {
    let sites = [
        "r1.example",
        "r2.example",
        "r3.example",
        "r4.example",
        "r5.example",
    ];
    let backend = Backend::start(&sites, "  max_running_apps: 3\n  idle_timeout: 0\n");
    let running = || -> Vec<&str> {
        sites
            .iter()
            .copied()
            .filter(|site| backend.emperor.enabled(site).exists())
            .collect()
    };
    for site in &sites[..3] {
        assert_eq!(get(backend.port, site, "/hello").status, 200);
    }
    assert_eq!(running(), ["r1.example", "r2.example", "r3.example"]);
    // r1 was used last of all now; r2 is the least recently used, but busy for 3 s.
    let busy = std::thread::spawn({
        let port = backend.port;
        move || get(port, "r2.example", "/sleep?s=3").status
    });
    wait_until("r2's request in flight", Duration::from_secs(10), || {
        metric(
            backend.metrics,
            "herald_requests_in_progress",
            &[("role", "backend")],
        ) >= 1.0
    });
    assert_eq!(get(backend.port, "r1.example", "/hello").status, 200);
    // r4: r3 goes (r2 is busy, r1 was just used).
    assert_eq!(get(backend.port, "r4.example", "/hello").status, 200);
    assert_eq!(running(), ["r1.example", "r2.example", "r4.example"]);
    // r5: r2 is still busy, so r1 goes.
    assert_eq!(get(backend.port, "r5.example", "/hello").status, 200);
    assert_eq!(running(), ["r2.example", "r4.example", "r5.example"]);
    assert_eq!(
        busy.join().unwrap(),
        200,
        "the app with a request in flight was never stopped"
    );
    assert_eq!(
        metric(backend.metrics, "herald_app_evictions_total", &[]),
        2.0
    );
    let log = backend.herald_log();
    assert!(
        log.contains("stop r3.example: the least recently used of 3 running apps"),
        "{log}"
    );
    // An evicted site comes back on its next request, making room in turn.
    assert_eq!(get(backend.port, "r3.example", "/hello").status, 200);
    assert_eq!(running().len(), 3);
}

/// When every running app is busy, a start waits for one to become idle, and gets 503 with
/// `Retry-After` past `start_timeout`.
#[test]
fn a_start_waits_for_room_and_gives_up_at_start_timeout() {
    let sites = ["b1.example", "b2.example"];
    let backend = Backend::start(
        &sites,
        "  max_running_apps: 1\n  start_timeout: 2s\n  idle_timeout: 0\n",
    );
    assert_eq!(get(backend.port, "b1.example", "/hello").status, 200);
    let busy = std::thread::spawn({
        let port = backend.port;
        move || get(port, "b1.example", "/sleep?s=4").status
    });
    wait_until("b1's request in flight", Duration::from_secs(10), || {
        metric(
            backend.metrics,
            "herald_requests_in_progress",
            &[("role", "backend")],
        ) >= 1.0
    });
    let refused = get(backend.port, "b2.example", "/hello");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.header("retry-after").is_some());
    assert_eq!(busy.join().unwrap(), 200);
    // Now b1 is idle: b2 gets its room (after retry_after, which remembers the refusal).
    wait_until("b2 to start", Duration::from_secs(30), || {
        get(backend.port, "b2.example", "/hello").status == 200
    });
}

/// `max_starts_per_client`: the 31st cold site in a minute from one client gets 429; another
/// client, and the first one's running sites, are served.
#[test]
fn a_client_cold_starting_too_many_sites_gets_429() {
    let sites: Vec<String> = (0..32).map(|i| format!("walk{i}.example")).collect();
    let names: Vec<&str> = sites.iter().map(String::as_str).collect();
    let backend = Backend::start(&names, "  max_starts: 16\n");
    let from = |client: [u8; 4], site: &str| {
        let mut stream = connect_from(client, backend.port);
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        write!(
            stream,
            "GET /hello HTTP/1.1\r\nHost: {site}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    for site in &sites[..30] {
        assert!(
            from([127, 0, 0, 1], site).starts_with("HTTP/1.1 200"),
            "{site}"
        );
    }
    let refused = from([127, 0, 0, 1], &sites[30]);
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(
        refused.contains("Retry-After:") || refused.contains("retry-after:"),
        "{refused}"
    );
    assert!(refused.contains("Too many sites"), "{refused}");
    assert!(!backend.emperor.enabled(&sites[30]).exists(), "not started");
    // Its running sites are still served; another client starts the same cold site.
    assert!(from([127, 0, 0, 1], &sites[0]).starts_with("HTTP/1.1 200"));
    assert!(from([127, 0, 0, 2], &sites[30]).starts_with("HTTP/1.1 200"));
}

/// Behind an edge (a trusted proxy) the client is the browser the edge names, so one edge does
/// not share a limit among its visitors; anyone else is counted by its own address, whatever
/// forwarding fields it sends.
#[test]
fn the_start_limit_counts_the_browser_behind_a_trusted_edge_and_never_a_forged_one() {
    let sites: Vec<String> = (0..6).map(|i| format!("fwd{i}.example")).collect();
    let names: Vec<&str> = sites.iter().map(String::as_str).collect();
    // The harness trusts 127.0.0.1, where the tests' edges run.
    let backend = Backend::start(&names, "  max_starts_per_client: 2\n");
    let status = |from: [u8; 4], browser: Option<&str>, site: &str| {
        let mut stream = connect_from(from, backend.port);
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let forwarded = browser
            .map(|ip| format!("X-Forwarded-For: {ip}\r\nX-Real-IP: {ip}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "GET /hello HTTP/1.1\r\nHost: {site}\r\n{forwarded}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.get(9..12).unwrap_or_default().to_owned()
    };
    let edge = [127, 0, 0, 1];
    assert_eq!(status(edge, Some("192.0.2.7"), &sites[0]), "200");
    assert_eq!(status(edge, Some("192.0.2.7"), &sites[1]), "200");
    assert_eq!(status(edge, Some("192.0.2.7"), &sites[2]), "429");
    // Another visitor through the same edge.
    assert_eq!(status(edge, Some("192.0.2.8"), &sites[2]), "200");
    // Not a trusted proxy: its forwarding fields name nobody.
    let stranger = [127, 0, 0, 2];
    assert_eq!(status(stranger, None, &sites[3]), "200");
    assert_eq!(status(stranger, Some("192.0.2.8"), &sites[4]), "200");
    assert_eq!(status(stranger, Some("203.0.113.9"), &sites[5]), "429");
    assert!(!backend.emperor.enabled(&sites[5]).exists(), "not started");
    assert_eq!(status(stranger, Some("203.0.113.9"), &sites[3]), "200");
}

#[test]
fn a_broken_app_is_502_quickly_with_one_start_and_no_loop() {
    let backend = Backend::without_herald(&[]);
    let app = broken_app(backend.root());
    backend
        .emperor
        .add_site("broken.example", &backend.emperor.vassal(&app, ""));
    let backend = backend.with_herald("  start_timeout: 20s\n  retry_after: 60s\n");
    let began = Instant::now();
    let resp = get(backend.port, "broken.example", "/");
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert!(resp.text().contains("failed to start"), "{}", resp.text());
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "took {:?}",
        began.elapsed()
    );
    let written = fs::metadata(backend.emperor.enabled("broken.example"))
        .unwrap()
        .modified()
        .unwrap();
    for _ in 0..5 {
        let began = Instant::now();
        let resp = get(backend.port, "broken.example", "/");
        assert_eq!(resp.status, 502);
        assert!(resp.text().contains("failed to start"));
        assert!(
            began.elapsed() < Duration::from_secs(1),
            "later requests are answered at once"
        );
    }
    let rewritten = fs::metadata(backend.emperor.enabled("broken.example"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(written, rewritten, "the vassal was written once");
    assert!(
        backend.all_starts() <= 1.0,
        "one start: {}",
        backend.herald_log()
    );
    assert!(
        backend
            .herald_log()
            .contains("start broken.example: failed"),
        "{}",
        backend.herald_log()
    );
}

#[test]
fn an_enabled_vassal_that_does_not_answer_is_broken_at_once() {
    let backend = Backend::without_herald(&[]);
    let app = broken_app(backend.root());
    let vassal = backend.emperor.vassal(&app, "");
    backend.emperor.add_site("old.example", &vassal);
    // Enabled long ago (by an earlier Herald, say): older than start_timeout.
    fs::write(backend.emperor.enabled("old.example"), &vassal).unwrap();
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(backend.emperor.enabled("old.example"))
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    let backend = backend.with_herald("  start_timeout: 20s\n");
    let began = Instant::now();
    let resp = get(backend.port, "old.example", "/");
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert!(began.elapsed() < Duration::from_secs(2));
    let modified = fs::metadata(backend.emperor.enabled("old.example"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(modified, long_ago, "not re-initialized");
}

#[test]
fn an_app_slower_than_start_timeout_gets_the_504_page() {
    let backend = Backend::without_herald(&[]);
    // The socket comes up only after 4 s (exec-asap runs before uWSGI binds).
    let vassal = backend
        .emperor
        .vassal(&repo_path("demo/app.py"), "exec-asap = sleep 4\n");
    backend.emperor.add_site("slow.example", &vassal);
    let backend = backend.with_herald("  start_timeout: 1s\n  retry_after: 30s\n");
    let began = Instant::now();
    let resp = get(backend.port, "slow.example", "/");
    assert_eq!(resp.status, 504, "{}", resp.text());
    assert!(
        resp.text().contains("taking too long to start"),
        "{}",
        resp.text()
    );
    assert!(
        began.elapsed() >= Duration::from_millis(900) && began.elapsed() < Duration::from_secs(4)
    );
    assert_eq!(backend.starts("timeout"), 1.0);
    // Within retry_after the site is not started again: the page comes at once.
    let began = Instant::now();
    assert_eq!(get(backend.port, "slow.example", "/").status, 504);
    assert!(began.elapsed() < Duration::from_millis(500));
    assert_eq!(backend.all_starts(), 1.0);
    // Once the app is up, it is simply used.
    let socket = backend.emperor.sockets_dir.join("slow.example.sock");
    wait_until("the slow app's socket", Duration::from_secs(30), || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    assert_eq!(get(backend.port, "slow.example", "/hello").status, 200);
}

#[test]
fn a_vassal_listening_elsewhere_is_refused_with_a_log_line() {
    let backend = Backend::without_herald(&[]);
    let vassal = backend
        .emperor
        .vassal(&repo_path("demo/app.py"), "")
        .replace(
            &backend.emperor.sockets_dir.display().to_string(),
            "/tmp/not-where-herald-looks",
        );
    backend.emperor.add_site("elsewhere.example", &vassal);
    let backend = backend.with_herald("");
    let resp = get(backend.port, "elsewhere.example", "/");
    assert_eq!(resp.status, 502);
    assert!(
        resp.text()
            .contains("not set up in a way this server can start"),
        "{}",
        resp.text()
    );
    assert!(
        !backend.emperor.enabled("elsewhere.example").exists(),
        "nothing enabled"
    );
    let log = backend.herald_log();
    assert!(
        log.contains("start elsewhere.example: refused")
            && log.contains("/tmp/not-where-herald-looks/elsewhere.example.sock"),
        "{log}"
    );
    assert_eq!(backend.starts("refused"), 1.0);
}

#[test]
fn a_flood_of_unknown_sites_starts_and_writes_nothing() {
    let backend = Backend::start(&["known.example"], "");
    for i in 0..300 {
        assert_eq!(
            get(backend.port, &format!("unknown{i}.example"), "/").status,
            404
        );
    }
    assert_eq!(backend.all_starts(), 0.0);
    assert_eq!(
        fs::read_dir(&backend.emperor.vassals_dir).unwrap().count(),
        0
    );
}

#[test]
fn a_busy_app_gets_503_and_is_not_started_again() {
    let backend = Backend::start(
        &["busy.example"],
        "  limits:\n    proxy_connect_timeout: 1s\n",
    );
    // An "app" that listens but never accepts, with its listen queue filled by itself.
    let socket = backend.emperor.sockets_dir.join("busy.example.sock");
    let fill_queue = "import socket, sys, time\n\
        s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(0)\n\
        held = []\n\
        while True:\n\
        \x20   c = socket.socket(socket.AF_UNIX); c.setblocking(False)\n\
        \x20   try: c.connect(sys.argv[1])\n\
        \x20   except BlockingIOError: break\n\
        \x20   held.append(c)\n\
        print('full', flush=True)\n\
        time.sleep(120)\n";
    let mut stuck = Process::spawn(
        "stuck listener",
        Command::new("python3").args(["-c", fill_queue, socket.to_str().unwrap()]),
        &backend.root().join("stuck.log"),
    );
    wait_until("the stuck listener", STARTUP_DEADLINE, || {
        stuck.assert_running();
        stuck.log().contains("full")
    });
    let began = Instant::now();
    let resp = get(backend.port, "busy.example", "/");
    // Herald waited up to connect_timeout (1 s) for the queue to drain, then gave up.
    assert!(
        began.elapsed() >= Duration::from_millis(900),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert!(resp.text().contains("too busy"), "{}", resp.text());
    assert_eq!(backend.all_starts(), 0.0);
    assert!(!backend.emperor.enabled("busy.example").exists());
}

#[test]
fn idle_apps_stop_and_start_again_without_errors() {
    let backend = Backend::start(&["idle.example"], "  idle_timeout: 1s\n");
    let first = get(backend.port, "idle.example", "/");
    assert_eq!(first.status, 200);
    let pid = first.json()["pid"].as_i64().unwrap();
    wait_until(
        "the idle vassal to be removed",
        Duration::from_secs(20),
        || !backend.emperor.enabled("idle.example").exists(),
    );
    wait_until("the idle app to exit", Duration::from_secs(20), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    let again = get(backend.port, "idle.example", "/");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_ne!(again.json()["pid"].as_i64().unwrap(), pid);
    assert_eq!(backend.starts("ok"), 2.0);
    assert!(metric(backend.metrics, "herald_app_stops_total", &[]) >= 1.0);

    // A request that arrives just as the app is being stopped gets a normal answer.
    for round in 1..=3 {
        let stops = metric(backend.metrics, "herald_app_stops_total", &[]);
        wait_until("the next idle stop", Duration::from_secs(20), || {
            metric(backend.metrics, "herald_app_stops_total", &[]) > stops
        });
        let resp = get(backend.port, "idle.example", "/hello");
        assert_eq!(resp.status, 200, "round {round}: {}", resp.text());
    }
}

#[test]
fn apps_running_before_herald_started_are_stopped_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let emperor = Emperor::start(dir.path(), &["early.example"], &[]);
    let (port, metrics) = (free_port(), free_port());
    let yaml = emperor.backend_yaml(port, metrics, "  idle_timeout: 1s\n");
    let _herald = Herald::start(dir.path(), "backend", &yaml, &[port]);
    wait_until(
        "the running app to be stopped",
        Duration::from_secs(20),
        || !emperor.enabled("early.example").exists(),
    );
}

struct ControlPlane {
    process: Process,
    port: u16,
    calls: std::path::PathBuf,
}

impl ControlPlane {
    fn start(backend: &Backend) -> ControlPlane {
        let root = backend.root();
        let calls = root.join("control-plane-calls.log");
        let script = repo_path("tests/control_plane.py");
        let (port, process) = python_program(
            root,
            "control plane",
            &[
                script.as_os_str(),
                backend.emperor.sites_dir.as_os_str(),
                backend.emperor.vassals_dir.as_os_str(),
                calls.as_os_str(),
            ],
        );
        ControlPlane {
            process,
            port,
            calls,
        }
    }

    fn calls(&self) -> String {
        fs::read_to_string(&self.calls).unwrap_or_default()
    }
}

#[test]
fn the_http_initializer_asks_the_control_plane() {
    let backend = Backend::without_herald(&["good.example", "refuse.example", "slow.example"]);
    let control = ControlPlane::start(&backend);
    let backend = backend.with_herald(&format!(
        "  idle_timeout: 1s\n  initializer:\n    kind: http\n    url: http://127.0.0.1:{0}/start\n    stop_url: http://127.0.0.1:{0}/stop\n    timeout: 1s\n",
        control.port
    ));

    let resp = get(backend.port, "good.example", "/hello");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(control.calls().contains("/start good.example"));

    let resp = get(backend.port, "refuse.example", "/");
    assert_eq!(resp.status, 503);
    assert!(resp.header("retry-after").is_some());
    assert!(resp.text().contains("cannot be started right now"));
    assert!(
        backend
            .herald_log()
            .contains("answered 500: no webapp called refuse.example"),
        "{}",
        backend.herald_log()
    );

    let began = Instant::now();
    let resp = get(backend.port, "slow.example", "/");
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "the initializer timeout (1s) applies"
    );
    assert!(
        backend.herald_log().contains("no answer within"),
        "{}",
        backend.herald_log()
    );

    wait_until("the idle site's stop call", Duration::from_secs(20), || {
        control.calls().contains("/stop good.example")
    });
    wait_until(
        "the control plane to remove the vassal",
        Duration::from_secs(20),
        || !backend.emperor.enabled("good.example").exists(),
    );
    drop(control.process);
}
