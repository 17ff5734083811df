//! The backend role: the site's uWSGI app listens on a unix socket (`socket`, the uwsgi
//! protocol, or `http-socket`), and the request is handed to it as nginx's `uwsgi_pass` does
//! (`app`): the whole body first, then the environ, then the answer read at the app's speed.
//! When nothing listens there, the app is started (`starter`) and the request retried once;
//! apps that go idle are stopped again (`reaper`).
//!
//! A request's path through the hooks, top to bottom: `early_request_filter` screens the
//! header; `request_filter` finds the site and its protocol and reads the body;
//! `upstream_peer` starts the app if the last connect found nothing and picks the socket;
//! `upstream_request_filter` makes the app's head (uwsgi packet or HTTP header);
//! `fail_to_connect` decides between a start, a wait for a busy app and an error.

pub mod activity;
pub mod app;
pub mod basic_auth;
pub mod capacity;
pub mod emperor;
pub mod initializer;
pub mod reaper;
mod site_gate;
pub mod site_settings;
pub mod sites;
pub mod socket_watch;
pub mod start_limit;
pub mod starter;
pub mod static_files;
pub mod vassal;

use crate::access_log::AccessLog;
use crate::config::{AppProtocol, BackendConfig, UpstreamTimeouts};
use crate::forwarding;
use crate::frontdoor::{self, FrontDoor};
use crate::listener;
use crate::metrics::{self, RoleMetrics};
use crate::pages;
use crate::request::{self, RequestState};
use activity::{Activity, SiteActivity};
use app::exchange::{AppFailure, Exchange};
use app::request_body::BodyOutcome;
use app::spool::RequestBody;
use app::Gateway;
use async_trait::async_trait;
use bytes::Bytes;
use initializer::Initializer;
use log::{error, info, warn};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::server::Server;
use pingora::services::background::GenBackgroundService;
use sites::Sites;
use socket_watch::SocketWatcher;
use starter::Starter;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct BackendProxy {
    front_door: FrontDoor,
    sites: Arc<Sites>,
    upstream: UpstreamTimeouts,
    metrics: RoleMetrics,
    access_log: AccessLog,
    activity: Arc<Activity>,
    starter: Arc<Starter>,
    /// `max_starts_per_client`.
    start_limit: Option<start_limit::StartLimit>,
    gateway: Gateway,
    /// `server.max_retries`: Pingora's limit on upstream attempts per request.
    max_attempts: usize,
    /// Each site's `sites_dir/<site>.yaml`.
    settings: Arc<site_settings::SettingsStore>,
    basic_auth: basic_auth::BasicAuth,
}

/// The pause before the next connect to a busy app: doubling from 5 ms, at most 100 ms.
fn busy_pause(attempts: usize) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    (BUSY_FIRST_PAUSE * 2u32.pow(doublings)).min(BUSY_MAX_PAUSE)
}

pub struct BackendCtx {
    request: RequestState,
    activity: Option<Arc<SiteActivity>>,
    /// The last connect found nothing listening: start the app before the next attempt.
    needs_start: bool,
    /// The one start (or wait for a start) this request may do has happened.
    start_attempted: bool,
    failure: Option<pages::Failure>,
    /// Upstream attempts so far (Pingora stops at `server.max_retries`).
    attempts: usize,
    /// When the app first refused a connection for a full listen queue.
    busy_since: Option<Instant>,
    /// How long to let a busy app drain its queue before the next connect.
    busy_pause: Option<Duration>,
    /// What the site's app speaks.
    protocol: AppProtocol,
    /// The uid the site's app must run as.
    owner: u32,
    /// The whole request body, read before the app is connected.
    body: Option<Arc<RequestBody>>,
    /// The current attempt's connection to the app, when Herald makes it.
    exchange: Option<Arc<Exchange>>,
    /// `Strict-Transport-Security` for the app's answer (an HTTPS request to a site with `hsts`).
    hsts: Option<String>,
}

/// What a failed connect to an app's socket says about the app.
enum ConnectFailure {
    /// No socket file, or nobody accepting on it: the app is not running.
    NotRunning,
    /// Listen queue full, or no accept in time: the app runs but is overloaded.
    Busy,
    Other,
}

impl ConnectFailure {
    fn reason(&self) -> &'static str {
        match self {
            ConnectFailure::NotRunning => "not_running",
            ConnectFailure::Busy => "busy",
            ConnectFailure::Other => "other",
        }
    }
}

fn classify_connect_failure(e: &Error) -> ConnectFailure {
    if matches!(e.etype(), ConnectTimedout) {
        return ConnectFailure::Busy;
    }
    match e
        .root_cause()
        .downcast_ref::<std::io::Error>()
        .map(|io| io.kind())
    {
        Some(ErrorKind::NotFound | ErrorKind::ConnectionRefused) => ConnectFailure::NotRunning,
        Some(ErrorKind::WouldBlock) => ConnectFailure::Busy,
        _ => ConnectFailure::Other,
    }
}

/// An overloaded app is asked for again after this long, not started a second time.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Between connects to an app whose listen queue is full, within `connect_timeout`.
const BUSY_FIRST_PAUSE: Duration = Duration::from_millis(5);
const BUSY_MAX_PAUSE: Duration = Duration::from_millis(100);

/// The site owner's error log says why an upload was refused.
fn log_body_too_large(session: &Session, site: &str, max: u64) {
    crate::site_logs::error(
        site,
        &format!(
            "413: a request body to {} was larger than client_max_body_size ({max} bytes)",
            String::from_utf8_lossy(session.req_header().raw_path()),
        ),
    );
}

/// Whether the target's path is one nginx refuses (400) before passing anything on.
fn refuse_bad_path(session: &Session) -> bool {
    let target = session.req_header().raw_path();
    // An absolute-form target is checked once it is in origin form, as the packet is made.
    target.first() == Some(&b'/') && app::uri::document_uri(target).is_err()
}

/// The page for a temp file that could not be made or written.
fn storage_page(e: &app::spool::StorageError) -> &'static pages::Page {
    if e.is_full() {
        &pages::STORAGE_FULL
    } else {
        &pages::STORAGE_ERROR
    }
}

impl BackendProxy {
    /// What nginx does before the app is involved (or started): refuse a path it would
    /// refuse, answer `100-continue`, read the whole body. `Some(page)`: the request ends here.
    async fn before_the_app(
        &self,
        session: &mut Session,
        ctx: &mut BackendCtx,
    ) -> Result<Option<&'static pages::Page>> {
        if ctx.protocol == AppProtocol::Uwsgi && refuse_bad_path(session) {
            return Ok(Some(&pages::BAD_PATH));
        }
        self.front_door.send_continue_if_expected(session).await?;
        let outcome = self
            .gateway
            .read_body(session, ctx.request.websocket, self.front_door.max_body())
            .await?;
        Ok(match outcome {
            BodyOutcome::Empty => None,
            BodyOutcome::Complete(body) => {
                ctx.body = Some(body);
                None
            }
            BodyOutcome::TooLarge => {
                log_body_too_large(
                    session,
                    &ctx.request.site,
                    self.front_door.max_body().unwrap_or(0),
                );
                Some(&pages::BODY_TOO_LARGE)
            }
            BodyOutcome::Storage(e) => {
                error!(
                    "site {}: cannot buffer the request body: {e}",
                    ctx.request.site
                );
                metrics::buffer_failed("request");
                Some(storage_page(&e))
            }
        })
    }
}

#[async_trait]
impl ProxyHttp for BackendProxy {
    type CTX = BackendCtx;

    /// None: Pingora's default installs its response-compression module, disabled, on
    /// every request; Herald never compresses (the apps do, or `name.gz` files do).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> BackendCtx {
        BackendCtx {
            request: RequestState::new(self.metrics.begin()),
            activity: None,
            needs_start: false,
            start_attempted: false,
            failure: None,
            attempts: 0,
            busy_since: None,
            busy_pause: None,
            protocol: AppProtocol::Uwsgi,
            owner: 0,
            body: None,
            exchange: None,
            hsts: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut BackendCtx,
    ) -> Result<()> {
        self.front_door.screen(session)
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut BackendCtx) -> Result<bool> {
        let Some(admitted) = self.front_door.admit(session).await? else {
            return Ok(true);
        };
        ctx.request.admitted(admitted);
        // The edge's id, so its log line and this one can be matched.
        ctx.request.identify(session, ctx.request.trusted);
        let Some(known) = self.sites.lookup(&ctx.request.site) else {
            self.front_door
                .pages()
                .send(session, &pages::UNKNOWN_SITE)
                .await?;
            return Ok(true);
        };
        if let Some(max) = self.front_door.refuse_declared_body(session).await? {
            log_body_too_large(session, &ctx.request.site, max);
            return Ok(true);
        }
        ctx.protocol = known.protocol;
        let Ok(owner) = known.owner else {
            // Logged when the vassal file was read.
            self.front_door
                .pages()
                .send(session, &pages::APP_MISCONFIGURED)
                .await?;
            return Ok(true);
        };
        ctx.owner = owner;
        let Ok(settings) = self.settings.get(&ctx.request.site) else {
            // Logged (and in the site's error log) when the file was read.
            self.front_door
                .pages()
                .send(session, &pages::SITE_SETTINGS_BROKEN)
                .await?;
            return Ok(true);
        };
        if let site_gate::Gate::Answered = self.site_gate(session, ctx, &settings).await? {
            return Ok(true);
        }
        if let Some(page) = self.before_the_app(session, ctx).await? {
            self.front_door.pages().send(session, page).await?;
            return Ok(true);
        }
        // Only now: a slow upload must not keep its app from being stopped when idle.
        ctx.activity = Some(self.activity.begin_request(&ctx.request.site));
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut BackendCtx,
    ) -> Result<()> {
        self.front_door
            .check_body(session, &mut ctx.request.body_received, body.as_ref())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut BackendCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.attempts += 1;
        if let Some(pause) = ctx.busy_pause.take() {
            tokio::time::sleep(pause).await;
        }
        let activity = ctx.activity.clone().expect("set for every known site");
        // An app being stopped for idleness is treated as not running: the start waits for
        // it to exit and brings up a new one, rather than sending a request into its exit.
        if !ctx.start_attempted && (ctx.needs_start || activity.is_stopping()) {
            ctx.needs_start = false;
            ctx.start_attempted = true;
            if let (Some(limit), Some(client)) = (&self.start_limit, ctx.request.client) {
                if let Err(wait) = limit.allow(client, &ctx.request.site) {
                    ctx.failure = Some(pages::Failure {
                        page: &pages::TOO_MANY_STARTS,
                        retry_after: Some(wait),
                    });
                    return Error::e_explain(HTTPStatus(429), "max_starts_per_client");
                }
            }
            if let Err(failure) = self
                .starter
                .ensure_running(&ctx.request.site, activity)
                .await
            {
                let status = failure.error.status();
                ctx.failure = Some(pages::Failure {
                    page: failure.error.page(),
                    retry_after: (status == 503).then_some(failure.retry_after),
                });
                return Error::e_explain(HTTPStatus(status), "app start failed");
            }
        }
        let path = self.sites.socket_path(&ctx.request.site);
        let mut peer = HttpPeer::new_uds(&path, false, String::new()).map_err(|e| {
            // Only a site name near the 253-byte limit can make the path too long for sun_path.
            warn!(
                "site {}: unusable socket path {path:?}: {e}",
                ctx.request.site
            );
            Error::explain(HTTPStatus(502), "socket path too long")
        })?;
        self.front_door.set_upstream_timeouts(
            &self.upstream,
            ctx.request.websocket,
            &mut peer.options,
        );
        let exchange = self.gateway.exchange(
            app::Attempt {
                site: &ctx.request.site,
                owner: ctx.owner,
                protocol: ctx.protocol,
                body: ctx.body.clone(),
                websocket: ctx.request.websocket,
            },
            &self.upstream,
        );
        peer.options.custom_l4 = Some(Gateway::connector(&exchange));
        ctx.exchange = Some(exchange);
        ctx.request.upstream_chosen();
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut BackendCtx,
    ) -> Result<()> {
        forwarding::to_origin_form(upstream_request)?;
        forwarding::strip_expect(upstream_request);
        ctx.request.pass_id_on(upstream_request)?;
        // Only a trusted hop (the edge) may tell the app who the client is.
        let origin = ctx.request.origin;
        if !(ctx.request.trusted && forwarding::has_forwarding_headers(upstream_request)) {
            forwarding::replace_forwarding_headers(upstream_request, &origin)?;
        }
        let exchange = ctx.exchange.as_ref().expect("set with the peer");
        if !exchange.is_plain() {
            let request = app::Request {
                site: &ctx.request.site,
                protocol: ctx.protocol,
                origin: &origin,
                websocket: ctx.request.websocket,
                received: session.req_header(),
            };
            return self.gateway.prepare(exchange, upstream_request, &request);
        }
        // An upgrade (Pingora kept `Upgrade` only for a WebSocket) keeps the `Connection:
        // Upgrade` Pingora set: an app may refuse a handshake without it, and an upgraded
        // connection is never pooled anyway.
        if self.upstream.keepalive.is_zero()
            && !upstream_request.headers.contains_key(http::header::UPGRADE)
        {
            // Tells Pingora not to pool the connection: the app closes it after answering.
            upstream_request.insert_header(http::header::CONNECTION, "close")?;
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut BackendCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let app_died_starting = ctx.start_attempted
            && !client_reused
            && session.response_written().is_none()
            && matches!(e.etype(), ReadError | ConnectionClosed);
        if app_died_starting {
            self.starter.report_died_after_start(&ctx.request.site);
            ctx.failure = Some(pages::Failure {
                page: &pages::APP_BROKEN,
                retry_after: None,
            });
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        request::retry_as_pingora_does(session, &mut e, client_reused);
        e
    }

    fn suppress_error_log(&self, session: &Session, _ctx: &BackendCtx, error: &Error) -> bool {
        frontdoor::is_quiet_error(session, error)
    }

    /// A connect that failed because the app is not running is retried after starting it:
    /// expected, so not worth Pingora's warning.
    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &BackendCtx,
        _error: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        ctx.needs_start || ctx.busy_pause.is_some()
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut BackendCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let failure = classify_connect_failure(&e);
        metrics::upstream_connect_failed("backend", failure.reason());
        match failure {
            // Nothing was sent, so any method may be retried once the app is up.
            ConnectFailure::NotRunning if !ctx.start_attempted => {
                ctx.needs_start = true;
                e.set_retry(true);
                e
            }
            // A full listen queue drains quickly: wait for it within connect_timeout, as
            // a blocking connect would, while Pingora's retry budget lasts.
            ConnectFailure::Busy
                if ctx.busy_since.get_or_insert_with(Instant::now).elapsed()
                    < self.upstream.connect
                    && ctx.attempts + 1 < self.max_attempts =>
            {
                ctx.busy_pause = Some(busy_pause(ctx.attempts));
                e.set_retry(true);
                e
            }
            ConnectFailure::Busy => {
                ctx.failure = Some(pages::Failure {
                    page: &pages::APP_BUSY,
                    retry_after: Some(BUSY_RETRY_AFTER),
                });
                Error::because(HTTPStatus(503), "app is overloaded", e)
            }
            _ => e,
        }
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut BackendCtx,
    ) -> FailToProxy {
        let failure = ctx.exchange.as_ref().and_then(|x| x.take_failure());
        if let Some(failure) = failure {
            let page = match &failure {
                AppFailure::Storage(e) => {
                    error!(
                        "site {}: cannot buffer the app's answer: {e}",
                        ctx.request.site
                    );
                    metrics::buffer_failed("answer");
                    storage_page(e)
                }
                AppFailure::SendTimeout => &pages::TIMEOUT,
                AppFailure::WrongOwner => &pages::APP_IMPOSTOR,
            };
            if session.response_written().is_none() {
                if let Err(e) = self.front_door.pages().send(session, page).await {
                    log::debug!("could not send the {} page: {e}", page.status);
                }
            }
            return FailToProxy {
                error_code: page.status,
                can_reuse_downstream: false,
            };
        }
        self.front_door
            .pages()
            .answer_proxy_failure(session, e, ctx.failure, &pages::APP_UNAVAILABLE)
            .await
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut BackendCtx,
    ) -> Result<()> {
        ctx.request
            .upstream_answered(session, upstream_response, &self.metrics);
        if crate::draining::is_draining() {
            // HTTP/1.1: `Connection: close`; the client's next request goes to the new process.
            session.set_keepalive(None);
        }
        // nginx passes none of an app's X-Accel-* instructions (X-Accel-Buffering, ...) on.
        let accel: Vec<http::HeaderName> = upstream_response
            .headers
            .keys()
            .filter(|name| name.as_str().starts_with("x-accel-"))
            .cloned()
            .collect();
        for name in accel {
            upstream_response.remove_header(&name);
        }
        if let Some(hsts) = &ctx.hsts {
            upstream_response.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts)?;
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut BackendCtx) {
        if let Some(activity) = ctx.activity.take() {
            self.activity.end_request(&activity);
        }
        let status = session.response_written().map(|r| r.status.as_u16());
        self.metrics.observe(status, ctx.request.started.elapsed());
        let socket = |site: &str| Some(self.sites.socket_path(site));
        ctx.request
            .log(&self.access_log, session, socket, ctx.start_attempted);
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
    crate::site_logs::init(
        config.site_logs.access.clone(),
        config.site_logs.errors.clone(),
    );
    let sites = Arc::new(Sites::new(
        config.sites_dir.clone(),
        config.socket_path.clone(),
        config.gateway.app_protocol,
    ));
    let settings = Arc::new(site_settings::SettingsStore::new(config.sites_dir.clone()));
    let activity = Arc::new(Activity::new());
    let initializer = Arc::new(Initializer::new(
        &config.starts.initializer,
        &config.sites_dir,
        &config.vassals_dir,
        &config.socket_path,
    ));
    let watcher = Arc::new(SocketWatcher::new(
        config.socket_path.directory().to_owned(),
    ));
    let emperor = Arc::new(emperor::Emperor::new(config.emperor_stats.clone()));
    let capacity = Arc::new(capacity::Capacity::new(
        config.starts.max_running_apps,
        &config.vassals_dir,
        capacity::Parts {
            activity: activity.clone(),
            initializer: initializer.clone(),
            emperor: emperor.clone(),
            socket_path: config.socket_path.clone(),
            stop_timeout: config.starts.start_timeout,
        },
    ));
    let starter = Arc::new(Starter::new(
        &config.starts,
        initializer.clone(),
        capacity.clone(),
        config.socket_path.clone(),
        watcher.clone(),
        emperor.clone(),
    ));
    crate::status::register_starts(starter.clone());
    let proxy = BackendProxy {
        front_door: FrontDoor::new(&config.frontend, !config.gateway.request_buffering),
        sites: sites.clone(),
        upstream: config.upstream,
        metrics: RoleMetrics::new("backend"),
        access_log: AccessLog::for_role("backend", &config.frontend).with_site_logs(),
        activity: activity.clone(),
        starter,
        start_limit: config
            .starts
            .max_starts_per_client
            .map(start_limit::StartLimit::new),
        gateway: Gateway::new(&config.gateway),
        max_attempts: server.configuration.max_retries,
        settings: settings.clone(),
        // bcrypt is CPU by design: half the cores at most, so requests keep the rest.
        basic_auth: basic_auth::BasicAuth::new(
            std::thread::available_parallelism().map_or(1, |n| n.get() / 2),
        ),
    };
    let proxy = pingora::proxy::http_proxy(&server.configuration, proxy);
    let mut service = listener::service("herald backend", "backend", proxy, &config.frontend);
    for addr in &config.frontend.listen {
        service.add_tcp(&addr.to_string());
    }
    let proxy_handle = server.add_service(service);
    if config.site_logs.access.is_some() || config.site_logs.errors.is_some() {
        server.add_service(GenBackgroundService::new(
            "herald site logs reopen".into(),
            Arc::new(crate::site_logs::ReopenOnSignal),
        ));
    }
    let watcher_handle = server.add_service(GenBackgroundService::new(
        "herald socket watch".into(),
        watcher,
    ));
    proxy_handle.add_dependency(&watcher_handle);
    match config.starts.idle_timeout {
        Some(idle_timeout) if initializer.can_stop() => {
            let reaper = reaper::Reaper {
                activity,
                capacity,
                initializer,
                sites,
                settings,
                vassals_dir: config.vassals_dir.clone(),
                idle_timeout,
                stop_timeout: config.starts.start_timeout,
                emperor,
                phases: std::sync::Mutex::new(Some(server.watch_execution_phase())),
            };
            server.add_service(GenBackgroundService::new("herald idle reaper".into(), Arc::new(reaper)));
        }
        Some(_) => warn!("backend.idle_timeout is set but the http initializer has no stop_url: idle apps keep running"),
        None => {}
    }
}
