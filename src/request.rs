//! What both roles track for every request, from its arrival to its access log line.

use crate::access_log::{self, AccessLog, Facts};
use crate::forwarding;
use crate::frontdoor::Admitted;
use crate::metrics::{InProgress, OpenWebSocket, RoleMetrics};
use crate::per_client::ClientSlot;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::time::{Duration, Instant};

pub struct RequestState {
    pub started: Instant,
    /// Empty until the front door has admitted the request.
    pub site: String,
    /// The browser's address, once admitted (until then, the peer's).
    pub client: Option<std::net::IpAddr>,
    /// The browser's connection as the front door worked it out (default until admitted).
    pub origin: forwarding::Origin,
    /// Whether the peer is a trusted proxy (set when admitted).
    pub trusted: bool,
    pub body_received: u64,
    /// Held until the request ends (max_connections_per_client).
    pub client_slot: Option<ClientSlot>,
    /// Sent upstream as `X-Request-Id` and logged.
    pub request_id: String,
    /// The id came with the request, from a trusted hop.
    id_given: bool,
    /// A WebSocket handshake (`websocket::is_websocket_upgrade`): its connection gets
    /// `websocket_idle_timeout` on both sides.
    pub websocket: bool,
    /// Held while the upgraded connection is open (`herald_websockets_open`).
    pub open_websocket: Option<OpenWebSocket>,
    upstream_began: Option<Instant>,
    upstream_time: Option<Duration>,
    _in_progress: InProgress,
}

pub const X_REQUEST_ID: &str = "x-request-id";

impl RequestState {
    pub fn new(in_progress: InProgress) -> Self {
        RequestState {
            _in_progress: in_progress,
            started: Instant::now(),
            site: String::new(),
            client: None,
            origin: forwarding::Origin::default(),
            trusted: false,
            body_received: 0,
            client_slot: None,
            request_id: String::new(),
            id_given: false,
            websocket: false,
            open_websocket: None,
            upstream_began: None,
            upstream_time: None,
        }
    }

    /// What the front door found out about an admitted request, kept for its later phases.
    pub fn admitted(&mut self, admitted: Admitted) {
        self.site = admitted.site;
        self.client = admitted.origin.client_ip;
        self.origin = admitted.origin;
        self.trusted = admitted.trusted;
        self.client_slot = admitted.client_slot;
        self.websocket = admitted.websocket;
    }

    /// Takes the id a trusted hop gave the request, or makes a new one.
    pub fn identify(&mut self, session: &Session, trust_given_id: bool) {
        let given = session
            .req_header()
            .headers
            .get(X_REQUEST_ID)
            .map(|v| v.as_bytes())
            .filter(|id| trust_given_id && access_log::is_valid_request_id(id));
        self.id_given = given.is_some();
        self.request_id = match given {
            Some(id) => String::from_utf8_lossy(id).into_owned(),
            None => access_log::new_request_id(),
        };
    }

    /// The request's id on the request sent upstream. An id a trusted hop gave is already
    /// there: replacing it with itself would cost an insert into both of Pingora's maps.
    pub fn pass_id_on(&self, upstream: &mut RequestHeader) -> pingora::Result<()> {
        if self.id_given {
            let mut given = upstream.headers.get_all(X_REQUEST_ID).iter();
            if given.next().map(|v| v.as_bytes()) == Some(self.request_id.as_bytes())
                && given.next().is_none()
            {
                return Ok(());
            }
        }
        upstream.insert_header(X_REQUEST_ID, &self.request_id)
    }

    /// An upstream was chosen and is about to be connected to.
    pub fn upstream_chosen(&mut self) {
        self.upstream_began = Some(Instant::now());
    }

    /// The upstream's response header arrived; a 101 that upgrades the connection counts in
    /// `herald_websockets_open` until the request ends.
    pub fn upstream_answered(
        &mut self,
        session: &Session,
        response: &ResponseHeader,
        metrics: &RoleMetrics,
    ) {
        self.upstream_time = self.upstream_began.map(|began| began.elapsed());
        // The status first: it is all an ordinary response costs.
        if response.status == http::StatusCode::SWITCHING_PROTOCOLS
            && session.is_upgrade(response) == Some(true)
        {
            self.open_websocket = Some(metrics.websocket_opened());
        }
    }

    /// The request's access log line; `upstream` names what served the site (given the site),
    /// and is only asked when the log is on.
    pub fn log(
        &mut self,
        log: &AccessLog,
        session: &Session,
        upstream: impl FnOnce(&str) -> Option<String>,
        waited_on_start: bool,
    ) {
        if !log.is_enabled() {
            return;
        }
        let upstream = (!self.site.is_empty())
            .then(|| upstream(&self.site))
            .flatten();
        if self.request_id.is_empty() {
            // Answered before it was identified (a bad Host, say): still worth a line.
            self.request_id = access_log::new_request_id();
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let facts = Facts {
            client: self.client.or_else(|| forwarding::client_ip(session)),
            site: if self.site.is_empty() {
                "-"
            } else {
                &self.site
            },
            request_id: &self.request_id,
            status,
            elapsed: self.started.elapsed(),
            upstream: upstream.as_deref(),
            upstream_time: self.upstream_time,
            waited_on_start,
        };
        log.record(session.req_header(), session.body_bytes_sent(), &facts);
    }
}

/// Whether a request already sent upstream could be sent again: idempotent, with its body still
/// buffered.
pub fn replayable(session: &Session) -> bool {
    session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated()
}

/// Pingora's own rule for an error after connecting (its default `error_while_proxy`): a
/// replayable request is retried only when the failed connection came from the pool.
pub fn retry_as_pingora_does(session: &Session, e: &mut pingora::Error, client_reused: bool) {
    if replayable(session) {
        e.retry.decide_reuse(client_reused);
    } else {
        e.set_retry(false);
    }
}
