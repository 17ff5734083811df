//! `herald -t`: the shipped examples pass, broken files fail with one line per problem that
//! names the file and the field.

mod common;

use common::*;
use std::fs;
use std::path::Path;

/// The system directories the examples name, recreated under `root` so the examples can be
/// checked as written on a machine that has none of them.
const SYSTEM_DIRS: [&str; 6] = [
    "/etc/herald/sites",
    "/etc/uwsgi/vassals",
    "/run/herald-apps/sockets",
    "/run/herald",
    "/run/herald-apps/emperor",
    "/var/log/herald",
];

fn relocate(text: &str, root: &Path) -> String {
    let mut text = text.to_owned();
    for prefix in [
        "/etc/herald",
        "/etc/uwsgi",
        "/run/herald-apps",
        "/run/herald/",
        "/var/log/herald",
    ] {
        text = text.replace(prefix, &format!("{}{prefix}", root.display()));
    }
    text
}

fn check(path: &Path) -> (i32, String, String) {
    let out = run_herald(&["-t", "-c", path.to_str().unwrap()]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn shipped_examples_pass() {
    let root = tempfile::tempdir().unwrap();
    for dir in SYSTEM_DIRS {
        fs::create_dir_all(root.path().join(dir.trim_start_matches('/'))).unwrap();
    }
    let examples: Vec<_> = fs::read_dir(repo_path("conf"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(examples.len() >= 3, "{examples:?}");
    for example in examples {
        let text = fs::read_to_string(&example).unwrap();
        let copy = root.path().join(example.file_name().unwrap());
        fs::write(&copy, relocate(&text, root.path())).unwrap();
        let (code, stdout, stderr) = check(&copy);
        assert_eq!(code, 0, "{}: {stderr}", example.display());
        assert_eq!(
            stdout.trim(),
            format!("{}: configuration OK", copy.display())
        );
    }
}

#[test]
fn broken_configs_are_rejected_naming_file_and_field() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().display().to_string();
    for sub in ["vassals", "sockets"] {
        fs::create_dir(root.path().join(sub)).unwrap();
    }
    let backend = |extra: &str| {
        format!("backend:\n  listen: ['127.0.0.1:8080']\n  sites_dir: {dir}\n  vassals_dir: {dir}/vassals\n  socket_path: {dir}/sockets/{{host}}.sock\n{extra}")
    };
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("bad-backend-address", "edge:\n  listen: ['0.0.0.0:80']\n  backends: [10.0.0.1:80, 10.0.0.x:80]\n".into(),
            vec![r#"edge.backends[1]: invalid address "10.0.0.x:80""#]),
        ("unknown-top-key", "edges:\n  listen: []\n".into(), vec!["unknown field `edges`"]),
        ("unknown-edge-key", "edge:\n  listen: ['0.0.0.0:80']\n  backends: [10.0.0.1:80]\n  hash_mode: ketama\n".into(),
            vec!["edge: unknown field `hash_mode`"]),
        ("unknown-server-key", format!("server:\n  thread: 4\n{}", backend("")), vec!["server.thread: unknown key"]),
        ("bad-hash", "edge:\n  listen: ['0.0.0.0:80']\n  hash: random\n  backends: [10.0.0.1:80]\n".into(),
            vec!["edge.hash: unknown variant `random`"]),
        ("wrong-type", "edge:\n  listen: 80\n  backends: [10.0.0.1:80]\n".into(), vec!["edge.listen: invalid type"]),
        ("no-roles", "metrics:\n  listen: 127.0.0.1:9100\n".into(), vec!["nothing to run"]),
        ("empty", String::new(), vec!["nothing to run"]),
        ("not-yaml", "edge:\n  listen: [\"0.0.0.0:80\"\n  backends: x\n".into(), vec!["did not find expected ',' or ']' at line 3 column 3"]),
        ("missing-dirs", "backend:\n  listen: ['0.0.0.0:8080']\n  sites_dir: /nonexistent/sites\n  vassals_dir: relative/vassals\n  socket_path: /nonexistent/{host}.sock\n".into(),
            vec![r#"backend.sites_dir: directory "/nonexistent/sites" does not exist"#,
                 r#"backend.vassals_dir: "relative/vassals" must be an absolute path"#,
                 r#"backend.socket_path: directory "/nonexistent/" does not exist"#]),
        ("template-without-host", backend("").replace("{host}.sock", "app.sock"), vec!["backend.socket_path:", "must contain {host} exactly once"]),
        ("shared-dirs", format!("backend:\n  listen: ['127.0.0.1:8080']\n  sites_dir: {dir}\n  vassals_dir: {dir}/./\n  socket_path: {dir}/{{host}}.sock\n"),
            vec!["backend.vassals_dir: is sites_dir: stopping an app removes its vassal", "backend.socket_path: its directory is sites_dir or vassals_dir"]),
        ("bad-units", backend("  limits:\n    proxy_read_timeout: 5 minutes\n    proxy_connect_timeout: 10q\n    client_max_body_size: 1t\n    client_header_timeout: 0\n    large_client_header_buffers: 8k\n"),
            vec!["backend.limits.proxy_read_timeout: invalid duration", "backend.limits.proxy_connect_timeout: invalid duration \"10q\": unknown unit", "backend.limits.client_max_body_size: invalid size", "backend.limits.client_header_timeout: must be more than 0", "backend.limits.large_client_header_buffers: invalid value \"8k\": expected a number and a size"]),
        ("bad-cidr", backend("  trusted_proxies: [10.0.0.0/8, 10.0.0.1/8, 300.0.0.0/8]\n"),
            vec!["backend.trusted_proxies[1]: invalid network", "backend.trusted_proxies[2]: invalid network"]),
        ("listener-clash", format!("metrics:\n  listen: 127.0.0.1:8080\n{}", backend("")), vec!["metrics.listen: 127.0.0.1:8080 is already used"]),
        ("relative-pid", format!("server:\n  pid_file: herald.pid\n  max_retries: 0\n{}", backend("")),
            vec![r#"server.pid_file: "herald.pid" must be an absolute path"#, "server.max_retries: must be at least 1"]),
        ("no-backends", "edge:\n  listen: ['0.0.0.0:80']\n  backends: []\n".into(), vec!["edge.backends: needs at least one backend"]),
        ("no-backend-list", "edge:\n  listen: ['0.0.0.0:80']\n".into(), vec!["edge.backends: needs a list of backends, or `backends_file`"]),
        ("both-lists", format!("edge:\n  listen: ['0.0.0.0:80']\n  backends: [10.0.0.1:80]\n  backends_file: {dir}/backends\n"),
            vec!["edge.backends_file: give either `backends` or `backends_file`, not both"]),
        ("missing-backends-file", format!("edge:\n  listen: ['0.0.0.0:80']\n  backends_file: {dir}/no-such-file\n"),
            vec!["edge.backends_file: cannot read"]),
        ("bad-backends-file", format!("edge:\n  listen: ['0.0.0.0:80']\n  backends_file: {dir}/bad-backends\n"),
            vec!["edge.backends_file: ", "bad-backends: line 3: invalid address \"10.0.0.x:80\""]),
        ("bad-health-check", "edge:\n  listen: ['0.0.0.0:80']\n  backends: [10.0.0.1:80]\n  health_check:\n    kind: tcp\n    interval: 0\n    failures: 0\n    path: /health\n".into(),
            vec!["edge.health_check.interval: interval and timeout must be more than 0", "edge.health_check.failures: must be at least 1", "edge.health_check.path: only used with `kind: http`"]),
        ("bad-error-pages", format!("{}  error_pages: {dir}/pages\n  access_log:\n    path: relative.log\n    format: xml\n", backend("")),
            vec!["backend.access_log.format: unknown variant `xml`"]),
        ("bad-error-page-name", format!("{}  error_pages: {dir}/pages\n  access_log:\n    path: /no/such/dir/access.log\n", backend("")),
            vec!["backend.error_pages: \"", "4O4.html\": pages are named after their status", "backend.access_log.path: the directory of \"/no/such/dir/access.log\" does not exist"]),
        ("bad-health-host", format!("{}  health_host: Not_A_Host\n", backend("")), vec!["backend.health_host: \"Not_A_Host\" must be a lowercase host name"]),
        ("bad-websocket-idle", format!("{}  websocket_idle_timeout: 0\nedge:\n  listen: ['0.0.0.0:80']\n  backends: [10.0.0.1:80]\n  websocket_idle_timeout: 1 hour\n", backend("")),
            vec!["backend.websocket_idle_timeout: must be more than 0", "edge.websocket_idle_timeout: invalid duration"]),
        ("bad-app-protocol", backend("  app_protocol: fastcgi\n"), vec!["backend.app_protocol: unknown variant `fastcgi`"]),
        ("bad-running-cap", backend("  max_running_apps: 0\n"), vec!["backend.max_running_apps: must be at least 1"]),
        ("site-logs", backend("  access_log:\n    path: off\n    per_site: logs/{host}.log\n  error_log:\n    per_site: /nonexistent/{host}/error.log\n"),
            vec![r#"backend.access_log.per_site: "logs/{host}.log" must be an absolute path"#,
                 r#"backend.error_log.per_site: directory "/nonexistent/" does not exist"#]),
        ("site-log-template", backend("  error_log:\n    per_site: /var/log/error.log\n"),
            vec![r#"backend.error_log.per_site: "/var/log/error.log" must contain {host} exactly once"#]),
        ("edge-site-logs", "edge:\n  listen: ['0.0.0.0:80']\n  backends: [10.0.0.1:80]\n  access_log:\n    path: off\n    per_site: /var/log/{host}.log\n".into(),
            vec!["edge.access_log.per_site: per-site logs are written by the backend"]),
        ("cap-without-stop", backend("  max_running_apps: 10\n  initializer:\n    kind: http\n    url: http://127.0.0.1:9/start\n"),
            vec!["backend.max_running_apps: needs a way to stop apps: set initializer.stop_url"]),
        ("bad-switch", backend("  buffering:\n    request_buffering: maybe\n"),
            vec!["backend.buffering.request_buffering: invalid value: string \"maybe\", expected on or off"]),
        ("bad-buffering", backend("  document_root: relative/{host}\n  buffering:\n    proxy_buffers: 1 4k\n    client_body_buffer_size: 16q\n    proxy_temp_path: /nonexistent/tmp\n    client_body_temp_path: relative\n    proxy_max_temp_file_size: lots\n"),
            vec!["backend.document_root: \"relative/{host}\" must be an absolute path",
                 "backend.buffering.proxy_buffers: \"1 4k\": needs at least 2 buffers",
                 "backend.buffering.client_body_buffer_size: invalid size",
                 "backend.buffering.proxy_temp_path: directory \"/nonexistent/tmp\" does not exist",
                 "backend.buffering.client_body_temp_path: \"relative\" must be an absolute path",
                 "backend.buffering.proxy_max_temp_file_size: invalid size"]),
    ];
    fs::write(
        root.path().join("bad-backends"),
        "# pool\n10.0.0.1:80\n10.0.0.x:80\n",
    )
    .unwrap();
    fs::create_dir_all(root.path().join("pages")).unwrap();
    fs::write(root.path().join("pages").join("4O4.html"), "typo").unwrap();
    for (name, yaml, expected) in cases {
        let path = root.path().join(format!("{name}.yaml"));
        fs::write(&path, &yaml).unwrap();
        let (code, stdout, stderr) = check(&path);
        assert_eq!(code, 1, "{name} was accepted: {stdout}");
        let lines: Vec<&str> = stderr.lines().collect();
        for want in &expected {
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with(&format!("{}: ", path.display())) && l.contains(want)),
                "{name}: no line with {want:?} in:\n{stderr}"
            );
        }
        assert!(
            lines
                .iter()
                .all(|l| l.starts_with(&format!("{}: ", path.display()))),
            "{name}: every line names the file:\n{stderr}"
        );
    }
    let (code, _, stderr) = check(&root.path().join("no-such-file.yaml"));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no-such-file.yaml: cannot read file"),
        "{stderr}"
    );
}

/// Herald's runtime files where an app could replace them: `-t` still passes, and says which.
#[test]
fn runtime_files_others_can_write_are_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().display().to_string();
    let shared = root.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::create_dir(root.path().join("sockets")).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let yaml = format!(
        "server:\n  pid_file: {dir}/shared/herald.pid\n  upgrade_sock: {dir}/herald.sock\n\
         backend:\n  listen: ['127.0.0.1:8080']\n  sites_dir: {dir}\n  vassals_dir: {dir}/shared\n  socket_path: {dir}/sockets/{{host}}.sock\n\
         \x20 access_log:\n    path: {dir}/shared/access.log\n"
    );
    let path = root.path().join("shared-runtime.yaml");
    fs::write(&path, yaml).unwrap();
    let (code, _, stderr) = check(&path);
    assert_eq!(code, 0, "{stderr}");
    for field in ["server.pid_file", "backend.access_log.path"] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&format!("{field}: warning: ")) && l.contains("everyone")),
            "no warning for {field}:\n{stderr}"
        );
    }
    assert!(!stderr.contains("server.upgrade_sock"), "{stderr}");
}

#[test]
fn help_documents_the_flags() {
    let out = run_herald(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "-c, --conf",
        "-t, --test",
        "-d, --daemon",
        "-u, --upgrade",
        "SIGQUIT",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

/// `edge.tls.acme`: every field that can be checked offline is an error naming it; storage
/// that does not answer now is a warning (an edge starts without it).
#[test]
fn acme_section_is_checked_and_unreachable_storage_is_a_warning() {
    let root = tempfile::tempdir().unwrap();
    let (crt, key) = (root.path().join("d.crt"), root.path().join("d.key"));
    self_signed(&crt, &key, &["default.example"], 30);
    let edge = |acme: &str| {
        format!(
            "edge:\n  listen: ['127.0.0.1:8080']\n  backends: [10.0.0.1:80]\n  tls:\n    listen: ['127.0.0.1:8443']\n    default_cert: {}\n    default_key: {}\n    acme:\n{acme}",
            crt.display(),
            key.display()
        )
    };
    let bad = root.path().join("bad-acme.yaml");
    fs::write(
        &bad,
        edge("      directory: http://acme.example/dir\n      contact: ops@example.com\n      ask: https://127.0.0.1:9000/allowed\n      storage: var/acme\n      ca_roots: /nonexistent/ca.pem\n      wait: 90s\n      max_orders_per_hour: 0\n      queue: 0\n"),
    )
    .unwrap();
    let (code, stdout, stderr) = check(&bad);
    assert_eq!(code, 1, "accepted: {stdout}");
    for field in [
        "edge.tls.acme.directory: \"http://acme.example/dir\" must be the ACME server's https:// directory URL",
        "edge.tls.acme.contact: \"ops@example.com\" must be a mailto: address",
        "edge.tls.acme.ask: \"https://127.0.0.1:9000/allowed\" must be an http:// URL",
        "edge.tls.acme.storage: \"var/acme\" must be redis://HOST:PORT/DB",
        "edge.tls.acme.ca_roots: /nonexistent/ca.pem: cannot read it",
        "edge.tls.acme.wait: 90s must be shorter than edge.tls.ssl_handshake_timeout",
        "edge.tls.acme.max_orders_per_hour: must be at least 1",
        "edge.tls.acme.queue: must be at least 1",
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l == format!("{}: {field}", bad.display()) || l.starts_with(&format!("{}: {field}", bad.display()))),
            "no {field:?} in:\n{stderr}"
        );
    }
    // Nothing listens on this port: the configuration is fine, the storage is not there now.
    let port = free_port();
    let unreachable = root.path().join("redis-down.yaml");
    fs::write(
        &unreachable,
        edge(&format!("      directory: https://127.0.0.1:14000/dir\n      contact: mailto:ops@example.com\n      ask: http://127.0.0.1:9000/allowed\n      storage: redis://127.0.0.1:{port}/0\n")),
    )
    .unwrap();
    let (code, stdout, stderr) = check(&unreachable);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "{}: edge.tls.acme.storage: warning: not reachable now",
            unreachable.display()
        )),
        "{stderr}"
    );
    let directory = root.path().join("acme-dir.yaml");
    fs::write(
        &directory,
        edge(&format!("      directory: https://127.0.0.1:14000/dir\n      ask: http://127.0.0.1:9000/allowed\n      storage: {}/acme\n", root.path().display())),
    )
    .unwrap();
    let (code, _, stderr) = check(&directory);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("does not exist yet; it is made at start"),
        "{stderr}"
    );
    assert!(!root.path().join("acme").exists(), "-t made the directory");
}
