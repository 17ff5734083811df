//! The backend as an application gateway, as nginx's `uwsgi_pass` is one, on real processes: a
//! uWSGI emperor with `socket =` (uwsgi protocol) and `http-socket =` sites, one herald with
//! both roles (the edge with a TLS listener too), and a real nginx as the oracle for the
//! environ. Whole request bodies of any framing, answers read at the app's speed so slow
//! clients never hold a one-worker app, Server-Sent Events and WebSockets streamed, pipelined
//! requests answered in order, bad answers and unusable temp directories answered with pages,
//! and temp files that never outlive their request.

mod common;

use common::websocket::WebSocket;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const GATEWAY_APP: &str = "tests/apps/gateway_app.py";
const DEMO_APP: &str = "demo/app.py";
const ECHO_APP: &str = "demo/ws_echo.py";

/// How a site's vassal listens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listens {
    Uwsgi,
    Http,
}

/// A site: its name, app, socket kind, extra vassal lines, and whether it runs at start.
struct Site(&'static str, &'static str, Listens, &'static str, bool);

struct Node {
    emperor: Emperor,
    herald: Herald,
    edge: u16,
    tls: u16,
    backend: u16,
    metrics: u16,
    temp: PathBuf,
    dir: tempfile::TempDir,
}

impl Node {
    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(self.metrics, name, labels)
    }

    /// Open files of herald's in the temp directory (unnamed temp files show as
    /// `DIR/#1234 (deleted)`).
    fn temp_files_open(&self) -> usize {
        let Ok(fds) = fs::read_dir(format!("/proc/{}/fd", self.herald.pid())) else {
            return 0;
        };
        fds.filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.starts_with(&self.temp))
            .count()
    }

    fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.herald.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

/// The vassal of `site` as the emperor's template makes it, listening as `listens` says.
fn vassal(emperor: &Emperor, site: &Site) -> String {
    let Site(_, app, listens, extra, _) = site;
    let text = emperor.vassal(&repo_path(app), extra);
    match listens {
        Listens::Uwsgi => text,
        Listens::Http => text.replace("\nsocket = ", "\nhttp-socket = "),
    }
}

/// A self-signed certificate for the edge's and nginx's TLS listeners.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (crt, key) = (dir.join("edge.crt"), dir.join("edge.key"));
    self_signed(&crt, &key, &["alpha.example", "up.example"], 2);
    (crt, key)
}

/// Starts the emperor with `sites` and one herald with both roles; `backend_extra` and
/// `limits` (lines under `limits:`, for both roles) go into its configuration.
fn start(sites: &[Site], backend_extra: &str, limits: &str) -> Node {
    start_with(sites, backend_extra, "", limits)
}

/// `start`, with `buffering` lines under `backend.buffering`.
fn start_with(sites: &[Site], backend_extra: &str, buffering: &str, limits: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let emperor = Emperor::start(root, &[], &[]);
    for site in sites {
        let name = site.0;
        emperor.add_site(name, &vassal(&emperor, site));
        if site.4 {
            fs::copy(
                emperor.sites_dir.join(format!("{name}.ini")),
                emperor.enabled(name),
            )
            .unwrap();
        }
    }
    for site in sites.iter().filter(|s| s.4) {
        let socket = emperor.sockets_dir.join(format!("{}.sock", site.0));
        wait_until(&format!("{} running", site.0), STARTUP_DEADLINE, || {
            UnixStream::connect(&socket).is_ok()
        });
    }
    let temp = root.join("temp");
    fs::create_dir(&temp).unwrap();
    let (crt, key) = certificate(root);
    let (edge, tls, backend, metrics) = (free_port(), free_port(), free_port(), free_port());
    let limits = format!("  limits:\n{limits}");
    let yaml = format!(
        "{}{limits}  buffering:\n    client_body_temp_path: {t}\n    proxy_temp_path: {t}\n{buffering}{backend_extra}\
         edge:\n  listen: ['127.0.0.1:{edge}']\n  backends: ['127.0.0.1:{backend}']\n{limits}  tls:\n    listen: ['127.0.0.1:{tls}']\n    default_cert: {}\n    default_key: {}\n",
        emperor.backend_yaml(backend, metrics, "  idle_timeout: 0\n"),
        crt.display(),
        key.display(),
        t = temp.display(),
    );
    let herald = Herald::start(root, "node", &yaml, &[edge, tls, backend]);
    Node {
        emperor,
        herald,
        edge,
        tls,
        backend,
        metrics,
        temp,
        dir,
    }
}

/// One HTTP/1.1 answer read off `reader`: status, header fields, body (Content-Length,
/// chunked, or until the connection closes).
fn read_answer(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if status < 200 || status == 204 || status == 304 {
        // No body.
    } else if let Some(length) = header("content-length") {
        body.resize(length.parse().unwrap(), 0);
        reader.read_exact(&mut body).unwrap();
    } else if header("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut body).unwrap();
    }
    (status, headers, body)
}

fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Bytes that are not all alike, so a misplaced piece would show.
fn pattern(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// `POST path` to `site` with `body` (Content-Length), `Connection: close`.
fn post(site: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: {site}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// `POST path` to `site` with `body` sent chunked, in chunks of the sizes `sizes` gives.
fn post_chunked(site: &str, path: &str, body: &[u8], mut sizes: impl FnMut() -> usize) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: {site}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    let mut rest = body;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(sizes().clamp(1, rest.len()));
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
        rest = tail;
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    raw
}

/// What tests/apps/gateway_app.py's `/upload` answers for `body`.
fn upload_answer(body: &[u8]) -> String {
    format!("{} {} {}\n", body.len(), sha256(body), body.len())
}

const BIG_FAST: &[u8] =
    b"GET /big?n=8388608 HTTP/1.1\r\nHost: one.example\r\nConnection: close\r\n\r\n";

#[test]
fn uwsgi_and_http_socket_apps_both_start_through_the_edge() {
    let node = start(
        &[
            Site("uwsgi.example", DEMO_APP, Listens::Uwsgi, "", false),
            Site("http.example", DEMO_APP, Listens::Http, "", false),
        ],
        "",
        "    client_max_body_size: 8m\n",
    );
    let body = pattern(1 << 20);
    for site in ["uwsgi.example", "http.example"] {
        let mut stream = TcpStream::connect(("127.0.0.1", node.edge)).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let port = stream.local_addr().unwrap().port();
        stream.write_all(&post(site, "/up?x=1", &body)).unwrap();
        let (status, _, answer) = read_answer(&mut BufReader::new(stream));
        assert_eq!(status, 200, "{site}: {}", String::from_utf8_lossy(&answer));
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["site"], site);
        assert_eq!(answer["body_sha256"], sha256(&body), "{site}");
        let environ = &answer["environ"];
        assert_eq!(environ["HTTP_X_FORWARDED_FOR"], "127.0.0.1", "{site}");
        if site == "uwsgi.example" {
            // What only the uwsgi protocol can carry: the browser's own connection.
            assert_eq!(environ["REMOTE_ADDR"], "127.0.0.1");
            assert_eq!(environ["REMOTE_PORT"], port.to_string());
            assert_eq!(environ["SERVER_PORT"], node.edge.to_string());
            assert_eq!(environ["SERVER_NAME"], site);
            assert_eq!(environ["CONTENT_LENGTH"], body.len().to_string());
        }
    }
    assert_eq!(
        node.metric("herald_app_starts_total", &[("result", "ok")]),
        2.0
    );
}

/// The environ of one request through a real nginx (`uwsgi_pass` with Debian's
/// `uwsgi_params`) and through Herald's edge and backend, to the same app: equal, but for the
/// ports each saw, the hop-by-hop fields (which describe the client's connection to the proxy,
/// and which Herald drops as RFC 9110 asks), and the forwarding fields Herald adds.
#[test]
fn the_environ_is_the_one_nginx_uwsgi_pass_builds() {
    let node = start(
        &[Site("alpha.example", DEMO_APP, Listens::Uwsgi, "", true)],
        "  document_root: /srv/sites/{host}\n",
        "",
    );
    let (crt, key) = (node.root().join("edge.crt"), node.root().join("edge.key"));
    let (plain, tls) = (free_port(), free_port());
    let socket = node.emperor.sockets_dir.join("alpha.example.sock");
    let _nginx = Nginx::start(
        node.root(),
        &format!(
            "  server {{\n    listen 127.0.0.1:{plain};\n    listen 127.0.0.1:{tls} ssl;\n    server_name alpha.example;\n\
             \x20   ssl_certificate {};\n    ssl_certificate_key {};\n    root /srv/sites/$host;\n\
             \x20   location / {{\n      include /etc/nginx/uwsgi_params;\n      uwsgi_param SERVER_ADDR $server_addr;\n\
             \x20     uwsgi_pass unix:{};\n    }}\n  }}\n",
            crt.display(),
            key.display(),
            socket.display()
        ),
        &[plain, tls],
    );
    let mut requests: Vec<(&str, Vec<u8>)> = vec![
        (
            "a GET with an odd path and a query",
            b"GET /a/%2e%2e/b%20c/./d//e?x=1&y=%20&z HTTP/1.1\r\nHost: Alpha.Example\r\nAccept: text/html\r\nCookie: a=1; b=2\r\n".to_vec(),
        ),
        (
            "a POST with a form",
            b"POST /form HTTP/1.1\r\nHost: alpha.example\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 14\r\n\r\na=1&b=%C3%A9xy".to_vec(),
        ),
    ];
    let mut odd = b"GET /odd HTTP/1.1\r\nHost: alpha.example\r\nX-Odd: caf\xe9\tau lait \xff\r\nX-Empty:\r\nUser-Agent: oracle/1.0\r\n".to_vec();
    odd.extend_from_slice(b"\r\n");
    requests.push(("a header with odd bytes", odd));
    for (what, raw) in &mut requests {
        if !raw.ends_with(b"\r\n\r\n") && !raw.windows(4).any(|w| w == b"\r\n\r\n") {
            raw.extend_from_slice(b"\r\n");
        }
        let plain_environs = [(plain, false), (node.edge, false)].map(|(port, _)| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let local_port = stream.local_addr().unwrap().port();
            let with_close = close_after(raw);
            stream.write_all(&with_close).unwrap();
            let (status, _, body) = read_answer(&mut BufReader::new(stream));
            assert_eq!(
                status,
                200,
                "{what} on {port}: {}",
                String::from_utf8_lossy(&body)
            );
            (
                port,
                local_port,
                serde_json::from_slice::<Value>(&body).unwrap(),
            )
        });
        compare(what, &plain_environs[0], &plain_environs[1]);
    }
    // HTTPS: through nginx's TLS listener and Herald's TLS edge.
    let raw = b"GET /secure?q=%41 HTTP/1.1\r\nHost: alpha.example\r\nAccept: */*\r\n\r\n";
    let over_tls = [tls, node.tls].map(|port| {
        let (local_port, body) = tls_request(port, &close_after(raw));
        (
            port,
            local_port,
            serde_json::from_slice::<Value>(&body).unwrap(),
        )
    });
    compare("a GET over TLS", &over_tls[0], &over_tls[1]);
    assert_eq!(over_tls[1].2["environ"]["HTTPS"], "on");
}

/// `raw` with `Connection: close` added to its header.
fn close_after(raw: &[u8]) -> Vec<u8> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2;
    let mut out = raw[..end].to_vec();
    out.extend_from_slice(b"Connection: close\r\n");
    out.extend_from_slice(&raw[end..]);
    out
}

/// Sends `raw` over TLS (Python's ssl, no ALPN: HTTP/1.1); the client's port and the body.
fn tls_request(port: u16, raw: &[u8]) -> (u16, Vec<u8>) {
    const CLIENT: &str = r#"
import socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="alpha.example")
s.sendall(sys.stdin.buffer.read())
data = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    data += d
sys.stdout.buffer.write(b"%d\n" % s.getsockname()[1] + data)
"#;
    let mut child = Command::new("python3")
        .args(["-c", CLIENT, &port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(raw).unwrap();
    let out = child.wait_with_output().unwrap();
    let mut reader = BufReader::new(&out.stdout[..]);
    let mut local = String::new();
    reader.read_line(&mut local).unwrap();
    let (status, _, body) = read_answer(&mut reader);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    (local.trim().parse().unwrap(), body)
}

/// Fields Herald leaves out (hop-by-hop) or adds (forwarding) and nginx does not.
const NOT_COMPARED: [&str; 9] = [
    "HTTP_CONNECTION",
    "HTTP_KEEP_ALIVE",
    "HTTP_TE",
    "HTTP_TRANSFER_ENCODING",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_REAL_IP",
    "HTTP_FORWARDED",
    "HTTP_X_REQUEST_ID",
];

/// nginx's environ and Herald's, each with the port it was sent to and the client's port.
fn compare(what: &str, nginx: &(u16, u16, Value), herald: &(u16, u16, Value)) {
    let environ = |(server_port, client_port, answer): &(u16, u16, Value)| {
        let mut map: BTreeMap<String, String> = answer["environ"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| !NOT_COMPARED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        assert_eq!(
            map.remove("REMOTE_PORT"),
            Some(client_port.to_string()),
            "{what}"
        );
        assert_eq!(
            map.remove("SERVER_PORT"),
            Some(server_port.to_string()),
            "{what}"
        );
        map
    };
    let (nginx, herald) = (environ(nginx), environ(herald));
    for key in [
        "QUERY_STRING",
        "REQUEST_METHOD",
        "CONTENT_TYPE",
        "CONTENT_LENGTH",
        "REQUEST_URI",
        "PATH_INFO",
        "DOCUMENT_ROOT",
        "SERVER_PROTOCOL",
        "REQUEST_SCHEME",
        "REMOTE_ADDR",
        "SERVER_ADDR",
        "SERVER_NAME",
        "HTTP_HOST",
    ] {
        assert!(nginx.contains_key(key), "{what}: nginx sent no {key}");
    }
    assert_eq!(herald, nginx, "{what}: Herald's environ against nginx's");
}

#[test]
fn request_bodies_of_any_framing_reach_the_app_whole_with_their_length() {
    let node = start(
        &[
            Site("up.example", GATEWAY_APP, Listens::Uwsgi, "", true),
            Site("up-http.example", GATEWAY_APP, Listens::Http, "", true),
            Site("cold.example", GATEWAY_APP, Listens::Uwsgi, "", false),
        ],
        "",
        "    client_max_body_size: 2m\n",
    );
    let body = pattern(1_500_000);
    let expected = upload_answer(&body);
    // Chunked HTTP/1.1, in uneven chunks, through the edge and straight to the backend.
    for (port, site) in [
        (node.edge, "up.example"),
        (node.backend, "up.example"),
        (node.edge, "up-http.example"),
    ] {
        let mut size = 1;
        let raw = post_chunked(site, "/upload", &body, || {
            size = size * 3 + 7;
            size
        });
        let answer = send_raw(port, &raw);
        assert_eq!(answer.status, 200, "{site} on {port}: {}", answer.text());
        assert_eq!(answer.text(), expected, "{site} on {port}");
    }
    assert!(
        node.metric("herald_buffered_to_file_total", &[("what", "request")]) >= 3.0,
        "bodies past client_body_buffer_size went to temp files"
    );

    // HTTP/2 without content-length (curl streams DATA frames of unknown total length).
    let upload = node.root().join("upload.bin");
    fs::write(&upload, &body).unwrap();
    let curl = |file: &Path| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "30",
                "--http2",
                "-k",
                "-H",
                "Content-Length:",
            ])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .args(["-w", "\n%{http_version} %{http_code}"])
            .args(["--resolve", &format!("up.example:{}:127.0.0.1", node.tls)])
            .arg(format!("https://up.example:{}/upload", node.tls))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(&upload), format!("{expected}\n2 200"));

    // Over client_max_body_size, chunked or HTTP/2: 413, and the app is never started.
    let large = pattern(3 << 20);
    let raw = post_chunked("cold.example", "/upload", &large, || 100_000);
    for port in [node.edge, node.backend] {
        let answer = send_raw(port, &raw);
        assert_eq!(answer.status, 413, "{port}: {}", answer.text());
    }
    assert!(
        !node.emperor.enabled("cold.example").exists(),
        "the app never started"
    );
    assert_eq!(
        node.metric("herald_app_starts_total", &[("result", "ok")]),
        0.0
    );

    // `Expect: 100-continue` is answered by the hop the client talks to, before it reads the
    // body (the app behind a uwsgi socket could not answer it).
    for port in [node.edge, node.backend] {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream
            .write_all(b"POST /upload HTTP/1.1\r\nHost: up.example\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let (status, _, _) = read_answer(&mut reader);
        assert_eq!(status, 100, "{port}");
        stream.write_all(b"hello").unwrap();
        let (status, _, answer) = read_answer(&mut reader);
        assert_eq!(status, 200, "{port}");
        assert!(String::from_utf8_lossy(&answer).starts_with("5 "), "{port}");
    }
}

/// A client that reads an answer at `bytes_per_second`, with a small receive buffer, until
/// `stop`; what it read.
fn slow_reader(
    port: u16,
    path: &str,
    site: &str,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<usize> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {site}\r\nConnection: close\r\n\r\n");
    thread::spawn(move || {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket
            .connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
            .unwrap();
        let mut stream: TcpStream = socket.into();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut got = 0;
        let mut piece = [0u8; 2048];
        let began = Instant::now();
        // 2 KiB every 100 ms: 20 KiB/s.
        while !stop.load(Ordering::Relaxed) && began.elapsed() < Duration::from_secs(60) {
            match stream.read(&mut piece) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            thread::sleep(Duration::from_millis(100));
        }
        got
    })
}

/// The issue's scenario: a one-process app; 20 clients read an 8 MiB answer at 20 KiB/s (far
/// more than the kernel's socket buffers hold) and another uploads 1 MiB over 5 s, while a
/// fast client's small requests to the same site are all answered, each within a second.
/// Afterwards no temp file is left and herald's memory is back near where it was.
#[test]
fn slow_clients_never_hold_a_one_worker_app() {
    let node = start(
        &[Site("one.example", GATEWAY_APP, Listens::Uwsgi, "", true)],
        "",
        "    client_max_body_size: 16m\n    send_timeout: 120s\n",
    );
    let small = |node: &Node| get(node.edge, "one.example", "/small");
    // Warm up: the paths the scenario uses, once each, before the baseline.
    assert_eq!(small(&node).status, 200);
    let warm = send_raw(node.edge, BIG_FAST);
    assert_eq!(warm.body.len(), 8 << 20);
    let baseline_rss = node.rss_kib();

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..20)
        .map(|_| slow_reader(node.edge, "/big?n=8388608", "one.example", stop.clone()))
        .collect();
    let upload = pattern(1 << 20);
    let uploader = {
        let upload = upload.clone();
        let port = node.edge;
        thread::spawn(move || {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            write!(
                stream,
                "POST /upload HTTP/1.1\r\nHost: one.example\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                upload.len()
            )
            .unwrap();
            let began = Instant::now();
            for piece in upload.chunks(upload.len() / 100) {
                stream.write_all(piece).unwrap();
                thread::sleep(Duration::from_millis(50));
            }
            let took = began.elapsed();
            let (status, _, answer) = read_answer(&mut BufReader::new(stream));
            (status, String::from_utf8_lossy(&answer).into_owned(), took)
        })
    };
    // Every slow reader's answer is in flight before the fast client starts.
    wait_until("20 answers buffered", Duration::from_secs(20), || {
        node.metric("herald_buffered_to_file_total", &[("what", "answer")]) >= 20.0
    });
    let mut latencies = Vec::new();
    let began = Instant::now();
    let mut during_pid = None;
    while began.elapsed() < Duration::from_secs(6) {
        let sent = Instant::now();
        let answer = small(&node);
        let took = sent.elapsed();
        assert_eq!(answer.status, 200, "{}", answer.text());
        during_pid.get_or_insert_with(|| answer.text().split(' ').nth(1).unwrap().to_owned());
        latencies.push(took);
        thread::sleep(Duration::from_millis(100));
    }
    let open_during = node.temp_files_open();
    let listed_during = fs::read_dir(&node.temp).unwrap().count();
    let (status, answer, took) = uploader.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(answer, upload_answer(&upload));
    assert!(
        took >= Duration::from_secs(4),
        "the upload was slow ({took:?})"
    );
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let got = reader.join().unwrap();
        assert!(
            got > 20_000 && got < 8 << 20,
            "a slow reader read {got} bytes"
        );
    }

    let slowest = latencies.iter().max().unwrap();
    assert!(
        latencies.len() >= 30,
        "only {} fast requests",
        latencies.len()
    );
    assert!(
        *slowest < Duration::from_secs(1),
        "a fast request took {slowest:?} (all: {latencies:?})"
    );
    // Through the edge, the kernel's socket buffers (client and edge-to-backend, autotuned to
    // megabytes on loopback) take part of each answer; the backend holds the rest.
    assert!(open_during >= 1, "no answer in a temp file");
    assert_eq!(listed_during, 0, "temp files have no name");
    // The clients left: every temp file with them, and the memory.
    wait_until("no temp file open", Duration::from_secs(10), || {
        node.temp_files_open() == 0
    });
    assert_eq!(fs::read_dir(&node.temp).unwrap().count(), 0);
    // The memory: bounded while the answers were in flight (about a megabyte per slow client
    // here, most of it Pingora's own pipeline buffers in both roles), and not kept by them
    // afterwards. The allocator keeps freed pages for reuse, and what it keeps varies by a few
    // megabytes, so the proof is a second wave of slow readers, after which herald uses no
    // more than after the first (within that noise; a leak would be megabytes per wave).
    let settle = |node: &Node| {
        let answer = send_raw(node.edge, BIG_FAST);
        assert_eq!(answer.body.len(), 8 << 20);
        node.rss_kib()
    };
    let after_first = settle(&node);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..20)
        .map(|_| slow_reader(node.edge, "/big?n=8388608", "one.example", stop.clone()))
        .collect();
    thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().unwrap();
    }
    wait_until("no temp file open", Duration::from_secs(10), || {
        node.temp_files_open() == 0
    });
    let after_second = settle(&node);
    eprintln!(
        "RSS: {baseline_rss} KiB before, {after_first} after one wave, {after_second} after two"
    );
    assert!(
        after_first < baseline_rss + 32 * 1024,
        "RSS {baseline_rss} KiB before, {after_first} KiB after"
    );
    assert!(
        after_second < after_first + 8 * 1024,
        "RSS grew from {after_first} KiB to {after_second} KiB with a second wave"
    );
    assert_eq!(
        node.metric("herald_buffer_failures_total", &[("what", "answer")]),
        0.0
    );
}

/// `request_buffering: off` and `response_buffering: off`: the streaming of before, for those
/// who want it. A body without a length gets 411 (the app needs the length before the body),
/// one with a length streams to the app, and a slow reader's answer takes no temp file.
#[test]
fn with_buffering_off_bodies_and_answers_stream() {
    let node = start_with(
        &[
            Site("one.example", GATEWAY_APP, Listens::Uwsgi, "", true),
            Site("http.example", GATEWAY_APP, Listens::Http, "", true),
        ],
        "",
        "    request_buffering: off\n    response_buffering: off\n",
        "    client_max_body_size: 8m\n",
    );
    let body = pattern(1 << 20);
    for site in ["one.example", "http.example"] {
        for port in [node.edge, node.backend] {
            let chunked = format!(
                "POST /upload HTTP/1.1\r\nHost: {site}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            );
            let answer = send_raw(port, chunked.as_bytes());
            assert_eq!(answer.status, 411, "{site} on {port}: {}", answer.text());
            assert!(
                answer.text().contains("Content-Length"),
                "{}",
                answer.text()
            );
            let raw = post(site, "/upload", &body);
            let answer = send_raw(port, &raw);
            assert_eq!(answer.text(), upload_answer(&body), "{site} on {port}");
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reader = slow_reader(node.backend, "/big?n=8388608", "one.example", stop.clone());
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        node.temp_files_open(),
        0,
        "no temp file while the answer streams"
    );
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    for what in ["request", "answer"] {
        assert_eq!(
            node.metric("herald_buffered_to_file_total", &[("what", what)]),
            0.0
        );
    }
}

#[test]
fn server_sent_events_stream_event_by_event_and_websockets_still_work() {
    let node = start(
        &[
            Site("sse.example", GATEWAY_APP, Listens::Uwsgi, "", true),
            Site(
                "ws.example",
                ECHO_APP,
                Listens::Uwsgi,
                "threads = 4\n",
                true,
            ),
            Site(
                "ws-http.example",
                ECHO_APP,
                Listens::Http,
                "threads = 4\n",
                true,
            ),
        ],
        "",
        "",
    );
    let mut stream = TcpStream::connect(("127.0.0.1", node.edge)).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
        .write_all(
            b"GET /sse?events=5&gap=0.4 HTTP/1.1\r\nHost: sse.example\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    while head != "\r\n" {
        head.clear();
        reader.read_line(&mut head).unwrap();
        assert!(
            !head.to_ascii_lowercase().starts_with("x-accel-"),
            "X-Accel-* stays between the app and Herald: {head}"
        );
    }
    let mut events = Vec::new();
    let mut line = String::new();
    while events.len() < 5 {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "closed after {events:?}"
        );
        if let Some(rest) = line.trim().strip_prefix("data: event ") {
            let arrived = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            let sent: f64 = rest.split(" at ").nth(1).unwrap().parse().unwrap();
            events.push(arrived - sent);
        }
    }
    for (i, delay) in events.iter().enumerate() {
        assert!(
            *delay < 0.25,
            "event {i} arrived {delay:.3} s after it was sent: {events:?}"
        );
    }

    for site in ["ws.example", "ws-http.example"] {
        let mut socket = WebSocket::connect(node.edge, site, "/ws/environ")
            .unwrap_or_else(|r| panic!("{site}: {}", r.status));
        let environ: Value = serde_json::from_slice(&socket.recv().unwrap()).unwrap();
        assert_eq!(environ["path"], "/ws/environ", "{site}: {environ}");
        for i in 0..200 {
            let message = format!("{site} message {i}");
            socket.send(message.as_bytes()).unwrap();
            assert_eq!(socket.recv().unwrap(), message.as_bytes());
        }
        socket.close();
    }
}

#[test]
fn pipelined_requests_are_answered_in_order_on_their_connection() {
    let node = start(
        &[Site("alpha.example", DEMO_APP, Listens::Uwsgi, "", true)],
        "",
        "",
    );
    for port in [node.edge, node.backend] {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        // All three at once, before any answer.
        stream
            .write_all(
                b"GET /one HTTP/1.1\r\nHost: alpha.example\r\n\r\n\
                  POST /two HTTP/1.1\r\nHost: alpha.example\r\nContent-Length: 3\r\n\r\nabc\
                  GET /three HTTP/1.1\r\nHost: alpha.example\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
        let mut reader = BufReader::new(stream);
        for (path, length) in [("/one", 0), ("/two", 3), ("/three", 0)] {
            let (status, _, body) = read_answer(&mut reader);
            assert_eq!(status, 200, "{path} on {port}");
            let answer: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(answer["path"], path, "{port}: answers in order");
            assert_eq!(answer["body_length"], length);
        }
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "nothing after the last answer");
    }
}

#[test]
fn bad_answers_from_apps_are_502_pages_and_logged() {
    let node = start(
        &[Site("alpha.example", DEMO_APP, Listens::Uwsgi, "", true)],
        "",
        "",
    );
    let behaviours = ["garbage", "bad-status", "many-headers", "closes"];
    let mut args: Vec<String> = Vec::new();
    for behaviour in behaviours {
        let site = format!("{behaviour}.example");
        // A known site whose socket is answered by the bad server, already listening.
        node.emperor.add_site(&site, "[uwsgi]\nsocket = unused\n");
        let socket = node.emperor.sockets_dir.join(format!("{site}.sock"));
        args.push(format!("{behaviour}={}", socket.display()));
    }
    let ready = node.root().join("bad.ready");
    let mut command = Command::new("python3");
    command
        .arg(repo_path("tests/apps/bad_answers.py"))
        .args(&args)
        .arg(&ready);
    let mut server = Process::spawn("bad answers", &mut command, &node.root().join("bad.log"));
    wait_until("the bad answers server", STARTUP_DEADLINE, || {
        server.assert_running();
        ready.exists()
    });
    for behaviour in behaviours {
        let site = format!("{behaviour}.example");
        for port in [node.edge, node.backend] {
            let answer = send_raw(
                port,
                format!("GET /x HTTP/1.1\r\nHost: {site}\r\nConnection: close\r\n\r\n").as_bytes(),
            );
            assert_eq!(answer.status, 502, "{site} on {port}: {}", answer.text());
            assert!(
                answer.text().contains("failed to answer"),
                "{}",
                answer.text()
            );
        }
        let log = node.herald.log();
        assert!(
            log.lines()
                .any(|l| l.contains("ERROR") && l.contains(&site) && l.contains("502")),
            "{site}: no error line naming it:\n{log}"
        );
    }
    // Herald is still up, and the next request gets its own answer.
    let answer = get(node.edge, "alpha.example", "/after").json();
    assert_eq!(answer["path"], "/after");
}

/// A temp directory that disappears (or, as root, one that is full) fails the requests that
/// need it with a page naming the problem, and nothing else.
#[test]
fn unusable_temp_directories_fail_only_the_requests_that_need_them() {
    let node = start(
        &[Site("one.example", GATEWAY_APP, Listens::Uwsgi, "", true)],
        "",
        "",
    );
    fs::remove_dir(&node.temp).unwrap();
    let body = pattern(100_000);
    let raw = post("one.example", "/upload", &body);
    let answer = send_raw(node.backend, &raw);
    assert_eq!(answer.status, 500, "{}", answer.text());
    assert!(
        answer.text().contains("could not store"),
        "{}",
        answer.text()
    );
    // A small body fits in memory, and small answers need no temp file.
    let answer = send_raw(
        node.backend,
        b"POST /upload HTTP/1.1\r\nHost: one.example\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(answer.status, 200);
    // An answer too large for memory, to a client that does not read: cut, and logged.
    let mut stream = TcpStream::connect(("127.0.0.1", node.backend)).unwrap();
    stream
        .write_all(b"GET /big?n=4194304 HTTP/1.1\r\nHost: one.example\r\nConnection: close\r\n\r\n")
        .unwrap();
    wait_until(
        "the answer's buffering to fail",
        Duration::from_secs(10),
        || node.metric("herald_buffer_failures_total", &[("what", "answer")]) >= 1.0,
    );
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    assert!(got.len() < 4 << 20, "the answer was cut");
    let log = node.herald.log();
    let dir = node.temp.display().to_string();
    for what in ["request body", "app's answer"] {
        assert!(
            log.lines()
                .any(|l| l.contains("one.example") && l.contains(what) && l.contains(&dir)),
            "no log line naming the site, the {what} and {dir}:\n{log}"
        );
    }
    assert_eq!(
        node.metric("herald_buffer_failures_total", &[("what", "request")]),
        1.0
    );
    assert_eq!(get(node.edge, "one.example", "/small").status, 200);

    full_disk_is_507(&node);
}

/// As root (CI): a 256 KiB tmpfs as the temp directory; a 1 MiB body gets 507.
fn full_disk_is_507(node: &Node) {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipping the full-disk case: mounting a small tmpfs needs root (CI runs it)");
        return;
    }
    fs::create_dir(&node.temp).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&node.temp)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs on {:?}", node.temp);
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(node.temp.clone());
    let body = pattern(1 << 20);
    let raw = post("one.example", "/upload", &body);
    let answer = send_raw(node.backend, &raw);
    assert_eq!(answer.status, 507, "{}", answer.text());
    assert!(answer.text().contains("no room left"), "{}", answer.text());
    assert_eq!(
        fs::read_dir(&node.temp).unwrap().count(),
        0,
        "nothing left behind"
    );
    assert_eq!(get(node.edge, "one.example", "/small").status, 200);
}

/// Temp files have no name: even `kill -9` during a buffered answer leaves nothing behind.
#[test]
fn temp_files_leave_nothing_behind_even_after_kill_9() {
    let mut node = start(
        &[Site("one.example", GATEWAY_APP, Listens::Uwsgi, "", true)],
        "",
        "",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let reader = slow_reader(node.backend, "/big?n=8388608", "one.example", stop.clone());
    wait_until("an answer in a temp file", Duration::from_secs(10), || {
        node.temp_files_open() == 1
    });
    assert_eq!(fs::read_dir(&node.temp).unwrap().count(), 0);
    node.herald.kill_hard();
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert_eq!(
        fs::read_dir(&node.temp).unwrap().count(),
        0,
        "nothing in the temp directory after kill -9"
    );
}
