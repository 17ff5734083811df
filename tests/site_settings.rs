//! Per-site settings (`sites_dir/<site>.yaml`) on a real backend over a real uWSGI emperor:
//! static files answered as nginx answers them (nginx with `alias` is run beside Herald as the
//! oracle) without waking the app, never a byte from outside the mapped directory, password
//! protection with bcrypt hashes made by `htpasswd -B`, disabled sites, each site's own logs,
//! and settings that change while Herald runs. Files and directories are made by each test.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long a settings change may take to be in force (Herald looks once a second).
const SETTINGS_DEADLINE: Duration = Duration::from_secs(2);

struct Site {
    emperor: Emperor,
    port: u16,
    metrics: u16,
    herald: Herald,
    dir: tempfile::TempDir,
}

impl Site {
    /// A backend whose sites exist but are not running; `settings` per site as YAML (with
    /// `@ROOT@` for the test's directory), `extra` lines under `backend:`.
    fn start(sites: &[(&str, &str)], extra: &str, prepare: impl FnOnce(&Path)) -> Site {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let names: Vec<&str> = sites.iter().map(|(name, _)| *name).collect();
        let emperor = Emperor::start(dir.path(), &[], &names);
        for (name, settings) in sites {
            write_settings(&emperor, dir.path(), name, settings);
        }
        let (port, metrics) = (free_port(), free_port());
        let extra = extra.replace("@ROOT@", dir.path().to_str().unwrap());
        let yaml = emperor.backend_yaml(port, metrics, &extra);
        let herald = Herald::start(dir.path(), "backend", &yaml, &[port, metrics]);
        Site {
            emperor,
            port,
            metrics,
            herald,
            dir,
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn get(&self, site: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        get_with(self.port, site, path, headers)
    }

    fn starts(&self) -> f64 {
        ["ok", "timeout", "failed", "refused"]
            .iter()
            .map(|result| {
                metric(
                    self.metrics,
                    "herald_app_starts_total",
                    &[("result", result)],
                )
            })
            .sum()
    }
}

fn write_settings(emperor: &Emperor, root: &Path, site: &str, settings: &str) {
    let text = settings.replace("@ROOT@", root.to_str().unwrap());
    // As a control plane would: a temp file, then a rename.
    let temp = emperor.sites_dir.join(format!(".{site}.yaml.tmp"));
    fs::write(&temp, text).unwrap();
    fs::rename(&temp, emperor.sites_dir.join(format!("{site}.yaml"))).unwrap();
}

/// Bytes that differ from offset to offset, so a wrong range cannot pass for the right one.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// The files both servers serve: text, binary, precompressed, nested, odd names.
fn static_tree(root: &Path) -> PathBuf {
    let dir = root.join("static");
    fs::create_dir_all(dir.join("css/deep")).unwrap();
    fs::write(
        dir.join("css/site.css"),
        "body { color: #333 }\n".repeat(200),
    )
    .unwrap();
    fs::write(dir.join("css/deep/x.css"), "p{}\n").unwrap();
    fs::write(dir.join("app.js"), "console.log('hi');\n".repeat(100)).unwrap();
    let gz = Command::new("gzip")
        .args(["-k", "-9"])
        .arg(dir.join("app.js"))
        .status()
        .unwrap();
    assert!(gz.success());
    fs::write(dir.join("logo.png"), pattern(3000)).unwrap();
    fs::write(dir.join("page.html"), "<p>static</p>\n").unwrap();
    fs::write(dir.join("data.json"), "{\"a\": 1}\n").unwrap();
    fs::write(dir.join("font.woff2"), pattern(100)).unwrap();
    fs::write(dir.join("noext"), pattern(10)).unwrap();
    fs::write(dir.join("big.bin"), pattern(10 << 20)).unwrap();
    fs::write(dir.join("with space.txt"), "spaced\n").unwrap();
    fs::write(dir.join("empty.txt"), "").unwrap();
    dir
}

/// What must match nginx: the status, these headers, and the body (multipart boundaries
/// and error pages aside).
fn comparable(resp: &Response) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let names = [
        "content-type",
        "content-length",
        "last-modified",
        "etag",
        "accept-ranges",
        "content-range",
        "content-encoding",
    ];
    let mut headers: Vec<(String, String)> = names
        .iter()
        .filter_map(|name| {
            resp.header(name)
                .map(|value| (name.to_string(), value.to_owned()))
        })
        .collect();
    let mut body = resp.body.clone();
    if let Some(boundary) = resp
        .header("content-type")
        .and_then(|t| t.split_once("boundary="))
        .map(|(_, b)| b.to_owned())
    {
        for (name, value) in &mut headers {
            if name == "content-type" {
                *value = value.replace(&boundary, "BOUNDARY");
            }
        }
        body = String::from_utf8_lossy(&body)
            .replace(&boundary, "BOUNDARY")
            .into_bytes();
    }
    if resp.status >= 400 {
        // Each server's own error page: the status is what must match.
        return (resp.status, Vec::new(), Vec::new());
    }
    if resp.header("content-encoding").is_some() {
        // Herald also answers ranges of a precompressed file (checked below); nginx 1.22 does not.
        headers.retain(|(name, _)| name != "accept-ranges");
    }
    for (name, value) in &mut headers {
        // Debian's mime.types still says application/javascript; RFC 9239 made it text/.
        if name == "content-type" && value == "application/javascript" {
            *value = "text/javascript".into();
        }
    }
    (resp.status, headers, body)
}

#[test]
fn static_files_are_answered_as_nginx_answers_them_and_never_wake_the_app() {
    let site = Site::start(
        &[(
            "shop.example",
            // The longer prefix maps to the parent: only longest-prefix-wins finds its files.
            "static:\n  - url: /static/\n    dir: @ROOT@/static\n  - url: /static/css/deep/\n    dir: @ROOT@/static/css\n",
        )],
        "",
        |root| {
            static_tree(root);
        },
    );
    let root = site.root().to_owned();
    let nginx_port = free_port();
    let _nginx = Nginx::start(
        &root,
        &format!(
            "  include /etc/nginx/mime.types;\n  default_type application/octet-stream;\n  server {{\n    listen 127.0.0.1:{nginx_port};\n    server_name shop.example;\n    location /static/ {{ alias {0}/static/; gzip_static on; }}\n    location /static/css/deep/ {{ alias {0}/static/css/; gzip_static on; }}\n  }}\n",
            root.display()
        ),
        &[nginx_port],
    );
    let etag = site
        .get("shop.example", "/static/css/site.css", &[])
        .header("etag")
        .expect("an ETag")
        .to_owned();
    let last_modified = site
        .get("shop.example", "/static/css/site.css", &[])
        .header("last-modified")
        .expect("a Last-Modified")
        .to_owned();
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("/static/css/site.css", vec![]),
        ("/static/css/deep/site.css", vec![]),
        ("/static/css/deep/x.css", vec![]),
        ("/static/app.js", vec![]),
        ("/static/app.js", vec![("Accept-Encoding", "gzip, deflate")]),
        ("/static/app.js", vec![("Accept-Encoding", "gzip;q=0")]),
        ("/static/logo.png", vec![]),
        ("/static/page.html", vec![]),
        ("/static/data.json", vec![]),
        ("/static/font.woff2", vec![]),
        ("/static/noext", vec![]),
        ("/static/with%20space.txt", vec![]),
        ("/static/empty.txt", vec![]),
        ("/static/%63ss/x.css", vec![]),
        ("/static/css/site.css?v=3", vec![]),
        ("/static//app.js", vec![]),
        ("/static/css/site.css", vec![("If-None-Match", &etag)]),
        (
            "/static/css/site.css",
            vec![("If-None-Match", "\"other\", *")],
        ),
        ("/static/css/site.css", vec![("If-None-Match", "\"other\"")]),
        (
            "/static/css/site.css",
            vec![("If-Modified-Since", &last_modified)],
        ),
        (
            "/static/css/site.css",
            vec![("If-Modified-Since", "Thu, 01 Jan 2015 00:00:00 GMT")],
        ),
        ("/static/logo.png", vec![("Range", "bytes=0-99")]),
        ("/static/logo.png", vec![("Range", "bytes=100-")]),
        ("/static/logo.png", vec![("Range", "bytes=-50")]),
        ("/static/logo.png", vec![("Range", "bytes=0-0")]),
        ("/static/logo.png", vec![("Range", "bytes=2990-5000")]),
        ("/static/logo.png", vec![("Range", "bytes=5000-6000")]),
        ("/static/logo.png", vec![("Range", "bytes=5-2")]),
        ("/static/logo.png", vec![("Range", "pages=1-2")]),
        ("/static/logo.png", vec![("Range", "bytes=0-9,20-29")]),
        (
            "/static/logo.png",
            vec![("Range", "bytes=0-9"), ("If-Range", &etag)],
        ),
        (
            "/static/big.bin",
            vec![("Range", "bytes=10000000-10000099")],
        ),
        ("/static/big.bin", vec![]),
    ];
    for (path, headers) in &cases {
        let herald = site.get("shop.example", path, headers);
        let nginx = get_with(nginx_port, "shop.example", path, headers);
        assert_eq!(
            comparable(&herald),
            comparable(&nginx),
            "GET {path} with {headers:?}"
        );
        let head = |port| {
            let mut raw =
                format!("HEAD {path} HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n");
            for (name, value) in headers {
                raw.push_str(&format!("{name}: {value}\r\n"));
            }
            raw.push_str("\r\n");
            send_raw(port, raw.as_bytes())
        };
        assert_eq!(
            comparable(&head(site.port)),
            comparable(&head(nginx_port)),
            "HEAD {path} with {headers:?}"
        );
    }
    // A range of the precompressed file is a range of the gzip bytes, and caches are told
    // the answer depends on Accept-Encoding.
    let gz = fs::read(root.join("static/app.js.gz")).unwrap();
    let part = site.get(
        "shop.example",
        "/static/app.js",
        &[("Accept-Encoding", "gzip"), ("Range", "bytes=0-9")],
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-encoding"), Some("gzip"));
    assert_eq!(part.body, gz[..10]);
    for encoding in ["gzip", "identity"] {
        let resp = site.get(
            "shop.example",
            "/static/app.js",
            &[("Accept-Encoding", encoding)],
        );
        assert_eq!(resp.header("vary"), Some("Accept-Encoding"), "{encoding}");
    }
    // Missing files and directories are 404 pages, not the app's answer.
    for path in [
        "/static/missing.css",
        "/static/css/",
        "/static/css",
        "/static/",
    ] {
        let resp = site.get("shop.example", path, &[]);
        assert_eq!(resp.status, 404, "{path}: {}", resp.text());
        assert!(
            resp.text().contains("There is no file at this address"),
            "{path}"
        );
    }
    assert!(
        !site.emperor.enabled("shop.example").exists(),
        "no vassal written"
    );
    assert_eq!(site.starts(), 0.0, "no start");
    // Other paths and other methods still reach the app (and start it).
    let post = send_raw(
        site.port,
        b"POST /static/css/site.css HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    );
    assert_eq!(post.status, 200, "{}", post.text());
    assert_eq!(post.json()["environ"]["REQUEST_METHOD"], "POST");
    assert_eq!(site.get("shop.example", "/hello", &[]).status, 200);
}

#[test]
fn static_requests_do_not_keep_an_idle_app_alive() {
    let site = Site::start(
        &[(
            "shop.example",
            "static:\n  - url: /static/\n    dir: @ROOT@/static\n",
        )],
        "  idle_timeout: 2s\n",
        |root| {
            static_tree(root);
        },
    );
    assert_eq!(site.get("shop.example", "/hello", &[]).status, 200);
    assert!(site.emperor.enabled("shop.example").exists(), "started");
    // From now on only its stylesheet is asked for: the app idles out all the same.
    wait_until("the idle app stopped", Duration::from_secs(15), || {
        assert_eq!(
            site.get("shop.example", "/static/page.html", &[]).status,
            200
        );
        !site.emperor.enabled("shop.example").exists()
    });
    assert_eq!(site.starts(), 1.0);
}

#[test]
fn nothing_outside_the_mapped_directory_is_ever_served() {
    let site = Site::start(
        &[(
            "shop.example",
            "static:\n  - url: /static/\n    dir: @ROOT@/static\n  - url: /linked/\n    dir: @ROOT@/linked\n",
        )],
        "",
        |root| {
            let dir = static_tree(root);
            fs::write(root.join("secret.txt"), "SECRET outside\n").unwrap();
            fs::create_dir_all(root.join("other-tenant")).unwrap();
            fs::write(root.join("other-tenant/key.txt"), "SECRET of another\n").unwrap();
            let link = |target: &Path, name: &str| {
                std::os::unix::fs::symlink(target, dir.join(name)).unwrap()
            };
            link(&root.join("secret.txt"), "up.txt");
            link(Path::new("../secret.txt"), "relative-up.txt");
            link(Path::new("/etc/passwd"), "passwd");
            link(&root.join("other-tenant"), "neighbour");
            link(Path::new("css/site.css"), "inside.css");
            // The mapped directory itself is a link: inside it, links still may not leave it.
            std::os::unix::fs::symlink(&dir, root.join("linked")).unwrap();
        },
    );
    let refused = [
        "/static/../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/%2E%2E/secret.txt",
        "/static/.%2e/secret.txt",
        "/static/%2e./secret.txt",
        "/static/..%2fsecret.txt",
        "/static/..%2Fsecret.txt",
        "/static/css%2f..%2f..%2fsecret.txt",
        "/static/..\\secret.txt",
        "/static/..%5csecret.txt",
        "/static/css/..%5c..%5csecret.txt",
        "/static/page.html%00.png",
        "/static/%c0%ae%c0%ae/secret.txt",
        "/static/%e0%80%ae%e0%80%ae/secret.txt",
        "/static/%ff/secret.txt",
        "/static/%zz",
        "/static/up.txt",
        "/static/relative-up.txt",
        "/static/passwd",
        "/static/neighbour/key.txt",
        "/static/css/../../secret.txt",
        "/static/./../secret.txt",
        "/linked/up.txt",
        "/linked/neighbour/key.txt",
        "/linked/../secret.txt",
    ];
    for path in refused {
        let resp = site.get("shop.example", path, &[]);
        assert_eq!(resp.status, 404, "{path}: {}", resp.text());
        assert!(!resp.text().contains("SECRET"), "{path}");
        assert!(!resp.text().contains("root:"), "{path}");
    }
    // A link that stays inside works, through a linked mapping too.
    for path in ["/static/inside.css", "/linked/css/site.css"] {
        let resp = site.get("shop.example", path, &[]);
        assert_eq!(resp.status, 200, "{path}");
        assert!(resp.text().starts_with("body { color"), "{path}");
    }
    assert_eq!(site.starts(), 0.0, "no traversal reached the app");
}

/// `htpasswd -B` lines for `users` (name, password).
fn htpasswd(users: &[(&str, &str)]) -> String {
    users
        .iter()
        .map(|(user, password)| {
            let out = Command::new("htpasswd")
                .args(["-nbB", "-C", "5", user, password])
                .output()
                .expect("run htpasswd (apache2-utils)");
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap().trim().to_owned() + "\n"
        })
        .collect()
}

fn basic(user: &str, password: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import base64,sys; print(base64.b64encode(sys.argv[1].encode()).decode())",
            &format!("{user}:{password}"),
        ])
        .output()
        .unwrap();
    format!("Basic {}", String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
fn a_password_protects_the_app_and_its_static_files() {
    let site = Site::start(
        &[
            (
                "private.example",
                "password:\n  realm: Staging area\n  users: @ROOT@/htpasswd\nstatic:\n  - url: /static/\n    dir: @ROOT@/static\n",
            ),
            ("public.example", ""),
        ],
        "",
        |root| {
            static_tree(root);
            fs::write(
                root.join("htpasswd"),
                htpasswd(&[("ann", "correct horse"), ("bob", "battery staple")]),
            )
            .unwrap();
        },
    );
    for path in ["/hello", "/static/page.html"] {
        let resp = site.get("private.example", path, &[]);
        assert_eq!(resp.status, 401, "{path}");
        assert_eq!(
            resp.header("www-authenticate"),
            Some("Basic realm=\"Staging area\", charset=\"UTF-8\"")
        );
        assert!(resp.text().contains("password-protected"));
        let wrong = basic("ann", "wrong");
        assert_eq!(
            site.get("private.example", path, &[("Authorization", &wrong)])
                .status,
            401
        );
    }
    let ann = basic("ann", "correct horse");
    let resp = site.get("private.example", "/hello", &[("Authorization", &ann)]);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = site.get(
        "private.example",
        "/static/page.html",
        &[("Authorization", &ann)],
    );
    assert_eq!(resp.text(), "<p>static</p>\n");
    let bob = basic("bob", "battery staple");
    assert_eq!(
        site.get(
            "private.example",
            "/static/page.html",
            &[("Authorization", &bob)]
        )
        .status,
        200
    );
    assert_eq!(
        site.get("public.example", "/hello", &[]).status,
        200,
        "others are open"
    );

    // A guesser: after 10 wrong passwords in a minute, 429 before any bcrypt, even with the
    // right one; another client is not affected.
    let guesser = [127, 0, 0, 3];
    let from = |client: [u8; 4], authorization: &str| {
        use std::io::{Read, Write};
        let mut stream = connect_from(client, site.port);
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        write!(
            stream,
            "GET /hello HTTP/1.1\r\nHost: private.example\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    for i in 0..10 {
        let answer = from(guesser, &basic("ann", &format!("guess {i}")));
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
    let answer = from(guesser, &ann);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after:"),
        "{answer}"
    );
    let answer = from([127, 0, 0, 4], &ann);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn a_disabled_site_gets_the_operators_page_and_no_start() {
    let site = Site::start(
        &[
            ("expired.example", "disabled: expired\n"),
            ("paused.example", "disabled: true\n"),
            ("odd.example", "disabled: maintenance\n"),
        ],
        "  error_pages: @ROOT@/pages\n",
        |root| {
            let pages = root.join("pages");
            fs::create_dir_all(&pages).unwrap();
            fs::write(
                pages.join("disabled-expired.html"),
                "<p>Renew your plan</p>\n",
            )
            .unwrap();
            fs::write(
                pages.join("disabled.html"),
                "<p>Disabled by its owner</p>\n",
            )
            .unwrap();
        },
    );
    let expect = [
        ("expired.example", "Renew your plan"),
        ("paused.example", "Disabled by its owner"),
        ("odd.example", "Disabled by its owner"),
    ];
    for (name, page) in expect {
        let resp = site.get(name, "/hello", &[]);
        assert_eq!(resp.status, 503, "{name}");
        assert!(resp.text().contains(page), "{name}: {}", resp.text());
        assert_eq!(resp.header("retry-after"), Some("600"), "{name}");
    }
    assert_eq!(site.starts(), 0.0);
}

#[test]
fn settings_change_while_herald_runs_and_a_bad_file_harms_only_its_site() {
    let site = Site::start(
        &[
            ("live.example", ""),
            ("fresh.example", ""),
            ("calm.example", ""),
        ],
        "",
        |root| {
            static_tree(root);
        },
    );
    let emperor = &site.emperor;
    let root = site.root().to_owned();
    assert_eq!(site.get("live.example", "/hello", &[]).status, 200);
    // A static mapping appears, then the site is disabled, then enabled again.
    write_settings(
        emperor,
        &root,
        "live.example",
        "static:\n  - url: /s/\n    dir: @ROOT@/static\n",
    );
    wait_until("the mapping in force", SETTINGS_DEADLINE, || {
        site.get("live.example", "/s/page.html", &[]).text() == "<p>static</p>\n"
    });
    write_settings(emperor, &root, "live.example", "disabled: true\n");
    wait_until("the site disabled", SETTINGS_DEADLINE, || {
        site.get("live.example", "/hello", &[]).status == 503
    });
    // A bad version: the last good settings stay in force, logged once, counted.
    let errors = || metric(site.metrics, "herald_site_settings_errors_total", &[]);
    write_settings(
        emperor,
        &root,
        "live.example",
        "disabled: true\nstatic: [oops\n",
    );
    // Settings are looked at when a request comes (a stat at most once a second per site).
    wait_until("the bad version read", SETTINGS_DEADLINE, || {
        assert_eq!(site.get("live.example", "/hello", &[]).status, 503);
        errors() == 1.0
    });
    for _ in 0..3 {
        assert_eq!(
            site.get("live.example", "/hello", &[]).status,
            503,
            "still disabled"
        );
    }
    assert_eq!(errors(), 1.0, "read once per version");
    let log = site.herald.log();
    assert_eq!(
        log.matches("site live.example: bad settings:").count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("live.example.yaml"),
        "the file is named: {log}"
    );
    assert!(
        log.contains("the site keeps its last good settings"),
        "{log}"
    );
    write_settings(emperor, &root, "live.example", "");
    wait_until("the site enabled again", SETTINGS_DEADLINE, || {
        site.get("live.example", "/hello", &[]).status == 200
    });
    // A site whose first settings are bad answers 503 (it may need a password); the others
    // are served.
    write_settings(emperor, &root, "fresh.example", "password: [\n");
    let resp = site.get("fresh.example", "/hello", &[]);
    assert_eq!(resp.status, 503);
    assert!(
        resp.text().contains("settings cannot be used"),
        "{}",
        resp.text()
    );
    assert_eq!(site.get("calm.example", "/hello", &[]).status, 200);
    // `herald -t` names the file and field, as a warning: a reload is not blocked.
    let out = Command::new(herald_bin())
        .args(["-t", "-c"])
        .arg(site.root().join("backend.yaml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("backend.sites_dir: warning:") && stderr.contains("fresh.example.yaml"),
        "{stderr}"
    );
}

#[test]
fn each_site_has_its_own_access_and_error_log() {
    let site = Site::start(
        &[("one.example", ""), ("two.example", "static:\n  - url: /s/\n    dir: @ROOT@/static\n")],
        "  access_log:\n    path: off\n    per_site: @ROOT@/logs/{host}/access.log\n  error_log:\n    per_site: @ROOT@/logs/{host}/error.log\n  limits:\n    client_max_body_size: 1k\n",
        |root| {
            static_tree(root);
            for name in ["one.example", "two.example"] {
                fs::create_dir_all(root.join("logs").join(name)).unwrap();
            }
        },
    );
    let logs = site.root().join("logs");
    let read = |path: &str| fs::read_to_string(logs.join(path)).unwrap_or_default();
    assert_eq!(site.get("one.example", "/hello?from=one", &[]).status, 200);
    assert_eq!(site.get("two.example", "/s/page.html", &[]).status, 200);
    wait_until("both access lines", SETTINGS_DEADLINE, || {
        read("one.example/access.log").contains("GET /hello?from=one HTTP/1.1\" 200")
            && read("two.example/access.log").contains("GET /s/page.html HTTP/1.1\" 200")
    });
    assert!(!read("one.example/access.log").contains("/s/page.html"));
    assert!(!read("two.example/access.log").contains("from=one"));
    // An upload refused for its size is in the site's error log, with the reason.
    let big = format!(
        "POST /upload HTTP/1.1\r\nHost: two.example\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n{}",
        "x".repeat(5000)
    );
    assert_eq!(send_raw_until_closed(site.port, big.as_bytes()).status, 413);
    wait_until("the error line", SETTINGS_DEADLINE, || {
        read("two.example/error.log").contains("[error] 413: a request body to /upload was larger than client_max_body_size (1024 bytes)")
    });
    assert_eq!(read("one.example/error.log"), "");
    // An app that cannot start: its owner reads why in the site's error log.
    let app = broken_app(site.root());
    fs::create_dir_all(logs.join("broken.example")).unwrap();
    site.emperor
        .add_site("broken.example", &site.emperor.vassal(&app, ""));
    assert_eq!(site.get("broken.example", "/", &[]).status, 502);
    wait_until(
        "the start failure in the site's log",
        SETTINGS_DEADLINE,
        || read("broken.example/error.log").contains("the app failed to start"),
    );
    // Rotation: moved away, then SIGUSR1, and the next lines go to a new file.
    fs::rename(
        logs.join("one.example/access.log"),
        logs.join("one.example/access.log.1"),
    )
    .unwrap();
    let status = Command::new("kill")
        .args(["-USR1", &site.herald.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until(
        "a new access log after SIGUSR1",
        SETTINGS_DEADLINE * 2,
        || {
            site.get("one.example", "/hello?after=rotation", &[]);
            read("one.example/access.log").contains("after=rotation")
        },
    );
    assert!(!read("one.example/access.log.1").contains("after=rotation"));
    // A site without a log directory: its lines are dropped and counted, nothing else.
    fs::remove_dir_all(logs.join("two.example")).unwrap();
    assert_eq!(site.get("two.example", "/s/page.html", &[]).status, 200);
    wait_until("the dropped line counted", SETTINGS_DEADLINE, || {
        metric(
            site.metrics,
            "herald_site_log_lines_dropped_total",
            &[("log", "access")],
        ) >= 1.0
    });
}
