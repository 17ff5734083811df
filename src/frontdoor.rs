//! What both roles check before a request goes anywhere: which site it is for, whether its
//! client already has too many requests in progress, and whether its body is within limits.
//! A request that fails is answered here. A WebSocket handshake is recognised here too, and
//! gets the WebSocket idle timeout instead of the body timeout.

use crate::config::Frontend;
use crate::pages::{self, ErrorPages};
use crate::{forwarding, host, websocket};
use bytes::Bytes;
use log::debug;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct FrontDoor {
    allow_ip_hosts: bool,
    health_host: String,
    /// Pingora's keep-alive setting: `None` closes after each response.
    keepalive: Option<u64>,
    max_body: Option<u64>,
    body_timeout: Duration,
    websocket_idle: Duration,
    per_client: Option<Arc<ClientLimiter>>,
    pages: ErrorPages,
}

/// A request let in: its site, its place in its client's count, and whether it opens a
/// WebSocket.
pub struct Admitted {
    pub site: String,
    pub client_slot: Option<ClientSlot>,
    pub websocket: bool,
}

impl FrontDoor {
    pub fn new(frontend: &Frontend) -> Self {
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
            per_client: frontend.max_connections_per_client.map(|limit| {
                Arc::new(ClientLimiter {
                    limit,
                    in_progress: Mutex::new(HashMap::new()),
                })
            }),
        }
    }

    /// The role's error pages (the operator's, or the built-in ones).
    pub fn pages(&self) -> &ErrorPages {
        &self.pages
    }

    /// How long an open WebSocket may carry nothing before it is closed. Once upgraded, Pingora
    /// restarts both its reads (from the client and from upstream) whenever anything moves in
    /// either direction, so the socket closes after the smaller of the two timeouts of silence:
    /// each role sets this one on both sides.
    pub fn websocket_idle_timeout(&self) -> Duration {
        self.websocket_idle
    }

    /// The site the request is for, or `None` once the request has been answered.
    pub async fn admit(&self, session: &mut Session) -> Result<Option<Admitted>> {
        session.set_keepalive(self.keepalive);
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
        if let (Some(max), Some(length)) = (self.max_body, declared_length(session)) {
            if length > max {
                self.pages.send(session, &pages::BODY_TOO_LARGE).await?;
                return Ok(None);
            }
        }
        let client_slot = match (&self.per_client, forwarding::client_ip(session)) {
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
            client_slot,
            websocket,
        }))
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
            Some(max) if *received > max => Error::e_explain(
                HTTPStatus(413),
                "request body larger than client_max_body_size",
            ),
            _ => Ok(()),
        }
    }
}

fn declared_length(session: &Session) -> Option<u64> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Requests in progress per client IP, as nginx's `limit_conn` counts connections: only
/// those with a request being processed.
pub struct ClientLimiter {
    limit: usize,
    in_progress: Mutex<HashMap<IpAddr, usize>>,
}

impl ClientLimiter {
    fn try_enter(limiter: &Arc<ClientLimiter>, ip: IpAddr) -> Option<ClientSlot> {
        let mut in_progress = limiter.in_progress.lock().expect("limiter lock");
        let count = in_progress.entry(ip).or_default();
        if *count >= limiter.limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            limiter: limiter.clone(),
            ip,
        })
    }
}

/// One request's place in its client's count, given back when the request ends.
pub struct ClientSlot {
    limiter: Arc<ClientLimiter>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut in_progress = self.limiter.in_progress.lock().expect("limiter lock");
        if let Some(count) = in_progress.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                in_progress.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_limit_and_slots_come_back() {
        let limiter = Arc::new(ClientLimiter {
            limit: 2,
            in_progress: Mutex::new(HashMap::new()),
        });
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = ClientLimiter::try_enter(&limiter, a).unwrap();
        let _second = ClientLimiter::try_enter(&limiter, a).unwrap();
        assert!(ClientLimiter::try_enter(&limiter, a).is_none());
        assert!(
            ClientLimiter::try_enter(&limiter, b).is_some(),
            "other clients are counted apart"
        );
        drop(first);
        assert!(ClientLimiter::try_enter(&limiter, a).is_some());
        drop(_second);
        assert!(
            limiter.in_progress.lock().unwrap().is_empty(),
            "no entry is left for idle clients"
        );
    }
}
