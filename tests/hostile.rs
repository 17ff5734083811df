//! Hostile requests on both roles: classic request-smuggling payloads sent through the edge
//! (edge -> backend -> uWSGI) never get a smuggled request to the app, which sees exactly the
//! requests the clients meant; every refusal is answered, closes its connection, starts no app
//! and is in the access log and the metrics; oversized headers get 414 or 431, and the largest
//! header Herald lets through reaches the app whole.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SITE: &str = "record.example";

/// A WSGI app that appends what it received, one JSON line per request, to `RECORD_FILE`,
/// and answers with the same line.
const RECORDING_APP: &str = r#"
import json, os
RECORD = os.environ["RECORD_FILE"]

def application(environ, start_response):
    length = environ.get("CONTENT_LENGTH", "")
    stream = environ["wsgi.input"]
    body = stream.read(int(length)) if length.isdigit() else stream.read()
    entry = {
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "body": body.decode("latin-1"),
        "content_length": length,
        "transfer_encoding": environ.get("HTTP_TRANSFER_ENCODING", ""),
    }
    line = json.dumps(entry, sort_keys=True)
    with open(RECORD, "a") as record:
        record.write(line + "\n")
    payload = (line + "\n").encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]
"#;

/// What the app saw of one request.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    method: String,
    path: String,
    body: String,
}

fn seen(method: &str, path: &str, body: &str) -> Seen {
    Seen {
        method: method.to_owned(),
        path: path.to_owned(),
        body: body.to_owned(),
    }
}

fn recorded(file: &Path) -> Vec<Seen> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            seen(
                entry["method"].as_str().unwrap(),
                entry["path"].as_str().unwrap(),
                entry["body"].as_str().unwrap(),
            )
        })
        .collect()
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The statuses in an access log, once it has `count` lines.
fn logged_statuses(path: &Path, count: usize) -> Vec<u64> {
    wait_until(
        &format!("{count} lines in {path:?}"),
        Duration::from_secs(10),
        || json_lines(path).len() >= count,
    );
    json_lines(path)
        .iter()
        .map(|entry| entry["status"].as_u64().unwrap())
        .collect()
}

/// Who refuses a payload: Herald's own checks (answered with a page, logged) or Pingora's
/// parser before any hook (answered 400, not logged: no request exists yet).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum By {
    Herald,
    Pingora,
}

struct Refused {
    name: &'static str,
    raw: String,
    status: u16,
    by: By,
}

fn refused_payloads() -> Vec<Refused> {
    let h = SITE;
    let smuggled = format!("GET /smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n");
    let refused = |name, raw: String, status, by| Refused {
        name,
        raw,
        status,
        by,
    };
    vec![
        refused("CL.TE", format!("POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}", 5 + smuggled.len()), 400, By::Herald),
        refused("TE.CL", format!("POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len()), 400, By::Herald),
        refused("TE twice", format!("POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"), 400, By::Herald),
        refused("TE list ending in chunked", format!("POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{smuggled}"), 501, By::Herald),
        refused("TE xchunked", format!("POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\nhello"), 400, By::Pingora),
        refused("TE space before colon", format!("POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello"), 400, By::Pingora),
        refused("TE obs-fold", format!("POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\nhello"), 400, By::Pingora),
        refused("CL twice, same value", format!("POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello{smuggled}"), 400, By::Herald),
        refused("CL list", format!("POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: 5, 5\r\n\r\nhello{smuggled}"), 400, By::Herald),
        refused("CL twice, different values", format!("POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: 5\r\nContent-Length: {}\r\n\r\nhello{smuggled}", 5 + smuggled.len()), 400, By::Pingora),
        refused("CL with a sign", format!("POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: +5\r\n\r\nhello"), 400, By::Pingora),
        refused("CL overflowing", format!("POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: 99999999999999999999\r\n\r\nhello"), 400, By::Pingora),
        refused("bare LF", format!("POST /smuggled HTTP/1.1\nHost: {h}\nContent-Length: 5\n\nhello"), 400, By::Herald),
        refused("one bare LF", format!("GET /smuggled HTTP/1.1\r\nHost: {h}\nX-Hidden: 1\r\n\r\n"), 400, By::Herald),
        refused("Connection names Content-Length", format!("POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: 5\r\nConnection: Content-Length\r\n\r\nhello"), 400, By::Herald),
        refused("Connection names Host", format!("GET / HTTP/1.1\r\nHost: {h}\r\nConnection: close, Host\r\n\r\n"), 400, By::Herald),
        refused("Connection names X-Forwarded-For", format!("GET / HTTP/1.1\r\nHost: {h}\r\nConnection: X-Forwarded-For\r\n\r\n"), 400, By::Herald),
        refused("ten Connection options", format!("GET / HTTP/1.1\r\nHost: {h}\r\nConnection: a, b, c, d, e, f, g, h, i, j\r\n\r\n"), 400, By::Herald),
        refused("lowercase method", format!("get /smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n"), 400, By::Herald),
        refused("two spaces in the request line", format!("GET  /smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n"), 400, By::Herald),
        refused("asterisk target for GET", format!("GET * HTTP/1.1\r\nHost: {h}\r\n\r\n"), 400, By::Herald),
        refused("HTTP/1.0 with TE", format!("POST / HTTP/1.0\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400, By::Pingora),
        refused("two Hosts", format!("GET /smuggled HTTP/1.1\r\nHost: {h}\r\nHost: other.example\r\n\r\n"), 400, By::Pingora),
        refused("absolute URI for another host", format!("GET http://other.example/smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n"), 400, By::Pingora),
        refused("NUL in a value", format!("GET /smuggled HTTP/1.1\r\nHost: {h}\r\nX-A: a\0b\r\n\r\n"), 400, By::Pingora),
    ]
}

struct Node {
    emperor: Emperor,
    edge: u16,
    backend: u16,
    metrics: u16,
    herald: Herald,
    edge_log: PathBuf,
    backend_log: PathBuf,
    record: PathBuf,
    _dir: tempfile::TempDir,
}

/// An emperor where `record.example` exists but is not running (running: the demo app's
/// sites), and edge + backend in one herald with JSON access logs.
fn start_node(running: &[&str], limits: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let emperor = Emperor::start(root, running, &[]);
    let app = root.join("recording_app.py");
    fs::write(&app, RECORDING_APP).unwrap();
    let record = root.join("record.jsonl");
    emperor.add_site(
        SITE,
        &emperor.vassal(&app, &format!("env = RECORD_FILE={}\n", record.display())),
    );
    let (edge, backend, metrics) = (free_port(), free_port(), free_port());
    let (edge_log, backend_log) = (root.join("edge.log"), root.join("backend.log"));
    let yaml = format!(
        "{}  access_log:\n    path: {}\n    format: json\n  limits:\n{limits}edge:\n  listen: ['127.0.0.1:{edge}']\n  backends: ['127.0.0.1:{backend}']\n  access_log:\n    path: {}\n    format: json\n  limits:\n{limits}",
        emperor.backend_yaml(backend, metrics, ""),
        backend_log.display(),
        edge_log.display(),
    );
    let herald = Herald::start(root, "node", &yaml, &[edge, backend]);
    Node {
        emperor,
        edge,
        backend,
        metrics,
        herald,
        edge_log,
        backend_log,
        record,
        _dir: dir,
    }
}

/// Reads one response (its header, and a Content-Length body) from a connection that stays open.
fn read_one_response(stream: &mut TcpStream) -> (u16, String) {
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed mid-header");
        data.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&data).into_owned();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("a Content-Length answer");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn smuggling_payloads_never_reach_the_app() {
    let node = start_node(&[], "    keepalive_timeout: 30s\n");
    let payloads = refused_payloads();

    // Refused on both roles, with a page, the connection closed; nothing reaches the backend
    // from the edge, and no app is started.
    for (port, log) in [
        (node.edge, &node.edge_log),
        (node.backend, &node.backend_log),
    ] {
        for payload in &payloads {
            let resp = send_raw_until_closed(port, payload.raw.as_bytes());
            assert_eq!(
                resp.status,
                payload.status,
                "{} on port {port}: {}",
                payload.name,
                resp.text()
            );
            if payload.by == By::Herald {
                assert_eq!(resp.header("connection"), Some("close"), "{}", payload.name);
                assert!(resp.text().contains("<h1>"), "{}: a page", payload.name);
            }
        }
        let expected: Vec<u64> = payloads
            .iter()
            .filter(|p| p.by == By::Herald)
            .map(|p| u64::from(p.status))
            .collect();
        assert_eq!(
            logged_statuses(log, expected.len()),
            expected,
            "one access log line per refusal, in order, and nothing else"
        );
    }
    for (class, range) in [("4xx", 400..500), ("5xx", 500..600)] {
        let refused = payloads
            .iter()
            .filter(|p| p.by == By::Herald && range.contains(&p.status))
            .count() as f64;
        for role in ["edge", "backend"] {
            assert_eq!(
                metric(
                    node.metrics,
                    "herald_requests_total",
                    &[("role", role), ("code", class)]
                ),
                refused,
                "{role}: every refusal counted in {class}"
            );
        }
    }
    assert!(
        !node.emperor.enabled(SITE).exists(),
        "no refusal started the app"
    );
    assert!(!node.record.exists(), "no refusal reached the app");
    assert_eq!(
        metric(node.metrics, "herald_app_starts_total", &[("result", "ok")]),
        0.0
    );
    assert!(
        !node.herald.log().contains("Fail to early filter"),
        "refusals stay out of the error log"
    );

    // What is served reaches the app exactly as the client meant it.
    let h = SITE;
    let smuggled = format!("GET /smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n");
    let mut expected = Vec::new();
    let served = |raw: String| send_raw_until_closed(node.edge, raw.as_bytes());

    // A request in a body is a body.
    let resp = served(format!(
        "GET /a HTTP/1.1\r\nHost: {h}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{smuggled}",
        smuggled.len()
    ));
    assert_eq!(resp.status, 200, "{}", resp.text());
    expected.push(seen("GET", "/a", &smuggled));

    // A request after a body is the next request on the connection, answered in its turn
    // (pipelining), as every hop agrees where the body ends.
    let pipelined = format!("GET /next HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n");
    let resp = served(format!(
        "POST /b HTTP/1.1\r\nHost: {h}\r\nContent-Length: 5\r\n\r\nhello{pipelined}"
    ));
    assert_eq!(resp.status, 200);
    assert!(
        resp.text().contains("HTTP/1.1 200"),
        "two answers: {}",
        resp.text()
    );
    expected.push(seen("POST", "/b", "hello"));
    expected.push(seen("GET", "/next", ""));

    // A chunked body is read whole by the backend: the app gets it with its length, and what
    // follows the last chunk is the next request, not part of this one.
    let resp = served(format!(
        "POST /chunked HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n{pipelined}"
    ));
    assert_eq!(resp.status, 200);
    assert!(
        resp.text().contains("\"content_length\": \"5\""),
        "{}",
        resp.text()
    );
    assert!(
        resp.text().contains("HTTP/1.1 200"),
        "two answers: {}",
        resp.text()
    );
    expected.push(seen("POST", "/chunked", "hello"));
    expected.push(seen("GET", "/next", ""));
    // A chunk size that is not hex ends the request with 400; nothing reaches the app.
    let resp = served(format!(
        "POST /bad-chunk HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    ));
    assert_eq!(resp.status, 400, "{}", resp.text());

    // HTTP/1.0 closes after its answer, whatever keepalive_timeout says.
    let resp = served(format!(
        "POST /c HTTP/1.0\r\nHost: {h}\r\nContent-Length: 5\r\n\r\nhello"
    ));
    assert_eq!(resp.header("connection"), Some("close"));
    expected.push(seen("POST", "/c", "hello"));
    let resp = served(format!("GET /d HTTP/1.0\r\nHost: {h}\r\n\r\n"));
    assert_eq!(resp.header("connection"), Some("close"));
    expected.push(seen("GET", "/d", ""));

    // Odd but unambiguous: leading zeros and spaces around a length, a header value that
    // looks like framing, bytes above 0x7f in a value.
    let resp = served(format!(
        "POST /e HTTP/1.1\r\nHost: {h}\r\nContent-Length:  0005 \r\nConnection: close\r\n\r\nhello"
    ));
    assert_eq!(resp.status, 200);
    expected.push(seen("POST", "/e", "hello"));
    let resp = served(format!(
        "GET /f HTTP/1.1\r\nHost: {h}\r\nX-Note: Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(resp.status, 200);
    expected.push(seen("GET", "/f", ""));
    let mut raw =
        format!("GET /g HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\nX-Bytes: ").into_bytes();
    raw.extend_from_slice(b"\xff\xfe\r\n\r\n");
    assert_eq!(send_raw_until_closed(node.edge, &raw).status, 200);
    expected.push(seen("GET", "/g", ""));

    // Keep-alive still works, and a WebSocket handshake passes the checks (this app
    // declines it and answers 200).
    let stream = TcpStream::connect(("127.0.0.1", node.edge)).unwrap();
    for (path, extra) in [
        ("/ws", "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"),
        ("/h1", ""),
        ("/h2", ""),
    ] {
        let mut stream = if path == "/ws" {
            TcpStream::connect(("127.0.0.1", node.edge)).unwrap()
        } else {
            stream.try_clone().unwrap()
        };
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: {h}\r\n{extra}\r\n").as_bytes())
            .unwrap();
        let (status, body) = read_one_response(&mut stream);
        assert_eq!(status, 200, "{path}: {body}");
        expected.push(seen("GET", path, ""));
    }
    stream.shutdown(std::net::Shutdown::Both).unwrap();

    // A last request: whatever was smuggled before it would be in the record by now.
    assert_eq!(get(node.edge, SITE, "/sentinel").status, 200);
    expected.push(seen("GET", "/sentinel", ""));
    let record = recorded(&node.record);
    assert!(
        record.iter().all(|s| s.path != "/smuggled"),
        "a smuggled request reached the app: {record:?}"
    );
    assert_eq!(record, expected, "the app saw exactly the requests sent");
}

#[test]
fn oversized_headers_get_414_or_431_and_the_largest_allowed_reach_the_app() {
    let node = start_node(&["big.example"], "");
    let request = |target: &str, fields: &[String]| {
        let mut raw =
            format!("GET {target} HTTP/1.1\r\nHost: big.example\r\nConnection: close\r\n");
        for field in fields {
            raw.push_str(field);
            raw.push_str("\r\n");
        }
        raw.push_str("\r\n");
        raw
    };
    let field = |i: usize, len: usize| format!("X-Big{i}: {}", "v".repeat(len));
    for port in [node.edge, node.backend] {
        // The request line fits in one 8k buffer, else 414.
        let long_target = format!("/{}", "p".repeat(8200));
        let resp = send_raw_until_closed(port, request(&long_target, &[]).as_bytes());
        assert_eq!(resp.status, 414, "{}", resp.text());
        assert!(resp.text().contains("URI Too Long"));
        // Each field fits in 8k, else 431.
        let resp = send_raw_until_closed(port, request("/", &[field(0, 8200)]).as_bytes());
        assert_eq!(resp.status, 431, "{}", resp.text());
        assert!(resp
            .text()
            .contains("Clearing this site's cookies may help"));
        // All of it fits in 32k, else 431.
        let fields: Vec<String> = (0..5).map(|i| field(i, 7000)).collect();
        assert_eq!(
            send_raw_until_closed(port, request("/", &fields).as_bytes()).status,
            431
        );

        // Just under 32k reaches the app whole (uWSGI's buffer-size is raised to match).
        let fields: Vec<String> = (0..4).map(|i| field(i, 7900)).collect();
        let raw = request("/?q=1", &fields);
        assert!(raw.len() > 31_000 && raw.len() < 32 << 10, "{}", raw.len());
        let resp = send_raw_until_closed(port, raw.as_bytes());
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(
            resp.json()["environ"]["HTTP_X_BIG3"]
                .as_str()
                .unwrap()
                .len(),
            7900
        );
        // As do 250 fields (uWSGI's max-vars is raised to match too); Pingora refuses
        // more than 256 itself.
        let fields: Vec<String> = (0..250).map(|i| format!("X-F{i}: {i}")).collect();
        let resp = send_raw_until_closed(port, request("/", &fields).as_bytes());
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["environ"]["HTTP_X_F249"], "249");
        let fields: Vec<String> = (0..300).map(|i| format!("X-F{i}: {i}")).collect();
        assert_eq!(
            send_raw_until_closed(port, request("/", &fields).as_bytes()).status,
            400
        );

        // Two megabytes of header: Pingora gives up at 1 MB. Herald stays up.
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let huge = request("/", &[field(0, 2 << 20)]);
        let _ = stream.write_all(huge.as_bytes());
        drop(stream);
        assert_eq!(
            get(port, "big.example", "/hello").status,
            200,
            "still serving"
        );
    }
    let statuses = logged_statuses(&node.edge_log, 6);
    assert_eq!(&statuses[..6], &[414, 431, 431, 200, 200, 200]);
}
