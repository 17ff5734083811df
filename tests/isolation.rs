//! Tenants cannot reach each other, with real users made for the test (as root, as in CI;
//! elsewhere it says so and skips): two sites owned by two users, each app running as its
//! owner. Neither user can write the socket directory or Herald's runtime files; and when one
//! tenant's process listens where the other's app did, Herald answers 502 and never sends it a
//! byte of the request.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A system user made for the test, removed when dropped.
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

impl User {
    fn create(role: &str) -> User {
        let name = format!("hrld-{role}-{}", std::process::id());
        let made = Command::new("useradd")
            .args(["--system", "--no-create-home", "--user-group"])
            .args(["--shell", "/usr/sbin/nologin", &name])
            .status()
            .expect("run useradd");
        assert!(made.success(), "useradd {name}");
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, &name]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        User {
            uid: id("-u"),
            gid: id("-g"),
            name,
        }
    }

    /// Whether this user can create a file in `dir`.
    fn can_write_in(&self, dir: &Path) -> bool {
        let probe = dir.join(format!(".probe-{}", self.name));
        let status = Command::new("python3")
            .args(["-c", "import os, sys; os.setgid(int(sys.argv[1])); os.setgroups([]); os.setuid(int(sys.argv[2])); open(sys.argv[3], 'w')"])
            .args([self.gid.to_string(), self.uid.to_string()])
            .arg(&probe)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        let _ = fs::remove_file(&probe);
        status.success()
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// The demo vassal, with the app running as `user` and its socket the user's and root's
/// (the group Herald runs with here).
fn vassal_as(emperor: &Emperor, app: &Path, user: &User) -> String {
    emperor
        .vassal(app, "")
        .lines()
        .map(|line| {
            if line.starts_with("uid = ") {
                format!("uid = {}", user.name)
            } else if line.starts_with("gid = ") {
                format!("gid = {}", user.name)
            } else if line.starts_with("chown-socket = ") {
                format!("chown-socket = {}:root", user.name)
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A process of `user`'s listening at `socket` (bound as root, as any path can be for the
/// test; listening after it became `user`, so that the socket is theirs), recording what it
/// receives to `record`.
fn impostor(root: &Path, socket: &Path, user: &User, record: &Path) -> Process {
    const SCRIPT: &str = r#"
import os, socket, sys
path, gid, uid, record, ready = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
if os.path.exists(path):
    os.unlink(path)
s = socket.socket(socket.AF_UNIX)
s.bind(path)
os.chmod(path, 0o666)
# Opened while still root: the user cannot write in the test's directory.
received = open(record, "ab", buffering=0)
ready = open(ready, "w")
os.setgid(gid); os.setgroups([]); os.setuid(uid)
s.listen(16)
ready.write("listening")
ready.close()
while True:
    conn, _ = s.accept()
    conn.settimeout(2)
    try:
        data = conn.recv(65536)
    except OSError:
        data = b""
    received.write(data)
    conn.close()
"#;
    let ready = root.join("impostor.ready");
    let mut process = Process::spawn(
        "impostor",
        Command::new("python3")
            .args(["-c", SCRIPT])
            .arg(socket)
            .args([user.gid.to_string(), user.uid.to_string()])
            .arg(record)
            .arg(&ready),
        &root.join("impostor.log"),
    );
    wait_until("the impostor to listen", STARTUP_DEADLINE, || {
        process.assert_running();
        fs::read_to_string(&ready).is_ok_and(|text| text == "listening")
    });
    process
}

#[test]
fn tenants_cannot_reach_each_other() {
    if current_uid() != 0 {
        eprintln!("skipping: making users and running apps as them needs root (CI runs it)");
        return;
    }
    let (alice, bob) = (User::create("a"), User::create("b"));
    let dir = tempfile::tempdir().unwrap();
    // The apps read their code from here: readable by all, writable by root only.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path();
    let app = root.join("app.py");
    fs::copy(repo_path("demo/app.py"), &app).unwrap();
    let emperor = Emperor::start(root, &[], &[]);
    for (site, user) in [("alice.example", &alice), ("bob.example", &bob)] {
        emperor.add_site(site, &vassal_as(&emperor, &app, user));
        fs::copy(
            emperor.sites_dir.join(format!("{site}.ini")),
            emperor.enabled(site),
        )
        .unwrap();
    }
    let socket = |site: &str| emperor.sockets_dir.join(format!("{site}.sock"));
    for site in ["alice.example", "bob.example"] {
        wait_until(&format!("{site} running"), STARTUP_DEADLINE, || {
            std::os::unix::net::UnixStream::connect(socket(site)).is_ok()
        });
    }
    let (port, metrics) = (free_port(), free_port());
    let herald = Herald::start(
        root,
        "backend",
        &emperor.backend_yaml(port, metrics, "  idle_timeout: 0\n"),
        &[port],
    );

    // Each app runs as its owner, and Herald serves it.
    for (site, user) in [("alice.example", &alice), ("bob.example", &bob)] {
        let answer = get(port, site, "/");
        assert_eq!(answer.status, 200, "{site}: {}", answer.text());
        assert_eq!(answer.json()["uid"], user.uid, "{site}");
    }
    // Neither tenant can write where the sockets are, nor where Herald keeps its own files.
    let runtime: PathBuf = root.to_owned(); // the pid file, upgrade socket and logs are here
    for user in [&alice, &bob] {
        for dir in [&emperor.sockets_dir, &runtime] {
            assert!(
                !user.can_write_in(dir),
                "{} can write in {dir:?}",
                user.name
            );
        }
    }

    // Alice's app stops; a process of Bob's listens where her socket was.
    fs::remove_file(emperor.enabled("alice.example")).unwrap();
    wait_until("alice's app to stop", Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(socket("alice.example")).is_err()
    });
    let record = root.join("impostor.received");
    let _impostor = impostor(root, &socket("alice.example"), &bob, &record);
    let answer = send_raw(
        port,
        b"POST /login HTTP/1.1\r\nHost: alice.example\r\nCookie: session=alice-secret\r\nContent-Length: 8\r\nConnection: close\r\n\r\npassword",
    );
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert!(
        answer.text().contains("held by another user"),
        "{}",
        answer.text()
    );
    assert_eq!(
        fs::read(&record).unwrap_or_default(),
        b"",
        "the impostor got part of the request"
    );
    let expected = format!(
        "site alice.example: the socket {} is held by uid {}, not by the site's owner, uid {}",
        socket("alice.example").display(),
        bob.uid,
        alice.uid
    );
    assert!(herald.log().contains(&expected), "{}", herald.log());
    assert_eq!(
        metric(metrics, "herald_app_socket_owner_mismatches_total", &[]),
        1.0
    );
    // Bob's own site is untouched.
    assert_eq!(get(port, "bob.example", "/").json()["uid"], bob.uid);
}
