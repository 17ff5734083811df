//! The edge across real hosts: network namespaces joined by a bridge, one edge host and
//! backend hosts each with its own uWSGI emperor, 300 sites. Under a bounded load, a backend
//! host is cut off and brought back, then a fourth is added through the backends file.
//! Every address is inside namespaces this test creates (10.213.0.0/24); nothing leaves them.

mod common;

use common::*;
use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SITES: usize = 300;
const EDGE_PORT: u16 = 8000;
const EDGE_METRICS: u16 = 9100;
const BACKEND_PORT: u16 = 8080;
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
const HEALTH_FAILURES: u32 = 2;
const HEALTH_SUCCESSES: u32 = 2;

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces `<prefix>sw` (a bridge) and one per host, each host with `eth0` on the bridge.
/// Dropping it deletes them all.
struct Network {
    prefix: String,
    hosts: Vec<String>,
}

impl Network {
    /// `None` when namespaces cannot be made here and this is not CI (which must fail instead).
    fn new(hosts: &[(&str, &str)]) -> Option<Network> {
        let prefix = format!("hrd{}", std::process::id() % 100_000);
        let probe = Command::new("ip")
            .args(["netns", "add", &format!("{prefix}sw")])
            .output();
        let made = probe.as_ref().is_ok_and(|out| out.status.success());
        if !made {
            let why = match probe {
                Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            let message =
                format!("cannot create network namespaces (needs root and iproute2): {why}");
            assert!(std::env::var_os("CI").is_none(), "{message}");
            eprintln!("SKIPPED: {message}");
            return None;
        }
        let mut network = Network {
            prefix: prefix.clone(),
            hosts: Vec::new(),
        };
        let switch = network.ns("sw");
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for (host, addr) in hosts {
            let ns = network.ns(host);
            ip(&["netns", "add", &ns]);
            network.hosts.push(host.to_string());
            let port = format!("v{host}");
            ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        Some(network)
    }

    fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    fn exec_prefix(&self, host: &str) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(host)]
    }

    /// Cuts the host's cable at the switch (or plugs it back).
    fn set_link(&self, host: &str, up: bool) {
        ip(&[
            "-n",
            &self.ns("sw"),
            "link",
            "set",
            &format!("v{host}"),
            if up { "up" } else { "down" },
        ]);
    }

    /// Moves the calling thread (and threads it starts later) into the host's namespace.
    fn enter(&self, host: &str) {
        let file = fs::File::open(format!("/var/run/netns/{}", self.ns(host))).expect("open netns");
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) on a namespace file we hold open; it only changes this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for host in self.hosts.iter().map(String::as_str).chain(["sw"]) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(host)])
                .output();
        }
    }
}

fn site(i: usize) -> String {
    format!("user{i}.example.org")
}

/// A backend host: its emperor runs one app for every site (each site's socket is a link
/// to it) that answers with the host's name, and herald's backend role in front. The app is
/// an `http-socket` one, and the sites' vassal files say nothing: `app_protocol: http`.
struct BackendHost {
    _emperor: Process,
    _herald: Herald,
}

fn start_backend_host(network: &Network, root: &Path, name: &str, addr: &str) -> BackendHost {
    let dir = root.join(name);
    let (sites, vassals, sockets) = (dir.join("sites"), dir.join("vassals"), dir.join("sockets"));
    for d in [&sites, &vassals, &sockets] {
        fs::create_dir_all(d).unwrap();
    }
    let shared = sockets.join("shared.sock");
    fs::write(
        vassals.join("shared.ini"),
        format!(
            "[uwsgi]\nplugins = python3\nhttp-socket = {}\nwsgi-file = {}\nenv = HERALD_SITE={name}\nmaster = true\nprocesses = 4\nlisten = 1024\nvacuum = true\nneed-app = true\n",
            shared.display(),
            repo_path("demo/app.py").display()
        ),
    )
    .unwrap();
    for i in 0..SITES {
        fs::write(sites.join(format!("{}.ini", site(i))), "[uwsgi]\n").unwrap();
        std::os::unix::fs::symlink(&shared, sockets.join(format!("{}.sock", site(i)))).unwrap();
    }
    let prefix = network.exec_prefix(name);
    let mut emperor = Process::spawn(
        &format!("{name} emperor"),
        Command::new(&prefix[0])
            .args(&prefix[1..])
            .args(["uwsgi", "--emperor"])
            .arg(&vassals)
            .args(["--emperor-freq", "1", "--die-on-term"]),
        &dir.join("emperor.log"),
    );
    wait_until(&format!("{name}'s app"), STARTUP_DEADLINE, || {
        emperor.assert_running();
        std::os::unix::net::UnixStream::connect(&shared).is_ok()
    });
    let yaml = format!(
        "backend:\n  listen: ['{addr}:{BACKEND_PORT}']\n  sites_dir: {}\n  vassals_dir: {}\n  socket_path: {}/{{host}}.sock\n  trusted_proxies: [10.213.0.0/24]\n  idle_timeout: 0\n  app_protocol: http\n",
        sites.display(),
        vassals.display(),
        sockets.display()
    );
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let listen: SocketAddr = format!("{addr}:{BACKEND_PORT}").parse().unwrap();
    let herald = Herald::start_with(&dir, "herald", &yaml, &prefix, &[listen]);
    BackendHost {
        _emperor: emperor,
        _herald: herald,
    }
}

/// Which backend host served each site now (through the edge); panics on any failure.
fn placement() -> Vec<String> {
    (0..SITES)
        .map(|i| {
            let resp = get(EDGE_PORT, &site(i), "/");
            assert_eq!(resp.status, 200, "{}: {}", site(i), resp.text());
            resp.json()["site"].as_str().unwrap().to_owned()
        })
        .collect()
}

struct Outcome {
    started: Instant,
    site: usize,
    /// The backend host that answered, or what went wrong.
    backend: Result<String, String>,
}

/// A bounded load over all sites from a few threads, recording every request's outcome.
struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    const THREADS: usize = 4;
    const MAX_REQUESTS_PER_THREAD: usize = 20_000;
    const MAX_DURATION: Duration = Duration::from_secs(120);

    fn start() -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..Self::THREADS)
            .map(|t| {
                let (stop, outcomes) = (stop.clone(), outcomes.clone());
                std::thread::spawn(move || {
                    let began = Instant::now();
                    for n in 0..Self::MAX_REQUESTS_PER_THREAD {
                        if stop.load(Ordering::SeqCst) || began.elapsed() > Self::MAX_DURATION {
                            break;
                        }
                        let i = (n * Self::THREADS + t) * 7 % SITES;
                        let started = Instant::now();
                        let raw = format!(
                            "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                            site(i)
                        );
                        let backend = match try_send_raw(EDGE_PORT, raw.as_bytes()) {
                            Ok(r) if r.status == 200 => {
                                Ok(r.json()["site"].as_str().unwrap_or_default().to_owned())
                            }
                            Ok(r) => Err(format!("status {}: {}", r.status, r.text())),
                            Err(e) => Err(e.to_string()),
                        };
                        outcomes.lock().unwrap().push(Outcome {
                            started,
                            site: i,
                            backend,
                        });
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Load {
            stop,
            outcomes,
            threads,
        }
    }

    /// (when it started, site, what went wrong) of every failed request so far.
    fn failures(&self) -> Vec<(Instant, usize, String)> {
        self.outcomes
            .lock()
            .unwrap()
            .iter()
            .filter_map(|o| o.backend.clone().err().map(|e| (o.started, o.site, e)))
            .collect()
    }

    fn count(&self) -> usize {
        self.outcomes.lock().unwrap().len()
    }

    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().unwrap();
        }
        Arc::try_unwrap(self.outcomes)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

#[test]
fn backends_fail_over_come_back_and_join_while_sites_keep_their_place() {
    let hosts = [
        ("edge", "10.213.0.1"),
        ("b1", "10.213.0.11"),
        ("b2", "10.213.0.12"),
        ("b3", "10.213.0.13"),
        ("b4", "10.213.0.14"),
    ];
    let Some(network) = Network::new(&hosts) else {
        return;
    };
    network.enter("edge");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let _backends: Vec<BackendHost> = hosts[1..]
        .iter()
        .map(|(name, addr)| start_backend_host(&network, root, name, addr))
        .collect();
    let backends_file = root.join("backends");
    fs::write(
        &backends_file,
        "# three backend hosts\n10.213.0.11:8080\n10.213.0.12:8080\n10.213.0.13:8080\n",
    )
    .unwrap();
    let yaml = format!(
        "metrics:\n  listen: 127.0.0.1:{EDGE_METRICS}\nedge:\n  listen: ['127.0.0.1:{EDGE_PORT}']\n  backends_file: {}\n  limits:\n    proxy_connect_timeout: 500ms\n    proxy_read_timeout: 3s\n  health_check:\n    kind: http\n    interval: 1s\n    timeout: 500ms\n    failures: {HEALTH_FAILURES}\n    successes: {HEALTH_SUCCESSES}\n",
        backends_file.display()
    );
    let prefix = network.exec_prefix("edge");
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let edge = Herald::start_with(
        root,
        "edge",
        &yaml,
        &prefix,
        &[([127, 0, 0, 1], EDGE_PORT).into()],
    );

    let original = placement();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for backend in &original {
        *counts.entry(backend).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|n| *n >= 60), "{counts:?}");

    let load = Load::start();
    wait_until("the load to get going", Duration::from_secs(10), || {
        load.count() > 50
    });

    // Cut b2 off. Within interval × failures + 1 s its sites are served elsewhere, and
    // every other site stays where it was.
    let backend_up = |addr: &str| metric(EDGE_METRICS, "herald_backend_up", &[("backend", addr)]);
    let cutting = Instant::now();
    network.set_link("b2", false);
    let detection = HEALTH_INTERVAL * HEALTH_FAILURES + Duration::from_secs(1);
    wait_until("b2 to be marked down", detection, || {
        backend_up("10.213.0.12:8080") == 0.0
    });
    let marked_down = Instant::now();
    eprintln!("b2 marked down {:?} after the cut", marked_down - cutting);
    let during = placement();
    for (i, (before, now)) in original.iter().zip(&during).enumerate() {
        if before == "b2" {
            assert_ne!(now, "b2", "{}", site(i));
        } else {
            assert_eq!(
                before,
                now,
                "{} moved although its backend is fine",
                site(i)
            );
        }
    }
    assert!(
        edge.log().contains("backend 10.213.0.12:8080 is down"),
        "{}",
        edge.log()
    );

    // Bring it back: its sites return.
    network.set_link("b2", true);
    wait_until(
        "b2's sites to return",
        HEALTH_INTERVAL * (HEALTH_SUCCESSES + 2) + Duration::from_secs(2),
        || placement() == original,
    );
    assert_eq!(backend_up("10.213.0.12:8080"), 1.0);

    // Only requests in flight on b2 failed: sites of b2, sent to it before the edge marked
    // it down (on connections opened before the cut; a new connection fails over at once).
    let failures = load.failures();
    for (started, i, error) in &failures {
        assert_eq!(
            original[*i],
            "b2",
            "{}, a site of {}, failed: {error}",
            site(*i),
            original[*i]
        );
        assert!(
            *started <= marked_down,
            "{} failed although sent after b2 was marked down: {error}",
            site(*i)
        );
    }
    eprintln!(
        "{} requests so far; {} failed, all in flight on b2",
        load.count(),
        failures.len()
    );

    // A fourth backend joins through the backends file: about a quarter of the sites move,
    // all of them to it, and no request fails.
    let joined = Instant::now();
    let temporary = root.join("backends.new");
    fs::write(
        &temporary,
        "10.213.0.11:8080\n10.213.0.12:8080\n10.213.0.13:8080\n10.213.0.14:8080\n",
    )
    .unwrap();
    fs::rename(&temporary, &backends_file).unwrap();
    wait_until("b4 to get sites", Duration::from_secs(10), || {
        get(EDGE_PORT, &site(0), "/").status == 200 && placement().iter().any(|b| b == "b4")
    });
    let after = placement();
    let moved: Vec<usize> = (0..SITES).filter(|i| after[*i] != original[*i]).collect();
    for i in &moved {
        assert_eq!(
            after[*i],
            "b4",
            "{} moved to {} instead of the new backend",
            site(*i),
            after[*i]
        );
    }
    let share = moved.len() as f64 / SITES as f64;
    eprintln!(
        "adding b4 moved {} of {SITES} sites ({:.1}%)",
        moved.len(),
        share * 100.0
    );
    assert!(
        (0.20..=0.30).contains(&share),
        "{:.1}% of sites moved; expected 25% ± 5",
        share * 100.0
    );
    assert!(
        edge.log()
            .contains("backend 10.213.0.14:8080 (weight 1) joined the list"),
        "{}",
        edge.log()
    );

    let outcomes = load.finish();
    let after_join: Vec<&Outcome> = outcomes.iter().filter(|o| o.started >= joined).collect();
    assert!(
        after_join.len() > 20,
        "the load kept running ({} requests)",
        after_join.len()
    );
    let failed: Vec<&String> = after_join
        .iter()
        .filter_map(|o| o.backend.as_ref().err())
        .collect();
    assert!(
        failed.is_empty(),
        "requests failed while b4 joined: {failed:?}"
    );
}
