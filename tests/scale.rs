//! Costs that must grow with the sites that have traffic, not with the sites that exist: a
//! backend with 20,000 sites serves the first request to each for about what a later one
//! costs (measured as herald's own CPU time per request over each pass, a loose ratio, never
//! a time).

mod common;

use common::*;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

const SITES: usize = 20_000;
const CLIENTS: usize = 4;

fn site(i: usize) -> String {
    format!("s{i}.example")
}

/// One request to each site, over `CLIENTS` kept-alive connections; every answer must be the
/// app's.
fn pass(port: u16) {
    let threads: Vec<_> = (0..CLIENTS)
        .map(|client| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                for i in (client..SITES).step_by(CLIENTS) {
                    let request = format!("GET /hello HTTP/1.1\r\nHost: {}\r\n\r\n", site(i));
                    stream.write_all(request.as_bytes()).unwrap();
                    let mut status = String::new();
                    reader.read_line(&mut status).unwrap();
                    assert!(status.starts_with("HTTP/1.1 200"), "{}: {status}", site(i));
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).unwrap();
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(value) =
                            line.to_ascii_lowercase().strip_prefix("content-length:")
                        {
                            length = value.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

/// One uWSGI app (four processes) answering for every site: each site's socket is a link to
/// it, and each site's vassal file names no socket, so `app_protocol` decides.
fn one_app_for_all(root: &Path) -> (Process, std::path::PathBuf, std::path::PathBuf) {
    let (sites, sockets) = (root.join("sites"), root.join("sockets"));
    for dir in [&sites, &sockets, &root.join("vassals")] {
        fs::create_dir_all(dir).unwrap();
    }
    let shared = root.join("shared.sock");
    let mut app = Process::spawn(
        "shared app",
        Command::new("uwsgi")
            .args([
                "--plugins",
                "python3",
                "--master",
                "--processes",
                "4",
                "--need-app",
            ])
            .arg("--socket")
            .arg(&shared)
            .arg("--wsgi-file")
            .arg(repo_path("demo/app.py"))
            .args(["--listen", "1024", "--die-on-term"]),
        &root.join("app.log"),
    );
    for i in 0..SITES {
        fs::write(sites.join(format!("{}.ini", site(i))), "[uwsgi]\n").unwrap();
        std::os::unix::fs::symlink(&shared, sockets.join(format!("{}.sock", site(i)))).unwrap();
    }
    wait_until("the shared app", STARTUP_DEADLINE, || {
        app.assert_running();
        std::os::unix::net::UnixStream::connect(&shared).is_ok()
    });
    (app, sites, sockets)
}

#[test]
fn the_first_request_to_each_of_20000_sites_costs_about_what_a_later_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (_app, sites, sockets) = one_app_for_all(root);
    let (port, metrics) = (free_port(), free_port());
    let yaml = format!(
        "metrics:\n  listen: 127.0.0.1:{metrics}\nbackend:\n  listen: ['127.0.0.1:{port}']\n  sites_dir: {}\n  vassals_dir: {}\n  socket_path: {}/{{host}}.sock\n  idle_timeout: 0\n  limits:\n    keepalive_timeout: 300s\n",
        sites.display(),
        root.join("vassals").display(),
        sockets.display()
    );
    let herald = Herald::start(root, "backend", &yaml, &[port]);
    let pid = herald.pid();
    let mut per_pass = Vec::new();
    for _ in 0..2 {
        let before = cpu_ticks(pid);
        pass(port);
        per_pass.push(cpu_ticks(pid) - before);
    }
    let (first, later) = (per_pass[0] as f64, per_pass[1] as f64);
    eprintln!("herald CPU over {SITES} requests: first pass {first} ticks, second {later}");
    assert!(
        first < later * 1.5 + 50.0,
        "the first request to each site cost {first} ticks in all, a later one {later}"
    );
}
