//! Waking the uWSGI emperor through its stats server: with the default 3 s scan period, a cold
//! start and an idle stop still take effect in milliseconds.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// An emperor with its default scan period (3 s) unless `freq` says otherwise, optionally with
/// a stats server, and herald pointed at `stats` either way.
fn setup(
    with_stats_server: bool,
    freq: Option<&str>,
    extra: &str,
) -> (tempfile::TempDir, Emperor, u16, u16, Herald) {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("emperor-stats.sock");
    let stats_text = stats.to_str().unwrap().to_owned();
    let mut args: Vec<&str> = if with_stats_server {
        vec!["--emperor-stats", &stats_text]
    } else {
        vec![]
    };
    if let Some(freq) = freq {
        args.extend(["--emperor-freq", freq]);
    }
    let emperor = Emperor::start_with(dir.path(), &[], &["cold.example"], &args);
    if with_stats_server {
        wait_until("the stats socket", STARTUP_DEADLINE, || stats.exists());
    }
    let (port, metrics) = (free_port(), free_port());
    let yaml = emperor.backend_yaml(
        port,
        metrics,
        &format!("  emperor_stats: {}\n{extra}", stats.display()),
    );
    let herald = Herald::start(dir.path(), "backend", &yaml, &[port, metrics]);
    (dir, emperor, port, metrics, herald)
}

#[test]
fn a_cold_start_wakes_the_emperor_instead_of_waiting_for_its_scan() {
    let (_dir, _emperor, port, metrics, _herald) = setup(true, None, "");
    let began = Instant::now();
    let resp = get(port, "cold.example", "/hello");
    let took = began.elapsed();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        took < Duration::from_secs(1),
        "a 3 s scan period, yet the start took {took:?}"
    );
    wait_until("herald_apps_running", Duration::from_secs(10), || {
        get(port, "cold.example", "/hello");
        metric(metrics, "herald_apps_running", &[]) >= 1.0
    });
}

#[test]
fn without_the_stats_server_a_start_completes_at_the_scan() {
    let (_dir, _emperor, port, _metrics, herald) = setup(false, None, "");
    let resp = get(port, "cold.example", "/hello");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let log = herald.log();
    assert_eq!(
        log.matches("cannot reach the emperor's stats server")
            .count(),
        1,
        "logged once:\n{log}"
    );
}

#[test]
fn an_idle_stop_wakes_the_emperor_too() {
    let (_dir, emperor, port, _metrics, _herald) = setup(true, Some("10"), "  idle_timeout: 1s\n");
    let pid = get(port, "cold.example", "/").json()["pid"]
        .as_i64()
        .unwrap();
    wait_until(
        "the idle vassal to be removed",
        Duration::from_secs(20),
        || !emperor.enabled("cold.example").exists(),
    );
    let removed = Instant::now();
    wait_until("the idle app to exit", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    // uWSGI itself takes about a second to shut the app down; without the wake-up the
    // emperor would not even start that before its next scan, up to 10 s away.
    let took = removed.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "a 10 s scan period, and the app took {took:?} to stop"
    );
}

/// An emperor that restarts runs every vassal anew: a request meanwhile waits for its app
/// (within `start_timeout`) instead of calling it broken because its vassal is old.
#[test]
fn an_emperor_restart_makes_requests_wait_not_fail() {
    let (dir, emperor, port, _metrics, _herald) = setup(true, Some("1"), "  start_timeout: 3s\n");
    assert_eq!(get(port, "cold.example", "/hello").status, 200);
    // The vassal is now older than start_timeout: without the emperor's word it would be
    // "broken" as soon as its app does not answer.
    let vassal_written = Instant::now();
    wait_until("the vassal to age", Duration::from_secs(10), || {
        vassal_written.elapsed() > Duration::from_millis(3500)
    });
    drop(emperor); // stops the emperor and its vassals
    let socket = dir.path().join("sockets/cold.example.sock");
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_err());
    // Asked while the emperor is down; it comes back half a second later.
    let asked = std::thread::spawn(move || get(port, "cold.example", "/hello"));
    std::thread::sleep(Duration::from_millis(500));
    let stats = dir.path().join("emperor-stats.sock");
    let args = [
        "--emperor-stats",
        stats.to_str().unwrap(),
        "--emperor-freq",
        "1",
    ];
    let _emperor = Emperor::start_with(dir.path(), &[], &[], &args);
    let answer = asked.join().unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.text().starts_with("Hello from cold.example"));
}
