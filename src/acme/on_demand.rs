//! Where on-demand certificates meet the edge's traffic: a TLS connection's ClientHello (read
//! before the handshake, which waits for an order under way), a plain-HTTP request for a site
//! (which starts one without waiting), and the HTTP-01 answers every edge gives.

use super::{client_hello, Acme};
use crate::tls::SniResolver;
use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::prelude::*;
use pingora::protocols::l4::stream::Stream as L4Stream;
use std::sync::Arc;

/// Where ACME servers fetch HTTP-01 answers (RFC 8555 8.3).
pub const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

pub struct OnDemand {
    acme: Arc<Acme>,
    /// The operator's own certificates: a name they cover is never ordered.
    resolver: Arc<SniResolver>,
}

impl OnDemand {
    pub fn new(acme: Arc<Acme>, resolver: Arc<SniResolver>) -> Self {
        OnDemand { acme, resolver }
    }

    fn wanted(&self, name: &str) -> bool {
        !self.resolver.covers(name) && self.acme.certificate(name).is_none()
    }

    /// A plain-HTTP request for `site`: its certificate is ordered if it may have one.
    pub fn trigger(&self, site: &str) {
        // The front door checked the name; with `allow_ip_hosts` it may be an IP address,
        // which no ACME server certifies.
        let ip = site.starts_with('[') || site.parse::<std::net::IpAddr>().is_ok();
        if !ip && self.wanted(site) {
            self.acme.trigger(site);
        }
    }

    /// The answer for an HTTP-01 token, if one is in storage.
    pub async fn challenge(&self, token: &str) -> Option<String> {
        self.acme.challenge(token).await
    }
}

#[async_trait]
impl PreTlsProcess for OnDemand {
    async fn process(&self, stream: &mut L4Stream) -> Result<()> {
        if let Some(name) = client_hello::peek_server_name(stream).await {
            // Only a valid site name (lowercase DNS labels, no IP address) is ever ordered.
            let valid =
                crate::site_name::parse_site(name.as_bytes(), false).as_deref() == Ok(&name);
            if valid && self.wanted(&name) {
                self.acme.wait_for(&name).await;
            }
        }
        Ok(())
    }
}
