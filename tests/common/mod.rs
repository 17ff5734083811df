//! Real processes for integration tests: a uWSGI emperor with vassals, herald processes, and
//! nginx, all on 127.0.0.1 with free ports, each stopped (with its whole process group) when
//! its guard drops, also when a test panics.
#![allow(dead_code)] // each test file uses its own part of the harness

pub mod websocket;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

pub fn herald_bin() -> &'static str {
    env!("CARGO_BIN_EXE_herald")
}

/// A port that was free a moment ago (the OS picks it; it is released for the caller), and
/// never handed out before in this test process, so parallel tests cannot be given the same one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind an ephemeral port")
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A process's CPU time so far (user + system), in clock ticks.
/// An app that fails to import, as a site owner's broken code does.
pub fn broken_app(root: &Path) -> PathBuf {
    let app = root.join("broken_app.py");
    fs::write(
        &app,
        "raise RuntimeError('this app is broken on purpose')\n",
    )
    .unwrap();
    app
}

/// `openssl ARGS`, the arguments split at spaces (the test's paths have none).
pub fn openssl(args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One handshake by tests/tls_client.py; its JSON answer.
pub fn tls_client(port: u16, args: &[&str]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(repo_path("tests/tls_client.py"))
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("run tests/tls_client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "tls_client {args:?}: {e}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A self-signed ECDSA P-256 pair for `names`, valid `days`, made by the openssl command line.
pub fn self_signed(crt: &Path, key: &Path, names: &[&str], days: u32) {
    let san: Vec<String> = names.iter().map(|name| format!("DNS:{name}")).collect();
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-subj", &format!("/CN={}", names[0])])
        .args(["-days", &days.to_string()])
        .args(["-addext", &format!("subjectAltName={}", san.join(","))])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(crt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Polls `ready` every few milliseconds until it holds or `deadline` passes.
pub fn wait_until(what: &str, deadline: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    while !ready() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A child process in its own process group, stopped with SIGINT (then SIGKILL) on drop.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command, log: &Path) -> Process {
        let out = fs::File::create(log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early ({status}):\n{}", self.name, self.log());
        }
    }

    pub fn signal_group(&self, signal: i32) {
        // SAFETY: kill(2) on a process group we created; no memory is involved.
        unsafe {
            libc::kill(-self.pid(), signal);
        }
    }

    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            self.signal_group(libc::SIGKILL); // leftovers of the group, if any
            return;
        }
        self.signal_group(libc::SIGINT);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.signal_group(libc::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.name, self.log());
        }
        self.stop();
    }
}

/// A small Python server for a test: `script` gets a file path as `sys.argv[1]` and writes
/// the port it listens on there (atomically) once it is ready.
pub fn python_service(dir: &Path, name: &str, script: &str) -> (u16, Process) {
    python_program(dir, name, &["-c".as_ref(), script.as_ref()])
}

/// `python3 ARGS... PORT_FILE`: a Python server that writes its port to the file given last.
pub fn python_program(dir: &Path, name: &str, args: &[&std::ffi::OsStr]) -> (u16, Process) {
    let port_file = dir.join(format!("{name}.port"));
    let mut process = Process::spawn(
        name,
        Command::new("python3").args(args).arg(&port_file),
        &dir.join(format!("{name}.log")),
    );
    wait_until(name, STARTUP_DEADLINE, || {
        process.assert_running();
        port_file.exists()
    });
    let port = fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (port, process)
}

/// A uWSGI emperor watching `vassals`, with the demo app as every site.
pub struct Emperor {
    pub sites_dir: PathBuf,
    pub vassals_dir: PathBuf,
    pub sockets_dir: PathBuf,
    process: Process,
}

impl Emperor {
    /// Starts an emperor; `running` sites are enabled (vassal in place) and waited for,
    /// `available` sites only exist in `sites_dir`.
    pub fn start(root: &Path, running: &[&str], available: &[&str]) -> Emperor {
        Emperor::start_with(root, running, available, &["--emperor-freq", "1"])
    }

    /// `start`, with `args` for the emperor instead of a 1 s scan period.
    pub fn start_with(root: &Path, running: &[&str], available: &[&str], args: &[&str]) -> Emperor {
        let sites_dir = root.join("sites");
        let vassals_dir = root.join("vassals");
        let sockets_dir = root.join("sockets");
        for dir in [&sites_dir, &vassals_dir, &sockets_dir] {
            fs::create_dir_all(dir).unwrap();
        }
        let vassal = demo_vassal(&sockets_dir, &repo_path("demo/app.py"));
        for site in running.iter().chain(available) {
            fs::write(sites_dir.join(format!("{site}.ini")), &vassal).unwrap();
        }
        for site in running {
            fs::write(vassals_dir.join(format!("{site}.ini")), &vassal).unwrap();
        }
        let mut process = Process::spawn(
            "uwsgi emperor",
            Command::new("uwsgi")
                .arg("--emperor")
                .arg(&vassals_dir)
                .args(args)
                .arg("--die-on-term")
                .current_dir(root),
            &root.join("emperor.log"),
        );
        for site in running {
            let socket = sockets_dir.join(format!("{site}.sock"));
            wait_until(&format!("uWSGI socket of {site}"), STARTUP_DEADLINE, || {
                process.assert_running();
                UnixStream::connect(&socket).is_ok()
            });
        }
        Emperor {
            sites_dir,
            vassals_dir,
            sockets_dir,
            process,
        }
    }

    /// Makes `site` available with its own vassal text (for broken or slow apps).
    pub fn add_site(&self, site: &str, vassal: &str) {
        fs::write(self.sites_dir.join(format!("{site}.ini")), vassal).unwrap();
    }

    /// The demo vassal running `app` instead of the demo app, with `extra` lines in [uwsgi].
    pub fn vassal(&self, app: &Path, extra: &str) -> String {
        demo_vassal(&self.sockets_dir, app).replace("[uwsgi]\n", &format!("[uwsgi]\n{extra}"))
    }

    pub fn enabled(&self, site: &str) -> PathBuf {
        self.vassals_dir.join(format!("{site}.ini"))
    }

    /// How many times the emperor has spawned `site`'s vassal so far.
    pub fn spawn_count(&self, site: &str) -> usize {
        self.log()
            .matches(&format!("[emperor] vassal {site}.ini has been spawned"))
            .count()
    }

    /// A herald config with a backend role over this emperor's sites, trusting the edges the
    /// tests run on 127.0.0.1; `extra` lines go under `backend:`.
    pub fn backend_yaml(&self, port: u16, metrics: u16, extra: &str) -> String {
        self.backend_yaml_trusting(port, metrics, extra, &["127.0.0.1/32"])
    }

    /// `backend_yaml`, trusting `proxies` (none: Herald's default, nobody).
    pub fn backend_yaml_trusting(
        &self,
        port: u16,
        metrics: u16,
        extra: &str,
        proxies: &[&str],
    ) -> String {
        let trusted = if proxies.is_empty() {
            String::new()
        } else {
            format!("  trusted_proxies: {proxies:?}\n")
        };
        format!(
            "metrics:\n  listen: 127.0.0.1:{metrics}\nbackend:\n  listen: ['127.0.0.1:{port}']\n  sites_dir: {}\n  vassals_dir: {}\n  socket_path: {}\n{trusted}{extra}",
            self.sites_dir.display(),
            self.vassals_dir.display(),
            self.socket_template()
        )
    }

    pub fn socket_template(&self) -> String {
        format!("{}/{{host}}.sock", self.sockets_dir.display())
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

fn demo_vassal(sockets_dir: &Path, app: &Path) -> String {
    fs::read_to_string(repo_path("demo/vassal.ini.template"))
        .unwrap()
        .replace("@SOCKET_DIR@", sockets_dir.to_str().unwrap())
        .replace("@APP@", app.to_str().unwrap())
        // The tests' apps run as the tests' user (tests/isolation.rs gives apps users of their
        // own); Herald runs as that user too. By name: uWSGI takes `gid = 0` for no group.
        .replace("@UID@", &current_user())
        .replace("@HERALD_GID@", &current_group())
        .replace("@GID@", &current_group())
}

pub fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

pub fn current_gid() -> u32 {
    // SAFETY: getgid has no preconditions and cannot fail.
    unsafe { libc::getgid() }
}

/// The tests' user's name (its uid when it has none).
pub fn current_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(current_uid()))
        .ok()
        .flatten()
        .map_or_else(|| current_uid().to_string(), |u| u.name)
}

/// The tests' group's name (its gid when it has none).
pub fn current_group() -> String {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(current_gid()))
        .ok()
        .flatten()
        .map_or_else(|| current_gid().to_string(), |g| g.name)
}

/// A herald process running `yaml`, started once all of `ports` accept connections.
pub struct Herald {
    pub config: PathBuf,
    process: Process,
}

impl Herald {
    pub fn start(root: &Path, name: &str, yaml: &str, ports: &[u16]) -> Herald {
        let addrs: Vec<std::net::SocketAddr> =
            ports.iter().map(|p| ([127, 0, 0, 1], *p).into()).collect();
        Herald::start_with(root, name, yaml, &[], &addrs)
    }

    /// `prefix` runs herald through another command (`ip netns exec NS`); it is started once
    /// every address in `wait_for` accepts connections.
    pub fn start_with(
        root: &Path,
        name: &str,
        yaml: &str,
        prefix: &[&str],
        wait_for: &[std::net::SocketAddr],
    ) -> Herald {
        let config = root.join(format!("{name}.yaml"));
        let yaml = format!(
            "{yaml}\n{}",
            if yaml.contains("server:") {
                String::new()
            } else {
                format!(
                    "server:\n  pid_file: {0}/{name}.pid\n  upgrade_sock: {0}/{name}.upgrade.sock\n  grace_period_seconds: 0\n",
                    root.display()
                )
            }
        );
        fs::write(&config, yaml).unwrap();
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(herald_bin());
                command
            }
            None => Command::new(herald_bin()),
        };
        command
            .arg("-c")
            .arg(&config)
            .env("RUST_LOG", "herald=debug,warn");
        let mut process = Process::spawn(name, &mut command, &root.join(format!("{name}.log")));
        for addr in wait_for {
            wait_until(
                &format!("{name} listening on {addr}"),
                STARTUP_DEADLINE,
                || {
                    process.assert_running();
                    TcpStream::connect(addr).is_ok()
                },
            );
        }
        Herald { config, process }
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// Kills the process (and its group) with SIGKILL, as the OOM killer would.
    pub fn kill_hard(&mut self) {
        self.process.signal_group(libc::SIGKILL);
        let _ = self.process.child.wait();
    }
}

/// Runs herald to completion with `args` (for `-t`, `--help`).
pub fn run_herald(args: &[&str]) -> Output {
    Command::new(herald_bin())
        .args(args)
        .output()
        .expect("run herald")
}

/// nginx from Debian, run in the foreground from a config written for the test.
pub struct Nginx {
    process: Process,
}

impl Nginx {
    /// `http_block` goes inside `http {}`; the caller waits for its ports.
    pub fn start(root: &Path, http_block: &str, ports: &[u16]) -> Nginx {
        let dir = root.join("nginx");
        fs::create_dir_all(dir.join("tmp")).unwrap();
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n  \
             fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n{http_block}\n}}\n"
        );
        fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut process = Process::spawn(
            "nginx",
            Command::new("nginx")
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(dir.join("nginx.conf")),
            &dir.join("stderr.log"),
        );
        for port in ports {
            wait_until(
                &format!("nginx listening on {port}"),
                STARTUP_DEADLINE,
                || {
                    process.assert_running();
                    TcpStream::connect(("127.0.0.1", *port)).is_ok()
                },
            );
        }
        Nginx { process }
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The demo app's JSON answer.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): status {} body {}",
                self.status,
                self.text()
            )
        })
    }
}

/// A TCP connection to 127.0.0.1:`port` from the local address `from` (any of 127.0.0.0/8).
pub fn connect_from(from: [u8; 4], port: u16) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&std::net::SocketAddr::from((from, 0)).into())
        .unwrap();
    socket
        .connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    socket.into()
}

/// Sends `raw` as is on a new connection and reads the answer until the server closes.
pub fn send_raw(port: u16, raw: &[u8]) -> Response {
    try_send_raw(port, raw).unwrap_or_else(|e| panic!("request to port {port}: {e}"))
}

/// `send_raw`, with connection and read failures returned rather than fatal (for load).
pub fn try_send_raw(port: u16, raw: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(raw)?;
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer) {
        if answer.is_empty() {
            return Err(e);
        }
    }
    if !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        return Err(std::io::Error::other("incomplete answer"));
    }
    Ok(parse_response(&answer))
}

/// `send_raw`, where the server must close the connection after its answer: the read ends with
/// EOF (or a reset, for bytes it never read) within `IO_TIMEOUT`, never with the read timeout.
pub fn send_raw_until_closed(port: u16, raw: &[u8]) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // The server may answer and close before it has read everything (a refused request).
    let _ = stream.write_all(raw);
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer) {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "port {port}: the connection was left open after {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert!(
        answer.windows(4).any(|w| w == b"\r\n\r\n"),
        "port {port}: no answer before the connection closed: {:?}",
        String::from_utf8_lossy(&answer)
    );
    parse_response(&answer)
}

/// `GET path` with the given Host, `Connection: close`.
pub fn get(port: u16, host: &str, path: &str) -> Response {
    get_with(port, host, path, &[])
}

pub fn get_with(port: u16, host: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut raw = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    send_raw(port, raw.as_bytes())
}

fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 || data.len() < eol + 2 + size {
            return out;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[(eol + 4 + size).min(data.len())..];
    }
}

/// Reads one sample from a Prometheus text exposition, e.g.
/// `metric(port, "herald_requests_total", &[("role","edge"),("code","2xx")])`.
pub fn metric(port: u16, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = get(port, "metrics", "/metrics").text();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            let matches = series_name == name
                && labels.iter().all(|(k, v)| {
                    series_labels
                        .split(',')
                        .any(|pair| pair == format!("{k}=\"{v}\""))
                });
            matches.then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}
