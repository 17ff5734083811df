//! Slow and greedy clients, on both roles: a header dribbled a byte at a time is cut at
//! `client_header_timeout` (in all, not per read), a stalled body at `client_body_timeout`, a
//! client that stops reading its answer at `send_timeout`, and one address cannot hold more
//! than `max_open_connections_per_client` connections; meanwhile everyone else is served as
//! usual.

mod common;

use common::*;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Node {
    _emperor: Emperor,
    edge: u16,
    backend: u16,
    metrics: u16,
    herald: Herald,
    _dir: tempfile::TempDir,
}

/// An emperor running the demo app as `sites`, and edge + backend in one herald, each role
/// with `limits`; `edge_extra` goes under `edge.limits` only.
fn start_node(sites: &[&str], limits: &str, edge_extra: &str) -> Node {
    start_node_with_apps(sites, &[], limits, edge_extra)
}

/// `start_node`, with `apps` (site, Python source) running apps of their own.
fn start_node_with_apps(
    sites: &[&str],
    apps: &[(&str, &str)],
    limits: &str,
    edge_extra: &str,
) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let emperor = Emperor::start(root, sites, &[]);
    for (site, source) in apps {
        let app = root.join(format!("{site}.py"));
        fs::write(&app, source).unwrap();
        let vassal = emperor.vassal(&app, "");
        emperor.add_site(site, &vassal);
        fs::write(emperor.enabled(site), &vassal).unwrap();
        let socket = emperor.sockets_dir.join(format!("{site}.sock"));
        wait_until(&format!("{site}'s socket"), STARTUP_DEADLINE, || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
    }
    let (edge, backend, metrics) = (free_port(), free_port(), free_port());
    let yaml = format!(
        "{}  limits:\n{limits}edge:\n  listen: ['127.0.0.1:{edge}']\n  backends: ['127.0.0.1:{backend}']\n  limits:\n{limits}{edge_extra}",
        emperor.backend_yaml(backend, metrics, ""),
    );
    let herald = Herald::start(root, "node", &yaml, &[edge, backend]);
    Node {
        _emperor: emperor,
        edge,
        backend,
        metrics,
        herald,
        _dir: dir,
    }
}

/// A connection that sends its bytes slowly, and what became of it.
struct Slow {
    stream: TcpStream,
    began: Instant,
    every: Duration,
    next_byte: Instant,
    answer: Vec<u8>,
    closed_after: Option<Duration>,
}

impl Slow {
    /// Connects from `from` (an address of this host) and sends `start` at once.
    fn open(from: [u8; 4], port: u16, start: &[u8], every: Duration) -> Slow {
        let mut stream = connect_from(from, port);
        stream.write_all(start).unwrap();
        stream.set_nonblocking(true).unwrap();
        let now = Instant::now();
        Slow {
            stream,
            began: now,
            every,
            next_byte: now + every,
            answer: Vec::new(),
            closed_after: None,
        }
    }

    /// Sends one more byte when it is time, and reads what the server says; notes the close.
    fn step(&mut self, byte: u8) {
        if self.closed_after.is_some() {
            return;
        }
        let now = Instant::now();
        if now >= self.next_byte {
            self.next_byte = now + self.every;
            if let Err(e) = self.stream.write(&[byte]) {
                if e.kind() != ErrorKind::WouldBlock {
                    self.closed_after = Some(self.began.elapsed());
                    return;
                }
            }
        }
        let mut buffer = [0u8; 4096];
        loop {
            match self.stream.read(&mut buffer) {
                Ok(0) => break self.closed_after = Some(self.began.elapsed()),
                Ok(n) => self.answer.extend_from_slice(&buffer[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => break self.closed_after = Some(self.began.elapsed()),
            }
        }
    }
}

/// Steps every connection (10 ms apart) until all are closed or `deadline` passes.
fn drive(slow: &mut [Slow], byte: u8, deadline: Duration) {
    let began = Instant::now();
    while slow.iter().any(|s| s.closed_after.is_none()) && began.elapsed() < deadline {
        for connection in slow.iter_mut() {
            connection.step(byte);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Requests to `site` through both roles in a loop until `stop`; each one's status and time.
fn keep_requesting(
    ports: [u16; 2],
    site: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(u16, Duration)>> {
    std::thread::spawn(move || {
        let mut results = Vec::new();
        for port in ports.iter().cycle() {
            if stop.load(Ordering::Relaxed) || results.len() >= 5000 {
                break;
            }
            let began = Instant::now();
            let status = try_send_raw(
                *port,
                format!("GET /hello HTTP/1.1\r\nHost: {site}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .map_or(0, |r| r.status);
            results.push((status, began.elapsed()));
        }
        results
    })
}

#[test]
fn slow_clients_are_cut_and_never_starve_the_others() {
    let node = start_node(
        &["fast.example", "slow.example"],
        "    client_header_timeout: 2s\n    client_body_timeout: 1s\n",
        "",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let normal = keep_requesting([node.edge, node.backend], "fast.example", stop.clone());

    let header_start = b"GET / HTTP/1.1\r\nHost: fast.example\r\nX-Slow: ";
    let body_start = b"POST / HTTP/1.1\r\nHost: slow.example\r\nContent-Length: 100000\r\n\r\nx";
    let every = Duration::from_millis(100);
    // Headers that never end, a byte every 100 ms: 150 through the edge, 50 to the backend.
    let mut headers: Vec<Slow> = (0..200)
        .map(|i| {
            let port = if i < 150 { node.edge } else { node.backend };
            Slow::open([127, 0, 0, 1], port, header_start, every)
        })
        .collect();
    // Bodies a byte every 1.5 s, slower than client_body_timeout.
    let mut bodies: Vec<Slow> = (0..100)
        .map(|_| {
            Slow::open(
                [127, 0, 0, 1],
                node.edge,
                body_start,
                Duration::from_millis(1500),
            )
        })
        .collect();
    let drive_both = std::thread::spawn(move || {
        drive(&mut bodies, b'y', Duration::from_secs(30));
        bodies
    });
    drive(&mut headers, b'a', Duration::from_secs(30));
    let bodies = drive_both.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let normal = normal.join().unwrap();

    for slow in &headers {
        let closed = slow.closed_after.expect("a slow header is cut");
        assert!(
            (Duration::from_millis(1900)..Duration::from_secs(10)).contains(&closed),
            "a slow header was cut after {closed:?}"
        );
        assert!(
            slow.answer.is_empty(),
            "closed without an answer, as nginx does"
        );
    }
    for slow in &bodies {
        let closed = slow.closed_after.expect("a slow body is cut");
        assert!(
            (Duration::from_millis(900)..Duration::from_secs(10)).contains(&closed),
            "a slow body was cut after {closed:?}"
        );
        let answer = String::from_utf8_lossy(&slow.answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    assert!(normal.len() >= 20, "only {} normal requests", normal.len());
    for (status, took) in &normal {
        assert_eq!(*status, 200, "a normal request failed among the slow ones");
        assert!(
            *took < Duration::from_secs(2),
            "a normal request took {took:?}"
        );
    }
    let slowest = normal.iter().map(|(_, took)| *took).max().unwrap();
    eprintln!(
        "{} normal requests during 300 slow connections, slowest {slowest:?}",
        normal.len()
    );
    for (role, cut) in [("edge", 150.0), ("backend", 50.0)] {
        assert_eq!(
            metric(
                node.metrics,
                "herald_client_header_timeouts_total",
                &[("role", role)]
            ),
            cut,
            "{role}"
        );
    }
}

#[test]
fn the_header_deadline_covers_idle_and_kept_alive_connections_not_long_requests() {
    let node = start_node(
        &["deadline.example"],
        "    client_header_timeout: 1s\n    keepalive_timeout: 3s\n",
        "",
    );
    for port in [node.edge, node.backend] {
        // A connection that never sends anything: cut at client_header_timeout.
        let mut idle = [Slow::open(
            [127, 0, 0, 1],
            port,
            b"",
            Duration::from_secs(3600),
        )];
        drive(&mut idle, b'a', Duration::from_secs(20));
        let closed = idle[0].closed_after.expect("an idle connection is cut");
        assert!(
            (Duration::from_millis(900)..Duration::from_secs(10)).contains(&closed),
            "{closed:?}"
        );

        // On a kept-alive connection, the next header gets keepalive_timeout +
        // client_header_timeout: dribbled, it is cut then, not before.
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nHost: deadline.example\r\n\r\n")
            .unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut buffer = [0u8; 4096];
        let n = stream.read(&mut buffer).unwrap();
        assert!(String::from_utf8_lossy(&buffer[..n]).contains("Hello from deadline.example"));
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: deadline.example\r\nX-Slow: ")
            .unwrap();
        stream.set_nonblocking(true).unwrap();
        let now = Instant::now();
        let mut kept = [Slow {
            stream,
            began: now,
            every: Duration::from_millis(200),
            next_byte: now,
            answer: Vec::new(),
            closed_after: None,
        }];
        drive(&mut kept, b'a', Duration::from_secs(20));
        let closed = kept[0].closed_after.expect("a slow second header is cut");
        assert!(
            (Duration::from_millis(2900)..Duration::from_secs(10)).contains(&closed),
            "{closed:?}"
        );
        assert!(kept[0].answer.is_empty());

        // A request whose answer takes longer than the deadline is not cut: the deadline is
        // for its header.
        let resp = get(port, "deadline.example", "/sleep?s=2");
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert!(node
        .herald
        .log()
        .contains("request header not complete within 1s"));
}

#[test]
fn one_address_cannot_hold_more_than_max_open_connections_per_client() {
    let node = start_node(
        &["greedy.example"],
        "    client_header_timeout: 30s\n",
        "    max_open_connections_per_client: 10\n",
    );
    let open = || {
        metric(
            node.metrics,
            "herald_client_connections",
            &[("role", "edge")],
        )
    };
    let mut held: Vec<TcpStream> = (0..10)
        .map(|_| connect_from([127, 0, 0, 2], node.edge))
        .collect();
    wait_until("10 open connections", Duration::from_secs(10), || {
        open() == 10.0
    });

    // The eleventh is closed at once (long before client_header_timeout), unanswered.
    let mut extra = connect_from([127, 0, 0, 2], node.edge);
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let began = Instant::now();
    let mut answer = Vec::new();
    let ended = extra.read_to_end(&mut answer);
    assert!(
        ended.is_ok()
            || ended
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
        "{ended:?}"
    );
    assert!(answer.is_empty());
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(
        metric(
            node.metrics,
            "herald_client_connections_refused_total",
            &[("role", "edge")]
        ),
        1.0
    );

    // Other addresses are counted apart, and the backend has no such limit.
    assert_eq!(get(node.edge, "greedy.example", "/hello").status, 200);
    assert_eq!(get(node.backend, "greedy.example", "/hello").status, 200);

    // Closed connections give their places back.
    held.truncate(7);
    wait_until("7 open connections", Duration::from_secs(10), || {
        open() == 7.0
    });
    let mut again = connect_from([127, 0, 0, 2], node.edge);
    again
        .write_all(b"GET /hello HTTP/1.1\r\nHost: greedy.example\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    again.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    again.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// An app whose answer (64 MiB) cannot fit in the socket buffers of a client that does not read.
const BIG_APP: &str = r#"
def application(environ, start_response):
    chunk = b"z" * (1 << 20)
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(64 << 20))])
    return (chunk for _ in range(64))
"#;

#[test]
fn send_timeout_closes_a_connection_whose_client_stops_reading() {
    let node = start_node_with_apps(
        &[],
        &[("big.example", BIG_APP)],
        "    send_timeout: 1s\n",
        "",
    );
    let open = || {
        metric(
            node.metrics,
            "herald_client_connections",
            &[("role", "edge")],
        )
    };
    let mut stream = TcpStream::connect(("127.0.0.1", node.edge)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: big.example\r\nConnection: close\r\n\r\n")
        .unwrap();
    wait_until("the connection to be open", Duration::from_secs(10), || {
        open() == 1.0
    });
    // Not reading: the edge's writes stall once the buffers are full, and it gives up.
    wait_until("the edge to close it", Duration::from_secs(30), || {
        open() == 0.0
    });
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    assert!(received.starts_with(b"HTTP/1.1 200"));
    assert!(
        received.len() < 64 << 20,
        "the whole answer arrived ({} bytes)",
        received.len()
    );
}
