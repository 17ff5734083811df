//! TLS and HTTP/2 on the edge, with real clients: Python's ssl module (tests/tls_client.py)
//! says which certificate a handshake got, curl speaks HTTP/2 to real apps behind a real
//! backend. Certificates are made by the openssl command line for each test, by a CA of its
//! own, each with a common name that tells the clients which one they got.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a change in certs_dir may take to be served in the tests that run many at once
/// (inotify tells Herald within milliseconds; the client takes a process each time).
const RELOAD_DEADLINE: Duration = Duration::from_secs(15);
const DAY: i64 = 86_400;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A CA made for one test, and the certificates it issues.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
}

/// A certificate and its key, written outside certs_dir.
struct Issued {
    crt: PathBuf,
    key: PathBuf,
    /// Its notAfter lies between these (seconds since the epoch).
    not_after: (i64, i64),
}

/// A new P-256 key for `req`.
const NEW_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

impl Pki {
    fn new(root: &Path) -> Pki {
        let dir = root.join("pki");
        fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.crt");
        openssl(&format!(
            "req -x509 {NEW_KEY} -keyout {}/ca.key -out {} -subj /CN=herald-test-ca -days 365",
            dir.display(),
            ca.display()
        ));
        Pki { dir, ca }
    }

    /// A certificate whose common name is `id`, for `names`, valid for `days`.
    fn issue(&self, id: &str, names: &[&str], days: i64) -> Issued {
        let crt = self.dir.join(format!("{id}.crt"));
        let key = self.dir.join(format!("{id}.key"));
        let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        let before = now();
        openssl(&format!(
            "req -x509 -CA {} -CAkey {}/ca.key {NEW_KEY} -keyout {} -out {} -subj /CN={id} -days {days} \
             -addext subjectAltName={} -addext basicConstraints=critical,CA:FALSE",
            self.ca.display(),
            self.dir.display(),
            key.display(),
            crt.display(),
            san.join(","),
        ));
        Issued {
            crt,
            key,
            not_after: (before + days * DAY, now() + days * DAY),
        }
    }
}

impl Pki {
    /// `count` pairs `PREFIX-N` in `dir`, each for `PREFIX-N.example`, common name `PREFIX-N`.
    fn issue_many(&self, dir: &Path, prefix: &str, count: usize) {
        let out = Command::new("python3")
            .arg(repo_path("tests/make_certs.py"))
            .arg(&self.ca)
            .arg(self.dir.join("ca.key"))
            .arg(dir)
            .arg(count.to_string())
            .arg(prefix)
            .output()
            .expect("run tests/make_certs.py");
        assert!(
            out.status.success(),
            "make_certs.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Puts `file` in place as `dir/name` atomically, as a careful operator (or certbot) does.
fn install(file: &Path, dir: &Path, name: &str) {
    let temp = dir.join(format!(".{name}.tmp"));
    fs::copy(file, &temp).unwrap();
    fs::rename(&temp, dir.join(name)).unwrap();
}

/// Installs a pair as `stem.crt` + `stem.key` in `dir`: the key first, then the certificate.
fn install_pair(issued: &Issued, dir: &Path, stem: &str) {
    install(&issued.key, dir, &format!("{stem}.key"));
    install(&issued.crt, dir, &format!("{stem}.crt"));
}

/// A herald with both roles over a uWSGI emperor, its edge listening on TLS as well.
struct Node {
    herald: Herald,
    emperor: Emperor,
    pki: Pki,
    certs: PathBuf,
    plain: u16,
    tls: u16,
    backend: u16,
    metrics: u16,
    /// Last, so the processes are gone (and their logs shown) before it is removed.
    dir: tempfile::TempDir,
}

impl Node {
    /// Starts with the certificates `prepare` puts in certs_dir, a default certificate
    /// (`default`, for default.example) outside it, and `extra` lines under `edge:`.
    fn start(prepare: impl FnOnce(&Pki, &Path), extra: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        let certs = dir.path().join("certs");
        fs::create_dir_all(&certs).unwrap();
        prepare(&pki, &certs);
        let default = pki.issue("default", &["default.example"], 90);
        let emperor = Emperor::start(dir.path(), &["alpha.example", "beta.example"], &[]);
        let (plain, tls, backend, metrics) = (free_port(), free_port(), free_port(), free_port());
        let yaml = format!(
            "{}edge:\n  listen: ['127.0.0.1:{plain}']\n  backends: ['127.0.0.1:{backend}']\n  tls:\n    listen: ['127.0.0.1:{tls}']\n    certs_dir: {}\n    default_cert: {}\n    default_key: {}\n{extra}",
            emperor.backend_yaml(backend, metrics, ""),
            certs.display(),
            default.crt.display(),
            default.key.display(),
        );
        // Not the TLS port: a bare connect would count as a failed handshake.
        let herald = Herald::start(dir.path(), "node", &yaml, &[plain, backend, metrics]);
        let node = Node {
            herald,
            emperor,
            pki,
            certs,
            plain,
            tls,
            backend,
            metrics,
            dir,
        };
        wait_until("a TLS handshake", STARTUP_DEADLINE, || {
            node.handshake(Some("default.example")).get("cn").is_some()
        });
        node
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn client(&self, args: &[&str]) -> Value {
        let ca = self.pki.ca.to_str().unwrap();
        let mut all = vec!["--ca", ca];
        all.extend_from_slice(args);
        tls_client(self.tls, &all)
    }

    fn handshake(&self, sni: Option<&str>) -> Value {
        match sni {
            Some(name) => self.client(&["--sni", name]),
            None => self.client(&[]),
        }
    }

    /// The common name of the certificate served for `sni`.
    fn served(&self, sni: Option<&str>) -> String {
        let answer = self.handshake(sni);
        answer["cn"]
            .as_str()
            .unwrap_or_else(|| panic!("no certificate for {sni:?}: {answer}"))
            .to_owned()
    }

    fn wait_served(&self, sni: &str, cn: &str) {
        wait_until(&format!("{sni} served with {cn}"), RELOAD_DEADLINE, || {
            self.served(Some(sni)) == cn
        });
    }

    fn wait_log(&self, needle: &str) {
        wait_until(&format!("{needle:?} in the log"), RELOAD_DEADLINE, || {
            self.herald.log().contains(needle)
        });
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(self.metrics, name, labels)
    }

    fn handshakes(&self, result: &str) -> f64 {
        self.metric("herald_tls_handshakes_total", &[("result", result)])
    }

    /// `curl ARGS` against the edge; the body and `%{http_version}`.
    fn curl(&self, args: &[&str]) -> (String, String) {
        let body = self.root().join("curl.body");
        let out = curl(&body, args);
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            fs::read_to_string(&body).unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// `curl` to `https://SITE:PORT/PATH` with the test's CA, resolved to 127.0.0.1.
    fn curl_https(&self, site: &str, path: &str, args: &[&str]) -> (Value, String) {
        let resolve = format!("{site}:{}:127.0.0.1", self.tls);
        let url = format!("https://{site}:{}{path}", self.tls);
        let ca = self.pki.ca.to_str().unwrap().to_owned();
        let mut all = vec!["--cacert", &ca, "--resolve", &resolve];
        all.extend_from_slice(args);
        all.push(&url);
        let (body, version) = self.curl(&all);
        (
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")),
            version,
        )
    }
}

#[test]
fn sni_picks_each_certificate_by_the_names_it_carries() {
    let node = Node::start(
        |pki, certs| {
            install_pair(
                &pki.issue("exact", &["a.example.com", "www.a.example.com"], 30),
                certs,
                "a.example.com",
            );
            install_pair(
                &pki.issue("wild", &["*.example.com"], 30),
                certs,
                "wildcard",
            );
            install_pair(
                &pki.issue("multi", &["one.example.org", "*.two.example.org"], 20),
                certs,
                "multi",
            );
            // A broken pair and a mismatched one: skipped, and the others are served.
            fs::write(
                certs.join("corrupt.crt"),
                "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n",
            )
            .unwrap();
            fs::write(certs.join("corrupt.key"), "whatever").unwrap();
            let (one, other) = (
                pki.issue("mismatch-crt", &["mismatch.example"], 30),
                pki.issue("mismatch-key", &["mismatch.example"], 30),
            );
            fs::copy(&one.crt, certs.join("mismatch.crt")).unwrap();
            fs::copy(&other.key, certs.join("mismatch.key")).unwrap();
            // A file name that tries to forge a log line of its own.
            fs::write(certs.join("zz\nFORGED ERROR.crt"), "junk").unwrap();
            fs::write(certs.join("zz\nFORGED ERROR.key"), "junk").unwrap();
        },
        "",
    );
    let ok_before = node.handshakes("ok");
    let mut handshakes = 0.0;
    let mut served = |sni: Option<&str>| {
        handshakes += 1.0;
        node.served(sni)
    };
    for (sni, cn) in [
        (Some("a.example.com"), "exact"), // exact beats *.example.com
        (Some("www.a.example.com"), "exact"),
        (Some("A.Example.COM"), "exact"),
        (Some("x.example.com"), "wild"),
        (Some("x.y.example.com"), "default"), // a wildcard covers one label only
        (Some("example.com"), "default"),
        (Some("one.example.org"), "multi"),
        (Some("deep.two.example.org"), "multi"),
        (Some("two.example.org"), "default"),
        (Some("unknown.test"), "default"),
        (Some("mismatch.example"), "default"), // its pair was skipped
        (None, "default"),
    ] {
        assert_eq!(served(sni), cn, "certificate for {sni:?}");
    }

    let log = node.herald.log();
    let certs = node.certs.display();
    for expected in [
        format!("{certs}/corrupt.crt: not valid PEM"),
        format!("{certs}/mismatch.key: this private key does not belong to the certificate in {certs}/mismatch.crt; this pair is skipped"),
    ] {
        assert!(log.contains(&expected), "log lacks {expected:?}:\n{log}");
    }
    // `herald -t` reports them as warnings: the configuration is still good.
    let out = run_herald(&["-t", "-c", node.herald.config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let config = node.herald.config.display();
    let warnings: Vec<&str> = stderr.lines().collect();
    assert_eq!(warnings.len(), 3, "{stderr}");
    // Names are escaped: no line of the log or of `-t` starts where a file name says.
    for text in [&log, &stderr.to_string()] {
        assert!(!text.lines().any(|l| l.starts_with("FORGED")), "{text}");
        assert!(text.contains("zz\\nFORGED ERROR.crt"), "{text}");
    }
    assert!(
        warnings[0].starts_with(&format!(
            "{config}: edge.tls.certs_dir: warning: {certs}/corrupt.crt: not valid PEM"
        )),
        "{stderr}"
    );
    assert_eq!(warnings[1], format!("{config}: edge.tls.certs_dir: warning: {certs}/mismatch.key: this private key does not belong to the certificate in {certs}/mismatch.crt; this pair is skipped"));

    // TLS 1.2 and 1.3 only; ALPN prefers h2.
    for (version, expected) in [("1.2", "TLSv1.2"), ("1.3", "TLSv1.3")] {
        let answer = node.client(&["--sni", "a.example.com", "--tls", version]);
        handshakes += 1.0;
        assert_eq!(answer["version"], expected, "{answer}");
        assert_eq!(answer["cn"], "exact", "{answer}");
    }
    for (offered, chosen) in [
        (Some("h2,http/1.1"), Value::from("h2")),
        (Some("http/1.1"), Value::from("http/1.1")),
        (None, Value::Null),
    ] {
        let mut args = vec!["--sni", "a.example.com"];
        if let Some(offered) = offered {
            args.extend(["--alpn", offered]);
        }
        let answer = node.client(&args);
        handshakes += 1.0;
        assert_eq!(answer["alpn"], chosen, "ALPN {offered:?}: {answer}");
    }
    assert_eq!(node.handshakes("ok") - ok_before, handshakes);

    let failed_before = node.handshakes("failed");
    let answer = node.client(&["--sni", "a.example.com", "--tls", "1.1"]);
    let error = answer["error"].as_str().unwrap_or_default();
    // The server's alert, not a client that refused to try.
    assert!(
        error.contains("ALERT_HANDSHAKE_FAILURE"),
        "TLS 1.1: {answer}"
    );
    wait_until("the failed handshake counted", RELOAD_DEADLINE, || {
        node.handshakes("failed") - failed_before == 1.0
    });

    assert_eq!(node.metric("herald_tls_certificates_loaded", &[]), 4.0);
    assert_eq!(node.metric("herald_tls_certificates_invalid", &[]), 3.0);
}

#[test]
fn certificates_follow_certs_dir_while_herald_runs() {
    let node = Node::start(
        |pki, certs| install_pair(&pki.issue("site-1", &["site.example"], 30), certs, "site"),
        "",
    );
    let certs = node.certs.clone();
    let expiry = || {
        node.metric(
            "herald_tls_certificate_expiry_soonest_timestamp_seconds",
            &[],
        ) as i64
    };
    assert_eq!(node.served(Some("site.example")), "site-1");
    assert_eq!(node.served(Some("new.example")), "default");
    assert_eq!(node.metric("herald_tls_certificates_loaded", &[]), 2.0);
    let site_expiry = expiry();
    assert!(
        site_expiry > now() + 29 * DAY && site_expiry <= now() + 30 * DAY,
        "{site_expiry}"
    );

    // Added: served within seconds; it expires soonest.
    let added = node.pki.issue("new-1", &["new.example"], 2);
    install_pair(&added, &certs, "new");
    node.wait_served("new.example", "new-1");
    node.wait_log(&format!(
        "certificate {}/new.crt loaded: new.example, expires",
        certs.display()
    ));
    wait_until("the expiry gauge", RELOAD_DEADLINE, || {
        let soonest = expiry();
        soonest >= added.not_after.0 && soonest <= added.not_after.1
    });
    assert_eq!(node.metric("herald_tls_certificates_loaded", &[]), 3.0);

    // Replaced: while only the new key is in place the pair is broken, and the old
    // certificate is still served; then the new one is.
    let renewed = node.pki.issue("site-2", &["site.example"], 60);
    install(&renewed.key, &certs, "site.key");
    node.wait_log(&format!("{}/site.key: this private key does not belong to the certificate in {}/site.crt; still serving the certificate it last loaded", certs.display(), certs.display()));
    assert_eq!(node.served(Some("site.example")), "site-1");
    assert_eq!(node.metric("herald_tls_certificates_invalid", &[]), 1.0);
    install(&renewed.crt, &certs, "site.crt");
    node.wait_served("site.example", "site-2");
    wait_until("no invalid pair", RELOAD_DEADLINE, || {
        node.metric("herald_tls_certificates_invalid", &[]) == 0.0
    });

    // A corrupt pair appears: logged with its file and reason, the others unaffected.
    fs::write(certs.join("junk.key"), "junk").unwrap();
    fs::write(certs.join("junk.crt"), "junk").unwrap();
    node.wait_log(&format!("{}/junk.crt: no certificate in it (expected -----BEGIN CERTIFICATE-----); the pair is skipped", certs.display()));
    assert_eq!(node.served(Some("site.example")), "site-2");
    assert_eq!(node.served(Some("new.example")), "new-1");
    assert_eq!(node.metric("herald_tls_certificates_invalid", &[]), 1.0);

    // Removed: its name falls back to the default certificate, and the expiry gauge moves on.
    fs::remove_file(certs.join("new.crt")).unwrap();
    fs::remove_file(certs.join("new.key")).unwrap();
    node.wait_served("new.example", "default");
    node.wait_log(&format!("certificate {}/new.crt removed", certs.display()));
    wait_until(
        "the expiry gauge moves to the next certificate",
        RELOAD_DEADLINE,
        || {
            let soonest = expiry();
            soonest >= renewed.not_after.0 && soonest <= renewed.not_after.1
        },
    );
    assert_eq!(node.metric("herald_tls_certificates_loaded", &[]), 2.0);

    // certbot's layout: symlinks into an archive, switched to the renewed files.
    let archive = node.root().join("archive");
    fs::create_dir_all(&archive).unwrap();
    let first = node.pki.issue("linked-1", &["linked.example"], 30);
    let second = node.pki.issue("linked-2", &["linked.example"], 30);
    for (issued, n) in [(&first, 1), (&second, 2)] {
        fs::copy(&issued.crt, archive.join(format!("fullchain{n}.pem"))).unwrap();
        fs::copy(&issued.key, archive.join(format!("privkey{n}.pem"))).unwrap();
    }
    let link = |target: &str, name: &str| {
        let temp = certs.join(format!(".{name}.tmp"));
        std::os::unix::fs::symlink(archive.join(target), &temp).unwrap();
        fs::rename(&temp, certs.join(name)).unwrap();
    };
    link("privkey1.pem", "linked.key");
    link("fullchain1.pem", "linked.crt");
    node.wait_served("linked.example", "linked-1");
    link("privkey2.pem", "linked.key");
    link("fullchain2.pem", "linked.crt");
    node.wait_served("linked.example", "linked-2");
    assert_eq!(node.served(Some("site.example")), "site-2");

    // As certbot really renews: certs_dir links to live/NAME, whose links are switched to
    // the new files in the archive; nothing in certs_dir changes.
    let live = node.root().join("live");
    fs::create_dir_all(&live).unwrap();
    for n in 1..=2 {
        let issued = node
            .pki
            .issue(&format!("chain-{n}"), &["chain.example"], 30);
        fs::copy(&issued.crt, archive.join(format!("chain-fullchain{n}.pem"))).unwrap();
        fs::copy(&issued.key, archive.join(format!("chain-privkey{n}.pem"))).unwrap();
    }
    let live_link = |n: u32| {
        for (target, name) in [("privkey", "privkey.pem"), ("fullchain", "fullchain.pem")] {
            let temp = live.join(format!(".{name}.tmp"));
            let target = archive.join(format!("chain-{target}{n}.pem"));
            std::os::unix::fs::symlink(target, &temp).unwrap();
            fs::rename(&temp, live.join(name)).unwrap();
        }
    };
    live_link(1);
    std::os::unix::fs::symlink(live.join("privkey.pem"), certs.join("chain.key")).unwrap();
    std::os::unix::fs::symlink(live.join("fullchain.pem"), certs.join("chain.crt")).unwrap();
    node.wait_served("chain.example", "chain-1");
    live_link(2);
    node.wait_served("chain.example", "chain-2");

    // The default pair, outside certs_dir, renewed in place.
    let default = node.pki.issue("default-2", &["default.example"], 90);
    install_pair(&default, &node.pki.dir, "default");
    node.wait_served("default.example", "default-2");
    assert_eq!(node.served(Some("site.example")), "site-2");
}

/// 5,000 pairs cost no more than 10 while nothing changes (the directory is not polled), and a
/// pair added or replaced among them is served within 2 s.
#[test]
fn thousands_of_certificates_cost_nothing_while_idle() {
    const PAIRS: usize = 5_000;
    let many = Node::start(|pki, certs| pki.issue_many(certs, "bulk", PAIRS), "");
    let few = Node::start(|pki, certs| pki.issue_many(certs, "bulk", 10), "");
    for (node, pairs) in [(&many, PAIRS), (&few, 10)] {
        assert_eq!(
            node.served(Some(&format!("bulk-{}.example", pairs - 1))),
            format!("bulk-{}", pairs - 1)
        );
        // The default pair besides them.
        assert_eq!(
            node.metric("herald_tls_certificates_loaded", &[]),
            (pairs + 1) as f64
        );
    }

    // Side by side over the same 10 s, so a busy machine weighs on both alike.
    let ticks = |node: &Node| cpu_ticks(node.herald.pid());
    let before = (ticks(&many), ticks(&few));
    std::thread::sleep(Duration::from_secs(10));
    let idle = (ticks(&many) - before.0, ticks(&few) - before.1);
    eprintln!(
        "idle CPU over 10 s: {PAIRS} pairs {} ticks, 10 pairs {} ticks",
        idle.0, idle.1
    );
    assert!(
        idle.0 <= 2 * idle.1 + 5,
        "{PAIRS} pairs cost {} ticks of CPU over 10 s idle, 10 pairs {}",
        idle.0,
        idle.1
    );

    const SERVED_WITHIN: Duration = Duration::from_secs(2);
    let added = many.pki.issue("added", &["added.example"], 30);
    install_pair(&added, &many.certs, "added");
    wait_until("an added pair served", SERVED_WITHIN, || {
        many.served(Some("added.example")) == "added"
    });
    let renewed = many.pki.issue("renewed-17", &["bulk-17.example"], 30);
    install_pair(&renewed, &many.certs, "bulk-17");
    wait_until("a replaced pair served", SERVED_WITHIN, || {
        many.served(Some("bulk-17.example")) == "renewed-17"
    });
    assert_eq!(
        many.metric("herald_tls_certificates_loaded", &[]),
        (PAIRS + 2) as f64
    );
}

/// `curl ARGS`, writing the body to `body` and `%{http_version}` to standard output.
fn curl(body: &Path, args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "30", "-o", body.to_str().unwrap()])
        .args(["-w", "%{http_version}"])
        .args(args)
        .output()
        .expect("run curl")
}

fn environ<'a>(answer: &'a Value, key: &str) -> &'a str {
    answer["environ"][key].as_str().unwrap_or_default()
}

#[test]
fn http2_and_https_reach_the_apps() {
    let node = Node::start(
        |pki, certs| {
            install_pair(
                &pki.issue("sites", &["alpha.example", "beta.example"], 30),
                certs,
                "sites",
            )
        },
        "  limits:\n    keepalive_timeout: 1s\n",
    );

    // HTTP/2 over TLS: the site comes from :authority (curl sends no Host header on h2).
    let (answer, version) = node.curl_https(
        "alpha.example",
        "/",
        &["--http2", "-H", "X-Forwarded-Proto: http"],
    );
    assert_eq!(version, "2");
    assert_eq!(answer["site"], "alpha.example", "{answer}");
    assert_eq!(
        environ(&answer, "HTTP_X_FORWARDED_PROTO"),
        "https",
        "{answer}"
    );
    // The uwsgi environ says what the browser's connection was, as nginx's would: HTTPS on
    // the TLS port, in HTTP/2 (uWSGI's `HTTP/2.0 200 OK` answer still reaches the client).
    let tls_port = node.tls.to_string();
    for (key, value) in [
        ("HTTP_HOST", "alpha.example"),
        ("HTTPS", "on"),
        ("REQUEST_SCHEME", "https"),
        ("SERVER_PORT", &tls_port),
        ("SERVER_PROTOCOL", "HTTP/2.0"),
        ("REMOTE_ADDR", "127.0.0.1"),
    ] {
        assert_eq!(environ(&answer, key), value, "{key}: {answer}");
    }
    // HTTP/1.1 over TLS.
    let (answer, version) = node.curl_https("beta.example", "/", &["--http1.1"]);
    assert_eq!(version, "1.1");
    assert_eq!(answer["site"], "beta.example", "{answer}");
    assert_eq!(
        environ(&answer, "HTTP_X_FORWARDED_PROTO"),
        "https",
        "{answer}"
    );
    assert_eq!(environ(&answer, "SERVER_PROTOCOL"), "HTTP/1.1");
    assert_eq!(environ(&answer, "HTTPS"), "on");
    // Plain HTTP says so.
    let answer = get(node.plain, "alpha.example", "/").json();
    assert_eq!(
        environ(&answer, "HTTP_X_FORWARDED_PROTO"),
        "http",
        "{answer}"
    );
    assert_eq!(environ(&answer, "REQUEST_SCHEME"), "http");
    assert_eq!(environ(&answer, "SERVER_PORT"), node.plain.to_string());
    assert!(answer["environ"].get("HTTPS").is_none(), "{answer}");

    // A request body over HTTP/2.
    let upload = node.root().join("upload.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&upload, &data).unwrap();
    let sha = Command::new("sha256sum").arg(&upload).output().unwrap();
    let sha = String::from_utf8_lossy(&sha.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let file = format!("@{}", upload.display());
    let (answer, version) = node.curl_https(
        "alpha.example",
        "/upload",
        &["--http2", "--data-binary", &file],
    );
    assert_eq!(version, "2");
    assert_eq!(answer["body_length"], data.len(), "{answer}");
    assert_eq!(answer["body_sha256"], sha.as_str());

    // Idle HTTP/2 connections are closed after the keep-alive timeout (1 s here).
    let answer = node.client(&["--sni", "alpha.example", "--alpn", "h2", "--h2-idle", "20"]);
    assert_eq!(answer["alpn"], "h2", "{answer}");
    assert!(
        answer["closed_after"].is_number(),
        "an idle HTTP/2 connection stayed open: {answer}"
    );

    // h2c is off by default: prior-knowledge HTTP/2 on the plain port is not spoken...
    let resolve = format!("alpha.example:{}:127.0.0.1", node.plain);
    let plain_url = format!("http://alpha.example:{}/", node.plain);
    let out = curl(
        &node.root().join("h2c.body"),
        &["--http2-prior-knowledge", "--resolve", &resolve, &plain_url],
    );
    assert!(
        !out.status.success() || String::from_utf8_lossy(&out.stdout) != "2",
        "h2c answered without edge.h2c"
    );
    // ...and with `h2c: true` it is, next to HTTP/1.1.
    let h2c_port = free_port();
    let yaml = format!(
        "edge:\n  listen: ['127.0.0.1:{h2c_port}']\n  backends: ['127.0.0.1:{}']\n  h2c: true\n",
        node.backend
    );
    let _h2c_edge = Herald::start(node.root(), "h2c-edge", &yaml, &[h2c_port]);
    let resolve = format!("alpha.example:{h2c_port}:127.0.0.1");
    let url = format!("http://alpha.example:{h2c_port}/");
    let (body, version) = node.curl(&["--http2-prior-knowledge", "--resolve", &resolve, &url]);
    assert_eq!(version, "2");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["site"], "alpha.example", "{answer}");
    assert_eq!(
        environ(&answer, "HTTP_X_FORWARDED_PROTO"),
        "http",
        "{answer}"
    );
    assert_eq!(
        get(h2c_port, "beta.example", "/").json()["site"],
        "beta.example"
    );
}

/// HTTP/2 requests pass the same checks as HTTP/1.1 ones: a header field past
/// `large_client_header_buffers` gets 431 with its page. A body of unknown length is read
/// whole by the backend and reaches the app with its `CONTENT_LENGTH`.
#[test]
fn http2_requests_get_the_same_answers_to_bad_input() {
    let node = Node::start(
        |pki, certs| install_pair(&pki.issue("sites", &["alpha.example"], 30), certs, "sites"),
        "",
    );
    let status = |args: &[&str]| -> (String, String) {
        let resolve = format!("alpha.example:{}:127.0.0.1", node.tls);
        let url = format!("https://alpha.example:{}/", node.tls);
        let ca = node.pki.ca.to_str().unwrap().to_owned();
        let body = node.root().join("status.body");
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "--http2", "-o"])
            .arg(&body)
            .args(["-w", "%{http_version} %{http_code}", "--cacert", &ca])
            .args(["--resolve", &resolve])
            .args(args)
            .arg(&url)
            .output()
            .expect("run curl");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            fs::read_to_string(&body).unwrap_or_default(),
        )
    };
    let big = format!("X-Big: {}", "b".repeat(9000));
    let (answer, page) = status(&["-H", &big]);
    assert_eq!(answer, "2 431", "{page}");
    assert!(page.contains("431"), "{page}");
    // No Content-Length: curl streams the body as DATA frames of unknown total length.
    let upload = node.root().join("upload.txt");
    fs::write(&upload, "x".repeat(5000)).unwrap();
    let file = format!("@{}", upload.display());
    let (answer, page) = status(&["--data-binary", &file, "-H", "Content-Length:"]);
    assert_eq!(answer, "2 200", "{page}");
    assert!(page.contains("\"body_length\": 5000"), "{page}");
    assert!(page.contains("\"CONTENT_LENGTH\": \"5000\""), "{page}");
    // The same body with its length reaches the app.
    let (answer, page) = status(&["--data-binary", &file]);
    assert_eq!(answer, "2 200", "{page}");
    assert!(page.contains("\"body_length\": 5000"), "{page}");
}

/// WebSockets of pages served over HTTPS (`wss://`) go through the TLS edge like any request:
/// a cold site is started by the first one, the app hears it came over https, and messages
/// go both ways.
#[test]
fn a_websocket_over_tls_starts_its_app_and_echoes() {
    let node = Node::start(
        |pki, certs| install_pair(&pki.issue("ws", &["ws.example"], 30), certs, "ws"),
        "",
    );
    let vassal = node
        .emperor
        .vassal(&repo_path("demo/ws_echo.py"), "threads = 4\n");
    node.emperor.add_site("ws.example", &vassal);
    // Browsers open WebSockets on an HTTP/1.1 connection (no WebSockets over HTTP/2 in
    // Pingora 0.9), which ALPN offers next to h2.
    let answer = node.client(&[
        "--sni",
        "ws.example",
        "--alpn",
        "http/1.1",
        "--websocket",
        "300",
        "--host",
        "ws.example",
    ]);
    assert_eq!(answer["ws_status"], 101, "{answer}");
    assert_eq!(answer["echoed"], 300, "{answer}");
    let environ = &answer["ws_environ"];
    assert_eq!(environ["HTTP_X_FORWARDED_PROTO"], "https", "{answer}");
    assert_eq!(environ["site"], "ws.example", "{answer}");
    assert_eq!(
        node.metric("herald_app_starts_total", &[("result", "ok")]),
        1.0,
        "the first WebSocket started the app, once"
    );
}

#[test]
fn herald_t_checks_the_tls_section() {
    let root = tempfile::tempdir().unwrap();
    let pki = Pki::new(root.path());
    let good = pki.issue("good", &["good.example"], 30);
    let other = pki.issue("other", &["other.example"], 30);
    let junk = root.path().join("junk.crt");
    fs::write(&junk, "not a certificate\n").unwrap();
    let empty_dir = root.path().join("empty");
    fs::create_dir_all(&empty_dir).unwrap();
    // Runtime files in the test's own directory (Pingora's defaults, in /tmp, get a warning).
    let server = format!(
        "server:\n  pid_file: {0}/h.pid\n  upgrade_sock: {0}/h.sock\n",
        root.path().display()
    );
    let edge = |tls: &str| {
        format!(
            "{server}edge:\n  listen: ['127.0.0.1:8080']\n  backends: ['127.0.0.1:9000']\n  tls:\n{tls}"
        )
    };
    let pair = |crt: &Path, key: &Path| {
        format!(
            "    listen: ['127.0.0.1:8443']\n    default_cert: {}\n    default_key: {}\n",
            crt.display(),
            key.display()
        )
    };
    let (g, o) = (&good, &other);
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        ("corrupt-default", edge(&pair(&junk, &g.key)),
            vec![format!("edge.tls.default_cert: {}: no certificate in it", junk.display())]),
        ("mismatched-default", edge(&pair(&g.crt, &o.key)),
            vec![format!("edge.tls.default_key: {}: this private key does not belong to the certificate in {}", o.key.display(), g.crt.display())]),
        ("missing-default-key", edge(&pair(&g.crt, &root.path().join("nope.key"))),
            vec![format!("edge.tls.default_key: {}/nope.key: missing", root.path().display())]),
        ("half-default", edge(&format!("    listen: ['127.0.0.1:8443']\n    default_cert: {}\n", g.crt.display())),
            vec!["edge.tls.default_key: needed with default_cert".into()]),
        ("no-certificates", edge("    listen: ['127.0.0.1:8443']\n"),
            vec!["edge.tls: needs certs_dir, or default_cert and default_key, or both".into()]),
        ("missing-certs-dir", edge("    listen: ['127.0.0.1:8443', 'x']\n    certs_dir: /nonexistent/certs\n"),
            vec![r#"edge.tls.certs_dir: directory "/nonexistent/certs" does not exist"#.into(),
                 r#"edge.tls.listen[1]: invalid address "x""#.into()]),
        ("relative-paths", edge("    listen: ['127.0.0.1:8443']\n    default_cert: default.crt\n    default_key: default.key\n"),
            vec![r#"edge.tls.default_cert: "default.crt" must be an absolute path"#.into(),
                 r#"edge.tls.default_key: "default.key" must be an absolute path"#.into()]),
        ("every-problem-at-once", edge(&pair(&g.crt, &o.key).replace("127.0.0.1:8443", "x")),
            vec![r#"edge.tls.listen[0]: invalid address "x""#.into(),
                 format!("edge.tls.default_key: {}: this private key does not belong", o.key.display())]),
        ("listener-clash", edge(&format!("    listen: ['127.0.0.1:8080']\n    certs_dir: {}\n", empty_dir.display())),
            vec!["edge.tls.listen[0]: 127.0.0.1:8080 is already used by another listener".into()]),
        ("unknown-key", edge("    listen: ['127.0.0.1:8443']\n    cert: /x.crt\n"),
            vec!["edge.tls: unknown field `cert`".into()]),
    ];
    for (name, yaml, expected) in cases {
        let path = root.path().join(format!("{name}.yaml"));
        fs::write(&path, &yaml).unwrap();
        let out = run_herald(&["-t", "-c", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name} was accepted: {stderr}");
        for want in &expected {
            assert!(
                stderr
                    .lines()
                    .any(|l| l.starts_with(&format!("{}: {want}", path.display()))),
                "{name}: no line {want:?} in:\n{stderr}"
            );
        }
        assert_eq!(stderr.lines().count(), expected.len(), "{name}:\n{stderr}");
    }

    // An empty certs_dir is allowed (certificates may come later), with a warning.
    let path = root.path().join("empty-dir.yaml");
    fs::write(
        &path,
        edge(&format!(
            "    listen: ['127.0.0.1:8443']\n    certs_dir: {}\n",
            empty_dir.display()
        )),
    )
    .unwrap();
    let out = run_herald(&["-t", "-c", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!("{}: edge.tls: warning: no certificate yet: TLS handshakes fail until a pair is added to certs_dir", path.display())
    );
}

/// conf/edge.yaml carries the TLS section commented out; uncommented, it is valid.
#[test]
fn the_commented_tls_example_in_conf_passes_herald_t() {
    let root = tempfile::tempdir().unwrap();
    let relocate = |text: &str| {
        ["/etc/herald", "/run/herald", "/var/log/herald"]
            .iter()
            .fold(text.to_owned(), |text, prefix| {
                text.replace(prefix, &format!("{}{prefix}", root.path().display()))
            })
    };
    let example = fs::read_to_string(repo_path("conf/edge.yaml")).unwrap();
    let mut uncommented = Vec::new();
    for line in example.lines() {
        let keys = ["listen:", "certs_dir:", "default_cert:", "default_key:"];
        let line = match line.strip_prefix("  #   ") {
            Some(rest) if keys.iter().any(|k| rest.starts_with(k)) => format!("    {rest}"),
            _ => match line.strip_prefix("  # ") {
                Some(rest) if rest.starts_with("tls:") || rest.starts_with("h2c:") => {
                    format!("  {rest}")
                }
                _ => line.to_owned(),
            },
        };
        uncommented.push(relocate(&line));
    }
    let text = uncommented.join("\n");
    assert!(text.contains("\n  tls:\n    listen:"), "{text}");
    assert!(text.contains("\n  h2c: false"), "{text}");
    let certs = root.path().join("etc/herald/certs");
    for dir in [
        &certs,
        &root.path().join("run/herald"),
        &root.path().join("var/log/herald"),
    ] {
        fs::create_dir_all(dir).unwrap();
    }
    let pki = Pki::new(root.path());
    install_pair(
        &pki.issue("default", &["default.example"], 30),
        &certs,
        "default",
    );
    let path = root.path().join("edge.yaml");
    fs::write(&path, text).unwrap();
    let out = run_herald(&["-t", "-c", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// Silent connections to the TLS port count against `max_open_connections_per_client` from
/// their accept, before any handshake, and are cut at `ssl_handshake_timeout`, while other
/// clients' handshakes and requests succeed and the log stays readable.
#[test]
fn silent_tls_connections_are_capped_and_cut_while_others_are_served() {
    let node = Node::start(
        |pki, certs| install_pair(&pki.issue("sites", &["alpha.example"], 30), certs, "sites"),
        "    ssl_handshake_timeout: 2s\n  limits:\n    max_open_connections_per_client: 100\n",
    );
    let refused = || {
        node.metric(
            "herald_client_connections_refused_total",
            &[("role", "edge")],
        )
    };
    let refused_before = refused();
    let began = std::time::Instant::now();
    let silent: Vec<std::net::TcpStream> = (0..2000)
        .map(|_| connect_from([127, 0, 0, 2], node.tls))
        .collect();
    wait_until("1,900 connections refused", Duration::from_secs(20), || {
        refused() - refused_before >= 1900.0
    });
    // Another client is served meanwhile.
    let (answer, version) = node.curl_https("alpha.example", "/", &["--http1.1"]);
    assert_eq!(
        (answer["site"].as_str(), version.as_str()),
        (Some("alpha.example"), "1.1")
    );
    // Every silent connection ends: at once past the cap, at the deadline within it.
    let mut cut_at_deadline = 0;
    for mut stream in silent {
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a silent connection was not closed: {other:?}"),
        }
        if began.elapsed() >= Duration::from_millis(1900) {
            cut_at_deadline += 1;
        }
    }
    assert!(
        began.elapsed() < Duration::from_secs(12),
        "{:?}",
        began.elapsed()
    );
    assert!(
        cut_at_deadline >= 1,
        "the held connections were cut at the deadline"
    );
    wait_until(
        "the handshake timeouts counted",
        Duration::from_secs(10),
        || node.metric("herald_tls_handshake_timeouts_total", &[]) >= 90.0,
    );
    assert!(node.metric("herald_tls_handshake_timeouts_total", &[]) <= 100.0);
    // And yet another client after them all.
    let (answer, _) = node.curl_https("alpha.example", "/", &["--http2"]);
    assert_eq!(answer["site"], "alpha.example");
    // 2,000 failed handshakes, a few lines of log.
    let lines = node
        .herald
        .log()
        .lines()
        .filter(|l| l.contains("Downstream handshake"))
        .count();
    assert!(lines <= 20, "{lines} lines of failed handshakes in the log");
    assert!(node.handshakes("failed") >= 2000.0);
}

/// `force_https` and `hsts` in a site's settings, through the TLS edge: the backend decides
/// from the scheme the edge saw.
#[test]
fn an_https_only_site_is_redirected_and_told_to_stay_on_https() {
    let node = Node::start(
        |pki, certs| install_pair(&pki.issue("alpha", &["alpha.example"], 30), certs, "alpha"),
        "",
    );
    fs::write(
        node.emperor.sites_dir.join("alpha.example.yaml"),
        "force_https: true\nhsts: 180d\n",
    )
    .unwrap();
    let plain = |request: &str| send_raw(node.plain, request.as_bytes());
    // Settings are looked at once a second.
    wait_until("the redirect in force", RELOAD_DEADLINE, || {
        plain("GET /hello?x=1 HTTP/1.1\r\nHost: alpha.example\r\nConnection: close\r\n\r\n").status
            == 301
    });
    let get = plain("GET /hello?x=1 HTTP/1.1\r\nHost: alpha.example\r\nConnection: close\r\n\r\n");
    assert_eq!(
        get.header("location"),
        Some("https://alpha.example/hello?x=1")
    );
    assert_eq!(
        get.header("strict-transport-security"),
        None,
        "not on plain HTTP"
    );
    let post = plain(
        "POST /form HTTP/1.1\r\nHost: alpha.example\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    );
    assert_eq!(post.status, 308, "the method and body are kept");
    assert_eq!(post.header("location"), Some("https://alpha.example/form"));
    // Over HTTPS: the app's answer, with HSTS; a forged X-Forwarded-Proto over plain HTTP is
    // dropped by the edge and changes nothing.
    let headers = node.root().join("headers.txt");
    let (answer, _) = node.curl_https("alpha.example", "/", &["-D", headers.to_str().unwrap()]);
    assert_eq!(answer["environ"]["HTTPS"], "on", "{answer}");
    let head = fs::read_to_string(&headers).unwrap().to_ascii_lowercase();
    assert!(
        head.contains("strict-transport-security: max-age=15552000"),
        "{head}"
    );
    let forged = plain(
        "GET /hello HTTP/1.1\r\nHost: alpha.example\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(forged.status, 301);
    // Other sites are unaffected.
    assert_eq!(
        plain("GET /hello HTTP/1.1\r\nHost: beta.example\r\nConnection: close\r\n\r\n").status,
        200
    );
}
