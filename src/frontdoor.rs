//! What both roles check before a request goes anywhere: whether its header is sound
//! (`screen`, before any other hook), then which site it is for, whether its client already
//! has too many requests in progress, and whether its body is within limits (`admit`).
//! A request that fails is answered here. A WebSocket handshake is recognised here too, and
//! gets the WebSocket idle timeout instead of the body timeout.

use crate::cidr::Cidr;
use crate::config::Frontend;
use crate::forwarding::Origin;
use crate::pages::{self, ErrorPages};
use crate::per_client::{ClientLimiter, ClientSlot};
use crate::request_checks::{self, HeaderLimits};
use crate::{forwarding, host, listener, websocket};
use bytes::Bytes;
use log::debug;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::Duration;

pub struct FrontDoor {
    allow_ip_hosts: bool,
    health_host: String,
    /// Pingora's keep-alive setting: `None` closes after each response.
    keepalive: Option<u64>,
    max_body: Option<u64>,
    body_timeout: Duration,
    websocket_idle: Duration,
    send_timeout: Duration,
    header_limits: HeaderLimits,
    per_client: Option<Arc<ClientLimiter>>,
    pages: ErrorPages,
    /// A body must announce its length (411 otherwise): the role streams bodies to upstreams
    /// that need it first.
    length_required: bool,
    trusted_proxies: Vec<Cidr>,
}

/// A request let in: its site, its client, its place in its client's count, and whether it
/// opens a WebSocket.
pub struct Admitted {
    pub site: String,
    /// The browser's connection: the peer's, or what a trusted proxy said. Worked out once
    /// here and kept for the request (the site gate and the upstream headers read it).
    pub origin: Origin,
    /// Whether the peer is one of `trusted_proxies`.
    pub trusted: bool,
    pub client_slot: Option<ClientSlot>,
    pub websocket: bool,
}

impl FrontDoor {
    pub fn new(frontend: &Frontend, length_required: bool) -> Self {
        let secs = frontend.keepalive_timeout.as_secs();
        let pages = match &frontend.error_pages {
            None => ErrorPages::default(),
            Some(dir) => ErrorPages::load(dir).unwrap_or_else(|problem| {
                log::warn!("error_pages: {problem}; using the built-in pages");
                ErrorPages::default()
            }),
        };
        FrontDoor {
            pages,
            allow_ip_hosts: frontend.allow_ip_hosts,
            health_host: frontend.health_host.clone(),
            // Pingora reads Some(0) as "forever"; nginx's keepalive_timeout 0 means "off".
            keepalive: (secs > 0).then_some(secs),
            max_body: frontend.client_max_body_size,
            body_timeout: frontend.client_body_timeout,
            websocket_idle: frontend.websocket_idle_timeout,
            send_timeout: frontend.send_timeout,
            header_limits: frontend.header_limits,
            per_client: frontend.max_connections_per_client.map(ClientLimiter::new),
            length_required,
            trusted_proxies: frontend.trusted_proxies.clone(),
        }
    }

    /// Whether the peer is one of `trusted_proxies`, whose word about the client counts.
    pub fn is_trusted(&self, session: &Session) -> bool {
        forwarding::client_ip(session)
            .is_some_and(|ip| self.trusted_proxies.iter().any(|net| net.contains(ip)))
    }

    /// The first look at a request, as soon as its header is in and before anything is done
    /// with it (`early_request_filter`): framing and sizes (`request_checks`). A request that
    /// fails gets an error with its status, which the role's `fail_to_proxy` answers with a
    /// page and which closes the connection.
    pub fn screen(&self, session: &mut Session) -> Result<()> {
        listener::header_received();
        // nginx's send_timeout, for every answer, error pages included.
        session.set_write_timeout(Some(self.send_timeout));
        // Pipelined requests are answered in order on their connection (RFC 9112 9.3.2), one
        // after the other, instead of being dropped with the connection.
        session.as_downstream_mut().set_pipelining_enabled(true);
        if self.length_required
            && declared_length(session).is_none()
            && !session.as_downstream_mut().is_body_empty()
        {
            debug!(
                "411 for {:?}: a body without Content-Length",
                forwarding::client_ip(session)
            );
            let mut e = Error::explain(HTTPStatus(411), "request body without Content-Length");
            e.as_down();
            return Err(e);
        }
        let downstream = session.as_downstream();
        let verdict = match downstream.as_http1() {
            Some(h1) => {
                request_checks::check_h1_head(&h1.get_headers_raw_bytes(), &self.header_limits)
            }
            // HTTP/2 frames the body itself; only the sizes apply.
            None => {
                let req = downstream.req_header();
                let target = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
                let fields = req
                    .headers
                    .iter()
                    .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()));
                request_checks::check_field_sizes(target, fields, &self.header_limits)
            }
        };
        verdict.map_err(|rejection| {
            debug!(
                "{} for {:?}: {}",
                rejection.status(),
                forwarding::client_ip(session),
                rejection.reason()
            );
            let mut e = Error::explain(HTTPStatus(rejection.status()), rejection.reason());
            e.as_down();
            e
        })
    }

    /// The role's error pages (the operator's, or the built-in ones).
    pub fn pages(&self) -> &ErrorPages {
        &self.pages
    }

    /// `client_max_body_size`; `None`: no limit.
    pub fn max_body(&self) -> Option<u64> {
        self.max_body
    }

    /// A role's upstream timeouts on `options`. A WebSocket gets `websocket_idle_timeout` for
    /// its upstream reads too: once upgraded, Pingora restarts both reads (from the client and
    /// from upstream) whenever anything moves in either direction, so the socket closes after
    /// the smaller of the two timeouts of silence (`admit` sets the client side). It also
    /// bounds the wait for the 101, which Pingora reads with the same timeout.
    pub fn set_upstream_timeouts(
        &self,
        upstream: &crate::config::UpstreamTimeouts,
        websocket: bool,
        options: &mut pingora::upstreams::peer::PeerOptions,
    ) {
        upstream.apply_to(options);
        if websocket {
            options.read_timeout = Some(self.websocket_idle);
        }
    }

    /// Answers 413 when the declared `Content-Length` is past `client_max_body_size`, and
    /// says so with the limit; a body without a declared length is measured as it is read.
    /// Separate from `admit` so the backend checks it once it knows the site (whose error
    /// log gets the line).
    pub async fn refuse_declared_body(&self, session: &mut Session) -> Result<Option<u64>> {
        match (self.max_body, declared_length(session)) {
            (Some(max), Some(length)) if length > max => {
                self.pages.send(session, &pages::BODY_TOO_LARGE).await?;
                Ok(Some(max))
            }
            _ => Ok(None),
        }
    }

    /// The site the request is for, or `None` once the request has been answered.
    pub async fn admit(&self, session: &mut Session) -> Result<Option<Admitted>> {
        // Only where Pingora would keep the connection: it has already decided to close after
        // an HTTP/1.0 request without keep-alive, or a `Connection: close`.
        if session.get_keepalive().is_some() {
            session.set_keepalive(self.keepalive);
        }
        session.set_read_timeout(Some(self.body_timeout));
        let site = match host::site_of_request(session.req_header(), self.allow_ip_hosts) {
            Ok(site) => site,
            Err(reason) => {
                debug!(
                    "400 for {:?}: {}",
                    session.req_header().headers.get(http::header::HOST),
                    reason.reason()
                );
                self.pages.send(session, &pages::BAD_HOST).await?;
                return Ok(None);
            }
        };
        if site == self.health_host {
            // A health check (from the edge, or from whatever watches this node): answered
            // here, without touching any site.
            self.pages.send(session, &pages::HEALTHY).await?;
            return Ok(None);
        }
        let trusted = self.is_trusted(session);
        let origin = Origin::of_request(session, trusted);
        let client_slot = match (&self.per_client, origin.client_ip) {
            (Some(limiter), Some(ip)) => match ClientLimiter::try_enter(limiter, ip) {
                Some(slot) => Some(slot),
                None => {
                    self.pages
                        .send(session, &pages::TOO_MANY_CONNECTIONS)
                        .await?;
                    return Ok(None);
                }
            },
            _ => None,
        };
        let websocket = websocket::is_websocket_upgrade(session.req_header());
        if websocket {
            session.set_read_timeout(Some(self.websocket_idle));
        }
        Ok(Some(Admitted {
            site,
            origin,
            trusted,
            client_slot,
            websocket,
        }))
    }

    /// `Expect: 100-continue`: the client waits for a `100 Continue` before it sends its body.
    /// Each role answers it itself once it has decided to take the request, as nginx does,
    /// and passes no `Expect` on (`forwarding::strip_expect`): whether the body is wanted is
    /// this hop's decision, and an app behind the uwsgi protocol could not answer it anyway.
    pub async fn send_continue_if_expected(&self, session: &mut Session) -> Result<()> {
        let downstream = session.as_downstream_mut();
        let expected = downstream
            .get_header(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expected && !downstream.is_body_empty() {
            downstream
                .write_continue_response()
                .await
                .map_err(|e| e.into_down())?;
        }
        Ok(())
    }

    /// Counts a chunk of request body against the limit, for bodies without Content-Length.
    /// After an upgrade the "body" is the client's WebSocket frames, which have no limit.
    pub fn check_body(
        &self,
        session: &Session,
        received: &mut u64,
        chunk: Option<&Bytes>,
    ) -> Result<()> {
        if session.was_upgraded() {
            return Ok(());
        }
        *received += chunk.map_or(0, |c| c.len() as u64);
        match self.max_body {
            Some(max) if *received > max => {
                let mut e = Error::explain(
                    HTTPStatus(413),
                    "request body larger than client_max_body_size",
                );
                e.as_down();
                Err(e)
            }
            _ => Ok(()),
        }
    }
}

/// The body size a request announces. `screen` has refused any Content-Length but a single
/// one of digits, so this is the one the upstream will read too.
fn declared_length(session: &Session) -> Option<u64> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| request_checks::parse_content_length(v.as_bytes()))
}

/// Whether `e` is not worth Pingora's error log: a request Herald refused for what the client
/// sent (`screen`, `check_body`: one line each would let any client fill the log; the access
/// log and a debug line have it), or the end of an idle WebSocket (its normal end).
pub fn is_quiet_error(session: &Session, e: &Error) -> bool {
    let refused = matches!(e.etype(), HTTPStatus(_)) && e.esource() == &ErrorSource::Downstream;
    refused || websocket::closed_for_idleness(session, e)
}
