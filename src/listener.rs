//! The listening side of both roles: Pingora's HTTP proxy wrapped in the two limits that work
//! on connections rather than requests, where no `ProxyHttp` hook can reach:
//!
//! - `client_header_timeout` as nginx means it: the whole request header must arrive within
//!   it, else the connection is closed. Pingora only bounds each read, so a header dribbled a
//!   byte at a time would hold a connection for as long as the client likes.
//! - `max_open_connections_per_client`: how many connections one address may hold open,
//!   idle keep-alive and half-sent headers included (the per-request count,
//!   `max_connections_per_client`, cannot see those).
//!
//! `ConnectionLimit` wraps a whole connection; `HeaderDeadline` wraps each request on it and
//! forwards everything else (server and HTTP/2 options, shutdown) to the proxy inside.

use crate::config::Frontend;
use crate::handshake_limit::{HandshakeLimit, Handshakes};
use crate::metrics;
use crate::per_client::ClientLimiter;
use async_trait::async_trait;
use log::debug;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::services::listening::Service;
use pingora_core::protocols::http::v2::server::H2Options;
use prometheus::{IntCounter, IntGauge};
use std::cell::Cell;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

tokio::task_local! {
    /// Whether the current request's header has arrived (set by `header_received`).
    static HEADER_RECEIVED: Cell<bool>;
    /// How many requests the current HTTP/1 connection has begun.
    static REQUESTS_BEGUN: Cell<u32>;
}

/// Tells the deadline around the current request that its header is complete; called by both
/// roles from their first hook (`early_request_filter`).
pub fn header_received() {
    // Outside a `HeaderDeadline` (unit tests), there is no deadline to stop.
    let _ = HEADER_RECEIVED.try_with(|received| received.set(true));
}

/// `proxy` behind both limits, as a service the caller adds listeners to (`add_tcp`,
/// `add_tls_with_settings`). Set the proxy's `server_options` and `h2_options` before: the
/// wrappers pass them on as they are.
pub fn service<A>(
    name: &str,
    role: &'static str,
    proxy: A,
    frontend: &Frontend,
) -> Service<ConnectionLimit<HeaderDeadline<A>>>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    let deadline = HeaderDeadline {
        inner: Arc::new(proxy),
        first: frontend.client_header_timeout,
        // A later request's header read begins with the keep-alive wait, which Pingora bounds
        // per read and which this wrapper cannot tell apart from the header itself.
        later: frontend.keepalive_timeout + frontend.client_header_timeout,
        timeouts: metrics::header_timeouts(role),
    };
    let limit = ConnectionLimit {
        inner: Arc::new(deadline),
        per_client: frontend
            .max_open_connections_per_client
            .map(ClientLimiter::new),
        open: metrics::open_connections(role),
        refused: metrics::refused_connections(role),
        handshakes: Arc::new(Handshakes::default()),
    };
    Service::new(name.to_owned(), limit)
}

/// Bounds the time each request header takes to arrive, counted from the connection's
/// accept (or, on a kept-alive connection, from the end of the previous response).
pub struct HeaderDeadline<A> {
    inner: Arc<A>,
    /// For a connection's first request.
    first: Duration,
    /// For the requests after it: the keep-alive wait plus the header.
    later: Duration,
    timeouts: IntCounter,
}

#[async_trait]
impl<A> HttpServerApp for HeaderDeadline<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // HTTP/2 streams run on tasks of their own, outside the connection's count: they are
        // "first" requests, and their header is complete before they get here anyway.
        let earlier = REQUESTS_BEGUN
            .try_with(|begun| begun.replace(begun.get().saturating_add(1)))
            .unwrap_or(0);
        let deadline = if earlier == 0 { self.first } else { self.later };
        HEADER_RECEIVED
            .scope(Cell::new(false), async {
                let request = self.inner.process_new_http(session, shutdown);
                tokio::pin!(request);
                tokio::select! {
                    biased;
                    reusable = &mut request => reusable,
                    () = tokio::time::sleep(deadline) => {
                        if HEADER_RECEIVED.with(Cell::get) {
                            // A long request (or a WebSocket): the deadline was for its header.
                            request.await
                        } else {
                            // As nginx does, without an answer: the connection just closes
                            // (the request, and the session in it, are dropped here).
                            debug!("request header not complete within {deadline:?}: closing the connection");
                            self.timeouts.inc();
                            None
                        }
                    }
                }
            })
            .await
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await;
    }

    async fn process_custom_session(
        self: Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner
            .clone()
            .process_custom_session(stream, shutdown)
            .await
    }
}

/// Counts a connection from its accept to its close, and closes at once a connection from an
/// address that already holds `max_open_connections_per_client`: before any byte is read,
/// there is no request to answer.
pub struct ConnectionLimit<A> {
    inner: Arc<A>,
    per_client: Option<Arc<ClientLimiter>>,
    open: IntGauge,
    refused: IntCounter,
    /// TLS connections are counted from their accept, before the handshake (`HandshakeLimit`).
    handshakes: Arc<Handshakes>,
}

impl<A> ConnectionLimit<A> {
    /// The same limits for TLS connections from their accept, sharing the per-client counts,
    /// with their handshakes bounded by `timeout` (for Pingora's pre-TLS callback).
    pub fn handshake_limit(
        &self,
        timeout: Duration,
        then: Option<Arc<dyn pingora::listeners::PreTlsProcess>>,
    ) -> HandshakeLimit {
        HandshakeLimit {
            per_client: self.per_client.clone(),
            refused: self.refused.clone(),
            timeout,
            handshakes: self.handshakes.clone(),
            then,
        }
    }
}

#[async_trait]
impl<A> ServerApp for ConnectionLimit<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let tls = stream.get_ssl_digest().is_some();
        if tls {
            // Counted since its accept; its handshake is over.
            if let Some((peer, local)) = ends(&stream) {
                self.handshakes.finished(peer, local);
            }
        }
        let _slot = match (&self.per_client, client_ip(&stream)) {
            _ if tls => None,
            (Some(limiter), Some(ip)) => {
                match ClientLimiter::try_enter(limiter, ip) {
                    Some(slot) => Some(slot),
                    None => {
                        debug!("{ip} holds max_open_connections_per_client: closing its new connection");
                        self.refused.inc();
                        return None;
                    }
                }
            }
            _ => None,
        };
        self.open.inc();
        let _open = Open(&self.open);
        REQUESTS_BEGUN
            .scope(Cell::new(0), async {
                // Pingora's HTTP apps finish with a connection themselves (they return None);
                // any other app handing one back keeps it here, and in the count.
                let mut reusable = self.inner.process_new(stream, shutdown).await;
                while let Some(stream) = reusable {
                    reusable = self.inner.process_new(stream, shutdown).await;
                }
            })
            .await;
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// One connection in the open-connections gauge.
struct Open<'a>(&'a IntGauge);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn client_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    let addr = digest.peer_addr()?.as_inet()?;
    Some(addr.ip().to_canonical())
}

fn ends(stream: &Stream) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
    let digest = stream.get_socket_digest()?;
    Some((
        *digest.peer_addr()?.as_inet()?,
        *digest.local_addr()?.as_inet()?,
    ))
}
