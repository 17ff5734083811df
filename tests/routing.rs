//! The warm request path end to end: browser → herald edge → herald backend → uWSGI app,
//! with a real emperor, two backend processes and one edge on 127.0.0.1.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};

const SITES: [&str; 3] = ["alpha.example", "beta.example", "gamma.example"];

struct Cluster {
    emperor: Emperor,
    backends: Vec<(u16, u16, Herald)>, // (listen port, metrics port, process)
    edge_port: u16,
    _edge: Herald,
    // Dropped last: the processes above stop (and print their logs on failure) first.
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// `stopped` sites have a vassal file in sites_dir but no running app.
    fn start(stopped: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let emperor = Emperor::start(root, &SITES, stopped);
        let backends: Vec<(u16, u16, Herald)> = (0..2)
            .map(|i| {
                let (port, metrics) = (free_port(), free_port());
                let yaml = emperor.backend_yaml(port, metrics, "");
                let herald = Herald::start(root, &format!("backend{i}"), &yaml, &[port, metrics]);
                (port, metrics, herald)
            })
            .collect();
        let edge_port = free_port();
        let list: Vec<String> = backends
            .iter()
            .map(|(p, _, _)| format!("'127.0.0.1:{p}'"))
            .collect();
        let yaml = format!(
            "edge:\n  listen: ['127.0.0.1:{edge_port}']\n  backends: [{}]\n",
            list.join(", ")
        );
        let edge = Herald::start(root, "edge", &yaml, &[edge_port]);
        Cluster {
            _dir: dir,
            emperor,
            backends,
            edge_port,
            _edge: edge,
        }
    }

    /// Requests each backend has answered with a status of `class` (`2xx`, `4xx`, ...).
    fn backend_counts(&self, class: &str) -> Vec<f64> {
        self.backends
            .iter()
            .map(|(_, metrics, _)| {
                metric(
                    *metrics,
                    "herald_requests_total",
                    &[("role", "backend"), ("code", class)],
                )
            })
            .collect()
    }
}

#[test]
fn each_site_gets_its_own_app_and_always_the_same_backend() {
    let cluster = Cluster::start(&[]);
    for site in SITES {
        let before = cluster.backend_counts("2xx");
        for _ in 0..10 {
            let resp = get(cluster.edge_port, site, "/");
            assert_eq!(resp.status, 200, "{site}: {}", resp.text());
            assert_eq!(resp.json()["site"], site);
        }
        // Counted in the request's last hook, just after the client has its answer.
        let moved = || -> Vec<f64> {
            let after = cluster.backend_counts("2xx");
            after.iter().zip(&before).map(|(a, b)| a - b).collect()
        };
        wait_until(
            "the 10 requests counted",
            std::time::Duration::from_secs(5),
            || moved().iter().sum::<f64>() >= 10.0,
        );
        let moved = moved();
        assert!(
            moved.contains(&10.0) && moved.contains(&0.0),
            "{site}: requests per backend {moved:?}, expected all 10 on one"
        );
    }
    // The site name is normalised before hashing: case, port and trailing dot don't move it.
    let resp = get(cluster.edge_port, "ALPHA.Example.:8080", "/hello");
    assert_eq!(resp.status, 200);
    assert!(
        resp.text().starts_with("Hello from alpha.example"),
        "{}",
        resp.text()
    );
}

#[test]
fn a_thousand_sites_spread_over_both_backends() {
    let cluster = Cluster::start(&[]);
    let before = cluster.backend_counts("4xx");
    for i in 0..1000 {
        let resp = get(cluster.edge_port, &format!("site{i}.example.org"), "/");
        assert_eq!(resp.status, 404, "unknown site {i}");
    }
    let after = cluster.backend_counts("4xx");
    let shares: Vec<f64> = after
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b) / 1000.0)
        .collect();
    assert_eq!(
        shares.iter().sum::<f64>(),
        1.0,
        "every request reached a backend: {shares:?}"
    );
    for share in &shares {
        assert!(*share >= 0.35, "uneven spread {shares:?}");
    }
}

#[test]
fn unknown_site_is_404_and_a_stopped_app_starts_through_the_edge() {
    let cluster = Cluster::start(&["sleepy.example"]);
    let resp = get(cluster.edge_port, "nobody.example", "/");
    assert_eq!(resp.status, 404);
    assert!(
        resp.text().contains("There is no site with this name here"),
        "{}",
        resp.text()
    );
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );

    // A stale socket file that nobody listens on is the same as a stopped app.
    let stale = cluster.emperor.sockets_dir.join("sleepy.example.sock");
    std::os::unix::net::UnixListener::bind(stale)
        .map(drop)
        .unwrap();
    let resp = get(cluster.edge_port, "sleepy.example", "/hello");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        resp.text().starts_with("Hello from sleepy.example"),
        "{}",
        resp.text()
    );
}

#[test]
fn forwarding_headers_say_who_the_client_is_and_cannot_be_forged() {
    let cluster = Cluster::start(&[]);
    // A site on an http-socket, started by its first request.
    let vassal = cluster.emperor.vassal(&repo_path("demo/app.py"), "");
    cluster.emperor.add_site(
        "http.example",
        &vassal.replace("\nsocket = ", "\nhttp-socket = "),
    );
    let forged = [
        ("X-Forwarded-For", "203.0.113.66"),
        ("X-Real-IP", "203.0.113.66"),
        ("X-Forwarded-Proto", "https"),
        ("Forwarded", "for=203.0.113.66;proto=https"),
        // What Django (USE_X_FORWARDED_HOST/PORT) and Werkzeug's ProxyFix read too.
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Port", "443"),
        ("X-Forwarded-Prefix", "/evil"),
        ("X-Forwarded-Ssl", "on"),
    ];
    // Never passed on by the edge, in any spelling.
    let not_passed = [
        "HTTP_X_FORWARDED_HOST",
        "HTTP_X_FORWARDED_PORT",
        "HTTP_X_FORWARDED_PREFIX",
        "HTTP_X_FORWARDED_SSL",
    ];
    for (site, listens) in [("beta.example", "socket"), ("http.example", "http-socket")] {
        let mut raw = format!("GET / HTTP/1.1\r\nHost: {site}\r\nConnection: close\r\n");
        for (name, value) in forged {
            raw.push_str(&format!("{name}: {value}\r\n"));
        }
        // uWSGI's http-socket makes `X_Forwarded_Host` HTTP_X_FORWARDED_HOST too.
        raw.push_str("X_Forwarded_Host: evil.example\r\nX_Forwarded_For: 203.0.113.66\r\n\r\n");
        let environ = send_raw(cluster.edge_port, raw.as_bytes()).json()["environ"].clone();
        assert_eq!(
            environ["HTTP_X_FORWARDED_FOR"], "127.0.0.1",
            "{listens}: {environ}"
        );
        assert_eq!(environ["HTTP_X_REAL_IP"], "127.0.0.1", "{listens}");
        assert_eq!(environ["HTTP_X_FORWARDED_PROTO"], "http", "{listens}");
        for key in not_passed {
            assert!(environ.get(key).is_none(), "{listens}: {key} in {environ}");
        }
        assert!(
            !environ["HTTP_FORWARDED"]
                .as_str()
                .unwrap()
                .contains("203.0.113.66"),
            "{listens}: {environ}"
        );
        assert_eq!(environ["HTTP_HOST"], site, "Host is preserved");
    }

    // A trusted hop (the backends here list the edges' 127.0.0.1) may speak for the client...
    let (backend_port, _, _) = cluster.backends[0];
    let environ = get_with(backend_port, "beta.example", "/", &forged).json()["environ"].clone();
    assert_eq!(environ["HTTP_X_FORWARDED_FOR"], "203.0.113.66");

    // ...an untrusted one may not: by default nobody is trusted, loopback included (every app
    // on a backend's host can reach it there).
    let root = tempfile::tempdir().unwrap();
    let (port, metrics) = (free_port(), free_port());
    let yaml = cluster
        .emperor
        .backend_yaml_trusting(port, metrics, "", &[]);
    let _untrusting = Herald::start(root.path(), "untrusting", &yaml, &[port]);
    let answer = get_with(port, "beta.example", "/", &forged).json();
    let environ = &answer["environ"];
    assert_eq!(environ["HTTP_X_FORWARDED_FOR"], "127.0.0.1");
    assert_eq!(environ["HTTP_X_REAL_IP"], "127.0.0.1");
    assert_eq!(environ["HTTP_X_FORWARDED_PROTO"], "http");
    assert_eq!(environ["REQUEST_SCHEME"], "http");
    for key in not_passed {
        assert!(environ.get(key).is_none(), "{key} in {environ}");
    }
}

/// An edge behind the operator's own load balancer (`edge.trusted_proxies`) takes the client's
/// address and scheme from it, and from nobody else.
#[test]
fn an_edge_believes_only_the_operators_load_balancer() {
    let cluster = Cluster::start(&[]);
    let (backend_port, _, _) = cluster.backends[0];
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let yaml = format!(
        "edge:\n  listen: ['127.0.0.1:{port}']\n  backends: ['127.0.0.1:{backend_port}']\n  trusted_proxies: ['127.0.0.1/32']\n"
    );
    let _edge = Herald::start(root.path(), "behind-lb", &yaml, &[port]);
    let request = b"GET / HTTP/1.1\r\nHost: beta.example\r\nConnection: close\r\n\
        X-Forwarded-For: 6.6.6.6, 198.51.100.7\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\r\n";
    let ask = |from: [u8; 4]| {
        let mut stream = connect_from(from, port);
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.write_all(request).unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        let body = &answer[answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
        serde_json::from_slice::<serde_json::Value>(body).unwrap()["environ"].clone()
    };
    // From the load balancer: the address it added last, and its scheme.
    let environ = ask([127, 0, 0, 1]);
    assert_eq!(environ["REMOTE_ADDR"], "198.51.100.7", "{environ}");
    assert_eq!(environ["HTTP_X_FORWARDED_FOR"], "198.51.100.7");
    assert_eq!(environ["HTTPS"], "on");
    // From anywhere else: the connection's own.
    let environ = ask([127, 0, 0, 2]);
    assert_eq!(environ["REMOTE_ADDR"], "127.0.0.2", "{environ}");
    assert_eq!(environ["REQUEST_SCHEME"], "http");
    assert!(environ.get("HTTPS").is_none());
}

#[test]
fn absolute_uri_names_the_site() {
    let cluster = Cluster::start(&[]);
    let resp = send_raw(cluster.edge_port, b"GET http://gamma.example/hello?x=1 HTTP/1.1\r\nHost: gamma.example\r\nConnection: close\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert!(
        resp.text().starts_with("Hello from gamma.example"),
        "{}",
        resp.text()
    );
    // HTTP/1.0 without a Host header: the authority alone decides; the app gets origin form.
    let resp = send_raw(
        cluster.edge_port,
        b"GET http://gamma.example/env?x=1 HTTP/1.0\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    let answer = resp.json();
    assert_eq!(answer["site"], "gamma.example");
    assert_eq!(answer["path"], "/env");
    assert_eq!(answer["environ"]["QUERY_STRING"], "x=1");
    // A Host that disagrees with the authority is refused rather than guessed at.
    let resp = send_raw(
        cluster.edge_port,
        b"GET http://gamma.example/ HTTP/1.1\r\nHost: alpha.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(resp.status, 400);
}

#[test]
fn hostile_hosts_get_400_and_never_reach_a_file() {
    let cluster = Cluster::start(&[]);
    // A vassal file just outside sites_dir: no Host may name it.
    let outside = cluster.emperor.sites_dir.parent().unwrap().join("evil.ini");
    std::fs::copy(
        cluster.emperor.sites_dir.join("alpha.example.ini"),
        &outside,
    )
    .unwrap();
    let long_label = format!("{}.example", "a".repeat(64));
    let long_name = vec!["abcdefghij"; 24].join(".");
    let hosts: Vec<Vec<u8>> = [
        "",
        ".",
        "..",
        "../evil",
        "..%2fevil",
        "sites/../evil",
        "/etc/passwd",
        "a/b",
        "a\\b",
        "%2e%2e",
        "alpha.example%00",
        "alpha example",
        "alpha..example",
        ".alpha.example",
        "-alpha.example",
        "alpha-.example",
        "alpha_beta.example",
        "user@alpha.example",
        "alpha.example:",
        "alpha.example:99999",
        "alpha.example:8o",
        "127.0.0.1",
        "127.1",
        "[::1]",
        "[::1]:80",
        "*.example",
        "alpha.example;rm",
        &long_label,
        &long_name,
    ]
    .iter()
    .map(|h| h.as_bytes().to_vec())
    .chain([
        b"alpha\x00.example".to_vec(),
        "ålpha.example".as_bytes().to_vec(),
        b"alpha\t.example".to_vec(),
    ])
    .collect();
    assert!(hosts.len() >= 15);
    for port in [cluster.edge_port, cluster.backends[0].0] {
        for host in &hosts {
            let mut raw = b"GET / HTTP/1.1\r\nHost: ".to_vec();
            raw.extend_from_slice(host);
            raw.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
            let resp = send_raw(port, &raw);
            assert_eq!(
                resp.status,
                400,
                "Host {:?} on port {port}: {}",
                String::from_utf8_lossy(host),
                resp.text()
            );
        }
        // No Host at all, and two of them.
        for raw in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: alpha.example\r\nHost: beta.example\r\nConnection: close\r\n\r\n",
        ] {
            assert_eq!(send_raw(port, raw).status, 400, "{:?}", String::from_utf8_lossy(raw));
        }
    }
    let served = cluster.backend_counts("2xx").iter().sum::<f64>();
    assert_eq!(served, 0.0, "no hostile request reached an app");
}

#[test]
fn request_bodies_reach_the_app() {
    let cluster = Cluster::start(&[]);
    let body = vec![b'x'; 256 * 1024];
    let mut raw = format!(
        "POST /upload HTTP/1.1\r\nHost: alpha.example\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let answer = send_raw(cluster.edge_port, &raw).json();
    assert_eq!(answer["body_length"], body.len());
}

#[test]
fn metrics_count_requests_by_role_and_class() {
    let cluster = Cluster::start(&[]);
    let counts = |port| -> HashMap<&str, f64> {
        ["2xx", "4xx"]
            .into_iter()
            .map(|c| {
                (
                    c,
                    metric(
                        port,
                        "herald_requests_total",
                        &[("role", "backend"), ("code", c)],
                    ),
                )
            })
            .collect()
    };
    let (backend_port, metrics_port, _) = cluster.backends[0];
    let before = counts(metrics_port);
    assert_eq!(get(backend_port, "alpha.example", "/").status, 200);
    assert_eq!(get(backend_port, "bad_host", "/").status, 400);
    // Health checks are answered by either role without touching any site.
    for port in [backend_port, cluster.edge_port] {
        let resp = get(port, "herald-health", "/");
        assert_eq!(resp.status, 200);
        assert!(resp.text().contains("This server is up"));
    }
    let after = counts(metrics_port);
    assert_eq!(
        after["2xx"] - before["2xx"],
        2.0,
        "the app request and the health check"
    );
    assert_eq!(after["4xx"] - before["4xx"], 1.0);
}
