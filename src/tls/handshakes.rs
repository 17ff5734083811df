//! Counting TLS handshakes. Pingora calls back only when a handshake succeeds; a failure
//! (an old protocol version, no common cipher or ALPN protocol, no certificate for the
//! name, plain HTTP on the TLS port, a client that gives up) is only logged, at ERROR, by
//! its accept loop. So failures are counted from that log record, which `observe_log`
//! sees for every record whatever `RUST_LOG` says (see `logging`). Those records are one per
//! connection: anyone could fill the log with them, so only a few are written each
//! `LOG_WINDOW`, then one line saying how many were left out (the metric counts them all).

use crate::metrics;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use std::any::Any;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// At most `LOG_BUDGET` failed handshakes are logged per `LOG_WINDOW`.
const LOG_WINDOW: Duration = Duration::from_secs(10);
const LOG_BUDGET: u32 = 10;

/// Where and how Pingora 0.9 logs a failed downstream handshake
/// (pingora-core `services/listening.rs`: "Downstream handshake error from ADDR: ..." and
/// "Downstream handshake timeout").
const FAILURE_TARGET: &str = "pingora_core::services::listening";
const FAILURE_PREFIX: &str = "Downstream handshake";

/// Counts the handshakes that complete.
pub struct HandshakeObserver;

#[async_trait]
impl TlsAccept for HandshakeObserver {
    async fn handshake_complete_callback(
        &self,
        _tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        metrics::tls_handshake(true);
        None
    }
}

/// Counts a failed handshake if `record` is Pingora's report of one.
pub fn observe_log(record: &log::Record<'_>) {
    if is_failed_handshake(record) {
        metrics::tls_handshake(false);
    }
}

/// Whether a record may be written; for a failed handshake past this window's budget, not.
/// `Some(n)` first: `n` failures were left out of the log since the last one written.
pub fn log_admission(record: &log::Record<'_>) -> (bool, Option<u64>) {
    if !is_failed_handshake(record) {
        return (true, None);
    }
    static WINDOW: Mutex<Option<Budget>> = Mutex::new(None);
    let mut window = WINDOW.lock().expect("never poisoned");
    window
        .get_or_insert_with(|| Budget::new(Instant::now()))
        .admit(Instant::now())
}

/// The failed handshakes logged in the current window, and those left out.
#[derive(Debug)]
struct Budget {
    began: Instant,
    logged: u32,
    left_out: u64,
}

impl Budget {
    fn new(now: Instant) -> Budget {
        Budget {
            began: now,
            logged: 0,
            left_out: 0,
        }
    }

    fn admit(&mut self, now: Instant) -> (bool, Option<u64>) {
        if now.duration_since(self.began) >= LOG_WINDOW {
            let left_out = std::mem::take(&mut self.left_out);
            *self = Budget::new(now);
            self.logged = 1;
            return (true, (left_out > 0).then_some(left_out));
        }
        if self.logged < LOG_BUDGET {
            self.logged += 1;
            return (true, None);
        }
        self.left_out += 1;
        (false, None)
    }
}

fn is_failed_handshake(record: &log::Record<'_>) -> bool {
    // Formatting only the few ERROR records of Pingora's accept loop.
    record.level() == log::Level::Error
        && record.target() == FAILURE_TARGET
        && record.args().to_string().starts_with(FAILURE_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_failed_handshakes_writes_a_few_lines_and_a_count() {
        let start = Instant::now();
        let mut budget = Budget::new(start);
        let admitted = (0..1000)
            .filter(|_| budget.admit(start + Duration::from_secs(1)).0)
            .count();
        assert_eq!(admitted, LOG_BUDGET as usize);
        assert_eq!(
            budget.admit(start + LOG_WINDOW + Duration::from_secs(1)),
            (true, Some(1000 - u64::from(LOG_BUDGET)))
        );
        assert_eq!(
            budget.admit(start + LOG_WINDOW + Duration::from_secs(2)),
            (true, None)
        );
    }

    #[test]
    fn pingora_handshake_failures_are_recognised() {
        let addr = "192.0.2.1:5000";
        let check = |level, target, args: std::fmt::Arguments<'_>| {
            is_failed_handshake(
                &log::Record::builder()
                    .level(level)
                    .target(target)
                    .args(args)
                    .build(),
            )
        };
        use log::Level::{Error, Warn};
        assert!(check(
            Error,
            FAILURE_TARGET,
            format_args!("Downstream handshake error from {addr}: peer sent no certificates")
        ));
        assert!(check(
            Error,
            FAILURE_TARGET,
            format_args!("Downstream handshake timeout")
        ));
        assert!(!check(
            Error,
            FAILURE_TARGET,
            format_args!("Accept() failed {addr}")
        ));
        assert!(!check(
            Warn,
            FAILURE_TARGET,
            format_args!("Downstream handshake error")
        ));
        assert!(!check(
            Error,
            "herald",
            format_args!("Downstream handshake error")
        ));
    }
}
