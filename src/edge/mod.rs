//! The edge role: a browser's request arrives, the site's backend server is picked by hashing
//! the site name, and the request is proxied there with the client's address attached.

pub mod placement;

use crate::config::{EdgeConfig, UpstreamTimeouts};
use crate::forwarding;
use crate::frontdoor::FrontDoor;
use crate::metrics::RoleMetrics;
use crate::pages;
use async_trait::async_trait;
use bytes::Bytes;
use log::info;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::server::Server;
use placement::Placement;
use std::time::Instant;

pub struct EdgeProxy {
    front_door: FrontDoor,
    placement: Placement,
    upstream: UpstreamTimeouts,
    metrics: RoleMetrics,
}

pub struct EdgeCtx {
    started: Instant,
    site: String,
    body_received: u64,
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = EdgeCtx;

    fn new_ctx(&self) -> EdgeCtx {
        EdgeCtx {
            started: Instant::now(),
            site: String::new(),
            body_received: 0,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut EdgeCtx) -> Result<bool> {
        match self.front_door.admit(session).await? {
            Some(site) => {
                ctx.site = site;
                Ok(false)
            }
            None => Ok(true),
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut EdgeCtx,
    ) -> Result<()> {
        self.front_door
            .check_body(&mut ctx.body_received, body.as_ref())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut EdgeCtx,
    ) -> Result<Box<HttpPeer>> {
        let addr = self
            .placement
            .pick(&ctx.site)
            .ok_or_else(|| Error::explain(HTTPStatus(503), "no backend server available"))?;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.upstream.connect);
        peer.options.read_timeout = Some(self.upstream.read);
        peer.options.idle_timeout = Some(self.upstream.keepalive);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut EdgeCtx,
    ) -> Result<()> {
        forwarding::to_origin_form(upstream_request)?;
        // The edge is the outermost hop: nothing the client says about itself is kept.
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
        _ctx: &mut EdgeCtx,
    ) -> FailToProxy {
        pages::answer_proxy_failure(session, e, None, &pages::BACKEND_UNAVAILABLE).await
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut EdgeCtx) {
        let status = session.response_written().map(|r| r.status.as_u16());
        self.metrics.observe(status, ctx.started.elapsed());
    }
}

/// Adds the edge proxy, and the ketama balancer it reads from, to `server`.
pub fn add_services(server: &mut Server, config: &EdgeConfig) {
    let placement = placement::placement(config.hash, &config.backends);
    let balancer = match &placement {
        Placement::Ketama(lb) => Some(lb.clone()),
        Placement::Modulo(_) => None,
    };
    info!(
        "edge: {} backends, {:?} placement, listening on {:?}",
        config.backends.len(),
        config.hash,
        config.frontend.listen
    );
    let proxy = EdgeProxy {
        front_door: FrontDoor::new(&config.frontend),
        placement,
        upstream: config.upstream,
        metrics: RoleMetrics::new("edge"),
    };
    let mut service =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, proxy, "herald edge");
    for addr in &config.frontend.listen {
        service.add_tcp(&addr.to_string());
    }
    let proxy_handle = server.add_service(service);
    if let Some(lb) = balancer {
        // Ketama's ring is built by the balancer's first update; the proxy waits for it.
        let balancer_service = pingora::services::background::GenBackgroundService::new(
            "herald edge backends".into(),
            lb,
        );
        let balancer_handle = server.add_service(balancer_service);
        proxy_handle.add_dependency(&balancer_handle);
    }
}
