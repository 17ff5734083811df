//! The edge role: a browser's request arrives, the site's backend server is picked by hashing
//! the site name (skipping backends that are down), and the request is proxied there with the
//! client's address attached. A backend that refuses the connection is replaced by the next.

pub mod backends;
pub mod health;
pub mod placement;

use crate::access_log::AccessLog;
use crate::acme::{self, OnDemand};
use crate::config::{EdgeConfig, UpstreamTimeouts};
use crate::forwarding;
use crate::frontdoor::{self, FrontDoor};
use crate::listener;
use crate::metrics::{self, RoleMetrics};
use crate::pages;
use crate::request::{self, RequestState};
use async_trait::async_trait;
use backends::BackendList;
use bytes::Bytes;
use health::ObservedHealthCheck;
use log::{error, info};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::server::Server;
use pingora::services::background::GenBackgroundService;
use placement::Placement;
use std::net::SocketAddr;
use std::sync::Arc;

pub struct EdgeProxy {
    front_door: FrontDoor,
    placement: Arc<Placement>,
    upstream: UpstreamTimeouts,
    retry_idempotent: bool,
    metrics: RoleMetrics,
    backend_requests: metrics::BackendRequests,
    access_log: AccessLog,
    /// Certificates ordered on demand (`edge.tls.acme`): HTTP-01 answers, and orders started
    /// by plain-HTTP requests.
    on_demand: Option<Arc<OnDemand>>,
}

pub struct EdgeCtx {
    request: RequestState,
    /// Backends this request was sent to, in order (a retry on a fresh connection to the same
    /// backend, after a stale pooled one, counts again).
    tried: Vec<SocketAddr>,
    /// Backends that failed this request, so its retry goes to the next one.
    avoid: Vec<SocketAddr>,
}

impl EdgeCtx {
    /// A request fails over once: from its own backend to the next.
    fn may_fail_over(&self) -> bool {
        self.avoid.is_empty()
    }

    /// The backend that just failed is avoided from now on.
    fn fail_over(&mut self) {
        if let Some(last) = self.tried.last() {
            self.avoid.push(*last);
        }
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = EdgeCtx;

    /// None: Pingora's default installs its response-compression module, disabled, on
    /// every request; Herald never compresses (the apps do, or `name.gz` files do).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> EdgeCtx {
        EdgeCtx {
            request: RequestState::new(self.metrics.begin()),
            tried: Vec::new(),
            avoid: Vec::new(),
        }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut EdgeCtx) -> Result<()> {
        self.front_door.screen(session)
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut EdgeCtx) -> Result<bool> {
        if let Some(on_demand) = &self.on_demand {
            if answer_acme_challenge(on_demand, session).await? {
                return Ok(true);
            }
        }
        match self.front_door.admit(session).await? {
            Some(_)
                if self
                    .front_door
                    .refuse_declared_body(session)
                    .await?
                    .is_some() =>
            {
                Ok(true)
            }
            Some(admitted) => {
                // The outermost hop: an id the client made up is not kept.
                ctx.request.identify(session, false);
                ctx.request.admitted(admitted);
                if let (Some(on_demand), false) = (&self.on_demand, ctx.request.origin.https) {
                    on_demand.trigger(&ctx.request.site);
                }
                self.front_door.send_continue_if_expected(session).await?;
                Ok(false)
            }
            None => Ok(true),
        }
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut EdgeCtx,
    ) -> Result<()> {
        self.front_door
            .check_body(session, &mut ctx.request.body_received, body.as_ref())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut EdgeCtx,
    ) -> Result<Box<HttpPeer>> {
        let addr = self
            .placement
            .pick(&ctx.request.site, &ctx.avoid)
            .ok_or_else(|| Error::explain(HTTPStatus(503), "no backend server available"))?;
        ctx.tried.push(addr);
        let mut peer = HttpPeer::new(addr, false, String::new());
        self.front_door.set_upstream_timeouts(
            &self.upstream,
            ctx.request.websocket,
            &mut peer.options,
        );
        ctx.request.upstream_chosen();
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut EdgeCtx,
    ) -> Result<()> {
        forwarding::to_origin_form(upstream_request)?;
        forwarding::strip_expect(upstream_request);
        ctx.request.pass_id_on(upstream_request)?;
        // Nothing the client says about itself or earlier hops is kept; only the operator's
        // own load balancer (`edge.trusted_proxies`) may say who the client is. The backend
        // builds the app's environ (REMOTE_ADDR, REMOTE_PORT, SERVER_PORT, HTTPS) from this.
        forwarding::replace_forwarding_headers(upstream_request, &ctx.request.origin)
    }

    /// Nothing reached the backend: the next backend on the ring gets the request. A backend
    /// that dies between two health checks costs only the requests in flight on it.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut EdgeCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let reason = match e.etype() {
            ConnectTimedout => "timeout",
            ConnectRefused => "refused",
            _ => "other",
        };
        metrics::upstream_connect_failed("edge", reason);
        // With no other backend to try, the client gets this error itself (a 504 for a
        // timeout, say) rather than "no backend available".
        let failed = ctx.tried.last().map_or(&[][..], std::slice::from_ref);
        if ctx.may_fail_over() && self.placement.pick(&ctx.request.site, failed).is_some() {
            ctx.fail_over();
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut EdgeCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if self.retry_idempotent
            && ctx.may_fail_over()
            && session.response_written().is_none()
            && request::replayable(session)
        {
            // Allowed by config: an idempotent request already sent goes to the next backend.
            ctx.fail_over();
            e.set_retry(true);
        } else {
            // A stale pooled connection is retried on a fresh one to the same backend: the
            // backend did not fail, its old connection did.
            request::retry_as_pingora_does(session, &mut e, client_reused);
        }
        e
    }

    fn suppress_error_log(&self, session: &Session, _ctx: &EdgeCtx, error: &Error) -> bool {
        frontdoor::is_quiet_error(session, error)
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &EdgeCtx,
        _error: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        // Failing over is logged by the health checks; one warning per request adds nothing.
        !ctx.avoid.is_empty()
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut EdgeCtx,
    ) -> FailToProxy {
        self.front_door
            .pages()
            .answer_proxy_failure(session, e, None, &pages::BACKEND_UNAVAILABLE)
            .await
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut EdgeCtx,
    ) -> Result<()> {
        ctx.request
            .upstream_answered(session, upstream_response, &self.metrics);
        if crate::draining::is_draining() {
            // HTTP/1.1: `Connection: close`; the client's next request goes to the new process.
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut EdgeCtx) {
        let status = session.response_written().map(|r| r.status.as_u16());
        self.metrics.observe(status, ctx.request.started.elapsed());
        for backend in &ctx.tried {
            self.backend_requests.count(*backend);
        }
        let last = ctx.tried.last();
        ctx.request.log(
            &self.access_log,
            session,
            |_| last.copied().map(crate::text::socket_addr),
            false,
        );
    }
}

/// An ACME server's HTTP-01 validation request, answered from storage before any routing
/// (the Host is the name being validated). A token Herald does not know goes on to the site,
/// which may run an ACME client of its own. Whether it was answered here.
async fn answer_acme_challenge(on_demand: &OnDemand, session: &mut Session) -> Result<bool> {
    let Some(token) = session
        .req_header()
        .uri
        .path()
        .strip_prefix(acme::CHALLENGE_PATH)
        .map(str::to_owned)
    else {
        return Ok(false);
    };
    let Some(answer) = on_demand.challenge(&token).await else {
        return Ok(false);
    };
    let mut header = ResponseHeader::build(200, Some(3))?;
    header.insert_header(http::header::CONTENT_TYPE, "application/octet-stream")?;
    header.insert_header(http::header::CONTENT_LENGTH, answer.len())?;
    header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from(answer)), true)
        .await?;
    Ok(true)
}

/// Adds the edge proxy, and the balancer it reads from (backend list and health checks), to
/// `server`.
pub fn add_services(server: &mut Server, config: &EdgeConfig) {
    let list = Arc::new(BackendList::new(
        &config.backends,
        config.backends_file.clone(),
        config.hash,
    ));
    let health_check = ObservedHealthCheck::new(&config.health_check);
    let checks = Some((health_check, config.health_check.interval));
    let placement = Arc::new(Placement::new(config.hash, list, checks));
    info!(
        "edge: {} backends{}, {:?} placement, {:?} health checks every {:?}, listening on {:?}",
        config.backends.len(),
        config
            .backends_file
            .as_ref()
            .map(|f| format!(" from {f:?}"))
            .unwrap_or_default(),
        config.hash,
        config.health_check.kind,
        config.health_check.interval,
        config.frontend.listen
    );
    let acme = config
        .tls
        .as_ref()
        .and_then(|tls| tls.acme.as_ref())
        .map(|acme_config| {
            acme::Acme::new(acme_config).unwrap_or_else(|e| {
                // Checked by the configuration already, but the storage directory, say, may
                // have gone since.
                error!("edge.tls.acme: {e}");
                std::process::exit(1)
            })
        });
    let resolver = config
        .tls
        .as_ref()
        .map(|tls| crate::tls::resolver(tls, acme.clone()));
    let on_demand = acme
        .clone()
        .zip(resolver.clone())
        .map(|(acme, resolver)| Arc::new(OnDemand::new(acme, resolver)));
    let proxy = EdgeProxy {
        on_demand: on_demand.clone(),
        front_door: FrontDoor::new(&config.frontend, false),
        placement: placement.clone(),
        upstream: config.upstream,
        retry_idempotent: config.retry_idempotent,
        metrics: RoleMetrics::new("edge"),
        backend_requests: metrics::BackendRequests::default(),
        access_log: AccessLog::for_role("edge", &config.frontend),
    };
    let mut proxy = pingora::proxy::http_proxy(&server.configuration, proxy);
    proxy.server_options = Some(http_server_options(config));
    let mut service = listener::service("herald edge", "edge", proxy, &config.frontend);
    for addr in &config.frontend.listen {
        service.add_tcp(&addr.to_string());
    }
    let certificates = config.tls.as_ref().zip(resolver).map(|(tls, resolver)| {
        let then = on_demand
            .clone()
            .map(|on_demand| on_demand as Arc<dyn pingora::listeners::PreTlsProcess>);
        let limit = service
            .app_logic()
            .expect("a listening service has its app")
            .handshake_limit(tls.handshake_timeout, then);
        crate::tls::listen(&mut service, tls, resolver, Arc::new(limit))
    });
    let proxy_handle = server.add_service(service);
    if let Some(certificates) = certificates {
        server.add_service(certificates);
    }
    if let Some(acme) = acme {
        metrics::acme_enabled();
        server.add_service(GenBackgroundService::new(
            "herald edge acme".into(),
            Arc::new(acme::AcmeService(acme)),
        ));
    }

    let balancer_service =
        GenBackgroundService::new("herald edge backends".into(), placement.balancer().clone());
    let balancer_handle = server.add_service(balancer_service);
    // The ring is built by the balancer's first update; the proxy waits for it.
    proxy_handle.add_dependency(&balancer_handle);
}

/// How the edge speaks HTTP/2: prior-knowledge h2c on its plain listeners when configured (on
/// TLS, ALPN decides), and idle HTTP/2 connections closed after the keep-alive timeout, as
/// idle HTTP/1.1 ones are.
fn http_server_options(config: &EdgeConfig) -> pingora::apps::HttpServerOptions {
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = config.h2c;
    // Pingora closes an HTTP/2 connection with a zero idle timeout as soon as it has no stream,
    // possibly before the first request is read: a second is the least that is safe.
    options.h2_idle_timeout = Some(config.frontend.keepalive_timeout.max(MIN_H2_IDLE_TIMEOUT));
    options
}

const MIN_H2_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
