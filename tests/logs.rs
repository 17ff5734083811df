//! Access logs (nginx combined, and JSON) with request ids that cross from edge to backend to
//! app, log files reopened after rotation, and operator error pages.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::time::Duration;

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn wait_for_lines(path: &Path, count: usize) -> Vec<String> {
    wait_until(
        &format!("{count} lines in {path:?}"),
        Duration::from_secs(10),
        || lines(path).len() >= count,
    );
    lines(path)
}

#[test]
fn access_logs_carry_the_request_id_from_edge_to_app() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let emperor = Emperor::start(root, &["warm.example"], &["cold.example"]);
    let (edge, backend, metrics) = (free_port(), free_port(), free_port());
    let (edge_log, backend_log) = (
        root.join("edge-access.log"),
        root.join("backend-access.log"),
    );
    let yaml = format!(
        "{}  access_log:\n    path: {}\n    format: json\nedge:\n  listen: ['127.0.0.1:{edge}']\n  backends: ['127.0.0.1:{backend}']\n  access_log:\n    path: {}\n",
        emperor.backend_yaml(backend, metrics, ""),
        backend_log.display(),
        edge_log.display()
    );
    let _herald = Herald::start(root, "node", &yaml, &[edge, backend]);

    let resp = get_with(
        edge,
        "warm.example",
        "/?q=1",
        &[
            ("X-Request-Id", "made-up-by-client"),
            ("User-Agent", "test \"agent\""),
        ],
    );
    let app_saw = resp.json()["environ"]["HTTP_X_REQUEST_ID"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(
        app_saw, "made-up-by-client",
        "the edge replaces a client's id"
    );
    assert_eq!(app_saw.len(), 16);

    let edge_lines = wait_for_lines(&edge_log, 1);
    let line = &edge_lines[0];
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.contains("\"GET /?q=1 HTTP/1.1\" 200 "), "{line}");
    assert!(line.contains("\"test \\x22agent\\x22\""), "{line}");
    assert!(
        line.contains(&format!(" host=warm.example id={app_saw} ")),
        "{line}"
    );
    assert!(
        line.contains(&format!(" upstream=127.0.0.1:{backend} start=0")),
        "{line}"
    );

    let backend_lines = wait_for_lines(&backend_log, 1);
    let entry: serde_json::Value = serde_json::from_str(&backend_lines[0]).unwrap();
    assert_eq!(
        entry["request_id"],
        app_saw.as_str(),
        "the backend keeps the edge's id"
    );
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["role"], "backend");
    assert_eq!(entry["host"], "warm.example");
    assert_eq!(entry["waited_on_start"], false);
    assert!(entry["upstream"]
        .as_str()
        .unwrap()
        .ends_with("/sockets/warm.example.sock"));
    assert!(entry["upstream_time"].as_f64().unwrap() >= 0.0);
    assert!(entry["body_bytes_sent"].as_u64().unwrap() > 0);

    assert_eq!(get(edge, "cold.example", "/hello").status, 200);
    let entry: serde_json::Value =
        serde_json::from_str(&wait_for_lines(&backend_log, 2)[1]).unwrap();
    assert_eq!(entry["waited_on_start"], true, "{entry}");

    // A bad Host is logged too, with the status it got.
    assert_eq!(get(edge, "bad_host", "/").status, 400);
    let line = wait_for_lines(&edge_log, 3)[2].clone();
    assert!(
        line.contains("\" 400 ") && line.contains(" host=- "),
        "{line}"
    );

    // logrotate moves the file away: the next lines go to a new file.
    fs::rename(&edge_log, root.join("edge-access.log.1")).unwrap();
    wait_until(
        "the rotated log to be reopened",
        Duration::from_secs(10),
        || {
            assert_eq!(get(edge, "warm.example", "/hello").status, 200);
            edge_log.exists() && !lines(&edge_log).is_empty()
        },
    );
}

#[test]
fn operator_error_pages_replace_the_built_in_ones() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let emperor = Emperor::start(root, &["warm.example"], &[]);
    let (edge_pages, backend_pages) = (root.join("edge-pages"), root.join("backend-pages"));
    fs::create_dir_all(&edge_pages).unwrap();
    fs::create_dir_all(&backend_pages).unwrap();
    fs::write(edge_pages.join("400.html"), "<h1>Our own 400</h1>\n").unwrap();
    fs::write(edge_pages.join("README.txt"), "not a page, ignored").unwrap();
    fs::write(
        backend_pages.join("404.html"),
        "<h1>No such site on our platform</h1>\n",
    )
    .unwrap();
    let (edge, backend, metrics) = (free_port(), free_port(), free_port());
    let yaml = format!(
        "{}  error_pages: {}\nedge:\n  listen: ['127.0.0.1:{edge}']\n  backends: ['127.0.0.1:{backend}']\n  error_pages: {}\n",
        emperor.backend_yaml(backend, metrics, ""),
        backend_pages.display(),
        edge_pages.display()
    );
    let _herald = Herald::start(root, "node", &yaml, &[edge, backend]);
    let resp = get(edge, "bad_host", "/");
    assert_eq!(resp.status, 400);
    assert_eq!(resp.text(), "<h1>Our own 400</h1>\n");
    let resp = get(edge, "nobody.example", "/");
    assert_eq!(resp.status, 404);
    assert_eq!(resp.text(), "<h1>No such site on our platform</h1>\n");
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    // Statuses without a file keep the built-in page.
    let resp = get(backend, "bad_host", "/");
    assert!(resp.text().contains("does not name a valid site"));
}
