//! The README's first quick-start command: the demo starts, routes, and cleans up.

mod common;

use common::*;
use std::process::Command;

#[test]
fn demo_routes_its_sample_sites_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(repo_path("scripts/demo"))
        .arg("--smoke")
        .env("HERALD_BIN", herald_bin())
        .env("HERALD_DEMO_DIR", dir.path())
        .output()
        .expect("run scripts/demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for expected in [
        "Hello from alpha.localhost",
        "Hello from beta.localhost",
        "\"site\": \"gamma.localhost\"",
        "HTTP/1.1 404 Not Found",
        "HTTP/1.1 400 Bad Request",
        "Hello from sleepy.localhost",
        "HTTP/1.1 502 Bad Gateway",
        "failed to start",
        "\"HTTP_X_FORWARDED_PROTO\": \"https\"",
        // The uwsgi protocol's environ: what the browser's connection was.
        "\"HTTPS\": \"on\"",
        "\"REMOTE_ADDR\": \"127.0.0.1\"",
        "HTTP/2 200",
        // Per-site settings: a static file, a password.
        "body { font-family: sans-serif }",
        "HTTP/1.1 401 Unauthorized",
        "Basic realm=\"Herald demo\"",
        "Hello from private.localhost",
        // A custom domain: its certificate ordered on its first handshake, from Pebble.
        "Hello from www.custom.test",
        "herald_acme_orders_total{result=\"issued\"} 1",
        // (The edge answered Pebble's validation requests too: counted there, not here.)
        "herald_requests_total{code=\"2xx\",role=\"backend\"} 9",
    ] {
        assert!(
            stdout.contains(expected),
            "demo output lacks {expected:?}:\n{stdout}\n{stderr}"
        );
    }
    // As root, each app runs as a uid of its own (gamma is the third: 61003), when those
    // users can reach the apps' code: the demo says so and falls back otherwise (a clone in
    // a private directory, such as `mktemp -d`'s).
    if current_uid() == 0 && readable_by_all(&repo_path("demo/app.py")) {
        assert!(stdout.contains("\"uid\": 61003"), "{stdout}");
        assert!(stdout.contains("each under a uid of its own"), "{stdout}");
    } else if current_uid() == 0 {
        assert!(
            stdout.contains("so the apps get no users of their own"),
            "{stdout}"
        );
    }
    // Everything the demo started is gone: nothing is listening on its sockets any more.
    for site in [
        "alpha.localhost",
        "beta.localhost",
        "gamma.localhost",
        "sleepy.localhost",
        "private.localhost",
    ] {
        let socket = dir.path().join("sockets").join(format!("{site}.sock"));
        assert!(
            std::os::unix::net::UnixStream::connect(&socket).is_err(),
            "{site}'s app still runs"
        );
    }
    let edge = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("edge     "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the demo prints the edge address");
    assert!(
        std::net::TcpStream::connect(edge).is_err(),
        "herald still listens on {edge}"
    );
}

/// The demo's test for giving apps their own users: `path` readable, and every directory
/// above it searchable, by everyone.
fn readable_by_all(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let mode = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.permissions().mode());
    mode(&path) & 0o004 != 0 && path.ancestors().skip(1).all(|dir| mode(dir) & 0o001 != 0)
}
