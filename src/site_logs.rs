//! Each site's own logs, so a site owner can see their traffic and why their site failed:
//! `backend.access_log.per_site` (the site's lines of the access log, in its format) and
//! `backend.error_log.per_site` (Herald's errors about the site: a start that failed and why, a
//! timeout, a refused upload, bad settings). Paths come from a template with `{host}`.
//!
//! Lines are written by a thread of their own from a bounded queue, so a slow or full disk
//! never holds up a request: a full queue, a missing directory or a failed write drops lines
//! and counts them. At most `MAX_OPEN` files are kept open (nginx's `open_log_file_cache`),
//! the least recently used closed first; a file moved away (logrotate) is noticed within a
//! second of its next line, and `SIGUSR1` reopens them all, as it does for nginx. A log file
//! is opened without following a symlink in its last component, so a site owner who can
//! write their log directory cannot point Herald's writes at another file.

use crate::config::SiteTemplate;
use log::warn;
use once_cell::sync::OnceCell;
use prometheus::{register_int_counter_vec, IntCounterVec};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};

/// Lines waiting for the writer; past this, lines are dropped rather than delay requests.
const QUEUE: usize = 64 * 1024;
/// Open log files kept.
const MAX_OPEN: usize = 256;
/// How often an open file's path is checked for rotation (only when it gets a line).
const REOPEN_CHECK: Duration = Duration::from_secs(1);
/// A file that could not be opened is not tried again for this long (its lines are dropped).
const RETRY_OPEN: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Access,
    Error,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Access => "access",
            Kind::Error => "error",
        }
    }
}

enum Message {
    Line {
        path: PathBuf,
        kind: Kind,
        line: String,
    },
    Reopen,
}

struct SiteLogs {
    access: Option<SiteTemplate>,
    errors: Option<SiteTemplate>,
    lines: SyncSender<Message>,
}

static SITE_LOGS: OnceCell<SiteLogs> = OnceCell::new();

static DROPPED: once_cell::sync::Lazy<IntCounterVec> = once_cell::sync::Lazy::new(|| {
    register_int_counter_vec!(
        "herald_site_log_lines_dropped_total",
        "Lines of per-site logs dropped: the queue was full, or the file could not be opened or written",
        &["log"]
    )
    .expect("metric registers once")
});

/// Starts the writer when either log is configured; later calls change nothing.
pub fn init(access: Option<SiteTemplate>, errors: Option<SiteTemplate>) {
    if access.is_none() && errors.is_none() {
        return;
    }
    for kind in [Kind::Access, Kind::Error] {
        DROPPED.with_label_values(&[kind.label()]);
    }
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let spawned = std::thread::Builder::new()
        .name("herald-site-logs".into())
        .spawn(move || Writer::default().run(rx));
    if let Err(e) = spawned {
        warn!("per-site logs are off: cannot start their writer: {e}");
        return;
    }
    let _ = SITE_LOGS.set(SiteLogs {
        access,
        errors,
        lines: tx,
    });
}

/// Whether `access` lines are wanted (so the caller formats a line only then).
pub fn wants_access() -> bool {
    SITE_LOGS.get().is_some_and(|logs| logs.access.is_some())
}

/// The access log line of a request to `site`, as the main log has it (newline included).
pub fn access(site: &str, line: String) {
    send(site, Kind::Access, line);
}

/// An error about `site`, for its owner: `2026/12/03 12:00:00 [error] MESSAGE`.
pub fn error(site: &str, message: &str) {
    if SITE_LOGS.get().is_none_or(|logs| logs.errors.is_none()) {
        return;
    }
    let time = crate::access_log::error_log_time(SystemTime::now());
    let message = crate::logging::printable(message);
    send(site, Kind::Error, format!("{time} [error] {message}\n"));
}

/// Closes every open site log, so the next line opens the file anew (`SIGUSR1`).
pub fn reopen() {
    if let Some(logs) = SITE_LOGS.get() {
        let _ = logs.lines.try_send(Message::Reopen);
    }
}

fn send(site: &str, kind: Kind, line: String) {
    let Some(logs) = SITE_LOGS.get() else { return };
    let template = match kind {
        Kind::Access => &logs.access,
        Kind::Error => &logs.errors,
    };
    let Some(template) = template else { return };
    let message = Message::Line {
        path: template.path_for(site),
        kind,
        line,
    };
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = logs.lines.try_send(message)
    {
        DROPPED.with_label_values(&[kind.label()]).inc();
    }
}

struct OpenLog {
    file: File,
    inode: u64,
    checked: Instant,
    used: u64,
}

#[derive(Default)]
struct Writer {
    open: HashMap<PathBuf, OpenLog>,
    /// Files that could not be opened, and when.
    failed: HashMap<PathBuf, Instant>,
    /// Orders the open files by last use.
    clock: u64,
}

impl Writer {
    fn run(mut self, messages: Receiver<Message>) {
        loop {
            match messages.recv_timeout(Duration::from_secs(10)) {
                Ok(Message::Line { path, kind, line }) => self.write(path, kind, &line),
                Ok(Message::Reopen) => self.open.clear(),
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    self.failed
                        .retain(|_, at| now.duration_since(*at) < RETRY_OPEN);
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn write(&mut self, path: PathBuf, kind: Kind, line: &str) {
        let dropped = || DROPPED.with_label_values(&[kind.label()]).inc();
        self.clock += 1;
        let now = Instant::now();
        if let Some(log) = self.open.get_mut(&path) {
            if now.duration_since(log.checked) >= REOPEN_CHECK {
                log.checked = now;
                let current = std::fs::symlink_metadata(&path).map(|m| m.ino()).ok();
                if current != Some(log.inode) {
                    self.open.remove(&path);
                }
            }
        }
        if !self.open.contains_key(&path) {
            if self
                .failed
                .get(&path)
                .is_some_and(|at| now.duration_since(*at) < RETRY_OPEN)
            {
                return dropped();
            }
            match open(&path) {
                Ok(log) => {
                    self.failed.remove(&path);
                    if self.open.len() >= MAX_OPEN {
                        self.close_least_recently_used();
                    }
                    self.open.insert(path.clone(), log);
                }
                Err(_) => {
                    self.failed.insert(path, now);
                    return dropped();
                }
            }
        }
        let log = self.open.get_mut(&path).expect("opened above");
        log.used = self.clock;
        // One write per line: O_APPEND keeps lines whole next to other writers.
        if log.file.write_all(line.as_bytes()).is_err() {
            self.open.remove(&path);
            dropped();
        }
    }

    fn close_least_recently_used(&mut self) {
        if let Some(oldest) = self
            .open
            .iter()
            .min_by_key(|(_, log)| log.used)
            .map(|(path, _)| path.clone())
        {
            self.open.remove(&oldest);
        }
    }
}

fn open(path: &PathBuf) -> std::io::Result<OpenLog> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(OpenLog {
        file,
        inode: meta.ino(),
        checked: Instant::now(),
        used: 0,
    })
}

/// Reopens the site logs on `SIGUSR1`, as nginx reopens its logs.
pub struct ReopenOnSignal;

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for ReopenOnSignal {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = match signal(SignalKind::user_defined1()) {
            Ok(usr1) => usr1,
            Err(e) => {
                warn!("SIGUSR1 will not reopen the site logs: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = usr1.recv() => {
                    log::info!("SIGUSR1: reopening the site logs");
                    reopen();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(path: &std::path::Path, text: &str) -> Message {
        Message::Line {
            path: path.to_owned(),
            kind: Kind::Access,
            line: format!("{text}\n"),
        }
    }

    #[test]
    fn lines_land_in_their_files_which_are_reopened_when_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        let b = dir.path().join("missing/b.log");
        let mut writer = Writer::default();
        let mut deliver = |m: Message| match m {
            Message::Line { path, kind, line } => writer.write(path, kind, &line),
            Message::Reopen => writer.open.clear(),
        };
        deliver(line(&a, "one"));
        deliver(line(&b, "lost: no directory"));
        std::fs::rename(&a, dir.path().join("a.log.1")).unwrap();
        deliver(Message::Reopen);
        deliver(line(&a, "two"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.log.1")).unwrap(),
            "one\n"
        );
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "two\n");
        assert!(!b.exists());
    }

    #[test]
    fn a_symlinked_log_file_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched\n").unwrap();
        let log = dir.path().join("site.log");
        std::os::unix::fs::symlink(&victim, &log).unwrap();
        let mut writer = Writer::default();
        writer.write(log, Kind::Error, "planted\n");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
    }

    #[test]
    fn open_files_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::default();
        for i in 0..MAX_OPEN + 10 {
            writer.write(dir.path().join(format!("{i}.log")), Kind::Access, "x\n");
        }
        assert_eq!(writer.open.len(), MAX_OPEN);
        assert!(
            !writer.open.contains_key(&dir.path().join("0.log")),
            "the oldest closed"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            MAX_OPEN + 10
        );
    }
}
