//! What both roles check before a request goes anywhere: which site it is for, and whether
//! its body is within limits. A request that fails is answered here.

use crate::config::Frontend;
use crate::{host, pages};
use bytes::Bytes;
use log::debug;
use pingora::prelude::*;
use pingora::proxy::Session;

pub struct FrontDoor {
    allow_ip_hosts: bool,
    health_host: String,
    /// Pingora's keep-alive setting: `None` closes after each response.
    keepalive: Option<u64>,
    max_body: Option<u64>,
}

impl FrontDoor {
    pub fn new(frontend: &Frontend) -> Self {
        let secs = frontend.keepalive_timeout.as_secs();
        FrontDoor {
            allow_ip_hosts: frontend.allow_ip_hosts,
            health_host: frontend.health_host.clone(),
            // Pingora reads Some(0) as "forever"; nginx's keepalive_timeout 0 means "off".
            keepalive: (secs > 0).then_some(secs),
            max_body: frontend.client_max_body_size,
        }
    }

    /// The site the request is for, or `None` once the request has been answered.
    pub async fn admit(&self, session: &mut Session) -> Result<Option<String>> {
        session.set_keepalive(self.keepalive);
        let site = match host::site_of_request(session.req_header(), self.allow_ip_hosts) {
            Ok(site) => site,
            Err(reason) => {
                debug!(
                    "400 for {:?}: {}",
                    session.req_header().headers.get(http::header::HOST),
                    reason.reason()
                );
                pages::send(session, &pages::BAD_HOST).await?;
                return Ok(None);
            }
        };
        if site == self.health_host {
            // A health check (from the edge, or from whatever watches this node): answered
            // here, without touching any site.
            pages::send(session, &pages::HEALTHY).await?;
            return Ok(None);
        }
        if let (Some(max), Some(length)) = (self.max_body, declared_length(session)) {
            if length > max {
                pages::send(session, &pages::BODY_TOO_LARGE).await?;
                return Ok(None);
            }
        }
        Ok(Some(site))
    }

    /// Counts a chunk of request body against the limit, for bodies without Content-Length.
    pub fn check_body(&self, received: &mut u64, chunk: Option<&Bytes>) -> Result<()> {
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
