//! The status page on the metrics listener: `/status.json` says what the test did (a backend
//! down, a broken app, a cold start, the certificate that expires first), and `/status`, loaded
//! in headless Chromium (Debian's `chromium`), shows the same.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

fn status_json(metrics: u16) -> Value {
    let resp = get(metrics, "metrics", "/status.json");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    resp.json()
}

/// The page's DOM as headless Chromium rendered it, or `None` where Chromium is missing.
fn rendered(url: &str, profile: &std::path::Path) -> Option<String> {
    let binary = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok())?;
    let out = Command::new(binary)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The text of the element carrying `data-field="NAME"`.
fn field<'a>(dom: &'a str, name: &str) -> &'a str {
    let marker = format!("data-field=\"{name}\">");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in the page"))
        + marker.len();
    let end = dom[start..].find('<').unwrap() + start;
    &dom[start..end]
}

#[test]
fn the_status_page_shows_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let emperor = Emperor::start(root, &["warm.example"], &["cold.example"]);
    let broken = broken_app(root);
    emperor.add_site("broken.example", &emperor.vassal(&broken, ""));
    let certs = root.join("certs");
    std::fs::create_dir(&certs).unwrap();
    self_signed(
        &certs.join("soon.crt"),
        &certs.join("soon.key"),
        &["soon.example"],
        3,
    );
    let (edge, tls, backend, metrics, nowhere) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let yaml = format!(
        "{}edge:\n  listen: ['127.0.0.1:{edge}']\n  backends: ['127.0.0.1:{backend}', '127.0.0.1:{nowhere}']\n  health_check:\n    interval: 1s\n    failures: 2\n  tls:\n    listen: ['127.0.0.1:{tls}']\n    certs_dir: {}\n",
        emperor.backend_yaml(backend, metrics, "  retry_after: 60s\n"),
        certs.display()
    );
    let _herald = Herald::start(root, "node", &yaml, &[edge, tls, backend, metrics]);

    assert_eq!(get(edge, "cold.example", "/hello").status, 200);
    assert_eq!(get(edge, "broken.example", "/").status, 502);
    let down = format!("127.0.0.1:{nowhere}");
    let up = format!("127.0.0.1:{backend}");
    // Refused at once, the dead one is down after two checks; the live one stays up (two
    // failures are needed, so one slow check on a busy machine does not flip it).
    let state = |status: &Value, address: &str| {
        status["edge"]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["backend"] == address)
            .map(|b| b["up"] == true)
    };
    wait_until(
        "the dead backend down, the live one up",
        Duration::from_secs(20),
        || {
            let status = status_json(metrics);
            state(&status, &down) == Some(false) && state(&status, &up) == Some(true)
        },
    );

    let status = status_json(metrics);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        status["config_loads"]["ok"].as_u64().unwrap() >= 1,
        "{status}"
    );
    let backends = status["edge"]["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2, "{status}");
    let live = backends
        .iter()
        .find(|b| b["backend"] == up.as_str())
        .unwrap();
    assert_eq!(live["up"], true);
    let dead = backends
        .iter()
        .find(|b| b["backend"] == down.as_str())
        .unwrap();
    assert!(dead["changed_unix"].as_u64().unwrap() > 0, "{status}");
    let soonest = &status["edge"]["certificates_expiring_soonest"][0];
    assert_eq!(soonest["name"], "soon.example", "{status}");
    assert_eq!(status["edge"]["certificates_loaded"], 1);
    let app = &status["backend"];
    assert!(app["apps_enabled"].as_u64().unwrap() >= 2, "{status}"); // warm, cold
    let broken_sites: Vec<&str> = app["broken"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["site"].as_str().unwrap())
        .collect();
    assert_eq!(broken_sites, ["broken.example"], "{status}");
    let recent = app["recent_starts"].as_array().unwrap();
    let result_of = |site: &str| {
        recent
            .iter()
            .find(|r| r["site"] == site)
            .map(|r| r["result"].as_str().unwrap().to_owned())
    };
    assert_eq!(result_of("cold.example").as_deref(), Some("ok"), "{status}");
    assert_eq!(
        result_of("broken.example").as_deref(),
        Some("failed"),
        "{status}"
    );
    // Counted by herald_app_starts_total when its socket answered; the page knows better.
    assert_eq!(app["starts"]["ok"], 2, "{status}");
    // /metrics is still the Prometheus text on any other path.
    assert!(get(metrics, "metrics", "/metrics")
        .text()
        .contains("herald_requests_total"));

    let url = format!("http://127.0.0.1:{metrics}/status");
    let Some(dom) = rendered(&url, &root.join("chromium-profile")) else {
        eprintln!("chromium is not installed: the rendered page was not checked (scripts/install-deps installs it)");
        return;
    };
    // The page as a browser shows it: the same facts as the JSON fetched after it.
    let status = status_json(metrics);
    assert!(dom.contains("http-equiv=\"refresh\""), "refreshes itself");
    assert!(!dom.contains("<script"), "no JavaScript");
    for needle in [
        down.as_str(),
        "DOWN",
        up.as_str(),
        "broken.example",
        "cold.example",
        "soon.example",
    ] {
        assert!(dom.contains(needle), "{needle} is not on the page:\n{dom}");
    }
    for name in [
        "apps_enabled",
        "apps_running",
        "starts_queued",
        "evictions",
        "idle_stops",
        "apps_starting",
    ] {
        assert_eq!(
            field(&dom, name),
            status["backend"][name].as_u64().unwrap().to_string(),
            "{name}"
        );
    }
    assert_eq!(
        field(&dom, "certificates_loaded"),
        status["edge"]["certificates_loaded"].to_string()
    );
    assert_eq!(field(&dom, "starts"), "ok 2", "{dom}");
}
