//! nginx's limits, under nginx's names, each enforced: body size, header/body/keep-alive
//! timeouts towards the client (slow clients in numbers: tests/slow_clients.rs), connect/read/send timeouts towards the upstream, and the
//! number of requests one client may have in progress.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A uWSGI emperor with one running site, and a herald node (edge + backend in one process)
/// with `limits` under both roles.
struct Node {
    _emperor: Emperor,
    edge: u16,
    backend: u16,
    metrics: u16,
    _herald: Herald,
    // Dropped last: the processes above stop (and print their logs on failure) first.
    _dir: tempfile::TempDir,
}

fn start_node(limits: &str) -> Node {
    start_node_with(limits, limits)
}

fn start_node_with(edge_limits: &str, backend_limits: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let emperor = Emperor::start(dir.path(), &["limits.example"], &[]);
    let (edge, backend, metrics) = (free_port(), free_port(), free_port());
    let yaml = format!(
        "{}  limits:\n{backend_limits}edge:\n  listen: ['127.0.0.1:{edge}']\n  backends: ['127.0.0.1:{backend}']\n  limits:\n{edge_limits}",
        emperor.backend_yaml(backend, metrics, ""),
    );
    let herald = Herald::start(dir.path(), "node", &yaml, &[edge, backend]);
    Node {
        _dir: dir,
        _emperor: emperor,
        edge,
        backend,
        metrics,
        _herald: herald,
    }
}

fn elapsed_of<T>(work: impl FnOnce() -> T) -> (T, Duration) {
    let began = Instant::now();
    let out = work();
    (out, began.elapsed())
}

/// Reads until the server closes the connection; returns what arrived.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(90)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

#[test]
fn client_max_body_size_refuses_large_bodies_before_they_reach_the_app() {
    let node = start_node("    client_max_body_size: 1k\n");
    for port in [node.edge, node.backend] {
        let mut raw = b"POST / HTTP/1.1\r\nHost: limits.example\r\nContent-Length: 2048\r\nConnection: close\r\n\r\n".to_vec();
        raw.extend_from_slice(&[b'x'; 2048]);
        let resp = send_raw(port, &raw);
        assert_eq!(resp.status, 413);
        assert!(resp.text().contains("larger than this server accepts"));
        // A chunked body is counted as it arrives: past the limit, 413 too.
        let mut raw = b"POST / HTTP/1.1\r\nHost: limits.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n800\r\n".to_vec();
        raw.extend_from_slice(&[b'y'; 0x800]);
        raw.extend_from_slice(b"\r\n0\r\n\r\n");
        let resp = send_raw(port, &raw);
        assert_eq!(resp.status, 413, "{}", resp.text());
        assert!(resp.text().contains("larger than this server accepts"));
        // Within it, the app gets the whole body and its length.
        let mut raw = b"POST / HTTP/1.1\r\nHost: limits.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n200\r\n".to_vec();
        raw.extend_from_slice(&[b'y'; 0x200]);
        raw.extend_from_slice(b"\r\n0\r\n\r\n");
        let answer = send_raw(port, &raw).json();
        assert_eq!(answer["body_length"], 0x200);
        assert_eq!(answer["environ"]["CONTENT_LENGTH"], "512");
        // Within the limit, the body arrives.
        let mut raw = b"POST / HTTP/1.1\r\nHost: limits.example\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n".to_vec();
        raw.extend_from_slice(&[b'z'; 1024]);
        assert_eq!(send_raw(port, &raw).json()["body_length"], 1024);
    }
}

#[test]
fn client_header_timeout_closes_a_connection_whose_header_never_ends() {
    // In all, not per read: a header dribbled a byte every 200 ms is cut too.
    let node = start_node("    client_header_timeout: 1s\n");
    for port in [node.edge, node.backend] {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: limits.example\r\nX-Slow: ")
            .unwrap();
        let began = Instant::now();
        let dribble = stream.try_clone().unwrap();
        let dribbler = std::thread::spawn(move || {
            let mut dribble = dribble;
            // Ends when the server has closed the connection.
            while dribble.write_all(b"a").is_ok() && began.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let answer = read_until_closed(&mut stream);
        let waited = began.elapsed();
        dribbler.join().unwrap();
        assert!(answer.is_empty(), "closed without an answer, as nginx does");
        assert!(
            (Duration::from_millis(900)..Duration::from_secs(10)).contains(&waited),
            "port {port}: closed after {waited:?}"
        );
    }
}

#[test]
fn client_body_timeout_answers_408_when_the_body_stalls() {
    let node = start_node("    client_body_timeout: 1s\n");
    for port in [node.edge, node.backend] {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .write_all(
                b"POST / HTTP/1.1\r\nHost: limits.example\r\nContent-Length: 100\r\n\r\nonly ten b",
            )
            .unwrap();
        let (answer, waited) = elapsed_of(|| read_until_closed(&mut stream));
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "port {port}: {answer}");
        assert!(
            (Duration::from_millis(900)..Duration::from_secs(10)).contains(&waited),
            "{waited:?}"
        );
    }
}

#[test]
fn keepalive_timeout_closes_idle_connections_and_zero_turns_keepalive_off() {
    let node = start_node("    keepalive_timeout: 1s\n");
    let mut stream = TcpStream::connect(("127.0.0.1", node.edge)).unwrap();
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: limits.example\r\n\r\n")
        .unwrap();
    let mut buffer = [0u8; 4096];
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let n = stream.read(&mut buffer).unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).contains("Hello from limits.example"));
    let (rest, idle) = elapsed_of(|| read_until_closed(&mut stream));
    assert!(rest.is_empty());
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(10)).contains(&idle),
        "closed after {idle:?}"
    );

    let off = start_node("    keepalive_timeout: 0\n");
    let resp = send_raw(
        off.edge,
        b"GET /hello HTTP/1.1\r\nHost: limits.example\r\n\r\n",
    );
    assert_eq!(resp.header("connection"), Some("close"));
}

#[test]
fn proxy_read_timeout_answers_504_for_a_slow_app() {
    let node = start_node("    proxy_read_timeout: 1s\n");
    let (resp, waited) = elapsed_of(|| get(node.backend, "limits.example", "/sleep?s=3"));
    assert_eq!(resp.status, 504, "{}", resp.text());
    assert!(resp.text().contains("took too long to answer"));
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2900)).contains(&waited),
        "{waited:?}"
    );
    // Once the app's one worker is free again, quick views are answered.
    wait_until("a quick answer", Duration::from_secs(10), || {
        get(node.backend, "limits.example", "/sleep?s=0.1").status == 200
    });
}

/// A TCP server that never reads nor answers, its listen queue full, so connects hang.
fn black_hole(dir: &std::path::Path) -> (u16, Process) {
    let script = "import socket, sys, time\n\
        s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(0)\n\
        port = s.getsockname()[1]\n\
        held = []\n\
        for _ in range(8):\n\
        \x20   c = socket.socket(); c.setblocking(False)\n\
        \x20   try: c.connect(('127.0.0.1', port))\n\
        \x20   except BlockingIOError: pass\n\
        \x20   held.append(c)\n\
        time.sleep(0.2)\n\
        open(sys.argv[1] + '.tmp', 'w').write(str(port))\n\
        import os; os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n\
        time.sleep(300)\n";
    python_service(dir, "black hole", script)
}

/// A TCP server that accepts and holds connections but never reads from them.
fn deaf_server(dir: &std::path::Path) -> (u16, Process) {
    let script = "import socket, sys, os, time\n\
        s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(16)\n\
        open(sys.argv[1] + '.tmp', 'w').write(str(s.getsockname()[1])); os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n\
        held = []\n\
        while True:\n\
        \x20   c, _ = s.accept(); c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096); held.append(c)\n";
    python_service(dir, "deaf server", script)
}

fn edge_only(dir: &std::path::Path, backend: u16, limits: &str) -> (u16, Herald) {
    let port = free_port();
    let yaml = format!(
        "edge:\n  listen: ['127.0.0.1:{port}']\n  backends: ['127.0.0.1:{backend}']\n  limits:\n{limits}"
    );
    (port, Herald::start(dir, "edge", &yaml, &[port]))
}

#[test]
fn proxy_connect_timeout_answers_504_when_the_backend_does_not_accept() {
    let dir = tempfile::tempdir().unwrap();
    let (hole, _hole) = black_hole(dir.path());
    let (edge, _edge) = edge_only(dir.path(), hole, "    proxy_connect_timeout: 1s\n");
    let (resp, waited) = elapsed_of(|| get(edge, "limits.example", "/"));
    assert_eq!(resp.status, 504, "{}", resp.text());
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(5)).contains(&waited),
        "{waited:?}"
    );
}

#[test]
fn proxy_send_timeout_answers_504_when_the_backend_stops_reading() {
    let dir = tempfile::tempdir().unwrap();
    let (deaf, _deaf) = deaf_server(dir.path());
    // Pingora stops sending after proxy_send_timeout, then waits up to proxy_read_timeout for
    // an answer (the upstream may answer early) before the 504.
    let (edge, edge_process) = edge_only(
        dir.path(),
        deaf,
        "    proxy_send_timeout: 1s\n    proxy_read_timeout: 3s\n    client_max_body_size: 0\n",
    );
    let body = vec![b'x'; 32 << 20];
    let mut stream = TcpStream::connect(("127.0.0.1", edge)).unwrap();
    let began = Instant::now();
    stream
        .write_all(
            format!(
                "POST / HTTP/1.1\r\nHost: limits.example\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
    // The edge stops reading once its upstream write is stuck; the answer comes anyway.
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = stream.write_all(&body);
    let answer = read_until_closed(&mut stream);
    let waited = began.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 504"),
        "{}",
        &answer[..answer.len().min(300)]
    );
    assert!(waited < Duration::from_secs(20), "{waited:?}");
    // The upload was cut after proxy_send_timeout, not left to the read timeout alone.
    assert!(
        edge_process.log().contains("writing body, timeout: 1s"),
        "{}",
        edge_process.log()
    );
}

#[test]
fn max_connections_per_client_answers_429_past_the_limit() {
    // On the edge only: on a backend, every request comes from the edge's address.
    let node = start_node_with("    max_connections_per_client: 2\n", "");
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let port = node.edge;
            std::thread::spawn(move || get(port, "limits.example", "/sleep?s=4").status)
        })
        .collect();
    wait_until(
        "two slow requests in progress",
        Duration::from_secs(20),
        || {
            metric(
                node.metrics,
                "herald_requests_in_progress",
                &[("role", "edge")],
            ) >= 2.0
        },
    );
    let resp = get(node.edge, "limits.example", "/hello");
    assert_eq!(resp.status, 429);
    assert!(resp.text().contains("Too many requests from your address"));
    for request in slow {
        assert_eq!(request.join().unwrap(), 200);
    }
    assert_eq!(
        get(node.edge, "limits.example", "/hello").status,
        200,
        "slots come back"
    );
}
