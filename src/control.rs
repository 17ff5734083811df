//! `herald reload`, `herald stop` and `herald status`: the running process named by
//! `server.pid_file`, driven as `nginx -s` drives nginx, each ending with one line that says
//! what happened (and a non-zero exit when it did not).
//!
//! A reload is Pingora's graceful upgrade done in the one safe order: the new process is
//! started first (`-u -d`), and the old one gets SIGQUIT only once the new one is listening on
//! `server.upgrade_sock` for the sockets. Any failure before that leaves the old process
//! untouched and serving.

use crate::config::Config;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// How long the new process may take to listen for the old one's sockets: it starts with
/// the configuration check and the certificates, which take about a second for 25,000 pairs.
const LISTEN_DEADLINE: Duration = Duration::from_secs(30);
/// From SIGQUIT to the new process in the background with its pid written: the old process
/// sends its sockets at once, the new one looks for them once a second.
const TAKEOVER_DEADLINE: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(20);
/// The exit status `status` gives when no herald runs (LSB's "program is not running").
const NOT_RUNNING: u8 = 3;

/// A herald process found through its pid file.
#[derive(Debug)]
struct Running {
    pid: Pid,
    /// When its pid file was written: when it started serving.
    since: Option<SystemTime>,
}

/// The live herald `pid_file` names, or why there is none.
fn running(pid_file: &str) -> Result<Running, String> {
    let text = std::fs::read_to_string(pid_file).map_err(|e| format!("{pid_file}: {e}"))?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{pid_file}: not a pid: {:?}", text.trim()))?;
    let pid = Pid::from_raw(pid);
    if !is_herald(pid) {
        return Err(format!(
            "{pid_file} names pid {pid}, which is not a running herald"
        ));
    }
    let since = std::fs::metadata(pid_file).and_then(|m| m.modified()).ok();
    Ok(Running { pid, since })
}

/// Whether `pid` is alive and its program is herald (a stale pid file may name a pid the
/// kernel has since given to something else).
fn is_herald(pid: Pid) -> bool {
    if pid.as_raw() <= 0 || kill(pid, None).is_err() {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let program = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    Path::new(std::ffi::OsStr::new(
        std::str::from_utf8(program).unwrap_or(""),
    ))
    .file_name()
    .is_some_and(|name| name.to_string_lossy().starts_with("herald"))
}

/// Whether a unix socket is listening at `path` (from /proc/net/unix, without connecting:
/// the new process takes the first connection it accepts for the old one's sockets).
fn listening_at(path: &str) -> bool {
    const ACCEPTING: u32 = 0x10000; // __SO_ACCEPTCON
    std::fs::read_to_string("/proc/net/unix").is_ok_and(|table| {
        table.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() >= 8
                && fields[7] == path
                && u32::from_str_radix(fields[3], 16).is_ok_and(|flags| flags & ACCEPTING != 0)
        })
    })
}

fn load(conf: &str) -> Result<Config, ExitCode> {
    Config::load(conf).map_err(|problems| {
        eprintln!("{problems}");
        ExitCode::FAILURE
    })
}

fn fail(message: String) -> ExitCode {
    eprintln!("herald: {message}");
    ExitCode::FAILURE
}

/// Polls `done` every 20 ms until it is true or `deadline` has passed.
fn wait(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let began = Instant::now();
    loop {
        if done() {
            return true;
        }
        if began.elapsed() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

pub fn reload(conf: &str) -> ExitCode {
    let began = Instant::now();
    let config = match load(conf) {
        Ok(config) => config,
        Err(code) => {
            eprintln!("herald: reload: not reloaded, the running herald was not touched");
            return code;
        }
    };
    let pid_file = &config.server.pid_file;
    let upgrade_sock = &config.server.upgrade_sock;
    let old = match running(pid_file) {
        Ok(old) => old,
        Err(why) => {
            return fail(format!(
                "reload: {why}; start it with `herald -d -c {conf}`"
            ))
        }
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return fail(format!("reload: cannot find herald's own binary: {e}")),
    };
    let mut new = match Command::new(exe)
        .args(["-u", "-d", "-c", conf])
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return fail(format!("reload: cannot start the new process: {e}")),
    };
    let mut exited = None;
    let ready = wait(LISTEN_DEADLINE, || {
        exited = new.try_wait().ok().flatten();
        exited.is_none() && listening_at(upgrade_sock)
    });
    if !ready {
        if exited.is_none() {
            let _ = new.kill();
            exited = new.wait().ok();
        }
        let how = exited.map_or_else(|| "did not start".to_owned(), |s| s.to_string());
        return fail(format!(
            "reload: the new process {how} before it listened on {upgrade_sock}; the running herald (pid {}) keeps serving",
            old.pid
        ));
    }
    if let Err(e) = kill(old.pid, Signal::SIGQUIT) {
        let _ = new.kill();
        let _ = new.wait();
        return fail(format!(
            "reload: cannot signal pid {}: {e}; the new process was stopped",
            old.pid
        ));
    }
    // The new process takes the sockets in the foreground, then daemonizes (its first
    // process exits 0) and writes the pid file.
    let mut status = None;
    wait(TAKEOVER_DEADLINE, || {
        status = new.try_wait().ok().flatten();
        status.is_some()
    });
    match status {
        Some(status) if status.success() => {}
        other => {
            if other.is_none() {
                let _ = new.kill();
                let _ = new.wait();
            }
            return fail(format!(
                "reload: the new process failed ({}) after pid {} was asked to hand its sockets over; \
                 pid {} stops once its grace period ends: check the log, then start herald again",
                other.map_or_else(|| "no answer".to_owned(), |s| s.to_string()),
                old.pid,
                old.pid
            ));
        }
    }
    let mut new_pid = None;
    let written = wait(TAKEOVER_DEADLINE, || {
        new_pid = running(pid_file)
            .ok()
            .map(|r| r.pid)
            .filter(|pid| *pid != old.pid);
        new_pid.is_some()
    });
    match new_pid {
        Some(pid) if written => {
            println!(
                "herald reloaded: pid {} -> {pid} in {} ms ({conf}); pid {} finishes its requests and exits",
                old.pid,
                began.elapsed().as_millis(),
                old.pid
            );
            ExitCode::SUCCESS
        }
        _ => fail(format!(
            "reload: the new process took the sockets but {pid_file} names no new running herald after {} s",
            TAKEOVER_DEADLINE.as_secs()
        )),
    }
}

pub fn stop(conf: &str) -> ExitCode {
    let began = Instant::now();
    let config = match load(conf) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let process = match running(&config.server.pid_file) {
        Ok(process) => process,
        Err(why) => return fail(format!("stop: {why}")),
    };
    if let Err(e) = kill(process.pid, Signal::SIGTERM) {
        return fail(format!("stop: cannot signal pid {}: {e}", process.pid));
    }
    // SIGTERM: Pingora's grace period, then its shutdown timeout, then the exit.
    let server = &config.server;
    let bound = Duration::from_secs(
        server.grace_period_seconds.unwrap_or_default()
            + server.graceful_shutdown_timeout_seconds.unwrap_or_default()
            + 10,
    );
    if wait(bound, || !is_herald(process.pid)) {
        println!(
            "herald stopped: pid {} in {} ms",
            process.pid,
            began.elapsed().as_millis()
        );
        ExitCode::SUCCESS
    } else {
        fail(format!(
            "stop: pid {} is still running after {} s",
            process.pid,
            bound.as_secs()
        ))
    }
}

pub fn status(conf: &str) -> ExitCode {
    let config = match load(conf) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let process = match running(&config.server.pid_file) {
        Ok(process) => process,
        Err(why) => {
            println!("herald is not running: {why}");
            return ExitCode::from(NOT_RUNNING);
        }
    };
    let uptime = process
        .since
        .and_then(|since| since.elapsed().ok())
        .map_or_else(|| "unknown".to_owned(), |up| human(up.as_secs()));
    let mut roles = Vec::new();
    if let Some(edge) = &config.edge {
        let mut listening = addresses(&edge.frontend.listen);
        if let Some(tls) = &edge.tls {
            listening.push_str(&format!(", TLS {}", addresses(&tls.listen)));
        }
        roles.push(format!("edge on {listening}"));
    }
    if let Some(backend) = &config.backend {
        roles.push(format!(
            "backend on {}",
            addresses(&backend.frontend.listen)
        ));
    }
    if let Some(metrics) = &config.metrics {
        roles.push(format!("metrics on {}", metrics.listen));
    }
    println!(
        "herald is running: pid {}, up {uptime}; {}",
        process.pid,
        roles.join("; ")
    );
    ExitCode::SUCCESS
}

fn addresses(list: &[std::net::SocketAddr]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `3725` -> `1h 2m 5s`.
fn human(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_read_as_people_write_them() {
        assert_eq!(human(5), "5s");
        assert_eq!(human(125), "2m 5s");
        assert_eq!(human(3725), "1h 2m 5s");
        assert_eq!(human(90061), "1d 1h 1m");
    }

    #[test]
    fn a_listening_unix_socket_is_seen_and_a_missing_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        let path = path.to_str().unwrap();
        assert!(!listening_at(path));
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        assert!(listening_at(path));
        drop(listener);
        assert!(!listening_at(path));
    }

    #[test]
    fn a_pid_file_naming_no_herald_is_not_a_running_herald() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("x.pid");
        let pid_file = pid_file.to_str().unwrap();
        assert!(running(pid_file).unwrap_err().contains("No such file"));
        // This test's own process runs the test binary, not herald... unless cargo named it
        // so: the unit tests' binary is `herald-<hash>`. A pid that cannot exist is used.
        std::fs::write(pid_file, "999999999\n").unwrap();
        assert!(running(pid_file)
            .unwrap_err()
            .contains("not a running herald"));
        std::fs::write(pid_file, "garbage\n").unwrap();
        assert!(running(pid_file).unwrap_err().contains("not a pid"));
    }
}
