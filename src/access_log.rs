//! Access logs, one line per request: nginx's `combined` format (so existing log tooling
//! keeps working) followed by Herald's own fields, or JSON. Lines are written by a thread of
//! their own, so a slow disk never holds up a request; a full queue drops lines and counts
//! them. A log file moved away (logrotate) is noticed within a second and reopened.

use crate::metrics;
use crate::text;
use log::warn;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Off,
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Combined,
    Json,
}

/// Lines waiting for the writer; past this, lines are dropped rather than delay requests.
const QUEUE: usize = 64 * 1024;
const REOPEN_CHECK: Duration = Duration::from_secs(1);
/// How long lines may gather before the writer takes them, once it has written some.
const BATCH_PAUSE: Duration = Duration::from_millis(2);

pub struct AccessLog {
    format: Format,
    role: &'static str,
    lines: Option<SyncSender<String>>,
    /// Each site's lines go to its own log too (`site_logs`).
    per_site: bool,
}

/// What a role knows about a finished request, beyond what the session says.
pub struct Facts<'a> {
    pub client: Option<IpAddr>,
    pub site: &'a str,
    pub request_id: &'a str,
    pub status: u16,
    pub elapsed: Duration,
    /// The backend server (edge) or app socket (backend) last tried.
    pub upstream: Option<&'a str>,
    pub upstream_time: Option<Duration>,
    pub waited_on_start: bool,
}

impl AccessLog {
    /// The role's access log, as configured; one that cannot be opened stops Herald at start,
    /// with a message naming the setting.
    pub fn for_role(role: &'static str, frontend: &crate::config::Frontend) -> AccessLog {
        AccessLog::open(role, &frontend.access_log, frontend.access_log_format).unwrap_or_else(
            |e| {
                eprintln!(
                    "{role}.access_log.path: cannot open {:?}: {e}",
                    frontend.access_log
                );
                std::process::exit(1)
            },
        )
    }

    fn open(
        role: &'static str,
        destination: &Destination,
        format: Format,
    ) -> std::io::Result<Self> {
        let lines = match destination {
            Destination::Off => None,
            Destination::Stdout => Some(spawn_writer(None)?),
            Destination::File(path) => Some(spawn_writer(Some(path.clone()))?),
        };
        Ok(AccessLog {
            format,
            role,
            lines,
            per_site: false,
        })
    }

    /// Sends each site's lines to its own log as well (when `site_logs` has one).
    pub fn with_site_logs(self) -> AccessLog {
        AccessLog {
            per_site: crate::site_logs::wants_access(),
            ..self
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.lines.is_some() || self.per_site
    }

    pub fn record(
        &self,
        req: &pingora::http::RequestHeader,
        body_bytes_sent: usize,
        facts: &Facts,
    ) {
        if !self.is_enabled() {
            return;
        }
        let line = match self.format {
            Format::Combined => combined(req, body_bytes_sent, facts),
            Format::Json => json(self.role, req, body_bytes_sent, facts),
        };
        if self.per_site && facts.site != "-" {
            crate::site_logs::access(facts.site, line.clone());
        }
        let Some(lines) = &self.lines else {
            return;
        };
        if let Err(TrySendError::Full(_)) = lines.try_send(line) {
            metrics::ACCESS_LOG_DROPPED.inc();
        }
    }
}

fn spawn_writer(path: Option<PathBuf>) -> std::io::Result<SyncSender<String>> {
    let sink = Sink::open(path)?;
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("herald-access-log".into())
        .spawn(move || write_lines(sink, rx))?;
    Ok(tx)
}

struct Sink {
    path: Option<PathBuf>,
    out: BufWriter<Box<dyn Write + Send>>,
    inode: u64,
}

impl Sink {
    fn open(path: Option<PathBuf>) -> std::io::Result<Sink> {
        let (out, inode): (Box<dyn Write + Send>, u64) = match &path {
            None => (Box::new(std::io::stdout()), 0),
            Some(path) => {
                let file: File = OpenOptions::new().create(true).append(true).open(path)?;
                let inode = file.metadata()?.ino();
                (Box::new(file), inode)
            }
        };
        Ok(Sink {
            path,
            out: BufWriter::with_capacity(64 * 1024, out),
            inode,
        })
    }

    /// Reopens the file if it was moved or removed (log rotation).
    fn reopen_if_rotated(&mut self) {
        let Some(path) = &self.path else { return };
        let current = std::fs::metadata(path).map(|m| m.ino()).ok();
        if current == Some(self.inode) {
            return;
        }
        let _ = self.out.flush();
        match Sink::open(self.path.clone()) {
            Ok(fresh) => *self = fresh,
            Err(e) => warn!("cannot reopen access log {path:?}: {e}"),
        }
    }
}

fn write_lines(mut sink: Sink, lines: Receiver<String>) {
    let mut last_check = std::time::Instant::now();
    loop {
        match lines.recv_timeout(REOPEN_CHECK) {
            Ok(line) => {
                let _ = sink.out.write_all(line.as_bytes());
                // Flush whenever the queue is drained, so lines appear promptly when idle and
                // go out in large writes when busy.
                while let Ok(line) = lines.try_recv() {
                    let _ = sink.out.write_all(line.as_bytes());
                }
                let _ = sink.out.flush();
                // Under load, let lines gather for a moment: a request that queues a line
                // while this thread is not waiting wakes nobody (measured: one wake-up and
                // one write per request cost the edge about a tenth of its CPU).
                std::thread::sleep(BATCH_PAUSE);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let _ = sink.out.flush();
                return;
            }
        }
        if last_check.elapsed() >= REOPEN_CHECK {
            sink.reopen_if_rotated();
            last_check = std::time::Instant::now();
        }
    }
}

/// `$remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer"
/// "$http_user_agent"`, then `host= id= rt= urt= upstream= start=`.
fn combined(req: &pingora::http::RequestHeader, body_bytes_sent: usize, facts: &Facts) -> String {
    let mut line = String::with_capacity(256);
    write_client(&mut line, facts);
    line.push_str(" - - [");
    write_time_local_now(&mut line);
    line.push_str("] \"");
    escape_into(&mut line, req.method.as_str().as_bytes());
    line.push(' ');
    escape_into(&mut line, req.raw_path());
    line.push(' ');
    line.push_str(crate::forwarding::protocol_name(req.version));
    line.push_str("\" ");
    text::push_decimal(&mut line, u64::from(facts.status));
    line.push(' ');
    text::push_decimal(&mut line, body_bytes_sent as u64);
    line.push_str(" \"");
    escape_into(&mut line, header(req, http::header::REFERER));
    line.push_str("\" \"");
    escape_into(&mut line, header(req, http::header::USER_AGENT));
    line.push_str("\" host=");
    line.push_str(facts.site);
    line.push_str(" id=");
    line.push_str(facts.request_id);
    line.push_str(" rt=");
    text::push_seconds(&mut line, facts.elapsed, 3);
    line.push_str(" urt=");
    match facts.upstream_time {
        Some(t) => text::push_seconds(&mut line, t, 3),
        None => line.push('-'),
    }
    line.push_str(" upstream=");
    line.push_str(facts.upstream.unwrap_or("-"));
    line.push_str(if facts.waited_on_start {
        " start=1\n"
    } else {
        " start=0\n"
    });
    line
}

fn json(
    role: &str,
    req: &pingora::http::RequestHeader,
    body_bytes_sent: usize,
    facts: &Facts,
) -> String {
    let mut line = String::with_capacity(384);
    line.push('{');
    let mut text = |key: &str, value: &[u8]| {
        let _ = write!(line, "\"{key}\":\"");
        json_escape_into(&mut line, value);
        line.push_str("\",");
    };
    text("time", rfc3339(SystemTime::now()).as_bytes());
    text("role", role.as_bytes());
    let mut client = String::new();
    write_client(&mut client, facts);
    text("remote_addr", client.as_bytes());
    text("host", facts.site.as_bytes());
    text("method", req.method.as_str().as_bytes());
    text("uri", req.raw_path());
    text("protocol", format!("{:?}", req.version).as_bytes());
    text("referer", header(req, http::header::REFERER));
    text("user_agent", header(req, http::header::USER_AGENT));
    text("request_id", facts.request_id.as_bytes());
    text("upstream", facts.upstream.unwrap_or("").as_bytes());
    let _ = write!(
        line,
        "\"status\":{},\"body_bytes_sent\":{body_bytes_sent},\"request_time\":{:.6},\"upstream_time\":{},\"waited_on_start\":{}}}",
        facts.status,
        facts.elapsed.as_secs_f64(),
        facts.upstream_time.map_or("null".to_owned(), |t| format!("{:.6}", t.as_secs_f64())),
        facts.waited_on_start,
    );
    line.push('\n');
    line
}

fn write_client(out: &mut String, facts: &Facts) {
    match facts.client {
        Some(ip) => crate::text::push_ip(out, ip),
        None => out.push('-'),
    }
}

fn header(req: &pingora::http::RequestHeader, name: http::header::HeaderName) -> &[u8] {
    req.headers.get(name).map_or(b"-", |v| v.as_bytes())
}

/// nginx's escaping: `"`, `\` and bytes outside printable ASCII become `\xHH`.
fn escape_into(out: &mut String, bytes: &[u8]) {
    let plain = |b: &u8| *b != b'"' && *b != b'\\' && (0x20..0x7f).contains(b);
    let mut rest = bytes;
    while !rest.is_empty() {
        // Runs of printable ASCII go in whole.
        let run = rest.iter().position(|b| !plain(b)).unwrap_or(rest.len());
        out.push_str(std::str::from_utf8(&rest[..run]).expect("printable ASCII"));
        let Some(&b) = rest.get(run) else { break };
        let _ = write!(out, "\\x{b:02X}");
        rest = &rest[run + 1..];
    }
}

fn json_escape_into(out: &mut String, bytes: &[u8]) {
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// A request id: unique per process (a counter, mixed by a bijection) and across processes
/// (seeded by pid and start time). Passed upstream as `X-Request-Id`.
pub fn new_request_id() -> String {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        (u64::from(std::process::id()) << 40) ^ now.as_nanos() as u64
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = String::with_capacity(16);
    crate::text::push_hex16(&mut id, splitmix64(seed.wrapping_add(n)));
    id
}

/// An id a trusted hop sent, if it is a sane one to log and pass on.
pub fn is_valid_request_id(id: &[u8]) -> bool {
    (1..=64).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `time_local` of now, formatted once per second per thread.
fn write_time_local_now(out: &mut String) {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    CACHED.with_borrow_mut(|(cached_second, text)| {
        if *cached_second != second {
            *cached_second = second;
            *text = time_local(now);
        }
        out.push_str(text);
    });
}

/// `26/Nov/2026:20:52:06 +0000` (UTC).
fn time_local(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d, hh, mm, ss) = civil(t);
    format!(
        "{d:02}/{}/{y}:{hh:02}:{mm:02}:{ss:02} +0000",
        MONTHS[m as usize - 1]
    )
}

/// `2026/11/26 20:52:06`, nginx's error log time (UTC).
pub fn error_log_time(t: SystemTime) -> String {
    let (y, m, d, hh, mm, ss) = civil(t);
    format!("{y}/{m:02}/{d:02} {hh:02}:{mm:02}:{ss:02}")
}

fn rfc3339(t: SystemTime) -> String {
    let (y, m, d, hh, mm, ss) = civil(t);
    let millis = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_millis();
    format!("{y}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{millis:03}Z")
}

/// UTC calendar date and time (Howard Hinnant's days-from-civil, inverted).
fn civil(t: SystemTime) -> (i64, u32, u32, u64, u64, u64) {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_nginx_and_rfc3339_form() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_726_326); // 2026-11-26T20:52:06Z
        assert_eq!(time_local(t), "26/Nov/2026:20:52:06 +0000");
        assert_eq!(rfc3339(t), "2026-11-26T20:52:06.000Z");
        assert_eq!(time_local(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn combined_lines_escape_what_a_client_sent() {
        let mut req = pingora::http::RequestHeader::build("GET", b"/a?q=%22x%22\\", None).unwrap();
        req.insert_header("User-Agent", "evil\" agent").unwrap();
        let facts = Facts {
            client: Some("192.0.2.9".parse().unwrap()),
            site: "a.example",
            request_id: "abc",
            status: 200,
            elapsed: Duration::from_millis(12),
            upstream: Some("127.0.0.1:8080"),
            upstream_time: Some(Duration::from_millis(10)),
            waited_on_start: true,
        };
        let line = combined(&req, 42, &facts);
        assert!(line.starts_with("192.0.2.9 - - ["), "{line}");
        assert!(line.contains("] \"GET /a?q=%22x%22\\x5C HTTP/1.1\" 200 42 \"-\" \"evil\\x22 agent\" host=a.example id=abc rt=0.012 urt=0.010 upstream=127.0.0.1:8080 start=1\n"), "{line}");
        let line = json("edge", &req, 42, &facts);
        assert!(line.contains("\"user_agent\":\"evil\\\" agent\""), "{line}");
        assert!(line.ends_with("\"waited_on_start\":true}\n"), "{line}");
    }

    #[test]
    fn request_ids_are_distinct_and_valid() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| is_valid_request_id(id.as_bytes())));
        assert!(!is_valid_request_id(b"has space"));
        assert!(!is_valid_request_id(b""));
    }
}
