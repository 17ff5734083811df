//! The systemd units: `systemd-analyze verify` accepts them, and they agree with the shipped
//! configuration (pid file, upgrade and stop timing).

mod common;

use common::*;
use std::fs;
use std::process::Command;

fn unit(name: &str) -> String {
    fs::read_to_string(repo_path(&format!("systemd/{name}"))).unwrap()
}

/// `key=value` lines of a unit (all of them, for keys that repeat).
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing (Debian package systemd)"
        );
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "herald-edge.service",
        "herald-backend.service",
        "herald-uwsgi-emperor.service",
    ] {
        // verify checks that ExecStart programs exist: point them at the binary just built.
        let text = unit(name).replace("/usr/local/bin/herald", herald_bin());
        let path = dir.path().join(name);
        fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        let own_problems: Vec<&str> = stderr.lines().filter(|l| l.contains(name)).collect();
        assert!(own_problems.is_empty(), "{name}: {own_problems:?}");
    }
}

#[test]
fn units_match_the_shipped_configuration() {
    for role in ["edge", "backend"] {
        let unit = unit(&format!("herald-{role}.service"));
        let conf = fs::read_to_string(repo_path(&format!("conf/{role}.yaml"))).unwrap();
        let pid_file = values(&unit, "PIDFile")[0];
        assert!(
            conf.contains(&format!("pid_file: {pid_file}")),
            "{role}: PIDFile {pid_file} is not the pid_file of conf/{role}.yaml"
        );
        let reload = values(&unit, "ExecReload");
        assert_eq!(
            reload,
            [format!(
                "/usr/local/bin/herald reload -c /etc/herald/{role}.yaml"
            )],
            "{role}: one command, which checks, takes over and hands over in the safe order"
        );
        let grace = |key: &str| -> u64 {
            conf.lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("{role}: no {key} in conf"))
        };
        let stop_timeout: u64 = values(&unit, "TimeoutStopSec")[0].parse().unwrap();
        assert!(
            stop_timeout
                > grace("grace_period_seconds") + grace("graceful_shutdown_timeout_seconds"),
            "{role}: TimeoutStopSec must outlast the grace period"
        );
        assert_eq!(values(&unit, "NoNewPrivileges"), ["yes"]);
        assert!(!values(&unit, "LimitNOFILE").is_empty());
        // Herald's runtime files and logs: no app may write there.
        assert_eq!(values(&unit, "User"), ["herald"], "{role}");
        assert_eq!(values(&unit, "RuntimeDirectoryMode"), ["0750"], "{role}");
        assert_eq!(values(&unit, "LogsDirectoryMode"), ["0750"], "{role}");
    }
}

/// Each app runs as its site's user: the emperor as root (it drops every vassal to its `uid`),
/// the sockets in a directory no app can write, which is the one conf/backend.yaml names.
#[test]
fn apps_run_as_their_own_users_behind_sockets_no_app_can_replace() {
    let emperor = unit("herald-uwsgi-emperor.service");
    assert_eq!(values(&emperor, "User"), ["root"]);
    assert_eq!(values(&emperor, "Group"), ["herald"]);
    assert_eq!(values(&emperor, "RuntimeDirectoryMode"), ["0750"]);
    let runtime = values(&emperor, "RuntimeDirectory").join(" ");
    let conf = fs::read_to_string(repo_path("conf/backend.yaml")).unwrap();
    let setting = |key: &str| {
        conf.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key} in conf/backend.yaml"))
            .to_owned()
    };
    for (key, path) in [
        ("socket_path", setting("socket_path")),
        ("emperor_stats", setting("emperor_stats")),
    ] {
        let dir = std::path::Path::new(&path).parent().unwrap();
        let relative = dir.strip_prefix("/run").unwrap().to_str().unwrap();
        assert!(
            runtime.split_whitespace().any(|d| d == relative),
            "{key} {path} is not in the emperor's RuntimeDirectory {runtime}"
        );
    }
    let template = fs::read_to_string(repo_path("demo/vassal.ini.template")).unwrap();
    for line in [
        "uid = @UID@",
        "gid = @GID@",
        "chown-socket = @UID@:@HERALD_GID@",
        "chmod-socket = 660",
    ] {
        assert!(
            template.lines().any(|l| l == line),
            "the template lacks {line:?}"
        );
    }
}
