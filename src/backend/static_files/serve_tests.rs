//! `serve` end to end: a real Pingora HTTP/1.1 session over an in-memory connection, the
//! request as bytes in, the answer as bytes out.

use super::*;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MTIME: u64 = 1_700_000_000;
const DATE: &str = "Tue, 14 Nov 2023 22:13:20 GMT";

struct Site {
    _root: tempfile::TempDir,
    maps: Vec<Mapping>,
    dir: PathBuf,
    owner: u32,
}

fn site() -> Site {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("static");
    std::fs::create_dir_all(dir.join("css")).unwrap();
    std::fs::create_dir_all(root.path().join("private")).unwrap();
    put(&dir.join("css/site.css"), b"body { color: red }\n");
    put(&dir.join("digits.txt"), b"0123456789");
    put(&dir.join("README"), b"no extension");
    put(
        &root.path().join("private/settings.py"),
        b"SECRET_KEY = 'x'\n",
    );
    let owner = std::fs::metadata(&dir).unwrap().uid();
    Site {
        maps: vec![Mapping {
            url: "/static/".into(),
            dir: dir.clone(),
        }],
        _root: root,
        dir,
        owner,
    }
}

fn put(path: &Path, content: &[u8]) {
    std::fs::write(path, content).unwrap();
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(UNIX_EPOCH + Duration::from_secs(MTIME))
        .unwrap();
}

#[derive(Debug)]
struct Answer {
    served: Served,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `head` (request line and headers, without the blank line) for a site owned by
/// `owner` and reads the whole answer.
async fn ask_as(site: &Site, owner: u32, head: &str) -> Answer {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let mut session = Session::new_h1(Box::new(server));
    let (mut from_server, mut to_server) = tokio::io::split(client);
    to_server
        .write_all(format!("{head}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(session.read_request().await.unwrap());
    let reader = tokio::spawn(async move {
        let mut raw = Vec::new();
        from_server.read_to_end(&mut raw).await.unwrap();
        raw
    });
    let target = session.req_header().raw_path().to_vec();
    let found = find(&site.maps, &target).expect("a static target");
    let extra = [(header::STRICT_TRANSPORT_SECURITY, "max-age=60".to_owned())];
    let served = serve(&mut session, &found, owner, &extra).await.unwrap();
    drop(session);
    drop(to_server);
    let raw = reader.await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |at| at + 4);
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    Answer {
        served,
        status,
        headers,
        body: raw[split..].to_vec(),
    }
}

async fn ask(site: &Site, head: &str) -> Answer {
    ask_as(site, site.owner, head).await
}

fn get(path: &str, headers: &[&str]) -> String {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: a.example");
    for line in headers {
        head.push_str("\r\n");
        head.push_str(line);
    }
    head
}

#[tokio::test]
async fn a_file_is_sent_with_nginx_s_headers() {
    let site = site();
    let answer = ask(&site, &get("/static/css/site.css", &[])).await;
    assert_eq!(answer.served, Served::Sent);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "body { color: red }\n");
    assert_eq!(answer.header("content-type"), Some("text/css"));
    assert_eq!(answer.header("content-length"), Some("20"));
    assert_eq!(answer.header("last-modified"), Some(DATE));
    assert_eq!(answer.header("etag"), Some("\"6553f100-14\""));
    assert_eq!(answer.header("accept-ranges"), Some("bytes"));
    assert_eq!(
        answer.header("strict-transport-security"),
        Some("max-age=60")
    );
    assert_eq!(answer.header("vary"), None);
    assert_eq!(answer.header("content-encoding"), None);
    assert_eq!(answer.header("connection"), Some("keep-alive"));

    let unknown = ask(&site, &get("/static/README", &[])).await;
    assert_eq!(
        unknown.header("content-type"),
        Some("application/octet-stream")
    );

    let absolute = ask(
        &site,
        "GET http://a.example/static/digits.txt?v=2 HTTP/1.1\r\nHost: a.example",
    )
    .await;
    assert_eq!(
        (absolute.status, absolute.text().as_str()),
        (200, "0123456789")
    );

    let old = ask(&site, "GET /static/digits.txt HTTP/1.0").await;
    assert_eq!((old.status, old.text().as_str()), (200, "0123456789"));
    assert_eq!(old.header("content-length"), Some("10"));
}

#[tokio::test]
async fn head_sends_the_same_headers_and_no_body() {
    let site = site();
    let answer = ask(&site, "HEAD /static/digits.txt HTTP/1.1\r\nHost: a.example").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-length"), Some("10"));
    assert_eq!(answer.header("content-type"), Some("text/plain"));
    assert_eq!(answer.header("etag"), Some("\"6553f100-a\""));
    assert!(answer.body.is_empty());
    let ranged = ask(
        &site,
        "HEAD /static/digits.txt HTTP/1.1\r\nHost: a.example\r\nRange: bytes=2-4",
    )
    .await;
    assert_eq!(ranged.status, 206);
    assert_eq!(ranged.header("content-range"), Some("bytes 2-4/10"));
    assert!(ranged.body.is_empty());
}

#[tokio::test]
async fn what_is_not_served_is_left_to_the_caller_s_404() {
    let site = site();
    symlink("/etc/passwd", site.dir.join("passwd")).unwrap();
    symlink("../private/settings.py", site.dir.join("settings.py")).unwrap();
    symlink("../private", site.dir.join("private")).unwrap();
    std::fs::set_permissions(
        site.dir.join("digits.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    for (path, owner) in [
        ("/static/nope.css", site.owner),
        ("/static/css", site.owner),
        ("/static/css/", site.owner),
        ("/static/", site.owner),
        ("/static/passwd", site.owner),
        ("/static/settings.py", site.owner),
        ("/static/private/settings.py", site.owner),
        ("/static/../private/settings.py", site.owner),
        ("/static/%2e%2e/private/settings.py", site.owner),
        ("/static/css%2f..%2f..%2fprivate/settings.py", site.owner),
        ("/static/digits.txt", site.owner.wrapping_add(12345)),
    ] {
        let answer = ask_as(&site, owner, &get(path, &[])).await;
        assert!(
            matches!(answer.served, Served::NotFound(_)),
            "{path}: {answer:?}"
        );
        assert!(answer.status == 0 && answer.body.is_empty(), "{path}");
    }
}

#[tokio::test]
async fn conditional_requests_get_304_or_412() {
    let site = site();
    let etag = "\"6553f100-a\"";
    for conditions in [
        vec![format!("If-None-Match: {etag}")],
        vec![format!("If-None-Match: \"x\", W/{etag}")],
        vec!["If-None-Match: *".to_owned()],
        vec![format!("If-Modified-Since: {DATE}")],
        vec![
            format!("If-None-Match: {etag}"),
            format!("If-Modified-Since: {DATE}"),
        ],
    ] {
        let lines: Vec<&str> = conditions.iter().map(String::as_str).collect();
        let answer = ask(&site, &get("/static/digits.txt", &lines)).await;
        assert_eq!(answer.status, 304, "{conditions:?}");
        assert!(answer.body.is_empty());
        assert_eq!(answer.header("etag"), Some(etag));
        assert_eq!(answer.header("last-modified"), Some(DATE));
        assert_eq!(
            answer.header("strict-transport-security"),
            Some("max-age=60")
        );
        for gone in ["content-type", "content-length", "accept-ranges"] {
            assert_eq!(answer.header(gone), None, "{gone}");
        }
    }
    for condition in [
        "If-None-Match: \"6553f100-b\"",
        "If-Modified-Since: Tue, 14 Nov 2023 22:13:21 GMT",
        "If-Modified-Since: Tue, 14 Nov 2023 22:13:19 GMT",
    ] {
        let answer = ask(&site, &get("/static/digits.txt", &[condition])).await;
        assert_eq!(answer.status, 200, "{condition}");
        assert_eq!(answer.text(), "0123456789");
    }
    for condition in [
        "If-Match: \"other\"",
        "If-Unmodified-Since: Tue, 14 Nov 2023 22:13:19 GMT",
    ] {
        let answer = ask(&site, &get("/static/digits.txt", &[condition])).await;
        assert_eq!(answer.status, 412, "{condition}");
        assert!(answer.text().contains("412 Precondition Failed"));
        assert_eq!(answer.header("etag"), None);
        assert_eq!(answer.header("connection"), Some("keep-alive"));
    }
}

#[tokio::test]
async fn ranges_get_206_multipart_or_416() {
    let site = site();
    let one = ask(&site, &get("/static/digits.txt", &["Range: bytes=0-0"])).await;
    assert_eq!(one.status, 206);
    assert_eq!(one.text(), "0");
    assert_eq!(one.header("content-range"), Some("bytes 0-0/10"));
    assert_eq!(one.header("content-length"), Some("1"));
    assert_eq!(one.header("content-type"), Some("text/plain"));
    assert_eq!(one.header("accept-ranges"), None);
    assert_eq!(one.header("etag"), Some("\"6553f100-a\""));

    let suffix = ask(&site, &get("/static/digits.txt", &["Range: bytes=-3"])).await;
    assert_eq!((suffix.status, suffix.text().as_str()), (206, "789"));

    let several = ask(&site, &get("/static/digits.txt", &["Range: bytes=0-1,3-4"])).await;
    assert_eq!(several.status, 206);
    let content_type = several.header("content-type").unwrap();
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap();
    assert_eq!(boundary.len(), 20);
    assert_eq!(
        several.text(),
        format!(
            "\r\n--{boundary}\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n\r\n01\
             \r\n--{boundary}\r\nContent-Type: text/plain\r\nContent-Range: bytes 3-4/10\r\n\r\n34\
             \r\n--{boundary}--\r\n"
        )
    );
    assert_eq!(
        several.header("content-length"),
        Some(several.body.len().to_string().as_str())
    );

    for range in ["Range: bytes=10-", "Range: bytes=5-2", "Range: bytes=-0"] {
        let answer = ask(&site, &get("/static/digits.txt", &[range])).await;
        assert_eq!(answer.status, 416, "{range}");
        assert_eq!(answer.header("content-range"), Some("bytes */10"));
        assert!(answer.text().contains("416 Range Not Satisfiable"));
    }

    for (lines, why) in [
        (vec!["Range: items=0-1"], "not a bytes range"),
        (
            vec!["Range: bytes=0-5,3-8"],
            "longer in total than the file",
        ),
        (
            vec!["Range: bytes=0-1", "If-Range: \"other\""],
            "another ETag",
        ),
        (
            vec![
                "Range: bytes=0-1",
                "If-Range: Tue, 14 Nov 2023 22:13:21 GMT",
            ],
            "another date",
        ),
    ] {
        let answer = ask(&site, &get("/static/digits.txt", &lines)).await;
        assert_eq!(answer.status, 200, "{why}");
        assert_eq!(answer.text(), "0123456789", "{why}");
    }
    for if_range in ["If-Range: \"6553f100-a\"", &format!("If-Range: {DATE}")] {
        let answer = ask(
            &site,
            &get("/static/digits.txt", &["Range: bytes=1-2", if_range]),
        )
        .await;
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (206, "12"),
            "{if_range}"
        );
    }
}

#[tokio::test]
async fn the_gz_sibling_answers_clients_that_take_gzip() {
    let site = site();
    let compressed = b"\x1f\x8b pretend this is gzip";
    put(&site.dir.join("css/site.css.gz"), compressed);
    let gzip = ask(
        &site,
        &get(
            "/static/css/site.css",
            &["Accept-Encoding: gzip, deflate, br"],
        ),
    )
    .await;
    assert_eq!(gzip.status, 200);
    assert_eq!(gzip.body, compressed);
    assert_eq!(gzip.header("content-encoding"), Some("gzip"));
    assert_eq!(gzip.header("vary"), Some("Accept-Encoding"));
    assert_eq!(gzip.header("content-type"), Some("text/css"));
    assert_eq!(
        gzip.header("content-length"),
        Some(compressed.len().to_string().as_str())
    );
    assert_eq!(
        gzip.header("etag"),
        Some(format!("\"6553f100-{:x}\"", compressed.len()).as_str())
    );

    let http10 = ask(
        &site,
        "GET /static/css/site.css HTTP/1.0\r\nAccept-Encoding: gzip",
    )
    .await;
    assert_eq!(http10.header("content-encoding"), None);
    assert_eq!(http10.text(), "body { color: red }\n");

    let plain = ask(
        &site,
        &get("/static/css/site.css", &["Accept-Encoding: gzip;q=0"]),
    )
    .await;
    assert_eq!(plain.text(), "body { color: red }\n");
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"));

    let ranged = ask(
        &site,
        &get(
            "/static/css/site.css",
            &["Accept-Encoding: gzip", "Range: bytes=0-1"],
        ),
    )
    .await;
    assert_eq!(ranged.status, 206);
    assert_eq!(ranged.body, &compressed[..2]);
    assert_eq!(ranged.header("content-encoding"), Some("gzip"));

    let not_modified = ask(
        &site,
        &get(
            "/static/css/site.css",
            &[
                "Accept-Encoding: gzip",
                &format!("If-None-Match: \"6553f100-{:x}\"", compressed.len()),
            ],
        ),
    )
    .await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("content-encoding"), None);
    assert_eq!(not_modified.header("vary"), Some("Accept-Encoding"));
}

#[tokio::test]
async fn large_files_arrive_whole_across_chunks() {
    let site = site();
    let content: Vec<u8> = (0..body::CHUNK * 3 + 17)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    put(&site.dir.join("big.bin"), &content);
    let whole = ask(&site, &get("/static/big.bin", &[])).await;
    assert_eq!(whole.status, 200);
    assert!(whole.body == content, "the whole file, byte for byte");

    let (a, b) = (body::CHUNK - 5, body::CHUNK * 2 + 9);
    let range = format!("Range: bytes=3-{a},{b}-");
    let parts = ask(&site, &get("/static/big.bin", &[&range])).await;
    assert_eq!(parts.status, 206);
    let boundary = parts
        .header("content-type")
        .unwrap()
        .rsplit('=')
        .next()
        .unwrap()
        .to_owned();
    let size = content.len();
    let mut expected = Vec::new();
    for (start, end) in [(3, a + 1), (b, size)] {
        expected.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {start}-{}/{size}\r\n\r\n",
                end - 1
            )
            .as_bytes(),
        );
        expected.extend_from_slice(&content[start..end]);
    }
    expected.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    assert!(parts.body == expected, "both parts, byte for byte");
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// The body is streamed: serving a 64 MiB file to a client that reads it through a 64 KiB
/// pipe raises the process's resident memory by a small fraction of the file.
#[tokio::test]
async fn a_large_file_is_served_in_bounded_memory() {
    const SIZE: usize = 64 << 20;
    let site = site();
    {
        use std::io::Write;
        let mut file = std::fs::File::create(site.dir.join("huge.bin")).unwrap();
        let block = vec![0x5a; 1 << 20];
        for _ in 0..SIZE >> 20 {
            file.write_all(&block).unwrap();
        }
    }
    let (client, server) = tokio::io::duplex(64 * 1024);
    let mut session = Session::new_h1(Box::new(server));
    let (mut from_server, mut to_server) = tokio::io::split(client);
    to_server
        .write_all(b"GET /static/huge.bin HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .unwrap();
    assert!(session.read_request().await.unwrap());
    let before = resident_bytes();
    let reader = tokio::spawn(async move {
        let (mut total, mut peak, mut next_sample) = (0usize, 0u64, 0usize);
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let n = from_server.read(&mut buffer).await.unwrap();
            if n == 0 {
                return (total, peak);
            }
            total += n;
            if total >= next_sample {
                peak = peak.max(resident_bytes());
                next_sample = total + (1 << 20);
            }
        }
    });
    let found = find(&site.maps, b"/static/huge.bin").unwrap();
    assert_eq!(
        serve(&mut session, &found, site.owner, &[]).await.unwrap(),
        Served::Sent
    );
    drop(session);
    let (received, peak) = reader.await.unwrap();
    assert!(received > SIZE, "header and the whole body: {received}");
    let rise = peak.saturating_sub(before);
    assert!(
        rise < 16 << 20,
        "resident memory rose by {} MiB while sending 64 MiB",
        rise >> 20
    );
}
