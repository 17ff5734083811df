//! /metrics, read with a real Prometheus text-format parser: every metric of the set is there,
//! and the numbers move as requests are made.

mod common;

use common::*;
use prometheus_parse::{Scrape, Value};

fn scrape(port: u16) -> Scrape {
    let text = get(port, "metrics", "/metrics").text();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition format")
}

/// The value of the sample of `name` whose labels include `labels` (0 if absent).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
        .sum()
}

fn has(scrape: &Scrape, name: &str) -> bool {
    scrape.samples.iter().any(|s| s.metric == name)
}

#[test]
fn metrics_are_exposed_and_move_with_requests() {
    let dir = tempfile::tempdir().unwrap();
    let emperor = Emperor::start(dir.path(), &["warm.example"], &["cold.example"]);
    let (edge, backend, metrics) = (free_port(), free_port(), free_port());
    let yaml = format!(
        "{}edge:\n  listen: ['127.0.0.1:{edge}']\n  backends: ['127.0.0.1:{backend}']\n",
        emperor.backend_yaml(backend, metrics, "")
    );
    let _herald = Herald::start(dir.path(), "node", &yaml, &[edge, backend, metrics]);

    let before = scrape(metrics);
    for name in [
        "herald_build_info",
        "herald_config_reloads_total",
        "herald_backend_up",
        "herald_backend_state_changed_timestamp_seconds",
        "herald_app_starts_in_progress",
        "herald_app_stops_total",
        "herald_apps_enabled",
        "herald_websockets_open",
        "herald_websocket_duration_seconds",
        "herald_tls_handshakes_total",
        "herald_tls_certificates_loaded",
        "herald_tls_certificates_invalid",
        "herald_tls_certificate_expiry_soonest_timestamp_seconds",
        "herald_client_connections",
        "herald_client_connections_refused_total",
        "herald_client_header_timeouts_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(has(&before, name), "{name} is missing at start");
    }
    assert_eq!(
        value(
            &before,
            "herald_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(value(&before, "herald_config_reloads_total", &[("result", "ok")]) >= 1.0);
    let backend_addr = format!("127.0.0.1:{backend}");
    assert_eq!(
        value(&before, "herald_backend_up", &[("backend", &backend_addr)]),
        1.0
    );
    assert!(value(&before, "process_open_fds", &[]) > 0.0);
    assert!(value(&before, "process_resident_memory_bytes", &[]) > 0.0);

    for _ in 0..5 {
        assert_eq!(get(edge, "warm.example", "/hello").status, 200);
    }
    assert_eq!(get(edge, "cold.example", "/hello").status, 200);
    assert_eq!(get(edge, "nobody.example", "/").status, 404);
    assert_eq!(get(edge, "bad_host", "/").status, 400);

    let after = scrape(metrics);
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(
        moved(
            "herald_requests_total",
            &[("role", "edge"), ("code", "2xx")]
        ),
        6.0
    );
    assert_eq!(
        moved(
            "herald_requests_total",
            &[("role", "edge"), ("code", "4xx")]
        ),
        2.0
    );
    assert_eq!(
        moved(
            "herald_requests_total",
            &[("role", "backend"), ("code", "2xx")]
        ),
        6.0
    );
    assert_eq!(
        moved(
            "herald_requests_total",
            &[("role", "backend"), ("code", "4xx")]
        ),
        1.0
    );
    assert_eq!(
        moved("herald_request_duration_seconds_count", &[("role", "edge")]),
        8.0
    );
    assert_eq!(
        moved(
            "herald_backend_requests_total",
            &[("backend", &backend_addr)]
        ),
        7.0
    );
    assert_eq!(moved("herald_app_starts_total", &[("result", "ok")]), 1.0);
    assert_eq!(moved("herald_app_start_duration_seconds_count", &[]), 1.0);
    assert_eq!(moved("herald_requests_waited_on_start_total", &[]), 1.0);
    assert_eq!(
        moved(
            "herald_upstream_connect_failures_total",
            &[("role", "backend"), ("reason", "not_running")]
        ),
        1.0
    );
    // Whole seconds only: a fresh process may show 0.
    assert!(value(&after, "process_cpu_seconds_total", &[]) >= 0.0);
    // Every metric the shipped dashboard and alerts use is one this process exports.
    for (file, names) in contrib_metric_names() {
        assert!(!names.is_empty(), "{file} names no metric");
        for name in names {
            assert!(
                has(&after, &name),
                "{file} uses {name}, which Herald does not export"
            );
        }
    }
}

/// The Herald and process metrics each contrib file's queries name, as exposed (a histogram's
/// `_bucket` series is its base name to the parser; `_count` and `_sum` are their own).
fn contrib_metric_names() -> Vec<(String, std::collections::BTreeSet<String>)> {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("contrib/grafana/herald.json")).unwrap(),
    )
    .unwrap();
    let mut dashboard_exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            dashboard_exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["definition"].as_str() {
            dashboard_exprs.push(query.to_owned());
        }
    }
    let alerts: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_path("contrib/prometheus/alerts.yaml")).unwrap(),
    )
    .unwrap();
    let mut alert_exprs = Vec::new();
    for group in alerts["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            alert_exprs.push(rule["expr"].as_str().unwrap().to_owned());
        }
    }
    let names = |exprs: &[String]| {
        let mut found = std::collections::BTreeSet::new();
        for expr in exprs {
            let mut rest = expr.as_str();
            while let Some(at) = rest.find(|c: char| c.is_ascii_lowercase()) {
                rest = &rest[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                let word = &rest[..end];
                if word.starts_with("herald_") || word.starts_with("process_") {
                    found.insert(word.strip_suffix("_bucket").unwrap_or(word).to_owned());
                }
                rest = &rest[end..];
            }
        }
        found
    };
    vec![
        (
            "contrib/grafana/herald.json".into(),
            names(&dashboard_exprs),
        ),
        ("contrib/prometheus/alerts.yaml".into(), names(&alert_exprs)),
    ]
}

/// `promtool check rules` on the shipped alerts, where promtool is installed
/// (scripts/install-deps takes it from Debian's prometheus package).
#[test]
fn the_shipped_alerts_pass_promtool() {
    let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo_path("contrib/prometheus/alerts.yaml"))
        .output()
    else {
        eprintln!("promtool is not installed: skipped (scripts/install-deps installs it)");
        return;
    };
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
