//! Counting TLS handshakes. Pingora calls back only when a handshake succeeds; a failure
//! (an old protocol version, no common cipher or ALPN protocol, no certificate for the
//! name, plain HTTP on the TLS port, a client that gives up) is only logged, at ERROR, by
//! its accept loop. So failures are counted from that log record, which `observe_log`
//! sees for every record whatever `RUST_LOG` says (see `logging`).

use crate::metrics;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use std::any::Any;
use std::sync::Arc;

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
