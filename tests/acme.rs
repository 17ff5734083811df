//! On-demand ACME certificates on the edge, shared through Redis, against real servers: Pebble
//! (Let's Encrypt's test ACME server) issuing over HTTP-01, pebble-challtestsrv as the DNS
//! server that tells Pebble which edge to validate at, redis-server as the shared storage and
//! demo/ask.py as the operator's `ask` endpoint. Each test starts its own of each, and
//! edges on 127.0.0.2 and 127.0.0.3, both on Pebble's HTTP-01 port, so the DNS answer decides
//! which edge Pebble asks for a token. tests/tls_client.py (one handshake) and tests/tls_many.py
//! (hundreds at once) say which certificate a handshake got: checked against Pebble's root (a
//! new one each time Pebble starts) alone, only an issued certificate passes; against the root
//! and the edge's self-signed default certificate (common name `default`), both do.
//! Without pebble or redis-server (scripts/install-deps installs them) the tests say so and
//! pass.

mod common;

use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const EDGE_A: [u8; 4] = [127, 0, 0, 2];
const EDGE_B: [u8; 4] = [127, 0, 0, 3];
/// How long an edge may take to serve a certificate another edge put in Redis (they poll it).
const SHARE_DEADLINE: Duration = Duration::from_secs(15);
/// How long an order may take to end in a certificate (Pebble needs a second or two).
const ISSUE_DEADLINE: Duration = Duration::from_secs(60);
/// How long a metric may take to say what has already happened.
const METRIC_DEADLINE: Duration = Duration::from_secs(10);

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Whether every program the tests run is installed; if not, says which is missing.
fn servers_installed() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = ["pebble", "pebble-challtestsrv", "redis-server"]
        .into_iter()
        .filter(|tool| !std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "{} not installed: skipped (scripts/install-deps installs them)",
            missing.join(", ")
        );
    }
    missing.is_empty()
}

/// `curl` over HTTPS trusting `ca`: the body, or `None` if the request failed.
fn curl_https(ca: &Path, url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sSf", "--max-time", "5", "--cacert"])
        .arg(ca)
        .arg(url)
        .output()
        .expect("run curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip_text(ip: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(ip).to_string()
}

/// Whether process `pid` is alive (a child that exited stays a zombie until it is waited for).
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat[stat.rfind(')').unwrap() + 2..]
            .chars()
            .next()
            .is_some_and(|state| state != 'Z')
    })
}

/// Pebble with pebble-challtestsrv as its DNS server: every name resolves to one address, which
/// the test can change.
struct Pebble {
    /// The ACME directory, `https://localhost:PORT/dir`.
    directory: String,
    /// The CA of Pebble's own HTTPS certificate (for the directory, not for what it issues).
    https_ca: PathBuf,
    /// Pebble's issuing root, fetched from its management interface after it started.
    root: PathBuf,
    dns_management: u16,
    _pebble: Process,
    _challtestsrv: Process,
}

impl Pebble {
    /// Validates HTTP-01 at `http_port` of whatever address names resolve to (`resolve_to`
    /// first); certificates are valid for `validity` seconds.
    fn start(dir: &Path, http_port: u16, validity: u64, resolve_to: [u8; 4]) -> Pebble {
        let dir = dir.join("pebble");
        fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        // Pebble's HTTPS certificate, for localhost, from a CA made for this test.
        let new_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        openssl(&format!(
            "req -x509 {new_key} -keyout {d}/ca.key -out {d}/ca.pem -subj /CN=pebble-https-ca -days 30"
        ));
        openssl(&format!(
            "req -x509 -CA {d}/ca.pem -CAkey {d}/ca.key {new_key} -keyout {d}/localhost.key -out {d}/localhost.pem \
             -subj /CN=localhost -days 30 -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
             -addext basicConstraints=critical,CA:FALSE"
        ));
        let (dns, dns_management) = (free_port(), free_port());
        let (listen, management, tls_port) = (free_port(), free_port(), free_port());
        let config = dir.join("pebble.json");
        let json = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.join("localhost.pem"),
            "privateKey": dir.join("localhost.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "domainBlocklist": ["blocked.test"],
            "certificateValidityPeriod": validity,
        }});
        fs::write(&config, json.to_string()).unwrap();
        // No AAAA answers (Pebble would dial those first) and none of its challenge servers
        // (they would take ports): only the DNS server and its management API.
        let mut challtestsrv = Process::spawn(
            "pebble-challtestsrv",
            Command::new("pebble-challtestsrv")
                .args(["-defaultIPv4", &ip_text(resolve_to), "-defaultIPv6", ""])
                .args(["-dns01", &format!("127.0.0.1:{dns}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("127.0.0.1:{dns_management}")]),
            &dir.join("challtestsrv.log"),
        );
        for port in [dns, dns_management] {
            wait_until("pebble-challtestsrv listening", STARTUP_DEADLINE, || {
                challtestsrv.assert_running();
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
        }
        let mut pebble = Process::spawn(
            "pebble",
            Command::new("pebble")
                .arg("-config")
                .arg(&config)
                .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
                // Validate at once, never refuse a good nonce, never reuse an authorization
                // (each order, renewals too, is validated anew).
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0"),
            &dir.join("pebble.log"),
        );
        let https_ca = dir.join("ca.pem");
        let directory = format!("https://localhost:{listen}/dir");
        wait_until("Pebble's directory", STARTUP_DEADLINE, || {
            pebble.assert_running();
            curl_https(&https_ca, &directory).is_some_and(|body| body.contains("newOrder"))
        });
        let root_pem = curl_https(
            &https_ca,
            &format!("https://localhost:{management}/roots/0"),
        )
        .expect("Pebble's root from its management interface");
        assert!(
            root_pem.starts_with("-----BEGIN CERTIFICATE-----"),
            "{root_pem}"
        );
        let root = dir.join("root.pem");
        fs::write(&root, root_pem).unwrap();
        Pebble {
            directory,
            https_ca,
            root,
            dns_management,
            _pebble: pebble,
            _challtestsrv: challtestsrv,
        }
    }

    /// From now on every name resolves to `ip` (so Pebble validates at that edge).
    fn resolve_to(&self, ip: [u8; 4]) {
        let body = format!("{{\"ip\":\"{}\"}}", ip_text(ip));
        let answer = send_raw(
            self.dns_management,
            format!(
                "POST /set-default-ipv4 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        assert_eq!(answer.status, 200, "set-default-ipv4: {}", answer.text());
    }
}

/// redis-server on 127.0.0.1, without persistence: a restart starts empty.
struct Redis {
    port: u16,
    dir: PathBuf,
    starts: usize,
    process: Option<Process>,
}

impl Redis {
    fn start(dir: &Path) -> Redis {
        let mut redis = Redis {
            port: free_port(),
            dir: dir.to_owned(),
            starts: 0,
            process: None,
        };
        redis.restart();
        redis
    }

    /// Starts it (again) on the same port.
    fn restart(&mut self) {
        assert!(self.process.is_none(), "redis-server is running");
        self.starts += 1;
        let mut process = Process::spawn(
            "redis-server",
            Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&self.dir),
            &self.dir.join(format!("redis-{}.log", self.starts)),
        );
        wait_until("redis-server answering PING", STARTUP_DEADLINE, || {
            process.assert_running();
            self.ping()
        });
        self.process = Some(process);
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    /// Kills it (SIGKILL, by its process id), as a crash would.
    fn kill(&mut self) {
        let mut process = self.process.take().expect("redis-server is running");
        // SAFETY: kill(2) on the child we started; no memory is involved.
        unsafe {
            libc::kill(process.pid(), libc::SIGKILL);
        }
        wait_until("redis-server gone", STARTUP_DEADLINE, || {
            process.has_exited()
        });
        assert!(!self.ping());
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

/// demo/ask.py: approves the names the test allows, counts the questions.
struct Ask {
    port: u16,
    allowed: PathBuf,
    _process: Process,
}

impl Ask {
    fn start(dir: &Path) -> Ask {
        let allowed = dir.join("allowed.txt");
        fs::write(&allowed, "").unwrap();
        let script = repo_path("demo/ask.py");
        let (port, process) =
            python_program(dir, "ask", &[script.as_os_str(), allowed.as_os_str()]);
        let ask = Ask {
            port,
            allowed,
            _process: process,
        };
        // It answers, and its counts start empty.
        assert!(ask.counts().is_empty());
        ask
    }

    /// Approves `names` too (the file is replaced whole: the stub never reads half of it).
    fn allow(&self, names: &[String]) {
        let mut text = fs::read_to_string(&self.allowed).unwrap();
        for name in names {
            text.push_str(name);
            text.push('\n');
        }
        let temp = self.allowed.with_extension("tmp");
        fs::write(&temp, text).unwrap();
        fs::rename(&temp, &self.allowed).unwrap();
    }

    /// How many times each name was asked about.
    fn counts(&self) -> HashMap<String, u64> {
        let answer = get(self.port, "127.0.0.1", "/counts");
        assert_eq!(answer.status, 200);
        serde_json::from_value(answer.json()).unwrap()
    }

    fn count(&self, name: &str) -> u64 {
        self.counts().get(name).copied().unwrap_or(0)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/allowed", self.port)
    }
}

/// One test's servers: Pebble, its DNS, Redis and the ask endpoint, and the edges' default
/// certificate. Edges are started by the test (and dropped before these).
struct Lab {
    acme: Pebble,
    redis: Redis,
    ask: Ask,
    /// Pebble's HTTP-01 port: every edge's plain HTTP listener, on its own address.
    plain: u16,
    default_crt: PathBuf,
    default_key: PathBuf,
    /// Pebble's root and the default certificate: a handshake passes with either.
    trust: PathBuf,
    /// Last, so the processes are gone (and their logs shown) before it is removed.
    dir: tempfile::TempDir,
}

impl Lab {
    /// `None` (the test skips) when the servers are not installed.
    fn start(validity: u64, resolve_to: [u8; 4]) -> Option<Lab> {
        if !servers_installed() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let plain = free_port();
        let acme = Pebble::start(dir.path(), plain, validity, resolve_to);
        let redis = Redis::start(dir.path());
        let ask = Ask::start(dir.path());
        let default_crt = dir.path().join("default.crt");
        let default_key = dir.path().join("default.key");
        self_signed(&default_crt, &default_key, &["default"], 30);
        let trust = dir.path().join("trust.pem");
        fs::write(
            &trust,
            fs::read_to_string(&acme.root).unwrap() + &fs::read_to_string(&default_crt).unwrap(),
        )
        .unwrap();
        Some(Lab {
            acme,
            redis,
            ask,
            plain,
            default_crt,
            default_key,
            trust,
            dir,
        })
    }

    /// An edge on `ip` (both listeners) with ACME on this lab's servers; a handshake waits up
    /// to `wait` for a new certificate.
    fn edge(&self, name: &str, ip: [u8; 4], wait: &str, max_orders_per_hour: u32) -> Edge {
        let (tls, metrics, dead) = (free_port(), free_port(), free_port());
        let ip_text = ip_text(ip);
        let yaml = format!(
            "metrics:\n  listen: 127.0.0.1:{metrics}\n\
             edge:\n  listen: ['{ip_text}:{plain}']\n  backends: ['127.0.0.1:{dead}']\n\
             \x20 tls:\n    listen: ['{ip_text}:{tls}']\n    default_cert: {crt}\n    default_key: {key}\n\
             \x20   acme:\n      directory: {directory}\n      contact: mailto:ops@example.com\n\
             \x20     ask: {ask}\n      storage: {storage}\n      ca_roots: {ca_roots}\n\
             \x20     wait: {wait}\n      max_orders_per_hour: {max_orders_per_hour}\n      queue: 100\n",
            plain = self.plain,
            crt = self.default_crt.display(),
            key = self.default_key.display(),
            directory = self.acme.directory,
            ask = self.ask.url(),
            storage = self.redis.url(),
            ca_roots = self.acme.https_ca.display(),
        );
        // Not the TLS port: a bare connect would count as a failed handshake.
        let herald = Herald::start_with(
            self.dir.path(),
            name,
            &yaml,
            &[],
            &[
                SocketAddr::from((ip, self.plain)),
                SocketAddr::from(([127, 0, 0, 1], metrics)),
            ],
        );
        let edge = Edge {
            herald,
            ip,
            tls,
            plain: self.plain,
            metrics,
            root: self.acme.root.clone(),
            trust: self.trust.clone(),
        };
        // No SNI: no name to ask about.
        wait_until(
            &format!("a TLS handshake with {name}"),
            STARTUP_DEADLINE,
            || edge.client(&["--ca", edge.trust.to_str().unwrap()])["cn"] == "default",
        );
        edge
    }
}

/// A herald edge of a test.
struct Edge {
    herald: Herald,
    ip: [u8; 4],
    tls: u16,
    plain: u16,
    metrics: u16,
    root: PathBuf,
    trust: PathBuf,
}

impl Edge {
    /// One handshake by tests/tls_client.py with this edge's TLS listener; its JSON answer.
    fn client(&self, args: &[&str]) -> Value {
        let addr = ip_text(self.ip);
        let mut with_addr = vec!["--addr", addr.as_str()];
        with_addr.extend_from_slice(args);
        tls_client(self.tls, &with_addr)
    }

    fn issued(&self, name: &str) -> Value {
        self.client(&["--sni", name, "--ca", self.root.to_str().unwrap()])
    }

    /// A handshake for `name`, checked against Pebble's root or the default certificate.
    fn served(&self, name: &str) -> Value {
        self.client(&["--sni", name, "--ca", self.trust.to_str().unwrap()])
    }

    /// Whether a handshake for `name` gets an issued certificate for it.
    fn serves_issued(&self, name: &str) -> bool {
        is_issued_for(&self.issued(name), name)
    }

    /// Handshakes for every name in `names` at once (tests/tls_many.py), each given
    /// `timeout_seconds`: what each got.
    fn served_many(&self, names: &[String], timeout_seconds: u32) -> HashMap<String, Value> {
        let list =
            self.trust
                .with_file_name(format!("names-{}-{}.txt", ip_text(self.ip), names.len()));
        fs::write(&list, names.join("\n")).unwrap();
        let out = Command::new("python3")
            .arg(repo_path("tests/tls_many.py"))
            .arg(ip_text(self.ip))
            .arg(self.tls.to_string())
            .arg(&self.trust)
            .arg(timeout_seconds.to_string())
            .arg(&list)
            .output()
            .expect("run tests/tls_many.py");
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "tls_many: {e}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(self.metrics, name, labels)
    }

    fn orders(&self, result: &str) -> f64 {
        self.metric("herald_acme_orders_total", &[("result", result)])
    }

    fn asked(&self, answer: &str) -> f64 {
        self.metric("herald_acme_ask_total", &[("answer", answer)])
    }

    fn storage_errors(&self) -> f64 {
        self.metric("herald_acme_storage_errors_total", &[])
    }

    /// `GET /` with Host `host` on the plain HTTP listener: the status (whatever it is: the
    /// tests' backend is down), and how long the answer took.
    fn plain_get(&self, host: &str) -> (u16, Duration) {
        self.plain_get_path(host, "/")
    }

    fn plain_get_path(&self, host: &str, path: &str) -> (u16, Duration) {
        let started = Instant::now();
        let mut stream = TcpStream::connect(SocketAddr::from((self.ip, self.plain))).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let head = String::from_utf8_lossy(&answer);
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no answer to GET / for {host}: {head:?}"));
        (status, started.elapsed())
    }

    fn assert_alive(&self) {
        assert!(
            alive(self.herald.pid()),
            "herald exited:\n{}",
            self.herald.log()
        );
    }
}

/// Whether a handshake's answer is a certificate issued for `name` (checked against the root
/// it was given), not the default one.
fn is_issued_for(answer: &Value, name: &str) -> bool {
    answer.get("error").is_none()
        && answer["cn"] != "default"
        && answer["san"]
            .as_array()
            .is_some_and(|names| names.iter().any(|n| n == name))
}

/// `name` summed over `edges`.
fn total(edges: &[&Edge], name: &str, labels: &[(&str, &str)]) -> f64 {
    edges.iter().map(|edge| edge.metric(name, labels)).sum()
}

/// A suffix no earlier run used, for names that must be new to the edges.
fn nonce() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:x}{:x}", std::process::id(), nanos)
}

fn names(format: impl Fn(usize) -> String, count: usize) -> Vec<String> {
    (0..count).map(format).collect()
}

/// An approved name handshaken at edge A, while names resolve to edge B: A orders, Pebble
/// validates at B (which answers the token from Redis), A's waiting handshake gets the
/// certificate, and B serves the same one. A plain HTTP request starts an order too, without
/// waiting for it.
#[test]
fn a_certificate_ordered_at_one_edge_is_validated_at_and_served_by_another() {
    let Some(lab) = Lab::start(157_766_400, EDGE_B) else {
        return;
    };
    lab.ask.allow(&["site1.test".into(), "site2.test".into()]);
    let a = lab.edge("edge-a", EDGE_A, "20s", 20);
    let b = lab.edge("edge-b", EDGE_B, "20s", 20);

    let started = Instant::now();
    let first = a.issued("site1.test");
    assert!(
        is_issued_for(&first, "site1.test"),
        "edge A's first handshake for site1.test (waiting up to 20s): {first}"
    );
    assert!(started.elapsed() < Duration::from_secs(25));
    assert_eq!(first["san"], serde_json::json!(["site1.test"]), "{first}");
    assert!(lab.ask.count("site1.test") >= 1);

    wait_until("edge B serving site1.test", SHARE_DEADLINE, || {
        b.serves_issued("site1.test")
    });
    let at_b = b.issued("site1.test");
    assert_eq!(
        at_b["serial"], first["serial"],
        "the same certificate: {at_b}"
    );
    let edges = [&a, &b];
    assert_eq!(
        total(&edges, "herald_acme_orders_total", &[("result", "issued")]),
        1.0,
        "one order for both edges"
    );
    assert_eq!(
        total(&edges, "herald_acme_orders_total", &[("result", "failed")]),
        0.0
    );
    assert!(a.asked("allowed") >= 1.0);
    wait_until(
        "both edges counting one ACME certificate",
        METRIC_DEADLINE,
        || {
            a.metric("herald_acme_certificates", &[]) == 1.0
                && b.metric("herald_acme_certificates", &[]) == 1.0
        },
    );
    // Renewal is due when a third of the lifetime is left (a little earlier with jitter).
    let (not_before, not_after) = (
        first["not_before"].as_i64().unwrap(),
        first["not_after"].as_i64().unwrap(),
    );
    let lifetime = (not_after - not_before) as f64;
    wait_until("the renewal scheduled", METRIC_DEADLINE, || {
        a.metric("herald_acme_soonest_renewal_timestamp_seconds", &[]) > 0.0
    });
    let renewal = a.metric("herald_acme_soonest_renewal_timestamp_seconds", &[]);
    assert!(
        renewal >= not_before as f64 + 0.5 * lifetime
            && renewal <= not_after as f64 - 0.2 * lifetime,
        "soonest renewal {renewal} for a certificate valid {not_before}..{not_after}"
    );

    // A plain request to B (names now resolving to A) orders site2.test without waiting.
    lab.acme.resolve_to(EDGE_A);
    let (_, took) = b.plain_get("site2.test");
    assert!(
        took < Duration::from_secs(10),
        "the plain request waited {took:?}"
    );
    wait_until("site2.test issued", ISSUE_DEADLINE, || {
        total(&edges, "herald_acme_orders_total", &[("result", "issued")]) == 2.0
    });
    for edge in edges {
        wait_until("site2.test served by both edges", SHARE_DEADLINE, || {
            edge.serves_issued("site2.test")
        });
    }
    assert_eq!(
        total(&edges, "herald_acme_orders_total", &[("result", "issued")]),
        2.0
    );
    assert_eq!(
        total(&edges, "herald_acme_orders_total", &[("result", "failed")]),
        0.0
    );
}

/// A denied name and 500 names nobody approved, all at once at two edges: each gets the
/// default certificate without waiting, the ask endpoint hears of each name at most once, and
/// nothing is ordered. A denied name is remembered: asking again later sends no new question.
#[test]
fn names_not_approved_get_the_default_certificate_and_are_asked_about_once() {
    let Some(lab) = Lab::start(157_766_400, EDGE_A) else {
        return;
    };
    lab.ask.allow(&["someone-else.test".into()]);
    let a = lab.edge("edge-a", EDGE_A, "20s", 20);
    let b = lab.edge("edge-b", EDGE_B, "20s", 20);

    let denied = a.served("denied.test");
    assert_eq!(denied["cn"], "default", "{denied}");
    assert_eq!(lab.ask.count("denied.test"), 1);
    // A token no order made (or one no order could make) is not answered by the edge: the
    // request goes on to the site (here, a backend that is down), which may have its own.
    for token in [
        "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0",
        "..%2F..%2Fetc%2Fpasswd",
    ] {
        let (status, _) = a.plain_get_path(
            "denied.test",
            &format!("/.well-known/acme-challenge/{token}"),
        );
        assert!(status >= 500, "{token}: {status}");
    }

    let suffix = nonce();
    let random = names(|i| format!("r{i}-{suffix}.test"), 500);
    let (half_a, half_b) = random.split_at(250);
    // Both edges at once; a client that waited for an order would time out.
    let (got_a, got_b) = std::thread::scope(|scope| {
        let at_b = scope.spawn(|| b.served_many(half_b, 10));
        (a.served_many(half_a, 10), at_b.join().unwrap())
    });
    for (name, answer) in got_a.iter().chain(&got_b) {
        assert_eq!(answer["cn"], "default", "{name}: {answer}");
    }
    assert_eq!(got_a.len() + got_b.len(), 500);
    let counts = lab.ask.counts();
    for name in &random {
        let asked = counts.get(name).copied().unwrap_or(0);
        assert!(asked <= 1, "{name} asked about {asked} times");
    }
    assert!(
        counts
            .keys()
            .all(|name| name == "denied.test" || random.contains(name)),
        "asked about names never used: {counts:?}"
    );
    let edges = [&a, &b];
    for result in ["issued", "failed"] {
        assert_eq!(
            total(&edges, "herald_acme_orders_total", &[("result", result)]),
            0.0,
            "orders {result}"
        );
    }
    assert_eq!(total(&edges, "herald_acme_orders_queued", &[]), 0.0);
    assert_eq!(total(&edges, "herald_acme_certificates", &[]), 0.0);
    assert_eq!(
        total(&edges, "herald_acme_ask_total", &[("answer", "allowed")]),
        0.0
    );
    assert!(a.asked("denied") >= 1.0);

    // The denied name again, by plain HTTP and by a handshake: no new question.
    a.plain_get("denied.test");
    let again = a.served("denied.test");
    assert_eq!(again["cn"], "default", "{again}");
    assert_eq!(
        lab.ask.count("denied.test"),
        1,
        "denied.test asked about again"
    );
    for edge in edges {
        assert_eq!(edge.orders("issued") + edge.orders("failed"), 0.0);
        edge.assert_alive();
    }
}

/// Certificates valid for a minute: renewed when a third of that is left, the new one served
/// by the same process before the old one expires, every handshake meanwhile getting a valid
/// certificate for the name.
#[test]
fn a_certificate_is_renewed_and_served_without_a_restart() {
    let Some(lab) = Lab::start(60, EDGE_A) else {
        return;
    };
    lab.ask.allow(&["renew.test".into()]);
    let a = lab.edge("edge-a", EDGE_A, "20s", 20);
    let pid = a.herald.pid();

    let first = a.issued("renew.test");
    assert!(is_issued_for(&first, "renew.test"), "{first}");
    let (not_before, not_after) = (
        first["not_before"].as_i64().unwrap(),
        first["not_after"].as_i64().unwrap(),
    );
    assert!(not_after - not_before <= 60, "{first}");
    wait_until("the renewal scheduled", METRIC_DEADLINE, || {
        a.metric("herald_acme_soonest_renewal_timestamp_seconds", &[]) > 0.0
    });
    let renewal = a.metric("herald_acme_soonest_renewal_timestamp_seconds", &[]);
    assert!(
        renewal >= not_before as f64 + 30.0 && renewal <= not_after as f64 - 12.0,
        "soonest renewal {renewal} for a certificate valid {not_before}..{not_after}"
    );

    // Handshakes until the certificate changes, each of them with a valid one.
    let deadline = Instant::now() + ISSUE_DEADLINE;
    let renewed = loop {
        let answer = a.issued("renew.test");
        assert!(
            is_issued_for(&answer, "renew.test"),
            "at {} (the first certificate valid until {not_after}): {answer}",
            now()
        );
        if answer["serial"] != first["serial"] {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "no renewal by {} (the certificate was valid {not_before}..{not_after})",
            now()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        renewed["not_after"].as_i64().unwrap() > not_after,
        "{first} then {renewed}"
    );
    assert!(
        now() <= not_after,
        "the renewed certificate came after the old one expired"
    );
    assert_eq!(a.herald.pid(), pid);
    a.assert_alive();
    assert!(a.orders("issued") >= 2.0);
    assert_eq!(a.orders("failed"), 0.0);
    wait_until("the next renewal scheduled later", METRIC_DEADLINE, || {
        a.metric("herald_acme_soonest_renewal_timestamp_seconds", &[]) > renewal
    });
    assert_eq!(a.metric("herald_acme_certificates", &[]), 1.0);
}

/// Redis killed after a certificate was issued: both edges keep serving it, a new name gets
/// the default certificate and counts a storage error, nothing crashes; Redis back on the same
/// port (empty): a new name is issued again and shared.
#[test]
fn edges_keep_their_certificates_while_redis_is_down_and_issue_again_when_it_returns() {
    let Some(mut lab) = Lab::start(157_766_400, EDGE_A) else {
        return;
    };
    lab.ask.allow(&[
        "kept.test".into(),
        "during.test".into(),
        "after.test".into(),
    ]);
    let a = lab.edge("edge-a", EDGE_A, "20s", 20);
    let b = lab.edge("edge-b", EDGE_B, "20s", 20);
    let edges = [&a, &b];

    let kept = a.issued("kept.test");
    assert!(is_issued_for(&kept, "kept.test"), "{kept}");
    wait_until("edge B serving kept.test", SHARE_DEADLINE, || {
        b.serves_issued("kept.test")
    });
    let (errors_before, errors_before_b) = (a.storage_errors(), b.storage_errors());

    lab.redis.kill();
    for edge in edges {
        let answer = edge.issued("kept.test");
        assert!(is_issued_for(&answer, "kept.test"), "Redis down: {answer}");
        assert_eq!(answer["serial"], kept["serial"]);
    }
    // A new approved name needs Redis: the default certificate, and a storage error.
    let during = a.served("during.test");
    assert_eq!(during["cn"], "default", "Redis down: {during}");
    wait_until("a storage error counted", METRIC_DEADLINE, || {
        a.storage_errors() > errors_before
    });
    assert!(b.storage_errors() >= errors_before_b);
    for edge in edges {
        edge.assert_alive();
        let answer = edge.issued("kept.test");
        assert!(
            is_issued_for(&answer, "kept.test"),
            "Redis still down: {answer}"
        );
    }
    assert_eq!(
        total(&edges, "herald_acme_orders_total", &[("result", "issued")]),
        1.0
    );

    lab.redis.restart();
    wait_until("after.test issued at edge A", ISSUE_DEADLINE, || {
        a.serves_issued("after.test")
    });
    wait_until("edge B serving after.test", SHARE_DEADLINE, || {
        b.serves_issued("after.test")
    });
    for edge in edges {
        edge.assert_alive();
        let answer = edge.issued("kept.test");
        assert!(is_issued_for(&answer, "kept.test"), "Redis back: {answer}");
    }
}

/// 50 approved names at once at an edge allowed 10 orders an hour: 10 are issued and served,
/// 40 wait in the queue (and stay there), none failed; the others get the default certificate
/// after the short wait.
#[test]
fn orders_past_the_hourly_limit_wait_in_the_queue() {
    let Some(lab) = Lab::start(157_766_400, EDGE_A) else {
        return;
    };
    let suffix = nonce();
    let paced = names(|i| format!("p{i}-{suffix}.test"), 50);
    lab.ask.allow(&paced);
    let a = lab.edge("edge-a", EDGE_A, "1s", 10);

    for (name, answer) in a.served_many(&paced, 10) {
        assert!(answer.get("error").is_none(), "{name}: {answer}");
    }
    wait_until("10 issued, 40 queued", ISSUE_DEADLINE, || {
        a.orders("issued") == 10.0 && a.metric("herald_acme_orders_queued", &[]) == 40.0
    });
    // And it stays so.
    let settled = Instant::now();
    while settled.elapsed() < Duration::from_secs(3) {
        assert_eq!(a.orders("issued"), 10.0);
        assert_eq!(a.metric("herald_acme_orders_queued", &[]), 40.0);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(a.orders("failed"), 0.0);

    let served = a.served_many(&paced, 10);
    let issued: Vec<&String> = paced
        .iter()
        .filter(|name| is_issued_for(&served[*name], name))
        .collect();
    assert_eq!(issued.len(), 10, "{served:?}");
    for name in &paced {
        let answer = &served[name];
        assert!(
            issued.contains(&name) || answer["cn"] == "default",
            "{name}: {answer}"
        );
    }
    assert_eq!(a.orders("issued"), 10.0);
    assert_eq!(a.metric("herald_acme_orders_queued", &[]), 40.0);
    wait_until("10 ACME certificates counted", METRIC_DEADLINE, || {
        a.metric("herald_acme_certificates", &[]) == 10.0
    });
    a.assert_alive();
}
