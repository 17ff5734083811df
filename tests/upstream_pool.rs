//! The edge's pool of kept-alive connections to its backends (Pingora's, with Herald's patch:
//! PATCHES.md, "idle pool"): one connection carries request after request; an idle one is
//! closed after `upstream_keepalive_timeout`; one the backend closes is let go of (no socket
//! left in CLOSE_WAIT) and the next request gets a fresh connection, without an error.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// An HTTP/1.1 upstream that keeps connections open and answers each request with the number
/// of the connection it came on; it closes a connection idle for `IDLE_CLOSE` seconds (0:
/// never), and appends `served N`, `peer-closed N` and `closed N` lines to its events file.
const UPSTREAM: &str = r#"
import socket, sys, threading
IDLE_CLOSE = float(sys.argv[2])
EVENTS = sys.argv[3]
lock = threading.Lock()
count = [0]
def event(text):
    with lock, open(EVENTS, "a") as f:
        f.write(text + "\n")
def serve(conn, n):
    conn.settimeout(IDLE_CLOSE or None)
    pending = b""
    try:
        while True:
            while b"\r\n\r\n" not in pending:
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    event("closed %d" % n)
                    return
                if not chunk:
                    event("peer-closed %d" % n)
                    return
                pending += chunk
            _, pending = pending.split(b"\r\n\r\n", 1)
            body = str(n).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            event("served %d" % n)
    finally:
        conn.close()
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 0))
server.listen(64)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(server.getsockname()[1]))
import os
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    conn, _ = server.accept()
    with lock:
        count[0] += 1
        n = count[0]
    threading.Thread(target=serve, args=(conn, n), daemon=True).start()
"#;

const DEADLINE: Duration = Duration::from_secs(10);

struct Setup {
    edge_port: u16,
    upstream_port: u16,
    events: std::path::PathBuf,
    edge: Herald,
    _upstream: Process,
    _dir: tempfile::TempDir,
}

fn start(idle_close: &str, edge_extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let events = root.join("events");
    let script = root.join("upstream.py");
    std::fs::write(&script, UPSTREAM).unwrap();
    let port_file = root.join("upstream.port");
    let upstream = Process::spawn(
        "upstream",
        std::process::Command::new("python3")
            .arg(&script)
            .arg(&port_file)
            .arg(idle_close)
            .arg(&events),
        &root.join("upstream.log"),
    );
    wait_until("the upstream", DEADLINE, || port_file.exists());
    let upstream_port: u16 = std::fs::read_to_string(&port_file)
        .unwrap()
        .parse()
        .unwrap();
    let edge_port = free_port();
    let yaml = format!(
        "edge:\n  listen: ['127.0.0.1:{edge_port}']\n  backends: ['127.0.0.1:{upstream_port}']\n{edge_extra}"
    );
    let edge = Herald::start(root, "edge", &yaml, &[edge_port]);
    Setup {
        edge_port,
        upstream_port,
        events,
        edge,
        _upstream: upstream,
        _dir: dir,
    }
}

impl Setup {
    /// A request through the edge: the upstream connection that answered it.
    fn connection(&self) -> String {
        let response = get(self.edge_port, "a.example", "/");
        assert_eq!(response.status, 200, "{}", self.edge.log());
        response.text()
    }

    fn has_event(&self, event: &str) -> bool {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .any(|line| line == event)
    }

    /// The edge's TCP sockets to the upstream in CLOSE_WAIT (the upstream closed, the edge has
    /// not): from /proc/net/tcp, whose fourth column is the state (08) and third the remote
    /// address (hex port).
    fn edge_sockets_in_close_wait(&self) -> usize {
        let remote = format!(":{:04X}", self.upstream_port);
        let table = std::fs::read_to_string(Path::new("/proc/net/tcp")).unwrap();
        table
            .lines()
            .skip(1)
            .filter(|line| {
                let columns: Vec<&str> = line.split_whitespace().collect();
                columns.len() > 3 && columns[2].ends_with(&remote) && columns[3] == "08"
            })
            .count()
    }
}

#[test]
fn one_kept_alive_connection_carries_request_after_request_and_is_closed_when_idle() {
    let setup = start("0", "  upstream_keepalive_timeout: 1s\n");
    let first = setup.connection();
    for _ in 0..20 {
        assert_eq!(
            setup.connection(),
            first,
            "every request on the pooled connection"
        );
    }
    let last_use = Instant::now();
    // Idle past upstream_keepalive_timeout, the edge closes it (the pool's sweep runs each second).
    wait_until("the edge to close its idle connection", DEADLINE, || {
        setup.has_event(&format!("peer-closed {first}"))
    });
    assert!(
        last_use.elapsed() >= Duration::from_millis(900),
        "closed before upstream_keepalive_timeout (1s): {:?}",
        last_use.elapsed()
    );
    let next = setup.connection();
    assert_ne!(
        next, first,
        "a fresh connection after the idle one was closed"
    );
    assert_eq!(setup.connection(), next);
}

#[test]
fn a_connection_the_backend_closes_is_let_go_and_the_next_request_gets_a_fresh_one() {
    // The backend closes connections idle for 0.3 s; the edge would keep them a minute.
    let setup = start("0.3", "");
    let first = setup.connection();
    wait_until(
        "the upstream to close the idle connection",
        DEADLINE,
        || setup.has_event(&format!("closed {first}")),
    );
    // The edge notices the close without a request to send (within its sweep, a second):
    // nothing stays in CLOSE_WAIT.
    wait_until(
        "the edge to let go of the closed connection",
        DEADLINE,
        || setup.edge_sockets_in_close_wait() == 0,
    );
    let next = setup.connection();
    assert_ne!(next, first);
    // Again, this time asked before the edge's sweep could see the close: still a 200.
    wait_until("the upstream to close the second one", DEADLINE, || {
        setup.has_event(&format!("closed {next}"))
    });
    let third = setup.connection();
    assert_ne!(third, next);
    assert!(
        !setup.edge.log().contains("panicked"),
        "{}",
        setup.edge.log()
    );
}
