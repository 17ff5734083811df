//! Reload = Pingora's graceful upgrade: a new herald started with `-u` takes over the
//! listening sockets when the old one gets SIGQUIT, and the old one finishes its requests.
//! Under continuous load over keep-alive connections, several upgrades in a row lose nothing,
//! including a cold start in progress during one of them.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const UPGRADES: usize = 3;

/// One response on a keep-alive connection, and whether it said `Connection: close`;
/// `Ok(None)` when the server closed the connection without answering.
fn exchange(
    stream: &mut BufReader<TcpStream>,
    site: &str,
) -> std::io::Result<Option<(u16, String, bool)>> {
    let request = format!("GET /hello HTTP/1.1\r\nHost: {site}\r\n\r\n");
    if stream.get_mut().write_all(request.as_bytes()).is_err() {
        return Ok(None);
    }
    let mut status_line = String::new();
    match stream.read_line(&mut status_line) {
        Ok(0) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut length = 0;
    let mut close = false;
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed in the headers"));
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
            if name.eq_ignore_ascii_case("connection") && value.trim().eq_ignore_ascii_case("close")
            {
                close = true;
            }
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body)?;
    Ok(Some((
        status,
        String::from_utf8_lossy(&body).into_owned(),
        close,
    )))
}

struct LoadReport {
    answered: usize,
    errors: Vec<String>,
}

/// Keep-alive clients hitting the edge until told to stop (bounded in count and time). A
/// client honours `Connection: close` and otherwise keeps its connection, so a connection
/// closed under a request is a failure, as it is for clients that do not retry.
fn load(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<LoadReport> {
    std::thread::spawn(move || {
        let mut report = LoadReport {
            answered: 0,
            errors: Vec::new(),
        };
        let began = Instant::now();
        let mut connection: Option<BufReader<TcpStream>> = None;
        while !stop.load(Ordering::SeqCst)
            && began.elapsed() < Duration::from_secs(120)
            && report.answered < 100_000
        {
            let fresh = connection.is_none();
            let stream = match connection.as_mut() {
                Some(stream) => stream,
                None => match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(stream) => {
                        stream
                            .set_read_timeout(Some(Duration::from_secs(30)))
                            .unwrap();
                        connection.insert(BufReader::new(stream))
                    }
                    Err(e) => {
                        report.errors.push(format!("connect: {e}"));
                        continue;
                    }
                },
            };
            match exchange(stream, "warm.example") {
                Ok(Some((200, _, close))) => {
                    report.answered += 1;
                    if close {
                        connection = None;
                    }
                }
                Ok(Some((status, body, _))) => {
                    report
                        .errors
                        .push(format!("status {status} at {:?}: {body}", began.elapsed()));
                    connection = None;
                }
                Ok(None) => {
                    report.errors.push(format!(
                        "a {} connection was closed unanswered at {:?}",
                        if fresh { "new" } else { "kept-alive" },
                        began.elapsed()
                    ));
                    connection = None;
                }
                Err(e) => {
                    report.errors.push(format!("exchange: {e}"));
                    connection = None;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        report
    })
}

fn spawn_herald(root: &Path, config: &Path, upgrade: bool, generation: usize) -> Process {
    let mut command = Command::new(herald_bin());
    if upgrade {
        command.arg("-u");
    }
    command
        .arg("-c")
        .arg(config)
        .env("RUST_LOG", "herald=debug,warn");
    Process::spawn(
        &format!("herald #{generation}"),
        &mut command,
        &root.join(format!("herald-{generation}.log")),
    )
}

#[test]
fn upgrades_under_load_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let emperor = Emperor::start(root, &["warm.example"], &[]);
    // A site whose app takes 2 s to bring its socket up: its start spans an upgrade.
    emperor.add_site(
        "slow.example",
        &emperor.vassal(&repo_path("demo/app.py"), "exec-asap = sleep 2\n"),
    );
    let (edge, backend, metrics) = (free_port(), free_port(), free_port());
    let yaml = format!(
        "server:\n  pid_file: {0}/herald.pid\n  upgrade_sock: {0}/herald.upgrade.sock\n  grace_period_seconds: 5\n  graceful_shutdown_timeout_seconds: 2\n{1}edge:\n  listen: ['127.0.0.1:{edge}']\n  backends: ['127.0.0.1:{backend}']\n",
        root.display(),
        emperor.backend_yaml(backend, metrics, "")
    );
    let config = root.join("herald.yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut current = spawn_herald(root, &config, false, 0);
    wait_until("herald to listen", STARTUP_DEADLINE, || {
        current.assert_running();
        TcpStream::connect(("127.0.0.1", edge)).is_ok()
    });

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4).map(|_| load(edge, stop.clone())).collect();
    let cold_answer = Arc::new(Mutex::new(None));
    let mut cold_request = None;
    for generation in 1..=UPGRADES {
        std::thread::sleep(Duration::from_millis(500)); // let the load run on this process
        if generation == 2 {
            let answer = cold_answer.clone();
            cold_request = Some(std::thread::spawn(move || {
                *answer.lock().unwrap() = Some(get(edge, "slow.example", "/hello"));
            }));
            wait_until("the cold start to begin", Duration::from_secs(10), || {
                emperor.enabled("slow.example").exists()
            });
        }
        let mut next = spawn_herald(root, &config, true, generation);
        current.signal_group(libc::SIGQUIT);
        wait_until(
            &format!("herald #{} to hand over and exit", generation - 1),
            Duration::from_secs(40),
            || {
                next.assert_running();
                current.has_exited()
            },
        );
        current = next;
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let mut answered = 0;
    for client in clients {
        let report = client.join().unwrap();
        assert!(
            report.errors.is_empty(),
            "client errors during upgrades: {:?}",
            report.errors
        );
        answered += report.answered;
    }
    assert!(answered > 200, "the load ran: {answered} answers");
    cold_request.unwrap().join().unwrap();
    let cold = cold_answer.lock().unwrap().take().unwrap();
    assert_eq!(cold.status, 200, "{}", cold.text());
    assert!(cold.text().starts_with("Hello from slow.example"));
    eprintln!("{answered} requests answered across {UPGRADES} upgrades, none lost");
    current.assert_running();
}

/// During an upgrade the old process keeps running for Pingora's 5 s and its grace period, and
/// what it knows of each app's last request is stale from the moment the new process takes
/// requests: it must leave stopping idle apps to the new process (which sees them).
#[test]
fn the_old_process_leaves_idle_apps_to_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let emperor = Emperor::start(root, &["kept.example"], &[]);
    let (edge, backend, metrics) = (free_port(), free_port(), free_port());
    let yaml = format!(
        "server:\n  pid_file: {0}/herald.pid\n  upgrade_sock: {0}/herald.upgrade.sock\n  grace_period_seconds: 1\n  graceful_shutdown_timeout_seconds: 1\n{1}edge:\n  listen: ['127.0.0.1:{edge}']\n  backends: ['127.0.0.1:{backend}']\n",
        root.display(),
        emperor.backend_yaml(backend, metrics, "  idle_timeout: 2s\n")
    );
    let config = root.join("herald.yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut old = spawn_herald(root, &config, false, 0);
    wait_until("herald to listen", STARTUP_DEADLINE, || {
        old.assert_running();
        TcpStream::connect(("127.0.0.1", edge)).is_ok()
    });
    // The old process's last word on the app: a request now. It would call the app idle 2 s
    // later, well within the 6 s it keeps running after the QUIT.
    assert_eq!(get(edge, "kept.example", "/hello").status, 200);
    let mut new = spawn_herald(root, &config, true, 1);
    old.signal_group(libc::SIGQUIT);
    wait_until("the old process to exit", Duration::from_secs(30), || {
        new.assert_running();
        old.has_exited()
    });
    let log = old.log();
    assert!(log.contains("idle apps are its to stop now"), "{log}");
    assert!(
        !log.contains("stop kept.example"),
        "the old process stopped an app after handing over:\n{log}"
    );
}

/// Daemonized heralds (not this test's children): killed by pid when the test ends.
struct Daemons(Vec<i32>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for pid in &self.0 {
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
    }
}

fn herald_command(args: &[&str], config: &Path) -> (i32, String, String) {
    let out = Command::new(herald_bin())
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pid_in(file: &Path) -> i32 {
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn alive(pid: i32) -> bool {
    // A zombie (exited, not yet reaped by its parent) is not alive.
    let signalable = unsafe { libc::kill(pid, 0) } == 0;
    signalable
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// `herald reload` does the upgrade in the safe order and says how it went; `status` and
/// `stop` find the process through the pid file; a reload with a bad file leaves the running
/// process alone.
#[test]
fn herald_reload_stop_and_status_drive_the_running_process() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let emperor = Emperor::start(root, &["warm.example"], &[]);
    let (edge, backend, metrics) = (free_port(), free_port(), free_port());
    let pid_file = root.join("herald.pid");
    let yaml = format!(
        "server:\n  pid_file: {0}/herald.pid\n  upgrade_sock: {0}/herald.upgrade.sock\n  error_log: {0}/herald.err\n  grace_period_seconds: 1\n  graceful_shutdown_timeout_seconds: 1\n{1}edge:\n  listen: ['127.0.0.1:{edge}']\n  backends: ['127.0.0.1:{backend}']\n",
        root.display(),
        emperor.backend_yaml(backend, metrics, "")
    );
    let config = root.join("herald.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let mut daemons = Daemons(Vec::new());

    let (code, out, _) = herald_command(&["status"], &config);
    assert_eq!(code, 3, "nothing runs yet: {out}");
    assert!(out.contains("herald is not running"), "{out}");
    let (code, _, err) = herald_command(&["reload"], &config);
    assert_eq!(code, 1);
    assert!(err.contains("start it with `herald -d -c"), "{err}");

    let (code, _, err) = herald_command(&["-d"], &config);
    assert_eq!(code, 0, "{err}");
    wait_until("the pid file", STARTUP_DEADLINE, || pid_file.exists());
    let first = pid_in(&pid_file);
    daemons.0.push(first);
    wait_until("herald to serve", STARTUP_DEADLINE, || {
        TcpStream::connect(("127.0.0.1", edge)).is_ok()
    });
    let (code, out, _) = herald_command(&["status"], &config);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("herald is running: pid {first}"))
            && out.contains(&format!("edge on 127.0.0.1:{edge}"))
            && out.contains(&format!("backend on 127.0.0.1:{backend}")),
        "{out}"
    );

    // A reload under keep-alive load: the new process serves, the old one exits, and no
    // request is lost.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2).map(|_| load(edge, stop.clone())).collect();
    std::thread::sleep(Duration::from_millis(300)); // the load runs on the first process
                                                    // A kept-alive connection to the first process, to be used again while it drains.
    let mut kept = TcpStream::connect(("127.0.0.1", edge)).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let ask = |stream: &mut TcpStream| -> String {
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nHost: warm.example\r\n\r\n")
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        stream.read_exact(&mut body).unwrap();
        head
    };
    let before = ask(&mut kept);
    assert!(
        before.starts_with("http/1.1 200") && !before.contains("connection: close"),
        "{before}"
    );
    let (code, out, err) = herald_command(&["reload"], &config);
    assert_eq!(code, 0, "{out}{err}");
    let second = pid_in(&pid_file);
    daemons.0.push(second);
    assert_ne!(second, first);
    assert!(
        out.contains(&format!("herald reloaded: pid {first} -> {second} in ")),
        "{out}"
    );
    // The old process still serves for a few seconds: its answers now close the connection.
    let draining = ask(&mut kept);
    assert!(
        draining.starts_with("http/1.1 200") && draining.contains("connection: close"),
        "{draining}"
    );
    wait_until("the old process to exit", Duration::from_secs(20), || {
        !alive(first)
    });
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        let report = client.join().unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(report.answered > 0);
    }

    // A bad file: nothing is touched.
    std::fs::write(
        &config,
        yaml.replace("listen: ['127.0.0.1", "listen: ['nowhere"),
    )
    .unwrap();
    let (code, _, err) = herald_command(&["reload"], &config);
    assert_eq!(code, 1);
    assert!(err.contains("the running herald was not touched"), "{err}");
    assert!(alive(second));
    assert_eq!(pid_in(&pid_file), second);
    assert_eq!(get(edge, "warm.example", "/hello").status, 200);
    std::fs::write(&config, &yaml).unwrap();

    let (code, out, err) = herald_command(&["stop"], &config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("herald stopped: pid {second}")),
        "{out}"
    );
    assert!(!alive(second));
    let (code, _, _) = herald_command(&["status"], &config);
    assert_eq!(code, 3);
}
