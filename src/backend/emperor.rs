//! The uWSGI emperor's stats server (`--emperor-stats`). The emperor scans its directory when
//! anything wakes its event loop, so one connection right after a vassal is written or removed
//! makes the app start (or stop) in milliseconds instead of at the next scan (1-3 s). What the
//! stats server sends back tells which vassals have a running process, and since when the
//! emperor runs each one (an emperor that restarts runs them all anew).

use crate::config::StatsAddress;
use crate::metrics;
use log::{debug, warn};
use serde::Deserialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpStream, UnixStream};

/// An emperor with thousands of vassals answers a few MiB; more is not a stats answer.
const MAX_ANSWER: usize = 16 << 20;
const TIMEOUT: Duration = Duration::from_secs(2);
/// A stats server that cannot be reached is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

pub struct Emperor {
    stats: Option<StatsAddress>,
    last_warning: Mutex<Option<Instant>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct EmperorStats {
    #[serde(default)]
    pub vassals: Vec<VassalStats>,
}

#[derive(Debug, Default, Deserialize)]
pub struct VassalStats {
    /// The vassal's file name.
    #[serde(default)]
    pub id: String,
    /// 0 while the vassal has no process (not yet spawned, or between respawns).
    #[serde(default)]
    pub pid: i64,
    /// When this emperor first ran the vassal (seconds since the epoch).
    #[serde(default)]
    pub first_run: i64,
    /// When the emperor last cursed it for dying (0: never): it fails to run.
    #[serde(default)]
    pub cursed: i64,
}

/// What the emperor says of one vassal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VassalRun {
    /// No stats server configured: nothing is known.
    Unknown,
    /// The stats server does not answer: the emperor is down, or restarting.
    EmperorDown,
    /// Running (or starting), by this emperor since then, and never cursed.
    Since(std::time::SystemTime),
    /// Cursed for dying, or not run at all (uWSGI drops vassals that keep dying).
    Failing,
}

impl Emperor {
    pub fn new(stats: Option<StatsAddress>) -> Self {
        Emperor {
            stats,
            last_warning: Mutex::new(None),
        }
    }

    /// Wakes the emperor and counts its running vassals from what its stats server says.
    /// Without a stats server it does nothing; one that cannot be reached or makes no sense
    /// is logged now and then, never an error for anyone.
    pub async fn wake(&self) {
        let Some(address) = self.stats.as_ref() else {
            return;
        };
        let answer = match tokio::time::timeout(TIMEOUT, read_all(address)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                self.warn_now_and_then(&format!("cannot reach the emperor's stats server {address:?}: {e}; apps start at its next scan"));
                return;
            }
            Err(_) => {
                self.warn_now_and_then(&format!(
                    "the emperor's stats server {address:?} did not answer in {TIMEOUT:?}"
                ));
                return;
            }
        };
        match parse(&answer) {
            Ok(stats) => {
                let running = stats.vassals.iter().filter(|v| v.pid > 0).count();
                metrics::APPS_RUNNING.set(i64::try_from(running).unwrap_or(i64::MAX));
            }
            Err(problem) => {
                debug!("ignoring the emperor's stats answer: {problem}");
                self.warn_now_and_then(&format!(
                    "the emperor's stats server {address:?} sent something unexpected: {problem}"
                ));
            }
        }
    }

    /// What the emperor says of `vassal` (a file name in its directory), asking it now.
    pub async fn vassal_run(&self, vassal: &str) -> VassalRun {
        let Some(address) = self.stats.as_ref() else {
            return VassalRun::Unknown;
        };
        let answer = match tokio::time::timeout(TIMEOUT, read_all(address)).await {
            Ok(Ok(answer)) => answer,
            _ => return VassalRun::EmperorDown,
        };
        let Ok(stats) = parse(&answer) else {
            return VassalRun::Unknown;
        };
        match stats.vassals.iter().find(|v| v.id == vassal) {
            Some(v) if v.cursed == 0 && v.first_run > 0 => VassalRun::Since(
                std::time::UNIX_EPOCH + Duration::from_secs(v.first_run.unsigned_abs()),
            ),
            _ => VassalRun::Failing,
        }
    }

    fn warn_now_and_then(&self, message: &str) {
        let mut last = self.last_warning.lock().expect("warning lock");
        if last.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            warn!("{message}");
            *last = Some(Instant::now());
        }
    }
}

async fn read_all(address: &StatsAddress) -> std::io::Result<Vec<u8>> {
    match address {
        StatsAddress::Unix(path) => read_capped(UnixStream::connect(path).await?).await,
        StatsAddress::Tcp(addr) => read_capped(TcpStream::connect(addr).await?).await,
    }
}

async fn read_capped(stream: impl AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER as u64 + 1)
        .read_to_end(&mut answer)
        .await?;
    Ok(answer)
}

pub fn parse(answer: &[u8]) -> Result<EmperorStats, String> {
    if answer.len() > MAX_ANSWER {
        return Err(format!("more than {MAX_ANSWER} bytes"));
    }
    serde_json::from_slice(answer).map_err(|e| format!("not the stats JSON ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_vassals_and_refuses_nonsense() {
        let answer = br#"{"version":"2.0.21","pid":1,"vassals":[{"id":"a.example.ini","pid":42,"ready":1},{"id":"b.example.ini","pid":0}],"blacklist":[]}"#;
        let stats = parse(answer).unwrap();
        assert_eq!(stats.vassals.len(), 2);
        assert_eq!(stats.vassals[0].pid, 42);
        assert!(parse(b"{\"vassals\":[}").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse(&vec![b' '; MAX_ANSWER + 1])
            .unwrap_err()
            .contains("more than"));
        assert_eq!(parse(b"{}").unwrap().vassals.len(), 0);
        let restarted = br#"{"vassals":[{"id":"a.example.ini","pid":7,"first_run":1796295155,"cursed":0},{"id":"b.example.ini","pid":8,"first_run":1796295155,"cursed":1796295160}]}"#;
        let stats = parse(restarted).unwrap();
        assert_eq!(
            (stats.vassals[0].first_run, stats.vassals[1].cursed),
            (1796295155, 1796295160)
        );
    }
}
