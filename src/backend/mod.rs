//! The backend role: the site's uWSGI app listens on a unix socket (`http-socket`), and the
//! request is proxied over it.

pub mod sites;

use crate::cidr::Cidr;
use crate::config::{BackendConfig, UpstreamTimeouts};
use crate::forwarding;
use crate::frontdoor::FrontDoor;
use crate::metrics::RoleMetrics;
use crate::pages;
use async_trait::async_trait;
use bytes::Bytes;
use log::{info, warn};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::server::Server;
use sites::Sites;
use std::time::Instant;

pub struct BackendProxy {
    front_door: FrontDoor,
    sites: Sites,
    trusted_proxies: Vec<Cidr>,
    upstream: UpstreamTimeouts,
    metrics: RoleMetrics,
}

pub struct BackendCtx {
    started: Instant,
    site: String,
    body_received: u64,
}

impl BackendProxy {
    fn is_trusted(&self, session: &Session) -> bool {
        forwarding::client_ip(session)
            .is_some_and(|ip| self.trusted_proxies.iter().any(|net| net.contains(ip)))
    }
}

#[async_trait]
impl ProxyHttp for BackendProxy {
    type CTX = BackendCtx;

    fn new_ctx(&self) -> BackendCtx {
        BackendCtx {
            started: Instant::now(),
            site: String::new(),
            body_received: 0,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut BackendCtx) -> Result<bool> {
        let Some(site) = self.front_door.admit(session).await? else {
            return Ok(true);
        };
        if !self.sites.is_known(&site) {
            pages::send(session, &pages::UNKNOWN_SITE).await?;
            return Ok(true);
        }
        ctx.site = site;
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut BackendCtx,
    ) -> Result<()> {
        self.front_door
            .check_body(&mut ctx.body_received, body.as_ref())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut BackendCtx,
    ) -> Result<Box<HttpPeer>> {
        let path = self.sites.socket_path(&ctx.site);
        let mut peer = HttpPeer::new_uds(&path, false, String::new()).map_err(|e| {
            // Only a site name near the 253-byte limit can make the path too long for sun_path.
            warn!("site {}: unusable socket path {path:?}: {e}", ctx.site);
            Error::explain(HTTPStatus(502), "socket path too long")
        })?;
        peer.options.connection_timeout = Some(self.upstream.connect);
        peer.options.read_timeout = Some(self.upstream.read);
        peer.options.idle_timeout = Some(self.upstream.keepalive);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut BackendCtx,
    ) -> Result<()> {
        forwarding::to_origin_form(upstream_request)?;
        // Only a trusted hop (the edge) may tell the app who the client is.
        if self.is_trusted(session) && forwarding::has_forwarding_headers(upstream_request) {
            return Ok(());
        }
        forwarding::replace_forwarding_headers(
            upstream_request,
            forwarding::client_ip(session),
            "http",
        )
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut BackendCtx,
    ) -> FailToProxy {
        pages::answer_proxy_failure(session, e, &pages::APP_UNAVAILABLE).await
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut BackendCtx) {
        let status = session.response_written().map(|r| r.status.as_u16());
        self.metrics.observe(status, ctx.started.elapsed());
    }
}

/// Adds the backend proxy to `server`.
pub fn add_services(server: &mut Server, config: &BackendConfig) {
    info!(
        "backend: sites in {:?}, vassals in {:?}, sockets at {:?}, listening on {:?}",
        config.sites_dir,
        config.vassals_dir,
        config.socket_path.path_for("{host}"),
        config.frontend.listen
    );
    let proxy = BackendProxy {
        front_door: FrontDoor::new(&config.frontend),
        sites: Sites::new(config.sites_dir.clone(), config.socket_path.clone()),
        trusted_proxies: config.trusted_proxies.clone(),
        upstream: config.upstream,
        metrics: RoleMetrics::new("backend"),
    };
    let mut service = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        proxy,
        "herald backend",
    );
    for addr in &config.frontend.listen {
        service.add_tcp(&addr.to_string());
    }
    server.add_service(service);
}
