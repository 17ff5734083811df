//! A TLS connection between its accept and the end of its handshake. Pingora runs the
//! handshake before any of Herald's code sees the connection (and allows it 60 s), so a client
//! could hold thousands of silent connections to :443, uncounted. Pingora's pre-TLS callback
//! (`HandshakeLimit`) brings them inside the limits from the accept:
//!
//! - the connection takes its place in `max_open_connections_per_client` at once (and keeps it
//!   until it closes, handshake or not);
//! - a watchdog shuts it down when its handshake has not finished within
//!   `ssl_handshake_timeout`. `ConnectionLimit` tells it when the handshake is done.

use crate::metrics;
use crate::per_client::{ClientLimiter, ClientSlot};
use async_trait::async_trait;
use log::debug;
use pingora::listeners::PreTlsProcess;
use pingora::prelude::*;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::upstreams::peer::{Tracer, Tracing};
use prometheus::IntCounter;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// A connection by its two ends (a client may use one port towards two of our listeners).
type Ends = (SocketAddr, SocketAddr);

/// Handshakes in progress, so that the one that finishes can stop its watchdog.
#[derive(Default)]
pub struct Handshakes {
    pending: Mutex<HashMap<Ends, Arc<Handshake>>>,
}

#[derive(Default)]
struct Handshake {
    done: AtomicBool,
    /// Finished, or the connection closed: the watchdog has nothing left to do.
    ended: Notify,
}

impl Handshakes {
    /// The handshake of the connection with these ends finished: no deadline any more.
    pub fn finished(&self, peer: SocketAddr, local: SocketAddr) {
        let handshake = self
            .pending
            .lock()
            .expect("never poisoned")
            .remove(&(peer, local));
        if let Some(handshake) = handshake {
            handshake.done.store(true, Ordering::SeqCst);
            handshake.ended.notify_one();
        }
    }

    fn forget(&self, ends: Ends, handshake: &Arc<Handshake>) {
        let mut pending = self.pending.lock().expect("never poisoned");
        if pending
            .get(&ends)
            .is_some_and(|h| Arc::ptr_eq(h, handshake))
        {
            pending.remove(&ends);
        }
    }
}

pub struct HandshakeLimit {
    pub per_client: Option<Arc<ClientLimiter>>,
    /// `herald_client_connections_refused_total` of the role.
    pub refused: IntCounter,
    pub timeout: Duration,
    pub handshakes: Arc<Handshakes>,
    /// Run next, within the same deadline (on-demand certificates read the ClientHello).
    pub then: Option<Arc<dyn PreTlsProcess>>,
}

#[async_trait]
impl PreTlsProcess for HandshakeLimit {
    async fn process(&self, stream: &mut L4Stream) -> Result<()> {
        let Some(ends) = ends_of(stream) else {
            return Ok(()); // not TCP: nothing to count by
        };
        let client = ends.0.ip().to_canonical();
        let slot = match &self.per_client {
            Some(limiter) => match ClientLimiter::try_enter(limiter, client) {
                Some(slot) => Some(slot),
                None => {
                    debug!("{client} holds max_open_connections_per_client: closing its new TLS connection");
                    self.refused.inc();
                    // Pingora logs this as a failed handshake (see tls::handshakes).
                    return Error::e_explain(
                        ConnectRefused,
                        "the client holds max_open_connections_per_client",
                    );
                }
            },
            None => None,
        };
        let handshake = Arc::new(Handshake::default());
        let watchdog = duplicate(stream.as_raw_fd())
            .or_err(InternalError, "duplicating a TLS connection's socket")?;
        self.handshakes
            .pending
            .lock()
            .expect("never poisoned")
            .insert(ends, handshake.clone());
        tokio::spawn(watch(
            watchdog,
            self.timeout,
            handshake.clone(),
            self.handshakes.clone(),
            ends,
        ));
        // Dropped with the connection's stream, whenever that is: the slot goes back then.
        stream.tracer = Some(Tracer(Box::new(Held {
            _hold: Arc::new(Hold {
                _slot: slot,
                handshake,
            }),
        })));
        match &self.then {
            Some(next) => next.process(stream).await,
            None => Ok(()),
        }
    }
}

/// Shuts the connection down if its handshake is still going at the deadline.
async fn watch(
    socket: OwnedFd,
    timeout: Duration,
    handshake: Arc<Handshake>,
    handshakes: Arc<Handshakes>,
    ends: Ends,
) {
    tokio::select! {
        () = tokio::time::sleep(timeout) => {
            if !handshake.done.load(Ordering::SeqCst) {
                debug!("TLS handshake from {} not done within {timeout:?}: closing", ends.0);
                metrics::tls_handshake_timed_out();
                // Both directions: the handshake's next read ends, and Pingora drops it.
                let _ = nix::sys::socket::shutdown(socket.as_raw_fd(), nix::sys::socket::Shutdown::Both);
            }
        }
        () = handshake.ended.notified() => {}
    }
    handshakes.forget(ends, &handshake);
    // `socket`, our second descriptor, closes here: the connection itself is Pingora's.
}

fn ends_of(stream: &L4Stream) -> Option<Ends> {
    use pingora::protocols::GetSocketDigest;
    let digest = stream.get_socket_digest()?;
    let peer = *digest.peer_addr()?.as_inet()?;
    let local = *digest.local_addr()?.as_inet()?;
    Some((peer, local))
}

/// A second descriptor of the connection's socket, for the watchdog: shutting down through it
/// cannot hit another connection, as the first descriptor's number could be reused once
/// Pingora closes it.
#[allow(unsafe_code)]
fn duplicate(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: `fd` is the socket of the stream the caller holds, open for this whole call.
    unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()
}

/// What a TLS connection holds from its accept to its close.
struct Hold {
    _slot: Option<ClientSlot>,
    handshake: Arc<Handshake>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        // Closed (before its handshake finished, or long after): the watchdog can go.
        self.handshake.ended.notify_one();
    }
}

/// `Hold` as the stream's tracer, the one place Pingora lets a listener keep something for a
/// connection's lifetime (it is dropped with the stream).
#[derive(Clone)]
struct Held {
    _hold: Arc<Hold>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("herald connection hold")
    }
}

impl Tracing for Held {
    fn on_connected(&self) {}
    fn on_disconnected(&self) {}
    fn boxed_clone(&self) -> Box<dyn Tracing> {
        Box::new(self.clone())
    }
}
