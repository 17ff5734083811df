//! WebSockets through both tiers, on real processes: a uWSGI emperor running the echo app
//! (`demo/ws_echo.py`) as sites, a herald backend over it, a herald edge in front, and a
//! WebSocket client (`tests/common/websocket.rs`) talking to the edge.

mod common;

use common::websocket::WebSocket;
use common::*;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

const ECHO_APP: &str = "demo/ws_echo.py";
const DEMO_APP: &str = "demo/app.py";
/// An open WebSocket holds a sync worker for its whole life: the echo sites get four threads.
const ECHO_VASSAL: &str = "threads = 4\n";
/// uWSGI's pings (every 30 s by default) put off: an idle socket is really idle.
const QUIET_VASSAL: &str = "threads = 4\nwebsockets-ping-freq = 3600\n";
/// Ordinary requests get 1 s without a byte, WebSockets 4 s, in both roles.
const SHORT_TIMEOUTS: &str = "  websocket_idle_timeout: 4s\n  limits:\n    client_body_timeout: 1s\n    proxy_read_timeout: 1s\n";
const WEBSOCKET_IDLE: Duration = Duration::from_secs(4);

/// A site for `start`: its name, the app it runs, extra vassal lines, running at start?
struct Site(&'static str, &'static str, &'static str, bool);

/// The processes of one test; dropped edge first, then backend, then the emperor.
struct Tiers {
    edge: u16,
    edge_metrics: u16,
    backend_metrics: u16,
    edge_herald: Herald,
    backend_herald: Herald,
    emperor: Emperor,
    _dir: tempfile::TempDir,
}

/// An emperor with `sites`, a herald backend over it and a herald edge in front; `role_extra`
/// (lines indented for a role's section) goes into both roles.
fn start(sites: &[Site], role_extra: &str) -> Tiers {
    start_with(sites, role_extra, "")
}

/// `start`, with `backend_extra` for the backend role only.
fn start_with(sites: &[Site], role_extra: &str, backend_extra: &str) -> Tiers {
    let dir = tempfile::tempdir().unwrap();
    let emperor = Emperor::start(dir.path(), &[], &[]);
    for Site(name, app, extra, running) in sites {
        emperor.add_site(name, &emperor.vassal(&repo_path(app), extra));
        if *running {
            fs::copy(
                emperor.sites_dir.join(format!("{name}.ini")),
                emperor.enabled(name),
            )
            .unwrap();
            let socket = emperor.sockets_dir.join(format!("{name}.sock"));
            wait_until(&format!("{name} running"), STARTUP_DEADLINE, || {
                UnixStream::connect(&socket).is_ok()
            });
        }
    }
    let (edge, backend, edge_metrics, backend_metrics) =
        (free_port(), free_port(), free_port(), free_port());
    let backend_herald = Herald::start(
        dir.path(),
        "backend",
        &emperor.backend_yaml(
            backend,
            backend_metrics,
            &format!("{role_extra}{backend_extra}"),
        ),
        &[backend, backend_metrics],
    );
    let edge_herald = Herald::start(
        dir.path(),
        "edge",
        &format!(
            "metrics:\n  listen: 127.0.0.1:{edge_metrics}\nedge:\n  listen: ['127.0.0.1:{edge}']\n  backends: ['127.0.0.1:{backend}']\n{role_extra}"
        ),
        &[edge, edge_metrics],
    );
    Tiers {
        edge,
        edge_metrics,
        backend_metrics,
        edge_herald,
        backend_herald,
        emperor,
        _dir: dir,
    }
}

impl Tiers {
    /// `name` in both roles' metrics: (edge, backend).
    fn both(&self, name: &str) -> (f64, f64) {
        (
            metric(self.edge_metrics, name, &[("role", "edge")]),
            metric(self.backend_metrics, name, &[("role", "backend")]),
        )
    }

    /// A WebSocket's end, by either side or by the idle timeout, is no error.
    fn assert_no_proxy_errors_logged(&self) {
        for log in [self.edge_herald.log(), self.backend_herald.log()] {
            assert!(!log.contains("Fail to proxy"), "{log}");
        }
    }

    fn wait_until_no_websocket_is_open(&self) {
        wait_until("herald_websockets_open 0 in both roles", IO_TIMEOUT, || {
            self.both("herald_websockets_open") == (0.0, 0.0)
        });
    }
}

/// Sends `text` and checks that the next message is the same.
fn echo(ws: &mut WebSocket, text: &[u8]) {
    ws.send(text).expect("send");
    let answer = ws.recv().expect("echo");
    assert!(
        answer == text,
        "sent {} bytes ({:?}...), got {} bytes ({:?}...)",
        text.len(),
        String::from_utf8_lossy(&text[..text.len().min(40)]),
        answer.len(),
        String::from_utf8_lossy(&answer[..answer.len().min(40)])
    );
}

/// `count` numbered messages, each echoed before the next is sent; sizes vary so that every
/// frame length encoding (7, 16 and 64 bits) is used. Returns the bytes sent.
fn echo_numbered(ws: &mut WebSocket, count: usize) -> usize {
    let mut sent = 0;
    for i in 0..count {
        let filler = match i % 100 {
            99 => 100_000,
            n if n % 10 == 9 => 1_000 + i,
            n => n,
        };
        let mut message = format!("message {i} ").into_bytes();
        message.resize(message.len() + filler, b'a' + (i % 26) as u8);
        echo(ws, &message);
        sent += message.len();
    }
    sent
}

#[test]
fn a_websocket_echoes_1000_messages_through_both_tiers() {
    let tiers = start(&[Site("echo.example", ECHO_APP, ECHO_VASSAL, true)], "");
    let mut ws = WebSocket::connect(tiers.edge, "echo.example", "/ws/environ")
        .unwrap_or_else(|refused| panic!("no upgrade: {refused:?}"));
    // The handshake as the app saw it: Pingora's `Connection: Upgrade` reached it (the backend
    // adds `Connection: close` to ordinary requests only), with the client's key and address.
    let seen: serde_json::Value = serde_json::from_slice(&ws.recv().unwrap()).unwrap();
    assert!(
        seen["HTTP_CONNECTION"]
            .as_str()
            .is_some_and(|c| c.eq_ignore_ascii_case("upgrade")),
        "{seen}"
    );
    assert_eq!(seen["HTTP_UPGRADE"], "websocket", "{seen}");
    assert_eq!(seen["HTTP_SEC_WEBSOCKET_KEY"], ws.key.as_str(), "{seen}");
    assert_eq!(seen["HTTP_X_FORWARDED_FOR"], "127.0.0.1", "{seen}");
    assert_eq!(seen["method"], "GET", "{seen}");
    assert_eq!(seen["site"], "echo.example", "{seen}");

    let sent = echo_numbered(&mut ws, 1000);
    assert!(
        sent > 1 << 20,
        "{sent} bytes: past the default client_max_body_size"
    );

    assert_eq!(tiers.both("herald_websockets_open"), (1.0, 1.0));
    // Another worker answers ordinary requests while the socket holds one.
    let plain = get(tiers.edge, "echo.example", "/");
    assert_eq!(plain.status, 200, "{}", plain.text());
    assert!(plain.text().contains("not a WebSocket"), "{}", plain.text());

    ws.close();
    tiers.wait_until_no_websocket_is_open();
    tiers.assert_no_proxy_errors_logged();
    // The socket counts as a request answered 101; its lifetime is kept apart from the
    // request durations, which hold only the ordinary GET.
    for (port, role) in [
        (tiers.edge_metrics, "edge"),
        (tiers.backend_metrics, "backend"),
    ] {
        let role_code = |code| [("role", role), ("code", code)];
        assert_eq!(
            metric(port, "herald_requests_total", &role_code("1xx")),
            1.0
        );
        assert_eq!(
            metric(port, "herald_requests_total", &role_code("2xx")),
            1.0
        );
        let role = [("role", role)];
        assert_eq!(
            metric(port, "herald_websocket_duration_seconds_count", &role),
            1.0
        );
        assert_eq!(
            metric(port, "herald_request_duration_seconds_count", &role),
            1.0
        );
    }
}

#[test]
fn a_cold_site_starts_on_its_first_websocket() {
    let tiers = start(&[Site("cold.example", ECHO_APP, ECHO_VASSAL, false)], "");
    assert!(!tiers.emperor.enabled("cold.example").exists());
    let mut ws = WebSocket::connect(tiers.edge, "cold.example", "/ws")
        .unwrap_or_else(|refused| panic!("no upgrade: {refused:?}"));
    echo_numbered(&mut ws, 1000);
    ws.close();
    assert_eq!(tiers.emperor.spawn_count("cold.example"), 1);
    let starts = |result| {
        metric(
            tiers.backend_metrics,
            "herald_app_starts_total",
            &[("result", result)],
        )
    };
    assert_eq!(starts("ok"), 1.0);
    assert_eq!(
        starts("failed") + starts("timeout") + starts("refused"),
        0.0
    );
    assert_eq!(
        metric(
            tiers.backend_metrics,
            "herald_requests_waited_on_start_total",
            &[]
        ),
        1.0
    );
}

#[test]
fn messages_beyond_client_max_body_size_pass() {
    let tiers = start(
        &[Site("echo.example", ECHO_APP, ECHO_VASSAL, true)],
        "  limits:\n    client_max_body_size: 64k\n",
    );
    let mut ws = WebSocket::connect(tiers.edge, "echo.example", "/ws")
        .unwrap_or_else(|refused| panic!("no upgrade: {refused:?}"));
    let mut sent = 0;
    for i in 0..40 {
        let message = vec![b'0' + (i % 10) as u8; 65_536 + i];
        echo(&mut ws, &message);
        sent += message.len();
    }
    assert!(sent > 40 * 64 * 1024, "{sent}");
    ws.close();
    // The limit still holds for request bodies.
    let body = vec![b'x'; 100_000];
    let mut post = format!(
        "POST / HTTP/1.1\r\nHost: echo.example\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    post.extend_from_slice(&body);
    assert_eq!(send_raw(tiers.edge, &post).status, 413);
}

#[test]
fn an_idle_websocket_closes_after_websocket_idle_timeout() {
    let tiers = start(
        &[Site("quiet.example", ECHO_APP, QUIET_VASSAL, true)],
        SHORT_TIMEOUTS,
    );

    let mut ws = WebSocket::connect(tiers.edge, "quiet.example", "/ws")
        .unwrap_or_else(|refused| panic!("no upgrade: {refused:?}"));
    echo(&mut ws, b"hello");
    // Silent for 2.5 times the timeouts of an ordinary request, in both roles and both
    // directions: still open.
    ws.idle_for(Duration::from_millis(2500))
        .expect("open after 2.5 s of silence");
    echo(&mut ws, b"still here");
    let last_traffic = Instant::now();
    let end = ws
        .idle_for(IO_TIMEOUT)
        .expect_err("an idle socket is closed");
    let idle = last_traffic.elapsed();
    assert!(
        matches!(
            end.kind(),
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
        ),
        "{end}"
    );
    // The timer restarted when "still here" passed the proxies, a moment before it arrived
    // here; closing well before websocket_idle_timeout would mean another timeout did it.
    assert!(
        idle >= WEBSOCKET_IDLE - Duration::from_secs(1),
        "closed after {idle:?} of silence"
    );
    eprintln!("closed after {idle:?} of silence (websocket_idle_timeout 4 s)");
    assert_eq!(ws.pings, 0, "uWSGI's pings were put off");
    tiers.wait_until_no_websocket_is_open();
    tiers.assert_no_proxy_errors_logged();
    // Ordinary requests keep their 1 s timeouts.
    assert_eq!(get(tiers.edge, "quiet.example", "/sleep?s=3").status, 504);
}

#[test]
fn an_active_websocket_outlives_every_timeout() {
    let tiers = start(
        &[Site("quiet.example", ECHO_APP, QUIET_VASSAL, true)],
        SHORT_TIMEOUTS,
    );
    let mut ws = WebSocket::connect(tiers.edge, "quiet.example", "/ws")
        .unwrap_or_else(|refused| panic!("no upgrade: {refused:?}"));
    // A message every half second for twice websocket_idle_timeout (eight times the
    // ordinary timeouts)...
    let began = Instant::now();
    let mut ticks = 0;
    while began.elapsed() < 2 * WEBSOCKET_IDLE {
        echo(&mut ws, format!("tick {ticks}").as_bytes());
        ticks += 1;
        ws.idle_for(Duration::from_millis(500)).expect("still open");
    }
    // ...then the server alone talks, as long again: traffic either way keeps it open.
    ws.send(b"push 16 500").unwrap();
    for i in 1..=16 {
        assert_eq!(ws.recv().expect("a push"), format!("push {i}").as_bytes());
    }
    echo(&mut ws, b"done");
    eprintln!("open for {:?} ({ticks} ticks, 16 pushes)", began.elapsed());
    ws.close();
    tiers.wait_until_no_websocket_is_open();
    tiers.assert_no_proxy_errors_logged();
}

#[test]
fn uwsgi_pings_keep_an_idle_websocket_open() {
    let tiers = start(
        &[Site(
            "pinging.example",
            ECHO_APP,
            "threads = 4\nwebsockets-ping-freq = 1\n",
            true,
        )],
        SHORT_TIMEOUTS,
    );
    let mut ws = WebSocket::connect(tiers.edge, "pinging.example", "/ws")
        .unwrap_or_else(|refused| panic!("no upgrade: {refused:?}"));
    // The client sends nothing but pongs for twice websocket_idle_timeout.
    ws.idle_for(2 * WEBSOCKET_IDLE)
        .expect("open while uWSGI pings");
    assert!(ws.pings >= 2, "{} pings", ws.pings);
    echo(&mut ws, b"after the pings");
    ws.close();
    tiers.wait_until_no_websocket_is_open();
    tiers.assert_no_proxy_errors_logged();
}

#[test]
fn an_open_websocket_keeps_its_app_from_idling_out() {
    let tiers = start_with(
        &[Site("quiet.example", ECHO_APP, QUIET_VASSAL, true)],
        "",
        "  idle_timeout: 1s\n",
    );
    let stops = || metric(tiers.backend_metrics, "herald_app_stops_total", &[]);
    let mut ws = WebSocket::connect(tiers.edge, "quiet.example", "/ws")
        .unwrap_or_else(|refused| panic!("no upgrade: {refused:?}"));
    echo(&mut ws, b"hello");
    // Four idle timeouts (the reaper looks every 100 ms) without a message: the socket is a
    // request in progress, so the app stays.
    ws.idle_for(Duration::from_secs(4)).expect("still open");
    assert!(tiers.emperor.enabled("quiet.example").exists());
    assert_eq!(stops(), 0.0);
    echo(&mut ws, b"still served");
    ws.close();
    // Once it is closed, the app idles out as any other.
    wait_until("the idle app to be stopped", IO_TIMEOUT, || {
        !tiers.emperor.enabled("quiet.example").exists()
    });
    assert_eq!(stops(), 1.0);
}

#[test]
fn a_refused_upgrade_is_an_ordinary_request() {
    // The demo app knows nothing of WebSockets: it answers the handshake with its JSON page.
    let tiers = start(&[Site("plain.example", DEMO_APP, "", true)], "");
    let refused = match WebSocket::connect(tiers.edge, "plain.example", "/ws") {
        Ok(_) => panic!("the demo app cannot upgrade"),
        Err(refused) => refused,
    };
    assert_eq!(refused.status, 200, "{}", refused.head);
    let seen: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(seen["environ"]["HTTP_UPGRADE"], "websocket", "{seen}");
    // Its upstream connection was not kept for another request (the app closed it).
    for _ in 0..20 {
        assert_eq!(get(tiers.edge, "plain.example", "/hello").status, 200);
    }
    assert_eq!(tiers.both("herald_websockets_open"), (0.0, 0.0));
    assert_eq!(
        metric(
            tiers.edge_metrics,
            "herald_requests_total",
            &[("role", "edge"), ("code", "1xx")]
        ),
        0.0
    );
}
